"""An archive exporter whose shutdown timed out (its upload hung) keeps its spool lock while its
thread lives; once the exporter is gone, a later exporter in the same process takes its files
over and uploads them. Real S3 (moto over HTTP) and a real endpoint that never answers."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._spool import SpoolDir
from tests.integration.exporters.servers import S3, silent_port
from tests.integration.exporters.test_logpush_s3 import FAST_RETRY, seqs, span_rec

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (a hung storage)."""
    with silent_port() as port:
        yield f"http://127.0.0.1:{port}"


def test_a_dropped_owner_leaves_its_files_to_the_next_one_in_the_process(tmp_path: Path) -> None:
    first = SpoolDir(tmp_path)
    ready = first.ready_path(first.next_seq(), "traces", "20260101T000000Z_20260101T000000Z_0123456789abcdef")
    ready.write_bytes(b'{"a":1}\n')
    del first  # (never released: as an exporter whose shutdown timed out)
    gc.collect()
    second = SpoolDir(tmp_path)
    try:
        [adopted] = second.adopt_orphans(None)  # was: [] (the lock held until the process exits)
        assert adopted.path.read_bytes() == b'{"a":1}\n'
        assert adopted.key_name == "20260101T000000Z_20260101T000000Z_0123456789abcdef"
    finally:
        second.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [adopted.path.name]


def test_a_live_owner_in_the_same_process_keeps_its_files(tmp_path: Path) -> None:
    first = SpoolDir(tmp_path)
    key_name = "20260101T000000Z_20260101T000000Z_0123456789abcdef"
    first.ready_path(first.next_seq(), "traces", key_name).write_bytes(b"{}\n")
    second = SpoolDir(tmp_path)
    try:
        assert second.adopt_orphans(None) == []  # (still referenced: it may still write)
        first.release()
        assert len(second.adopt_orphans(None)) == 1
    finally:
        second.release()


def test_what_a_timed_out_shutdown_left_is_uploaded_by_a_later_exporter(
    s3: S3, silent_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (pytest's log capture would keep the upload warning's exception, whose traceback holds
    # the exporter: an application's log handlers do not)
    monkeypatch.setattr(logging.getLogger("pitchey_trace"), "propagate", False)
    bucket = s3.new_bucket()
    spool = tmp_path / "spool"
    hung = LogpushExporter(
        bucket,
        endpoint_url=silent_endpoint,
        region="us-east-1",
        spool_dir=spool,
        retry=FAST_RETRY,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
    )
    assert hung.export([span_rec(i) for i in range(10)])
    hung.shutdown(0.4)  # the upload hangs: the batch stays in the spool, the thread runs on
    thread = hung._thread
    assert thread is not None
    assert thread.is_alive()
    thread.join(30)  # (its request times out; the stopping thread then ends)
    assert not thread.is_alive()
    del hung, thread
    gc.collect()
    later = LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=spool, retry=FAST_RETRY
    )
    try:
        assert later.export([span_rec(i) for i in range(10, 15)])
        assert later.force_flush(20)
    finally:
        later.shutdown(10)
    assert seqs(s3.all_records(bucket)) == {i: 1 for i in range(15)}  # was: only 10..14
    assert sorted(p.name for p in spool.iterdir()) == []
