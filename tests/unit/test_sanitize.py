"""Sanitizer rules, modes, carriers, limits and guarantees (unit level; the exported-output
corpus is in test_sanitize_corpus.py and tests/integration/test_sanitize_export.py)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import _stats, sanitize
from pitchey_trace.sanitize import TRUNCATED_SUFFIX, Sanitizer
from pitchey_trace.testing import capture_spans

SAN = Sanitizer()


def _span(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": None,
        "name": "GET /pitches/{id}",
        "kind": "server",
        "service": "pitch-api",
        "environment": "test",
        "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_000_500_000_000,
        "duration_ms": 500.0,
        "status": "unset",
        "status_message": None,
        "category": "normal",
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {"service.name": "pitch-api"},
    }
    record.update(fields)
    return record


# ---------------------------------------------------------------------------------------------
# value detectors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("contact ann.smith+tag@mail.example.co.uk today", "contact [EMAIL] today"),
        ("<Bob.O'Neil@example.org>", "<Bob.O'[EMAIL]>"),
        ("card 4111 1111 1111 1111 declined", "card [CARD] declined"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("pan=5500000000000004;", "pan=[CARD];"),
        ("amex 3782 822463 10005 ok", "amex [CARD] ok"),
        ("diners 3056 930902 5904", "diners [CARD]"),
        ("diners 3056 9309 0259 04", "diners [CARD]"),
        ("mc2 2221 0012 3412 3450 ok", "mc2 [CARD] ok"),
        ("card_4012888888881881", "card_[CARD]"),
        ("paid with 4111 1111 1111 1111, 5500 0000 0000 0004", "paid with [CARD], [CARD]"),
        ("Authorization: Bearer abcDEF123.xyz", "Authorization: [REDACTED]"),
        ("retrying with Bearer abcDEF123456 now", "retrying with Bearer [REDACTED] now"),
        ("basic dXNlcjpwYXNzd29yZA== sent", "basic [REDACTED] sent"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJl end", "token [JWT] end"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "aws [KEY] key"),
        ("temp ASIAY34FZKBOKMUTVV7A", "temp [KEY]"),
        ("gcp AIzaSyA-1234567890abcdefghijklmnopqrstu", "gcp [KEY]"),
        ("gh ghp_" + "A1b2C3d4E5" * 3 + "abcdef", "gh [KEY]"),
        ("slack xoxb-123456789012-abcdefABCDEF", "slack [KEY]"),
        ("stripe sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe [KEY]"),
        (
            "key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n"
            "-----END OPENSSH PRIVATE KEY----- ok",
            "key: [PRIVATE KEY] ok",
        ),
        ("cut -----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN", "cut [PRIVATE KEY]"),
        # A key block as the value of a secret name, URL parameter or auth header: masked whole
        # (the name's own match once masked only "-----BEGIN", leaving the key body).
        (
            "token=-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
            "token=[PRIVATE KEY]",
        ),
        (
            "/cb?key=-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----&x=1",
            "/cb?key=[PRIVATE KEY]&x=1",
        ),
        (
            "Authorization: Bearer -----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----",
            "Authorization: [REDACTED]",
        ),
        (
            "postgresql://app:s3cr3t@db.internal:5432/pitchey",
            "postgresql://app:[REDACTED]@db.internal:5432/pitchey",
        ),
        ("redis://:hunter2@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        # A secret with a raw "/" pasted into a URL (AWS secret keys have them): masked whole;
        # a port and path followed by "@" is not a password.
        (
            "postgres://app:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@db:5432/x",
            "postgres://app:[REDACTED]@db:5432/x",
        ),
        ("http://h:8080/a/b@c ok", "http://h:8080/a/b@c ok"),
        ("ssh://git@host:22/repo", "ssh://git@host:22/repo"),
        ("amqp://u:p@ss@mq/vhost", "amqp://u:[REDACTED]@mq/vhost"),
        ("https://ann@example.com:pw@host/x", "https://[EMAIL]:[REDACTED]@host/x"),
        (
            "/cb?code=abc&state=xyz&access_token=ya29.A0ARrdaM&page=2",
            "/cb?code=abc&state=xyz&access_token=[REDACTED]&page=2",
        ),
        ("/p?api_key=k1&token=t2&password=p3", "/p?api_key=[REDACTED]&token=[REDACTED]&password=[REDACTED]"),
        ('{"password": "two words", "user": "bob"}', '{"password": "[REDACTED]", "user": "bob"}'),
        ("{'client_secret': 'abc'}", "{'client_secret': '[REDACTED]'}"),
        ('{"pwd":"a\\"b"}', '{"pwd":"[REDACTED]"}'),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        ),
        ('"SecretAccessKey": "wJalrXUtnFEMI"', '"SecretAccessKey": "[REDACTED]"'),
        (
            "Endpoint=sb://x;AccountKey=abc+def==;Suffix=core",
            "Endpoint=sb://x;AccountKey=[REDACTED];Suffix=core",
        ),
        ("host=db user=app password=hunter2 dbname=p", "host=db user=app password=[REDACTED] dbname=p"),
        ("Cookie: sid=abc; theme=dark", "Cookie: [REDACTED]"),
        ("X-Api-Key: k-123", "X-Api-Key: [REDACTED]"),
        ("app --db-password=hunter2 --port 5432", "app --db-password=[REDACTED] --port 5432"),
        (
            '{"credentials": {"password": "x1", "user": "bob"}}',
            '{"credentials": "[REDACTED]"}',  # everything under a secret name goes
        ),
        # a list as a repr / JSON member becomes a string, so the text stays a literal / JSON
        ("{'token': ['a1', 'b2'], 'n': 1}", "{'token': '[REDACTED]', 'n': 1}"),
        ("token=[a1, b2] n=1", "token=[REDACTED] n=1"),
        ("ssn 123-45-6789.", "ssn [SSN]."),
        ("ssn 123 45 6789", "ssn [SSN]"),
        ("call +1 (555) 123-4567 or 555.123.4567", "call [PHONE] or [PHONE]"),
        ("(555) 123-4567", "[PHONE]"),
        ("uk +44 20 7946 0958", "uk [PHONE]"),
        ("e164 +15551234567", "e164 [PHONE]"),
    ],
)
def test_detectors(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


BENIGN = [
    "GET",
    "/api/v1/pitches/{pitch_id}/comments",
    "https://api.example.com/v2/pitches?page=2&sort=-created",
    "550e8400-e29b-41d4-a716-446655440000",
    "v1.2.3",
    "1.2.3.4.5",
    "python 3.11.7",
    "2024-01-15T10:30:45.123456Z",
    "2024-01-15 10:30:45",
    "1700000000123456789",
    "order 4111111111111112",  # fails Luhn
    "order ORD-2024-0001-7781-3345",
    "invoice 1234 5678 9012 3456",  # fails Luhn
    "ref ORD-2024-000123-7781",  # Luhn-valid 14 digits, but an id's grouping and prefix
    "batch 4000-123456-7899",  # Luhn-valid, 4-6-4 is Diners-only (30/36/38)
    "ts 1700000000123",  # 13 digits starting with 1: no card network
    "SELECT * FROM pitches WHERE id = %s AND owner = $2",
    "UPDATE users SET password = ? WHERE id = ?",
    "SELECT p.id FROM pitches p WHERE p.title = %(title)s",
    "Basic authentication failed",
    "the bearer of bad news",
    "token_count=42",
    "author=Jane Doe",
    "next page cursor: 8f14e45f",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "ValueError: invalid literal for int() with base 10: 'abc'",
    'File "/app/pitches/views.py", line 42, in load_pitch',
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "10.0.0.1:5432",
    "127.0.0.1",
    "price 1299.99 EUR",
    "port 8080",
    "ticket #12345678",
    "call 555-1234",
    "http://localhost:8000/healthz",
    "git@github.com",  # not an email TLD... it is: see test below
]


@pytest.mark.parametrize("text", [t for t in BENIGN if "@" not in t])
def test_benign_text_unchanged(text: str) -> None:
    assert SAN.scrub(text) == text


def test_detector_boundaries() -> None:
    # Digits glued to letters are identifiers, not cards; a card inside a longer digit run is
    # not a card either (timestamps, ids).
    assert SAN.scrub("id4111111111111111") == "id4111111111111111"
    assert SAN.scrub("99994111111111111111") == "99994111111111111111"
    assert SAN.scrub("hash:0123456789abcdef") == "hash:0123456789abcdef"


def test_decimal_fractions_are_not_cards_but_cards_after_a_dot_are() -> None:
    import random

    # The fraction of a decimal number (digit "." digits) is not a card, however Luhn-valid:
    # about 4% of str(random.random()) values used to be masked.
    rng = random.Random(1)
    for _ in range(2000):
        text = f"score={rng.random()!r}"
        assert SAN.scrub(text) == text
    assert SAN.scrub('{"p": 0.4111111111111111}') == '{"p": 0.4111111111111111}'
    assert SAN.scrub("v1.4111111111111111") == "v1.4111111111111111"
    # A card after a "." that follows no digit is still a card.
    assert SAN.scrub("Card No.4111111111111111") == "Card No.[CARD]"
    assert SAN.scrub("...4111111111111111") == "...[CARD]"
    assert SAN.scrub("x.4111 1111 1111 1111") == "x.[CARD]"
    assert SAN.scrub("ssn.123-45-6789") == "ssn.[SSN]"


def test_ip_addresses_are_opt_in() -> None:
    text = "client 203.0.113.9 via 2001:db8::1 at 10:30:45"
    assert SAN.scrub(text) == text
    san = Sanitizer(add=[sanitize.ip_addresses()])
    assert san.scrub(text) == "client [IP] via [IP] at 10:30:45"
    assert san.scrub("version 1.2.3.4.5") == "version 1.2.3.4.5"
    partial = Sanitizer(add=[sanitize.ip_addresses(mode="partial")])
    assert partial.scrub("from 203.0.113.9") == "from 203.0.*.*"


def test_phones_can_be_turned_off() -> None:
    rules = [
        r for r in sanitize.default_rules() if not (isinstance(r, sanitize.Detector) and r.kind == "phones")
    ]
    san = Sanitizer(rules)
    assert san.scrub("call (555) 123-4567") == "call (555) 123-4567"
    assert san.scrub("ssn 123-45-6789") == "ssn [SSN]"


# ---------------------------------------------------------------------------------------------
# key rules


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "user.password",
        "Password",
        "db-password",
        "DB_PASSWORD",
        "userPassword",
        "password_confirmation",
        "http.request.header.authorization",
        "http.request.header.proxy-authorization",
        "http.request.header.cookie",
        "http.response.header.set-cookie",
        "X-Api-Key",
        "apiKey",
        "APIKey",
        "x_api_key",
        "aws_access_key_id",
        "aws.secret_access_key",
        "client_secret",
        "refresh_token",
        "sessionToken",
        "session.id",
        "sessionid",
        "JSESSIONID",
        "csrf_token",
        "X-XSRF-TOKEN",
        "private_key",
        "credentials",
        "card.number",
        "cardNumber",
        "cvv",
        "ssn",
        "iban",
        "db.query.parameter.email",
        "http.request.body",
    ],
)
def test_key_rules_mask_strings(key: str) -> None:
    out = SAN(_span(attributes={key: "visible-value-123"}))
    assert out["attributes"] == {key: "[REDACTED]"}


@pytest.mark.parametrize(
    "key",
    [
        "token_type",
        "password_policy",
        "session.duration",
        "http.request.header.x-request-id",
        "gen_ai.usage.input_tokens",
        "author",
        "cardinality",
        "passwords_match",
        "private_key_path",
        "http.request.body.size",
    ],
)
def test_descriptor_keys_are_not_masked(key: str) -> None:
    out = SAN(_span(attributes={key: "Bearer"}))
    assert out["attributes"] == {key: "Bearer"}


def test_numbers_are_masked_only_when_the_key_ends_with_the_term() -> None:
    attrs = {
        "cvv": 123,
        "pin": 4321,
        "llm.token_count.prompt": 42,
        "session.count": 3,
        "password.set": True,
        "token.ref": 4111111111111111,
        "db.query.parameter.0": 42,
        "db.query.parameter.amount": 9.5,
        "db.query.parameter.active": True,
    }
    out = SAN(_span(attributes=attrs))["attributes"]
    assert out == {
        "cvv": "[REDACTED]",
        "pin": "[REDACTED]",
        "llm.token_count.prompt": 42,
        "session.count": 3,
        "password.set": True,
        "token.ref": "[CARD]",  # not masked by the key, still a card
        "db.query.parameter.0": "[REDACTED]",  # every parameter value is data
        "db.query.parameter.amount": "[REDACTED]",
        "db.query.parameter.active": True,
    }


def test_key_rule_masks_lists_and_maps_whole() -> None:
    out = SAN(_span(attributes={"tokens.secret": ["a1", "b2"], "cookie": {"sid": "x"}}))["attributes"]
    assert out == {"tokens.secret": "[REDACTED]", "cookie": "[REDACTED]"}


def test_custom_keys_allow_list_and_text_rules() -> None:
    def no_codenames(key: str, text: str) -> str:
        return text.replace("Bluebird", "[CODENAME]")

    san = Sanitizer(
        add=[sanitize.keys("internal note", marker="[HIDDEN]"), no_codenames],
        allow=["session.id", "user.email"],
    )
    attrs = {
        "internalNote": "call Bob",
        "session.id": "s-123",
        "sessionId": "s-456",
        "user.email": "ann@example.com",
        "project": "Project Bluebird",
    }
    out = san(_span(attributes=attrs, name="deploy Bluebird"))
    assert out["attributes"] == {
        "internalNote": "[HIDDEN]",
        "session.id": "s-123",
        "sessionId": "s-456",
        "user.email": "ann@example.com",
        "project": "Project [CODENAME]",
    }
    assert out["name"] == "deploy [CODENAME]"


def test_custom_pattern_rule() -> None:
    san = Sanitizer(add=[sanitize.pattern("employee", r"EMP-[0-9]{6}")])
    assert san.scrub("by EMP-123456 and emp-654321") == "by [EMPLOYEE] and emp-654321"
    ci = Sanitizer(add=[sanitize.pattern("employee", r"EMP-[0-9]{6}", ignore_case=True, marker="[E]")])
    assert ci.scrub("by EMP-123456 and emp-654321") == "by [E] and [E]"


def test_rules_replace_the_defaults() -> None:
    san = Sanitizer([sanitize.emails()])
    assert san.scrub("ann@example.com 4111111111111111") == "[EMAIL] 4111111111111111"
    assert san(_span(attributes={"password": "x"}))["attributes"] == {"password": "x"}


# ---------------------------------------------------------------------------------------------
# modes


def test_partial_modes() -> None:
    san = Sanitizer(
        add=[
            sanitize.cards(mode="partial"),
            sanitize.emails(mode="partial"),
            sanitize.phones(mode="partial"),
            sanitize.ssns(mode="partial"),
            sanitize.keys("pin", mode=sanitize.partial(2)),
        ]
    )
    text = "4111 1111 1111 1111 / ann@example.com / (555) 123-4567 / 123-45-6789"
    once = san.scrub(text)
    assert once == "[CARD ****1111] / ***@example.com / [PHONE ..67] / [SSN ***-**-6789]"
    assert san.scrub(once) == once
    out = san(_span(attributes={"pin": "12345678", "short.pin": "1"}))["attributes"]
    assert out == {"pin": "[REDACTED ****78]", "short.pin": "[REDACTED]"}


def test_hashed_mode_is_keyed_and_correlatable() -> None:
    h1 = Sanitizer(add=[sanitize.emails(mode=sanitize.hashed(key=b"k" * 16))])
    h2 = Sanitizer(add=[sanitize.emails(mode=sanitize.hashed(key=b"other-key-123"))])
    a = h1.scrub("ann@example.com")
    assert a.startswith("hash:")
    assert len(a) == len("hash:") + 16
    assert h1.scrub("from ANN@example.com") == f"from {a}"  # case-insensitive: same person
    assert h1.scrub("bob@example.com") != a
    assert h2.scrub("ann@example.com") != a
    assert h1.scrub(a) == a
    cards = Sanitizer(add=[sanitize.cards(mode=sanitize.hashed(key="card-key-123", length=12))])
    assert (
        cards.scrub("4111 1111 1111 1111")
        == cards.scrub("4111-1111-1111-1111")
        == cards.scrub("4111111111111111")
    )
    keyed = Sanitizer(add=[sanitize.keys("user id", mode=sanitize.hashed(key=b"k" * 16))])
    out = keyed(_span(attributes={"user.id": "u-42"}))["attributes"]["user.id"]
    assert out.startswith("hash:")
    assert keyed(_span(attributes={"user.id": out}))["attributes"]["user.id"] == out


def test_factories_validate_and_have_readable_reprs() -> None:
    with pytest.raises(ValueError, match="key"):
        sanitize.hashed(key=b"short")
    with pytest.raises(ValueError, match="mode"):
        sanitize.emails(mode="sparkle")
    with pytest.raises(ValueError, match="hashed"):
        sanitize.cards(mode="hash")
    with pytest.raises(ValueError, match="keys"):
        sanitize.keys()
    with pytest.raises(ValueError, match="keep"):
        sanitize.partial(0)
    with pytest.raises(TypeError, match="rule"):
        Sanitizer(add=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_value_length"):
        Sanitizer(max_value_length=0)
    with pytest.raises(TypeError, match="allow"):
        Sanitizer(allow="password")
    assert repr(sanitize.cards(mode="partial")) == "cards(mode=partial(keep=4), marker='[CARD]')"
    assert repr(sanitize.emails(mode=sanitize.hashed(key=b"secret-key-1"))) == (
        "emails(mode=hashed(key=<hidden>, length=16), marker='[EMAIL]')"
    )
    assert "secret-key-1" not in repr(
        Sanitizer(add=[sanitize.emails(mode=sanitize.hashed(key=b"secret-key-1"))])
    )
    assert repr(sanitize.keys("pin", marker="[X]")) == "keys('pin', mode=mask(), marker='[X]')"
    assert (
        repr(sanitize.keys("p", all_values=True))
        == "keys('p', mode=mask(), marker='[REDACTED]', all_values=True)"
    )
    assert repr(sanitize.sql()) == "sql('db.query.text', 'db.statement')"
    assert repr(sanitize.pattern("emp", r"E\d")) == "pattern('emp', 'E\\\\d', mode=mask('[EMP]'))"
    assert repr(Sanitizer()).startswith("Sanitizer(rules=[keys('password'")


# ---------------------------------------------------------------------------------------------
# records and carriers


def test_sql_statements_are_normalised() -> None:
    attrs = {
        "db.query.text": "SELECT * FROM users WHERE email = 'ann@example.com' AND id IN (1, 2, 3) -- x",
        "db.statement": "INSERT INTO t VALUES ($$secret$$, 42)",
        "db.operation.name": "SELECT",
    }
    out = SAN(_span(attributes=attrs))["attributes"]
    assert out == {
        "db.query.text": "SELECT * FROM users WHERE email = ? AND id IN (?)",
        "db.statement": "INSERT INTO t VALUES (?, ?)",
        "db.operation.name": "SELECT",
    }
    own = Sanitizer(add=[sanitize.sql("app.sql")])
    assert own(_span(attributes={"app.sql": "SELECT 'x'"}))["attributes"] == {"app.sql": "SELECT ?"}


def test_every_span_carrier_is_sanitized() -> None:
    email = "ann@example.com"
    record = _span(
        name=f"notify {email}",
        status="error",
        status_message=f"could not reach {email}",
        attributes={"to": email, "list": ["x", email, 7, None, ["nested", email]], f"user.{email}": 1},
        events=[
            {"name": f"sent to {email}", "time_unix_nano": 1, "attributes": {"detail": email}},
            {
                "name": "exception",
                "time_unix_nano": 2,
                "attributes": {
                    "exception.type": "ValueError",
                    "exception.message": f"bad {email}",
                    "exception.stacktrace": f"Traceback...\nValueError: bad {email}\n",
                },
            },
        ],
        links=[{"trace_id": "1" * 32, "span_id": "2" * 16, "attributes": {"from": email}}],
        resource={"service.name": "pitch-api", "owner": email, "nested": {"contact": email}},
        baggage={"user.id": email},
    )
    out = SAN(record)
    assert email not in json.dumps(out)
    assert out["name"] == "notify [EMAIL]"
    assert out["status_message"] == "could not reach [EMAIL]"
    assert out["attributes"] == {
        "to": "[EMAIL]",
        "list": ["x", "[EMAIL]", 7, None, ["nested", "[EMAIL]"]],
        "[EMAIL]": 1,  # the key "user.ann@example.com" is one address
    }
    assert out["events"][1]["attributes"]["exception.message"] == "bad [EMAIL]"
    assert out["links"][0] == {"trace_id": "1" * 32, "span_id": "2" * 16, "attributes": {"from": "[EMAIL]"}}
    assert out["resource"]["nested"] == {"contact": "[EMAIL]"}
    assert out["baggage"] == {"user.id": "[EMAIL]"}
    # Structure is untouched.
    for field in ("trace_id", "span_id", "start_time_unix_nano", "duration_ms", "kind", "status", "category"):
        assert out[field] == record[field]


def test_audit_and_rollup_records() -> None:
    audit = {
        "schema": 1,
        "type": "audit",
        "category": "security",
        "time_unix_nano": 1,
        "trace_id": None,
        "span_id": None,
        "service": "pitch-api",
        "environment": "test",
        "actor": "ann@example.com",
        "action": "login",
        "target": "/login?password=hunter2",
        "outcome": "denied for 123-45-6789",
        "attributes": {"http.request.header.authorization": "Basic dXNlcjpwYXNz"},
    }
    out = SAN(audit)
    assert out == {
        **audit,
        "actor": "[EMAIL]",
        "target": "/login?password=[REDACTED]",
        "outcome": "denied for [SSN]",
        "attributes": {"http.request.header.authorization": "[REDACTED]"},
    }
    rollup = {
        "schema": 1,
        "type": "rollup",
        "operation": "GET /u/ann@example.com",
        "count": 3,
        "sketch": {"1": 2},
    }
    assert SAN(rollup) == {**rollup, "operation": "GET /u/[EMAIL]"}


def test_card_numbers_as_ints() -> None:
    out = SAN(_span(attributes={"payment.ref": 4111111111111111, "order.id": 4111111111111112, "n": 10**20}))
    assert out["attributes"] == {"payment.ref": "[CARD]", "order.id": 4111111111111112, "n": 10**20}


def test_never_mutates_the_input_and_shares_nothing_mutable() -> None:
    resource = {"service.name": "x", "owner": "ann@example.com"}
    records = [
        _span(
            attributes={"password": "p", "to": "ann@example.com", "l": ["ann@example.com"]},
            events=[{"name": "e", "time_unix_nano": 1, "attributes": {"to": "bob@example.com"}}],
            links=[{"trace_id": "1" * 32, "span_id": "2" * 16, "attributes": {"x": "bob@example.com"}}],
            resource=resource,
        )
        for _ in range(3)
    ]
    before = copy.deepcopy(records)
    outs = [SAN(r) for r in records]
    assert records == before
    assert all(r["resource"] is resource for r in records)
    for rec, out in zip(records, outs, strict=True):
        assert out is not rec
        assert out["attributes"] is not rec["attributes"]
        assert out["attributes"]["l"] is not rec["attributes"]["l"]
        assert out["events"] is not rec["events"]
        assert out["events"][0] is not rec["events"][0]
        assert out["events"][0]["attributes"] is not rec["events"][0]["attributes"]
        assert out["links"][0]["attributes"] is not rec["links"][0]["attributes"]
        assert out["resource"] is not resource
        assert out["resource"] == {"service.name": "x", "owner": "[EMAIL]"}


def test_limits() -> None:
    san = Sanitizer(max_attributes=3, max_events=2, max_value_length=20, max_sequence_length=4)
    record = _span(
        attributes={f"a{i}": "v" for i in range(5)} | {"long": "x" * 50},
        events=[{"name": f"e{i}", "time_unix_nano": i, "attributes": {}} for i in range(4)],
    )
    out = san(record)
    assert out["attributes"] == {"a0": "v", "a1": "v", "a2": "v"}
    assert [e["name"] for e in out["events"]] == ["e0", "e1"]
    long = san(_span(attributes={"long": "x" * 50, "seq": list(range(10))}))["attributes"]
    assert long["long"] == "x" * 20 + TRUNCATED_SUFFIX
    assert long["seq"] == [0, 1, 2, 3]
    again = san(_span(attributes=long))["attributes"]
    assert again == long
    stats = _stats.snapshot()
    assert stats["sanitize.attributes_dropped"] == 3
    assert stats["sanitize.events_dropped"] == 2
    assert stats["sanitize.values_truncated"] == 1
    assert stats["sanitize.sequence_items_dropped"] == 6


def test_truncation_never_reveals_a_cut_secret() -> None:
    san = Sanitizer(max_value_length=30)
    # The limit falls inside the secret: it is replaced whole before the value is cut.
    out = san.scrub("x" * 20 + " 4111 1111 1111 1111 and more text after it")
    assert out == "x" * 20 + " [CARD] an" + TRUNCATED_SUFFIX
    email = san.scrub("y" * 20 + " ann.smith@example.com and more text here")
    assert email == "y" * 20 + " [EMAIL] a" + TRUNCATED_SUFFIX
    # Cutting a long benign digit run can leave a card-shaped number: scanned again.
    cut = san.scrub("x" * 14 + "4111111111111111" + "9" * 40)
    assert cut == "x" * 14 + "4111111111111111" + TRUNCATED_SUFFIX  # glued to letters: an id
    spaced = san.scrub("x" * 13 + " 4111111111111111" + "9" * 40)
    assert spaced == "x" * 13 + " [CARD]" + TRUNCATED_SUFFIX
    assert san.scrub(spaced) == spaced


def test_defaults_are_documented_values() -> None:
    san = Sanitizer()
    assert (san.max_attributes, san.max_events, san.max_value_length, san.max_sequence_length) == (
        128,
        128,
        8192,
        256,
    )
    assert san.cache_size == 8192


def test_cache_changes_nothing_but_speed() -> None:
    uncached = Sanitizer(cache_size=0)
    tiny = Sanitizer(cache_size=2)
    resource = {"owner": "ann@example.com"}
    records = [
        _span(
            name=f"n{i % 3} ann@example.com",
            attributes={"k": f"v{i % 5} 4111111111111111"},
            resource=resource,
        )
        for i in range(20)
    ]
    expected = [SAN(r) for r in records]
    assert [uncached(r) for r in records] == expected
    assert [tiny(r) for r in records] == expected
    assert len(tiny._text_cache) <= 2
    assert uncached._text_cache == {}
    with pytest.raises(ValueError, match="cache_size"):
        Sanitizer(cache_size=-1)


def test_configure_uses_the_sanitizer_by_default() -> None:
    with capture_spans() as mem:
        with pt.span("signup ann@example.com", attributes={"password": "p4ss", "db.query.text": "SELECT 1"}):
            pass
    (span,) = mem.spans()
    assert span["name"] == "signup [EMAIL]"
    assert span["attributes"] == {"password": "[REDACTED]", "db.query.text": "SELECT ?"}


def test_configure_accepts_a_custom_sanitizer_or_none() -> None:
    with capture_spans(sanitizer=Sanitizer(allow=["password"])) as mem:
        with pt.span("s", attributes={"password": "p4ss"}):
            pass
    assert mem.spans()[0]["attributes"] == {"password": "p4ss"}
    with capture_spans(sanitizer=None) as mem:
        with pt.span("ann@example.com"):
            pass
    assert mem.spans()[0]["name"] == "ann@example.com"


# ---------------------------------------------------------------------------------------------
# properties and hostile input

_SECRETISH = st.lists(
    st.sampled_from(
        [*"0123456789 -.()+@:=/_?&;'\"aAbBeEkKpPsStTyYJZ[]*#\n", "Bearer ", "eyJ", "password", "4111", "://"]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), _SECRETISH))
def test_scrub_is_idempotent_and_never_raises(text: str) -> None:
    once = SAN.scrub(text)
    assert SAN.scrub(once) == once


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(attrs=st.dictionaries(st.text(max_size=20), _JSON, max_size=8), name=st.text(), extra=_JSON)
def test_records_idempotent_never_raise_and_input_kept(attrs: dict[str, Any], name: str, extra: Any) -> None:
    record = _span(name=name, attributes=attrs, extra=extra)
    before = copy.deepcopy(record)
    once = SAN(record)
    assert record == before
    assert SAN(once) == once


_HOSTILE = {
    "word": "a" * 1_000_000,
    "underscored": "a_" * 500_000,
    "digits": "1" * 1_000_000,
    "spaced digits": "1 " * 500_000,
    "grouped digits": "4111 " * 200_000,
    "dashed digits": "-1" * 500_000,
    "at signs": "@" * 1_000_000,
    "email-ish": "a@b." * 250_000,
    "long local part": ("a" * 63 + ".") * 15_625,
    "dots": "." * 1_000_000,
    "colons": "a:" * 500_000,
    "schemes": "http://" * 142_857,
    "url userinfo": "x://u:" * 166_666,
    "url password slashes": ("x://u:" + "a" * 127 + "/" + "b" * 255) * 2_570,
    "kv names": "password=" * 111_111,
    "kv no separator": "password" * 125_000,
    "kv lists": "token=[" * 142_857,
    "kv maps": "token={" * 142_857,
    "kv maps after =": "password={" * 100_000,
    "kv map openers": "password={a" * 90_909,
    "kv flat maps": "password={a}" * 83_333,
    "kv maps after colon": "secret: {a " * 90_909,
    "kv maps unclosed": ("password={" + "a" * 4095 + " ") * 243,
    "kv open quotes": 'token="' * 142_857,
    "kv flags": " --password" * 90_909,
    "quotes": '"password": "' * 71_428,
    "jwt-ish": "eyJ" * 333_333,
    "jwt dots": "eyJaaaa." * 125_000,
    "bearer": "Bearer " * 142_857,
    "pem headers": "-----BEGIN PRIVATE KEY-----" * 37_037,
    "phones": "(555) " * 166_666,
    "plus": "+1 " * 333_333,
    "aws prefixes": "AKIA" * 250_000,
    "iban groups": "DE89 3704 " * 100_000,
    "iban-ish": "AB12" * 250_000,
}


@pytest.mark.timeout(120)  # a hang guard, not a measurement: quadratic behaviour takes many minutes
@pytest.mark.parametrize("name", list(_HOSTILE))
def test_hostile_megabyte_strings(name: str) -> None:
    san = Sanitizer(add=[sanitize.ip_addresses()], max_value_length=2_000_000)
    text = _HOSTILE[name]
    out = san.scrub(text)
    assert isinstance(out, str)
    assert san.scrub(out) == out
    record = _span(attributes={"payload": text}, name=text[:100])
    exported = Sanitizer()(record)
    assert len(exported["attributes"]["payload"]) <= 8192 + len(TRUNCATED_SUFFIX)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("q=4242%204242%204242%204242", "4242"),
        ("q=4242+4242+4242+4242", "4242"),
        ("q=ada%40pitchey.example", "ada"),
        ("https://x.test/s?email=grace%2540example.org", "grace"),  # double-encoded
        ("next=%2Fhome%3Fcard%3D4111-1111-1111-1111", "1111-1111"),
    ],
)
def test_url_encoded_secrets_are_decoded_and_masked(text: str, secret: str) -> None:
    san = Sanitizer()
    out = san({"type": "span", "attributes": {"url.query": text}})["attributes"]["url.query"]
    assert secret not in out
    assert "[" in out  # a marker replaced it
    assert san({"type": "span", "attributes": {"url.query": out}})["attributes"]["url.query"] == out


@pytest.mark.parametrize("text", ["GET /a+b?x=1", "q=hello%20world", "path=%2Fv1%2Fpitches", "1+1=2"])
def test_benign_encoded_text_is_left_alone(text: str) -> None:
    assert Sanitizer()({"type": "span", "attributes": {"u": text}})["attributes"]["u"] == text


_TEXT = st.one_of(
    st.sampled_from(
        ["GET /users/{id}", "/users/{id}", "bob@example.com", "10.1.2.3", "", "200", "4111 1111 1111 1111"]
    ),
    st.text(max_size=30),
)


@settings(max_examples=150, deadline=None)
@given(
    action=_TEXT,
    target=_TEXT,
    actor=st.one_of(st.none(), _TEXT, st.integers(min_value=0, max_value=10**17)),
    client=st.one_of(st.none(), st.just(""), _TEXT),
    status=st.one_of(st.integers(min_value=0, max_value=599), st.just(4111111111111111)),
    duration=st.integers(min_value=0, max_value=10**12),
    config=st.sampled_from(["default", "ip", "rule", "mask_client"]),
)
def test_fused_request_audit_equals_building_then_sanitizing(
    action: str, target: str, actor: Any, client: Any, status: int, duration: int, config: str
) -> None:
    from pitchey_trace.records import PENDING_AUDIT, request_audit

    san = {
        "default": lambda: Sanitizer(),
        "ip": lambda: Sanitizer(add=[sanitize.ip_addresses()]),
        "rule": lambda: Sanitizer(add=[lambda key, text: text.replace("users", "U")]),
        "mask_client": lambda: Sanitizer(add=[sanitize.keys("client.address")]),
    }[config]()
    pending = (
        PENDING_AUDIT,
        "request",
        123,
        0xAB,
        0xCD,
        actor,
        action,
        target,
        "200",
        "GET",
        status,
        duration,
        client,
    )
    expected = san(request_audit(pending, "svc", "prod"))
    for _ in range(2):  # cold and warm caches
        assert _no_id(san._request_audit(pending, "svc", "prod")) == _no_id(expected)


def _no_id(rec: Any) -> Any:
    """A request audit with its random ``record_id`` (checked, and kept in its place) blanked."""
    assert re.fullmatch(r"[0-9a-f]{16}", rec["record_id"])
    return {**rec, "record_id": ""}


def test_c_request_audit_builder_is_used_once_the_caches_are_warm() -> None:
    import gc

    from pitchey_trace import _accel
    from pitchey_trace.records import PENDING_AUDIT, request_audit

    build = _accel.build_audit_record
    if build is None:  # pure-Python mode (make test runs the unit tests in both modes)
        return
    san = Sanitizer()
    pending = (
        PENDING_AUDIT,
        "security",
        9,
        0xAB,
        0,
        "u@x.io",
        "GET /a/{id}",
        "/a/{id}",
        "403",
        "GET",
        403,
        1_500_000,
        "10.0.0.1",
    )
    args = (san._key_cache, san._text_cache, san._sql_cache, san.max_attributes)
    assert build(pending, "svc", "prod", *args) is None  # cold caches: the Python builder
    expected = san(request_audit(pending, "svc", "prod"))
    assert _no_id(san._request_audit(pending, "svc", "prod")) == _no_id(expected)  # fills the caches
    rec = build(pending, "svc", "prod", *args)
    assert rec is not None
    assert _no_id(rec) == _no_id(expected)
    assert rec["record_id"] != expected["record_id"]
    assert list(rec) == list(expected)  # same field order in exported JSON
    assert (rec["actor"], rec["span_id"], rec["attributes"]["duration_ms"]) == ("[EMAIL]", None, 1.5)
    assert not gc.is_tracked(rec)
    assert build(pending[:5], "svc", "prod", *args) is None  # not the expected shape
    assert build(pending, "svc", "prod", *args[:3], 3) is None  # fewer attributes allowed
    with pytest.raises(TypeError):
        build([], "svc", "prod", *args)


@settings(max_examples=300, deadline=None)
@given(
    ms=st.integers(min_value=0, max_value=2**52),
    rest=st.one_of(st.sampled_from([0, 1, 499, 500, 501, 999]), st.integers(min_value=0, max_value=999)),
)
def test_c_audit_duration_is_rounded_exactly_as_python_rounds(ms: int, rest: int) -> None:
    from pitchey_trace import _accel
    from pitchey_trace.records import PENDING_AUDIT

    build = _accel.build_audit_record
    if build is None:  # pure-Python mode
        return
    san = Sanitizer()
    # the C builder computes round(d / 1e6, 3) with integers except for ties and huge values
    for duration in (ms * 1000 + rest, ms, rest):
        pending = (PENDING_AUDIT, "request", 1, 0xAB, 0xCD, None, "GET", "", "200", "GET", 200, duration, "")
        san._request_audit(pending, "svc", "prod")  # warm caches
        rec = build(pending, "svc", "prod", san._key_cache, san._text_cache, san._sql_cache, 128)
        assert rec is not None
        assert repr(rec["attributes"]["duration_ms"]) == repr(round(duration / 1e6, 3))


def test_request_audits_in_a_chunk_equal_one_by_one_and_keep_the_rest_in_order() -> None:
    from pitchey_trace.records import PENDING_AUDIT

    san = Sanitizer()

    def pending(i: int, actor: Any = None) -> tuple[Any, ...]:
        return (
            PENDING_AUDIT,
            "request",
            i,
            0xAB,
            0xCD,
            actor,
            "GET /a",
            "/a",
            "200",
            "GET",
            200,
            10,
            "1.2.3.4",
        )

    warm = pending(1)
    san._request_audit(warm, "s", "e")  # its texts are now cached
    cold_actor = pending(2, actor=f"new-{id(san)}@example.com")  # a text the caches have not seen
    items: list[Any] = [
        warm,
        {"type": "audit", "x": 1},
        cold_actor,
        ("other", 1),
        pending(3),
        (PENDING_AUDIT, "x"),
    ]
    audits, rest = san._request_audits(items, "s", "e")
    from pitchey_trace import _accel

    if _accel.build_audit_records is None:  # pure-Python mode: everything goes one by one
        assert (audits, rest) == ([], items)
        return
    assert [_no_id(a) for a in audits] == [
        _no_id(san._request_audit(warm, "s", "e")),
        _no_id(san._request_audit(pending(3), "s", "e")),
    ]
    assert rest == [items[1], cold_actor, ("other", 1), (PENDING_AUDIT, "x")]
    assert san._request_audit(cold_actor, "s", "e")["actor"] == "[EMAIL]"


# -- IBANs ---------------------------------------------------------------------------------------
def _iban(country: str, bban: str) -> str:
    """A valid IBAN for ``bban``: the check digits computed as ISO 13616 says."""
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pay DE89 3704 0044 0532 0130 00 now", "pay [IBAN] now"),
        ("GB82 WEST 1234 5698 7654 32", "[IBAN]"),
        ("to NL91ABNA0417164300.", "to [IBAN]."),
        ("iban=FR1420041010050500013M02606", "iban=[IBAN]"),
        ('{"account": "BE68539007547034"}', '{"account": "[IBAN]"}'),
        # a wrong check digit, a wrong length for the country, an unknown country: left alone
        ("DE89 3704 0044 0532 0130 01", "DE89 3704 0044 0532 0130 01"),
        ("DE8937040044053201300", "DE8937040044053201300"),
        ("ZZ89370400440532013000", "ZZ89370400440532013000"),
        ("order AB12CDEF3456789012", "order AB12CDEF3456789012"),
        ("xDE89370400440532013000", "xDE89370400440532013000"),  # (inside a word)
    ],
)
def test_ibans(text: str, expected: str) -> None:
    assert Sanitizer().scrub(text) == expected


def test_iban_partial_mode_keeps_the_last_four() -> None:
    san = Sanitizer(rules=[sanitize.ibans(mode="partial")])
    assert san.scrub("DE89 3704 0044 0532 0130 00") == "[IBAN ****3000]"


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(sanitize._IBAN_LENGTHS)),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_every_valid_iban_is_masked_and_a_changed_digit_is_not(country: str, rng: Any, grouped: bool) -> None:
    length = sanitize._IBAN_LENGTHS[country]
    bban = "".join(rng.choice("0123456789") for _ in range(length - 4))
    iban = _iban(country, bban)
    shown = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if grouped else iban
    if len(iban) - 4 > 30 or (grouped and len(iban) > 32):
        return  # (beyond what the printed forms we scan allow: LC, RU)
    assert Sanitizer().scrub(f"wire to {shown} today") == "wire to [IBAN] today"
    broken = iban[:-1] + str((int(iban[-1]) + 1) % 10)
    assert Sanitizer().scrub(f"wire to {broken}") == f"wire to {broken}"  # (mod 97 catches one digit)
