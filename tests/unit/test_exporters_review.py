"""Review of the archive and console exporters: real directories, real processes, real pipes."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import LocalArchiveExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters._spool import PayloadSpool, SpoolDir
from pitchey_trace.exporters.console import ConsoleExporter
from pitchey_trace.logpush_config import LogpushConfig

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


def rec(seq: int, **extra: Any) -> dict[str, Any]:
    return {"type": "span", "trace_id": "t", "span_id": f"{seq:016x}", "name": "op", "seq": seq, **extra}


def archive_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.log.gz") if p.is_file())


def archived(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in archive_files(root):
        out.extend(json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines())
    return out


def write_records(root: str, start: int, n: int) -> None:
    """Child process body: its own exporter on the shared archive directory."""
    exp = LocalArchiveExporter(root, max_batch_records=7, retry=FAST)
    for i in range(start, start + n, 5):
        exp.export([rec(j, pad="x" * 300) for j in range(i, min(i + 5, start + n))])
    exp.shutdown(10)


# -- local archive -----------------------------------------------------------------------------


def test_local_archive_a_fork_and_a_multiprocessing_child_share_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=write_records, args=(str(root), 1000, 200))
    child.start()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child
        code = 1
        try:
            write_records(str(root), 2000, 200)
            code = 0
        finally:
            os._exit(code)
    write_records(str(root), 0, 200)
    child.join(60)
    _, status = os.waitpid(pid, 0)
    assert child.exitcode == 0
    assert os.waitstatus_to_exitcode(status) == 0
    seqs = sorted(r["seq"] for r in archived(root))  # every line a whole JSON record
    assert seqs == [*range(200), *range(1000, 1200), *range(2000, 2200)]  # none lost or doubled
    names = [p.name for p in archive_files(root)]
    assert len(names) == len(set(names))
    assert not [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".log.gz")]


def test_local_archive_rotates_at_the_size_and_time_limits(tmp_path: Path) -> None:
    line = len(json.dumps(rec(0, pad="y" * 100), separators=(",", ":"))) + 1
    exp = LocalArchiveExporter(tmp_path, max_batch_bytes=line * 3, max_interval_s=0.3, retry=FAST)
    exp.export([rec(i, pad="y" * 100) for i in range(9)])
    assert exp.force_flush(5)
    assert [len(gzip.decompress(p.read_bytes()).splitlines()) for p in archive_files(tmp_path)] == [3, 3, 3]
    exp.export([rec(100)])
    deadline = time.monotonic() + 5
    while len(archive_files(tmp_path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(archive_files(tmp_path)) == 4  # closed by time, without a flush
    exp.shutdown(5)


def test_local_archive_unwritable_folder_counts_keeps_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # (a regular file where the dataset folder goes: fails for root too, unlike chmod)
    (tmp_path / "traces").write_bytes(b"in the way")
    exp = LocalArchiveExporter(tmp_path, datasets=["traces"], retry=FAST)
    exp.export([rec(i) for i in range(10)])
    assert not exp.force_flush(0.5)  # nothing raised; the batch is kept
    assert _stats.get("local_archive.retried") >= 1
    assert any("failed" in r.getMessage() for r in caplog.records)
    (tmp_path / "traces").unlink()
    exp.export([rec(i) for i in range(10, 20)])
    assert exp.force_flush(5)
    assert sorted(r["seq"] for r in archived(tmp_path)) == list(range(20))
    assert _stats.get("local_archive.uploaded") == 20
    exp.shutdown(5)


def test_local_archive_odd_dataset_names_stay_inside_the_directory(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    names = ["../escape", "a/b", "with space", "naïve-ünï", "..", "/abs"]

    def router(record: Any) -> Iterable[str]:
        return [names[record["seq"] % len(names)]]

    exp = LocalArchiveExporter(root, router=router, retry=FAST)
    exp.export([rec(i, service="../../etc/ü x") for i in range(len(names))])
    assert exp.force_flush(5)
    exp.shutdown(5)
    assert sorted(r["seq"] for r in archived(root)) == list(range(len(names)))
    assert not [p for p in tmp_path.iterdir() if p.name != "archive"]
    for path in archive_files(root):
        folder = path.relative_to(root).parts[0]
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in folder)


@pytest.mark.parametrize("prefix", ["../up", "a/../../b", "a//b", "./x", "a\\b", "x\ny"])
def test_a_prefix_that_would_leave_its_folder_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        LocalArchiveExporter(tmp_path, prefixes={"traces": prefix})
    with pytest.raises(ConfigurationError, match="prefix"):
        LogpushConfig.from_mapping({"bucket": "b", "datasets": {"traces": {"prefix": prefix}}})


def test_local_archive_clock_going_backwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = LocalArchiveExporter(tmp_path, retry=FAST)
    real = time.time_ns
    exp.export([rec(0)])
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3 * 86_400 * 10**9)  # 3 days back
    exp.export([rec(1)])
    assert exp.force_flush(5)
    exp.export([rec(2)])
    assert exp.force_flush(5)
    monkeypatch.undo()
    exp.shutdown(5)
    assert sorted(r["seq"] for r in archived(tmp_path)) == [0, 1, 2]
    for path in archive_files(tmp_path):
        start, end, _ = path.name.split("_")
        assert start <= end
        assert path.parent.name == start[:8]


# -- archive spool ------------------------------------------------------------------------------


class FlakyStore:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.objects: dict[str, bytes] = {}

    def put(self, dataset: str, key: str, body: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("storage down")
        self.objects[key] = body

    def reset(self) -> None:
        pass


def test_corrupted_leftover_lines_are_counted_once_however_many_retries(tmp_path: Path) -> None:
    from pitchey_trace.exporters._archive import ArchiveExporter

    spool = tmp_path / "spool"
    spool.mkdir()
    dead = "999999-deadbeef"
    good = b"".join(json.dumps(rec(i)).encode() + b"\n" for i in range(3))
    (spool / f"{dead}.0000000001.traces.20261130T053700Z.open").write_bytes(
        good + b"\x00\xffgarbage\n" + b'{"torn": '
    )
    (spool / f"{dead}.0000000002.traces.20261130T053800Z.open").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    store = FlakyStore(failures=3)
    exp = ArchiveExporter(
        store,
        name="t",
        datasets=None,
        prefixes=None,
        max_batch_bytes=1 << 20,
        max_batch_records=1000,
        max_interval_s=30.0,
        compresslevel=6,
        spool_dir=spool,
        spool_max_bytes=1 << 20,
        fsync_interval_s=1.0,
        router=None,
        retry=FAST,
    )
    deadline = time.monotonic() + 10
    while exp.pending()["closed_batches"] and time.monotonic() < deadline:
        exp.force_flush(1)
    exp.shutdown(5)
    assert len(store.objects) == 1  # the all-garbage file is not uploaded
    (body,) = store.objects.values()
    assert [json.loads(x)["seq"] for x in gzip.decompress(body).splitlines()] == [0, 1, 2]
    assert _stats.get("archive.retried") >= 3
    # garbage + torn tail in the first file, 2 lines + tail in the second: once, not per attempt
    assert _stats.get("dropped.spool_invalid_lines") == 5


# -- payload spool ------------------------------------------------------------------------------


def test_payload_spool_discards_a_dead_process_half_written_request(tmp_path: Path) -> None:
    dead = "999999-deadbeef"
    (tmp_path / f"{dead}.0000000001.otlp.20261130T053700Z.open").write_bytes(b"\x1f\x8b\x08trunc")
    (
        tmp_path / f"{dead}.0000000002.otlp.20261130T053700Z_20261130T053700Z_00000000000000aa.ready"
    ).write_bytes(b"whole request")
    spool = PayloadSpool(tmp_path, tag="otlp", counter="otlp", items_counter="otlp.spans", max_bytes=1000)
    assert len(spool) == 1
    assert _stats.get("otlp.spool_invalid") == 1
    sent: list[bytes] = []

    class Ok:
        ok, rejected = True, False

    spool.drain(lambda p: (sent.append(p), Ok())[1], time.monotonic() + 5)
    assert sent == [b"whole request"]
    spool.close()


def test_payload_spool_trims_what_it_adopts_to_the_cap(tmp_path: Path) -> None:
    dead = "999999-deadbeef"
    for i in range(5):
        stamp = f"20261130T05370{i}Z_20261130T05370{i}Z_00000000000000aa"
        (tmp_path / f"{dead}.{i + 1:010d}.otlp.{stamp}.ready").write_bytes(b"x" * 400)
    spool = PayloadSpool(tmp_path, tag="otlp", counter="otlp", items_counter="otlp.spans", max_bytes=1000)
    assert len(spool) == 2
    assert spool.bytes == 800
    assert _stats.get("otlp.spool_dropped") == 3
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".ready")]) == 2
    spool.close()


def test_spool_dir_of_a_live_process_is_never_adopted(tmp_path: Path) -> None:
    mine = SpoolDir(tmp_path)
    path = mine.open_path(mine.next_seq(), "traces", time.time_ns())
    path.write_bytes(b'{"a":1}\n')
    other = SpoolDir(tmp_path)
    assert other.adopt_orphans(None) == []
    assert path.exists()
    mine.release()
    other.release()


# -- console ------------------------------------------------------------------------------------

ODD = "café \U0001f600 \ud800 end"


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_console_writes_unencodable_text_as_json_escapes(encoding: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding)
    exp = ConsoleExporter(stream)
    assert exp.export([rec(1, name=ODD)])
    (line,) = raw.getvalue().splitlines()
    assert json.loads(line)["name"] == "café \U0001f600 \ufffd end"
    pretty = ConsoleExporter(stream, pretty=True)
    assert pretty.export([rec(2, name=ODD)])
    assert "caf\\u00e9" in raw.getvalue().decode(encoding)


def test_console_survives_a_broken_pipe_and_a_missing_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.close(r)
    stream = open(w, "w", encoding="utf-8")  # noqa: SIM115
    exp = ConsoleExporter(stream)
    assert exp.export([rec(1, big="z" * 1_000_000)]) is False  # EPIPE: not raised
    assert exp.export([rec(2)]) is False
    exp.force_flush()
    exp.shutdown()
    with contextlib.suppress(OSError):
        stream.close()
    assert exp.export([rec(3)]) is False  # closed: ValueError, not raised
    monkeypatch.setattr(sys, "stdout", None)  # pythonw, a closed console
    exp = ConsoleExporter()
    assert exp.export([rec(2)]) is False
    assert exp.force_flush() is False


def test_console_large_record_is_written_whole() -> None:
    out = io.StringIO()
    assert ConsoleExporter(out).export([rec(1, big="z" * 2_000_000)])
    assert len(json.loads(out.getvalue())["big"]) == 2_000_000
