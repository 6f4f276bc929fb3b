"""W3C Trace Context Level 2 (https://www.w3.org/TR/trace-context-2/): traceparent and
tracestate parsing, formatting, inject/extract over the supported carriers.

Each test names the spec section it checks.
"""

from __future__ import annotations

import email.message
import http.client
import io
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import propagation as prop
from pitchey_trace._context import suppress_tracing
from pitchey_trace._span import TraceContext
from pitchey_trace.testing import capture_spans

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TID = 0x0AF7651916CD43DD8448EB211C80319C
SID = 0xB7AD6B7169203331


# -- §3.2 traceparent header field values ---------------------------------------------------
def test_parse_valid_version_00() -> None:
    # §3.2.2 version-format: trace-id, parent-id, trace-flags
    ctx = prop.parse_traceparent(TP)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags, ctx.is_remote) == (TID, SID, 1, True)
    assert ctx.trace_state == ()
    assert ctx.baggage == ()


def test_fast_constructed_context_equals_constructor() -> None:
    # The extract path fills TraceContext slots directly; it must be indistinguishable.
    ctx = prop.parse_traceparent(TP, "a=1")
    assert ctx == TraceContext(TID, SID, 1, (("a", "1"),), (), True)
    assert hash(ctx) == hash(TraceContext(TID, SID, 1, (("a", "1"),), (), True))
    assert ctx.traceparent == TP
    with pytest.raises(AttributeError):
        ctx.trace_id = 1


@pytest.mark.parametrize(
    "value",
    [
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # §3.2.2.1 version ff forbidden
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # §3.2.2.3 all-zero trace-id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # §3.2.2.4 all-zero parent-id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # HEXDIGLC: lowercase only
        "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.",  # version 00: exactly 55 chars
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # parent-id too short
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033311-01",
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c1-b7ad6b7169203331-01",
        "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "000-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ".0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-.0",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-001",
        "00-0af7651916cd43dd_448eb211c80319c-b7ad6b7169203331-01",  # int() would accept "_"
        "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0x f7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01,"
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # comma-joined duplicates
        "",
        "00",
        "00x0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # once recursed forever
        " 00x0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.what",  # §3.2.4 must be "-"
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333",  # §3.2.4 shorter than 55
        "c-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xx",
        "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\x00",
        "00-\u0660af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # non-ASCII digit
    ],
)
def test_parse_invalid(value: str) -> None:
    assert prop.parse_traceparent(value) is None


def test_parse_ows_is_ignored() -> None:
    # RFC 9110 §5.5: leading/trailing OWS is not part of the field value.
    for value in (" " + TP, "\t" + TP, TP + " ", TP + "\t", "\t " + TP + " \t"):
        ctx = prop.parse_traceparent(value)
        assert ctx is not None
        assert ctx.trace_id == TID


def test_higher_version_parsed_by_version_00_rules() -> None:
    # §3.2.4 Versioning: a higher version is parsed with the 00 layout; extra fields after "-".
    base = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for value in (base, base + "-what-the-future-will-be-like"):
        ctx = prop.parse_traceparent(value)
        assert ctx is not None
        assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (TID, SID, 1)


def test_flags_keep_sampled_and_random_only() -> None:
    # §3.2.2.5 trace-flags: sampled 0x01, random 0x02 (Level 2); others "MUST set to zero".
    for flags, expected in (("00", 0), ("01", 1), ("02", 2), ("03", 3), ("ff", 3), ("09", 1), ("04", 0)):
        ctx = prop.parse_traceparent(TP[:-2] + flags)
        assert ctx is not None
        assert ctx.trace_flags == expected
    ctx = prop.parse_traceparent("cc" + TP[2:-2] + "fe-x")
    assert ctx is not None
    assert ctx.trace_flags == 2


def test_format_traceparent_downgrades_to_00_and_clears_unknown_flags() -> None:
    ctx = TraceContext(TID, SID, 0xFF)
    assert prop.format_traceparent(ctx) == TP[:-2] + "03"


