"""pitchey_trace.threads: the current span carried into thread pools and threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.threads import instrument_threads, uninstrument_threads


@pytest.fixture
def carried() -> Iterator[None]:
    instrument_threads()
    instrument_threads()  # idempotent
    yield
    uninstrument_threads()


def work(name: str) -> str:
    with pt.span(name):
        return name


class Worker(threading.Thread):
    """A subclass with its own run (no target)."""

    def run(self) -> None:
        work("subclass run")


def test_pools_and_threads_run_in_the_submitters_span(carried: None) -> None:
    with capture_spans() as mem:
        with pt.span("request") as request, ThreadPoolExecutor(2) as pool:
            assert pool.submit(work, "submitted").result() == "submitted"
            assert list(pool.map(work, ["mapped 1", "mapped 2"])) == ["mapped 1", "mapped 2"]
            for t in (threading.Thread(target=work, args=("thread target",)), Worker()):
                t.start()
                t.join()

            async def in_executor() -> str:
                return await asyncio.get_running_loop().run_in_executor(pool, work, "run_in_executor")

            assert asyncio.run(in_executor()) == "run_in_executor"
    spans = {s["name"]: s for s in mem.spans()}
    root = spans.pop("request")
    assert set(spans) == {
        "submitted",
        "mapped 1",
        "mapped 2",
        "thread target",
        "subclass run",
        "run_in_executor",
    }
    for name, span in spans.items():
        assert span["parent_span_id"] == f"{request.span_id:016x}", name
        assert span["trace_id"] == root["trace_id"], name


def test_nothing_changes_without_a_current_span_or_after_uninstrument(carried: None) -> None:
    seen: list[Any] = []
    with capture_spans() as mem, ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: seen.append(pt.current_span())).result()
        with pt.span("request"):
            uninstrument_threads()
            pool.submit(work, "not carried").result()
            instrument_threads()
            with pt.suppress_tracing():  # a suppression is carried too
                pool.submit(work, "suppressed").result()
    assert not seen[0].is_recording
    spans = {s["name"]: s for s in mem.spans()}
    assert set(spans) == {"request", "not carried"}
    assert spans["not carried"]["parent_span_id"] is None  # a root of its own, as before


def test_the_context_is_a_copy_and_the_sdks_threads_stay_suppressed(carried: None) -> None:
    with capture_spans() as mem:
        with pt.span("request"), pt.set_baggage(tenant="t1"):
            got: list[Any] = []

            def inner() -> None:
                pt.set_baggage(tenant="changed-in-thread").__enter__()
                got.append(pt.get_baggage("tenant"))

            t = threading.Thread(target=inner)
            t.start()
            t.join()
            assert pt.get_baggage("tenant") == "t1"  # the thread changed its copy only
            sdk = threading.Thread(target=lambda: got.append(pt.current_span()), name="pitchey-trace-test")
            sdk.start()
            sdk.join()
    assert got[0] == "changed-in-thread"
    assert got[1] is not None
    assert not got[1].is_recording
    assert [s["name"] for s in mem.spans()] == ["request"]


def test_context_pools_timers_and_other_contextvars(carried: None) -> None:
    import contextvars

    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")
    seen: list[str] = []
    with capture_spans() as mem:
        with pt.span("request") as request, pt.ContextThreadPoolExecutor(1) as pool:
            tenant.set("t-9")  # the application's own context variables travel too
            pool.submit(work, "context pool").result()  # (copied twice: still one parent)
            timer = threading.Timer(0.01, lambda: (seen.append(tenant.get()), work("timer")))
            timer.start()
            timer.join()
    spans = {s["name"]: s for s in mem.spans()}
    assert spans["context pool"]["parent_span_id"] == f"{request.span_id:016x}"
    assert spans["timer"]["parent_span_id"] == f"{request.span_id:016x}"
    assert seen == ["t-9"]
