"""Zipkin B3 propagation (https://github.com/openzipkin/b3-propagation), composite
propagators and the module-level propagator configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import pitchey_trace as pt
from pitchey_trace import propagation as prop
from pitchey_trace._span import TraceContext

TID = 0x0AF7651916CD43DD8448EB211C80319C
SID = 0xB7AD6B7169203331
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def _default_propagators() -> Iterator[None]:
    yield
    prop.set_propagators(None)


def test_b3_single_header_inject_and_extract() -> None:
    carrier: dict[str, str] = {}
    prop.B3Propagator().inject(TraceContext(TID, SID, 1), carrier.__setitem__)
    assert carrier == {"b3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"}
    prop.set_propagators([prop.B3Propagator()])
    ctx = prop.extract(carrier)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (TID, SID, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1-00f067aa0ba902b7", (TID, SID, 1)),
        ("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", (TID, SID, 0)),
        ("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-d", (TID, SID, 1)),  # debug
        ("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", (TID, SID, 0)),  # deferred
        ("8448eb211c80319c-b7ad6b7169203331-1", (0x8448EB211C80319C, SID, 1)),  # 64-bit id
        ("0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-1", (TID, SID, 1)),
        ("1", None),  # a sampling decision alone carries no ids
        ("0", None),
        ("0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-1", None),
        ("0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-1", None),
        ("00000000000000000000000000000000-b7ad6b7169203331-1", None),
        ("0af7651916cd43dd8448eb211c80319c-0000000000000000-1", None),
        ("0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-1", None),
        ("", None),
    ],
)
def test_b3_single_header_extract(value: str, expected: tuple[int, int, int] | None) -> None:
    prop.set_propagators([prop.B3Propagator()])
    ctx = prop.extract({"b3": value})
    got = None if ctx is None else (ctx.trace_id, ctx.span_id, ctx.trace_flags)
    assert got == expected


def test_b3_multi_header_inject_and_extract() -> None:
    b3 = prop.B3Propagator(single_header=False)
    carrier: dict[str, str] = {}
    b3.inject(TraceContext(TID, SID, 0), carrier.__setitem__)
    assert carrier == {
        "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
        "x-b3-spanid": "b7ad6b7169203331",
        "x-b3-sampled": "0",
    }
    prop.set_propagators([b3])
    ctx = prop.extract(
        {"X-B3-TraceId": "8448eb211c80319c", "X-B3-SpanId": "b7ad6b7169203331", "X-B3-Sampled": "1"}
    )
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (0x8448EB211C80319C, SID, 1)
    debug = prop.extract(
        {"x-b3-traceid": "8448eb211c80319c", "x-b3-spanid": "b7ad6b7169203331", "x-b3-flags": "1"}
    )
    assert debug is not None
    assert debug.sampled
    assert prop.extract({"x-b3-traceid": "8448eb211c80319c"}) is None


def test_b3_extract_reads_both_forms_and_asgi_lists() -> None:
    prop.set_propagators([prop.B3Propagator()])
    headers = [(b"x-b3-traceid", b"0af7651916cd43dd8448eb211c80319c"), (b"x-b3-spanid", b"b7ad6b7169203331")]
    ctx = prop.extract(headers)
    assert ctx is not None
    assert ctx.trace_id == TID
    out: list[tuple[bytes, bytes]] = []
    prop.inject(out, ctx)
    assert out == [(b"b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0")]


def test_composite_injects_every_format_and_first_ids_win() -> None:
    prop.set_propagators([prop.W3CPropagator(), prop.B3Propagator()])
    carrier: dict[str, str] = {}
    prop.inject(carrier, TraceContext(TID, SID, 1, (("rojo", "1"),), (("k", "v"),)))
    assert set(carrier) == {"traceparent", "tracestate", "baggage", "b3"}
    other_b3 = "1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"
    ctx = prop.extract({"traceparent": TP, "b3": other_b3, "baggage": "k=v"})
    assert ctx is not None
    assert ctx.trace_id == TID  # W3C listed first
    assert ctx.baggage == (("k", "v"),)
    only_b3 = prop.extract({"b3": other_b3, "tracestate": "a=1"})
    assert only_b3 is not None
    assert only_b3.trace_id == 0x1AF7651916CD43DD8448EB211C80319C
    assert only_b3.trace_state == ()  # tracestate without traceparent is discarded


def test_composite_baggage_added_to_b3_context() -> None:
    prop.set_propagators([prop.B3Propagator(), prop.BaggagePropagator()])
    ctx = prop.extract({"b3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "baggage": "a=1"})
    assert ctx is not None
    assert ctx.baggage == (("a", "1"),)
    assert prop.extract({"baggage": "a=1"}) is None


def test_set_get_propagators_and_default_fast_path() -> None:
    assert [type(p) for p in prop.get_propagators()] == [prop.W3CPropagator]
    prop.set_propagators([prop.TraceContextPropagator(), prop.BaggagePropagator()])
    assert prop._custom is None  # same as the default: the inlined path stays
    prop.set_propagators([prop.TraceContextPropagator()])
    assert prop._custom is not None
    carrier: dict[str, str] = {}
    prop.inject(carrier, TraceContext(TID, SID, 1, (), (("k", "v"),)))
    assert carrier == {"traceparent": TP}  # no baggage propagator configured
    prop.set_propagators([])
    carrier = {}
    prop.inject(carrier, TraceContext(TID, SID, 1))
    assert carrier == {}
    assert prop.extract({"traceparent": TP}) is None
    with pytest.raises(TypeError):
        prop.set_propagators([object()])


def test_composite_flattens_and_exposes_fields() -> None:
    inner = prop.CompositePropagator([prop.W3CPropagator()])
    comp = prop.CompositePropagator([inner, prop.B3Propagator(single_header=False)])
    assert [type(p) for p in comp] == [prop.W3CPropagator, prop.B3Propagator]
    assert comp.fields == (
        "traceparent",
        "tracestate",
        "baggage",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
    )
    assert "B3Propagator(single_header=False)" in repr(comp)


def test_propagators_from_names() -> None:
    names = prop.propagators_from_names("tracecontext, baggage,b3,b3multi")
    assert [repr(p) for p in names] == [
        "TraceContextPropagator()",
        "BaggagePropagator()",
        "B3Propagator(single_header=True)",
        "B3Propagator(single_header=False)",
    ]
    assert prop.propagators_from_names("none") == []
    with pytest.raises(ValueError, match="unknown propagator"):
        prop.propagators_from_names("jaeger")


def test_custom_propagator_protocol() -> None:
    class Header:
        fields = ("x-trace",)

        def inject(self, context: prop.ContextLike, write: prop.Writer) -> None:
            write("x-trace", f"{context.trace_id:x}:{context.span_id:x}")

        def extract(self, read: prop.Reader, context: TraceContext | None) -> TraceContext | None:
            if context is not None:
                return context
            for value in read("x-trace"):
                trace_id, _, span_id = value.partition(":")
                return TraceContext(int(trace_id, 16), int(span_id, 16), 1)
            return None

    assert isinstance(Header(), prop.Propagator)
    prop.set_propagators([Header()])
    carrier: dict[str, str] = {}
    with pt.use_context(TraceContext(TID, SID, 1)):
        prop.inject(carrier)
    assert carrier == {"x-trace": f"{TID:x}:{SID:x}"}
    ctx = prop.extract({"X-Trace": carrier["x-trace"]})
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (TID, SID)


@pytest.mark.allow_internal_errors
def test_a_raising_custom_propagator_never_reaches_the_caller() -> None:
    class Broken:
        fields = ("x",)

        def inject(self, context: object, write: object) -> None:
            raise RuntimeError("inject bug")

        def extract(self, read: object, context: object) -> None:
            raise RuntimeError("extract bug")

    prop.set_propagators([Broken()])
    prop.inject({}, TraceContext(TID, SID, 1))
    assert prop.extract({"x": "1"}) is None
    assert pt.stats()["internal_errors.propagation.inject"] == 1
    assert pt.stats()["internal_errors.propagation.extract"] == 1


def test_configured_propagators_replace_their_headers_in_any_case() -> None:
    prop.set_propagators([prop.W3CPropagator(), prop.B3Propagator(single_header=False)])
    headers = {"B3": "keep", "X-B3-TraceId": "old", "X-B3-SpanId": "old", "Traceparent": "old"}
    prop.inject(headers, TraceContext(TID, SID, 1))
    assert headers == {
        "B3": "keep",  # not a header this configuration writes
        "traceparent": TP,
        "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
        "x-b3-spanid": "b7ad6b7169203331",
        "x-b3-sampled": "1",
    }
    prop.set_propagators([prop.B3Propagator()])
    single = {"B3": "old"}
    prop.inject(single, TraceContext(TID, SID, 1))
    assert single == {"b3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"}
