"""pitchey_trace.otel: code instrumented with the OpenTelemetry API records pitchey-trace spans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import pitchey_trace as pt
from pitchey_trace.otel import TracerProvider
from pitchey_trace.testing import capture_spans

REMOTE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def tracer() -> Any:
    return TracerProvider().get_tracer("billing", "2.1")


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records}


def test_spans_nest_across_both_apis(tracer: Any) -> None:
    with capture_spans() as mem:
        with tracer.start_as_current_span(
            "charge", kind=SpanKind.CLIENT, attributes={"amount.cents": 1250}
        ) as s:
            assert otel_trace.get_current_span() is s
            with pt.span("ledger.write"):  # pitchey inside OpenTelemetry
                with tracer.start_as_current_span("audit.log"):  # OpenTelemetry inside pitchey
                    pass
            s.set_attribute("retries", 2)
            s.add_event("authorized", {"code": "A1"})
            s.update_name("charge card")
            s.set_status(Status(StatusCode.OK))
    spans = by_name(mem.spans())
    charge, ledger, audit = spans["charge card"], spans["ledger.write"], spans["audit.log"]
    assert charge["parent_span_id"] is None
    assert ledger["parent_span_id"] == charge["span_id"]
    assert audit["parent_span_id"] == ledger["span_id"]
    assert {r["trace_id"] for r in (charge, ledger, audit)} == {charge["trace_id"]}
    assert charge["kind"] == "client"
    assert charge["status"] == "ok"
    assert charge["attributes"]["amount.cents"] == 1250
    assert charge["attributes"]["retries"] == 2
    assert (charge["attributes"]["otel.scope.name"], charge["attributes"]["otel.scope.version"]) == (
        "billing",
        "2.1",
    )
    assert [e["name"] for e in charge["events"]] == ["authorized"]
    ctx = s.get_span_context()
    assert f"{ctx.trace_id:032x}" == charge["trace_id"]
    assert f"{ctx.span_id:016x}" == charge["span_id"]
    assert not s.is_recording()  # ended


def test_an_exception_is_recorded_and_re_raised(tracer: Any) -> None:
    with capture_spans() as mem, pytest.raises(KeyError):
        with tracer.start_as_current_span("lookup"):
            raise KeyError("pitch 42")
    (rec,) = mem.spans()
    assert rec["status"] == "error"
    assert [e["name"] for e in rec["events"]] == ["exception"]
    assert rec["events"][0]["attributes"]["exception.type"] == "KeyError"


def test_explicit_contexts_remote_parents_links_and_times(tracer: Any) -> None:
    remote = TraceContextTextMapPropagator().extract({"traceparent": REMOTE})
    with capture_spans() as mem:
        with pt.span("outer"):
            child = tracer.start_span("from-remote", context=remote, start_time=1_000_000_000)
            child.end(end_time=1_250_000_000)
            fresh = tracer.start_span("new-trace", context=otel_context.Context())  # explicit empty
            fresh.end()
            linked = tracer.start_span("linked", links=[Link(child.get_span_context(), {"why": "batch"})])
            linked.end()
    spans = by_name(mem.spans())
    remote_child = spans["from-remote"]
    assert remote_child["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert remote_child["parent_span_id"] == "00f067aa0ba902b7"
    assert remote_child["duration_ms"] == 250.0
    assert spans["new-trace"]["parent_span_id"] is None
    assert spans["new-trace"]["trace_id"] != spans["outer"]["trace_id"]
    assert spans["linked"]["parent_span_id"] == spans["outer"]["span_id"]  # implicit: pitchey's current
    assert spans["linked"]["links"][0]["span_id"] == remote_child["span_id"]


def test_opentelemetry_propagation_writes_the_bridged_span(tracer: Any) -> None:
    carrier: dict[str, str] = {}
    with capture_spans(), tracer.start_as_current_span("call") as s:
        TraceContextTextMapPropagator().inject(carrier)
        ours: dict[str, str] = {}
        pt.inject(ours)
    ctx = s.get_span_context()
    assert ctx.trace_flags.sampled
    assert carrier["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert ours["traceparent"].split("-")[1:3] == carrier["traceparent"].split("-")[1:3]


def test_unsampled_and_unconfigured_spans_are_non_recording(tracer: Any) -> None:
    pt.shutdown()
    with tracer.start_as_current_span("nothing") as s:
        assert not s.is_recording()
        s.set_attribute("ignored", 1)  # no error
    with capture_spans(sample_rate=0.0, keep_errors=False, slow_threshold_ms=None, rollups=None) as mem:
        with tracer.start_as_current_span("dropped") as s:
            assert not s.is_recording()
            assert not s.get_span_context().trace_flags.sampled
    assert mem.spans() == []


def test_install_sets_the_global_provider() -> None:
    code = (
        "import pitchey_trace as pt, opentelemetry.trace as t\n"
        "from pitchey_trace.exporters.memory import InMemoryExporter\n"
        "from pitchey_trace.otel import install, TracerProvider\n"
        "mem = InMemoryExporter(); pt.configure(exporters=[mem]); p = install()\n"
        "assert isinstance(t.get_tracer_provider(), TracerProvider)\n"
        "with t.get_tracer('lib').start_as_current_span('via-global'): pass\n"
        "pt.force_flush(); print([r['name'] for r in mem.spans()])\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['via-global']"


def test_a_remote_parent_attached_with_the_opentelemetry_api(tracer: Any) -> None:
    remote = TraceContextTextMapPropagator().extract({"traceparent": REMOTE})
    token = otel_context.attach(remote)
    try:
        with capture_spans() as mem, tracer.start_as_current_span("server"):
            with pt.span("inner"):
                pass
    finally:
        otel_context.detach(token)
    spans = by_name(mem.spans())
    assert spans["server"]["parent_span_id"] == "00f067aa0ba902b7"
    assert spans["inner"]["parent_span_id"] == spans["server"]["span_id"]
    assert spans["inner"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_spans_made_current_through_the_opentelemetry_context_are_pitchey_parents(tracer: Any) -> None:
    # Instrumentation often uses use_span / context.attach instead of start_as_current_span.
    remote = TraceContextTextMapPropagator().extract({"traceparent": REMOTE})
    with capture_spans() as mem:
        span = tracer.start_span("via-use-span")
        with otel_trace.use_span(span, end_on_exit=True):
            with pt.span("child-of-use-span"):
                pass
        assert pt.current_span() is pt.INVALID_SPAN  # restored on detach
        token = otel_context.attach(remote)
        try:
            with pt.span("child-of-remote"):
                pass
        finally:
            otel_context.detach(token)
        with pt.span("after"):
            pass
    spans = by_name(mem.spans())
    assert spans["child-of-use-span"]["parent_span_id"] == spans["via-use-span"]["span_id"]
    assert spans["child-of-remote"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert spans["child-of-remote"]["parent_span_id"] == "00f067aa0ba902b7"
    assert spans["after"]["parent_span_id"] is None


def test_nested_attach_and_detach_restore_both_current_spans(tracer: Any) -> None:
    with capture_spans():
        a, b = tracer.start_span("a"), tracer.start_span("b")
        ta = otel_context.attach(otel_trace.set_span_in_context(a))
        tb = otel_context.attach(otel_trace.set_span_in_context(b))
        assert pt.current_span() is b._span  # type: ignore[attr-defined]
        otel_context.detach(tb)
        assert pt.current_span() is a._span  # type: ignore[attr-defined]
        assert otel_trace.get_current_span() is a
        otel_context.detach(ta)
        assert pt.current_span() is pt.INVALID_SPAN
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
        a.end()
        b.end()


def test_the_provider_flushes_and_shuts_down_like_the_sdk_one() -> None:
    provider = TracerProvider()
    with capture_spans() as mem:
        with provider.get_tracer("lib").start_as_current_span("flushed"):
            pass
        assert provider.force_flush(timeout_millis=10_000) is True
        assert [r["name"] for r in mem.records if r.get("type") == "span"] == ["flushed"]
        provider.shutdown()
        assert not pt.is_configured()
        with provider.get_tracer("lib").start_as_current_span("after") as s:
            assert not s.is_recording()


def test_suppressed_tracing_stays_suppressed_under_opentelemetry_contexts(tracer: Any) -> None:
    # The SDK's own threads (exporters) and excluded paths run suppressed: an OpenTelemetry
    # context attached there, or a span started there, records nothing.
    remote = TraceContextTextMapPropagator().extract({"traceparent": REMOTE})
    with capture_spans() as mem:
        with pt.suppress_tracing():
            token = otel_context.attach(remote)
            try:
                with pt.span("inside-remote"), tracer.start_as_current_span("otel-inside") as s:
                    assert not s.is_recording()
            finally:
                otel_context.detach(token)
        with pt.span("after"):
            pass
    assert [r["name"] for r in mem.spans()] == ["after"]


def test_opentelemetry_sees_a_span_that_pt_span_made_current(tracer: Any) -> None:
    carrier: dict[str, str] = {}
    with capture_spans() as mem:
        with pt.span("made-by-pitchey") as ours:
            current = otel_trace.get_current_span()
            assert current.get_span_context().span_id == ours.span_id
            current.set_attribute("set.through.otel", True)  # lands on the pitchey span
            TraceContextTextMapPropagator().inject(carrier)
            child = tracer.start_span("explicitly-under-current", context=otel_context.get_current())
            child.end()
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    spans = by_name(mem.spans())
    assert spans["made-by-pitchey"]["attributes"]["set.through.otel"] is True
    assert carrier["traceparent"].split("-")[2] == spans["made-by-pitchey"]["span_id"]
    assert spans["explicitly-under-current"]["parent_span_id"] == spans["made-by-pitchey"]["span_id"]


# -- start_as_current_span: lazy, and usable as a decorator (as OpenTelemetry's API allows) --------
def test_start_as_current_span_starts_its_span_when_entered(tracer: Any) -> None:
    with capture_spans() as mem:
        later = tracer.start_as_current_span("later")
        with pt.span("parent"):
            with later as s:
                assert otel_trace.get_current_span() is s
        tracer.start_as_current_span("never entered")  # starts nothing
    spans = by_name(mem.spans())
    assert set(spans) == {"parent", "later"}
    assert spans["later"]["parent_span_id"] == spans["parent"]["span_id"]


def _decorated_calls(tracer: Any) -> tuple[list[Any], Any]:
    """The same decorator uses, run with our tracer and with the OpenTelemetry SDK's."""
    import asyncio
    import inspect

    @tracer.start_as_current_span("work")
    def work(x: int) -> int:
        """Doubles."""
        with tracer.start_as_current_span("inner"):
            return x * 2

    @tracer.start_as_current_span("fails")
    def fails() -> None:
        raise ValueError("bad")

    @tracer.start_as_current_span("quiet", record_exception=False)
    def quiet() -> None:
        raise ValueError("quiet")

    @tracer.start_as_current_span("no-status", set_status_on_exception=False)
    def no_status() -> None:
        raise ValueError("no status")

    @tracer.start_as_current_span("left-open", end_on_exit=False)
    def left_open() -> Any:
        return otel_trace.get_current_span()

    @tracer.start_as_current_span("async")
    async def coro(x: int) -> int:
        await asyncio.sleep(0.02)
        with tracer.start_as_current_span("async-inner"):
            return x + 1

    assert (work.__name__, work.__doc__) == ("work", "Doubles.")
    assert inspect.iscoroutinefunction(coro)
    assert coro.__name__ == "coro"
    results: list[Any] = [work(1), work(2)]  # a span per call
    for failing in (fails, quiet, no_status):
        with pytest.raises(ValueError) as raised:
            failing()
        results.append(str(raised.value))
    still_open = left_open()
    results.append(still_open.is_recording())
    results.append(asyncio.run(coro(1)))
    return results, still_open


