"""Per-task cost of Celery tracing: ``instrument_celery()`` against OpenTelemetry's
``CeleryInstrumentor`` (+ SDK, BatchSpanProcessor, no-op exporter), same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_celery.py [--rounds 20]

Two operations, on a Celery app with the in-memory broker (no network: what is measured is
the tracing around Celery's own work):
  send  ``task.apply_async()``: publish one message (the producer side)
  run   ``task.apply()``: run one task eagerly (the worker side: prerun / postrun signals)
Both integrations work through Celery's process-wide signals, so the cases cannot share a
round: each round connects one integration, times it, and disconnects it, in shuffled order
(plain = neither). "signals" connects do-nothing receivers to the six signals our integration
uses: what Celery itself spends once anything listens (both integrations pay it). Figures are
medians over rounds of the time per operation.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import NoopExporter, otel_noop_provider  # noqa: E402  (bench/ is on sys.path)
from celery import Celery  # noqa: E402
from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.celery import _HANDLERS, instrument_celery, uninstrument_celery  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ops", type=int, default=2000, help="operations per case and round")
    args = parser.parse_args()

    app = Celery("bench", broker="memory://")
    app.conf.task_default_queue = "bench"

    @app.task
    def score(pitch_id: int) -> int:
        return pitch_id * 2

    ours = NoopExporter()
    pt.configure(service="bench", exporters=[ours], sample_rate=1.0)
    tp = otel_noop_provider()
    theirs = tp.noop_exporter
    otel = CeleryInstrumentor()

    def flush() -> None:
        pt.force_flush()
        tp.force_flush()

    def nothing(**_: Any) -> None:
        pass

    def listen() -> None:
        for signal, _handler in _HANDLERS:
            signal.connect(nothing, weak=False, dispatch_uid="bench.nothing")

    def unlisten() -> None:
        for signal, _handler in _HANDLERS:
            signal.disconnect(nothing, dispatch_uid="bench.nothing")

    switches: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "plain": (lambda: None, lambda: None),
        "signals": (listen, unlisten),
        "pt": (instrument_celery, uninstrument_celery),
        "otel": (lambda: otel.instrument(tracer_provider=tp), otel.uninstrument),
    }
    operations: dict[str, Callable[[], Any]] = {
        "send": lambda: score.apply_async((7,)),
        "run": lambda: score.apply((7,)),
    }
    results: dict[tuple[str, str], list[float]] = {(c, o): [] for c in switches for o in operations}
    with app.connection_for_write() as conn:  # one broker connection for every send
        operations["send"] = lambda: score.apply_async((7,), connection=conn)
        for round_no in range(args.rounds + 1):  # round 0 warms up
            order = list(switches)
            random.shuffle(order)
            for case in order:
                on, off = switches[case]
                on()
                for op_name, op in operations.items():
                    t0 = time.perf_counter()
                    for _ in range(args.ops):
                        op()
                    elapsed = time.perf_counter() - t0
                    if round_no:
                        results[(case, op_name)].append(elapsed / args.ops * 1e6)
                off()
                flush()
    tp.shutdown()
    pt.shutdown()

    import celery

    python = sys.version.split()[0]
    print(f"celery {celery.__version__}, CPython {python}, {args.rounds} rounds x {args.ops} ops")
    for op_name in operations:
        med = {c: statistics.median(results[(c, op_name)]) for c in switches}
        added_pt, added_otel = med["pt"] - med["plain"], med["otel"] - med["plain"]
        own_pt, own_otel = med["pt"] - med["signals"], med["otel"] - med["signals"]
        print(
            f"{op_name:5} plain {med['plain']:6.1f} us, signals {med['signals'] - med['plain']:+5.1f};"
            f" added: pitchey-trace {added_pt:+6.1f} us, OpenTelemetry {added_otel:+6.1f} us,"
            f" ratio {added_pt / added_otel:.3f}; over the signals' own cost: {own_pt:+6.1f} / "
            f"{own_otel:+6.1f} us, ratio {own_pt / own_otel:.3f}"
        )
    print(f"exported: pitchey-trace {ours.records} records, OpenTelemetry {theirs.spans} spans")


if __name__ == "__main__":
    main()
