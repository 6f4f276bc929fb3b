"""Two shapes that once leaked: ``Authorization:`` header lines with a scheme other than
Bearer/Basic/Token (only the scheme word was masked), and JSON encoded inside a JSON string
(``{"body": "{\\"password\\": \\"...\\"}"}``, a logged API Gateway event or request body),
where no name matched at all."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace import sanitize
from pitchey_trace.sanitize import _PLACEHOLDER, _RENDERED, Sanitizer

SAN = Sanitizer()

# ---------------------------------------------------------------------------------------------
# Authorization header lines: any scheme, the whole value

_AWS4 = (
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;range;x-amz-date, "
    "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
)
_DIGEST = (
    'Digest username="bob", realm="api@example.org", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
    'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
    'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)

# (header value, substrings that must not be exported)
_SCHEMES = [
    ("AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", ["frJIUN8DYpKDtOLCwo", "AKIAIOSFODNN7"]),
    (_AWS4, ["fe5f80f77d5fa3beca038a", "AKIAIOSFODNN7", "x-amz-date"]),
    ("Negotiate YIIJvwYGKwYBBQUCoIIJszCCCa+gMDAuBgkqhkiC9xIBAgIGCSqGSIb3EgECAgYKKwYBBAGCNwIC", ["YIIJvwYG"]),
    ("NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==", ["TlRMTVNTUAAB"]),
    ("SSWS 00QCjAl4MlV-WPXM-mOOh9S-xxxxxxxxxxxxxxxxxx", ["00QCjAl4MlV"]),
    ("Bot MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs", ["MTk4NjIy", "ZnCjm1XVW7"]),
    ("SharedKey myaccount:ctzMq410TV3wS7upTBcunJTDLEJwMAZuFPfr0mrrA08=", ["ctzMq410TV3w"]),
    ("ApiKey abcDEF123456", ["abcDEF123456"]),
    ("apikey lowercaseonlysecret", ["lowercaseonlysecret"]),
    ("Custom-Scheme a1, b2", ["a1", "b2"]),
    (_DIGEST, ["6629fae49393a053974", "dcd98b7102dd2f0e8", "0a4f113b", "5ccc069c403ebaf9f"]),
    ("Digest username=bob, response=6629fae49393a05397450978507c4ef1", ["6629fae49393a053974"]),
    ("Bearer abc123DEF456ghi789", ["abc123DEF456ghi789"]),
    ("Basic dXNlcjpwYXNzd29yZA==", ["dXNlcjpwYXNzd29yZA"]),
    ("Token abc123def456", ["abc123def456"]),
]


@pytest.mark.parametrize("name", ["Authorization", "authorization", "Proxy-Authorization", "X-Authorization"])
@pytest.mark.parametrize(("value", "forbidden"), _SCHEMES, ids=[v.split()[0] for v, _ in _SCHEMES])
def test_authorization_header_line_masks_the_whole_value(name: str, value: str, forbidden: list[str]) -> None:
    out = SAN.scrub(f"{name}: {value}")
    assert out == f"{name}: [REDACTED]"
    assert not [bad for bad in forbidden if bad in out]
    assert SAN.scrub(out) == out


@pytest.mark.parametrize(("value", "forbidden"), _SCHEMES, ids=[v.split()[0] for v, _ in _SCHEMES])
def test_authorization_header_in_its_usual_carriers(value: str, forbidden: list[str]) -> None:
    cases = {
        # header blocks: the value ends with the line
        f"GET / HTTP/1.1\r\nAuthorization: {value}\r\nHost: api.example.com\r\n\r\n": (
            "GET / HTTP/1.1\r\nAuthorization: [REDACTED]\r\nHost: api.example.com\r\n\r\n"
        ),
        f"Proxy-Authorization: {value}\nAccept: */*": "Proxy-Authorization: [REDACTED]\nAccept: */*",
        # curl, shell-quoted: the value ends with the quote
        f"curl -H 'Authorization: {value}' https://api.example.com/x": (
            "curl -H 'Authorization: [REDACTED]' https://api.example.com/x"
        ),
        # a list of header lines (a Python repr)
        repr([f"Authorization: {value}", "Accept: */*"]): repr(["Authorization: [REDACTED]", "Accept: */*"]),
        # JSON strings holding header lines, with escaped quotes and escaped line breaks
        json.dumps({"headers": f"Authorization: {value}", "n": 1}): (
            json.dumps({"headers": "Authorization: [REDACTED]", "n": 1})
        ),
        json.dumps({"raw": f"Authorization: {value}\r\nHost: x\r\n\r\nbody"}): (
            json.dumps({"raw": "Authorization: [REDACTED]\r\nHost: x\r\n\r\nbody"})
        ),
        # a raw HTTP message inside a JSON string or a bytes repr: the header ends at the escaped
        # line break before the next header, or with the string
        json.dumps({"raw": f"GET / HTTP/1.1\r\nAuthorization: {value}\r\nHost: x\r\n\r\n", "n": 1}): (
            json.dumps({"raw": "GET / HTTP/1.1\r\nAuthorization: [REDACTED]\r\nHost: x\r\n\r\n", "n": 1})
        ),
        json.dumps({"raw": f"GET / HTTP/1.1\r\nAuthorization: {value}", "n": 1}): (
            json.dumps({"raw": "GET / HTTP/1.1\r\nAuthorization: [REDACTED]", "n": 1})
        ),
        repr(f"GET / HTTP/1.1\r\nAuthorization: {value}".encode()): (
            repr(b"GET / HTTP/1.1\r\nAuthorization: [REDACTED]")
        ),
        # the quoted forms (key and value both quoted) mask the quoted value, as before
        repr({"Authorization": value, "Accept": "*/*"}): repr(
            {"Authorization": "[REDACTED]", "Accept": "*/*"}
        ),
        json.dumps({"Proxy-Authorization": value, "x": 1}): json.dumps(
            {"Proxy-Authorization": "[REDACTED]", "x": 1}
        ),
    }
    for text, expected in cases.items():
        out = SAN.scrub(text)
        assert out == expected, text
        assert SAN.scrub(out) == out
        for bad in forbidden:
            assert bad not in out


def test_authorization_header_in_double_quotes_with_unescaped_digest_quotes() -> None:
    # f'bad header "{header}"': the Digest parameters' own quotes do not end the value
    out = SAN.scrub(f'rejected header "Authorization: {_DIGEST}" from client')
    assert out == 'rejected header "Authorization: [REDACTED]" from client'


def test_authorization_prose_is_left_alone() -> None:
    for text in [
        "authorization failed for user bob",
        "Authorization required",
        "Basic authentication failed",
        "the bearer of bad news",
        "authorization=none",
        "Authorization: None",
        "authorization: %s",
        "proxy authorization is not configured",
    ]:
        assert SAN.scrub(text) == text


def test_authorization_header_line_in_other_modes() -> None:
    value = "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw=="
    hashed = Sanitizer(add=[sanitize.secret_params(mode=sanitize.hashed(key=b"k" * 16))])
    out = hashed.scrub(f"Authorization: {value}\nHost: x")
    assert out.startswith("Authorization: hash:")
    assert out.endswith("\nHost: x")
    assert "TlRM" not in out
    assert hashed.scrub(out) == out
    assert hashed.scrub(f"Authorization: {value}") == out.split("\n")[0]  # correlatable
    partial = Sanitizer(add=[sanitize.secret_params(mode="partial")])
    out = partial.scrub("Authorization: Negotiate YIIJvwYGKwYBBQUCoIIJszCCCa+gMDAu\nHost: x")
    assert out == "Authorization: [REDACTED ****MDAu]\nHost: x"
    assert partial.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# JSON inside a JSON string


def _lambda_event(body: dict[str, object]) -> str:
    return json.dumps(
        {"httpMethod": "POST", "path": "/login", "body": json.dumps(body), "isBase64Encoded": False}
    )


@pytest.mark.parametrize(
    "password",
    ["hunter2", "two words", 'with "quotes" and \\ backslash', "tab\tand newline\n", "naïve-Ünïcode-✓", "x"],
)
def test_json_inside_json_is_masked_and_stays_valid_json(password: str) -> None:
    body = {"username": "bob", "password": password, "api_key": "abcDEF123", "remember": True, "n": 3}
    text = _lambda_event(body)
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out
    outer = json.loads(out)
    assert outer["path"] == "/login"
    inner = json.loads(outer["body"])
    assert inner == {**body, "password": "[REDACTED]", "api_key": "[REDACTED]"}
    assert password not in out or len(password) < 2
    assert "abcDEF123" not in out


def test_json_inside_json_the_reported_case() -> None:
    text = json.dumps(
        {"body": json.dumps({"username": "bob", "password": "hunter2", "api_key": "abcDEF123"})}
    )
    out = SAN.scrub(text)
    assert out == json.dumps(
        {"body": json.dumps({"username": "bob", "password": "[REDACTED]", "api_key": "[REDACTED]"})}
    )


def test_json_inside_json_nested_maps_lists_and_other_carriers() -> None:
    body = {
        "user": {"name": "bob", "credentials": {"password": "pw-1", "otp": "123456"}},
        "token": ["t1", "t2"],
    }
    out = SAN.scrub(json.dumps({"body": json.dumps(body)}))
    assert "pw-1" not in out
    assert "123456" not in out
    assert "t1" not in out
    assert "t2" not in out
    assert '\\"name\\": \\"bob\\"' in out
    # a Python repr of a string holding JSON, and a repr that escapes single quotes
    assert SAN.scrub(repr(json.dumps({"password": "hunter2"}))) == repr(
        json.dumps({"password": "[REDACTED]"})
    )
    assert SAN.scrub("'{\\'password\\': \\'hunter2\\'}'") == "'{\\'password\\': \\'[REDACTED]\\'}'"
    # no space after the colon, as compact JSON writes it
    compact = json.dumps({"body": json.dumps({"password": "hunter2"}, separators=(",", ":"))})
    assert json.loads(json.loads(SAN.scrub(compact))["body"]) == {"password": "[REDACTED]"}


def test_json_inside_json_inside_json() -> None:
    inner = json.dumps({"password": 'p"w\\1', "user": "bob"})
    text = json.dumps({"event": json.dumps({"body": inner})})
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out
    assert json.loads(json.loads(json.loads(out)["event"])["body"]) == {
        "password": "[REDACTED]",
        "user": "bob",
    }


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(min_size=1), user=st.text(max_size=10), levels=st.integers(1, 3), ascii_only=st.booleans()
)
def test_json_inside_json_any_value_any_depth(secret: str, user: str, levels: int, ascii_only: bool) -> None:
    text = json.dumps({"user": user, "password": secret}, ensure_ascii=ascii_only)
    for _ in range(levels):
        text = json.dumps({"body": text}, ensure_ascii=ascii_only)
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out
    for _ in range(levels):
        out = json.loads(out)["body"]
    inner = json.loads(out)
    written = json.dumps(secret)[1:-1]
    if not (_RENDERED.fullmatch(written) or _PLACEHOLDER.fullmatch(written)):  # (left as they are)
        assert inner["password"] == "[REDACTED]"


def test_json_inside_json_without_secrets_is_unchanged() -> None:
    for body in [
        {"username": "bob", "token_type": "Bearer", "password_policy": "strong", "page": 2},
        {"query": 'a "quoted" word', "path": "C:\\temp\\x"},
        {},
    ]:
        text = _lambda_event(body)
        assert SAN.scrub(text) == text


def test_json_inside_json_in_partial_and_hashed_modes() -> None:
    text = json.dumps({"body": json.dumps({"password": "correct horse battery"})})
    for mode in (sanitize.partial(4), sanitize.hashed(key=b"k" * 16)):
        san = Sanitizer(add=[sanitize.secret_params(mode=mode)])
        out = san.scrub(text)
        assert "correct horse" not in out
        assert san.scrub(out) == out
        assert set(json.loads(json.loads(out)["body"])) == {"password"}


# ---------------------------------------------------------------------------------------------
# still linear on hostile input

_HOSTILE = {
    "escaped quotes": '\\"password\\": \\"' * 62_500,
    "escaped quotes compact": '\\"password\\":\\"' * 66_666,
    "backslash run": "password: " + "\\" * 1_000_000,
    "backslash runs and quotes": 'password: \\"' + ("\\" * 97 + '"') * 10_000,
    "auth lines": "Authorization: x " * 58_823,
    "auth quoted lines": '"Authorization: x' * 58_823,
    "auth digest openers": '"Authorization: a="' * 52_631,
    "auth escaped": '\\"Authorization: ' * 58_823,
    "auth escaped breaks": "'Authorization: a\\r\\n" * 47_619,
    "auth newlines": "Authorization: a\n" * 58_823,
    "auth after escaped breaks": "\\r\\nAuthorization: a" * 45_454,
    "auth after escaped breaks, openers": '\\nAuthorization: a="' * 50_000,
}


@pytest.mark.timeout(120)  # a hang guard: quadratic behaviour on 1 MB takes many minutes
@pytest.mark.parametrize("name", list(_HOSTILE))
def test_hostile_megabyte_strings(name: str) -> None:
    san = Sanitizer(max_value_length=2_000_000)
    text = _HOSTILE[name]
    t0 = time.perf_counter()
    out = san.scrub(text)
    assert time.perf_counter() - t0 < 30
    assert san.scrub(out) == out
