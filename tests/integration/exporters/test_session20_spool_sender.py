"""Session 20: with a ``spool_dir``, once an attempt failed the export worker keeps new batches
on disk without touching the network, and a sender thread of the exporter's own
(``pitchey-trace-spool-<name>``) retries the spool with the backoff and drains it when the
endpoint is back. Against a hung endpoint (accepts, never answers) the worker tried again once
per backoff interval and sat ``timeout_s`` each time while its queue overflowed
(``dropped.exporter_queue_full``). Real servers on 127.0.0.1."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter, OTLPExporter
from pitchey_trace.exporters._http import RetryPolicy
from tests.integration.exporters.servers import RecordingServer, Reply, numbered_span, silent_port, wait_until
from tests.support.otlp import partial_success_answer

pytestmark = pytest.mark.integration

THREAD = "pitchey-trace-spool-otlp"
FAST = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, retry_statuses=frozenset({503}))


def _seqs(body: bytes) -> list[int]:
    out: list[int] = []
    for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.extend(kv.value.int_value for kv in span.attributes if kv.key == "seq")
    return out


def _files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.ready"))  # (named by sequence number: oldest first)


def _spool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]


_wait_for = wait_until
_record = numbered_span


def _spans(first: int, n: int) -> None:
    for i in range(first, first + n):
        with pt.span("job", attributes={"seq": i}):
            pass


def test_a_hung_endpoint_under_load_fills_the_spool_not_the_dropped_counters(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with silent_port() as port:
        exporter = OTLPExporter(f"http://127.0.0.1:{port}/v1/traces", timeout_s=2.0, spool_dir=spool)
        pt.configure(
            service="load", exporters=[exporter], rollups=None, keep_errors=False, exporter_queue_size=2000
        )
        _spans(0, 1)
        assert not pt.force_flush(5)  # the one attempt on the worker hangs: the batch is kept
        assert len(_files(spool)) == 1
        sent = 1

        def load() -> None:  # ~3,000 spans/s for 4 s: 2 s of a held worker overflow its queue
            nonlocal sent
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                _spans(sent, 30)
                sent += 30
                time.sleep(0.01)

        producer = threading.Thread(target=load)
        producer.start()
        producer.join()
        # (the last batches reach the exporter; then everything it was handed is accounted for)
        pt.force_flush(0.5)
        s = pt.stats()
        assert s["accepted"] == sent
        assert _wait_for(lambda: pt.stats().get("exported.otlp", 0) + pt.stats().get("dropped", 0) >= sent)
        s = pt.stats()
        assert s.get("dropped.exporter_queue_full", 0) == 0
        assert s.get("dropped", 0) == 0
        assert s["exported.otlp"] == sent  # every span kept on disk (counted when kept)
        assert len(_spool_threads()) == 1  # the retries: on the exporter's sender thread
        pt.shutdown(5)
        assert _spool_threads() == []  # stopped and joined by shutdown
        files = _files(spool)
        assert s["otlp.spooled"] == len(files)  # (files stay for the next start)
        kept = [seq for f in files for seq in _seqs(f.read_bytes())]
        assert kept == list(range(sent))  # each span once, in order


def test_the_sender_thread_delivers_the_backlog_once_the_endpoint_answers(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    http_server.reply(*[Reply(status=503)] * 100_000)  # (then 200, once the script is cleared)
    spool = tmp_path / "spool"
    exporter = OTLPExporter(http_server.url, retry=FAST, spool_dir=spool)
    pt.configure(service="jobs", exporters=[exporter], rollups=None, keep_errors=False)
    for group in range(3):
        _spans(group * 100, 100)
        assert not pt.force_flush(5)  # (kept: not delivered yet)
    kept = len(_files(spool))
    assert kept >= 3
    assert len(_spool_threads()) == 1
    with http_server._cond:  # the endpoint is back: no new span, no flush from here on
        http_server.script.clear()
        failed = len(http_server.requests)
    assert _wait_for(lambda: not _files(spool) and not exporter._spooling)
    delivered = [seq for req in http_server.requests[failed:] for seq in _seqs(req.body)]
    assert delivered == list(range(300))  # each once, oldest first
    s = pt.stats()
    assert s["otlp.spooled"] == kept
    assert s["otlp.spool_sent"] == kept
    assert s["otlp.spans"] == 300
    assert s["exported.otlp"] == 300  # (counted when kept: not again)
    assert s.get("dropped", 0) == 0
    # Back to normal: a new batch goes out on the export worker, not through the spool.
    _spans(300, 10)
    assert pt.force_flush(5)
    assert _seqs(http_server.requests[-1].body) == list(range(300, 310))
    assert pt.stats()["otlp.spooled"] == kept


def test_shutdown_cuts_off_and_joins_the_sender_thread_and_keeps_the_files(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    # The first attempt fails at once (503); the sender thread's retry hangs (60 s).
    http_server.reply(Reply(status=503), *[Reply(hang=60.0)] * 5)
    spool = tmp_path / "spool"
    exporter = OTLPExporter(http_server.url, retry=FAST, timeout_s=60.0, spool_dir=spool)
    pt.configure(service="jobs", exporters=[exporter], rollups=None, keep_errors=False)
    _spans(0, 5)
    assert http_server.wait_requests(2)  # the kept batch, retried by the sender thread: hangs
    [thread] = _spool_threads()
    _spans(5, 5)
    assert not pt.force_flush(0.5)  # the flush keeps to its timeout while the request hangs
    assert exporter._drain_lock.locked()  # (the sender thread is still in its request)
    assert _wait_for(lambda: len(_files(spool)) == 2)
    assert len(http_server.requests) == 2  # the new batch was kept without a request
    exporter.shutdown(5.0)
    assert not thread.is_alive()  # its request cut off, the thread joined (the hang lasts 60 s)
    exporter.poll()
    assert _spool_threads() == []  # nothing starts after shutdown
    assert len(http_server.requests) == 2
    kept = [seq for f in _files(spool) for seq in _seqs(f.read_bytes())]
    assert kept == list(range(10))  # both batches stay for the next start


def test_a_forked_child_starts_its_own_sender_thread_when_it_needs_one(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    http_server.reply(*[Reply(status=503)] * 100_000)
    spool = tmp_path / "spool"
    exporter = OTLPExporter(http_server.url, retry=FAST, spool_dir=spool)
    pt.configure(service="jobs", exporters=[exporter], rollups=None, keep_errors=False)
    _spans(0, 5)
    assert not pt.force_flush(5)
    assert len(_spool_threads()) == 1
    parent_sender = exporter._spool_sender
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            none_yet = exporter._spool_thread is None and exporter._spool_sender is not parent_sender
            _spans(100, 5)  # kept (the endpoint failed): the child's thread starts
            pt.force_flush(5)
            code = 0 if none_yet and len(_spool_threads()) == 1 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exporter._spool_sender is parent_sender


# -- what test_session19_http_spool_first.py and test_otlp_partial_success_export.py checked of
# -- the worker's own retries, as it is now: the sender thread retries, new batches are kept


def test_after_a_failure_the_sender_thread_retries_and_new_batches_are_kept(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    hung = Reply(hang=60.0)
    http_server.reply(hung, hung)  # (then 200)
    spool = tmp_path / "spool"
    retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.2, multiplier=1.0, jitter=0.0)
    exporter = HttpAnalyticsExporter(http_server.url + "/ingest", timeout_s=0.3, retry=retry, spool_dir=spool)

    def first_names() -> list[str]:
        return [req.json()["points"][0]["blobs"][3] for req in http_server.requests]

    try:
        assert exporter.export([_record(0)]) is True  # tried once on this thread (hangs), kept
        assert exporter.export([_record(1)]) is True  # kept untried (never a request of its own)
        assert http_server.wait_requests(2)  # no export call: the sender thread retries op0
        assert first_names() == ["op0", "op0"]
        assert exporter.export([_record(2)]) is True  # kept untried, behind the others
        assert _wait_for(lambda: not _files(spool))  # the third try is answered: all sent
        assert first_names() == ["op0", "op0", "op0", "op1", "op2"]  # oldest first, each once
        assert _stats.get("http_analytics.requests") == 5
        # (op2 is kept behind the others, or, when this thread was held until the sender
        # thread had emptied the spool, sent directly: the same requests either way)
        assert _stats.get("http_analytics.spooled") in (2, 3)
        assert _stats.get("http_analytics.spool_sent") == _stats.get("http_analytics.spooled")
        assert _stats.get("http_analytics.points") == 3
    finally:
        http_server.release.set()
        exporter.shutdown(1.0)


def test_rejections_in_the_answers_to_kept_requests_are_counted(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    rejected_one = Reply(body=partial_success_answer("traces", 1, "too old", "json"))
    http_server.reply(Reply(status=503), Reply(status=503), rejected_one, rejected_one)
    # (a long backoff: only the flushes try the endpoint here)
    retry = RetryPolicy(
        max_attempts=1, initial_backoff_s=30.0, multiplier=1.0, jitter=0.0, retry_statuses=frozenset({503})
    )
    exporter = OTLPExporter(http_server.url, retry=retry, spool_dir=tmp_path / "spool")
    pt.configure(service="pitch-api", exporters=[exporter], rollups=None, keep_errors=False)
    _spans(0, 3)
    assert not pt.force_flush(20)  # tried (503) and kept; the flush's try: 503
    _spans(3, 2)
    assert pt.force_flush(20)  # kept behind the first, both sent by the flush
    assert len(http_server.requests) == 4
    s = pt.stats()
    assert s["otlp.spooled"] == 2
    assert s["otlp.spool_sent"] == 2
    assert s["otlp.partial_rejected"] == 2
    assert s["dropped.rejected.otlp"] == 2
    # (kept spans are counted exported when kept; what an answer rejects later is counted in
    # dropped.rejected only, as the spool's other losses)
    assert s["exported.otlp"] == 5


def test_an_exporter_dropped_without_shutdown_is_not_kept_alive_by_its_sender_thread(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    import gc

    http_server.reply(*[Reply(status=503)] * 100_000)
    spool = tmp_path / "spool"
    exporter = HttpAnalyticsExporter(http_server.url + "/ingest", retry=FAST, spool_dir=spool)
    assert exporter.export([_record(0)]) is True  # kept: the sender thread starts
    [thread] = [t for t in threading.enumerate() if t.name == "pitchey-trace-spool-http_analytics"]
    assert len(list(spool.glob("*.lock"))) == 1
    del exporter

    def gone() -> bool:
        gc.collect()
        return not thread.is_alive()

    assert _wait_for(gone)  # the thread ends with the exporter...
    assert list(spool.glob("*.lock")) == []  # ...which released its spool for the next owner
    assert len(_files(spool)) == 1  # (the kept request stays for it)
