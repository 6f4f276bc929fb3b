"""MultiSource reads each source no more at once than that source's own ``concurrency``."""

from __future__ import annotations

import gzip
import json
import threading
import time
from typing import Any

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis._reader import MultiSource, ObjectInfo


def _blob(i: int) -> bytes:
    rec = {
        "schema": 1,
        "type": "span",
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": "x",
        "kind": "server",
        "service": "s",
        "environment": "e",
        "start_time_unix_nano": 10**18 + i,
        "end_time_unix_nano": 10**18 + i + 1000,
        "duration_ms": 0.001,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {},
    }
    return gzip.compress((json.dumps(rec) + "\n").encode())


class _Source:
    """A custom source that counts how many of its reads are in flight at once."""

    datasets = ("traces",)

    def __init__(self, tag: str, n: int, offset: int, concurrency: int | None = None) -> None:
        self.tag, self.n, self.offset = tag, n, offset
        if concurrency is not None:
            self.concurrency = concurrency
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return self.tag

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        return [
            ObjectInfo(
                "traces",
                f"traces/20250101/20250101T0000{i:02d}Z_20250101T0000{i:02d}Z_{self.tag}{i}.log.gz",
                1,
                "v",
                None,
                None,
            )
            for i in range(self.n)
        ]

    def read(self, info: ObjectInfo) -> bytes:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.01)
        with self.lock:
            self.inside -= 1
        return _blob(self.offset + int(info.key.rpartition(self.tag)[2].partition(".")[0]))


def _read_all(*sources: Any) -> Archive:
    archive = Archive(MultiSource(sources))
    archive.search()
    return archive


def test_a_source_without_concurrency_is_read_one_at_a_time_beside_a_concurrent_one() -> None:
    plain = _Source("plain", 12, 0)  # says nothing: one read at a time (as documented)
    fast = _Source("fast", 12, 100, concurrency=4)
    archive = _read_all(plain, fast)
    assert plain.most == 1
    assert 1 < fast.most <= 4  # (still read concurrently)
    assert len(archive.search(limit=100)) == 24  # every object read, each span once


def test_each_source_keeps_its_own_limit() -> None:
    two = _Source("two", 10, 0, concurrency=2)
    eight = _Source("eight", 10, 100, concurrency=8)
    _read_all(two, eight)
    assert two.most <= 2
    assert eight.most > 2
