"""Detector edges: secrets glued to the text around them (a cloud key or a JWT after a letter,
a digit, "-" or "_", or before a word) are masked, a seeded fuzz of adjacency for every secret
kind the sanitizer documents, and a corpus of ordinary text that must stay as it is."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

import pitchey_trace as pt
from pitchey_trace import sanitize
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.web import export_logs, stop_export_logs
from tests.support.sanitizers import SAN_IDS, SANITIZERS

SAN = Sanitizer()
HASHED = Sanitizer(
    [
        *sanitize.default_rules(),
        *(f(mode=sanitize.hashed(key=b"k" * 16)) for f in (sanitize.jwts, sanitize.cloud_keys)),
    ]
)

AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AKIAIOSFODNN7EXAMPLEtoken=1", "[KEY]token=[REDACTED]"),
        ("xAKIAIOSFODNN7EXAMPLE", "x[KEY]"),
        ("1AKIAIOSFODNN7EXAMPLE2", "1[KEY]2"),
        ("AKIAIOSFODNN7EXAMPLEAKIAIOSFODNN7EXAMPLE", "[KEY][KEY]"),
        ("auth-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "auth-[JWT]"),
        ("x_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "x_[JWT]"),
        ("tokeneyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "token[JWT]"),
        ("id=7eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig rest", "id=7[JWT] rest"),
        ("key-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig=1", "key-[JWT]=1"),
        ("xAIzaSyA1234567890abcdefghijklmnopqrstuv", "x[KEY]"),
        ("idghp_abcdefghijklmnopqrstuvwxyz0123456789", "id[KEY]"),
        ("vnpm_abcdefghijklmnopqrstuvwxyz0123456789", "v[KEY]"),
        ("xsk_live_4eC39HqLyjWDarjtT1zdp7dc", "x[KEY]"),
        ("xsk-proj-abcdefghijklmnopqrstuvwxyz", "x[KEY]"),
        ("xxoxb-1234567890-abcdefghij", "x[KEY]"),
        ("aglpat-abcdefghijklmnopqrst", "a[KEY]"),
        ("MSG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "M[KEY]"),
    ],
)
def test_glued_keys_and_jwts_are_masked(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a name may start with "_" (Laravel's "_token" form field, "__csrf_token")
        ("x=1&_token=abc123def&y=2", "x=1&_token=[REDACTED]&y=2"),
        ("__csrf_token=abc12345", "__csrf_token=[REDACTED]"),
        ("_pass=hunter22", "_pass=[REDACTED]"),
        ("__init__=1 _x=2", "__init__=1 _x=2"),
        # a value followed by "(" and an open string is no call: the "name" was the token
        ('token=Zq8sKd93LmWp("}', "token=[REDACTED]"),
        ('{"v": "token=Zq8sKd93LmWp("}', '{"v": "token=[REDACTED]'),
        ('token=SecretStr("abc") next', 'token=SecretStr("[REDACTED]") next'),
        # an email followed by "-"
        ("see ada.lovelace@pitchey.example- ok", "see [EMAIL]- ok"),
        ("ada@foo.co-op.org", "[EMAIL]"),
    ],
)
def test_separator_edges(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_glued_tokens_every_mode_idempotent_and_hidden(san: Sanitizer) -> None:
    for text in (f"x{AWS}token=1", f"auth-{JWT}", f"x_{JWT}", f"1{JWT}x", f"{AWS}a{AWS}"):
        once = san.scrub(text)
        assert san.scrub(once) == once
        assert AWS[4:] not in once
        assert JWT.split(".")[2][:12] not in once


@pytest.fixture
def pipeline() -> Iterator[InMemoryExporter]:
    exporter = InMemoryExporter()
    pt.configure(service="pitch-api", environment="test", exporters=[exporter])
    export_logs("INFO")
    try:
        yield exporter
    finally:
        stop_export_logs()


def test_glued_secrets_never_reach_an_exporter(pipeline: InMemoryExporter) -> None:
    log = logging.getLogger("pitch.s20")
    log.setLevel(logging.INFO)
    texts = [
        "AKIAIOSFODNN7EXAMPLEtoken=1",
        "xAKIAIOSFODNN7EXAMPLE",
        "auth-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "x_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    ]
    with pt.span("glued") as span:
        for i, text in enumerate(texts):
            span.set_attribute(f"app.note{i}", text)
            log.info("saw %s", text)
    assert pt.force_flush(10)
    blob = repr(pipeline.records)
    spans = [r for r in pipeline.records if r["type"] == "span"]
    logs = [r for r in pipeline.records if r["type"] == "log"]
    assert len(spans) == 1
    assert len(logs) == 4
    assert spans[0]["attributes"]["app.note1"] == "x[KEY]"
    assert sorted(r["body"] for r in logs)[0] == "saw AKIAIOSFODNN7EXAMPLEtoken=1".replace(
        AWS, "[KEY]"
    ).replace("token=1", "token=[REDACTED]")
    for secret in ("IOSFODNN7EXAMPLE", "eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxIn0"):
        assert secret not in blob


# -- seeded fuzz of adjacency ------------------------------------------------------------------

# Each documented kind: the text to place, the secret part of it that must not survive, and the
# glue it is tested with. Numbers (cards, SSNs, phones, IBANs) glued to letters or digits are
# identifiers by design ("id4111111111111111", see docs/sanitizing.md), so only separators there.
_ALL = ["x", "Ab", "7", "-", "_", ".", "/", "=", '"', "'", ":", "?a=", "&", "#", "https://h.example/p?q="]
_SEPARATORS = ["-", "_", "/", "=", '"', "'", ":", "?a=", "&", "#", " ", "(", ",", "https://h.example/p?q="]
_SEPARATORS_AFTER = _SEPARATORS[:-1]  # (a URL part after starts with letters)
_KINDS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "aws": (
        AWS,
        AWS,
        _ALL,
        _ALL,
    ),
    "aws session": (
        "ASIAY34FZKBOKMUTVV7A",
        "ASIAY34FZKBOKMUTVV7A",
        _ALL,
        _ALL,
    ),
    "jwt": (
        JWT,
        JWT,
        _ALL,
        _ALL,
    ),
    "google": (
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        _ALL,
        _ALL,
    ),
    "github": (
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "16C7e42F292c6912E7710c838347Ae178B4a",
        _ALL,
        _ALL,
    ),
    "github pat": (
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "11ABCDEFG0123456789_abcd",
        _ALL,
        _ALL,
    ),
    "gitlab": (
        "glpat-xxxxxXXXXX1234567890",
        "xxxxxXXXXX1234567890",
        _ALL,
        _ALL,
    ),
    "slack": (
        "xoxb-2636485937-1234567890123-AbCdEfGhIjKlMnOp",
        "2636485937-1234567890123-AbCdEfGhIjKlMnOp",
        _ALL,
        _ALL,
    ),
    "stripe": (
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "4eC39HqLyjWDarjtT1zdp7dc",
        _ALL,
        _ALL,
    ),
    "npm": (
        "npm_abcdefghijklmnopqrstuvwxyz0123456789",
        "abcdefghijklmnopqrstuvwxyz0123456789",
        _ALL,
        _ALL,
    ),
    "sendgrid": (
        "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",
        "ngeVfQFYQlKU0ufo8x5d1A.TwL2iGABf9DHoTf-09kqeF8tAmbihYzrnopKc-1s5cr",
        _ALL,
        _ALL,
    ),
    "openai project": (
        "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
        "Abc123Def456Ghi789Jkl012Mno345",
        _ALL,
        _ALL,
    ),
    "openai legacy": (
        "sk-AbCdEfGhIjKlMnOpQrStT3BlbkFJuVwXyZaBcDeFgHiJkLmN",
        "AbCdEfGhIjKlMnOpQrStT3BlbkFJuVwXyZaBcDeFgHiJkLmN",
        _ALL,
        _ALL,
    ),
    "pem": (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbody0123\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAsecretbody0123",
        _ALL,
        _ALL,
    ),
    "url password": (
        "postgresql://app:Hunter2Secret99@db.internal/pitchey",
        "Hunter2Secret99",
        _SEPARATORS,
        _ALL,
    ),
    "query token": ("token=Zq8sKd93LmWp", "Zq8sKd93LmWp", _SEPARATORS, _SEPARATORS),
    "bearer": ("Bearer Zq8sKd93LmWpXy", "Zq8sKd93LmWpXy", _SEPARATORS, _SEPARATORS_AFTER),
    "email": ("ada.lovelace@pitchey.example", "ada.lovelace@pitchey.example", _SEPARATORS, _SEPARATORS_AFTER),
    "card": ("4111 1111 1111 1111", "4111 1111 1111 1111", _SEPARATORS, _SEPARATORS_AFTER),
    "card contiguous": ("5500000000000004", "5500000000000004", _SEPARATORS, _SEPARATORS_AFTER),
    "iban": ("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00", _SEPARATORS, _SEPARATORS_AFTER),
    "ssn": ("123-45-6789", "123-45-6789", _SEPARATORS, _SEPARATORS_AFTER),
    "phone": ("+44 20 7946 0958", "+44 20 7946 0958", _SEPARATORS, _SEPARATORS_AFTER),
}
_CONTEXT = ["", "msg ", "error: ", '{"v": "', "see ", "GET /a?b=1&c="]
_CONTEXT_AFTER = ["", " done", '"}', " and more", "\n"]


def _survivors(secret: str, out: str, around: str, size: int = 8) -> list[str]:
    """The pieces of ``secret`` in ``out`` (not counting those the text around it holds too)."""
    pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    return sorted(p for p in pieces if p in out and p not in around)


@pytest.mark.parametrize("kind", list(_KINDS))
@pytest.mark.parametrize("san", [SAN, HASHED], ids=["mask", "hashed"])
def test_seeded_adjacency_fuzz(kind: str, san: Sanitizer) -> None:
    value, secret, before, after = _KINDS[kind]
    rng = random.Random(f"s20-{kind}")
    cases = [(b, a) for b in ["", *before] for a in ["", *after]]
    failures = []
    for b, a in cases:
        head, tail = rng.choice(_CONTEXT) + b, a + rng.choice(_CONTEXT_AFTER)
        out = san.scrub(head + value + tail)
        if _survivors(secret, out, head + "\0" + tail) or san.scrub(out) != out:
            failures.append((head + value + tail, out))
    assert failures == []


# -- what must stay ----------------------------------------------------------------------------

_ORDINARY = [
    "The quick brown fox jumps over the lazy dog, twice; then it sleeps.",
    "Ask a token-bearing question: how many tokens did the model use?",
    "550e8400-e29b-41d4-a716-446655440000",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
    "2024-05-17T09:30:12.123456Z",
    "2024-05-17 09:30:12+02:00",
    "/var/lib/pitchey/uploads/2024/05/report-final_v2.pdf",
    "C:\\Users\\ada\\AppData\\Local\\Temp\\build.log",
    "https://api.pitchey.example/v1/pitches/42?page=2&sort=-created_at",
    "SELECT id, name FROM pitches WHERE owner_id = ? AND created_at > ? ORDER BY id LIMIT ?",
    "eyJuYW1lIjogInBpdGNoZXkifQ==",  # base64 of {"name": "pitchey"}, no JWT (no dots)
    "aGVsbG8gd29ybGQ=",
    "version 3.11.7, pitchey-trace 0.20.0, node v20.11.1, openssl 3.0.13",
    "AKIAtoolsConfig",
    "AKIAshort",
    "ASIA_PACIFIC_REGION",
    "parseJsonKeyJava.loadConfig.apply",
    "monkeyJarContents.items.first",
    "keyJsonPath.value.get",
    "test_bookmark_test_ConnectionTimeouts",
    "laughs_TheLongestCamelCaseIdentifierEver",
    "task-queue-processing-worker-name",
    "disk-0123456789abcdef0123456789abcdef",
    "risk-AssessmentServiceDeploymentV2Handler",
    "CONFIG_MSG.defaultTemplateText.localizedMessageBody",
    "com.example.pitchey.service.PitchRepository.findById",
    "pitchey_trace.exporters.logpush.LogpushExporter",
    "getUserById findAllPitchesByOwnerIdAndStatus",
    "monkeyJar-surveyJson.fieldName.value",
    "hockeyJersey_surveyJs.config.tsx",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
]


@pytest.mark.parametrize("text", _ORDINARY)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert SAN.scrub(text) == text
    assert HASHED.scrub(text) == text


_HOSTILE_GLUED = {
    "glued jwt heads": "xeyJ-" * 200_000,
    "jwt heads after dashes": "eyJ-" * 250_000 + ".ab",
    "glued jwt dots": "xeyJaaaa." * 111_111,
    "glued jwt pairs": "aeyJaaaa.eyJbbbb." * 55_555,
    "glued aws prefixes": "xAKIA" * 200_000,
    "glued github prefixes": "aghp_" * 200_000,
    "glued sendgrid prefixes": "xSG." * 250_000,
    "glued stripe prefixes": "ark_live_" * 111_111,
    "dotted runs": "abcd." * 200_000,
}


@pytest.mark.timeout(120)  # a hang guard, not a measurement: quadratic behaviour takes many minutes
@pytest.mark.parametrize("name", list(_HOSTILE_GLUED))
def test_hostile_megabyte_strings_for_glued_tokens(name: str) -> None:
    san = Sanitizer(max_value_length=2_000_000)
    text = _HOSTILE_GLUED[name]
    out = san.scrub(text)
    assert san.scrub(out) == out
    assert len(out) <= len(text)
