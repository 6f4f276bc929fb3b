"""Concurrency: threads, asyncio tasks and executors build correct trees at the same time."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans


def _check_trees(records: list[dict[str, Any]], roots: int, per_root: int) -> None:
    by_id = {r["span_id"]: r for r in records}
    assert len(by_id) == len(records) == roots * per_root
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        traces[r["trace_id"]].append(r)
        if r["parent_span_id"] is None:
            assert r["name"].startswith("root")
            continue
        parent = by_id[r["parent_span_id"]]
        assert parent["trace_id"] == r["trace_id"]
        # names encode the expected parent: "mid-<worker>" under "root-<worker>", etc.
        assert parent["attributes"]["worker"] == r["attributes"]["worker"]
        assert parent["attributes"]["depth"] == r["attributes"]["depth"] - 1
    assert len(traces) == roots
    assert all(len(spans) == per_root for spans in traces.values())


def test_sixteen_threads_build_nested_spans() -> None:
    barrier = threading.Barrier(16)

    def work(worker: int) -> None:
        barrier.wait()
        for _ in range(50):
            with pt.span("root", attributes={"worker": worker, "depth": 0}):
                with pt.span("mid", attributes={"worker": worker, "depth": 1}):
                    with pt.span("leaf", attributes={"worker": worker, "depth": 2}):
                        pass
                with pt.span("mid2", attributes={"worker": worker, "depth": 1}):
                    pass

    with capture_spans(rollups=None) as mem:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    _check_trees(mem.spans(), roots=16 * 50, per_root=4)
    assert pt.stats()["dropped"] == 0


def test_two_thousand_asyncio_tasks() -> None:
    async def task(worker: int) -> None:
        with pt.span("root", attributes={"worker": worker, "depth": 0}):
            await asyncio.sleep(0)
            with pt.span("mid", attributes={"worker": worker, "depth": 1}):
                await asyncio.sleep(0)
                with pt.span("leaf", attributes={"worker": worker, "depth": 2}):
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task(w) for w in range(2_000)))

    with capture_spans(rollups=None) as mem:
        asyncio.run(main())
    _check_trees(mem.spans(), roots=2_000, per_root=3)


def test_gathered_children_are_siblings_under_the_caller() -> None:
    async def child(i: int) -> None:
        with pt.span(f"child{i}"):
            await asyncio.sleep(0.001)

    async def main() -> str:
        with pt.span("parent") as p:
            await asyncio.gather(*(child(i) for i in range(5)))
        return p.span_id_hex

    with capture_spans(rollups=None) as mem:
        parent_id = asyncio.run(main())
    kids = [r for r in mem.spans() if r["name"].startswith("child")]
    assert len(kids) == 5
    assert all(r["parent_span_id"] == parent_id for r in kids)


def test_executor_and_wrapped_thread_inherit_context() -> None:
    def work(name: str) -> None:
        with pt.span(name):
            pass

    with capture_spans(rollups=None) as mem:
        with pt.span("parent") as p:
            with pt.ContextThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(work, [f"pool{i}" for i in range(8)]))
            t = threading.Thread(target=pt.wrap_context(work), args=("thread",))
            t.start()
            t.join()
        # a plain thread does not inherit: it starts its own trace
        t2 = threading.Thread(target=work, args=("orphan",))
        with pt.span("other"):
            t2.start()
            t2.join()
    recs = {r["name"]: r for r in mem.spans()}
    for name in [f"pool{i}" for i in range(8)] + ["thread"]:
        assert recs[name]["parent_span_id"] == p.span_id_hex
    assert recs["orphan"]["parent_span_id"] is None
