"""Per-query cost of ``SELECT 1`` over asyncpg on a local PostgreSQL: plain asyncpg, asyncpg with
pitchey-trace's ``instrument(conn)``, and asyncpg with opentelemetry-instrumentation-asyncpg +
the OpenTelemetry SDK, in the same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_asyncpg.py [--rounds 30] [--min-time 0.05]

Each op is ``await conn.fetchval("SELECT 1")`` on its own connection per case (asyncpg prepares
and caches the statement: one round trip per op), over TCP to 127.0.0.1. Cases:

  plain  asyncpg alone
  pt     ``instrument(conn)``, ``pitchey_trace.configure(exporters=[no-op exporter])`` with the
         defaults (sampling 1.0, sanitizer, rollups, tail keeping)
  otel   ``AsyncPGInstrumentor().instrument(tracer_provider=tp)``, tp = TracerProvider +
         BatchSpanProcessor(no-op exporter)

OpenTelemetry's instrumentor patches asyncpg's ``Connection`` class for every connection, so
the plain and pt cases run inside OpenTelemetry's ``suppress_instrumentation()``: its wrapper
then only checks the flag and calls through. That check is in the baseline too, so
OpenTelemetry's added cost is, if anything, under-stated (a bias against us).
Rounds interleave the cases in shuffled order; both SDKs are flushed after every repeat,
outside the timed region. "cpu" is process CPU time per query (all threads).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from _harness import NoopExporter, otel_noop_provider, report_added  # noqa: E402  (bench/ is on sys.path)
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: E402
from opentelemetry.instrumentation.utils import suppress_instrumentation  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.db import instrument  # noqa: E402
from tests.support.pgserver import asyncpg_args, postgres_server  # noqa: E402

Runner = Callable[[int], Awaitable[None]]


def runner(conn: Any, suppressed: bool) -> Runner:
    async def run(n: int) -> None:
        fetchval = conn.fetchval
        if suppressed:
            with suppress_instrumentation():
                for _ in range(n):
                    await fetchval("SELECT 1")
        else:
            for _ in range(n):
                await fetchval("SELECT 1")

    return run


async def main_async(args: argparse.Namespace, dsn: str) -> None:
    ours = NoopExporter()
    pt.configure(service="bench", exporters=[ours], sample_rate=1.0)
    tp = otel_noop_provider()
    theirs = tp.noop_exporter
    AsyncPGInstrumentor().instrument(tracer_provider=tp)
    conns = {name: await asyncpg.connect(**asyncpg_args(dsn)) for name in ("plain", "pt", "otel")}
    instrument(conns["pt"])
    cases = {
        "plain": runner(conns["plain"], True),
        "pt": runner(conns["pt"], True),
        "otel": runner(conns["otel"], False),
    }

    def flush() -> None:
        pt.force_flush()
        tp.force_flush()

    # calibrate on the plain case, then warm every case
    n = 64
    while True:
        t0 = time.perf_counter()
        await cases["plain"](n)
        if time.perf_counter() - t0 >= args.min_time:
            break
        n *= 2
    for run in cases.values():
        await run(n)
    flush()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        order = list(cases)
        random.shuffle(order)
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            await cases[name](n)
            t1 = time.perf_counter()
            flush()
            c1 = time.process_time()
            wall[name].append((t1 - t0) / n * 1e6)
            cpu[name].append((c1 - c0) / n * 1e6)
    for conn in conns.values():
        await conn.close()
    AsyncPGInstrumentor().uninstrument()
    tp.shutdown()
    pt.shutdown()

    print(
        f"asyncpg {asyncpg.__version__}, CPython {sys.version.split()[0]}, {args.rounds} rounds x {n} queries"
    )
    report_added(wall, cpu, "query")
    print(f"exported: pitchey-trace {ours.records} records, OpenTelemetry {theirs.spans} spans")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--min-time", type=float, default=0.05)
    args = parser.parse_args()
    with postgres_server() as server:
        asyncio.run(main_async(args, server.dsn))


if __name__ == "__main__":
    main()
