"""Property-based tests: format -> parse round trips for traceparent, tracestate and baggage,
agreement with a straightforward reference reading of the W3C grammar, and "extract never
raises" on arbitrary text, bytes, dicts and header lists."""

from __future__ import annotations

import re
import string
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pitchey_trace import propagation as prop
from pitchey_trace._span import TraceContext

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
span_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
flag_bytes = st.integers(min_value=0, max_value=255)

# W3C Trace Context Level 2 tracestate grammar.
_KEYCHARS = string.ascii_lowercase + string.digits + "_-*/@"
ts_keys = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_lowercase + string.digits),
    st.text(alphabet=_KEYCHARS, max_size=40),
)
_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
ts_values = st.text(alphabet=_VALUE_CHARS, min_size=1, max_size=60).filter(lambda v: v[-1] != " ")
tracestates = st.lists(st.tuples(ts_keys, ts_values), max_size=32, unique_by=lambda kv: kv[0]).map(tuple)

# W3C Baggage: keys are RFC 7230 tokens, values any text (percent-encoded on the wire).
tokens = st.text(alphabet="!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits, min_size=1, max_size=20)
baggages = st.lists(st.tuples(tokens, st.text(max_size=30)), max_size=40, unique_by=lambda kv: kv[0]).map(
    tuple
)

_REFERENCE_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _reference_parse(value: str) -> tuple[int, int, int] | None:
    """The spec read literally with regular expressions (Trace Context §3.2, §3.2.4)."""
    value = value.strip(" \t")
    version = re.match(r"([0-9a-f]{2})-", value)
    if version is None or version.group(1) == "ff":
        return None
    if version.group(1) != "00":
        # A higher version: the 00 layout for the first 55 characters, then "-" or the end.
        if len(value) > 55 and value[55] != "-":
            return None
        value = "00" + value[2:55]
    m = _REFERENCE_00.fullmatch(value)
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(m.group(3), 16) & 0x03


@SETTINGS
@given(trace_ids, span_ids, flag_bytes)
def test_traceparent_round_trip(trace_id: int, span_id: int, flags: int) -> None:
    text = prop.format_traceparent(TraceContext(trace_id, span_id, flags))
    assert text == f"00-{trace_id:032x}-{span_id:016x}-{flags & 3:02x}"
    ctx = prop.parse_traceparent(text)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (trace_id, span_id, flags & 3)


_NEAR_CHARS = "0123456789abcdefABCDEF-_ x+\t.\u0660"


@SETTINGS
@given(
    trace_ids,
    span_ids,
    flag_bytes,
    st.lists(st.tuples(st.integers(0, 54), st.sampled_from(_NEAR_CHARS)), max_size=3),
)
@example(1, 1, 1, [(3, "_")])
@example(1, 1, 1, [(3, "+")])
@example(1, 1, 1, [(10, "A")])
def test_traceparent_matches_reference_on_near_valid_input(
    trace_id: int, span_id: int, flags: int, edits: list[tuple[int, str]]
) -> None:
    chars = list(f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
    for pos, ch in edits:
        chars[pos] = ch
    value = "".join(chars)
    ctx = prop.parse_traceparent(value)
    got = None if ctx is None else (ctx.trace_id, ctx.span_id, ctx.trace_flags)
    assert got == _reference_parse(value)


@SETTINGS
@given(st.text(alphabet=_NEAR_CHARS + "cf", min_size=50, max_size=70))
@example("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future")
@example("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.future")
@example("\t00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ")
def test_traceparent_arbitrary_text_agrees_with_reference(value: str) -> None:
    ctx = prop.parse_traceparent(value)
    got = None if ctx is None else (ctx.trace_id, ctx.span_id, ctx.trace_flags)
    assert got == _reference_parse(value)


@SETTINGS
@given(tracestates)
def test_tracestate_round_trip(state: tuple[tuple[str, str], ...]) -> None:
    text = prop.format_tracestate(state)
    assert prop.parse_tracestate(text) == state
    # Split over several header lines with OWS, it still combines to the same list.
    lines = [f" {k}={v}\t" for k, v in state] or [""]
    assert prop.parse_tracestate(lines) == state


@SETTINGS
@given(tracestates, ts_keys, ts_values)
def test_tracestate_with_puts_key_first_and_keeps_order(
    state: tuple[tuple[str, str], ...], key: str, value: str
) -> None:
    updated = prop.tracestate_with(state, key, value)
    assert updated[0] == (key, value)
    assert len(updated) <= 32
    rest = [m for m in state if m[0] != key]
    assert list(updated[1:]) == rest[: len(updated) - 1]


@SETTINGS
@given(baggages)
def test_baggage_round_trip(entries: tuple[tuple[str, str], ...]) -> None:
    text = prop.format_baggage(entries)
    assert text.isascii()
    assert prop.parse_baggage(text) == entries


_header_values = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80),
    st.lists(st.one_of(st.text(max_size=60), st.binary(max_size=60)), max_size=3),
    st.integers(),
    st.none(),
)
_names = st.sampled_from(
    ["traceparent", "TraceParent", "tracestate", "TRACESTATE", "baggage", "b3", "HTTP_TRACEPARENT", "x"]
)


@SETTINGS
@given(st.dictionaries(st.one_of(_names, st.text(max_size=12), st.binary(max_size=12)), _header_values))
def test_extract_never_raises_on_dicts(carrier: dict[Any, Any]) -> None:
    ctx = prop.extract(carrier)
    assert ctx is None or isinstance(ctx, TraceContext)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.tuples(st.one_of(_names.map(str.encode), st.binary(max_size=12)), st.binary(max_size=80)),
            st.tuples(st.one_of(_names, st.text(max_size=12)), st.text(max_size=80)),
            st.integers(),
            st.none(),
            st.tuples(st.binary(max_size=3)),
        ),
        max_size=8,
    )
)
def test_extract_never_raises_on_header_lists(headers: list[Any]) -> None:
    for carrier in (headers, {"type": "http", "headers": headers}):
        ctx = prop.extract(carrier)
        assert ctx is None or isinstance(ctx, TraceContext)


@SETTINGS
@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()))
def test_extract_and_parsers_never_raise_on_anything(value: Any) -> None:
    assert prop.extract(value) is None or isinstance(prop.extract(value), TraceContext)
    assert prop.parse_traceparent(value) is None or isinstance(value, (str, bytes))
    if isinstance(value, str):
        assert isinstance(prop.parse_tracestate(value), tuple)
        assert isinstance(prop.parse_baggage(value), tuple)
    configurations: list[list[prop.Propagator]] = [
        [prop.B3Propagator()],
        [prop.B3Propagator(single_header=False), prop.W3CPropagator()],
    ]
    for propagators in configurations:
        prop.set_propagators(propagators)
        try:
            carrier = {"b3": value, "x-b3-traceid": value, "x-b3-spanid": value, "traceparent": value}
            ctx = prop.extract(carrier)
            assert ctx is None or isinstance(ctx, TraceContext)
        finally:
            prop.set_propagators(None)


@SETTINGS
@given(st.text(max_size=200), st.text(max_size=200))
def test_tracestate_and_baggage_parsers_on_arbitrary_text(state: str, baggage: str) -> None:
    parsed = prop.parse_tracestate(state)
    assert len(parsed) <= 32
    assert prop.parse_tracestate(prop.format_tracestate(parsed)) == parsed
    bag = prop.parse_baggage(baggage)
    assert prop.parse_baggage(prop.format_baggage(bag)) == bag
