"""Regression tests for core bugs found by the unit-test sweep (one test per bug)."""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import AsyncGenerator, Iterator

import pytest
from jsonschema import Draft202012Validator

import pitchey_trace as pt
from pitchey_trace._context import is_suppressed
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans


class Color(str, enum.Enum):
    RED = "red"


def test_regression_str_enum_value_stored_as_base_value() -> None:
    with capture_spans() as mem, pt.span("op") as s:
        s.set_attribute("color", Color.RED)
    assert mem.spans("op")[0]["attributes"] == {"color": "red"}


def test_regression_start_attributes_bypass_attribute_limit() -> None:
    with capture_spans(max_attributes=2) as mem, pt.span("op", attributes={"a": 1, "b": 2, "c": 3}):
        pass
    assert mem.spans("op")[0]["attributes"] == {"a": 1, "b": 2}
    assert pt.stats()["dropped.attribute_limit"] == 1


def test_regression_empty_key_accepted_by_fast_paths() -> None:
    with capture_spans() as mem, pt.span("op", attributes={"": 1}) as s:
        s.set_attribute("", 2)
    assert mem.spans("op")[0]["attributes"] == {}
    assert pt.stats()["dropped.attribute_invalid"] == 2


def test_regression_escaping_exception_overrides_final_ok() -> None:
    def work() -> None:
        with pt.span("op") as s:
            s.set_status("ok")
            raise ValueError("x")

    with capture_spans() as mem, pytest.raises(ValueError):
        work()
    assert mem.spans("op")[0]["status"] == "ok"


def test_regression_shared_suppressed_singleton_loses_suppression() -> None:
    with capture_spans() as mem:
        with pt.suppress_tracing():
            outer = pt.span("a")
            outer.__enter__()
            # another context (another thread, e.g. a second exporter worker) uses the singleton too
            contextvars.copy_context().run(lambda: pt.span("b").__enter__())
            outer.__exit__(None, None, None)
            assert is_suppressed()
            with pt.span("leaked"):
                pass
    assert mem.spans() == []


def test_regression_exception_after_manual_end_mutates_ended_span() -> None:
    def work() -> pt.Span:
        with pt.span("op") as s:
            s.end()
            raise ValueError("after end")

    with capture_spans():
        try:
            work()
        except ValueError:
            pass
    # can't get s from work(); re-run keeping a handle
    holder = []
    with capture_spans():
        try:
            with pt.span("op") as s:
                holder.append(s)
                s.end()
                raise ValueError("after end")
        except ValueError:
            pass
    assert holder[0].status == pt.StatusCode.UNSET


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str fails")


def test_regression_record_exception_raises_when_str_fails() -> None:
    with capture_spans(), pt.span("op") as s:
        s.record_exception(BadStr())  # must never raise into user code


@pytest.mark.allow_internal_errors
def test_regression_with_block_bad_str_exception_leaves_status_unset() -> None:
    with capture_spans() as mem:
        try:
            with pt.span("op"):
                raise BadStr()
        except BadStr:
            pass
    assert mem.spans("op")[0]["status"] == "error"


def test_regression_nan_attribute_exports_invalid_json_record() -> None:
    import io
    import json

    from jsonschema import Draft202012Validator

    from pitchey_trace.records import json_schema

    stream = io.StringIO()
    with capture_spans(exporters=[pt.ConsoleExporter(stream)], rollups=None), pt.span("op") as s:
        s.set_attribute("x", float("nan"))
    line = json.loads(stream.getvalue().splitlines()[0])
    assert Draft202012Validator(json_schema()).is_valid(line)


def test_regression_set_attributes_none_raises() -> None:
    with capture_spans(), pt.span("op") as s:
        s.set_attributes(None)  # type: ignore[arg-type]


def test_regression_shared_invalid_span_token_across_contexts() -> None:
    # INVALID_SPAN is a process-wide singleton with one _token slot: entering it in two contexts
    # makes the first exit reset the wrong token.
    inv = pt.current_span()
    assert inv is pt.INVALID_SPAN
    with capture_spans():
        with pt.span("outer") as outer:
            inv.__enter__()
            contextvars.copy_context().run(lambda: pt.INVALID_SPAN.__enter__())
            inv.__exit__(None, None, None)
            assert pt.current_span() is outer


