"""Stress: many producer threads and asyncio tasks at once; every span must be accounted for.

    taskset -c 0 .venv/bin/python bench/stress_pipeline.py     # one CPU, as in a small container

8 threads each open 20,000 nested span pairs while 20,000 asyncio tasks open one span each.
The queue is bounded and never blocks a producer, so under this load (the producers hold the
GIL far longer than the one worker) most spans are dropped at the full queue - and counted. The
script checks that spans made == accepted + dropped.queue_full, that every accepted record
reached the exporter, and that no internal error happened; it exits non-zero otherwise.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pitchey_trace as pt

THREADS, PER_THREAD, TASKS = 8, 20_000, 20_000


class Count:
    """Counts what it receives (thread-safe)."""

    name = "count"

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def export(self, batch: Any) -> bool:
        with self.lock:
            self.n += len(batch)
        return True


def main() -> int:
    exporter = Count()
    pt.configure(service="stress", exporters=[exporter], max_queue_size=50_000)

    def work() -> None:
        for i in range(PER_THREAD):
            with pt.span("w", {"i": i}), pt.span("inner"):
                pass

    async def tasks() -> None:
        async def one() -> None:
            with pt.span("a"):
                await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(TASKS)))

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    flushed = pt.force_flush(60)
    elapsed = time.perf_counter() - started
    st = pt.stats()
    made = THREADS * PER_THREAD * 2 + TASKS
    accepted, dropped = st.get("accepted", 0), st.get("dropped.queue_full", 0)
    records = st.get("exported", 0)  # spans plus the rollup records
    print(f"{made:,} spans in {elapsed:.1f} s: {accepted:,} accepted, {dropped:,} dropped (queue full)")
    print(f"exporter received {exporter.n:,} records; internal errors: {st.get('internal_errors', 0)}")
    ok = flushed and made == accepted + dropped and exporter.n == records and not st.get("internal_errors")
    print("OK: every span accounted for" if ok else "FAILED")
    pt.shutdown(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