def test_parse_bytes_and_non_str() -> None:
    ctx = prop.parse_traceparent(TP.encode())  # type: ignore[arg-type]
    assert ctx is not None
    assert ctx.trace_id == TID
    assert prop.parse_traceparent(None) is None  # type: ignore[arg-type]
    assert prop.parse_traceparent(12) is None  # type: ignore[arg-type]


def test_from_traceparent_classmethod_delegates() -> None:
    ctx = TraceContext.from_traceparent(TP, "congo=t61rcWkgMzE")
    assert ctx is not None
    assert ctx.trace_state == (("congo", "t61rcWkgMzE"),)


# -- §3.3 tracestate ------------------------------------------------------------------------
def test_tracestate_parse_members_and_ows() -> None:
    # §3.3.1 list: OWS around members is ignored; empty members are allowed.
    assert prop.parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE") == (
        ("rojo", "00f067aa0ba902b7"),
        ("congo", "t61rcWkgMzE"),
    )
    assert prop.parse_tracestate("foo=1 \t , \t bar=2, \t baz=3") == (
        ("foo", "1"),
        ("bar", "2"),
        ("baz", "3"),
    )
    assert prop.parse_tracestate(",,foo=1,, ,\t,") == (("foo", "1"),)
    assert prop.parse_tracestate("") == ()
    assert prop.parse_tracestate("   ") == ()


def test_tracestate_value_keeps_leading_spaces() -> None:
    # §3.3.1.3.2 value: leading spaces are part of the value, trailing ones are OWS.
    assert prop.parse_tracestate("foo= 1 ") == (("foo", " 1"),)


@pytest.mark.parametrize(
    "header",
    [
        "foo =1",  # §3.3.1.3.1 key: no spaces
        "FOO=1",  # lowercase only
        "foo.bar=1",
        "@foo=1,bar=2",  # must start with lcalpha or DIGIT
        "_foo=1",
        "foo=bar=baz",  # §3.3.1.3.2 value: no "="
        "foo=,bar=3",  # empty value
        "foo=1\tx",  # tab inside a value
        "foo=\u00e9",  # non-ASCII value
        "foo",  # no "="
        "z" * 257 + "=1",  # key over 256 characters
        "foo=" + "v" * 257,  # value over 256 characters
    ],
)
def test_tracestate_invalid_member_discards_all(header: str) -> None:
    # Strict (test-suite level 2): any invalid list-member discards the whole header.
    assert prop.parse_tracestate("ok=1," + header) == ()


def test_tracestate_key_grammar_vendor_and_limits() -> None:
    # §3.3.1.3.1 key = (lcalpha / DIGIT) 0*255(keychar), keychar includes "@".
    for key in (
        "foo@",
        "foo@@bar",
        "foo@bar@baz",
        "t" * 241 + "@" + "v" * 14,
        "t@" + "v" * 15,
        "z" * 256,
        "0a",
    ):
        assert prop.parse_tracestate(f"{key}=1,bar=2") == ((key, "1"), ("bar", "2"))


def test_tracestate_all_allowed_characters() -> None:
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/"
    value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=").strip(" ")
    value = " " + value  # leading space is allowed
    assert prop.parse_tracestate(f"{key}={value}") == ((key, value),)


def test_tracestate_member_count_limit() -> None:
    # §3.3.1.1: at most 32 list-members; 33 makes the header invalid.
    members = [f"bar{i:02d}={i:02d}" for i in range(1, 34)]
    assert len(prop.parse_tracestate(",".join(members[:32]))) == 32
    assert prop.parse_tracestate(",".join(members)) == ()


def test_tracestate_duplicate_keys_keep_first() -> None:
    # The spec lets a vendor keep or drop duplicates; we keep the first occurrence.
    assert prop.parse_tracestate("foo=1,foo=2,bar=3") == (("foo", "1"), ("bar", "3"))