def test_regression_async_generator_asend_not_delegated() -> None:
    @pt.traced
    async def echo() -> AsyncGenerator[str, str]:
        received = yield "ready"
        yield f"got {received}"

    async def main() -> list[str]:
        g = echo()
        out = [await g.__anext__(), await g.asend("a")]
        await g.aclose()
        return out

    with capture_spans():
        assert asyncio.run(main()) == ["ready", "got a"]


def test_regression_async_generator_athrow_not_delegated() -> None:
    class Boom(Exception):
        pass

    @pt.traced
    async def guarded() -> AsyncGenerator[str, None]:
        try:
            yield "first"
        except Boom:
            yield "handled"

    async def main() -> str:
        g = guarded()
        await g.__anext__()
        got = await g.athrow(Boom("in"))
        await g.aclose()
        return got

    with capture_spans():
        assert asyncio.run(main()) == "handled"


def test_regression_generator_span_is_current_in_the_consumer_between_yields() -> None:
    @pt.traced
    def items() -> Iterator[int]:
        yield 1
        yield 2

    with capture_spans() as mem:
        with pt.span("consumer") as consumer:
            for _ in items():
                with pt.span("loop body"):
                    pass
    for body in mem.spans("loop body"):
        assert body["parent_span_id"] == consumer.span_id_hex


def test_regression_rate_limited_below_one_per_second_never_samples() -> None:
    sampler = pt.RateLimited(0.5)
    sampler._last -= 10.0  # ten seconds pass: at 0.5/s at least one trace is due
    got = [sampler.should_sample(None, 1, "op", None, None) for _ in range(3)]
    assert pt.Decision.RECORD_AND_SAMPLE in got


def test_regression_rule_service_pattern_ignores_configured_service() -> None:
    rules = pt.RuleBased([pt.Rule(0.0, service="pitch-api")], default=1.0)
    with capture_spans(service="pitch-api", sampler=pt.ParentBased(rules), keep_errors=False) as mem:
        with pt.span("op"):
            pass
    assert mem.spans() == []


def test_regression_rate_limited_as_configured_sampler_limits_spans_not_traces() -> None:
    with capture_spans(sampler=pt.RateLimited(3)) as mem:
        with pt.span("root"):
            for i in range(5):
                with pt.span(f"child {i}"):
                    pass
    assert len(mem.spans()) == 6  # one trace, kept whole


def test_regression_emit_audit_exports_schema_invalid_records() -> None:
    with capture_spans() as mem:
        pt.emit_audit("login", "session", "success", category="misc")
        pt.emit_audit("login", "session", 200)  # type: ignore[arg-type]
    v = Draft202012Validator(json_schema())
    bad = [r for r in mem.of_type("audit") if not v.is_valid(r)]
    assert bad == []


def test_regression_slow_threshold_below_100ms_is_rejected() -> None:
    for ms in (50, 0):
        with capture_spans(slow_threshold_ms=ms, sample_rate=0.0, keep_errors=False) as mem:
            pt.start_span("slow", start_time_ns=1_000).end(end_time_ns=1_000 + 60_000_000)
        assert [r["name"] for r in mem.spans()] == ["slow"]


# -- re-entered spans ------------------------------------------------------------------------------
def test_regression_reentered_span_stays_current_after_its_blocks() -> None:
    with capture_spans() as mem:
        with pt.span("r") as r:
            with pt.current_span() as again:  # a helper "making sure" the span is current
                assert again is r
            assert pt.current_span() is r
            assert not r.is_ended  # the outermost `with` ends it
            r.set_attribute("after_inner", 1)
        assert pt.current_span() is pt.INVALID_SPAN
        s = pt.start_span("s")
        with s:
            with s, s:
                pass
            assert pt.current_span() is s
            assert not s.is_ended
        assert s.is_ended
        assert pt.current_span() is pt.INVALID_SPAN
        with pt.span("next") as nxt:
            assert nxt.parent_span_id == 0
        with pytest.raises(ValueError, match="boom"), pt.span("e") as e, e:
            raise ValueError("boom")
    assert sorted(r["name"] for r in mem.spans()) == ["e", "next", "r", "s"]
    assert mem.spans("r")[0]["attributes"] == {"after_inner": 1}
    (failed,) = mem.spans("e")
    assert failed["status"] == "error"
    assert [ev["name"] for ev in failed["events"]] == ["exception"]  # recorded once


