"""Shapes found reviewing the Authorization= / auth: rules, the valid-JSON guarantee, tuples and
the URL-decoded pass: an unquoted value swallowing the backslash that escapes the closing quote
of a string of JSON inside a JSON string, a secret name right before a string's closing quote
taking the next string as its value, ``auth=Digest response="..."`` leaving the quoted
credential, a tuple whose strings hold brackets (``('bob', 'hunter)2')``), an ``Authorization:``
/ ``auth:`` line in the middle of a JSON or repr string eating the rest of the document, and the
URL-decoded pass exporting the whole text decoded (``1e+16`` -> ``1e 16``, ``%22`` -> ``"``)."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace.sanitize import Sanitizer
from tests.support.sanitizers import MODES, SAN_IDS, SANITIZERS
from tests.support.sanitizers import nest as _nest
from tests.support.sanitizers import unnest as _unnest

SAN = Sanitizer()

_MODES, _SANITIZERS, _SAN_IDS = MODES, SANITIZERS, SAN_IDS


def _scrub_json(san: Sanitizer, doc: Any, levels: int) -> Any:
    """``doc`` as JSON ``levels`` deep inside JSON strings, scrubbed: still valid JSON at every
    level, and a second scrub changes nothing."""
    out = san.scrub(_nest(json.dumps(doc), levels))
    assert san.scrub(out) == out
    return _unnest(out, levels)


# ---------------------------------------------------------------------------------------------
# 1. a value in a string of JSON inside a JSON string keeps the escape of the closing quote

_IN_STRINGS = [
    ({"msg": "token=abc123secret"}, {"msg": "token=[REDACTED]"}),
    ({"msg": "password=abc123secret", "x": 1}, {"msg": "password=[REDACTED]", "x": 1}),
    ({"q": "a=1&token=abc123secret"}, {"q": "a=1&token=[REDACTED]"}),
    ({"m": "secret: abc123secret"}, {"m": "secret: [REDACTED]"}),
    ({"m": "auth=NTLM abc123secret"}, {"m": "auth=[REDACTED]"}),
    (["TOKEN=abc123secret"], ["TOKEN=[REDACTED]"]),
]


@pytest.mark.parametrize(("doc", "masked"), _IN_STRINGS, ids=lambda v: json.dumps(v)[:30])
@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_values_in_nested_json_strings_keep_the_closing_quote(doc: Any, masked: Any, levels: int) -> None:
    assert _scrub_json(SAN, doc, levels) == masked


# ---------------------------------------------------------------------------------------------
# 2. a secret name right before a string's closing quote has no value: the next string stays

_NAME_AT_END = [
    {"a": "token=", "b": "x"},
    {"a": "missing auth: ", "b": "x"},
    {"a": "Authorization=", "b": [1]},
    {"msg": "password:"},
    ["TOKEN=", "x"],
]


@pytest.mark.parametrize("doc", _NAME_AT_END, ids=lambda v: json.dumps(v)[:30])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_a_secret_name_ending_a_string_takes_no_value_from_the_next(doc: Any, levels: int) -> None:
    assert _scrub_json(SAN, doc, levels) == doc


def test_a_scheme_word_ending_a_string_takes_no_value_from_the_next() -> None:
    out = SAN.scrub(repr({"a": "auth=Digest ", "b": "x"}))
    assert ast.literal_eval(out) == {"a": "auth=[REDACTED] ", "b": "x"}
    assert SAN.scrub(out) == out
    assert json.loads(SAN.scrub(json.dumps(["auth=NTLM ", 1]))) == ["auth=[REDACTED] ", 1]


def test_quoted_values_after_secret_names_are_still_masked() -> None:
    assert SAN.scrub('token="abc" x') == 'token="[REDACTED]" x'
    assert SAN.scrub('password="secret, x"') == 'password="[REDACTED]"'
    assert SAN.scrub(json.dumps({"token": ", abc"})) == '{"token": "[REDACTED]"}'


# ---------------------------------------------------------------------------------------------
# 3. auth=<known scheme> and one parameter: the parameter is the credential, quoted or not


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('auth=Digest response="abc123secret"', "auth=[REDACTED]"),
        ('auth=Digest response="abc123secret" user=bob', "auth=[REDACTED] user=bob"),
        ('auth=Digest response="abc123secret', "auth=[REDACTED]"),  # cut off
        ('Authorization=Digest username="bob" page=2', "Authorization=[REDACTED] page=2"),
        ('auth=Basic realm="x" page=2', "auth=[REDACTED] page=2"),
        # no known scheme: the next pair of the k=v line stays (unchanged)
        ("authorization=abc123 user=bob", "authorization=[REDACTED] user=bob"),
    ],
)
def test_a_single_parameter_after_a_known_scheme_is_the_credential(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


@pytest.mark.parametrize(
    "value",
    [
        'auth=Digest response="abc123secret"',
        'auth=Digest response="abc123secret',
        'Authorization=Digest username="bob", response="abc123secret"',
        'auth=Digest response="abc123secret" user=bob',
    ],
)
@pytest.mark.parametrize("levels", [1, 2])
def test_auth_parameters_in_nested_json_strings(value: str, levels: int) -> None:
    out = _scrub_json(SAN, {"m": value}, levels)
    assert "abc123secret" not in json.dumps(out)
    assert "bob" not in json.dumps(out).replace("user=bob", "")


# ---------------------------------------------------------------------------------------------
# 4. tuples: their strings may hold brackets and parentheses


@pytest.mark.parametrize("password", ["hunter)2", "p{ss", "p[ss", "p(ss", "a'b\"c"])
def test_tuples_whose_strings_hold_brackets_are_masked_whole(password: str) -> None:
    doc = {"auth": ("bob", password), "n": 1}
    out = SAN.scrub(repr(doc))
    assert ast.literal_eval(out) == {"auth": "[REDACTED]", "n": 1}
    assert SAN.scrub(out) == out
    text = f"Session(auth={('bob', password)!r}, n=1)"
    assert SAN.scrub(text) == "Session(auth=[REDACTED], n=1)"


def test_nested_tuples_in_a_repr_member_are_masked_whole() -> None:
    out = SAN.scrub(repr({"token": ("a", [1, (2,)]), "n": 1}))
    assert ast.literal_eval(out) == {"token": "[REDACTED]", "n": 1}


@pytest.mark.parametrize("shape", ["{'auth': (", "{'auth': ('x', ", '\\"auth\\": (', "auth=('", "'auth=('"])
def test_tuples_after_secret_names_stay_linear(shape: str) -> None:
    # (no timing threshold: this must simply finish; a scan per name was quadratic)
    text = shape * (1_000_000 // len(shape))
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# 5. an Authorization: / auth: line in the middle of a quoted string ends with the string


@pytest.mark.parametrize(
    ("doc", "masked"),
    [
        (
            {"msg": "request failed, Authorization: Bearer abc123secret", "n": 1},
            {"msg": "request failed, Authorization: [REDACTED]", "n": 1},
        ),
        ({"msg": "got auth: abc123secret", "n": 1}, {"msg": "got auth: [REDACTED]", "n": 1}),
        (["x X-Auth: abc123secret", 1], ["x X-Auth: [REDACTED]", 1]),
        (
            {"m": 'x Authorization: Digest username="bob", response="abc123secret"', "n": 1},
            {"m": "x Authorization: [REDACTED]", "n": 1},
        ),
    ],
    ids=lambda v: json.dumps(v)[:30],
)
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_header_lines_inside_json_strings_end_with_the_string(doc: Any, masked: Any, levels: int) -> None:
    assert _scrub_json(SAN, doc, levels) == masked


def test_header_lines_inside_repr_strings_end_with_the_string() -> None:
    out = SAN.scrub(repr({"msg": "headers Authorization: Bearer abc123secret", "n": 1}))
    assert ast.literal_eval(out) == {"msg": "headers Authorization: [REDACTED]", "n": 1}
    out = SAN.scrub("Foo(h='x Authorization: Bearer abc123secret', n=1)")
    assert out == "Foo(h='x Authorization: [REDACTED]', n=1)"


def test_header_lines_in_free_text_still_take_the_whole_line() -> None:
    text = 'log Authorization: Digest username="bob", realm="r", response="abc123secret" end'
    assert SAN.scrub(text) == "log Authorization: [REDACTED]"


# ---------------------------------------------------------------------------------------------
# 6. the URL-decoded pass exports only the runs that hid a secret decoded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"x": 1e+16, "m": "ann%40example.com"}', '{"x": 1e+16, "m": "[EMAIL]"}'),
        ('{"m": "ann%40example.com", "s": "x%22y"}', '{"m": "[EMAIL]", "s": "x%22y"}'),
        ("q=ada%40pitchey.example&ts=2026-01-01T00:00:00+00:00", "q=[EMAIL]&ts=2026-01-01T00:00:00+00:00"),
        ('{"u": "/cb?q=%22token%22%3A%22abc%22&x=1+2"}', '{"u": "/cb?q=%22token%22:%22[REDACTED]%22&x=1+2"}'),
        ('{"a": "x%0Aann%40example.com"}', '{"a": "x%0A[EMAIL]"}'),
        # a secret spread over runs: the whole decoded text, as before
        ("4242 4242%204242 4242 a%40b.co", "[CARD] [EMAIL]"),
    ],
)
def test_url_decoding_keeps_the_rest_of_the_text(text: str, expected: str) -> None:
    out = SAN.scrub(text)
    assert out == expected
    assert SAN.scrub(out) == out
    if text.startswith("{"):
        json.loads(out)


@pytest.mark.parametrize("san", _SANITIZERS, ids=_SAN_IDS)
def test_partial_markers_keeping_a_plus_are_not_url_decoded(san: Sanitizer) -> None:
    text = json.dumps({"password": 1.0000000000000002e16, "pan": [1e16], "t": "a+b"})
    out = san.scrub(text)
    assert json.loads(out)["pan"] == [1e16]
    assert json.loads(out)["t"] == "a+b"
    assert san.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# valid JSON in, valid JSON out, in every mode (strings with secret names at their ends, header
# lines, encoded text, nested values), idempotent

_CARDS = [4111111111111111, 5500000000000004, -4111111111111111, 4111111111111111.0]
_KEYS = st.sampled_from(["password", "token", "auth", "Authorization", "secret_key", "pan", "x", "pin"])
_STRINGS = st.text(max_size=12) | st.sampled_from(
    [
        "token=",
        "auth: ",
        "password:",
        "token=\\",
        "token=abc",
        "auth=NTLM x",
        "auth=Digest response=x",
        "x Authorization: Bearer abc",
        "a%40b.co",
        "%22",
        "1e+16",
        "password={x}",
        "]",
        "}",
        '"',
        "\\",
    ]
)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _STRINGS,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_KEYS | st.text(max_size=4), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    doc=st.dictionaries(
        _KEYS | st.text(max_size=6).filter(lambda k: not k.endswith("\\")),
        _VALUES | st.sampled_from(_CARDS),
        min_size=1,
        max_size=4,
    ),
    san_index=st.integers(0, len(_SANITIZERS) - 1),
    levels=st.integers(0, 2),
)
def test_json_with_secret_shaped_strings_stays_valid_in_every_mode(
    doc: dict[str, Any], san_index: int, levels: int
) -> None:
    # (cards as member values only: in an array nested in an array or after a map, a card
    # keeps a bare [CARD], as documented; no name ending in a backslash, {"\\": 4111...}:
    # its closing quote reads as an escaped one, a known limit)
    san = _SANITIZERS[san_index]
    out = san.scrub(_nest(json.dumps(doc), levels))
    assert san.scrub(out) == out
    assert isinstance(_unnest(out, levels), dict)
