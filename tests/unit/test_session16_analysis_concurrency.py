"""Concurrent reads in the analysis engine, without a server: ``S3Source``'s ``concurrency``
option, ``MultiSource``'s, and the engine's read-ahead over an in-memory source that says how
many reads it takes at once (order kept, a bounded window, a rewritten object, workers that
cannot start)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, MultiSource, ObjectInfo, S3Source, _engine
from pitchey_trace.logpush_config import DatasetConfig, LogpushConfig

SEC = 1_000_000_000
T0 = 1_796_000_000 * SEC


class _Config:
    max_pool_connections = 10


class _Meta:
    config = _Config()


class FakeClient:
    meta = _Meta()


class NoMetaClient:
    pass


@pytest.mark.parametrize("bad", [0, -1, 65, True, 2.0, "8", None])
def test_s3_concurrency_must_be_a_whole_number_from_1_to_64(bad: Any) -> None:
    with pytest.raises(ValueError, match="concurrency must be an int from 1 to 64"):
        S3Source("b", client=NoMetaClient(), concurrency=bad)


def test_s3_concurrency_default_and_the_client_pool() -> None:
    assert S3Source("b", client=NoMetaClient()).concurrency == 8
    assert S3Source("b", client=NoMetaClient(), concurrency=1).concurrency == 1
    assert S3Source("b", client=NoMetaClient(), concurrency=64).concurrency == 64
    # never more reads than the client has pooled connections (botocore's default: 10)
    assert S3Source("b", client=FakeClient(), concurrency=32).concurrency == 10
    assert S3Source("b", client=FakeClient(), concurrency=4).concurrency == 4


def test_s3_concurrency_from_config() -> None:
    cfg = LogpushConfig(datasets={"traces": DatasetConfig("traces", "bkt", "traces", None)})
    assert S3Source.from_config(cfg, client=NoMetaClient()).concurrency == 8
    assert S3Source.from_config(cfg, client=NoMetaClient(), concurrency=3).concurrency == 3
    with pytest.raises(ValueError):
        S3Source.from_config(cfg, client=NoMetaClient(), concurrency=0)


def test_s3_client_made_by_the_source_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pitchey-trace-tests")
    src = S3Source("b", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    assert src.concurrency == 8
    assert src.client.meta.config.max_pool_connections >= 8


def test_multi_source_takes_the_most_of_its_sources(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    local = str(tmp_path)
    s3 = S3Source("b", client=NoMetaClient(), concurrency=5)
    assert MultiSource([Archive(local)._source]).concurrency == 1  # type: ignore[list-item]
    assert MultiSource([Archive(local)._source, s3]).concurrency == 5  # type: ignore[list-item]


# -- the engine's read-ahead over an in-memory source ----------------------------------------------
def _span(i: int, j: int, trace: int, version: int) -> dict[str, Any]:
    start = T0 + i * 60 * SEC + j
    return {
        "type": "span",
        "trace_id": f"{trace:032x}",
        "span_id": f"{trace:08x}{j:08x}",
        "parent_span_id": None,
        "name": "op",
        "kind": "server",
        "service": "svc",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 1000,
        "status": "ok",
        "attributes": {"version": version},
        "events": [],
        "links": [],
        "resource": {},
    }


def _stamp(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ns // SEC))


class Memory:
    """Objects in memory; ``delay``: seconds each read takes; counts what is in flight."""

    datasets = ("traces",)

    def __init__(self, count: int, concurrency: int, delay: float = 0.0) -> None:
        self.concurrency = concurrency
        self.delay = delay
        self.objects_: dict[str, tuple[ObjectInfo, bytes]] = {}
        for i in range(count):
            self.put(
                i,
                [_span(i, j, i + 1, 0) for j in range(2)] + ([_span(i, 0, i, 1)] if i % 3 == 0 and i else []),
            )
        self.fail: dict[str, BaseException] = {}
        self.reads: list[str] = []
        self.in_flight = 0
        self.most = 0
        self.lock = threading.Lock()

    def put(self, i: int, spans: list[dict[str, Any]], version: str = "v1") -> None:
        t = T0 + i * 60 * SEC
        key = f"traces/{_stamp(t)}_{_stamp(t + SEC)}_{i:08x}.log.gz"
        data = gzip.compress(b"".join(json.dumps(s).encode() + b"\n" for s in spans))
        info = ObjectInfo("traces", key, len(data), version, t, t + 2 * SEC - 1)
        self.objects_[key] = (info, data)

    def describe(self) -> str:
        return "memory"

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        return [info for info, _ in self.objects_.values()]

    def read(self, info: ObjectInfo) -> bytes:
        with self.lock:
            self.reads.append(info.key)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if info.key in self.fail:
                raise self.fail[info.key]
            try:
                return self.objects_[info.key][1]
            except KeyError:
                raise FileNotFoundError(info.key) from None
        finally:
            with self.lock:
                self.in_flight -= 1


def _kept(archive: Archive) -> list[Any]:
    return list(archive._index.spans.items())


@pytest.mark.parametrize("max_spans", [None, 30, 4])
def test_read_ahead_keeps_the_order_of_one_at_a_time(max_spans: int | None) -> None:
    one, many = Memory(60, 1), Memory(60, 6, delay=0.002)
    a1, a6 = Archive(one, max_spans=max_spans), Archive(many, max_spans=max_spans)  # type: ignore[arg-type]
    assert a6.search(limit=1000) == a1.search(limit=1000)
    assert _kept(a6) == _kept(a1)
    assert a6.read_stats == a1.read_stats
    assert one.most == 1
    assert 1 < many.most <= 6
    if max_spans is not None:
        assert len(many.reads) <= a6.read_stats["objects"] + 6


def test_read_ahead_holds_at_most_the_window() -> None:
    src = Memory(40, 3, delay=0.005)
    archive = Archive(src)  # type: ignore[arg-type]
    assert len(archive.search(limit=1000)) == 40
    assert src.most == 3
    assert sorted(src.reads) == sorted(src.objects_)  # each read once


def test_failures_in_workers_are_counted_or_skipped_as_one_at_a_time() -> None:
    results = []
    for concurrency in (1, 4):
        src = Memory(30, concurrency, delay=0.001)
        keys = sorted(src.objects_)
        src.fail = {
            keys[2]: OSError("reset"),
            keys[9]: RuntimeError("bug"),
            keys[10]: FileNotFoundError("gone"),
        }
        archive = Archive(src)  # type: ignore[arg-type]
        results.append((archive.search(limit=1000), _kept(archive), dict(archive.read_stats)))
    assert results[0] == results[1]
    assert results[1][2]["unreadable_objects"] == 2
    assert results[1][2]["objects"] == 27


def test_an_object_rewritten_in_place_starts_over_with_read_ahead() -> None:
    for concurrency in (1, 4):
        src = Memory(20, concurrency, delay=0.001)
        archive = Archive(src)  # type: ignore[arg-type]
        assert len(archive.search(limit=100)) == 20
        src.put(4, [_span(4, 0, 999, 7)], version="v2")  # object 4 now holds another trace
        archive.refresh()
        found = {t["trace_id"] for t in archive.search(limit=100)}
        assert f"{999:032x}" in found
        assert f"{5:032x}" not in found
        assert archive.read_stats["objects"] == 20


def test_workers_that_cannot_start_fall_back_to_reading_in_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", refuse)
    src = Memory(10, 4)
    archive = Archive(src)  # type: ignore[arg-type]
    assert len(archive.search(limit=100)) == 10
    assert archive.read_stats["objects"] == 10


def test_an_error_in_the_loop_cancels_the_reads_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    src = Memory(50, 4, delay=0.002)
    calls = {"n": 0}
    real = _engine.decode_object

    def decode(data: bytes) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError
        return real(data)

    monkeypatch.setattr(_engine, "decode_object", decode)
    archive = Archive(src)  # type: ignore[arg-type]
    with pytest.raises(MemoryError):
        archive.search(limit=10)
    time.sleep(0.05)
    assert len(src.reads) <= 3 + 4  # nothing read past the window once the loop stopped
    monkeypatch.setattr(_engine, "decode_object", real)
    assert len(archive.search(limit=100)) == 50


def test_an_object_listed_twice_is_read_once() -> None:
    """Two datasets whose prefixes overlap (``logs`` and ``logs/traces``) list the same object
    twice: read once, as one at a time does."""
    for concurrency in (1, 4):
        src = Memory(12, concurrency, delay=0.001)
        src.datasets = ("traces", "logs")  # type: ignore[assignment]
        archive = Archive(src)  # type: ignore[arg-type]
        assert len(archive.search(limit=100)) == 12
        assert sorted(src.reads) == sorted(src.objects_)
        assert archive.read_stats["objects"] == 12


@pytest.mark.parametrize("concurrency", [3, 10, 24, 64])
def test_a_client_made_here_has_a_connection_per_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, concurrency: int
) -> None:
    """(botocore keeps 10 connections unless told: a client made for 24 downloads gets 24.)"""
    from pitchey_trace import logpush_config as lc

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pitchey-trace-tests")
    src = S3Source("b", endpoint_url="http://127.0.0.1:9", region="us-east-1", concurrency=concurrency)
    assert src.concurrency == concurrency
    assert src.client.meta.config.max_pool_connections == max(10, concurrency)
    cfg = lc.LogpushConfig(
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        datasets={
            "traces": lc.DatasetConfig(name="traces", bucket="b", prefix="traces/", retention_days=None)
        },
    )
    from_cfg = S3Source.from_config(cfg, concurrency=concurrency)
    assert from_cfg.concurrency == concurrency
    assert from_cfg.client.meta.config.max_pool_connections == max(10, concurrency)
