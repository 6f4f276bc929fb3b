"""The archive spool keeps closed batches compressed: the exact gzip body to upload, written once
by the exporter's thread (temp file, fsync, rename), counted in the cap by its compressed size,
and recovered beside raw files left by older versions or by a crash."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exporters import _archive
from pitchey_trace.exporters._archive import ArchiveExporter, encode_line, gzip_ndjson
from pitchey_trace.exporters._http import RetryPolicy
from tests.support.archive import make_archive_exporter

GZIP_MAGIC = b"\x1f\x8b"
DEAD = "4242-deadbeef"


class Store:
    """Records puts (key -> body); fails while ``fail`` is set."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.fail = False

    def put(self, dataset: str, key: str, body: bytes) -> None:
        self.calls.append(key)
        if self.fail:
            raise ConnectionError("storage down")
        self.objects[key] = body

    def reset(self) -> None:
        pass

    def seqs(self) -> list[int]:
        return sorted(
            json.loads(line)["seq"] for b in self.objects.values() for line in gzip.decompress(b).splitlines()
        )


def make(store: Store, spool: Path, **kw: Any) -> ArchiveExporter:
    kw.setdefault("retry", RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02))
    return make_archive_exporter(store, spool, **kw)


def recs(lo: int, hi: int) -> list[dict[str, Any]]:
    # Compressible like real spans: repeated keys and values.
    return [
        {"type": "span", "seq": i, "name": "GET /api/pitches/{id}", "service": "pitch-api", "status": "ok"}
        for i in range(lo, hi)
    ]


def ready_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.name.endswith(".ready"))


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def all_packed(spool: Path, n: int) -> Callable[[], bool]:
    def check() -> bool:
        files = ready_files(spool)
        return len(files) == n and all(p.read_bytes()[:2] == GZIP_MAGIC for p in files)

    return check


def test_closed_batches_are_compressed_once_and_the_stored_body_is_uploaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = gzip.compress

    def counting(data: bytes, *a: Any, **kw: Any) -> bytes:
        calls.append(threading.current_thread().name)
        return real(data, *a, **kw)

    monkeypatch.setattr(_archive.gzip, "compress", counting)
    store = Store()
    store.fail = True
    exp = make(store, tmp_path, max_batch_records=10)
    exp.export(recs(0, 30))  # closes three batches on this (the export worker's) thread
    assert wait_for(lambda: len(store.calls) >= 6)  # several failed attempts
    assert wait_for(all_packed(tmp_path, 3))
    raw = sum(len(encode_line(r)) for r in recs(0, 30))
    files = {p.name.split(".")[3]: p.read_bytes() for p in ready_files(tmp_path)}
    for name, body in files.items():  # the exact gzip body to upload, deterministic
        lines = gzip.decompress(body)
        assert body == real(lines, 6, mtime=0), name  # (what gzip_ndjson makes)
    assert exp.pending()["bytes"] == sum(len(b) for b in files.values()) < raw
    store.fail = False
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert store.seqs() == list(range(30))
    assert {k.rsplit("/", 1)[1].removesuffix(".log.gz"): b for k, b in store.objects.items()} == files
    # compressed once per batch, whatever the number of attempts, on the exporter's thread
    assert len(calls) == 3
    assert set(calls) == {"pitchey-trace-archive-t"}
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_spool_cap_counts_closed_batches_by_their_compressed_size(tmp_path: Path) -> None:
    line = len(encode_line(recs(100, 101)[0]))
    store = Store()
    store.fail = True
    # raw, the cap holds 2.5 batches of 10; compressed, all ten batches fit
    exp = make(
        store,
        tmp_path,
        max_batch_records=10,
        spool_max_bytes=line * 25,
        retry=RetryPolicy(initial_backoff_s=30),
    )
    for n in range(10):
        exp.export(recs(100 + 10 * n, 110 + 10 * n))
        assert wait_for(all_packed(tmp_path, n + 1))
    assert _stats.get("dropped.spool_cap") == 0
    assert exp.pending()["closed_batches"] == 10
    assert exp.pending()["bytes"] <= line * 25
    store.fail = False
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert store.seqs() == list(range(100, 200))
    assert _stats.get("archive.uploaded") == 100


def test_a_dead_owners_raw_and_compressed_files_are_adopted(tmp_path: Path) -> None:
    def key(n: int) -> str:
        return f"20261130T00000{n}Z_20261130T00001{n}Z_{n:016x}"

    def lines(lo: int, hi: int) -> bytes:
        return b"".join(encode_line(r) for r in recs(lo, hi))

    (tmp_path / f"{DEAD}.lock").write_bytes(b"")
    # an open batch with a torn last line, a raw closed batch (an older version, or a crash
    # before compression, its temp file left behind), a compressed one, a torn compressed one
    (tmp_path / f"{DEAD}.0000000001.traces.20261130T000000Z.open").write_bytes(lines(0, 3) + b'{"se')
    (tmp_path / f"{DEAD}.0000000002.traces.{key(2)}.ready").write_bytes(lines(3, 6))
    tmp = tmp_path / f".{DEAD}.0000000002.traces.{key(2)}.ready.gz.tmp"
    tmp.write_bytes(gzip_ndjson([lines(3, 5)]))
    (tmp_path / f"{DEAD}.0000000003.traces.{key(3)}.ready").write_bytes(gzip_ndjson([lines(6, 9)]))
    torn = gzip_ndjson([lines(9, 400)])
    (tmp_path / f"{DEAD}.0000000004.traces.{key(4)}.ready").write_bytes(torn[: len(torn) // 2])
    (tmp_path / f"{DEAD}.0000000005.traces.{key(5)}.ready").write_bytes(gzip_ndjson([lines(400, 402)]))
    # a live owner's temp file (its lock is held) is never touched
    live = make(Store(), tmp_path, datasets={"other"})
    live_tmp = tmp_path / f".{live._spool.owner}.0000000009.traces.{key(9)}.ready.gz.tmp"  # type: ignore[union-attr]
    live_tmp.write_bytes(b"x")

    store = Store()
    exp = make(store, tmp_path, datasets={"traces"})
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert store.seqs() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 400, 401]
    assert f"traces/20261130/{key(3)}.log.gz" in store.objects  # keys kept from the dead run
    assert store.objects[f"traces/20261130/{key(3)}.log.gz"] == gzip_ndjson([lines(6, 9)])
    assert _stats.get("dropped.spool_invalid_lines") == 1
    lost = _stats.get("dropped.spool_corrupt")
    assert 0 < lost < 391  # the complete lines of the readable half: a lower bound
    assert _stats.get("archive.spool_corrupt_files") == 1
    assert _stats.get("archive.recovered") == 11
    assert not tmp.exists()
    assert live_tmp.exists()
    live.shutdown(1)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [live_tmp.name]


def test_a_failed_compressed_write_keeps_the_raw_file_and_still_uploads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_archive.os, "replace", full)
    store = Store()
    store.fail = True
    exp = make(store, tmp_path, max_batch_records=5)
    exp.export(recs(0, 5))
    assert wait_for(lambda: len(store.calls) >= 2)
    files = ready_files(tmp_path)
    assert len(files) == 1
    assert files[0].read_bytes() == b"".join(encode_line(r) for r in recs(0, 5))
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    store.fail = False
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert store.seqs() == [0, 1, 2, 3, 4]
    assert exp.pending()["bytes"] == 0
    assert os.listdir(tmp_path) == []
