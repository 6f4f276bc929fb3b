"""The analysis API under a real uvicorn server, called over HTTP with httpx."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import pitchey_trace as pt
from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from pitchey_trace.exporters import LocalArchiveExporter
from tests.integration.analysis.conftest import serve
from tests.support.analysis_data import HOSTILE_NAME, TraceData

pytestmark = pytest.mark.integration


def test_endpoints_answer_over_http(server: str, traces: TraceData) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/api/overview").json()["traces"] == 3
        found = client.get("/api/search", params={"status": "error"}).json()
        assert [t["trace_id"] for t in found] == [traces.payment]
        view = client.get(f"/api/traces/{traces.orders}").json()
        assert view["span_count"] == len(view["spans"]) == 11
        analysis = client.get(f"/api/traces/{traces.orders}/analysis").json()
        assert analysis["n_plus_one"][0]["count"] == 6
        assert client.get("/api/performance", params={"service": "payments"}).json()[0]["operation"] == (
            "POST /charge"
        )
        assert client.get("/api/errors").json()[0]["trace_ids"] == [traces.payment]

        bad = client.get("/api/search", params={"min_duration_ms": "slow"})
        assert bad.status_code == 400
        assert "min_duration_ms" in bad.json()["error"]
        missing = client.get("/api/traces/" + "ab" * 16)
        assert missing.status_code == 404
        assert "error" in missing.json()


def test_pages_and_assets_carry_the_security_headers(server: str, traces: TraceData) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        for path in ("/", f"/traces/{traces.orders}", "/static/app.js", "/static/style.css", "/api/search"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert "script-src 'self'" in response.headers["content-security-policy"], path
            assert response.headers["x-content-type-options"] == "nosniff", path
        hostile = client.get(f"/api/traces/{traces.hostile}")
        assert b"<img" not in hostile.content
        assert hostile.json()["spans"][0]["name"] == HOSTILE_NAME


def test_parallel_requests_get_the_same_answers(server: str, traces: TraceData) -> None:
    urls = [f"/api/traces/{traces.orders}", f"/api/traces/{traces.orders}/analysis", "/api/search"] * 8
    with httpx.Client(base_url=server, timeout=20) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client.get, urls))
    assert {r.status_code for r in answers} == {200}
    for i, response in enumerate(answers):
        assert response.content == answers[i % 3].content


class BlockingArchive(Archive):
    """Its search waits until released, like a query over a large archive."""

    entered: threading.Event
    release: threading.Event

    def search(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.entered.set()
        if not self.release.wait(20):
            raise RuntimeError("the test never released the search")
        return super().search(**kwargs)


def test_a_long_engine_call_does_not_block_other_requests(traces: TraceData) -> None:
    archive = BlockingArchive.from_records(traces.records)
    assert isinstance(archive, BlockingArchive)
    archive.entered, archive.release = threading.Event(), threading.Event()
    with serve(create_app(archive)) as url, httpx.Client(base_url=url, timeout=10) as client:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(client.get, "/api/search")
            try:
                assert archive.entered.wait(10), "the search never reached the engine"
                # The search is now running in a worker thread: the server still answers.
                assert client.get("/healthz").status_code == 200
                assert client.get("/api/overview").json()["spans"] == 16
                assert not slow.done()
            finally:
                archive.release.set()
            assert len(slow.result(20).json()) == 3


def test_serves_an_archive_directory_written_by_the_exporter(tmp_path: Path, traces: TraceData) -> None:
    exporter = LocalArchiveExporter(tmp_path / "archive")
    assert exporter.export(traces.records)
    exporter.shutdown(10)
    assert list((tmp_path / "archive" / "traces").rglob("*.log.gz"))
    with serve(create_app(Archive(tmp_path / "archive"))) as url, httpx.Client(base_url=url, timeout=10) as c:
        found = c.get("/api/search", params={"sort": "duration"}).json()
        assert [t["trace_id"] for t in found] == [traces.orders, traces.payment, traces.hostile]
        assert c.get(f"/api/traces/{traces.payment}").json()["services"] == ["payments", "shop-api"]
        assert c.get("/api/performance").json()[0]["source"] == "rollups"


@pytest.mark.parametrize(("interval", "late_trace_seen"), [(0, True), (None, False)])
def test_a_running_server_sees_traces_archived_after_it_started(
    tmp_path: Path, traces: TraceData, interval: float | None, late_trace_seen: bool
) -> None:
    root = tmp_path / "archive"
    exporter = LocalArchiveExporter(root)
    assert exporter.export(traces.records)
    exporter.shutdown(10)
    app = create_app(Archive(root), refresh_interval_s=interval)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert len(client.get("/api/search").json()) == 3
        pt.configure(service="late-service", exporters=[LocalArchiveExporter(root)], sample_rate=1.0)
        with pt.span("late work"):
            pass
        assert pt.force_flush(10)
        pt.shutdown(10)
        found = client.get("/api/search").json()
        assert ("late-service" in {t["service"] for t in found}) is late_trace_seen
        assert len(found) == (4 if late_trace_seen else 3)