def test_regression_reentered_non_recording_span_restores_the_context() -> None:
    remote = pt.use_context(pt.TraceContext(0xABC, 0xDEF))
    with capture_spans():
        with remote:
            with remote:
                pass
            assert pt.current_span() is remote
        assert pt.current_span() is pt.INVALID_SPAN


def test_regression_span_entered_in_two_contexts_restores_each() -> None:
    with capture_spans() as mem:
        s = pt.start_span("shared")
        a, b = contextvars.copy_context(), contextvars.copy_context()
        a.run(s.__enter__)
        b.run(s.__enter__)
        a.run(s.__exit__, None, None, None)  # exits before b: a's own entry is undone
        assert a.run(pt.current_span) is pt.INVALID_SPAN
        assert b.run(pt.current_span) is s
        assert not s.is_ended
        b.run(s.__exit__, None, None, None)
        assert b.run(pt.current_span) is pt.INVALID_SPAN
        assert s.is_ended
    assert len(mem.spans("shared")) == 1


# -- wrap_context ----------------------------------------------------------------------------------
def test_regression_wrap_context_runs_concurrently_and_recursively() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    together = threading.Barrier(3, timeout=10)

    def handler(i: int) -> str:
        with pt.span(f"h{i}") as h:
            together.wait()  # all three calls inside the wrapped context at once
            return f"{h.parent_span_id:016x}"

    def fact(n: int) -> int:
        return 1 if n <= 1 else n * wrapped_fact(n - 1)

    with capture_spans():
        with pt.span("root") as root:
            cb = pt.wrap_context(handler)
            wrapped_fact = pt.wrap_context(fact)
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(cb, range(3))) == [root.span_id_hex] * 3
        assert wrapped_fact(5) == 120


# -- processors ------------------------------------------------------------------------------------
def test_regression_processor_setting_a_non_str_dataset_loses_only_that_record() -> None:
    def proc(rec: dict[str, object]) -> dict[str, object]:
        if rec.get("name") == "bad":
            rec = {**rec, "dataset": ["traces"]}
        elif rec.get("name") == "bad type":
            rec = {**rec, "type": ["span"]}
        return rec

    with capture_spans(processors=[proc], rollups=None) as mem:
        for name in ("a", "bad", "b", "bad type", "c"):
            with pt.span(name):
                pass
    assert sorted(r["name"] for r in mem.spans()) == ["a", "b", "c"]
    assert pt.stats()["dropped.processor_error"] == 2


# -- start and end times ---------------------------------------------------------------------------
def test_regression_invalid_end_and_start_times_are_replaced_by_now() -> None:
    with capture_spans(rollups=None) as mem:
        zero = pt.start_span("zero")
        zero.end(0)
        assert zero.is_ended
        zero.end()  # ignored: ended once
        for bad_end in (-5, 2**64, 2**80, 1.5, "123", True):
            pt.start_span("bad end").end(bad_end)  # type: ignore[arg-type]
        for bad_start in (0, -1, 2**64, 2**80, 1.5e18, True):
            pt.start_span("bad start", start_time_ns=bad_start).end()  # type: ignore[arg-type]
        edge = pt.start_span("edge", start_time_ns=1)
        for bad_time in (2**80, -5, 0, "123"):
            edge.add_event("bad time", timestamp_ns=bad_time)  # type: ignore[arg-type]
        edge.add_event("edge time", timestamp_ns=2**64 - 1)
        edge.end(2**64 - 1)
    spans = mem.spans()
    assert len(mem.spans("zero")) == 1
    assert len(spans) == 14
    now_ish = 10**18
    for rec in spans:
        if rec["name"] != "edge":
            assert rec["start_time_unix_nano"] > now_ish
            assert rec["end_time_unix_nano"] > now_ish
    (edge_rec,) = mem.spans("edge")
    assert (edge_rec["start_time_unix_nano"], edge_rec["end_time_unix_nano"]) == (1, 2**64 - 1)
    assert [ev["time_unix_nano"] > now_ish for ev in edge_rec["events"]] == [True] * 5
    assert edge_rec["events"][-1]["time_unix_nano"] == 2**64 - 1
    stats = pt.stats()
    assert stats["misuse.end_time_invalid"] == 7
    assert stats["misuse.start_time_invalid"] == 6
    assert stats["misuse.timestamp_invalid"] == 4
    assert stats.get("misuse.end_twice") == 1


