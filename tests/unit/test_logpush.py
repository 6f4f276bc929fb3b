"""The archive engine behind LogpushExporter (batching, spool, retries, recovery) with an
in-process store; the S3 behaviour itself is tested against moto in tests/integration."""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._archive import ArchiveExporter, clean_lines, encode_line
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters._spool import SpoolDir, compact_utc, safe_dataset
from tests.support.archive import make_archive_exporter


class FakeStore:
    """Records puts; can fail the next N puts or block them until released."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.fail = 0
        self.block: threading.Event | None = None
        self.entered = threading.Event()

    def put(self, dataset: str, key: str, body: bytes) -> None:
        self.calls.append(key)
        self.entered.set()
        if self.block is not None:
            self.block.wait(30)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("storage down")
        self.objects[key] = body

    def reset(self) -> None:
        pass

    def records(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in gzip.decompress(self.objects[key]).splitlines()]

    def seqs(self) -> list[int]:
        return sorted(r["seq"] for k in self.objects for r in self.records(k))


def make(store: FakeStore, spool: Path | None, **kw: Any) -> ArchiveExporter:
    return make_archive_exporter(store, spool, **kw)


def recs(lo: int, hi: int, type_: str = "span") -> list[dict[str, Any]]:
    return [{"type": type_, "seq": i} for i in range(lo, hi)]


def spool_files(spool: Path, suffix: str) -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.name.endswith(suffix))


def test_object_keys_follow_the_logpush_convention(tmp_path: Path) -> None:
    store = FakeStore()
    exp = make(store, tmp_path, prefixes={"traces": "/logs/spans/", "audit": ""})
    exp.export(recs(0, 3) + recs(3, 5, "audit") + recs(5, 6, "rollup"))
    assert exp.force_flush(5)
    exp.shutdown(1)
    keys = sorted(store.objects)
    pattern = r"\d{8}/\d{8}T\d{6}Z_\d{8}T\d{6}Z_[0-9a-f]{16}\.log\.gz"
    assert {re.sub(pattern, "K", k) for k in keys} == {"logs/spans/K", "K", "performance/K"}
    assert compact_utc(1_800_000_000 * 10**9 + 999_999_999) == "20270115T080000Z"
    assert compact_utc(0) == "19700101T000000Z"
    assert safe_dataset("a/b c") == "a_b_c"


def test_records_are_in_the_spool_file_as_soon_as_export_returns(tmp_path: Path) -> None:
    store = FakeStore()
    exp = make(store, tmp_path)
    exp.export(recs(0, 5))
    [open_file] = spool_files(tmp_path, ".open")
    assert [json.loads(x)["seq"] for x in open_file.read_bytes().splitlines()] == [0, 1, 2, 3, 4]
    assert _stats.get("spooled") == 5
    exp.shutdown(5)
    assert store.seqs() == [0, 1, 2, 3, 4]
    assert list(tmp_path.iterdir()) == []


def test_export_never_waits_for_storage(tmp_path: Path) -> None:
    store = FakeStore()
    store.block = threading.Event()
    exp = make(store, tmp_path, max_batch_records=10)
    exp.export(recs(0, 10))
    assert store.entered.wait(5)  # the uploader is stuck inside put()
    for lo in range(10, 200, 10):
        assert exp.export(recs(lo, lo + 10)) is True  # returns although storage hangs
    assert exp.pending()["closed_batches"] == 20
    assert len(store.calls) == 1
    store.block.set()
    assert exp.force_flush(10)
    exp.shutdown(1)
    assert store.seqs() == list(range(200))
    assert store.calls == sorted(store.calls, key=store.calls.index)  # oldest first, each once
    assert len(set(store.calls)) == 20


def test_retries_keep_the_object_key_and_delete_the_file_only_after_success(tmp_path: Path) -> None:
    store = FakeStore()
    store.fail = 3
    store.block = threading.Event()
    exp = make(store, tmp_path)
    exp.export(recs(0, 4))
    closer = threading.Thread(target=exp.force_flush, args=(10,))
    closer.start()
    assert store.entered.wait(5)
    assert len(spool_files(tmp_path, ".ready")) == 1  # closed, being uploaded, still on disk
    store.block.set()
    closer.join(10)
    assert len(store.calls) == 4
    assert len(set(store.calls)) == 1  # same key on every attempt: a retry overwrites
    assert _stats.get("archive.retried") == 3
    assert _stats.get("retried") == 3
    assert spool_files(tmp_path, ".ready") == []
    exp.shutdown(1)
    assert store.seqs() == [0, 1, 2, 3]


def test_leftovers_of_a_dead_process_are_uploaded_first_and_torn_lines_dropped(tmp_path: Path) -> None:
    # A dead owner: a lock file nobody holds, a closed batch and an open batch with a torn tail.
    dead = "4242-deadbeef"
    (tmp_path / f"{dead}.lock").write_bytes(b"")
    ready_name = "20261130T000000Z_20261130T000010Z_00000000000000aa"
    (tmp_path / f"{dead}.0000000001.traces.{ready_name}.ready").write_bytes(
        b"".join(encode_line(r) for r in recs(0, 3))
    )
    (tmp_path / f"{dead}.0000000002.traces.20261130T000011Z.open").write_bytes(
        b"".join(encode_line(r) for r in recs(3, 6)) + b'{"type":"span","se'
    )
    (tmp_path / f"{dead}.0000000003.secret.20261130T000011Z.open").write_bytes(encode_line(recs(9, 10)[0]))
    store = FakeStore()
    exp = make(store, tmp_path, datasets={"traces"})
    exp.export(recs(100, 102))
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert len(store.calls) == 3
    assert store.calls[0] == f"traces/20261130/{ready_name}.log.gz"  # key kept from the dead run
    assert [r["seq"] for r in store.records(store.calls[0])] == [0, 1, 2]
    assert [r["seq"] for r in store.records(store.calls[1])] == [3, 4, 5]
    assert [r["seq"] for r in store.records(store.calls[2])] == [100, 101]
    assert _stats.get("dropped.spool_invalid_lines") == 1
    assert _stats.get("archive.recovered") == 6
    # a dataset this exporter does not handle is left for another exporter, lock included
    assert [p.name.split(".")[2] for p in spool_files(tmp_path, ".open")] == ["secret"]
    assert (tmp_path / f"{dead}.lock").exists()


def test_while_storage_is_down_attempts_are_spaced_store_wide(tmp_path: Path) -> None:
    store = FakeStore()
    store.fail = 10**6
    exp = make(store, tmp_path, max_batch_records=5, retry=RetryPolicy(initial_backoff_s=30))
    exp.export(recs(0, 5))
    assert store.entered.wait(5)
    exp.export(recs(5, 50))  # nine more batches wait behind the failed one
    time.sleep(0.3)
    assert len(store.calls) == 1  # not one attempt per batch
    assert exp.pending()["closed_batches"] == 10
    store.fail = 0
    assert exp.force_flush(5)  # a flush retries at once
    exp.shutdown(1)
    assert store.seqs() == list(range(50))
    assert len(store.calls) == 11


def test_a_live_owners_files_are_never_taken(tmp_path: Path) -> None:
    store_a, store_b = FakeStore(), FakeStore()
    store_a.fail = 10**6
    a = make(store_a, tmp_path, retry=RetryPolicy(initial_backoff_s=30))
    a.export(recs(0, 5))
    b = make(store_b, tmp_path)
    b.export(recs(10, 11))
    assert b.force_flush(5)
    b.shutdown(1)
    assert store_b.seqs() == [10]
    assert len(spool_files(tmp_path, ".open")) == 1  # still a's
    store_a.fail = 0
    a.shutdown(5)
    assert store_a.seqs() == [0, 1, 2, 3, 4]


def test_spool_cap_in_memory_mode_drops_oldest(tmp_path: Path) -> None:
    store = FakeStore()
    store.fail = 10**6
    line = len(encode_line({"type": "span", "seq": 100}))
    exp = make(
        store,
        None,
        max_batch_records=1_000_000,
        spool_max_bytes=line * 30,
        retry=RetryPolicy(initial_backoff_s=30),
    )
    exp.export(recs(100, 125))
    assert exp.force_flush(0.2) is False  # closes the batch; it is gzipped in memory
    exp.export(recs(125, 155))  # no room for a full open batch beside the closed one: oldest dropped
    assert _stats.get("dropped.spool_cap") == 25
    store.fail = 0
    assert exp.force_flush(5)
    exp.shutdown(1)
    assert store.seqs() == list(range(125, 155))


def test_router_sends_a_record_to_several_dataset_prefixes(tmp_path: Path) -> None:
    store = FakeStore()

    def router(r: dict[str, Any]) -> list[str]:
        return ["audit", "security", "ignored"] if r["type"] == "audit" else ["traces"]

    exp = make(store, tmp_path, router=router, datasets={"traces", "audit", "security"})
    exp.export(recs(0, 1, "audit") + recs(1, 2))
    exp.shutdown(5)
    assert sorted(k.split("/")[0] for k in store.objects) == ["audit", "security", "traces"]


def test_unwritable_spool_is_counted_and_never_raises(tmp_path: Path) -> None:
    store = FakeStore()
    spool = tmp_path / "spool"
    exp = make(store, spool)
    exp.export(recs(0, 2))
    assert exp.force_flush(5)
    for p in spool.iterdir():
        p.unlink()
    spool.rmdir()
    spool.write_bytes(b"not a directory")
    assert exp.export(recs(2, 5)) is True
    assert _stats.get("dropped.spool_write_error") == 3
    exp.shutdown(1)
    assert exp.export(recs(5, 6)) is False
    assert store.seqs() == [0, 1]


def test_fsync_and_interval_close_run_in_the_background(tmp_path: Path) -> None:
    store = FakeStore()
    exp = make(store, tmp_path, max_interval_s=0.2, fsync_interval_s=0.05)
    exp.export(recs(0, 3))
    deadline = time.monotonic() + 10
    while not store.objects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.seqs() == [0, 1, 2]  # closed by the interval, uploaded without a flush
    exp.shutdown(1)


def test_default_spool_dir_is_per_user_and_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a = LogpushExporter("bucket-a", endpoint_url="http://127.0.0.1:9")
    b = LogpushExporter("bucket-b", endpoint_url="http://127.0.0.1:9")
    try:
        assert a.spool_path is not None
        assert b.spool_path is not None
        assert a.spool_path.parent == b.spool_path.parent == tmp_path / f"pitchey-trace-spool-{os.getuid()}"
        assert a.spool_path != b.spool_path
        assert a.spool_path.name.startswith("logpush-")
    finally:
        a.shutdown(1)
        b.shutdown(1)


def test_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="not usable"):
        make(FakeStore(), tmp_path / "file")
    with pytest.raises(ConfigurationError):
        make(FakeStore(), None, max_batch_records=0)
    with pytest.raises(ConfigurationError):
        make(FakeStore(), None, compresslevel=10)
    with pytest.raises(ConfigurationError):
        LogpushExporter()
    with pytest.raises(ConfigurationError):
        LogpushExporter(buckets={"audit": "b"})  # datasets must be limited to those buckets


def test_clean_lines_and_spool_names() -> None:
    data = b'{"a":1}\n\n{bad}\n{"b":2}\n{"c"'
    assert clean_lines(data) == (b'{"a":1}\n{"b":2}\n', 2, 2)
    assert encode_line({"n": 1 << 70}) == b'{"n":1180591620717411303424}\n'  # beyond orjson's range


def test_spool_dir_owner_lock_is_exclusive(tmp_path: Path) -> None:
    a = SpoolDir(tmp_path)
    b = SpoolDir(tmp_path)
    assert a.owner != b.owner
    assert b._owner_is_dead(a.owner) == (False, None)
    a.release()
    dead, fd = b._owner_is_dead(a.owner)
    assert dead
    assert fd is None  # its lock file is gone
    b.release()
    assert os.listdir(tmp_path) == []


def test_encode_line_takes_what_orjson_refuses() -> None:
    # An archive line per record: a lone surrogate becomes U+FFFD, an int beyond 64 bits stays
    # exact, and the line is still one valid JSON document.
    line = encode_line({"type": "span", "name": "a\ud800", "attributes": {"n": 1 << 70}})
    assert line.endswith(b"\n")
    assert json.loads(line) == {"type": "span", "name": "a\ufffd", "attributes": {"n": 1 << 70}}
    assert clean_lines(line) == (line, 1, 0)
