"""Spool hand-over between archive exporters of one process (and a process that dies meanwhile).

An exporter whose shutdown timed out (its upload hung) releases its spool lock when its thread
ends, even while the object lives on; a running exporter on the same directory then takes the
files over without waiting for the next start, and never takes those of a live owner. Real S3
(moto over HTTP) and a real endpoint that accepts connections and never answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pitchey_trace as pt
from pitchey_trace._json import dumps
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._archive import ArchiveExporter
from tests.integration.exporters.servers import S3, silent_port
from tests.integration.exporters.test_logpush_s3 import FAST_RETRY, seqs, span_rec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (a hung storage)."""
    with silent_port() as port:
        yield f"http://127.0.0.1:{port}"


def hung_exporter(endpoint: str, spool: Path) -> LogpushExporter:
    """An exporter whose 10 records (seq 0..9) are closed and stuck in an upload that hangs."""
    exp = LogpushExporter(
        "bucket",
        endpoint_url=endpoint,
        region="us-east-1",
        spool_dir=spool,
        retry=FAST_RETRY,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
    )
    assert exp.export([span_rec(i) for i in range(10)])
    exp.shutdown(0.4)  # the upload hangs: the batch stays in the spool, the thread runs on
    assert exp._thread is not None
    assert exp._thread.is_alive()
    return exp


def s3_exporter(s3: S3, bucket: str, spool: Path) -> LogpushExporter:
    return LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=spool, retry=FAST_RETRY
    )


def owners(spool: Path) -> set[str]:
    return {p.name.split(".")[0] for p in spool.iterdir() if not p.name.startswith(".")}


@pytest.mark.usefixtures("s3_endpoint")  # (its credentials: the request is sent, and hangs)
def test_a_timed_out_shutdown_releases_the_lock_once_its_thread_ends(
    silent_endpoint: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    hung = hung_exporter(silent_endpoint, spool)
    assert hung._spool is not None
    owner = hung._spool.owner
    assert (spool / f"{owner}.lock").exists()  # (its thread still uses the spool)
    assert hung._thread is not None
    hung._thread.join(30)
    assert not hung._thread.is_alive()
    # The exporter object lives on (kept by the application): its lock goes all the same.
    assert not (spool / f"{owner}.lock").exists()  # was: held until the object is collected
    assert [p.name.endswith(".ready") for p in spool.iterdir()] == [True]
    hung.shutdown(1)  # (a second shutdown changes nothing)


@pytest.mark.parametrize("interval", [0.05, None], ids=["frequent-looks", "on-release"])
def test_a_running_exporter_takes_over_what_a_hung_one_left_in_the_same_process(
    s3: S3, silent_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float | None
) -> None:
    # Frequent looks: a live owner's files must still never be taken. Default (30 s): the
    # release itself makes the running exporter look, within its 5 s wake.
    if interval is not None:
        monkeypatch.setattr(ArchiveExporter, "adopt_interval_s", interval)
    bucket = s3.new_bucket()
    spool = tmp_path / "spool"
    hung = hung_exporter(silent_endpoint, spool)  # (as after pt.configure() called again)
    assert hung._spool is not None
    assert hung._thread is not None
    first = hung._spool.owner
    later = LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=spool, retry=FAST_RETRY
    )
    try:
        assert later._spool is not None
        assert later.export([span_rec(i) for i in range(10, 15)])
        assert later.force_flush(20)
        time.sleep(0.3)  # (several adoption rounds)
        assert later.force_flush(20)
        # The hung exporter's thread still runs: its batch is its own, not uploaded by another.
        assert hung._thread.is_alive()
        assert seqs(s3.all_records(bucket)) == {i: 1 for i in range(10, 15)}
        assert owners(spool) == {first, later._spool.owner}
        hung._thread.join(30)
        assert not hung._thread.is_alive()
        deadline = time.monotonic() + 20
        while len(s3.keys(bucket)) < 2 and time.monotonic() < deadline:  # (no flush, no restart)
            time.sleep(0.05)
        assert later.force_flush(20)
    finally:
        later.shutdown(10)
    assert seqs(s3.all_records(bucket)) == {i: 1 for i in range(15)}  # was: only 10..14
    assert pt.stats()["logpush.objects"] == len(s3.keys(bucket)) == 2  # each key uploaded once
    assert pt.stats()["logpush.recovered"] == 10
    assert sorted(p.name for p in spool.iterdir()) == []


CHILD = """
import sys
from pitchey_trace.exporters._spool import SpoolDir
d = SpoolDir(sys.argv[1])
p = d.ready_path(d.next_seq(), "traces", "20260101T000000Z_20260101T000000Z_0123456789abcdef")
p.write_bytes(sys.argv[2].encode())
print(d.owner, flush=True)
sys.stdin.read()
"""


def test_a_running_exporter_takes_over_the_files_of_a_process_that_died_meanwhile(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ArchiveExporter, "adopt_interval_s", 0.05)
    bucket = s3.new_bucket()
    spool = tmp_path / "spool"
    exp = LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=spool, retry=FAST_RETRY
    )
    lines = "".join(dumps(span_rec(i)).decode() + "\n" for i in range(20, 23))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool), lines],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        owner = child.stdout.readline().strip()
        assert owner
        assert exp.force_flush(20)
        time.sleep(0.3)
        assert exp.force_flush(20)
        assert s3.keys(bucket) == []  # (alive: its file is its own)
        assert owner in owners(spool)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 20
        while not s3.keys(bucket) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exp.force_flush(20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        exp.shutdown(10)
    assert s3.keys(bucket) == ["traces/20260101/20260101T000000Z_20260101T000000Z_0123456789abcdef.log.gz"]
    assert seqs(s3.all_records(bucket)) == {20: 1, 21: 1, 22: 1}  # was: left for the next start
    assert sorted(p.name for p in spool.iterdir()) == []
