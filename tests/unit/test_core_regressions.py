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
