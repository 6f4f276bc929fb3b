"""Shapes that once leaked: ``Authorization=<scheme> <credential>`` and ``auth: <scheme> ...``
(only the scheme word was masked), compound secret names (``secret_key``, ``SECRET_KEY``,
``signing_key``...), masked JSON numbers and lists that left invalid JSON (a bare
``[REDACTED]``), and partial mode changing its own output on a second pass (secrets ending in
``=``)."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import sanitize
from pitchey_trace.sanitize import _PLACEHOLDER, _RENDERED, Mode, Sanitizer
from pitchey_trace.testing import capture_spans

SAN = Sanitizer()


def _span(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "span", "name": "s", "attributes": attributes}


# ---------------------------------------------------------------------------------------------
# 1. Authorization / auth with "=" and "auth:": the credential after the scheme word goes too

# (value, substrings that must not be exported)
_ONE_TOKEN = [
    ("NTLM abc123secret", ["abc123secret"]),
    ("NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==", ["TlRMTVNTUAAB"]),
    ("Negotiate xyz", ["xyz"]),
    ("Negotiate YIIJvwYGKwYBBQUCoIIJszCCCa+gMDAu", ["YIIJvwYG"]),
    ("AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", ["frJIUN8DYpKDtOLCwo", "AKIAIOSFODNN7"]),
    ("ApiKey abcDEF123456", ["abcDEF123456"]),
    ("apikey lowercaseonlysecret", ["lowercaseonlysecret"]),
    ("SharedKey myaccount:ctzMq410TV3wS7upTBcunJTDLEJwMAZuFPfr0mrrA08=", ["ctzMq410TV3w"]),
    ("SSWS 00QCjAl4MlV-WPXM-mOOh9S-xxxxxxxxxxxxxxxxxx", ["00QCjAl4MlV"]),
    ("Bearer abc123DEF456ghi789", ["abc123DEF456ghi789"]),
    ("Basic dXNlcjpwYXNzd29yZA==", ["dXNlcjpwYXNzd29yZA"]),
    ("Token abc123def456", ["abc123def456"]),
    ("abc123secret", ["abc123secret"]),  # no scheme at all
]
# Parameter lists (Digest, AWS4): "name=value, name=value..." after the scheme word.
_PARAMS = [
    (
        'Digest username="bob", realm="api@example.org", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
        ["6629fae49393a053974", "dcd98b7102dd2f0e8", "0a4f113b", "5ccc069c403ebaf9f", "bob"],
    ),
    ("Digest username=bob, response=6629fae4", ["6629fae4", "bob"]),
    (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-date, "
        "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        ["fe5f80f77d5fa3beca038a", "AKIAIOSFODNN7", "x-amz-date"],
    ),
]
_AUTH_NAMES = ["Authorization", "authorization", "Proxy-Authorization", "X-Authorization", "auth", "Auth"]
_AUTH_NAMES += ["proxy_auth", "X-Auth", "basic_auth", "oauth"]


@pytest.mark.parametrize("name", _AUTH_NAMES)
@pytest.mark.parametrize(("value", "forbidden"), _ONE_TOKEN + _PARAMS, ids=lambda v: str(v)[:12])
def test_auth_equals_form_masks_the_credential_after_the_scheme(
    name: str, value: str, forbidden: list[str]
) -> None:
    cases = {
        f"{name}={value}": f"{name}=[REDACTED]",
        f"{name} = {value}": f"{name} = [REDACTED]",
        # a k=v log line: the next pair stays
        f"level=warn {name}={value} user=eve status=401": f"level=warn {name}=[REDACTED] user=eve status=401",
        f"{name}={value}\nnext line": f"{name}=[REDACTED]\nnext line",
    }
    if value in dict(_ONE_TOKEN):
        # a logged (decoded) query string: the next parameter stays
        cases[f"/cb?{name}={value}&page=2"] = f"/cb?{name}=[REDACTED]&page=2"
    for text, expected in cases.items():
        out = SAN.scrub(text)
        assert out == expected, text
        assert not [bad for bad in forbidden if bad in out], text
        assert SAN.scrub(out) == out


@pytest.mark.parametrize("name", ["auth", "Auth", "X-Auth", "proxy_auth", "basic_auth"])
@pytest.mark.parametrize(("value", "forbidden"), _ONE_TOKEN + _PARAMS, ids=lambda v: str(v)[:12])
def test_auth_header_form_masks_the_whole_line_like_authorization(
    name: str, value: str, forbidden: list[str]
) -> None:
    for text, expected in {
        f"{name}: {value}": f"{name}: [REDACTED]",
        f"{name}: {value}\r\nHost: x\r\n": f"{name}: [REDACTED]\r\nHost: x\r\n",
        f"curl -H '{name}: {value}' https://x.test/": f"curl -H '{name}: [REDACTED]' https://x.test/",
        json.dumps({"raw": f"{name}: {value}\r\nHost: x", "n": 1}): (
            json.dumps({"raw": f"{name}: [REDACTED]\r\nHost: x", "n": 1})
        ),
    }.items():
        out = SAN.scrub(text)
        assert out == expected, text
        assert not [bad for bad in forbidden if bad in out], text
        assert SAN.scrub(out) == out


def test_the_reported_auth_cases() -> None:
    assert SAN.scrub("Authorization=NTLM abc123secret") == "Authorization=[REDACTED]"
    assert SAN.scrub("auth: Negotiate xyz") == "auth: [REDACTED]"
    assert SAN.scrub("auth=Negotiate xyz") == "auth=[REDACTED]"


def test_auth_prose_and_placeholders_are_left_alone() -> None:
    for text in [
        "authorization=none",
        "auth=None",
        "auth: %s",
        "auth=?",
        "auth failed for bob",
        "oauth flow started",
        "authorization required",
        "authentication=ok",
        "author=Jane Doe",
        "authority=ca.example.com",
    ]:
        assert SAN.scrub(text) == text


def test_auth_without_a_scheme_keeps_the_next_pair() -> None:
    assert SAN.scrub("authorization=abc123 user=bob") == "authorization=[REDACTED] user=bob"
    assert SAN.scrub("auth=dXNlcjpw+/== user=bob") == "auth=[REDACTED] user=bob"


@pytest.mark.parametrize("name", ["Authorization", "auth", "Proxy-Authorization"])
@pytest.mark.parametrize("value", [12345, True, "Negotiate xyz", ["NTLM", "abc123"], "NTLM abc123"])
def test_auth_names_in_json_keep_the_document_valid(name: str, value: Any) -> None:
    # (a quoted name is a JSON member, not a header line: the value ends where JSON says)
    for doc in [{name: value, "x": "y"}, {"x": "y", name: value}]:
        out = SAN.scrub(json.dumps(doc))
        assert json.loads(out) == {**doc, name: "[REDACTED]"}


# ---------------------------------------------------------------------------------------------
# 2. compound secret names: secret_key, SECRET_KEY, signing_key...

_SECRET_NAMES = [
    "secret_key",
    "SECRET_KEY",
    "secretKey",
    "SecretKey",
    "secret-key",
    "secret.key",
    "DJANGO_SECRET_KEY",
    "jwt_secret_key",
    "SECRET_KEY_BASE",
    "aws_secret_access_key",
    "AWS_SECRET_ACCESS_KEY",
    "client_secret",
    "clientSecret",
    "private_key",
    "privateKey",
    "signing_key",
    "encryption_key",
    "decryption_key",
    "master_key",
    "RAILS_MASTER_KEY",
    "hmac_key",
    "shared_key",
    "account_key",
    "AccountKey",
    "app_key",
    "APP_KEY",
    "auth_key",
    "SECURE_AUTH_KEY",
    "session_key",
    "api.key",
]


@pytest.mark.parametrize("name", _SECRET_NAMES)
def test_compound_secret_names_in_text(name: str) -> None:
    secret = "s3cr3t-VALUE-42"
    for text, expected in {
        f"{name}={secret}": f"{name}=[REDACTED]",
        f"export {name}={secret} PORT=8000": f"export {name}=[REDACTED] PORT=8000",
        f"{name}: {secret}": f"{name}: [REDACTED]",
        json.dumps({name: secret, "n": 1}): json.dumps({name: "[REDACTED]", "n": 1}),
        repr({name: secret}): repr({name: "[REDACTED]"}),
        f"/cb?{name}={secret}&page=2": f"/cb?{name}=[REDACTED]&page=2",
    }.items():
        assert SAN.scrub(text) == expected, text


@pytest.mark.parametrize("name", _SECRET_NAMES)
def test_compound_secret_names_as_attribute_keys(name: str) -> None:
    out = SAN(_span({name: "s3cr3t-VALUE-42", f"app.{name}": 123456, "other": 1}))["attributes"]
    assert out == {name: "[REDACTED]", f"app.{name}": "[REDACTED]", "other": 1}


_BENIGN_KEY_NAMES = [
    "key",
    "keys",
    "keyboard",
    "monkey",
    "turnkey",
    "key_count",
    "primary_key",
    "foreign_key",
    "partition_key",
    "sort_key",
    "routing_key",
    "cache_key",
    "idempotency_key",
    "messaging.kafka.message.key",
    "aws.s3.key",
    "public_key",
    "key_id",
    "secret_key_path",
    "secret_key_name",
    "master_key_count",
    "secretary",
]


@pytest.mark.parametrize("name", _BENIGN_KEY_NAMES)
def test_ordinary_key_names_are_not_secrets(name: str) -> None:
    value = "orders-2024"
    assert SAN(_span({name: value}))["attributes"] == {name: value}
    text = f"{name}={value} n=1"
    assert SAN.scrub(text) == text
    assert SAN.scrub(json.dumps({name: value})) == json.dumps({name: value})


def test_primary_key_true_in_a_repr_stays() -> None:
    text = "Column('id', Integer(), table=<pitches>, primary_key=True, nullable=False)"
    assert SAN.scrub(text) == text


# ---------------------------------------------------------------------------------------------
# 3. masked JSON stays JSON


@pytest.mark.parametrize(
    ("doc", "masked"),
    [
        ({"token": 12345}, {"token": "[REDACTED]"}),
        ({"token": -1.5e3, "n": 2}, {"token": "[REDACTED]", "n": 2}),
        ({"cvv": 123, "n": 1}, {"cvv": "[REDACTED]", "n": 1}),
        ({"password": 12345, "a": 1}, {"password": "[REDACTED]", "a": 1}),
        ({"token": [1, 2]}, {"token": "[REDACTED]"}),
        ({"token": ["a", "b"], "n": 1}, {"token": "[REDACTED]", "n": 1}),
        ({"secret_key": 42}, {"secret_key": "[REDACTED]"}),
        ({"password": True}, {"password": "[REDACTED]"}),
        ({"password": None}, {"password": None}),
        ({"password": {"a": 1}}, {"password": {"a": 1}}),
        ({"user": {"pin": 1234, "otp": [1, 2, 3]}}, {"user": {"pin": 1234, "otp": "[REDACTED]"}}),
        # a card number written as a JSON number (a member value) becomes a JSON string too
        ({"n": 4111111111111111, "m": 1}, {"n": "[CARD]", "m": 1}),
        ({"card": 5500000000000004}, {"card": "[CARD]"}),
    ],
)
def test_masked_json_numbers_and_lists_stay_valid_json(doc: dict[str, Any], masked: dict[str, Any]) -> None:
    for dumps in (
        json.dumps,
        lambda d: json.dumps(d, separators=(",", ":")),
        lambda d: json.dumps(d, indent=2),
    ):
        text = dumps(doc)
        out = SAN.scrub(text)
        assert json.loads(out) == masked, text
        assert SAN.scrub(out) == out
        # JSON inside a JSON string, one and two levels deep
        for levels in (1, 2):
            wrapped = text
            for _ in range(levels):
                wrapped = json.dumps({"body": wrapped})
            got = SAN.scrub(wrapped)
            assert SAN.scrub(got) == got
            for _ in range(levels):
                got = json.loads(got)["body"]
            assert json.loads(got) == masked, wrapped


def test_masked_python_repr_stays_a_literal() -> None:
    for value in (12345, [1, 2], ["a", "b"], -3.5):
        out = SAN.scrub(repr({"token": value, "n": 1}))
        assert ast.literal_eval(out) == {"token": "[REDACTED]", "n": 1}


_MODES: list[Mode] = [
    sanitize.mask(),
    sanitize.partial(1),
    sanitize.partial(4),
    sanitize.partial(8),
    sanitize.hashed(key=b"k" * 16),
]


def _all_rules(mode: Mode) -> list[sanitize.Rule]:
    return [
        sanitize.keys(*sanitize.DEFAULT_KEY_TERMS, mode=mode),
        sanitize.keys(*sanitize.DEFAULT_VALUE_NAMESPACES, all_values=True, mode=mode),
        sanitize.sql(),
        sanitize.private_keys(mode=mode),
        sanitize.url_credentials(mode=mode),
        sanitize.secret_params(mode=mode),
        sanitize.auth_headers(mode=mode),
        sanitize.jwts(mode=mode),
        sanitize.cloud_keys(mode=mode),
        sanitize.emails(mode=mode),
        sanitize.ibans(mode=mode),
        sanitize.cards(mode=mode),
        sanitize.ssns(mode=mode),
        sanitize.phones(mode=mode),
        sanitize.ip_addresses(mode=mode),
    ]


_SANITIZERS = [Sanitizer(), *(Sanitizer(_all_rules(m)) for m in _MODES)]
_SAN_IDS = ["default", *(repr(m) for m in _MODES)]

_SECRET_KEYS = ["password", "token", "api_key", "secret_key", "cvv", "Authorization", "auth"]
# Numbers below 10**12: a card number written as a JSON number is masked too, but only as a
# member value ({"n": 4111111111111111}), not inside an array (see the docs).
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(-1e12, 1e12, allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    doc=st.dictionaries(st.sampled_from(_SECRET_KEYS) | st.text(max_size=10), _JSON_VALUES, max_size=5),
    san_index=st.integers(0, len(_SANITIZERS) - 1),
    indent=st.sampled_from([None, 2]),
    levels=st.integers(0, 2),
)
def test_any_json_stays_valid_json_in_every_mode(
    doc: dict[str, Any], san_index: int, indent: int | None, levels: int
) -> None:
    san = _SANITIZERS[san_index]
    text = json.dumps(doc, indent=indent)
    for _ in range(levels):
        text = json.dumps({"body": text})
    out = san.scrub(text)
    assert san.scrub(out) == out
    for _ in range(levels):
        out = json.loads(out)["body"]
    loaded = json.loads(out)
    assert isinstance(loaded, dict)
    for key in _SECRET_KEYS:  # a scalar under a secret name never stays
        value = doc.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in loaded:
            assert loaded[key] == "[REDACTED]" or loaded[key].startswith(("hash:", "[REDACTED"))


# ---------------------------------------------------------------------------------------------
# 4. every mode is idempotent: sanitize(sanitize(x)) == sanitize(x)


@pytest.mark.parametrize("san", _SANITIZERS, ids=_SAN_IDS)
@pytest.mark.parametrize(
    "text",
    [
        "token=abcdefghijklmnop==",
        "password=abcdefghijklmn=",
        "api_key=abcdefghijklmnopqrstuvwxyz+/",
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Authorization=NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==",
        "x Bearer abcdefghijklmnopq= y",
        "x Basic dXNlcjpwYXNzd29yZA== y",
        "AccountKey=ctzMq410TV3wS7upTBcunJTDLEJwMAZuFPfr0mrrA08=;Suffix=core",
        'token="abcdefghijkl\\"xyz"',
        '{"password": "abcdefghijkl\\"xy\\\\"}',
        "token=xxxxxxxxxxxxxxxxpwd=abcd",
        "token=xxxxxxxxxxxxxxxxxx10.0.0.1",
        "token=xxxxxxxxxxxxxxxxxxxxxx-_~.",
        "postgres://app:abcdefghijklmnop==@db/x",
        "card 4111 1111 1111 1111, ssn 123-45-6789, ann@example.com, +15551234567",
    ],
)
def test_every_mode_is_idempotent_on_known_shapes(san: Sanitizer, text: str) -> None:
    once = san.scrub(text)
    assert san.scrub(once) == once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a replacement changes what its neighbours see: the result is scanned until it is stable
        ("+15551234567token=abc123", "[PHONE]token=[REDACTED]"),
        ("+15551234567+15551234567", "[PHONE][PHONE]"),
        ("4111111111111111.4111111111111111", "[CARD].[CARD]"),
        ("2001:db8::1token=abc", "2001:db8::1token=abc"),  # (ip_addresses is off by default)
    ],
)
def test_replacements_next_to_other_text_are_stable(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


def test_url_password_already_replaced_stays() -> None:
    for mode in _MODES:
        san = Sanitizer(add=[sanitize.url_credentials(mode=mode)])
        once = san.scrub("postgres://app:abcdefghijklmnop==@db/x")
        assert "abcdefghij" not in once
        assert san.scrub(once) == once


def test_tuple_values_are_masked_whole() -> None:
    assert SAN.scrub("Session(auth=('user', 'pass'))") == "Session(auth=[REDACTED])"
    assert SAN.scrub(repr({"auth": ("user", "pass"), "n": 1})) == repr({"auth": "[REDACTED]", "n": 1})
    assert SAN.scrub("password=(hunter2) x") == "password=[REDACTED] x"


def test_partial_keeps_padding_once() -> None:
    san = Sanitizer(add=[sanitize.secret_params(mode="partial")])
    once = san.scrub("token=abcdefghijklmnop==")
    assert once == "token=[REDACTED ****op==]"
    assert san.scrub(once) == once
    assert _RENDERED.fullmatch("[REDACTED ****op==]")


def test_partial_never_keeps_quotes_or_backslashes() -> None:
    # The kept tail of a JSON string value must not end the string or escape its quote.
    san = Sanitizer(add=[sanitize.secret_params(mode="partial")])
    for doc in [
        {"password": 'abcdefghijk"xyz'},
        {"password": "abcdefghijklm\\"},
        {"token": "abcdefghij\nkl"},
    ]:
        out = san.scrub(json.dumps(doc))
        assert json.loads(out) == {next(iter(doc)): "[REDACTED]"}


_FRAGMENTS = [
    "token=",
    "password: ",
    "secret_key=",
    "Authorization: ",
    "Authorization=",
    "auth=",
    "auth: ",
    "NTLM ",
    "Negotiate ",
    "Bearer ",
    "Digest ",
    "username=",
    '"token": ',
    "'pin': ",
    "abcdefghijklmnop==",
    "dXNlcjpwYXNzd29yZA==",
    "xyz",
    "4111 1111 1111 1111",
    "4111111111111111",
    "ann@example.com",
    "10.0.0.1",
    "2001:db8::1",
    "+15551234567",
    "(555) 123-4567",
    "123-45-6789",
    "DE89370400440532013000",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJl",
    "postgres://u:",
    "@db/x",
    "[REDACTED ****",
    "hash:0123456789abcdef",
    "12345",
    "[1, 2]",
    *"\"'\\=+/:,. \n\r\t[]{}&;%*-_~",
    "%20",
    "%3D",
    "\\n",
    '\\"',
]
_TEXTS = st.one_of(st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join), st.text(max_size=60))


@settings(max_examples=300, deadline=None)
@given(text=_TEXTS, san_index=st.integers(0, len(_SANITIZERS) - 1))
def test_scrub_is_idempotent_in_every_mode(text: str, san_index: int) -> None:
    san = _SANITIZERS[san_index]
    once = san.scrub(text)
    assert san.scrub(once) == once


@settings(max_examples=150, deadline=None)
@given(
    attrs=st.dictionaries(
        st.sampled_from([*_SECRET_KEYS, "url.query", "msg"]), _JSON_VALUES | _TEXTS, max_size=6
    ),
    san_index=st.integers(0, len(_SANITIZERS) - 1),
)
def test_records_are_idempotent_in_every_mode(attrs: dict[str, Any], san_index: int) -> None:
    san = _SANITIZERS[san_index]
    once = san(_span(attrs))
    assert san(once) == once


def test_placeholders_and_markers_used_here_are_what_the_module_says() -> None:
    assert _PLACEHOLDER.fullmatch("%s")
    assert _RENDERED.fullmatch("[REDACTED]")


# ---------------------------------------------------------------------------------------------
# the pipeline (the C record builder once the caches are warm) exports what the Python path gives

_PIPELINE_ATTRS: dict[str, Any] = {
    "log.line": "level=warn Authorization=NTLM abc123secret user=eve",
    "header": "auth: Negotiate xyz",
    "config": '{"secret_key": 42, "otp": [1, 2], "card": 4111111111111111}',
    "SECRET_KEY": "s3cr3t",
    "signing_key": 123456,
    "url.query": "token=abcdefghijklmnop==&page=2",
    "glued": "+15551234567token=abc123",
}


@pytest.mark.parametrize("san_index", range(len(_SANITIZERS)), ids=_SAN_IDS)
def test_pipeline_exports_what_the_uncached_python_path_gives(san_index: int) -> None:
    maps = [dict(_PIPELINE_ATTRS, i=i % 3) for i in range(40)]
    with capture_spans(rollups=None, sanitizer=None) as raw:
        for attrs in maps:
            with pt.span("op", attributes=attrs):
                pass
    san = _SANITIZERS[san_index]
    with capture_spans(rollups=None, sanitizer=Sanitizer(san.rules)) as exported:
        for _ in range(2):  # the second time, every text is in the caches
            for attrs in maps:
                with pt.span("op", attributes=attrs):
                    pass
    plain = Sanitizer(san.rules, cache_size=0)
    expected = [plain(r)["attributes"] for r in raw.spans()] * 2
    assert [r["attributes"] for r in exported.spans()] == expected
    blob = repr(expected)
    assert "abc123secret" not in blob
    assert "xyz" not in blob
    assert "4111111111111111" not in blob
