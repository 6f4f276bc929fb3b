"""Conformance and robustness fixes in pitchey_trace.propagation (session 18 review).

W3C Trace Context Level 2 (https://www.w3.org/TR/trace-context-2/) and W3C Baggage
(https://www.w3.org/TR/baggage/); each test names what it checks.
"""

from __future__ import annotations

from typing import Any

from pitchey_trace import propagation as prop
from pitchey_trace._span import TraceContext
from pitchey_trace.testing import swallowed_errors

TID = 0x0AF7651916CD43DD8448EB211C80319C
SID = 0xB7AD6B7169203331
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _ctx(state: Any = (), baggage: Any = ()) -> TraceContext:
    return TraceContext(TID, SID, 0x01, state, baggage)


# -- tracestate truncation (Trace Context §"tracestate Limits") ------------------------------
def test_tracestate_truncation_removes_long_entries_only_until_it_fits() -> None:
    # "Entries larger than 128 characters long SHOULD be removed first. Then entries SHOULD be
    # removed starting from the end": a priority while truncating, not "drop every long one".
    # 25 entries of 200 characters (5024 in all) used to be sent as nothing at all.
    long_entries = tuple((f"k{i:02d}", "v" * 196) for i in range(25))  # "kNN=" + 196 = 200
    text = prop.format_tracestate(long_entries)
    assert len(text) <= prop.TRACESTATE_MAX_LENGTH
    assert prop.parse_tracestate(text) == long_entries[:20]  # 20 * 201 - 1 = 4019 chars


def test_tracestate_truncation_keeps_short_entries_and_our_own_first() -> None:
    own = (prop.OWN_TRACESTATE_KEY, "b7ad6b7169203331")
    long_entries = [(f"l{i:02d}", "v" * 196) for i in range(22)]  # 200 chars each
    short = [(f"s{i:02d}", "x" * 20) for i in range(8)]  # 24 chars each
    state = (own, *long_entries[:11], *short, *long_entries[11:])
    text = prop.format_tracestate(state)
    parsed = prop.parse_tracestate(text)
    assert len(text) <= prop.TRACESTATE_MAX_LENGTH
    assert parsed[0] == own
    assert all(m in parsed for m in short)  # short entries are never dropped before long ones
    kept_long = [m for m in parsed if m[0].startswith("l")]
    assert kept_long == long_entries[: len(kept_long)]  # long ones went from the end
    # As many as fit, counting each entry's comma: "pitchey=..." (25) + 8 short (25 each)
    # + 19 long (201 each) - 1 = 4043; a 20th long entry would make 4244 > 4096.
    assert len(kept_long) == 19
    assert len(text) == 4043


# -- format_* with list-shaped input ---------------------------------------------------------
def test_format_tracestate_and_baggage_accept_lists_without_raising() -> None:
    # Public helpers: a list of pairs (or a list value) used to raise "unhashable type: 'list'".
    assert prop.format_tracestate([("a", "1"), ["b", "2"]]) == "a=1,b=2"  # type: ignore[arg-type]
    assert prop.format_baggage([["k", "v w"], ("l", "x")]) == "k=v%20w,l=x"  # type: ignore[arg-type]
    assert prop.format_baggage({"k": ["not", "text"], "ok": "1"}) == "ok=1"  # type: ignore[dict-item]


def test_format_baggage_skips_members_that_are_not_pairs() -> None:
    # A bare string "ab" used to be unpacked into key "a", value "b".
    assert prop.format_baggage(("ab", ("k", "v"), None, ("x", "y", "z"))) == "k=v"  # type: ignore[arg-type]


def test_inject_sends_baggage_given_as_lists_and_no_internal_error() -> None:
    ctx = _ctx().with_baggage([["user.id", "u 1"]])  # type: ignore[list-item]
    headers: dict[str, str] = {}
    prop.inject(headers, ctx)  # the autouse fixture fails the test on a swallowed error
    assert headers == {"traceparent": TP, "baggage": "user.id=u%201"}
    pairs: list[tuple[bytes, bytes]] = []
    prop.inject(pairs, ctx)
    assert pairs == [(b"traceparent", TP.encode()), (b"baggage", b"user.id=u%201")]


# -- inject into header lists with odd entries ----------------------------------------------
def test_inject_list_with_malformed_entries_still_writes_headers() -> None:
    # A stray non-pair entry used to abort inject (internal error, nothing written).
    headers: list[Any] = [5, None, (), (b"host", b"h"), (b"Traceparent", b"stale")]
    prop.inject(headers, _ctx((("a", "1"),)))
    assert headers[:4] == [5, None, (), (b"host", b"h")]
    assert headers[4:] == [(b"traceparent", TP.encode()), (b"tracestate", b"a=1")]


def test_inject_list_picks_str_or_bytes_from_the_first_real_pair() -> None:
    headers: list[Any] = [None, ("Host", "h")]
    prop.inject(headers, _ctx())
    assert headers == [None, ("Host", "h"), ("traceparent", TP)]


# -- extract from bytes header lists with other cases ---------------------------------------
def test_extract_bytes_header_list_matches_names_case_insensitively() -> None:
    # RFC 9110 §5.1: field names are case-insensitive. Lists of str pairs were already read so;
    # lists of bytes pairs (raw headers of HTTP clients) with "Traceparent" gave None.
    ctx = prop.extract(
        [(b"Host", b"h"), (b"Traceparent", TP.encode()), (b"TraceState", b"a=1"), (b"Baggage", b"k=v")]
    )
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (TID, SID, 1)
    assert ctx.trace_state == (("a", "1"),)
    assert ctx.baggage == (("k", "v"),)
    scope = {"type": "http", "headers": [(b"TRACEPARENT", TP.encode())]}
    assert prop.extract(scope) == prop.extract([(b"traceparent", TP.encode())])


def test_extract_bytes_header_list_still_rejects_ambiguous_case_variants() -> None:
    other = TP[:-2] + "00"
    assert prop.extract([(b"Traceparent", TP.encode()), (b"TRACEPARENT", other.encode())]) is None
    assert prop.extract([(b"Traceparent", TP.encode()), (b"TRACEPARENT", TP.encode())]) is not None
    assert prop.extract([(b"host", b"h"), (b"Traceparent", b"garbage")]) is None
    assert prop.extract([(b"host", b"h")]) is None


def test_inject_into_urllib3_header_dicts_writes_and_replaces() -> None:
    """urllib3's HTTPHeaderDict (``get_all``, KeyError on deleting a missing name) gets the
    headers; one already there in another case is replaced, not doubled."""
    import urllib3

    ctx = TraceContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    fresh = urllib3.HTTPHeaderDict({"accept": "*/*"})
    with swallowed_errors() as errors:
        prop.inject(fresh, context=ctx)
        stale = urllib3.HTTPHeaderDict({"Traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        prop.inject(stale, context=ctx)
    assert errors == []
    assert fresh["traceparent"] == ctx.traceparent
    assert fresh["accept"] == "*/*"
    assert stale.getlist("traceparent") == [ctx.traceparent]
