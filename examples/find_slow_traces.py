"""Answers from an archive: the slow traces, why one was slow, latency percentiles, error groups.

    .venv/bin/python examples/find_slow_traces.py                          # records, then reads
    .venv/bin/python examples/find_slow_traces.py --archive var/demo-archive   # reads only

Without ``--archive`` it first records a small workload into a temporary archive (what
``LocalArchiveExporter`` writes in production): requests that load a pitch and then its
comments one query at a time (an N+1), a few slow renders and a few failed payments. Then it
asks :class:`pitchey_trace.analysis.Archive` what an engineer chasing a slow request asks:
which traces were slow, where the slowest spent its time, how each operation performs, and
which errors happen most.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pitchey_trace as pt
from pitchey_trace.analysis import Archive
from pitchey_trace.exporters import LocalArchiveExporter

PG = {"db.system.name": "postgresql"}


class PaymentDeclined(Exception):
    pass


def pitch_page(rng: random.Random, pitch_id: int) -> None:
    """One request: a server span, a query for the pitch, one query per comment, a render."""
    with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER, attributes={"http.route": "/pitches/{id}"}):
        with pt.span(
            "SELECT pitches",
            kind=pt.SpanKind.CLIENT,
            attributes={**PG, "db.query.text": "SELECT * FROM pitches WHERE id = %s"},
        ):
            time.sleep(0.001)
        for _ in range(6):  # the N+1: one query per comment instead of one for all
            with pt.span(
                "SELECT comments",
                kind=pt.SpanKind.CLIENT,
                attributes={**PG, "db.query.text": "SELECT * FROM comments WHERE id = %s"},
            ):
                time.sleep(0.0005)
        with pt.span("render"):
            time.sleep(0.03 if rng.random() < 0.2 else 0.002)  # now and then a slow render


def pay(order: int) -> None:
    with pt.span("POST /pay", kind=pt.SpanKind.SERVER) as server:
        try:
            with pt.span("charge card"):
                raise PaymentDeclined(f"card declined for order {order}")
        except PaymentDeclined as exc:
            server.record_exception(exc)
            server.set_status("error", "payment failed")


def record(archive: Path) -> None:
    rng = random.Random(7)
    pt.configure(service="pitch-api", exporters=[LocalArchiveExporter(archive)], sample_rate=1.0)
    for i in range(30):
        pitch_page(rng, i)
    for order in (1001, 1002, 1003):
        pay(order)
    pt.shutdown()


def report(archive: Archive) -> None:
    slow = archive.search(min_duration_ms=20, sort="duration", limit=5)
    print(f"traces with a span of 20 ms or more: {len(slow)} shown")
    for t in slow:
        print(f"  {t['duration_ms']:7.1f} ms  {t['trace_id']}  {t['name']}  ({t['span_count']} spans)")
    if slow:
        found = archive.analyze(slow[0]["trace_id"])
        assert found is not None
        b = found["bottleneck"]
        print(f"\nslowest trace {slow[0]['trace_id']}:")
        print(f"  critical path: {' > '.join(c['name'] for c in found['critical_path'])}")
        if b:
            print(
                f"  bottleneck: {b['name']} ({b['self_time_ms']:.1f} ms of its own, "
                f"{b['share']:.0%} of the trace)"
            )
        for g in found["n_plus_one"]:
            print(
                f"  N+1: {g['count']}x {g['statement']!r} under {g['parent_name']} ({g['total_ms']:.1f} ms)"
            )
        print(f"  database: {found['db']['queries']} queries, {found['db']['total_ms']:.1f} ms")
    print("\nlatency per operation:")
    for r in archive.performance()[:6]:
        print(
            f"  {r['operation']:<22} {r['count']:>4}  p50 {r['p50_ms']:6.2f}  p95 {r['p95_ms']:6.2f}"
            f"  p99 {r['p99_ms']:6.2f} ms  errors {r['error_rate']:.0%}  ({r['source']})"
        )
    print("\nerror groups:")
    for g in archive.errors(limit=5):
        print(f"  x{g['count']}  {g['name']}: {g['exception_type'] or '-'}: {g['message']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, help="an existing archive directory to read instead")
    args = ap.parse_args()
    if args.archive is not None:
        report(Archive(args.archive))
        return
    with tempfile.TemporaryDirectory() as tmp:
        record(Path(tmp))
        report(Archive(tmp))


if __name__ == "__main__":
    main()
