"""Session 16, against real HTTP servers on 127.0.0.1: the byte cap per request of the Zipkin
and analytics exporters through the whole pipeline (a large batch split, a span too large on
its own dropped and counted, the rest exported), and the payload spool refusing a request
larger than its whole cap without losing what it keeps."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter, RetryPolicy, ZipkinExporter, _http
from tests.integration.exporters.servers import FaultProxy, RecordingServer

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=2)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})


@pytest.fixture
def proxy(http_server: RecordingServer) -> Iterator[FaultProxy]:
    host, port = http_server.url.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)))
    yield p
    p.close()


def _spans(first: int, n: int, pad: int = 300) -> None:
    for i in range(first, first + n):
        with pt.span("job", attributes={"seq": i, "note": "n" * pad}):
            pass


def test_zipkin_splits_a_large_batch_and_drops_a_span_too_large_alone(
    http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = ZipkinExporter(http_server.url + "/api/v2/spans", max_request_bytes=4000, retry=FAST)
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    _spans(0, 30)
    with pt.span("huge", attributes={"seq": 999, "note": "h" * 6000}):
        pass
    _spans(30, 10)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert pt.force_flush(20)
    assert len(http_server.requests) > 3
    for req in http_server.requests:
        assert len(req.body) <= 4000  # (the JSON, before gzip)
    seqs = [int(s["tags"]["seq"]) for req in http_server.requests for s in req.json()]
    assert seqs == list(range(40))  # all but the huge one, in order
    assert _stats.get("zipkin.spans") == 40
    assert _stats.get("dropped.request_too_large") == 1
    assert _stats.get("dropped.request_too_large.zipkin") == 1
    assert _stats.get("exported.zipkin") == 40  # exported + dropped = what the exporter was handed
    assert _stats.get("dropped.export_failed") == 0
    assert pt.stats()["dropped"] == 1
    assert any("max_request_bytes (4000)" in r.getMessage() for r in caplog.records)


def test_analytics_splits_by_bytes_too(http_server: RecordingServer) -> None:
    def big_point(record: Any) -> dict[str, list[Any]] | None:
        if record.get("type") != "span":
            return None
        size = 9000 if record["attributes"].get("seq") == 7 else 400
        return {
            "indexes": ["jobs:job"],
            "blobs": ["span", "b" * size],
            "doubles": [float(record["attributes"]["seq"])],
        }

    exporter = HttpAnalyticsExporter(
        http_server.url + "/ingest", to_point=big_point, max_request_bytes=2000, retry=FAST
    )
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    _spans(0, 20, pad=0)
    assert pt.force_flush(20)
    assert len(http_server.requests) >= 5
    for req in http_server.requests:
        assert len(req.body) <= 2000
    got = [int(p["doubles"][0]) for req in http_server.requests for p in req.json()["points"]]
    assert got == [i for i in range(20) if i != 7]
    assert _stats.get("http_analytics.points") == 19
    assert _stats.get("http_analytics.too_large") == 1
    assert _stats.get("dropped.request_too_large.http_analytics") == 1
    assert _stats.get("exported.http_analytics") == 19


def test_a_common_batch_is_still_one_request(http_server: RecordingServer) -> None:
    pt.configure(service="jobs", exporters=[ZipkinExporter(http_server.url + "/api/v2/spans")], rollups=None)
    _spans(0, 200)
    assert pt.force_flush(20)
    assert sum(len(r.json()) for r in http_server.requests) == 200
    assert len(http_server.requests) == 1
    assert _stats.get("dropped.request_too_large") == 0


def test_a_request_larger_than_the_spool_is_given_up_and_the_kept_ones_arrive(
    http_server: RecordingServer, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.set_mode("down")
    exporter = ZipkinExporter(
        proxy.url + "/api/v2/spans", retry=FAST, spool_dir=tmp_path, spool_max_bytes=30_000
    )
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    _spans(0, 5)  # ~2 KB: kept
    pt.force_flush(10)
    assert len(list(tmp_path.glob("*.ready"))) == 1
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        _spans(100, 80)  # ~40 KB in one request: larger than the whole spool
        assert not pt.force_flush(10)  # (lost: the flush says so)
    assert len(list(tmp_path.glob("*.ready"))) == 1  # the kept request is still there
    assert _stats.get("zipkin.spool_oversize") == 1
    assert _stats.get("dropped.spool_cap") == 0
    assert _stats.get("dropped.export_failed.zipkin") == 80
    assert any("larger than the whole spool" in r.getMessage() for r in caplog.records)
    proxy.set_mode("up")
    assert pt.force_flush(10)
    got = sorted(int(s["tags"]["seq"]) for req in http_server.requests for s in req.json())
    assert got == list(range(5))


@pytest.mark.parametrize("spool", [True, False])
def test_the_failure_warning_says_whether_the_batch_went_to_the_spool(
    proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture, spool: bool
) -> None:
    proxy.set_mode("down")
    exporter = ZipkinExporter(proxy.url + "/api/v2/spans", retry=FAST, spool_dir=tmp_path if spool else None)
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        _spans(0, 1, pad=0)
        pt.force_flush(10)
    # (with a spool one attempt, then the spool; without, the retry schedule: FAST has 2)
    attempts = "after 1 attempt(s)" if spool else "after 2 attempt(s)"
    messages = [r.getMessage() for r in caplog.records if attempts in r.getMessage()]
    assert len(messages) == 1, [r.getMessage() for r in caplog.records]
    if spool:
        assert "a batch goes to the spool" in messages[0]
        assert _stats.get("zipkin.spooled") == 1
    else:
        assert "giving up a batch" in messages[0]
        assert _stats.get("dropped.export_failed") == 1
