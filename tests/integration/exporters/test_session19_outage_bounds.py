"""Session 19: bounds while an exporter's endpoint is down (bench/outage_bounds.py measures the
same under load). Against real servers on 127.0.0.1: what the SDK holds in memory or on disk
stays within its documented caps, and every record it gives up is counted in ``pt.stats()``."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.exporters import HttpAnalyticsExporter, LocalArchiveExporter, RetryPolicy
from pitchey_trace.exporters.local_archive import DEFAULT_MEMORY_MAX_BYTES
from tests.integration.exporters.servers import silent_port

pytestmark = pytest.mark.integration


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung collector)."""
    with silent_port() as port:
        yield port


class _Stuck:
    """An exporter whose export never returns until released (a user's exporter blocked on a
    dead endpoint, which does not honour shutdown)."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.got = 0

    def export(self, batch: Sequence[Any]) -> bool:
        self.got = len(batch)
        self.entered.set()
        self.release.wait(30)
        return False


def _spans(n: int) -> None:
    for i in range(n):
        with pt.span("work", attributes={"i": i}):
            pass


def test_records_still_queued_when_shutdown_times_out_are_counted() -> None:
    stuck = _Stuck()
    pt.configure(service="outage", exporters=[stuck], export_batch_size=100, rollups=None)
    try:
        _spans(100)
        assert stuck.entered.wait(10)  # the first 100 are in the stuck export
        _spans(2_000)
        pt.force_flush(timeout=0.5)  # (the pipeline hands them to the exporter's queue)
        pt.shutdown(timeout=0.5)
        s = pt.stats()
        assert s["accepted"] == 2_100
        # Everything is given up, and counted, by now: the batch in the stuck export too
        # (session 21: it was counted nowhere).
        assert 0 < stuck.got <= 100
        assert s.get("dropped.shutdown_timeout.stuck") == 2_100
        assert s.get("dropped.shutdown_timeout") == 2_100
    finally:
        stuck.release.set()


def test_hung_collector_records_accounted_for_when_shutdown_returns(hung_port: int) -> None:
    exporter = HttpAnalyticsExporter(
        f"http://127.0.0.1:{hung_port}/ingest", timeout_s=30.0, retry=RetryPolicy(max_attempts=1)
    )
    pt.configure(service="outage", exporters=[exporter], export_batch_size=100, rollups=None)
    _spans(3_000)
    pt.force_flush(timeout=0.5)
    pt.shutdown(timeout=0.5)
    s = pt.stats()
    name = "http_analytics"
    counted = (
        s.get(f"exported.{name}", 0)
        + s.get(f"dropped.export_failed.{name}", 0)
        + s.get(f"dropped.shutdown_timeout.{name}", 0)
        + s.get(f"dropped.exporter_queue_full.{name}", 0)
        + s.get("dropped.shutdown_timeout.pipeline", 0)  # (not handed over yet: the one exporter's)
    )
    # Every record once, by the time shutdown returns (session 21: the batch in the export the
    # shutdown cut off, and what the worker had taken, were counted only later or not at all):
    # given up by the worker as the endpoint hung (export_failed) or by the shutdown's end
    # (shutdown_timeout), which of the two depends on how far the worker got in the time.
    assert s["accepted"] == 3_000
    assert counted == 3_000
    assert s.get(f"exported.{name}", 0) == 0


def test_local_archive_without_spool_holds_at_most_64_mib_while_unwritable(tmp_path: Path) -> None:
    # The archive's dataset folder cannot be made (a file is in the way): every write fails, as
    # on a full disk, and the batches wait in memory. 120 MiB of records that gzip cannot shrink
    # much (random bytes in base64) go in; what is held stays within the default memory cap, the rest is
    # dropped and counted.
    root = tmp_path / "archive"
    root.mkdir()
    (root / "traces").write_text("not a folder")
    exporter = LocalArchiveExporter(root, max_batch_bytes=4 << 20, compresslevel=1)
    try:
        assert exporter.spool_max_bytes == DEFAULT_MEMORY_MAX_BYTES == 64 << 20
        blob = base64.b64encode(os.urandom(72 << 10)).decode()  # 96 KiB of text, ~73 KiB gzipped
        batch = [{"type": "span", "name": "big", "n": i, "blob": blob + f"{i:08x}"} for i in range(64)]
        for _ in range(20):  # 20 x 64 x 96 KiB = 120 MiB
            assert exporter.export(batch) is True
        held = exporter.pending()["bytes"]
        assert held <= 64 << 20
        dropped = pt.stats().get("dropped.spool_cap", 0)
        assert dropped > 0
    finally:
        exporter.shutdown(timeout=1.0)
    s = pt.stats()
    # Every record is either uploaded (none: unwritable), dropped at the cap, or unsent at shutdown.
    assert s.get("local_archive.uploaded", 0) == 0
    assert s.get("dropped.spool_cap", 0) + s.get("dropped.archive_unsent", 0) == 20 * 64


def test_local_archive_with_spool_dir_keeps_the_1_gib_default(tmp_path: Path) -> None:
    exporter = LocalArchiveExporter(tmp_path / "archive", spool_dir=tmp_path / "spool")
    try:
        assert exporter.spool_max_bytes == 1 << 30
    finally:
        exporter.shutdown(timeout=1.0)
