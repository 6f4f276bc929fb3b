"""pitchey_trace.otel, session 18 review: a context detached in another thread or task (which
OpenTelemetry refuses and logs) leaves pitchey's current span alone, in step with
OpenTelemetry's; install() is idempotent and says when another provider is global."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

import pitchey_trace as pt
from pitchey_trace.otel import TracerProvider
from pitchey_trace.testing import capture_spans

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracer() -> Any:
    return TracerProvider().get_tracer("session18")


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records}


def test_a_detach_in_another_thread_leaves_that_threads_span_current(
    tracer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    with capture_spans() as mem:
        token = otel_context.attach(otel_trace.set_span_in_context(tracer.start_span("attached")))

        def other_thread() -> None:
            with pt.span("thread-work"):
                otel_context.detach(token)  # another thread's token: OpenTelemetry logs it, no more
                seen.append(otel_trace.get_current_span().get_span_context().span_id)
                with pt.span("pt-child"):
                    pass
                with tracer.start_as_current_span("otel-child"):
                    pass

        with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
        otel_context.detach(token)
    spans = by_name(mem.spans())
    work = spans["thread-work"]
    assert spans["pt-child"]["parent_span_id"] == work["span_id"]
    assert spans["otel-child"]["parent_span_id"] == work["span_id"]
    assert seen == [int(work["span_id"], 16)]  # both APIs agreed on the current span
    assert "Failed to detach context" in caplog.text  # (OpenTelemetry's own report)


def test_a_detach_in_another_task_leaves_both_apis_on_the_same_span(tracer: Any) -> None:
    found: dict[str, Any] = {}

    async def main() -> None:
        with pt.span("outer"):
            attached = tracer.start_span("attached")
            token = otel_context.attach(otel_trace.set_span_in_context(attached))

            async def task() -> None:
                otel_context.detach(token)  # made in the parent task's context: refused
                found["otel"] = otel_trace.get_current_span().get_span_context().span_id
                with pt.span("in-task"):
                    pass

            await asyncio.create_task(task())
            otel_context.detach(token)
            attached.end()

    with capture_spans() as mem:
        asyncio.run(main())
    spans = by_name(mem.spans())
    attached_id = spans["attached"]["span_id"]
    assert found["otel"] == int(attached_id, 16)  # OpenTelemetry's current span did not change
    assert spans["in-task"]["parent_span_id"] == attached_id  # nor did pitchey's
    assert spans["in-task"]["trace_id"] == spans["outer"]["trace_id"]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter, after ``import logging, opentelemetry.trace as t``
    and warnings logged to stderr."""
    prelude = "import logging, opentelemetry.trace as t\nlogging.basicConfig(level=logging.WARNING)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, timeout=60
    )


def test_install_twice_returns_the_global_provider_without_a_warning() -> None:
    out = _python(
        "from pitchey_trace.otel import install\n"
        "first = install(); second = install()\n"
        "print(first is second, t.get_tracer_provider() is first)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    assert "Overriding" not in out.stderr
    assert "WARNING" not in out.stderr


def test_install_says_when_the_application_set_another_provider_first() -> None:
    out = _python(
        "from opentelemetry.sdk.trace import TracerProvider as SDK\n"
        "from pitchey_trace.otel import install, TracerProvider\n"
        "t.set_tracer_provider(SDK())\n"
        "p = install(); install()\n"
        "print(isinstance(p, TracerProvider), type(t.get_tracer_provider()).__module__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "opentelemetry.sdk.trace"]
    warnings = [line for line in out.stderr.splitlines() if "pitchey_trace.otel.install()" in line]
    assert len(warnings) == 1  # (once)
    assert "opentelemetry.sdk.trace.TracerProvider" in warnings[0]
    assert "go there, not to pitchey-trace" in warnings[0]
