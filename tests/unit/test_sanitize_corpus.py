"""The secret corpus: generated secrets in every carrier go through a real ``pt.configure``
pipeline; no secret substring may appear in what the ConsoleExporter (NDJSON) and the
InMemoryExporter received. The benign corpus must arrive unchanged."""

from __future__ import annotations

import base64
import io
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import pitchey_trace as pt
from pitchey_trace.exporters import ConsoleExporter
from pitchey_trace.testing import capture_spans

_ALNUM = string.ascii_letters + string.digits


def _rand(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch)
        if i % 2 == 0:  # doubled: these sit at odd positions once the check digit is appended
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return body + str((10 - total % 10) % 10)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Secret:
    kind: str
    text: str  # how it is written in the carrier
    forbidden: list[str]  # substrings that must not be exported


def _card(rng: random.Random) -> Secret:
    prefix, length = rng.choice(
        [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)]
    )
    number = _luhn_complete(prefix, length, rng)
    sep = rng.choice(["", " ", "-"])
    if not sep:
        text = number
    elif length == 15:  # American Express groups 4-6-5
        text = sep.join([number[:4], number[4:10], number[10:]])
    else:
        text = sep.join(number[i : i + 4] for i in range(0, 16, 4))
    return Secret("card", f"card {text} declined", [number, text, number[3:15]])