# -- ids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1.5, 2.0), TypeError),
        (("1", 2), TypeError),
        ((True, 2), TypeError),
        ((1, 2, 1.0), TypeError),
        ((0, 2), ValueError),
        ((1, 0), ValueError),
        ((-1, 2), ValueError),
        ((2**128, 2), ValueError),
        ((1, 2**64), ValueError),
        ((1, 2, 256), ValueError),
        ((1, 2, 1, 5), TypeError),  # trace_state: not a sequence of pairs
        ((1, 2, 1, "a=b"), TypeError),
    ],
)
def test_regression_trace_context_requires_int_ids_in_range(args: tuple[object, ...], error: type) -> None:
    with pytest.raises(error):
        pt.TraceContext(*args)  # type: ignore[arg-type]


def test_regression_trace_context_drops_invalid_tracestate_members() -> None:
    state = (("Bad Key", "v,al=ue"), ("ok", "1"), ("ok", "2"), "junk", ("k", 5), ("x@y", "z"))
    ctx = pt.TraceContext(1, 2, trace_state=state)  # type: ignore[arg-type]
    assert ctx.trace_state == (("ok", "1"), ("x@y", "z"))
    assert ctx.with_trace_state((("ok", "bad,value"),)).trace_state == ()
    headers: dict[str, str] = {}
    with capture_spans():
        pt.inject(headers, ctx)
    assert headers["tracestate"] == "ok=1,x@y=z"
    assert pt.stats()["misuse.tracestate_invalid"] == 2  # one per context given bad members


class _Ctx:
    def __init__(self, trace_id: object, span_id: object) -> None:
        self.trace_id = trace_id
        self.span_id = span_id


def test_regression_links_with_invalid_ids_are_ignored_not_the_span() -> None:
    bad = [_Ctx(1.5, 2), _Ctx(-1, 2), _Ctx(2**200, 2), _Ctx("abc", "def"), _Ctx(1, 2**64), _Ctx(True, 2)]
    with capture_spans(rollups=None) as mem:
        with pt.span("added") as s:
            for ctx in bad:
                s.add_link(ctx)  # type: ignore[arg-type]
            s.add_link(_Ctx(1, 2))  # type: ignore[arg-type]
        pt.start_span("at start", links=[*bad, _Ctx(3, 4)]).end()  # type: ignore[list-item]
    (added,) = mem.spans("added")
    (at_start,) = mem.spans("at start")
    assert [(k["trace_id"], k["span_id"]) for k in added["links"]] == [(f"{1:032x}", f"{2:016x}")]
    assert [(k["trace_id"], k["span_id"]) for k in at_start["links"]] == [(f"{3:032x}", f"{4:016x}")]
    assert pt.stats()["dropped.link_invalid"] == 2 * len(bad)


# -- C and Python agree on keywords ----------------------------------------------------------------
def test_regression_span_methods_take_keywords_on_both_paths() -> None:
    with capture_spans(rollups=None) as mem:
        s = pt.start_span("kw")
        s.set_attribute(key="a", value=1)
        s.set_attribute("b", value=2)
        with pytest.raises(TypeError):
            s.set_attribute("c")  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            s.set_attribute("c", 1, 2)  # type: ignore[call-arg]
        s.__enter__()
        s.__exit__(et=None, ev=None, tb=None)  # type: ignore[call-arg]
        assert s.is_ended
    assert mem.spans("kw")[0]["attributes"] == {"a": 1, "b": 2}
