"""Tiny benchmark harness shared by the scripts in bench/ (same method as the reference
anchors in ../shared/bench-anchors: calibrated repeats of >= 0.2 s, interleaved rounds, medians).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

Runner = Callable[[int], None]


def calibrate(run: Runner, min_time: float = 0.2) -> int:
    """Smallest power-of-two-ish n whose run lasts at least ``min_time`` seconds."""
    n = 1
    while True:
        t0 = time.perf_counter()
        run(n)
        if time.perf_counter() - t0 >= min_time:
            return n
        n *= 2


def measure(
    cases: dict[str, Runner], rounds: int = 5, repeats: int = 2, min_time: float = 0.2
) -> dict[str, float]:
    """Median microseconds per op for each case; rounds interleave the cases in shuffled order."""
    ns = {name: calibrate(run, min_time) for name, run in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        order = list(cases)
        random.Random(r).shuffle(order)
        for name in order:
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                cases[name](ns[name])
                samples[name].append((time.perf_counter() - t0) / ns[name] * 1e6)
    return {name: statistics.median(vals) for name, vals in samples.items()}


def report(title: str, results: dict[str, float], pairs: list[tuple[str, str, str]]) -> None:
    """Print figures and ratios ``(label, ours, theirs)`` as a small table."""
    print(f"\n== {title} (median us/op, CPython {sys.version.split()[0]}) ==")
    for name, us in results.items():
        print(f"  {name:<44} {us:9.3f} us")
    for label, ours, theirs in pairs:
        print(f"  ratio {label:<38} {results[ours] / results[theirs]:9.3f}  ({ours} / {theirs})")


class NoopExporter:
    """pitchey-trace exporter that drops every batch (counts records, so nothing is skipped)."""

    name = "noop"

    def __init__(self) -> None:
        self.records = 0

    def export(self, batch: Any) -> bool:
        self.records += len(batch)
        return True


def otel_noop_provider() -> Any:
    """OpenTelemetry's SDK TracerProvider with a BatchSpanProcessor feeding a counting no-op
    exporter (``provider.noop_exporter.spans``): the anchor's usual set-up."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class OtelNoop(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    exporter = OtelNoop()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.noop_exporter = exporter  # type: ignore[attr-defined]
    return provider


def report_added(wall: dict[str, list[float]], cpu: dict[str, list[float]], unit: str) -> None:
    """The table of a ``plain`` / ``pt`` / ``otel`` run (samples in microseconds per ``unit``):
    medians, what each case adds to ``plain``, and the ratio of our added cost to
    OpenTelemetry's, from wall and CPU time, with the per-round paired median."""
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{'case':8} {'wall us/' + unit:>14} {'added':>8} {'cpu us/' + unit:>13} {'added':>8}")
    for k in wall:
        added, cpu_added = med[k] - med["plain"], cmed[k] - cmed["plain"]
        print(f"{k:8} {med[k]:14.1f} {added:+8.1f} {cmed[k]:13.1f} {cpu_added:+8.1f}")
    rounds = zip(wall["pt"], wall["otel"], wall["plain"], strict=True)
    paired = [(p - b) / (o - b) for p, o, b in rounds if o > b]
    ratio = (med["pt"] - med["plain"]) / (med["otel"] - med["plain"])
    cpu_ratio = (cmed["pt"] - cmed["plain"]) / (cmed["otel"] - cmed["plain"])
    print(
        f"ratio of added costs (ours / OpenTelemetry's): wall {ratio:.3f}"
        f" (paired median {statistics.median(paired):.3f}), cpu {cpu_ratio:.3f}"
    )


def interleaved(
    cases: dict[str, Runner], flush: Callable[[], None], rounds: int, min_time: float
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Wall and process-CPU microseconds per op of each case, over ``rounds`` rounds in shuffled
    order, each run of ``n`` ops (calibrated on the ``plain`` case to last ``min_time``);
    ``flush()`` after each run, timed for CPU (the SDKs' export work) but not for wall."""
    n = 64
    while True:
        t0 = time.perf_counter()
        cases["plain"](n)
        if time.perf_counter() - t0 >= min_time:
            break
        n *= 2
    for run in cases.values():
        run(n)
    flush()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            cases[name](n)
            t1 = time.perf_counter()
            flush()
            c1 = time.process_time()
            wall[name].append((t1 - t0) / n * 1e6)
            cpu[name].append((c1 - c0) / n * 1e6)
    return wall, cpu, n


def switched(op: Callable[[], object], *switches: Callable[[], AbstractContextManager[object]]) -> Runner:
    """A runner calling ``op()`` n times inside every ``switch()`` (pitchey-trace's and
    OpenTelemetry's suppression, which turn the other instrumentation off)."""

    def run(n: int) -> None:
        with ExitStack() as stack:
            for switch in switches:
                stack.enter_context(switch())
            for _ in range(n):
                op()

    return run


def rounds_arguments(doc: str | None, rounds: int = 30, min_time: float = 0.05) -> argparse.Namespace:
    """``--rounds`` and ``--min-time`` of an ``interleaved`` benchmark (``doc`` as its help)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--min-time", type=float, default=min_time)
    return parser.parse_args()


@dataclass
class Sdks:
    """Both SDKs set up for a ``plain`` / ``pt`` / ``otel`` benchmark (see :func:`both_sdks`)."""

    ours: NoopExporter
    tp: Any  # OpenTelemetry's TracerProvider (otel_noop_provider)

    def flush(self) -> None:
        """Both SDKs' pending spans exported (``interleaved`` calls it after every run)."""
        import pitchey_trace as pt

        pt.force_flush()
        self.tp.force_flush()

    def exported(self) -> str:
        """How many records / spans each SDK exported (so nothing was skipped)."""
        spans = self.tp.noop_exporter.spans
        return f"exported: pitchey-trace {self.ours.records} records, OpenTelemetry {spans} spans"


@contextmanager
def both_sdks() -> Iterator[Sdks]:
    """pitchey-trace configured with a no-op exporter and its defaults (sampling 1.0,
    sanitizer, rollups, tail keeping) beside OpenTelemetry's SDK (BatchSpanProcessor, no-op
    exporter); both shut down afterwards."""
    import pitchey_trace as pt

    ours = NoopExporter()
    pt.configure(service="bench", exporters=[ours], sample_rate=1.0)
    sdks = Sdks(ours, otel_noop_provider())
    try:
        yield sdks
    finally:
        sdks.tp.shutdown()
        pt.shutdown()