def test_tracestate_multiple_lines_are_combined_in_order() -> None:
    # §3.3 "Multiple tracestate header fields MUST be combined" (RFC 9110 field order).
    lines = ["foo=1,bar=2", "rojo=1,congo=2", "", "baz=3"]
    assert [k for k, _ in prop.parse_tracestate(lines)] == ["foo", "bar", "rojo", "congo", "baz"]


def test_tracestate_format_and_mutation_moves_own_key_first() -> None:
    # §3.5 Mutating the tracestate field: a modified key moves to the left; max 32 members.
    state = prop.parse_tracestate("rojo=00f067aa0ba902b7,pitchey=old,congo=t61rcWkgMzE")
    updated = prop.tracestate_with(state, prop.OWN_TRACESTATE_KEY, "new")
    assert prop.format_tracestate(updated) == "pitchey=new,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    full = tuple((f"k{i}", "v") for i in range(32))
    grown = prop.tracestate_with(full, "pitchey", "x")
    assert len(grown) == 32
    assert grown[0] == ("pitchey", "x")
    assert grown[-1] == ("k30", "v")
    assert prop.tracestate_without(updated, "rojo") == (("pitchey", "new"), ("congo", "t61rcWkgMzE"))
    with pytest.raises(ValueError):
        prop.tracestate_with(state, "Bad", "x")
    with pytest.raises(ValueError):
        prop.tracestate_with(state, "ok", "a,b")


def test_tracestate_format_truncates_by_spec_rule() -> None:
    # §3.3.1.5 limits: whole entries; entries over 128 chars go first, then from the end.
    small = tuple((f"k{i:03d}", "v" * 120) for i in range(31))  # 125 chars each
    text = prop.format_tracestate((("big", "b" * 200), *small))
    assert len(text) <= prop.TRACESTATE_MAX_LENGTH
    assert prop.parse_tracestate(text) == small  # only the big one went
    full = tuple((f"k{i:02d}", "v" * 124) for i in range(32))  # 128 chars each, 4127 in all
    text = prop.format_tracestate(full)
    assert prop.parse_tracestate(text) == full[:31]  # the right-most went
    assert prop.format_tracestate((("a", "1"), ("b", "2"))) == "a=1,b=2"
    assert prop.format_tracestate(()) == ""


# -- inject / extract: carriers -------------------------------------------------------------
def _ctx(state: tuple[tuple[str, str], ...] = (), baggage: tuple[tuple[str, str], ...] = ()) -> TraceContext:
    return TraceContext(TID, SID, 0x03, state, baggage)


def test_inject_dict_from_current_span_and_explicit_context() -> None:
    carrier: dict[str, str] = {}
    prop.inject(carrier)
    assert carrier == {}  # no current span: nothing written
    with pt.use_context(_ctx((("rojo", "1"),), (("user.id", "u 1"),))):
        prop.inject(carrier)
    assert carrier == {
        "traceparent": TP[:-2] + "03",
        "tracestate": "rojo=1",
        "baggage": "user.id=u%201",
    }
    explicit: dict[str, str] = {}
    prop.inject(explicit, _ctx())
    assert explicit == {"traceparent": TP[:-2] + "03"}


def test_inject_does_nothing_when_suppressed_or_invalid() -> None:
    carrier: dict[str, str] = {}
    with suppress_tracing():
        prop.inject(carrier, _ctx())
    assert carrier == {}
    prop.inject(carrier, pt.INVALID_SPAN)
    assert carrier == {}


def test_inject_from_recorded_span_is_child_of_it() -> None:
    with capture_spans() as exporter, pt.span("client") as span:
        headers: dict[str, str] = {}
        prop.inject(headers)
    ctx = prop.extract(headers)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (span.trace_id, span.span_id)
    assert ctx.sampled
    assert ctx.trace_flags & 0x02
    assert exporter.spans("client")


