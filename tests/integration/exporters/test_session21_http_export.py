"""Session 21: item counts of spool files taken over from a process killed mid-outage
(analytics, OTLP/HTTP, Zipkin), against real 127.0.0.1 HTTP servers and a real child process
killed with SIGKILL; the analytics exporter's requests are unchanged by its faster encoding."""

from __future__ import annotations

import gzip
import json
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

from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace.exporters import HttpAnalyticsExporter, OTLPExporter, ZipkinExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters.http_analytics import to_data_point
from tests.integration.exporters.servers import FaultProxy, RecordingServer, Reply

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=3)
SPANS = 700  # (analytics: 3 requests of <= 250 points; OTLP: 2 of <= 512 spans; Zipkin: 1)


@pytest.fixture
def proxy(http_server: RecordingServer) -> Iterator[FaultProxy]:
    host, port = http_server.url.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)))
    yield p
    p.close()


# The child exports SPANS spans while the endpoint is down, flushes (the requests are kept in
# the spool), says so, then waits to be killed: its spool files are left to the next process.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    import pitchey_trace as pt
    from pitchey_trace.exporters import HttpAnalyticsExporter, OTLPExporter, ZipkinExporter
    from pitchey_trace.exporters._http import RetryPolicy

    kind, url, spool, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fast = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=2)
    if kind == "analytics":
        exporter = HttpAnalyticsExporter(url + "/ingest", retry=fast, spool_dir=spool)
    elif kind == "otlp":
        exporter = OTLPExporter(url + "/v1/traces", retry=fast, spool_dir=spool)
    else:
        exporter = ZipkinExporter(url + "/api/v2/spans", retry=fast, spool_dir=spool)
    pt.configure(service="s21", exporters=[exporter], rollups=None, export_batch_size=1024)
    for i in range(n):
        with pt.span("job", attributes={"seq": i}):
            pass
    pt.force_flush(10)
    print("SPOOLED", len([f for f in os.listdir(spool) if f.endswith(".ready")]), flush=True)
    time.sleep(600)
    """
)

KINDS = {
    # kind: (exporter, its items counter, files the child keeps)
    "analytics": (
        lambda url, spool, **kw: HttpAnalyticsExporter(url + "/ingest", spool_dir=spool, **kw),
        "http_analytics.points",
        3,
    ),
    "otlp": (
        lambda url, spool, **kw: OTLPExporter(url + "/v1/traces", spool_dir=spool, **kw),
        "otlp.spans",
        2,
    ),
    "zipkin": (
        lambda url, spool, **kw: ZipkinExporter(url + "/api/v2/spans", spool_dir=spool, **kw),
        "zipkin.spans",
        1,
    ),
}


def killed_mid_outage(kind: str, url: str, spool: Path) -> int:
    """Run the child against ``url`` (down), kill it with SIGKILL once it kept its requests;
    the number of spool files it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, url, str(spool), str(SPANS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, err
    words = line.split()
    assert words[:1] == ["SPOOLED"], err
    return int(words[1])


def received(kind: str, server: RecordingServer) -> list[int]:
    """The ``seq`` of every span (or point) the server received."""
    out: list[int] = []
    for req in server.requests:
        if kind == "analytics":
            out.extend(1 for _ in req.json()["points"])
        elif kind == "zipkin":
            out.extend(int(s["tags"]["seq"]) for s in req.json())
        else:
            for rs in ExportTraceServiceRequest.FromString(req.body).resource_spans:
                for ss in rs.scope_spans:
                    out.extend(
                        kv.value.int_value for span in ss.spans for kv in span.attributes if kv.key == "seq"
                    )
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_items_of_files_left_by_a_killed_process_are_counted_once_sent(
    kind: str, http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    make, counter, files = KINDS[kind]
    proxy.set_mode("down")
    assert killed_mid_outage(kind, proxy.url, tmp_path) == files
    proxy.set_mode("up")  # the endpoint comes up after the child died
    before = _stats.get(counter)
    exporter = make(proxy.url, tmp_path, retry=FAST)
    try:
        assert _stats.get(f"{exporter._sender.counter}.spool_recovered") == files
        assert exporter.force_flush(10)
        got = received(kind, http_server)
        assert len(got) == SPANS
        if kind != "analytics":
            assert sorted(got) == list(range(SPANS))
        # Each recovered file's items are counted as it is delivered (they were not: 0).
        assert _stats.get(counter) - before == SPANS
        assert _stats.get(f"{exporter._sender.counter}.spool_sent") == files
        assert not list(tmp_path.glob("*.ready"))
    finally:
        exporter.shutdown()


def test_items_of_recovered_files_dropped_by_the_cap_are_counted(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.set_mode("down")
    assert killed_mid_outage("analytics", proxy.url, tmp_path) == 3
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob("*.ready"))]
    before = _stats.get("dropped.spool_cap")
    # A smaller cap in the next process: the oldest recovered files go, with their points
    # (250 each) counted in dropped.spool_cap (they were counted as 0).
    exporter = HttpAnalyticsExporter(
        proxy.url + "/ingest", retry=FAST, spool_dir=tmp_path, spool_max_bytes=sizes[2]
    )
    try:
        assert _stats.get("http_analytics.spool_dropped") == 2
        assert _stats.get("dropped.spool_cap") - before == 500
    finally:
        exporter.shutdown()


def test_a_file_of_the_previous_version_without_a_count_is_still_sent(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set_mode("down")
    assert killed_mid_outage("analytics", proxy.url, tmp_path) == 3
    # The name the previous version gave it: <owner>.<seq>.<tag>.<start>_<end>_<unique>.ready
    for path in tmp_path.glob("*.ready"):
        stem, _, _count = path.name.removesuffix(".ready").rpartition("_")
        path.rename(path.with_name(stem + ".ready"))
    proxy.set_mode("up")
    before = _stats.get("http_analytics.points")
    exporter = HttpAnalyticsExporter(proxy.url + "/ingest", retry=FAST, spool_dir=tmp_path)
    try:
        assert _stats.get("http_analytics.spool_recovered") == 3
        assert exporter.force_flush(10)
        assert len(received("analytics", http_server)) == SPANS  # sent as before
        assert _stats.get("http_analytics.points") == before  # (their count is unknown)
        assert not list(tmp_path.glob("*.ready"))
    finally:
        exporter.shutdown()


def test_items_of_a_recovered_file_the_endpoint_refuses_are_counted_dropped(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.set_mode("down")
    assert killed_mid_outage("analytics", proxy.url, tmp_path) == 3
    proxy.set_mode("up")
    http_server.reply(Reply(status=400, body=b"bad points"))  # the oldest file is refused
    before = {
        k: _stats.get(k)
        for k in ("http_analytics.points", "dropped.rejected", "dropped.rejected.http_analytics")
    }
    exporter = HttpAnalyticsExporter(proxy.url + "/ingest", retry=FAST, spool_dir=tmp_path)
    try:
        assert exporter.force_flush(10)
        assert len(http_server.requests) == 3
        assert _stats.get("http_analytics.rejected") == 1
        # Not sent again (it would be refused again): its 250 points are dropped, and counted.
        assert _stats.get("dropped.rejected") - before["dropped.rejected"] == 250
        assert (
            _stats.get("dropped.rejected.http_analytics") - before["dropped.rejected.http_analytics"] == 250
        )
        assert _stats.get("http_analytics.points") - before["http_analytics.points"] == SPANS - 250
    finally:
        exporter.shutdown()


# -- the analytics exporter's requests --------------------------------------------------------


def _span(i: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "span",
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "parent_span_id": None if i % 3 else f"{i + 1:016x}",
        "name": "é" * 200 if i == 7 else f"op{i}",
        "kind": "server",
        "service": "s21",
        "environment": "prod",
        "start_time_unix_nano": 1_800_000_000_000_000_000 + i,
        "duration_ms": [1.5, float("inf"), 2, None, True][i % 5],
        "status": "error" if i % 4 == 0 else "ok",
        "category": "slow",
        "attributes": {"http.response.status_code": 200 if i % 2 else "500", "db.response.returned_rows": i},
        "events": [],
        "resource": {"host.name": "web-1"},
    }


def test_analytics_requests_carry_the_documented_points(http_server: RecordingServer) -> None:
    records = [_span(i) for i in range(600)]
    exporter = HttpAnalyticsExporter(http_server.url + "/ingest", retry=FAST)
    try:
        assert exporter.export(records) is True
    finally:
        exporter.shutdown()
    # 250 points per request at most (the Analytics Engine's limit per Worker invocation),
    # each request the JSON of to_data_point's points, gzipped.
    assert [len(r.json()["points"]) for r in http_server.requests] == [250, 250, 100]
    expected = [to_data_point(r) for r in records]
    for k, req in enumerate(http_server.requests):
        assert req.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(req.raw) == req.body == dumps({"points": expected[k * 250 : (k + 1) * 250]})
    point = json.loads(http_server.requests[0].body)["points"][1]
    assert point["doubles"][:2] == [0.0, 1_800_000_000_000.0]  # (an infinite duration is 0)
