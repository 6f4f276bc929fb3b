"""Diagnostic: what a background thread waiting for the GIL costs a busy application thread.

    .venv/bin/python bench/diag_gil_wait.py                  # several CPUs
    taskset -c 0 .venv/bin/python bench/diag_gil_wait.py     # the same on one CPU

An eager Celery task (its id comes from ``os.urandom``, which releases the GIL) is run 3,000
times per round, with a ``task_prerun`` receiver that does:
  nothing  no tracing work (the baseline)
  span     start and end one pitchey-trace span (the pipeline thread then has work)
  sink     the same, but finished spans are dropped at the hand-over, so the pipeline and
           exporter threads never run
Printed: the best round's time per task, the application thread's CPU time per task, and the
context switches of the SDK's threads per task (from /proc). See docs/performance.md
("Background threads and the GIL on several CPUs").
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery, signals  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace._span import SpanKind  # noqa: E402
from pitchey_trace._tracer import get_tracer  # noqa: E402

RUNS = 3000


class NoopExporter:
    def export(self, batch: Any) -> bool:
        return True


def sdk_context_switches() -> int:
    """Context switches (voluntary and not) of the SDK's threads, from /proc."""
    import threading

    total = 0
    for thread in threading.enumerate():
        if not thread.name.startswith("pitchey-trace") or thread.native_id is None:
            continue
        try:
            status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)
    return total


def measure(mode: str) -> tuple[float, float, float]:
    app = Celery("diag", broker="memory://")

    @app.task
    def score(x: int) -> int:
        return x

    pt.configure(service="diag", exporters=[NoopExporter()], sample_rate=1.0)
    tracer = get_tracer()
    if mode == "sink":
        pipeline = tracer.pipeline
        assert pipeline is not None
        dropped: deque[Any] = deque(maxlen=1)
        pipeline._hot = (dropped.append, dropped, 1 << 62, 1 << 62, pipeline.wake.set)

    def receiver(**_: Any) -> None:
        if mode != "nothing":
            tracer.start_span("run score", None, SpanKind.CONSUMER).end()

    signals.task_prerun.connect(receiver, weak=False, dispatch_uid="diag")
    try:
        for _ in range(1000):
            score.apply((7,))
        best = (float("inf"), 0.0, 0.0)
        for _ in range(5):
            switches0 = sdk_context_switches()
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(RUNS):
                score.apply((7,))
            wall = (time.perf_counter() - t0) / RUNS * 1e6
            cpu = (time.thread_time() - c0) / RUNS * 1e6
            switches = (sdk_context_switches() - switches0) / RUNS
            best = min(best, (wall, cpu, switches))
        return best
    finally:
        signals.task_prerun.disconnect(receiver, dispatch_uid="diag")
        pt.shutdown()


def main() -> None:
    import os

    cpus = len(os.sched_getaffinity(0))
    print(f"CPython {sys.version.split()[0]}, {cpus} CPU(s) usable, {RUNS} eager tasks per round, best of 5")
    for mode in ("nothing", "span", "sink"):
        wall, cpu, switches = measure(mode)
        line = f"  {mode:8} {wall:6.1f} us/task  app thread CPU {cpu:6.1f} us/task"
        print(f"{line}  SDK thread switches {switches:5.2f}/task")


if __name__ == "__main__":
    main()