def test_extract_dict_case_insensitive() -> None:
    # §3.2.1 / §3.3.2 header names are ASCII case-insensitive.
    for name in ("TraceParent", "TRACEPARENT", "TrAcEpArEnT"):
        ctx = prop.extract({name: TP, "TraceState": "a=1", "BAGGAGE": "k=v"})
        assert ctx is not None
        assert ctx.trace_id == TID
        assert ctx.trace_state == (("a", "1"),)
        assert ctx.baggage == (("k", "v"),)
    # Fast path: a dict with the lowercase "traceparent" key is taken to be lowercase-keyed.
    ctx = prop.extract({"traceparent": TP, "tracestate": "a=1", "baggage": "k=v"})
    assert ctx is not None
    assert ctx.trace_state == (("a", "1"),)
    assert ctx.baggage == (("k", "v"),)
    assert prop.extract({"trace-parent": TP}) is None
    assert prop.extract({"trace.parent": TP}) is None


def test_extract_dict_ambiguous_case_variants_start_new_trace() -> None:
    other = TP.replace("0af7", "1af7")
    assert prop.extract({"Traceparent": TP, "TRACEPARENT": other}) is None


def test_extract_without_traceparent_ignores_tracestate_and_baggage() -> None:
    # §3.3 "If the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate".
    assert prop.extract({"tracestate": "a=1", "baggage": "k=v"}) is None
    assert prop.extract({"traceparent": "garbage", "tracestate": "a=1"}) is None


def test_invalid_tracestate_does_not_affect_traceparent() -> None:
    ctx = prop.extract({"traceparent": TP, "tracestate": "FOO=1"})
    assert ctx is not None
    assert ctx.trace_id == TID
    assert ctx.trace_state == ()


def test_extract_wsgi_environ() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "wsgi.version": (1, 0),
        "HTTP_TRACEPARENT": TP,
        "HTTP_TRACESTATE": "a=1,b=2",
        "HTTP_BAGGAGE": "tenant=acme",
    }
    ctx = prop.extract(environ)
    assert ctx is not None
    assert ctx.trace_id == TID
    assert ctx.trace_state == (("a", "1"), ("b", "2"))
    assert ctx.baggage == (("tenant", "acme"),)
    # WSGI servers join repeated headers with ","; two traceparents are then ambiguous.
    environ["HTTP_TRACEPARENT"] = TP + "," + TP.replace("0af7", "1af7")
    assert prop.extract(environ) is None


def test_extract_asgi_headers_and_scope() -> None:
    headers = [
        (b"host", b"example"),
        (b"traceparent", TP.encode()),
        (b"tracestate", b"foo=1,bar=2"),
        (b"tracestate", b"rojo=1"),
        (b"baggage", b"a=1"),
        (b"baggage", b"b=2"),
    ]
    ctx = prop.extract(headers)
    assert ctx is not None
    assert ctx.trace_id == TID
    assert [k for k, _ in ctx.trace_state] == ["foo", "bar", "rojo"]
    assert ctx.baggage == (("a", "1"), ("b", "2"))
    scope = {"type": "http", "headers": headers}
    assert prop.extract(scope) == ctx


def test_extract_duplicated_traceparent_starts_new_trace() -> None:
    other = TP.replace("0af7", "1af7").encode()
    assert prop.extract([(b"traceparent", TP.encode()), (b"traceparent", other)]) is None
    # The same value twice is not ambiguous.
    same = prop.extract([(b"traceparent", TP.encode()), (b"traceparent", TP.encode())])
    assert same is not None
    assert same.trace_id == TID


def test_extract_str_pair_list_with_mixed_case() -> None:
    ctx = prop.extract([("TraceParent", TP), ("TraceState", "a=1")])
    assert ctx is not None
    assert ctx.trace_state == (("a", "1"),)