def _generators() -> dict[str, Callable[[random.Random], Secret]]:
    def email(r: random.Random) -> Secret:
        lower = string.ascii_lowercase
        addr = f"{_rand(r, 8, lower)}.{_rand(r, 5, lower)}@{_rand(r, 7, lower)}.com"
        return Secret("email", f"mail to {addr} failed", [addr, addr.split("@")[0]])

    def jwt(r: random.Random) -> Secret:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({"sub": _rand(r, 12), "exp": r.randint(10**9, 2 * 10**9)}).encode())
        sig = _b64url(r.randbytes(32))
        token = f"{header}.{payload}.{sig}"
        return Secret("jwt", f"got token {token} from idp", [payload, sig])

    def bearer(r: random.Random) -> Secret:
        tok = _rand(r, 28) + "9Z"
        return Secret("bearer", f"Authorization: Bearer {tok}", [tok])

    def bearer_inline(r: random.Random) -> Secret:
        tok = _rand(r, 30) + "7Q"
        return Secret("bearer_inline", f"retrying with Bearer {tok} after 401", [tok])

    def basic(r: random.Random) -> Secret:
        cred = base64.b64encode(f"{_rand(r, 6)}:{_rand(r, 12)}".encode()).decode()
        return Secret("basic", f"header basic {cred}", [cred.rstrip("=")])

    def aws_access(r: random.Random) -> Secret:
        key = r.choice(["AKIA", "ASIA"]) + _rand(r, 16, string.ascii_uppercase + string.digits)
        return Secret("aws_access", f"using {key} for s3", [key])

    def aws_secret(r: random.Random) -> Secret:
        secret = _rand(r, 40, _ALNUM + "/+")
        style = r.choice(["env", "json", "ini"])
        text = {
            "env": f"AWS_SECRET_ACCESS_KEY={secret}",
            "json": f'{{"SecretAccessKey": "{secret}"}}',
            "ini": f"aws_secret_access_key = {secret}",
        }[style]
        return Secret("aws_secret", text, [secret])

    def gcp(r: random.Random) -> Secret:
        key = "AIza" + _rand(r, 35, _ALNUM + "_-")
        return Secret("gcp", f"maps key {key}", [key])

    def github(r: random.Random) -> Secret:
        key = "ghp_" + _rand(r, 36)
        return Secret("github", f"clone with {key}", [key[4:]])

    def stripe(r: random.Random) -> Secret:
        key = "sk_live_" + _rand(r, 24)
        return Secret("stripe", f"stripe key {key} rejected", [key[8:]])

    def slack(r: random.Random) -> Secret:
        key = f"xoxb-{r.randint(10**11, 10**12 - 1)}-{_rand(r, 24)}"
        return Secret("slack", f"slack {key}", [key[5:]])

    def pem(r: random.Random) -> Secret:
        kind = r.choice(["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", ""])
        lines = [_rand(r, 64, _ALNUM + "+/") for _ in range(3)]
        block = (
            f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"
        )
        return Secret("pem", f"loaded {block} ok", lines)

    def dsn(r: random.Random) -> Secret:
        pw = _rand(r, 16)
        scheme = r.choice(["postgresql", "mysql", "redis", "amqp", "mongodb+srv"])
        return Secret("dsn", f"connect {scheme}://app_user:{pw}@db.internal:5432/pitchey", [pw])

    def url_password(r: random.Random) -> Secret:
        pw = _rand(r, 14)
        return Secret("url_password", f"fetch https://deploy:{pw}@git.example.net/repo.git", [pw])

    def query(r: random.Random) -> Secret:
        name = r.choice(
            [
                "token",
                "api_key",
                "access_token",
                "password",
                "client_secret",
                "sig",
                "apiKey",
                "X-Amz-Signature",
            ]
        )
        value = _rand(r, 20)
        return Secret("query", f"GET /callback?page=2&{name}={value}&sort=asc", [value])

    def json_password(r: random.Random) -> Secret:
        pw = _rand(r, 10) + " " + _rand(r, 6)
        return Secret(
            "json_password", f'{{"username": "bob", "password": "{pw}"}}', [pw, pw.split()[0], pw.split()[1]]
        )

    def auth_scheme(r: random.Random) -> Secret:
        # Authorization header lines with schemes other than Bearer/Basic: the whole value goes
        cred = _rand(r, 24) + "Zq"
        name = r.choice(["Authorization", "Proxy-Authorization", "authorization"])
        value = r.choice(
            [
                f"Negotiate {cred}",
                f"NTLM {cred}==",
                f"SSWS {cred}",
                f"AWS {_rand(r, 10)}:{cred}",
                f'Digest username="bob", realm="api", nonce="{_rand(r, 16)}", response="{cred}"',
                f"AWS4-HMAC-SHA256 Credential={_rand(r, 10)}/s3, SignedHeaders=host, Signature={cred}",
            ]
        )
        return Secret("auth_scheme", f"{name}: {value}", [cred])

    def json_in_json(r: random.Random) -> Secret:
        # a logged API Gateway event: the request body is JSON inside a JSON string
        pw, key = _rand(r, 8) + " " + _rand(r, 6), _rand(r, 20)
        body = json.dumps({"username": "bob", "password": pw, "api_key": key})
        text = json.dumps({"httpMethod": "POST", "path": "/login", "body": body})
        return Secret("json_in_json", text, [pw, pw.split()[0], pw.split()[1], key])

    def cookie(r: random.Random) -> Secret:
        sid = _rand(r, 24)
        return Secret("cookie", f"Cookie: sessionid={sid}; theme=dark", [sid])

    def ssn(r: random.Random) -> Secret:
        number = f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"
        return Secret("ssn", f"ssn {number} on file", [number])

    def phone(r: random.Random) -> Secret:
        a, b, c = r.randint(200, 999), r.randint(200, 999), r.randint(1000, 9999)
        text = r.choice(
            [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"+44 20 {b}{c % 10} {c}"]
        )
        return Secret("phone", f"call {text} back", [text, f"{b}-{c}", f"{b} {c}", f"{b}.{c}"])

    def cli_option(r: random.Random) -> Secret:
        # a command line (process.command_line, a logged subprocess call): the value after a
        # secret option and a space
        value = _rand(r, 14) + "Zq"
        name = r.choice(
            ["--password", "--db-password", "--secret-key", "--api-key", "--token", "--auth-token"]
        )
        text = r.choice(
            [
                f"pg_dump {name} {value} -h db.internal pitchey",
                f"deploy {name} '{value}' --verbose",
                f"Command '['tool', '{name}', '{value}']' returned non-zero exit status 2.",
            ]
        )
        return Secret("cli_option", text, [value])

    def pin(r: random.Random) -> Secret:
        number = r.randint(100000, 999999)
        text = r.choice(
            [f'{{"user": "bob", "pin": {number}}}', f"user=bob pin={number} ok", f"--pin {number}"]
        )
        return Secret("pin", text, [f'"pin": {number}', f"pin={number}", f"--pin {number}"])

    return {
        fn.__name__: fn
        for fn in (
            email,
            jwt,
            bearer,
            bearer_inline,
            basic,
            aws_access,
            aws_secret,
            gcp,
            github,
            stripe,
            slack,
            pem,
            dsn,
            url_password,
            query,
            json_password,
            auth_scheme,
            json_in_json,
            cookie,
            ssn,
            phone,
            cli_option,
            pin,
        )
    } | {"card": _card}


class _Boom(Exception):
    pass


