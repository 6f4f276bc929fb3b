"""Per-query cost of ``SELECT 1`` on a local PostgreSQL: plain psycopg, psycopg with
pitchey-trace's ``instrument(conn)``, and psycopg with opentelemetry-instrumentation-psycopg +
the OpenTelemetry SDK, all in the same process and run. ``--driver psycopg2`` does the same
with psycopg2 and opentelemetry-instrumentation-psycopg2.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_postgres.py                 # starts a throwaway server
    .venv/bin/python bench/bench_postgres.py --driver psycopg2
    PITCHEY_TEST_PG_DSN='host=... port=...' .venv/bin/python bench/bench_postgres.py   # TCP only

Each op is ``cur.execute("SELECT 1"); cur.fetchone()`` on one autocommit connection and one
reused cursor (one round trip; psycopg prepares the statement after 5 executions), exactly as
the reference anchor ../shared/bench-anchors/suite_postgres.py. Cases per transport (TCP
127.0.0.1 and unix socket):

  plain  psycopg alone
  pt     ``instrument(conn)`` with ``pitchey_trace.configure(exporters=[no-op exporter])`` and
         the defaults (sampling 1.0, sanitizer and rollups on, tail keeping on)
  otel   ``PsycopgInstrumentor().instrument_connection(conn, tracer_provider=tp)``, tp =
         TracerProvider (always on) + BatchSpanProcessor(no-op exporter), not installed globally
  pt_unsampled_tcp  ``sample_rate=0``: spans are record-only for the tail policy
  pt_no_sanitizer_rollups_tcp  diagnostic: export-side sanitizer and rollups off, to show how
         much of our cost is the pipeline worker (it shares the GIL with the querying thread)

Method: calibrated repeats (default >= 0.05 s, 30 rounds of 1; the anchor uses 0.2 s x 5 x 2:
``--min-time 0.2 --rounds 5 --repeats 2``), rounds interleave the cases in shuffled order,
medians; short interleaved windows pair the cases better on a shared, noisy VM.
After every repeat both SDKs are flushed outside the timed region so that one case's backlog
never runs inside another case's timing (their workers still run concurrently inside it).
"wall" is elapsed time per query (what a request feels); "cpu" is the process CPU time per
query including both SDKs' worker threads and the flush (what the tracing costs the machine),
which is far less disturbed by other load on a shared VM than wall time.
Target (issue 3): our added cost <= 1/5 of OpenTelemetry's added cost, never worse than 1/3.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.db import instrument  # noqa: E402
from tests.support.pgserver import postgres_server  # noqa: E402

_rep = itertools.repeat
Runner = Callable[[int], None]

EXTRA_SETUPS: dict[str, dict[str, Any]] = {
    "pt_unsampled_tcp": {"sample_rate": 0.0},
    "pt_no_sanitizer_rollups_tcp": {"sanitizer": None, "rollups": None},
}


class NoopExporter:
    """pitchey-trace exporter that drops every batch (counts records)."""

    name = "noop"

    def __init__(self) -> None:
        self.records = 0

    def export(self, batch: list[dict[str, Any]]) -> bool:
        self.records += len(batch)
        return True


def _select1(cur: Any) -> Runner:
    def run(n: int) -> None:
        ex, fo = cur.execute, cur.fetchone
        for _ in _rep(None, n):
            ex("SELECT 1")
            fo()

    return run


@contextmanager
def otel_provider() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class OtelNoop(SpanExporter):
        def __init__(self) -> None:
            self.exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    exporter = OtelNoop()
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(exporter))
    tp.noop_exporter = exporter  # type: ignore[attr-defined]
    try:
        yield tp
    finally:
        tp.force_flush()
        tp.shutdown()


def calibrate(run: Runner, after: Callable[[], None], min_time: float) -> int:
    n = 1
    while True:
        t0 = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t0
        after()
        if dt >= min_time:
            return n
        n = n * 10 if dt < min_time / 20 else n * 2


class Results:
    """Per case: every sample, and the median of each round (for paired ratios)."""

    def __init__(self, cases: list[str]) -> None:
        self.samples: dict[str, list[float]] = {name: [] for name in cases}
        self.rounds: dict[str, list[float]] = {name: [] for name in cases}
        self.cpu: dict[str, list[float]] = {name: [] for name in cases}

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def cpu_median(self, name: str) -> float:
        """Process CPU time (all threads: ours and the SDKs' workers) per op."""
        return statistics.median(self.cpu[name])

    def added_ratio_paired(self, ours: str, theirs: str, base: str) -> tuple[float, float, float]:
        """Median over rounds of (ours - base) / (theirs - base), with its min and max: robust
        to the machine's slow drift (other work on a shared VM)."""
        ratios = [
            (o - b) / (t - b)
            for o, t, b in zip(self.rounds[ours], self.rounds[theirs], self.rounds[base], strict=True)
            if t > b
        ]
        if not ratios:
            return float("nan"), float("nan"), float("nan")
        return statistics.median(ratios), min(ratios), max(ratios)


def measure(
    cases: dict[str, Runner], after: Callable[[], None], rounds: int, repeats: int, min_time: float
) -> Results:
    """Microseconds per op per case; rounds interleave the cases in shuffled order."""
    ns = {name: calibrate(run, after, min_time) for name, run in cases.items()}
    out = Results(list(cases))
    for r in range(rounds):
        order = list(cases)
        random.Random(r).shuffle(order)
        for name in order:
            this_round = []
            for _ in range(repeats):
                gc.collect()
                c0 = time.process_time()
                t0 = time.perf_counter()
                cases[name](ns[name])
                this_round.append((time.perf_counter() - t0) / ns[name] * 1e6)
                after()  # the workers' remaining work for this repeat counts as its CPU
                out.cpu[name].append((time.process_time() - c0) / ns[name] * 1e6)
            out.samples[name].extend(this_round)
            out.rounds[name].append(statistics.median(this_round))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=0.05)
    parser.add_argument(
        "--driver",
        choices=("psycopg", "psycopg2"),
        default="psycopg",
        help="psycopg 3 (default) or psycopg2, against opentelemetry-instrumentation-<driver>",
    )
    args = parser.parse_args()

    if args.driver == "psycopg2":
        import psycopg2
        from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor as Instrumentor

        def connect(dsn: str) -> Any:
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            return conn

        driver_version = psycopg2.__version__.split()[0]
    else:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor as Instrumentor

        def connect(dsn: str) -> Any:
            return psycopg.connect(dsn, autocommit=True)

        driver_version = psycopg.__version__

    def opened(conn: Any) -> Any:  # closed when the run ends (psycopg2 has no context manager for it)
        stack.callback(conn.close)
        return conn

    ours = NoopExporter()
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        tp = stack.enter_context(otel_provider())
        pt.configure(service="bench", exporters=[ours])
        stack.callback(pt.shutdown)
        transports = {"tcp": server.dsn}
        if server.dsn_unix:
            transports["unix"] = server.dsn_unix
        cases: dict[str, Runner] = {}
        for label, dsn in transports.items():
            plain = opened(connect(dsn))
            cases[f"plain_{label}"] = _select1(stack.enter_context(plain.cursor()))
            traced = instrument(opened(connect(dsn)))
            cases[f"pt_{label}"] = _select1(stack.enter_context(traced.cursor()))
            otel_conn = Instrumentor().instrument_connection(opened(connect(dsn)), tracer_provider=tp)
            cases[f"otel_{label}"] = _select1(stack.enter_context(otel_conn.cursor()))

        def after() -> None:
            pt.force_flush(30)
            tp.force_flush()

        results = measure(cases, after, args.rounds, args.repeats, args.min_time)

        # Other pitchey-trace set-ups need another configure(), so each gets its own short run
        # beside plain_tcp: record-only spans (head-unsampled, kept only if slow/error), and a
        # diagnostic without the export-side sanitizer and rollups (worker cost removed).
        extra: dict[str, tuple[float, float]] = {}
        extra_cpu: dict[str, float] = {}
        for label, kwargs in EXTRA_SETUPS.items() if args.driver == "psycopg" else ():
            pt.configure(service="bench", exporters=[ours], **kwargs)
            conn = instrument(opened(connect(server.dsn)))
            res = measure(
                {label: _select1(stack.enter_context(conn.cursor())), "plain_tcp": cases["plain_tcp"]},
                after,
                args.rounds,
                args.repeats,
                args.min_time,
            )
            extra[label] = (res.median(label), res.median("plain_tcp"))
            extra_cpu[label] = res.cpu_median(label) - res.cpu_median("plain_tcp")
        otel_spans = tp.noop_exporter.exported  # type: ignore[attr-defined]

    from importlib.metadata import version

    print(
        f"\n== PostgreSQL SELECT 1 per query (median us/op; CPython {sys.version.split()[0]}, "
        f"{args.driver} {driver_version}, libpq {psycopg.pq.version()}, "
        f"opentelemetry-instrumentation-{args.driver} "
        f"{version(f'opentelemetry-instrumentation-{args.driver}')}) =="
    )
    print(f"  {'case':<22} {'wall':>9}    {'cpu':>9}  (cpu: process CPU time, all threads, per query)")
    for name in cases:
        print(f"  {name:<22} {results.median(name):9.2f} us {results.cpu_median(name):9.2f} us")
    for label in transports:
        base = results.median(f"plain_{label}")
        added_pt = results.median(f"pt_{label}") - base
        added_otel = results.median(f"otel_{label}") - base
        paired, lo, hi = results.added_ratio_paired(f"pt_{label}", f"otel_{label}", f"plain_{label}")
        print(
            f"  {label}: added pitchey-trace {added_pt:+.2f} us ({added_pt / base:+.0%}), "
            f"added OpenTelemetry {added_otel:+.2f} us ({added_otel / base:+.0%})\n"
            f"  {label}: ratio of added costs {added_pt / added_otel:.3f} (of medians), "
            f"{paired:.3f} paired per round [{lo:.3f}..{hi:.3f}]  (target <= 0.200, limit 0.333)"
        )
        cpu_base = results.cpu_median(f"plain_{label}")
        cpu_pt = results.cpu_median(f"pt_{label}") - cpu_base
        cpu_otel = results.cpu_median(f"otel_{label}") - cpu_base
        print(
            f"  {label}: added CPU pitchey-trace {cpu_pt:+.2f} us, OpenTelemetry {cpu_otel:+.2f} us, "
            f"ratio {cpu_pt / cpu_otel:.3f}"
        )
    for label, (ours_us, plain_us) in extra.items():
        added = ours_us - plain_us
        print(
            f"  {label:<28} {ours_us:8.2f} us, added {added:+.2f} us (plain_tcp {plain_us:.2f} us), "
            f"added CPU {extra_cpu[label]:+.2f} us"
        )
    print(f"  records exported: pitchey-trace {ours.records}, OpenTelemetry spans {otel_spans}")


if __name__ == "__main__":
    main()