def _shape(spans: list[tuple[str, Any, Any, str, list[str]]]) -> list[tuple[str, str | None, str, list[str]]]:
    names = {span_id: name for name, span_id, _, _, _ in spans}
    return sorted((name, names.get(parent), status, events) for name, _, parent, status, events in spans)


def test_start_as_current_span_decorates_like_the_opentelemetry_sdk(tracer: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    sdk_exporter = InMemorySpanExporter()
    sdk_provider = SdkTracerProvider()
    sdk_provider.add_span_processor(SimpleSpanProcessor(sdk_exporter))
    sdk_results, sdk_open = _decorated_calls(sdk_provider.get_tracer("billing"))
    sdk_open.end()
    sdk = _shape(
        [
            (
                s.name,
                s.context.span_id,
                s.parent.span_id if s.parent else None,
                s.status.status_code.name.lower(),
                [e.name for e in s.events],
            )
            for s in sdk_exporter.get_finished_spans()
        ]
    )

    with capture_spans() as mem, pt.span("request"):
        results, still_open = _decorated_calls(tracer)
        assert still_open.is_recording()  # end_on_exit=False
        still_open.end()
    records = mem.spans()
    ours = _shape(
        [
            (r["name"], r["span_id"], r["parent_span_id"], r["status"], [e["name"] for e in r["events"]])
            for r in records
        ]
    )
    ours.remove(("request", None, "unset", []))
    request = by_name(records)["request"]
    assert results == sdk_results == [2, 4, "bad", "quiet", "no status", True, 2]
    assert ours == [
        (name, "request" if parent is None else parent, status, events)
        for name, parent, status, events in sdk
    ]
    assert ("quiet", "request", "error", []) in ours  # (record_exception=False: no event)
    assert ("no-status", "request", "unset", ["exception"]) in ours
    assert [r["name"] for r in records].count("work") == 2
    assert by_name(records)["async"]["duration_ms"] >= 15  # timed to the coroutine's end
    assert {r["trace_id"] for r in records} == {request["trace_id"]}


def test_another_providers_current_span_stays_opentelemetrys_current_span(tracer: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    other = SdkTracerProvider().get_tracer("other")
    with capture_spans() as mem:
        with other.start_as_current_span("sdk span") as theirs:
            current = otel_trace.get_current_span()
            assert current is theirs
            assert current.is_recording()
            with pt.span("pitchey child") as ours:
                assert otel_trace.get_current_span().get_span_context().span_id == ours.span_id
    (child,) = mem.spans()
    assert child["parent_span_id"] == f"{theirs.get_span_context().span_id:016x}"