def _emit(carrier: str, case: int, text: str) -> None:
    """Send ``text`` through one carrier; every carrier produces a record tagged with ``case``."""
    tag = {"case.id": case}
    if carrier == "span_name":
        with pt.span(f"job {text}", attributes=tag):
            pass
    elif carrier == "attribute":
        with pt.span("c", attributes={**tag, "note": text}):
            pass
    elif carrier == "attribute_list":
        with pt.span("c", attributes={**tag, "notes": ["first", text, "last"]}):
            pass
    elif carrier == "event_name":
        with pt.span("c", attributes=tag) as s:
            s.add_event(f"retry {text}")
    elif carrier == "event_attribute":
        with pt.span("c", attributes=tag) as s:
            s.add_event("retry", {"detail": text})
    elif carrier == "exception":
        try:
            with pt.span("c", attributes=tag):
                raise _Boom(f"failed: {text}")
        except _Boom:
            pass
    elif carrier == "status_message":
        with pt.span("c", attributes=tag) as s:
            s.set_status("error", f"upstream said {text}")
    elif carrier == "link_attribute":
        with pt.span("origin") as origin:
            pass
        with pt.span("c", attributes=tag, links=[pt.Link(origin.context, {"why": text})]):
            pass
    elif carrier == "audit_target":
        with pt.span("c", attributes=tag):
            pt.emit_audit("read", f"/files?{text}", "allowed", actor="u-1", category="data_access")
    elif carrier == "audit_attribute":
        with pt.span("c", attributes=tag):
            pt.emit_audit("login", "/login", "denied", category="security", attributes={"reason": text})
    else:  # pragma: no cover - the carrier list is fixed below
        raise AssertionError(carrier)


_TEXT_CARRIERS = [
    "span_name",
    "attribute",
    "attribute_list",
    "event_name",
    "event_attribute",
    "exception",
    "status_message",
    "link_attribute",
    "audit_target",
    "audit_attribute",
]

_KEY_CASES = [
    "password",
    "user.password",
    "db-password",
    "userPassword",
    "http.request.header.authorization",
    "http.request.header.cookie",
    "http.response.header.set-cookie",
    "http.request.header.x-api-key",
    "apiKey",
    "aws.secret_access_key",
    "client_secret",
    "refresh_token",
    "session.id",
    "csrf_token",
    "private_key",
    "credentials",
    "card.number",
    "cvv",
    "ssn",
    "db.query.parameter.0",
]


def _secret_cases(seed: int) -> list[tuple[str, Secret]]:
    rng = random.Random(seed)
    gens = _generators()
    cases = [(carrier, gen(rng)) for carrier in _TEXT_CARRIERS for gen in gens.values()]
    rng.shuffle(cases)
    return cases


def _exported_text(console: io.StringIO, records: list[dict[str, object]]) -> tuple[str, str]:
    return console.getvalue(), "\n".join(json.dumps(r) for r in records)


def test_secret_corpus_never_reaches_an_exporter() -> None:
    cases = _secret_cases(seed=20240611)
    rng = random.Random(7)
    key_values = [(key, f"kv{_rand(rng, 18)}") for key in _KEY_CASES]
    # Statement text as an application would log it, literals inlined (what we must strip).
    select = "SELECT * FROM users WHERE name = '{}' AND pin = {}"
    insert = "INSERT INTO notes (body) VALUES ($${}$$)"
    sql_values = [select.format("Zq" + _rand(rng, 10), rng.randint(10**7, 10**8)) for _ in range(5)]
    sql_values += [insert.format("Zq" + _rand(rng, 12)) for _ in range(5)]
    resource_secret = f"Zq{_rand(rng, 16)}"
    baggage_email = f"{_rand(rng, 9, string.ascii_lowercase)}@example.org"
    total = len(cases) + len(key_values) + len(sql_values) + 2
    assert total >= 200

    console = io.StringIO()
    with capture_spans(
        exporters=[ConsoleExporter(console)],
        resource_attributes={"deploy.token": resource_secret, "owner": baggage_email},
    ) as mem:
        for i, (carrier, secret) in enumerate(cases):
            _emit(carrier, i, secret.text)
        for key, value in key_values:
            with pt.span("kv", attributes={key: value}):
                pass
        for stmt in sql_values:
            with pt.span("SELECT users", attributes={"db.query.text": stmt, "db.system.name": "postgresql"}):
                pass
        ctx = pt.TraceContext(0x1234, 0x5678, baggage=(("user.id", baggage_email),))
        with pt.span("baggage", context=ctx):
            pt.emit_audit("view", "/pitches/1", "allowed")
    ndjson, memory = _exported_text(console, mem.records)

    # Every case was exported (so the assertions below are about real output).
    tagged = {r["attributes"].get("case.id") for r in mem.spans()}
    assert tagged >= set(range(len(cases)))
    assert len(mem.of_type("audit")) == 2 * len(_generators()) + 1
    assert len(ndjson.splitlines()) == len(mem.records)

    leaks = []
    for carrier, secret in cases:
        for bad in secret.forbidden:
            for name, out in (("console", ndjson), ("memory", memory)):
                if bad in out:
                    leaks.append((name, carrier, secret.kind, bad))
    for key, value in key_values:
        for name, out in (("console", ndjson), ("memory", memory)):
            if value in out:
                leaks.append((name, "key", key, value))
    for stmt in sql_values:
        literal = stmt.split("Zq", 1)[1][:10]
        for name, out in (("console", ndjson), ("memory", memory)):
            if literal in out:
                leaks.append((name, "sql", stmt, literal))
    for bad in (resource_secret, baggage_email):
        for name, out in (("console", ndjson), ("memory", memory)):
            if bad in out:
                leaks.append((name, "resource/baggage", bad, bad))
    assert leaks == []
    # The markers are there instead.
    assert "[CARD]" in memory
    assert "[EMAIL]" in memory
    assert "[PRIVATE KEY]" in memory
    assert '"deploy.token": "[REDACTED]"' in memory
    assert any(r["actor"] == "[EMAIL]" for r in mem.of_type("audit"))


