"""Session 18 follow-ups to the masking review: shapes that leaked with the default configuration.

* header pairs in list / tuple form (``[('x-api-key', 'k123'), (b'cookie', b'...')]``, the repr
  of ``request.headers.items()``, ASGI ``scope["headers"]``, werkzeug's ``EnvironHeaders``)
  kept their values: a 2-tuple (or 2-item list) whose first item is a quoted secret name has its
  second item masked;
* ``pass`` and ``pw`` were no secret names (``?user=bob&pass=hunter2``);
* the whole-attribute-map memo mixed up ``(1,)`` / ``(True,)`` / ``(1.0,)`` values and ``1`` /
  ``True`` keys of records built directly (not through the Span API);
* card numbers stored as a float (``4111111111111111.0``), a negative int, or written in
  fullwidth (or other non-ASCII) digits or with no-break spaces were exported as they were, on
  both record builders (the C one passed floats and negative ints through untouched).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import sanitize
from pitchey_trace.records import _DEFAULT_THRESHOLDS, _KIND_STR, _STATUS_STR, make_resource
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans
from tests.support.sanitizers import SAN_IDS, SANITIZERS, assert_scrubbed, pipeline_vs_uncached

SAN = Sanitizer()
RESOURCE = make_resource("svc", "prod", {"k": "v"})
_FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10)))


def fw(text: str) -> str:
    """``text`` with its ASCII digits written as fullwidth digits (as Japanese and Chinese IMEs
    type them), which ``int()`` reads too."""
    return text.translate(_FULLWIDTH)


# ---------------------------------------------------------------------------------------------
# 1. header pairs in list / tuple form

_PAIRS = [
    (
        "[('x-api-key', 'k123'), (b'cookie', b'theme=dark; remember=x')]",
        "[('x-api-key', '[REDACTED]'), (b'cookie', b'[REDACTED]')]",
        ("k123", "theme", "remember"),
    ),
    (
        "dict_items([('Host', 'api.example.org'), ('Authorization', 'Bearer abc123xyz')])",
        "dict_items([('Host', 'api.example.org'), ('Authorization', '[REDACTED]')])",
        ("abc123xyz",),
    ),
    (
        "EnvironHeaders([('Cookie', 'sessionid=s3cr3t'), ('Accept', '*/*')])",
        "EnvironHeaders([('Cookie', '[REDACTED]'), ('Accept', '*/*')])",
        ("s3cr3t",),
    ),
    (
        "headers=[(b'authorization', b'Basic Ym9iOmh1bnRlcjI=')] path=/x",
        "headers=[(b'authorization', b'[REDACTED]')] path=/x",
        ("Ym9iOmh1bnRlcjI",),
    ),
    (
        '[["x-api-key", "k123"], ["accept", "*/*"]]',
        '[["x-api-key", "[REDACTED]"], ["accept", "*/*"]]',
        ("k123",),
    ),
    (
        '{"body": "[[\\"x-api-key\\", \\"k123\\"]]"}',
        '{"body": "[[\\"x-api-key\\", \\"[REDACTED]\\"]]"}',
        ("k123",),
    ),
    ("(('pin', 1234), ('user', 'bob'))", "(('pin', '[REDACTED]'), ('user', 'bob'))", ("1234",)),
    ("[('password', \"it's\")]", "[('password', \"[REDACTED]\")]", ("it's",)),
    ("[( 'token' ,  'abc' )]", "[( 'token' ,  '[REDACTED]' )]", ("abc",)),
    ("('token', 'abc',)", "('token', '[REDACTED]',)", ("abc",)),
    ("failed: ('pass', 'hunter2')", "failed: ('pass', '[REDACTED]')", ("hunter2",)),
]


@pytest.mark.parametrize(("text", "expected", "secrets"), _PAIRS)
def test_header_pair_value_is_masked(text: str, expected: str, secrets: tuple[str, ...]) -> None:
    assert_scrubbed(SAN, text, secrets, expected)


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
@pytest.mark.parametrize(("text", "_expected", "secrets"), _PAIRS)
def test_header_pair_in_every_mode(
    san: Sanitizer, text: str, _expected: str, secrets: tuple[str, ...]
) -> None:
    assert_scrubbed(san, text, secrets)


def test_header_pairs_from_real_objects() -> None:
    headers = {"x-api-key": "k123", "cookie": "theme=dark; remember=x", "accept": "*/*"}
    asgi = [(k.encode(), v.encode()) for k, v in headers.items()]
    for text in (str(list(headers.items())), repr(headers.items()), repr(asgi), str(tuple(asgi))):
        out = SAN.scrub(text)
        assert "k123" not in out, out
        assert "theme" not in out, out
        assert "*/*" in out  # a harmless header stays


@pytest.mark.parametrize(
    "text",
    [
        "[('x-request-id', 'abc123'), ('accept', '*/*')]",  # not secret names
        "('token', 'a', 'b')",  # three items: no pair
        "['token', 'abc', 'def']",
        "f('token', 'abc')",  # a call's arguments, no tuple
        "('token', True)",  # a boolean stays, as {'token': True} does
        "('token', None)",
        "('password', %s)",  # placeholders
        "('AKIA-looking-name', 'x')",
    ],
)
def test_what_is_no_secret_pair_stays(text: str) -> None:
    assert SAN.scrub(text) == text


def test_name_of_a_pair_is_still_scanned() -> None:
    # the first item is scanned as any text when it is no secret name
    assert SAN.scrub("[('AKIAIOSFODNN7EXAMPLE', 'x')]") == "[('[KEY]', 'x')]"


def test_over_masking_a_pair_of_field_names_is_accepted() -> None:
    # (documented: a 2-tuple starting with a secret name has its second item masked)
    assert SAN.scrub("fields = ('password', 'email')") == "fields = ('password', '[REDACTED]')"


@pytest.mark.parametrize(
    "block",
    [
        "('token', '",
        "('token', 'x'",
        "[('token', 'x', ",
        "('token', 1",
        "(b'cookie', b'a\\'",
        "('token', \"",
        '["token", \\"',
        '(\\"token\\", \\"a',
    ],
)
def test_pairs_stay_linear_on_hostile_input(block: str) -> None:
    small, big = block * 2_000, block * 20_000
    san = Sanitizer(cache_size=0)
    t0 = time.perf_counter()
    san.scrub(small)
    t1 = time.perf_counter()
    san.scrub(big)
    t2 = time.perf_counter()
    # ten times the input: far less than a hundred times the time (quadratic would be ~100x)
    assert (t2 - t1) < 40 * max(t1 - t0, 1e-3)


def test_header_pairs_through_the_pipeline() -> None:
    attrs = pipeline_vs_uncached(
        SAN, {"http.request.headers": "[('x-api-key', 'k123'), (b'cookie', b'theme=dark; remember=x')]"}
    )
    assert all("k123" not in str(a) and "theme" not in str(a) for a in attrs)


def test_exception_message_with_header_pairs_is_masked() -> None:
    with capture_spans(rollups=None) as cap:
        with pytest.raises(ValueError), pt.span("op"):
            raise ValueError(f"bad request headers: {[('x-api-key', 'k123')]!r}")
    blob = repr(cap.spans())
    assert "k123" not in blob
    assert "x-api-key" in blob


# ---------------------------------------------------------------------------------------------
# 2. pass and pw as whole names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("?user=bob&pass=hunter2", "?user=bob&pass=[REDACTED]"),
        ("pw=hunter2 x=1", "pw=[REDACTED] x=1"),
        ("PASS: hunter2", "PASS: [REDACTED]"),
        ('{"pass": "hunter2", "n": 1}', '{"pass": "[REDACTED]", "n": 1}'),
        ("{'pw': 1234}", "{'pw': '[REDACTED]'}"),
        ("mysql --pass hunter2", "mysql --pass [REDACTED]"),
    ],
)
def test_pass_and_pw_are_secret_names(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected
    assert SAN.scrub(expected) == expected


@pytest.mark.parametrize(
    "text",
    ["bypass=1", "compass=north", "boarding_pass=A12", "first_pass=done", "pwm=3", "npw=2", "pass_count=3"],
)
def test_names_merely_ending_in_pass_or_pw_stay(text: str) -> None:
    assert SAN.scrub(text) == text


# ---------------------------------------------------------------------------------------------
# 3. the attribute-map memo keeps equal values of different types apart


def _record(attrs: dict[Any, Any]) -> dict[str, Any]:
    with capture_spans(rollups=None, sanitizer=None) as raw:
        with pt.span("op"):
            pass
    rec = raw.spans()[0]
    rec["attributes"] = attrs
    return rec


_FILL = {"f1": "a", "f2": 2, "f3": 3.0, "f4": False}  # big enough for the memo


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"t": (1,)}, {"t": (True,)}),
        ({"t": (1,)}, {"t": (1.0,)}),
        ({"t": (4111111111111111.5,)}, {"t": (4111111111111111,)}),
        ({1: "x"}, {True: "x"}),
        ({1: "x"}, {1.0: "x"}),
        ({"t": frozenset({1})}, {"t": frozenset({True})}),
    ],
)
def test_memo_keeps_equal_values_of_other_types_apart(first: dict[Any, Any], second: dict[Any, Any]) -> None:
    san = Sanitizer()
    for attrs in (first, second, first, second):
        rec = _record({**attrs, **_FILL})
        assert san(rec)["attributes"] == Sanitizer(cache_size=0)(rec)["attributes"]
        assert repr(san(rec)["attributes"]) == repr(Sanitizer(cache_size=0)(rec)["attributes"])


def test_memo_still_serves_plain_maps() -> None:
    san = Sanitizer()
    rec = _record({"k": "v", **_FILL})
    for _ in range(5):
        san(rec)
    assert san._memo_hits >= 4


# ---------------------------------------------------------------------------------------------
# 4. card numbers stored as floats or negative ints, written in non-ASCII digits


@pytest.mark.parametrize(
    "value",
    [4111111111111111.0, -4111111111111111, -4111111111111111.0, 5500000000000004.0, -378282246310005],
)
def test_card_number_as_float_or_negative_int_is_masked(value: Any) -> None:
    attrs = pipeline_vs_uncached(SAN, {"payment.ref": value, "nested": [value, value]})
    for a in attrs:
        assert a["payment.ref"] == "[CARD]"
        assert a["nested"] == ["[CARD]", "[CARD]"]
    rec = _record({"x": value})
    assert Sanitizer()(rec)["attributes"] == {"x": "[CARD]"}
    assert Sanitizer(cache_size=0)(rec)["attributes"] == {"x": "[CARD]"}


def test_card_float_in_partial_and_hashed_modes() -> None:
    partial = Sanitizer(add=[sanitize.cards(mode="partial")])
    assert partial(_record({"x": 4111111111111111.0}))["attributes"] == {"x": "[CARD ****1111]"}
    assert partial(_record({"x": -4111111111111111}))["attributes"] == {"x": "[CARD ****1111]"}
    hashed = Sanitizer(add=[sanitize.cards(mode=sanitize.hashed(key=b"k" * 16))])
    as_int = hashed(_record({"x": 4111111111111111}))["attributes"]["x"]
    assert hashed(_record({"x": 4111111111111111.0}))["attributes"]["x"] == as_int
    assert hashed(_record({"x": -4111111111111111}))["attributes"]["x"] == as_int


def test_card_float_beyond_float_precision_is_masked() -> None:
    # a 19-digit card as a float has lost its last digits (no Luhn check possible): its
    # prefix decides, else ~16 of its digits would be exported
    value = float(6212345678901234567)
    assert Sanitizer()(_record({"x": value}))["attributes"] == {"x": "[CARD]"}


@pytest.mark.parametrize(
    "value",
    [
        4111111111111112.0,  # Luhn fails
        1234567890123.0,  # no card prefix
        -4111111111111112,
        1.7e18,  # a nanosecond timestamp as a float: no card prefix
        0.5,
        -3.25,
        123456.0,
        4111111111111111.5,  # not integral
        -(10**30),
        10**30,
    ],
)
def test_numbers_that_are_no_cards_stay(value: Any) -> None:
    attrs = pipeline_vs_uncached(SAN, {"n": value})
    assert all(a["n"] == value and type(a["n"]) is type(value) for a in attrs)
    assert Sanitizer()(_record({"n": value}))["attributes"] == {"n": value}


def test_non_finite_floats_of_records_built_directly_stay() -> None:
    out = Sanitizer()(_record({"a": float("inf"), "b": float("-inf"), "c": float("nan")}))["attributes"]
    assert out["a"] == float("inf")
    assert out["b"] == float("-inf")
    assert out["c"] != out["c"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (fw("card 4111 1111 1111 1111 ok"), "card [CARD] ok"),
        (fw("4111111111111111"), "[CARD]"),
        (fw("4111\uff0d1111\uff0d1111\uff0d1111"), "[CARD]"),
        (fw("4111\u30001111\u30001111\u30001111"), "[CARD]"),
        ("4111\u00a01111\u00a01111\u00a01111", "[CARD]"),
        ("4111\u202f1111\u202f1111\u202f1111", "[CARD]"),
        (
            "\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661",
            "[CARD]",
        ),
        (fw('{"pan": "4111 1111 1111 1111", "n": "2024\u5e74"}'), '{"pan": "[CARD]", "n": "2024\u5e74"}'),
    ],
)
def test_card_in_non_ascii_digits_is_masked(text: str, expected: str) -> None:
    out = SAN.scrub(text)
    assert out == expected
    assert SAN.scrub(out) == out


@pytest.mark.parametrize(
    "text",
    [
        fw("2024\u5e7412月1日"),  # a date in fullwidth digits: kept as written
        fw("4111 1111 1111 1112"),  # Luhn fails
        "price\u00a0100\u00a0€",
        fw("ada@example.org 2024"),  # a secret elsewhere: the digits keep their form
    ],
)
def test_non_ascii_digits_that_hide_nothing_keep_their_form(text: str) -> None:
    out = SAN.scrub(text)
    assert out == text.replace("ada@example.org", "[EMAIL]")


def test_what_the_plain_pass_masked_stays_masked() -> None:
    # read in ASCII, a card then a fullwidth digit would be a 17-digit number failing Luhn
    assert SAN.scrub("4111111111111111" + fw("4")) == "[CARD]" + fw("4")
    assert SAN.scrub("4111111111111111\u00a01") == "[CARD]\u00a01"


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_non_ascii_digit_cards_in_every_mode(san: Sanitizer) -> None:
    for text in (fw("x 4111 1111 1111 1111 y"), "4111\u00a01111\u00a01111\u00a01111"):
        out = san.scrub(text)
        assert fw("1111") not in out, out
        assert "4111" not in out, out
        assert san.scrub(out) == out


def test_fullwidth_card_through_the_pipeline() -> None:
    attrs = pipeline_vs_uncached(SAN, {"note": fw("paid with 4111 1111 1111 1111")})
    assert all(a["note"] == "paid with [CARD]" for a in attrs)


def _one_span(attrs: dict[str, Any]) -> Any:
    with capture_spans(rollups=None):
        span = pt.start_span("op", attributes=attrs)
        span.end()
    return span


_CARD_FLOATS = st.one_of(
    st.integers(min_value=10**12, max_value=10**19 - 1).map(float),
    st.floats(min_value=-1e20, max_value=1e20, allow_nan=False),
    st.sampled_from(
        [4111111111111111.0, 5500000000000004.0, 378282246310005.0, 2221000000000009.0, 1e12, 2.0**53]
    ),
)


@settings(max_examples=400, deadline=None)
@given(value=_CARD_FLOATS, negative=st.booleans())
def test_c_builder_hands_exactly_the_card_floats_to_python(value: float, negative: bool) -> None:
    value = -value if negative else value
    span = _one_span({"x": value, "k": "v"})
    san = Sanitizer()
    expected = san._span_record(span, "svc", "prod", RESOURCE, None)  # (also fills the caches)
    is_card = expected["attributes"]["x"] == "[CARD]"
    assert is_card == (san._engine.card_number(value) is not None)
    assert expected["attributes"]["x"] == ("[CARD]" if is_card else value)
    build = sanitize._build_span_records
    if build is None:  # pure-Python mode: the Python builder is the only one
        assert Sanitizer(cache_size=0)._span_record(span, "svc", "prod", RESOURCE, None) == expected
        return
    handed: list[Any] = []

    def slow(s: Any) -> dict[str, Any]:
        handed.append(s)
        return san._span_record(s, "svc", "prod", RESOURCE, None)

    got = build(
        [span],
        san._template_for("svc", "prod", RESOURCE),
        _DEFAULT_THRESHOLDS.table,
        _KIND_STR,
        _STATUS_STR,
        san._key_cache,
        san._text_cache,
        san._sql_cache,
        san.max_attributes,
        slow,
    )
    assert got == [expected]
    assert handed == ([span] if is_card else [])  # ordinary floats stay on the fast path
