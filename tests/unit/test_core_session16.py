"""Spans exited out of order or in another context never leave an ended span current;
``record_exception(timestamp=...)``; per-span dropped counts in records and OTLP.

Run on the C accelerator and (``PITCHEY_TRACE_PURE_PYTHON=1``) on Python: same expectations.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _accel, _stats
from pitchey_trace._context import CURRENT
from pitchey_trace._span import Span
from pitchey_trace.exporters.otlp import encode_otlp_json, encode_otlp_protobuf
from pitchey_trace.records import (
    json_schema,
    make_resource,
    span_record,
)
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans

EXIT = (None, None, None)
RESOURCE = make_resource("svc", "prod", {})


def _current() -> Any:
    return CURRENT.get()


def _ended(value: Any) -> bool:
    return isinstance(value, Span) and value.is_ended


# -- 1. exits out of order / in another context ---------------------------------------------------
def test_out_of_order_exit_restores_the_open_parent_not_the_ended_span() -> None:
    with capture_spans() as mem:
        with pt.span("p") as p:
            a = pt.span("a")
            a.__enter__()
            b = pt.span("b")
            b.__enter__()
            a.__exit__(*EXIT)  # out of order: b is still open and current
            assert _current() is p
            b.__exit__(*EXIT)  # a reset would make the ended `a` current again
            assert _current() is p
            with pt.span("child"):
                pass
        assert _current() is None
    spans = {r["name"]: r for r in mem.spans()}
    assert spans["child"]["parent_span_id"] == spans["p"]["span_id"]


def test_out_of_order_exit_at_the_top_leaves_nothing_current() -> None:
    with capture_spans():
        a = pt.span("a")
        a.__enter__()
        b = pt.span("b")
        b.__enter__()
        a.__exit__(*EXIT)
        b.__exit__(*EXIT)
        assert _current() is None
        assert pt.current_span() is pt.INVALID_SPAN


def test_out_of_order_exit_several_levels_deep() -> None:
    with capture_spans(), pt.span("p") as p:
        a, b, c = pt.span("a"), pt.span("b"), pt.span("c")
        a.__enter__()
        b.__enter__()
        c.__enter__()
        a.__exit__(*EXIT)
        c.__exit__(*EXIT)  # restores b (open)
        assert _current() is b
        b.__exit__(*EXIT)  # would restore a (ended): what was current before a
        assert _current() is p
        assert not _ended(_current())


def test_out_of_order_exit_of_a_chain_of_ended_spans() -> None:
    with capture_spans(), pt.span("p") as p:
        a, b, c = pt.span("a"), pt.span("b"), pt.span("c")
        a.__enter__()
        b.__enter__()
        c.__enter__()
        a.__exit__(*EXIT)
        b.__exit__(*EXIT)  # would restore a (ended)
        assert _current() is p
        c.__exit__(*EXIT)  # would restore b (ended), entered under a (ended)
        assert _current() is p


def test_non_recording_span_exited_after_its_ended_parent() -> None:
    with capture_spans(), pt.span("p") as p:
        a = pt.span("a")
        a.__enter__()
        scope = pt.use_context(a)
        scope.__enter__()
        a.__exit__(*EXIT)
        scope.__exit__(*EXIT)
        assert _current() is p


def test_span_ended_inside_its_own_block_is_not_restored_by_a_child() -> None:
    with capture_spans(), pt.span("p") as p:
        with pt.span("a") as a:
            a.end()
            with pt.span("b"):
                pass
            assert _current() is p  # not the ended a
        assert _current() is p


def test_in_order_exits_restore_exactly_what_was_current() -> None:
    with capture_spans(), pt.span("p") as p:
        scope = pt.use_context(p)
        with scope, pt.span("a") as a:
            with pt.span("b"):
                assert isinstance(_current(), Span)
            assert _current() is a
        assert _current() is p
        assert a._prev is scope  # what `a` found current when it was entered


def test_exit_in_another_thread_does_not_raise_and_does_not_leave_the_span_current() -> None:
    errors: list[BaseException] = []
    with capture_spans() as mem, pt.span("p") as p:
        a = pt.span("a")
        a.__enter__()
        seen: list[Any] = []

        def elsewhere() -> None:
            try:
                a.__exit__(*EXIT)  # the token belongs to the main thread's context
            except BaseException as exc:  # pragma: no cover - the bug
                errors.append(exc)
            seen.append(_current())

        thread = threading.Thread(target=pt.wrap_context(elsewhere))  # (a current there too)
        thread.start()
        thread.join()
        assert errors == []
        assert seen == [p]  # not the ended a, where it exited
        assert a.is_ended
        # Where it was entered it is still current (no API changes another context), but the
        # first exit of a span entered after it does not restore it.
        b = pt.span("b")
        b.__enter__()
        b.__exit__(*EXIT)
        assert _current() is p
    assert pt.stats().get("misuse.context_reset") == 1
    assert {r["name"] for r in mem.spans()} == {"p", "a", "b"}


def test_exit_in_another_asyncio_task() -> None:
    async def main() -> tuple[Any, Any]:
        with pt.span("p") as p:
            a = pt.span("a")
            a.__enter__()

            async def other() -> Any:
                a.__exit__(*EXIT)
                return _current()

            in_other = await asyncio.create_task(other())
            with pt.span("b"):
                pass
            return p, (in_other, _current())

    with capture_spans():
        p, (in_other, after) = asyncio.run(main())
    assert in_other is p
    assert after is p


def test_exit_in_another_context_where_the_span_is_not_current_changes_nothing_there() -> None:
    with capture_spans(), pt.span("p"):
        a = pt.span("a")
        ctx = contextvars.copy_context()  # before a is entered: a never current there
        a.__enter__()
        other = pt.span("other")
        seen = ctx.run(lambda: (other.__enter__(), a.__exit__(*EXIT), _current())[2])
        assert seen is other
        other.end()


def test_reentered_span_exited_out_of_order() -> None:
    with capture_spans(), pt.span("p") as p:
        a = pt.span("a")
        a.__enter__()
        a.__enter__()  # entered twice
        b = pt.span("b")
        b.__enter__()
        a.__exit__(*EXIT)
        a.__exit__(*EXIT)  # a ends
        b.__exit__(*EXIT)
        assert _current() is p


# -- 2. record_exception(timestamp=...) ---------------------------------------------------------
def test_record_exception_takes_a_timestamp() -> None:
    at = 1_900_000_000_000_000_123
    with capture_spans() as mem:
        with pt.span("op") as s:
            s.record_exception(ValueError("x"), {"k": 1}, timestamp=at)
            s.record_exception(ValueError("y"), timestamp=None)
    rec = mem.spans("op")[0]
    first, second = rec["events"]
    assert first["time_unix_nano"] == at
    assert first["attributes"]["k"] == 1
    assert second["time_unix_nano"] != at
    assert second["time_unix_nano"] > 0
    assert "misuse.timestamp_invalid" not in pt.stats()


@pytest.mark.parametrize("bad", ["123", 1.5, True, 0, -1, 2**64, object()])
def test_record_exception_with_an_invalid_timestamp_uses_now_and_counts_it(bad: Any) -> None:
    with capture_spans() as mem:
        with pt.span("op") as s:
            s.record_exception(ValueError("x"), timestamp=bad)  # never raises
    (event,) = mem.spans("op")[0]["events"]
    assert event["name"] == "exception"
    assert 0 < event["time_unix_nano"] < 2**64
    assert event["time_unix_nano"] != bad
    assert pt.stats()["misuse.timestamp_invalid"] == 1


def test_non_recording_spans_take_a_timestamp_too() -> None:
    with capture_spans(sample_rate=0.0, keep_errors=False, slow_threshold_ms=None, rollups=None):
        s = pt.start_span("dropped")
        assert not s.is_recording
        s.record_exception(ValueError("x"), None, 5)
        s.record_exception(ValueError("x"), timestamp="bad")
        pt.INVALID_SPAN.record_exception(ValueError("x"), timestamp=5)
        pt.current_span().record_exception(ValueError("x"), attributes=None, timestamp=5)


def test_otel_bridge_passes_the_timestamp_to_the_core() -> None:
    from pitchey_trace.otel import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    with capture_spans() as mem:
        s = tracer.start_span("handled")
        s.record_exception(OSError("a"), timestamp=7)
        s.record_exception(OSError("b"), timestamp=2.5)  # type: ignore[arg-type]  # ignored, counted
        s.end()
    first, second = mem.spans("handled")[0]["events"]
    assert first["time_unix_nano"] == 7
    assert second["time_unix_nano"] > 7
    assert pt.stats()["misuse.timestamp_invalid"] == 1


# -- 3. per-span dropped counts ----------------------------------------------------------------------
def _validate(records: list[dict[str, Any]]) -> None:
    validator = Draft202012Validator(json_schema())
    for rec in records:
        validator.validate(rec)


def test_dropped_counts_are_carried_into_the_record() -> None:
    with capture_spans(max_attributes=2, max_events=1, max_links=1) as mem:
        other = pt.start_span("other")
        with pt.span("op", attributes={"a": 1, "b": 2, "c": 3, "d": 4}, links=[other, other, other]) as s:
            s.set_attribute("e", 5)
            s.set_attribute("a", 10)  # (an existing key: not dropped)
            s.add_event("one")
            s.add_event("two")
            s.record_exception(ValueError("x"))
            s.add_link(other.context)
        other.end()
        with pt.span("plain", attributes={"a": 1}):
            pass
    records = {r["name"]: r for r in mem.spans()}
    op = records["op"]
    assert op["dropped_attributes_count"] == 3
    assert op["dropped_events_count"] == 2
    assert op["dropped_links_count"] == 3
    assert not any(k.startswith("dropped_") for k in records["plain"])
    assert not any(k.startswith("dropped_") for k in records["other"])
    stats = pt.stats()
    assert stats["dropped.attribute_limit"] == 3
    assert stats["dropped.event_limit"] == 2
    assert stats["dropped.link_limit"] == 3
    _validate(list(records.values()))


def test_only_non_zero_counts_are_present() -> None:
    with capture_spans(max_events=1) as mem, pt.span("op") as s:
        s.add_event("one")
        s.add_event("two")
    (rec,) = mem.spans("op")
    assert rec["dropped_events_count"] == 1
    assert "dropped_attributes_count" not in rec
    assert "dropped_links_count" not in rec
    _validate([rec])


def test_invalid_attributes_are_not_counted_as_dropped_by_the_limit() -> None:
    with capture_spans() as mem, pt.span("op", attributes={"": 1, "x": object()}) as s:  # type: ignore[dict-item]
        s.set_attribute("bad", object())  # type: ignore[arg-type]
    (rec,) = mem.spans("op")
    assert "dropped_attributes_count" not in rec


def _spans_with_drops() -> list[Span]:
    made: list[Span] = []
    with capture_spans(max_attributes=2, max_events=1, max_links=1, rollups=None):
        for i in range(6):
            span = pt.start_span(f"op{i % 3}", attributes={"a": 1, "b": "x"} if i % 2 else {"a": 1})
            assert isinstance(span, Span)
            if i % 3 == 1:
                span.set_attribute("c", 3)
                span.set_attribute("d", 4)
            if i % 3 == 2:
                span.add_link(span.context)
                span.add_link(span.context)
                span.links = None  # (the links dropped, counted; none left: the C builder's case)
            if i == 5:
                span.set_attribute("e", 5)
            span.end()
            made.append(span)
    return made


def test_c_and_python_builders_give_the_same_records_with_dropped_counts() -> None:
    spans = _spans_with_drops()
    san = Sanitizer()
    python = [Sanitizer()._span_record(s, "svc", "prod", RESOURCE, None) for s in spans]
    for _ in range(2):  # cold caches, then warm (mostly the C builder where compiled)
        got = san._span_records(spans, "svc", "prod", RESOURCE, None)
        assert got == python
        assert [list(r) for r in got] == [list(r) for r in python]  # same field order
    plain = [span_record(s, "svc", "prod", RESOURCE) for s in spans]
    assert [r.get("dropped_attributes_count") for r in plain] == [None, 2, None, None, 1, 1]
    assert [r.get("dropped_links_count") for r in plain] == [None, None, 1, None, None, 1]
    _validate(plain)


def test_otlp_json_and_protobuf_carry_the_dropped_counts() -> None:
    with capture_spans(max_attributes=1, max_events=1, max_links=1) as mem:
        other = pt.start_span("other")
        with pt.span("op", attributes={"a": 1, "b": 2, "c": 3}, links=[other, other]) as s:
            for _ in range(4):
                s.add_event("e")
        other.end()
    records = mem.spans()
    encoded = encode_otlp_json(records)
    spans = {s["name"]: s for s in encoded["resourceSpans"][0]["scopeSpans"][0]["spans"]}
    assert spans["op"]["droppedAttributesCount"] == 2
    assert spans["op"]["droppedEventsCount"] == 3
    assert spans["op"]["droppedLinksCount"] == 1
    assert not any(k.startswith("dropped") for k in spans["other"])
    message = ExportTraceServiceRequest()
    message.ParseFromString(encode_otlp_protobuf(records))
    pspans = {s.name: s for s in message.resource_spans[0].scope_spans[0].spans}
    assert pspans["op"].dropped_attributes_count == 2
    assert pspans["op"].dropped_events_count == 3
    assert pspans["op"].dropped_links_count == 1
    assert pspans["other"].dropped_attributes_count == 0
    assert len(pspans["op"].events) == 1
    assert len(pspans["op"].links) == 1


def test_otlp_ignores_odd_dropped_counts_in_hand_made_records() -> None:
    base = {
        "type": "span",
        "trace_id": "1" * 32,
        "span_id": "2" * 16,
        "name": "x",
        "dropped_attributes_count": "3",
        "dropped_events_count": -1,
        "dropped_links_count": 2**40,
    }
    (span,) = encode_otlp_json([base])["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert "droppedAttributesCount" not in span
    assert "droppedEventsCount" not in span
    assert span["droppedLinksCount"] == 0xFFFFFFFF
    message = ExportTraceServiceRequest()
    message.ParseFromString(encode_otlp_protobuf([base]))
    pspan = message.resource_spans[0].scope_spans[0].spans[0]
    assert (pspan.dropped_attributes_count, pspan.dropped_events_count) == (0, 0)
    assert pspan.dropped_links_count == 0xFFFFFFFF


def test_dropped_counts_survive_a_sanitizer_with_text_rules() -> None:
    san = Sanitizer(add=[lambda key, text: text])
    spans = _spans_with_drops()
    recs = san._span_records(spans, "svc", "prod", RESOURCE, None)
    assert [r.get("dropped_attributes_count") for r in recs] == [None, 2, None, None, 1, 1]
    assert _stats is not None


# -- session 17: event / link dropped counts and the unlimited resource: the builders agree -------
BIG_RESOURCE = make_resource("svc", "prod", {f"app.tag{i}": f"v{i}" for i in range(12)})


def _spans_with_item_drops() -> list[Span]:
    """Spans whose events and links lost attributes to the span's limit (max_attributes=3), and
    spans with none lost, mixed with plain spans (the C builder's own)."""
    made: list[Span] = []
    with capture_spans(max_attributes=3, rollups=None):
        for i in range(6):
            span = pt.start_span(f"op{i % 3}", attributes={"a": 1, "b": "x"})
            assert isinstance(span, Span)
            if i % 3 == 1:
                span.add_event("e", {f"k{j}": j for j in range(5)})  # 2 dropped
                span.add_event("f", {"k": 1})
            if i % 3 == 2:
                span.add_link(span.context, {f"l{j}": j for j in range(4)})  # 1 dropped
                span.add_link(span.context)
            span.end()
            made.append(span)
    return made


def _item_keys(records: list[dict[str, Any]]) -> list[list[list[str]]]:
    return [[list(item) for item in (*r["events"], *r["links"])] for r in records]


def test_c_and_python_builders_agree_on_event_and_link_counts_field_by_field() -> None:
    spans = _spans_with_item_drops()
    for san_limit in (128, 2):  # (the span's limit alone; the sanitizer's added)
        san = Sanitizer(max_attributes=san_limit)
        python = [
            Sanitizer(max_attributes=san_limit)._span_record(s, "svc", "prod", BIG_RESOURCE, None)
            for s in spans
        ]
        for _ in range(2):  # cold caches, then warm (mostly the C builder where compiled)
            got = san._span_records(spans, "svc", "prod", BIG_RESOURCE, None)
            assert got == python
            assert [list(r) for r in got] == [list(r) for r in python]  # same field order
            assert _item_keys(got) == _item_keys(python)  # and in the events and links
        events = [[e.get("dropped_attributes_count") for e in r["events"]] for r in python]
        links = [[lk.get("dropped_attributes_count") for lk in r["links"]] for r in python]
        if san_limit == 128:
            assert events == [[], [2, None], [], [], [2, None], []]
            assert links == [[], [], [1, None], [], [], [1, None]]
        else:
            assert events == [[], [3, None], [], [], [3, None], []]
            assert links == [[], [], [2, None], [], [], [2, None]]
            assert not any("dropped_attributes_count" in r for r in python)  # (2 fit in 2)
        assert all(len(r["resource"]) == len(BIG_RESOURCE) for r in python)  # never cut
        _validate(python)


def test_the_plain_builder_and_span_record_agree_on_event_and_link_counts() -> None:
    spans = _spans_with_item_drops()
    plain = [span_record(s, "svc", "prod", BIG_RESOURCE) for s in spans]
    with capture_spans(sanitizer=None, rollups=None):  # the pipeline's own path without a sanitizer
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        # (the C builder, which hands spans with events or links to span_record; pure Python:
        # span_record itself)
        got = (
            pipeline._plain_records(spans, "svc", "prod", BIG_RESOURCE, None)
            if _accel.build_span_records is not None
            else [span_record(s, "svc", "prod", BIG_RESOURCE) for s in spans]
        )
    assert got == plain
    assert [list(r) for r in got] == [list(r) for r in plain]
    assert _item_keys(got) == _item_keys(plain)
    assert plain[1]["events"][0]["dropped_attributes_count"] == 2
    assert plain[2]["links"][0]["dropped_attributes_count"] == 1
    _validate(plain)