BENIGN_ATTRIBUTES: dict[str, object] = {
    "http.request.method": "GET",
    "http.route": "/api/v1/pitches/{pitch_id}",
    "url.full": "https://api.example.com/v1/pitches/42?page=2&sort=-created_at",
    "url.path": "/api/v1/pitches/42",
    "url.query": "page=2&per_page=50&q=rocket",
    "http.response.status_code": 200,
    "server.address": "api.example.com",
    "server.port": 443,
    "user_agent.original": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 Version/17.2 Safari/605.1.15"
    ),
    "request.id": "550e8400-e29b-41d4-a716-446655440000",
    "app.version": "2.14.3",
    "build.sha": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
    "event.time": "2024-01-15T10:30:45.123456Z",
    "order.number": "4111111111111112",
    "order.reference": "ORD-2024-000123-7781",  # 14 digits, Luhn-valid, but not a card's grouping
    "invoice.number": "1234 5678 9012 3456",
    "order.total": 1299.99,
    "pitch.ids": [101, 102, 103],
    "feature.flags": ["new-editor", "beta-upload"],
    "cache.hit": True,
    "db.system.name": "postgresql",
    "db.query.text": "SELECT p.id, p.title FROM pitches p WHERE p.owner_id = %s AND p.status IN (?) LIMIT ?",
    "db.statement": "UPDATE users SET password = ? WHERE id = $1",
    "db.collection.name": "public.pitches",
    "db.operation.name": "SELECT",
    "messaging.message.id": "1700000000123-0",
    "code.function": "load_pitch",
    "code.filepath": "/app/pitches/views.py",
    "gen_ai.usage.input_tokens": 1234,
    "token_type": "Bearer",
    "retry.count": 3,
    # command lines: switches and options that name a secret without holding it keep their values
    "process.command_line": (
        "pg_dump --no-password --password-file /run/secrets/pgpass --token-url https://auth.example.com/t "
        "--format=custom -p 5432 pitchey"
    ),
    "process.command_args": ["pg_dump", "--no-password", "pitchey", "--token-count", "3", "-p", "5432"],
    "gpio.config": "spin=3 pinned=true pin_count=2 hairpin=1",
    "note": "Basic plan upgraded; the bearer of the account is Jane Doe",
}


def test_benign_corpus_survives_unchanged() -> None:
    console = io.StringIO()
    with capture_spans(exporters=[ConsoleExporter(console)]) as mem:
        with pt.span("GET /api/v1/pitches/{pitch_id}", attributes=BENIGN_ATTRIBUTES) as s:
            s.add_event("cache_miss", {"cache.key": "pitch:42:v3", "ttl_s": 300})
            s.set_status("error", "upstream timeout after 3 retries (30s)")
        pt.emit_audit("pitch.update", "/api/v1/pitches/42", "allowed", actor="user-42")
    (span,) = mem.spans()
    assert span["name"] == "GET /api/v1/pitches/{pitch_id}"
    assert span["attributes"] == BENIGN_ATTRIBUTES
    assert span["events"][0]["attributes"] == {"cache.key": "pitch:42:v3", "ttl_s": 300}
    assert span["status_message"] == "upstream timeout after 3 retries (30s)"
    (audit,) = mem.of_type("audit")
    assert (audit["actor"], audit["action"], audit["target"], audit["outcome"]) == (
        "user-42",
        "pitch.update",
        "/api/v1/pitches/42",
        "allowed",
    )
    exported = [json.loads(line) for line in console.getvalue().splitlines()]
    assert next(r for r in exported if r["type"] == "span")["attributes"] == BENIGN_ATTRIBUTES