def test_extract_http_client_message_and_email_message() -> None:
    raw = f"Host: x\r\nTraceparent: {TP}\r\ntracestate: a=1\r\nTRACESTATE: b=2\r\n\r\n".encode()
    message = http.client.parse_headers(io.BytesIO(raw))
    ctx = prop.extract(message)
    assert ctx is not None
    assert ctx.trace_state == (("a", "1"), ("b", "2"))
    msg = email.message.Message()
    msg["traceparent"] = TP
    msg["traceparent"] = TP.replace("0af7", "1af7")
    assert prop.extract(msg) is None


def test_extract_with_custom_getter() -> None:
    store = {"tp": TP}

    def getter(carrier: dict[str, str], key: str) -> str | None:
        return carrier.get({"traceparent": "tp"}.get(key, key))

    ctx = prop.extract(store, getter=getter)
    assert ctx is not None
    assert ctx.trace_id == TID

    def list_getter(carrier: object, key: str) -> list[str] | None:  # OpenTelemetry style
        return [TP] if key == "traceparent" else None

    assert prop.extract(object(), getter=list_getter) is not None


def test_inject_asgi_list_replaces_existing() -> None:
    headers: list[tuple[bytes, bytes]] = [(b"traceparent", b"old"), (b"accept", b"*/*")]
    prop.inject(headers, _ctx((("a", "1"),)))
    assert headers == [
        (b"accept", b"*/*"),
        (b"traceparent", (TP[:-2] + "03").encode()),
        (b"tracestate", b"a=1"),
    ]
    str_headers: list[tuple[str, str]] = [("Content-Type", "text/plain"), ("Traceparent", "old")]
    prop.inject(str_headers, _ctx())
    assert str_headers == [("Content-Type", "text/plain"), ("traceparent", TP[:-2] + "03")]


def test_inject_dict_replaces_headers_in_any_case() -> None:
    # A caller's "Traceparent" (or "TRACESTATE", "Baggage") was kept next to the lowercase one
    # written: the receiver saw two different traceparents and started a new trace.
    tp = TP[:-2] + "03"
    headers: dict[str, str] = {
        "Traceparent": "00-11111111111111111111111111111111-2222222222222222-01",
        "TRACESTATE": "old=1",
        "Baggage": "old=1",
        "Accept": "*/*",
    }
    prop.inject(headers, _ctx((("rojo", "1"),), (("k", "v"),)))
    assert headers == {"Accept": "*/*", "traceparent": tp, "tracestate": "rojo=1", "baggage": "k=v"}
    ctx = prop.extract(headers)
    assert ctx is not None
    assert ctx.span_id == SID
    # Only what is written replaces: without tracestate/baggage to send, the caller's stay.
    headers = {"TraceParent": "old", "Tracestate": "old=1", b"traceparent": "old"}  # type: ignore[dict-item]
    prop.inject(headers, _ctx())
    assert headers == {"Tracestate": "old=1", "traceparent": tp}

    # A dict subclass takes the generic path: the same rule.
    class Headers(dict[str, str]):
        pass

    sub = Headers({"TRACEPARENT": "old", "Accept": "*/*"})
    prop.inject(sub, _ctx())
    assert sub == {"Accept": "*/*", "traceparent": tp}
    # The common cases are unchanged: a fresh dict, other headers, an earlier inject.
    plain = {"Accept": "*/*", "traceparent": "old"}
    prop.inject(plain, _ctx())
    assert plain == {"Accept": "*/*", "traceparent": tp}


def test_client_span_replaces_a_traceparent_in_another_case() -> None:
    from pitchey_trace.web import client_span

    headers = {"TraceParent": "00-11111111111111111111111111111111-2222222222222222-01"}
    with capture_spans() as exporter, pt.span("parent"), client_span("GET", "http://h/x", headers) as span:
        pass
    assert list(headers) == ["traceparent"]
    assert headers["traceparent"] == prop.format_traceparent(span.context)
    assert exporter.spans("GET")


