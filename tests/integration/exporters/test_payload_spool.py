"""The payload spool of the HTTP and gRPC exporters (``spool_dir=``): what an endpoint that is
down could not take is kept on disk and arrives, exactly once, when it is back; also after the
process was killed. Real servers on 127.0.0.1 behind a proxy that can be switched off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import OTLPExporter, ZipkinExporter
from pitchey_trace.exporters._http import RetryPolicy
from tests.integration.exporters.servers import FaultProxy, RecordingServer, Reply

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=3)


@pytest.fixture
def proxy(http_server: RecordingServer) -> Iterator[FaultProxy]:
    host, port = http_server.url.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)))
    yield p
    p.close()


def spans(first: int, n: int) -> None:
    for i in range(first, first + n):
        with pt.span("job", attributes={"seq": i}):
            pass


def received_seqs(server: RecordingServer) -> list[int]:
    out: list[int] = []
    for req in server.requests:
        for rs in ExportTraceServiceRequest.FromString(req.body).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.extend(kv.value.int_value for kv in span.attributes if kv.key == "seq")
    return out


def spool_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.ready"))


def test_an_outage_loses_nothing(http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_mode("down")
    exporter = OTLPExporter(proxy.url, retry=FAST, spool_dir=tmp_path)
    pt.configure(service="jobs", exporters=[exporter], rollups=None, keep_errors=False)
    for batch in range(3):  # three flushes while the collector is unreachable
        spans(batch * 100, 100)
        assert not pt.force_flush(10)  # (not delivered yet: said so)
    assert len(spool_files(tmp_path)) == 3
    assert {f.stat().st_mode & 0o777 for f in spool_files(tmp_path)} == {0o600}  # (trace data: ours only)
    assert _stats.get("otlp.spooled") == 3
    assert _stats.get("dropped.export_failed") == 0  # (kept, not lost)
    proxy.set_mode("up")
    spans(300, 50)
    assert pt.force_flush(10)
    assert sorted(received_seqs(http_server)) == list(range(350))  # every span, exactly once
    assert spool_files(tmp_path) == []
    # the three kept, and maybe the batch made as the proxy came back (kept behind them while
    # the last failure's backoff ran); exactly-once is checked on the sequence numbers
    assert _stats.get("otlp.spool_sent") in (3, 4)
    assert _stats.get("otlp.spans") == 350


def test_a_refused_request_is_not_kept(http_server: RecordingServer, tmp_path: Path) -> None:
    http_server.reply(Reply(status=400, body=b'{"error": "malformed"}'))
    pt.configure(
        service="jobs",
        exporters=[OTLPExporter(http_server.url, retry=FAST, spool_dir=tmp_path)],
        rollups=None,
    )
    spans(0, 5)
    assert not pt.force_flush(10)  # (lost: the flush says so)
    assert spool_files(tmp_path) == []
    assert _stats.get("otlp.rejected") == 1
    assert _stats.get("dropped.export_failed.otlp") == 5


def test_the_cap_drops_the_oldest_and_counts_them(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    # a cap that holds two requests of ~1.9 KB (one larger than the cap alone is not kept:
    # test_session16_exporters_http.py)
    proxy.set_mode("down")
    exporter = ZipkinExporter(
        proxy.url + "/api/v2/spans", retry=FAST, spool_dir=tmp_path, spool_max_bytes=4500
    )
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    for batch in range(3):
        spans(batch * 10, 10)
        pt.force_flush(10)
    assert len(spool_files(tmp_path)) == 2
    assert _stats.get("dropped.spool_cap") == 10
    assert _stats.get("zipkin.spool_dropped") == 1
    proxy.set_mode("up")
    assert pt.force_flush(10)
    got = sorted(int(s["tags"]["seq"]) for req in http_server.requests for s in req.json())
    assert got == list(range(10, 30))


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import pitchey_trace as pt
    from pitchey_trace.exporters import OTLPExporter
    from pitchey_trace.exporters._http import RetryPolicy

    url, spool = sys.argv[1:3]
    fast = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=2)
    pt.configure(service="jobs", exporters=[OTLPExporter(url, retry=fast, spool_dir=spool)], rollups=None)
    for i in range(40):
        with pt.span("job", attributes={"seq": i}):
            pass
    pt.force_flush(10)
    print("SPOOLED", len([f for f in os.listdir(spool) if f.endswith(".ready")]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_what_a_killed_process_kept_is_sent_by_the_next(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set_mode("down")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, proxy.url, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["SPOOLED", "1"]
    proxy.set_mode("up")
    # The next process (here: this one) opens the same directory and sends what was kept.
    exporter = OTLPExporter(proxy.url, retry=FAST, spool_dir=tmp_path)
    assert _stats.get("otlp.spool_recovered") == 1
    assert exporter.force_flush(10)
    assert sorted(received_seqs(http_server)) == list(range(40))
    assert spool_files(tmp_path) == []
    exporter.shutdown()


def test_bad_spool_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="spool_dir"):
        OTLPExporter("http://127.0.0.1:9", spool_dir=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spool_max_bytes"):
        OTLPExporter("http://127.0.0.1:9", spool_dir=tmp_path, spool_max_bytes=0)


def test_grpc_outage_loses_nothing(tmp_path: Path) -> None:
    from tests.integration.exporters.test_otlp_grpc import Collector, start_server

    collector = Collector()
    exporter = OTLPExporter("http://127.0.0.1:1", protocol="grpc", retry=FAST, spool_dir=tmp_path)
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    spans(0, 20)
    assert not pt.force_flush(10)
    assert len(spool_files(tmp_path)) == 1
    pt.shutdown(5)
    server: Any = start_server(collector)
    try:
        exporter = OTLPExporter(f"http://127.0.0.1:{collector.port}", protocol="grpc", spool_dir=tmp_path)
        assert exporter.force_flush(10)
        got = [
            kv.value.int_value
            for request, _ in collector.calls
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
            for kv in span.attributes
            if kv.key == "seq"
        ]
        assert sorted(got) == list(range(20))
        exporter.shutdown()
    finally:
        server.stop(None)


def test_a_forked_child_keeps_its_own_files(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_mode("down")
    exporter = OTLPExporter(proxy.url, retry=FAST, spool_dir=tmp_path)
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    spans(0, 5)
    assert not pt.force_flush(10)
    [parent_file] = spool_files(tmp_path)
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's files, its own kept beside them
        code = 1
        try:
            spans(100, 5)
            pt.force_flush(10)
            mine = [p for p in spool_files(tmp_path) if p != parent_file]
            code = 0 if len(mine) == 1 and parent_file.exists() and len(exporter._spool or ()) == 1 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(exporter._spool or ()) == 1  # (the parent's own, still waiting)
    assert len(spool_files(tmp_path)) == 2


def test_the_next_forked_child_sends_what_a_dead_sibling_kept(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A pre-fork server recycles a worker that had requests waiting: the next worker sends
    them (the parent, alive, keeps its own files)."""
    proxy.set_mode("down")
    pt.configure(
        service="jobs", exporters=[OTLPExporter(proxy.url, retry=FAST, spool_dir=tmp_path)], rollups=None
    )

    def child(body: Any) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = body()
            finally:
                os._exit(code)  # (the dying worker never shuts down: its lock dies with it)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    def first() -> int:
        spans(0, 8)
        return 0 if not pt.force_flush(10) and len(spool_files(tmp_path)) == 1 else 3

    child(first)
    proxy.set_mode("up")

    def second() -> int:
        return 0 if pt.force_flush(10) and spool_files(tmp_path) == [] else 4

    child(second)
    assert sorted(received_seqs(http_server)) == list(range(8))


def test_an_idle_process_sends_its_backlog_when_the_endpoint_is_back(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    import time

    proxy.set_mode("down")
    exporter = OTLPExporter(proxy.url, retry=FAST, spool_dir=tmp_path)
    pt.configure(service="jobs", exporters=[exporter], rollups=None, schedule_delay_ms=50)
    spans(0, 6)
    assert not pt.force_flush(10)
    proxy.set_mode("up")
    # No new span and no flush: the idle export worker tries the spool again on its own.
    deadline = time.monotonic() + 20
    while spool_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool_files(tmp_path) == []
    assert sorted(received_seqs(http_server)) == list(range(6))
