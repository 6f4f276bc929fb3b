"""Shapes that once leaked: ``Authorization=<scheme> <credential>`` and ``auth: <scheme> ...``
(only the scheme word was masked), compound secret names (``secret_key``, ``SECRET_KEY``,
``signing_key``...), masked JSON numbers and lists that left invalid JSON (a bare
``[REDACTED]``), and partial mode changing its own output on a second pass (secrets ending in
``=``); then cards in JSON arrays or written as negative / float numbers (a bare ``[CARD]``),
nested lists and maps under secret names (left for their own names), and booleans under secret
names (masked in text, kept by key rules); then maps after a secret name in the ``=`` form
(``password={hunter2}``, left for their own names)."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace import sanitize
from pitchey_trace.sanitize import _PLACEHOLDER, _RENDERED, Sanitizer
from tests.support.sanitizers import MODES, SAN_IDS, SANITIZERS, pipeline_vs_uncached
from tests.support.sanitizers import nest as _nest
from tests.support.sanitizers import unnest as _unnest

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
        assert json.loads(out) == {**doc, name: value if value is True else "[REDACTED]"}


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
        ({"password": True}, {"password": True}),  # a boolean stays (as in key rules)
        ({"password": None}, {"password": None}),
        ({"password": {"a": 1}}, {"password": "[REDACTED]"}),
        ({"user": {"pin": 1234, "otp": [1, 2, 3]}}, {"user": {"pin": "[REDACTED]", "otp": "[REDACTED]"}}),
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


_MODES, _SANITIZERS, _SAN_IDS = MODES, SANITIZERS, SAN_IDS

_SECRET_KEYS = ["password", "token", "api_key", "secret_key", "cvv", "Authorization", "auth"]
# Numbers below 10**12: card numbers written as JSON numbers are tested in section 5 and, in
# nested arrays, in test_sanitize_options_arrays.py.
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
    "--password ",
    "--no-password ",
    "--pin ",
    "'--token', ",
    '"--api-key", ',
    '"a\\\\": ',
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
    expected = pipeline_vs_uncached(_SANITIZERS[san_index], _PIPELINE_ATTRS)
    blob = repr(expected)
    assert "abc123secret" not in blob
    assert "xyz" not in blob
    assert "4111111111111111" not in blob


# ---------------------------------------------------------------------------------------------
# 5. cards as JSON array elements and as negative / float JSON numbers: a quoted marker


_CARD_DOCS: list[tuple[Any, Any]] = [
    ({"cards": [4111111111111111, 5500000000000004]}, {"cards": ["[CARD]", "[CARD]"]}),
    ([4111111111111111, 5500000000000004], ["[CARD]", "[CARD]"]),
    ([4111111111111111], ["[CARD]"]),
    ({"cards": [1, "x", None, True, 4111111111111111]}, {"cards": [1, "x", None, True, "[CARD]"]}),
    ({"cards": [4111111111111111, 7, 5500000000000004]}, {"cards": ["[CARD]", 7, "[CARD]"]}),
    ({"cards": [4111111111111111] * 300}, {"cards": ["[CARD]"] * 300}),  # chained past the window
    ({"n": -4111111111111111}, {"n": "[CARD]"}),
    ({"n": 4111111111111111.0, "m": 1}, {"n": "[CARD]", "m": 1}),
    ({"n": -4111111111111111.0}, {"n": "[CARD]"}),
    ([-4111111111111111, 4111111111111111.0], ["[CARD]", "[CARD]"]),
    ({"a": [{"pan": 4111111111111111}], "b": [1]}, {"a": [{"pan": "[CARD]"}], "b": [1]}),
]


@pytest.mark.parametrize(("doc", "masked"), _CARD_DOCS, ids=lambda v: json.dumps(v)[:40])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_cards_in_json_arrays_and_signed_or_float_numbers_stay_valid_json(
    doc: Any, masked: Any, indent: int | None, levels: int
) -> None:
    out = _scrubbed_as_json(doc, masked, indent, levels)
    assert "4111" not in out
    assert "5500" not in out


def _scrubbed_as_json(doc: Any, masked: Any, indent: int | None, levels: int) -> str:
    """``doc`` as JSON text (``levels`` deep inside JSON strings) scrubbed: it reads back as
    ``masked`` and a second scrub changes nothing."""
    text = _nest(json.dumps(doc, indent=indent), levels)
    out = SAN.scrub(text)
    assert _unnest(out, levels) == masked, text
    assert SAN.scrub(out) == out
    return out


def test_cards_in_a_python_list_repr_stay_a_literal() -> None:
    out = SAN.scrub(repr({"cards": [4111111111111111, -5500000000000004, 4111111111111111.0]}))
    assert ast.literal_eval(out) == {"cards": ["[CARD]", "[CARD]", "[CARD]"]}


def test_cards_in_free_text_are_not_quoted() -> None:
    for text, expected in [
        ("cards 4111111111111111, 5500000000000004", "cards [CARD], [CARD]"),
        ("[INFO] x, 4111111111111111, y", "[INFO] x, [CARD], y"),
        ("refund -4111111111111111 ok", "refund -[CARD] ok"),
        ("ids=[4111111111111111]", "ids=[[CARD]]"),
    ]:
        assert SAN.scrub(text) == expected


@pytest.mark.parametrize("san", _SANITIZERS, ids=_SAN_IDS)
def test_cards_in_json_arrays_in_every_mode(san: Sanitizer) -> None:
    text = json.dumps({"cards": [4111111111111111, -5500000000000004, 4111111111111111.0]})
    out = san.scrub(text)
    cards = json.loads(out)["cards"]
    assert all(isinstance(c, str) and "4111111111111111" not in c for c in cards)
    assert san.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# 6. everything under a secret-named JSON member goes: nested lists, nested maps


_NESTED = [
    ({"token": [1, [2]]}, {"token": "[REDACTED]"}),
    ({"token": [[1, 2], [3]], "n": 1}, {"token": "[REDACTED]", "n": 1}),
    ({"credentials": {"user": "bob", "pin": 1234}}, {"credentials": "[REDACTED]"}),
    (
        {"credentials": {"user": "bob", "x": {"y": ["}", "]", "\\"]}}, "n": 1},
        {"credentials": "[REDACTED]", "n": 1},
    ),
    ({"password": {}}, {"password": "[REDACTED]"}),
    ({"a": {"secret": {"user": "bob"}, "b": 2}}, {"a": {"secret": "[REDACTED]", "b": 2}}),
    ([{"token": {"u": "bob"}}, {"token": [["x"]]}], [{"token": "[REDACTED]"}, {"token": "[REDACTED]"}]),
]


@pytest.mark.parametrize(("doc", "masked"), _NESTED, ids=lambda v: json.dumps(v)[:40])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_nested_values_under_secret_names_are_masked_whole(
    doc: Any, masked: Any, indent: int | None, levels: int
) -> None:
    assert "bob" not in _scrubbed_as_json(doc, masked, indent, levels)


def test_nested_values_under_secret_names_in_a_python_repr() -> None:
    out = SAN.scrub(repr({"credentials": {"user": "bob", "pin": 1234}, "token": [1, [2]], "n": 1}))
    assert ast.literal_eval(out) == {"credentials": "[REDACTED]", "token": "[REDACTED]", "n": 1}


@pytest.mark.parametrize("san", _SANITIZERS, ids=_SAN_IDS)
def test_nested_values_under_secret_names_in_every_mode(san: Sanitizer) -> None:
    text = json.dumps({"credentials": {"user": "bob", "pin": 1234}, "n": 1})
    out = san.scrub(text)
    loaded = json.loads(out)
    assert loaded["n"] == 1
    assert isinstance(loaded["credentials"], str)
    assert "bob" not in out
    assert san.scrub(out) == out


@pytest.mark.parametrize(
    "value",
    [
        {"user": "bob", "pad": "x" * 5000},  # longer than the bounded scan
        {"user": "bob", "pad": ["y" * 300] * 20},
        json.loads("[" * 40 + '"bob"' + "]" * 40),  # deeper than the levels matched
    ],
    ids=["long-string", "long-list", "deep"],
)
def test_nested_values_too_long_or_deep_are_masked_up_to_a_safe_point(value: Any) -> None:
    text = json.dumps({"n": 1, "credentials": value})
    out = SAN.scrub(text)
    assert out.startswith('{"n": 1, "credentials": "[REDACTED]"')
    assert "bob" not in out
    assert SAN.scrub(out) == out


def test_nested_values_past_the_bound_are_scanned_as_text() -> None:
    # The first 4 KB of the value go; what follows is scanned like any text (its own secret
    # names, cards... are still masked): the scan stays linear.
    value = [["z" * 100] * 30 + ["bob", "pwd=abc1"]] * 2
    out = SAN.scrub(json.dumps({"n": 1, "credentials": value}))
    assert out.startswith('{"n": 1, "credentials": "[REDACTED]"')
    assert out.count("bob") == 1
    assert "abc1" not in out
    assert SAN.scrub(out) == out


def test_nested_values_in_truncated_json_inside_a_string_keep_the_outer_document() -> None:
    inner = json.dumps({"credentials": {"user": "bob", "pin": 1234}})[:-12]  # cut off
    out = SAN.scrub(json.dumps({"body": inner, "n": 1}))
    loaded = json.loads(out)
    assert loaded["n"] == 1
    assert "bob" not in loaded["body"]


@pytest.mark.parametrize(
    "shape",
    ['"token": {', '"token": [', '"token": {"a": [', '{"token": [4111111111111111, ', '"token": ["a'],
)
def test_nested_secret_values_stay_linear(shape: str) -> None:
    # (no timing threshold: this must simply finish, as in test_hostile_megabyte_strings)
    text = shape * (200_000 // len(shape))
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# 7. booleans: never masked, in key rules and as JSON / repr member values alike


def test_booleans_under_secret_names_stay_as_in_key_rules() -> None:
    record = SAN(_span({"password": True, "token": False, "password_set": True}))
    assert record["attributes"] == {"password": True, "token": False, "password_set": True}
    for doc in [{"password": True, "n": 1}, {"token": False}, {"x": {"otp": True}}]:
        for text in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps({"body": json.dumps(doc)})):
            assert SAN.scrub(text) == text
        assert SAN.scrub(repr(doc)) == repr(doc)
    # a string "true" is text like any other: masked, as a key rule masks it
    assert json.loads(SAN.scrub('{"password": "true"}')) == {"password": "[REDACTED]"}
    assert SAN.scrub("password=true") == "password=[REDACTED]"
    assert SAN.scrub("password_set=true") == "password_set=true"


# ---------------------------------------------------------------------------------------------
# 8. a flat map after a secret name in the "=" form (and "name: " text) goes whole, as a list does

_EQ_MAPS = [
    ("password={hunter2}", "password=[REDACTED]"),
    ('token={"a": 1}', "token=[REDACTED]"),
    ("secret={a: b, c: d}", "secret=[REDACTED]"),
    ("password={x} user=bob", "password=[REDACTED] user=bob"),
    (
        "level=warn credentials={user: bob, pin: 1234} request_id=42",
        "level=warn credentials=[REDACTED] request_id=42",
    ),
    ('GET /cb?token={"u":"bob"}&page=2', "GET /cb?token=[REDACTED]&page=2"),
    ("Session(auth={'user': 'bob'}, n=1)", "Session(auth=[REDACTED], n=1)"),
    ("api_key={ bob }\nuser=eve", "api_key=[REDACTED]\nuser=eve"),
    # "name: " text (YAML-ish, logs): the same path
    ("password: {hunter2}", "password: [REDACTED]"),
    ("secret: {a: b, c: d}\nname: web", "secret: [REDACTED]\nname: web"),
    # URL-encoded: found in the decoded form
    ("/cb?password=%7Bhunter2%7D&page=2", "/cb?password=[REDACTED]&page=2"),
]


@pytest.mark.parametrize(("text", "expected"), _EQ_MAPS)
def test_maps_after_secret_names_in_the_equals_form_are_masked_whole(text: str, expected: str) -> None:
    out = SAN.scrub(text)
    assert out == expected
    for secret in ("hunter2", "bob", '"a": 1', "a: b", "c: d", "pin"):
        assert secret not in out.replace("user=bob", "")
    assert SAN.scrub(out) == out


@pytest.mark.parametrize("text", ["user={bob} page=2", "sort={name: asc}", "tags={a, b} n=1"])
def test_maps_after_other_names_are_unchanged(text: str) -> None:
    assert SAN.scrub(text) == text


def test_a_quoted_map_like_string_is_masked_as_a_string() -> None:
    assert SAN.scrub('"password": "{hunter2}"') == '"password": "[REDACTED]"'
    assert SAN.scrub("password='{hunter2}' user=bob") == "password='[REDACTED]' user=bob"


def test_maps_after_secret_names_that_are_not_flat_keep_the_inner_name_rules() -> None:
    # Nested or multi-line maps after "=" are not matched whole (bounded, one-line, flat only):
    # their own secret names are still masked as scanning goes on.
    assert "hunter2" not in SAN.scrub("secret={a: {password: hunter2}}")
    assert "hunter2" not in SAN.scrub("secret={\n  password=hunter2\n}")


@pytest.mark.parametrize("san", _SANITIZERS, ids=_SAN_IDS)
@pytest.mark.parametrize(
    "text", [t for t, _ in _EQ_MAPS] + ["token={abcdefghijklmnopqrstuvwxyz==}", "password={}"]
)
def test_maps_after_secret_names_in_every_mode(san: Sanitizer, text: str) -> None:
    once = san.scrub(text)
    assert "hunter2" not in once
    assert "abcdefghijklmnop" not in once
    assert "={" not in once
    assert ": {" not in once
    assert san.scrub(once) == once


def test_a_map_after_a_secret_name_longer_than_the_bound_is_left_for_its_own_names() -> None:
    text = "password={" + "x" * 5000 + ", token: abc123} user=bob"
    out = SAN.scrub(text)
    assert "abc123" not in out
    assert out.endswith("user=bob")
    assert SAN.scrub(out) == out


@pytest.mark.parametrize(
    "shape",
    ["password={", "password={a", "password={a}", "password={a ", "token={}{", "x password={" + "a" * 64],
)
def test_maps_after_secret_names_stay_linear(shape: str) -> None:
    # (no timing threshold: this must simply finish, as in test_hostile_megabyte_strings)
    text = shape * (1_000_000 // len(shape))
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out
