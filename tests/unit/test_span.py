"""Span API: attributes, events, links, status, exceptions, lifetime, current span, context."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace import _safety
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())


@contextmanager
def captured(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """capture_spans, then check every exported record against the JSON Schema."""
    with capture_spans(**configure_kwargs) as mem:
        yield mem
    for rec in mem.records:
        _VALIDATOR.validate(rec)


def recording(span: pt.Span | pt.NonRecordingSpan) -> pt.Span:
    assert isinstance(span, pt.Span)
    return span


def only(mem: InMemoryExporter, name: str) -> dict[str, Any]:
    found = mem.spans(name)
    assert len(found) == 1, f"expected one span {name!r}, got {len(found)}"
    return found[0]


REMOTE_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
REMOTE_SPAN = 0x00F067AA0BA902B7


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyError(Exception):
    pass


# -- attributes ---------------------------------------------------------------------------------
def test_scalar_attributes_of_every_type_are_kept() -> None:
    with captured() as mem, pt.span("op", attributes={"a.str": "x", "a.int": 7}) as s:
        s.set_attribute("a.bool", True)
        s.set_attribute("a.float", 1.5)
        s.set_attributes({"b.str": "y", "b.int": -3})
        s.set_attribute("a.int", 8)  # overwrite
    attrs = only(mem, "op")["attributes"]
    assert attrs == {"a.str": "x", "a.int": 8, "a.bool": True, "a.float": 1.5, "b.str": "y", "b.int": -3}
    assert type(attrs["a.bool"]) is bool


def test_homogeneous_sequences_are_copied_as_lists() -> None:
    ints = [1, 2]
    strs = ("a", "b")
    start_list = [1.5, 2.5]
    with captured() as mem, pt.span("op", attributes={"start": start_list}) as s:
        s.set_attribute("ints", ints)
        s.set_attribute("strs", strs)
        s.set_attribute("bools", [True, False])
        s.set_attribute("empty", [])
        ints.append(3)
        start_list.append(3.5)
    attrs = only(mem, "op")["attributes"]
    assert attrs == {
        "start": [1.5, 2.5],
        "ints": [1, 2],
        "strs": ["a", "b"],
        "bools": [True, False],
        "empty": [],
    }
    assert attrs["ints"] is not ints


@pytest.mark.parametrize(
    "value",
    [None, {"a": 1}, [1, "a"], [1, True], [[1]], [None], b"raw", object(), {1, 2}, 1j],
    ids=["none", "dict", "mixed", "int-bool", "nested", "list-none", "bytes", "object", "set", "complex"],
)
def test_invalid_values_are_dropped_and_counted(value: Any) -> None:
    with captured() as mem, pt.span("op") as s:
        s.set_attribute("bad", value)
        s.set_attribute("good", 1)
    assert only(mem, "op")["attributes"] == {"good": 1}
    assert pt.stats()["dropped.attribute_invalid"] == 1


def test_invalid_keys_are_dropped_and_counted() -> None:
    with captured() as mem, pt.span("op") as s:
        s.set_attribute(1, "v")  # type: ignore[arg-type]
        s.set_attribute(None, "v")  # type: ignore[arg-type]
        s.set_attribute(("k",), "v")  # type: ignore[arg-type]
        s.set_attribute("ok", "v")
    assert only(mem, "op")["attributes"] == {"ok": "v"}
    assert pt.stats()["dropped.attribute_invalid"] == 3


def test_invalid_start_attributes_are_dropped_and_counted() -> None:
    with captured() as mem, pt.span("op", attributes={"ok": 1, "bad": None, 2: "x"}):  # type: ignore[dict-item]
        pass
    assert only(mem, "op")["attributes"] == {"ok": 1}
    assert pt.stats()["dropped.attribute_invalid"] == 2


def test_attribute_limit_drops_new_keys_and_counts() -> None:
    with captured(max_attributes=3) as mem, pt.span("op") as s:
        for i in range(5):
            s.set_attribute(f"k{i}", i)
        s.set_attribute("k0", 100)  # existing keys can still be updated at the limit
        s.set_attribute("k9", [1])  # slow path (sequence) is bounded too
    assert only(mem, "op")["attributes"] == {"k0": 100, "k1": 1, "k2": 2}
    assert pt.stats()["dropped.attribute_limit"] == 3


def test_trusted_attribute_maps_are_copied_and_still_bounded() -> None:
    from pitchey_trace._span import TrustedAttributes

    shared = TrustedAttributes({"db.system.name": "postgresql", "server.port": 5432})
    with captured() as mem:
        span = recording(pt.start_span("q", shared))
        shared["db.namespace"] = "changed later"  # the span holds its own copy
        span.set_attribute("db.response.returned_rows", 1)
        span.end()
    assert only(mem, "q")["attributes"] == {
        "db.system.name": "postgresql",
        "server.port": 5432,
        "db.response.returned_rows": 1,
    }
    assert set(shared) == {"db.system.name", "server.port", "db.namespace"}
    with captured(max_attributes=2) as mem:  # over the limit: checked and cut like any map
        pt.start_span("q", shared).end()
    assert len(only(mem, "q")["attributes"]) == 2
    assert pt.stats()["dropped.attribute_limit"] == 1


def test_limit_applies_to_event_attributes() -> None:
    with captured(max_attributes=1) as mem, pt.span("op") as s:
        s.add_event("e", {"a": 1, "b": 2})
    assert only(mem, "op")["events"][0]["attributes"] == {"a": 1}
    assert pt.stats()["dropped.attribute_limit"] == 1


def test_int_enum_and_number_subclasses_are_stored_as_base_values() -> None:
    with captured() as mem, pt.span("op") as s:
        s.set_attribute("level", Level.HIGH)
        s.set_attribute("myint", MyInt(5))
        s.set_attribute("myfloat", MyFloat(2.5))
    attrs = only(mem, "op")["attributes"]
    assert attrs == {"level": 3, "myint": 5, "myfloat": 2.5}
    assert type(attrs["level"]) is int
    assert type(attrs["myint"]) is int
    assert type(attrs["myfloat"]) is float


# -- events -------------------------------------------------------------------------------------
def test_events_with_attributes_and_timestamps() -> None:
    with captured() as mem, pt.span("op") as s:
        s.add_event("cache_miss", {"cache.key": "k1", "n": 2})
        s.add_event("explicit", timestamp_ns=1_700_000_000_000_000_000)
        s.add_event("bare")
    rec = only(mem, "op")
    names = [e["name"] for e in rec["events"]]
    assert names == ["cache_miss", "explicit", "bare"]
    first, explicit, bare = rec["events"]
    assert first["attributes"] == {"cache.key": "k1", "n": 2}
    assert explicit["time_unix_nano"] == 1_700_000_000_000_000_000
    assert explicit["attributes"] == {}
    assert rec["start_time_unix_nano"] <= bare["time_unix_nano"] <= rec["end_time_unix_nano"]


def test_event_limit_drops_and_counts() -> None:
    with captured(max_events=2) as mem, pt.span("op") as s:
        for i in range(4):
            s.add_event(f"e{i}")
        s.record_exception(ValueError("over the limit"))
    assert [e["name"] for e in only(mem, "op")["events"]] == ["e0", "e1"]
    assert pt.stats()["dropped.event_limit"] == 3


def test_event_attributes_are_validated() -> None:
    with captured() as mem, pt.span("op") as s:
        s.add_event("e", {"ok": "v", "bad": None})  # type: ignore[dict-item]
    assert only(mem, "op")["events"][0]["attributes"] == {"ok": "v"}
    assert pt.stats()["dropped.attribute_invalid"] == 1


# -- links --------------------------------------------------------------------------------------
def test_links_to_contexts_and_spans() -> None:
    remote = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN)
    with captured() as mem:
        with pt.span("producer") as producer:
            pass
        with pt.span("consumer", links=[remote, pt.Link(producer, {"link.kind": "batch"})]) as s:
            s.add_link(remote, {"n": 1})
    rec = only(mem, "consumer")
    assert rec["links"] == [
        {"trace_id": f"{REMOTE_TRACE:032x}", "span_id": f"{REMOTE_SPAN:016x}", "attributes": {}},
        {
            "trace_id": producer.trace_id_hex,
            "span_id": producer.span_id_hex,
            "attributes": {"link.kind": "batch"},
        },
        {"trace_id": f"{REMOTE_TRACE:032x}", "span_id": f"{REMOTE_SPAN:016x}", "attributes": {"n": 1}},
    ]


def test_invalid_links_are_dropped_and_counted() -> None:
    with captured() as mem, pt.span("op") as s:
        s.add_link(pt.INVALID_SPAN)
        s.add_link(object())  # type: ignore[arg-type]
    assert only(mem, "op")["links"] == []
    assert pt.stats()["dropped.link_invalid"] == 2


def test_link_limit() -> None:
    with captured(max_links=1) as mem, pt.span("op") as s:
        s.add_link(pt.TraceContext(REMOTE_TRACE, 1))
        s.add_link(pt.TraceContext(REMOTE_TRACE, 2))
    assert [link["span_id"] for link in only(mem, "op")["links"]] == [f"{1:016x}"]
    assert pt.stats()["dropped.link_limit"] == 1


# -- status -------------------------------------------------------------------------------------
def test_status_default_unset_and_error_message_kept() -> None:
    with captured() as mem:
        with pt.span("plain"):
            pass
        with pt.span("failed") as s:
            s.set_status("error", "card declined")
        with pt.span("by_code") as s:
            s.set_status(pt.StatusCode.ERROR, "by code")
    assert only(mem, "plain")["status"] == "unset"
    assert only(mem, "plain")["status_message"] is None
    assert (only(mem, "failed")["status"], only(mem, "failed")["status_message"]) == (
        "error",
        "card declined",
    )
    assert (only(mem, "by_code")["status"], only(mem, "by_code")["status_message"]) == ("error", "by code")


def test_ok_is_final_and_carries_no_message() -> None:
    with captured() as mem, pt.span("op") as s:
        s.set_status("OK", "ignored message")
        s.set_status("error", "too late")
        s.set_status("unset")
    rec = only(mem, "op")
    assert (rec["status"], rec["status_message"]) == ("ok", None)
    assert recording(s).status is pt.StatusCode.OK


def test_invalid_status_is_ignored() -> None:
    with captured() as mem, pt.span("op") as s:
        s.set_status("error", "kept")
        s.set_status("bogus")
        s.set_status(7)  # type: ignore[arg-type]
    rec = only(mem, "op")
    assert (rec["status"], rec["status_message"]) == ("error", "kept")
    assert pt.stats()["misuse.status_invalid"] == 2


def test_escaping_exception_keeps_an_explicit_error_message() -> None:
    def work() -> None:
        with pt.span("op") as s:
            s.set_status("error", "explicit")
            raise MyError("boom")

    with captured() as mem, pytest.raises(MyError):
        work()
    rec = only(mem, "op")
    assert (rec["status"], rec["status_message"]) == ("error", "explicit")
    assert [e["name"] for e in rec["events"]] == ["exception"]


# -- exceptions ---------------------------------------------------------------------------------
def _raise_my_error() -> None:
    raise MyError("bad input")


def test_record_exception_event() -> None:
    with captured() as mem, pt.span("op") as s:
        try:
            _raise_my_error()
        except MyError as exc:
            s.record_exception(exc, {"retry": 2})
        s.record_exception(ValueError("builtin"))
    rec = only(mem, "op")
    assert rec["status"] == "unset"  # recording an exception does not change the status
    custom, builtin = rec["events"]
    assert custom["name"] == builtin["name"] == "exception"
    assert custom["attributes"]["exception.type"] == f"{__name__}.MyError"
    assert custom["attributes"]["exception.message"] == "bad input"
    assert "_raise_my_error" in custom["attributes"]["exception.stacktrace"]
    assert "MyError: bad input" in custom["attributes"]["exception.stacktrace"]
    assert custom["attributes"]["retry"] == 2
    assert builtin["attributes"]["exception.type"] == "ValueError"
    assert builtin["attributes"]["exception.message"] == "builtin"


def test_with_block_reraises_the_same_exception_object_and_marks_error() -> None:
    original = MyError("boom")
    cause = KeyError("k")
    original.__cause__ = cause
    with captured() as mem:
        with pytest.raises(MyError) as info, pt.span("op"):
            raise original
        assert info.value is original
        assert info.value.__cause__ is cause
        assert info.value.args == ("boom",)
        assert not getattr(info.value, "__notes__", None)
    rec = only(mem, "op")
    assert rec["status"] == "error"
    assert rec["status_message"] == "MyError: boom"
    assert rec["events"][0]["attributes"]["exception.type"] == f"{__name__}.MyError"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, SystemExit])
def test_control_flow_exceptions_do_not_mark_error(exc_type: type[BaseException]) -> None:
    original = exc_type()
    with captured() as mem:
        with pytest.raises(exc_type) as info, pt.span("op"):
            raise original
        assert info.value is original
    rec = only(mem, "op")
    assert rec["status"] == "unset"
    assert rec["events"] == []


def test_exception_in_non_recording_span_is_reraised_unchanged() -> None:
    original = MyError("x")
    with pytest.raises(MyError) as info, pt.span("not configured"):
        raise original
    assert info.value is original


# -- lifetime -----------------------------------------------------------------------------------
def test_end_twice_warns_once_and_is_ignored(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_safety, "_last_logged", {})  # misuse warnings are rate-limited per process
    with captured() as mem:
        s = recording(pt.start_span("op"))
        s.end(end_time_ns=s.start_ns + 5_000)
        with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
            s.end()
            s.end(end_time_ns=s.start_ns + 9_999_999)
    assert s.end_ns == s.start_ns + 5_000
    warnings = [r for r in caplog.records if r.name == "pitchey_trace" and "ended twice" in r.getMessage()]
    assert len(warnings) == 1
    assert pt.stats()["misuse.end_twice"] == 2
    rec = only(mem, "op")
    assert rec["end_time_unix_nano"] - rec["start_time_unix_nano"] == 5_000


def test_mutations_after_end_are_ignored() -> None:
    with captured() as mem:
        with pt.span("op", attributes={"a": 1}) as s:
            s.add_event("during")
        s.set_attribute("a", 2)
        s.set_attribute("b", [1, 2])
        s.set_attributes({"c": 3})
        s.add_event("after")
        s.add_link(pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN))
        s.set_status("error", "after")
        s.record_exception(ValueError("after"))
        s.update_name("renamed")
    rec = only(mem, "op")
    assert rec["attributes"] == {"a": 1}
    assert [e["name"] for e in rec["events"]] == ["during"]
    assert rec["links"] == []
    assert rec["status"] == "unset"
    assert recording(s).name == "op"
    assert s.is_ended


def test_update_name() -> None:
    with captured() as mem, pt.span("GET", kind=pt.SpanKind.SERVER) as s:
        s.update_name("GET /pitches/{id}")
    assert [r["name"] for r in mem.spans()] == ["GET /pitches/{id}"]


def test_duration_ns() -> None:
    with captured():
        s = pt.start_span("op", start_time_ns=1_000_000_000)
        assert isinstance(s, pt.Span)
        assert s.duration_ns == 0  # still running
        assert not s.is_ended
        s.end(end_time_ns=1_250_000_000)
        assert s.duration_ns == 250_000_000
        backwards = pt.start_span("clock went back", start_time_ns=2_000)
        assert isinstance(backwards, pt.Span)
        backwards.end(end_time_ns=1_000)
        assert backwards.duration_ns == 0


def test_end_before_start_exports_zero_duration() -> None:
    with captured() as mem:
        pt.start_span("op", start_time_ns=2_000).end(end_time_ns=1_000)
    rec = only(mem, "op")
    assert rec["duration_ms"] == 0
    assert rec["end_time_unix_nano"] == rec["start_time_unix_nano"] == 2_000


@pytest.mark.parametrize("kind", list(pt.SpanKind))
def test_kinds(kind: pt.SpanKind) -> None:
    with captured() as mem, pt.span("op", kind=kind) as s:
        assert recording(s).kind is kind
    assert only(mem, "op")["kind"] == kind.value


def test_span_properties() -> None:
    with captured(), pt.span("op") as s:
        assert isinstance(s, pt.Span)
        assert s.is_recording
        assert s.sampled
        assert s.trace_id_hex == f"{s.trace_id:032x}"
        assert s.span_id_hex == f"{s.span_id:016x}"
        assert 0 < s.trace_id < 1 << 128
        assert 0 < s.span_id < 1 << 64
        ctx = s.context
        assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (s.trace_id, s.span_id, s.trace_flags)
        assert ctx.is_remote is False


# -- current span / context ---------------------------------------------------------------------
def test_current_span_is_never_none() -> None:
    assert pt.current_span() is pt.INVALID_SPAN
    assert pt.current_context() is None
    with captured():
        assert pt.current_span() is pt.INVALID_SPAN
        with pt.span("outer") as outer:
            assert pt.current_span() is outer
            assert pt.current_context() == outer.context
            with pt.span("inner") as inner:
                assert pt.current_span() is inner
            assert pt.current_span() is outer
        assert pt.current_span() is pt.INVALID_SPAN
        assert pt.current_context() is None
    assert not pt.INVALID_SPAN.is_recording
    assert pt.INVALID_SPAN.trace_id == 0


def test_nested_spans_parent_and_trace() -> None:
    with captured() as mem, pt.span("outer") as outer, pt.span("inner") as inner:
        pass
    assert only(mem, "inner")["parent_span_id"] == outer.span_id_hex
    assert only(mem, "inner")["trace_id"] == only(mem, "outer")["trace_id"] == outer.trace_id_hex
    assert only(mem, "outer")["parent_span_id"] is None
    assert inner.trace_id == outer.trace_id


def test_use_context_makes_a_remote_context_the_parent() -> None:
    remote = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN)
    with captured() as mem:
        with pt.use_context(remote):
            assert pt.current_context() == remote
            assert not pt.current_span().is_recording
            with pt.span("handler", kind=pt.SpanKind.SERVER):
                pass
        assert pt.current_context() is None
    rec = only(mem, "handler")
    assert rec["trace_id"] == f"{REMOTE_TRACE:032x}"
    assert rec["parent_span_id"] == f"{REMOTE_SPAN:016x}"


def test_explicit_remote_parent() -> None:
    remote = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, trace_state=(("vendor", "v1"),))
    with captured() as mem, pt.span("unrelated"), pt.span("handler", context=remote) as s:
        assert s.trace_state == (("vendor", "v1"),)
        with pt.span("child"):
            pass
    rec = only(mem, "handler")
    assert rec["trace_id"] == f"{REMOTE_TRACE:032x}"
    assert rec["parent_span_id"] == f"{REMOTE_SPAN:016x}"
    assert only(mem, "child")["parent_span_id"] == rec["span_id"]
    assert only(mem, "child")["trace_id"] == rec["trace_id"]


def test_remote_sampled_flag_wins_over_sample_rate_zero() -> None:
    remote = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, trace_flags=0x01)
    with captured(sample_rate=0.0) as mem:
        with pt.span("local root"):
            pass
        with pt.span("handler", context=remote) as s:
            assert s.sampled
    assert [r["name"] for r in mem.spans()] == ["handler"]


def test_remote_unsampled_flag_wins_over_sample_rate_one() -> None:
    remote = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, trace_flags=0x00)
    with captured(sample_rate=1.0) as mem:
        with pt.span("handler", context=remote) as s, pt.span("child") as child:
            assert not s.sampled
            assert not child.sampled
        with pt.span("local root"):
            pass
    assert [r["name"] for r in mem.spans()] == ["local root"]


def test_invalid_span_as_explicit_parent_starts_a_new_trace() -> None:
    with captured() as mem, pt.span("outer") as outer, pt.span("detached", context=pt.INVALID_SPAN) as d:
        assert d.trace_id != outer.trace_id
    rec = only(mem, "detached")
    assert rec["parent_span_id"] is None
    assert rec["trace_id"] != outer.trace_id_hex


def test_explicit_local_span_parent() -> None:
    with captured() as mem:
        parent = pt.start_span("background")
        with pt.span("current"), pt.span("child", context=parent):
            pass
        parent.end()
    assert only(mem, "child")["parent_span_id"] == only(mem, "background")["span_id"]


def test_start_span_is_not_made_current() -> None:
    with captured() as mem:
        with pt.span("outer") as outer:
            manual = pt.start_span("manual")
            assert pt.current_span() is outer
            with pt.span("sibling"):
                pass
            manual.end()
        assert pt.current_span() is pt.INVALID_SPAN
    assert only(mem, "manual")["parent_span_id"] == outer.span_id_hex
    assert only(mem, "sibling")["parent_span_id"] == outer.span_id_hex


def test_suppress_tracing_records_nothing() -> None:
    with captured() as mem:
        with pt.span("outer"), pt.suppress_tracing():
            assert pt.current_span() is pt.INVALID_SPAN
            assert pt.current_context() is None
            with pt.span("hidden") as hidden:
                assert not hidden.is_recording
                hidden.set_attribute("a", 1)
                pt.start_span("hidden manual").end()
        with pt.span("after"):
            pass
    assert sorted(r["name"] for r in mem.spans()) == ["after", "outer"]


def test_non_recording_span_methods_are_noops() -> None:
    span = pt.NonRecordingSpan(REMOTE_TRACE, REMOTE_SPAN, 0)
    before = pt.stats()
    span.set_attribute("a", 1)
    span.set_attributes({"a": 1})
    span.add_event("e", {"a": 1}, timestamp_ns=5)
    span.add_link(pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN))
    span.set_status("error", "m")
    span.record_exception(ValueError("x"))
    span.update_name("other")
    span.end()
    span.end()
    assert not span.is_recording
    assert not span.is_ended
    assert span.context == pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 0, is_remote=False)
    assert pt.stats() == before


def test_spans_before_configure_are_non_recording_but_propagate_ids() -> None:
    assert not pt.is_configured()
    with pt.span("outer") as outer:
        assert not outer.is_recording
        assert pt.current_span() is outer
        assert pt.current_context() == outer.context
        with pt.span("inner") as inner:
            assert not inner.is_recording
            assert inner.trace_id == outer.trace_id
            assert inner.span_id != outer.span_id
            assert pt.current_span() is inner
    assert outer.trace_id != 0
    assert pt.current_span() is pt.INVALID_SPAN


def test_asyncio_tasks_inherit_the_current_span() -> None:
    async def child() -> None:
        with pt.span("in task"):
            await asyncio.sleep(0)

    async def main() -> None:
        with pt.span("parent"):
            await asyncio.gather(child(), asyncio.create_task(child()))

    with captured() as mem:
        asyncio.run(main())
    parent = only(mem, "parent")
    tasks = mem.spans("in task")
    assert len(tasks) == 2
    assert {t["parent_span_id"] for t in tasks} == {parent["span_id"]}


def test_context_copied_before_span_does_not_see_it() -> None:
    with captured():
        ctx = contextvars.copy_context()
        with pt.span("op"):
            assert ctx.run(pt.current_span) is pt.INVALID_SPAN


# -- TraceContext -------------------------------------------------------------------------------
def test_trace_context_is_immutable() -> None:
    ctx = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN)
    with pytest.raises(AttributeError):
        ctx.trace_id = 1
    with pytest.raises(AttributeError):
        del ctx.span_id
    with pytest.raises(AttributeError):
        ctx.extra = 1
    state = [("a", "1")]
    ctx2 = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, trace_state=state)  # type: ignore[arg-type]
    state.append(("b", "2"))
    assert ctx2.trace_state == (("a", "1"),)


@pytest.mark.parametrize(
    ("trace_id", "span_id", "flags"),
    [(0, 1, 1), (1, 0, 1), (1 << 128, 1, 1), (1, 1 << 64, 1), (-1, 1, 1), (1, 1, 256), (1, 1, -1)],
)
def test_trace_context_validation(trace_id: int, span_id: int, flags: int) -> None:
    with pytest.raises(ValueError):
        pt.TraceContext(trace_id, span_id, flags)


def test_trace_context_edges_are_valid() -> None:
    ctx = pt.TraceContext((1 << 128) - 1, (1 << 64) - 1, 0xFF)
    assert ctx.traceparent == "00-" + "f" * 32 + "-" + "f" * 16 + "-ff"


def test_trace_context_equality_and_hash() -> None:
    a = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 1, (("k", "v"),), (("user.id", "7"),))
    b = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 1, (("k", "v"),), (("user.id", "7"),))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 0, (("k", "v"),), (("user.id", "7"),))
    assert a != pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN + 1, 1, (("k", "v"),), (("user.id", "7"),))
    assert a != pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 1, (), (("user.id", "7"),))
    assert a != a.with_baggage(())
    assert a != "not a context"


def test_trace_context_forms() -> None:
    ctx = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, 0x03)
    assert ctx.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    assert ctx.trace_id_hex == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx.span_id_hex == "00f067aa0ba902b7"
    assert ctx.sampled
    assert not pt.TraceContext(1, 1, 0x02).sampled
    assert pt.TraceContext(1, 1, 0x00).traceparent == "00-" + "0" * 31 + "1-" + "0" * 15 + "1-00"
    assert "4bf92f3577b34da6a3ce929d0e0e4736" in repr(ctx)


def test_trace_context_copies() -> None:
    ctx = pt.TraceContext(REMOTE_TRACE, REMOTE_SPAN, baggage=(("a", "1"),))
    with_bag = ctx.with_baggage((("b", "2"),))
    with_state = ctx.with_trace_state((("v", "x"),))
    assert ctx.baggage == (("a", "1"),)
    assert ctx.trace_state == ()
    assert with_bag.baggage == (("b", "2"),)
    assert with_state.trace_state == (("v", "x"),)
    assert with_state.baggage == (("a", "1"),)
    assert (with_bag.trace_id, with_bag.span_id, with_bag.is_remote) == (REMOTE_TRACE, REMOTE_SPAN, True)


def test_span_api_has_signatures_for_help_and_ides() -> None:
    # The C accelerator's methods carry text signatures inspect can read (help(), IDEs).
    import inspect

    params = inspect.signature(pt.span).parameters
    assert list(params)[:6] == ["name", "attributes", "kind", "context", "links", "start_time_ns"]
    assert params["kind"].default in (None, pt.SpanKind.INTERNAL)
    assert "end_time_ns" in inspect.signature(pt.Span.end).parameters
    assert list(inspect.signature(pt.Span.set_attribute).parameters)[1:] == ["key", "value"]
    with pt.span("k", kind=None) as s:  # None is INTERNAL, as the signature shows
        assert s.kind is pt.SpanKind.INTERNAL


class Unprintable:
    """An object whose str, repr, hash and comparison all fail."""

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")


def test_odd_arguments_never_raise_into_the_app_nor_lose_the_span() -> None:
    # Each of these once raised from the span API (AttributeError, TypeError, the object's own
    # error) or made the exporters fail the span's batch.
    odd: list[Any] = [None, 7, 1.5, b"b", [], {}, object(), Unprintable(), ("a", 1)]
    with capture_spans(rollups=None) as mem:
        for v in odd:
            with pt.span(v) as s:  # a name of another type: its text
                s.update_name(v)
                s.add_event(v)
                s.set_status(v)
                s.set_status("error", v)
            pt.span("kind", kind=v).end()
            pt.span("context", context=v).end()
            pt.span("links", links=v).end()
            pt.emit_audit(v, v, v, actor=v)
    spans = [r for r in mem.records if r["type"] == "span"]
    assert len(spans) == 4 * len(odd)
    assert all(isinstance(r["name"], str) for r in spans)
    assert "<unprintable Unprintable>" in {r["name"] for r in spans}
    assert {r["kind"] for r in spans} <= {k.value for k in pt.SpanKind}
    assert pt.stats().get("internal_errors", 0) == 0
    assert pt.stats()["misuse.name_type"] > 0
    assert pt.stats()["misuse.context_type"] > 0


def test_kind_by_name_or_another_librarys_enum() -> None:
    import enum

    class OtherKind(enum.Enum):  # as OpenTelemetry's SpanKind: int values, member names
        SERVER = 1
        CLIENT = 2

    with capture_spans(rollups=None) as mem:
        for kind in ("SERVER", "client", OtherKind.SERVER, OtherKind.CLIENT, "sideways"):
            pt.span(str(kind), kind=kind).end()  # type: ignore[arg-type]
    assert [r["kind"] for r in mem.spans()] == ["server", "client", "server", "client", "internal"]


def test_kind_by_value_and_a_duck_typed_context() -> None:
    class Shaped:  # a context of its own class, shaped like one
        trace_id, span_id, trace_flags, trace_state, baggage, is_remote = 0xAB, 0xCD, 1, (), (), True

    with capture_spans(rollups=None) as mem:
        pt.span("k", kind="server", context=Shaped()).end()  # type: ignore[arg-type]
    (rec,) = mem.spans("k")
    assert rec["kind"] == "server"
    assert rec["trace_id"] == f"{0xAB:032x}"
    assert rec["parent_span_id"] == f"{0xCD:016x}"