def test_inject_message_setter_and_add_header() -> None:
    msg = email.message.Message()
    msg["traceparent"] = "old"
    prop.inject(msg, _ctx())
    assert msg.get_all("traceparent") == [TP[:-2] + "03"]
    seen: list[tuple[str, str]] = []
    prop.inject(None, _ctx(), setter=lambda c, k, v: seen.append((k, v)))
    assert seen == [("traceparent", TP[:-2] + "03")]
    import urllib.request

    req = urllib.request.Request("http://127.0.0.1/")
    prop.inject(req, _ctx())
    assert req.get_header("Traceparent") == TP[:-2] + "03"


def test_inject_unsupported_carrier_is_ignored() -> None:
    prop.inject(42, _ctx())  # no exception; logged once as misuse
    assert pt.stats().get("misuse.inject_carrier") == 1


def test_round_trip_keeps_everything() -> None:
    ctx = _ctx((("rojo", "00f067aa0ba902b7"),), (("user.id", "ü 1,2;3"),))
    carrier: dict[str, str] = {}
    prop.inject(carrier, ctx)
    back = prop.extract(carrier)
    assert back == ctx


def test_real_library_header_objects() -> None:
    import httpx
    import requests.structures
    from starlette.datastructures import Headers, MutableHeaders
    from werkzeug.datastructures import EnvironHeaders

    ctx = _ctx((("rojo", "1"),))
    carriers: list[Any] = [httpx.Headers({"TraceParent": "old"}), requests.structures.CaseInsensitiveDict()]
    for carrier in carriers:
        prop.inject(carrier, ctx)
        assert carrier["traceparent"] == TP[:-2] + "03"
        assert carrier["TRACESTATE"] == "rojo=1"
        back = prop.extract(carrier)
        assert back is not None
        assert (back.trace_id, back.trace_state) == (TID, (("rojo", "1"),))
    assert httpx.Headers(carrier).get_list("traceparent") == [TP[:-2] + "03"]
    mutable = MutableHeaders()
    prop.inject(mutable, ctx)
    assert mutable.raw == [(b"traceparent", (TP[:-2] + "03").encode()), (b"tracestate", b"rojo=1")]
    starlette_ctx = prop.extract(Headers(raw=[(b"traceparent", TP.encode()), (b"traceparent", TP.encode())]))
    assert starlette_ctx is not None
    assert starlette_ctx.trace_id == TID
    two = Headers(raw=[(b"traceparent", TP.encode()), (b"traceparent", TP.replace("0af7", "1af7").encode())])
    assert prop.extract(two) is None
    werkzeug_ctx = prop.extract(EnvironHeaders({"HTTP_TRACEPARENT": TP, "HTTP_TRACESTATE": "a=1"}))
    assert werkzeug_ctx is not None
    assert werkzeug_ctx.trace_state == (("a", "1"),)


def test_tracestate_and_baggage_values_of_any_type() -> None:
    # bytes are header text (latin-1), not a sequence of ints; other types are no value. None
    # of these is an internal error.
    assert prop.parse_baggage(b"a=1,b=2") == (("a", "1"), ("b", "2"))
    assert prop.parse_baggage(["a=1", b"b=2", 3]) == (("a", "1"), ("b", "2"))
    assert prop.parse_tracestate(bytearray(b"rojo=00f067aa0ba902b7")) == (("rojo", "00f067aa0ba902b7"),)
    for odd in (1.5, 7, object(), None, b""):
        assert prop.parse_baggage(odd) == ()  # type: ignore[arg-type]
        assert prop.parse_tracestate(odd) == ()  # type: ignore[arg-type]
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = pt.extract({"traceparent": tp, "tracestate": 1.5, "baggage": b"k=v"})
    assert ctx is not None
    assert ctx.trace_state == ()
    assert ctx.baggage == (("k", "v"),)
    assert pt.stats().get("internal_errors", 0) == 0
