"""With a ``spool_dir``, an HTTP exporter facing a failing endpoint tries a batch once and keeps
it on disk, and once an attempt failed, new batches go to the spool without a request: the
export worker is never held through a retry schedule (5 attempts
x ``timeout_s`` against an endpoint that accepts and never answers) while its queue overflows.
Without a spool the retry schedule is unchanged. Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter
from pitchey_trace.exporters._http import RetryPolicy
from tests.integration.exporters.servers import RecordingServer, Reply

pytestmark = pytest.mark.integration

HUNG = Reply(hang=60.0)  # accepts the request, answers only once released


def _record(seq: int) -> dict[str, Any]:
    return {"schema": 1, "type": "span", "service": "s19", "name": f"op{seq}", "status": "ok"}


def _names(server: RecordingServer, hung: int) -> list[str]:
    """The points the server answered (after the first ``hung`` requests, which it held)."""
    return [p["blobs"][3] for req in server.requests[hung:] for p in req.json()["points"]]


def _files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.ready"))


def test_a_hung_endpoint_costs_one_request_and_later_batches_go_to_the_spool(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    http_server.reply(*[HUNG] * 10)
    spool = tmp_path / "spool"
    # (a long, fixed backoff: the later batches come well within it)
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=5.0, multiplier=1.0, jitter=0.0)
    exporter = HttpAnalyticsExporter(http_server.url + "/ingest", timeout_s=0.3, retry=retry, spool_dir=spool)
    try:
        for seq in range(5):
            assert exporter.export([_record(seq)]) is True  # kept: not a loss
        assert len(http_server.requests) == 1  # one attempt, then the spool (no retry schedule)
        assert _stats.get("http_analytics.requests") == 1
        assert _stats.get("http_analytics.spooled") == 5
        assert len(_files(spool)) == 5
        assert _stats.get("dropped.export_failed") == 0
        http_server.release.set()  # (the endpoint answers again)
        with http_server._cond:
            http_server.script.clear()
        assert exporter.force_flush(10) is True  # (a flush retries at once)
        assert _names(http_server, 1) == [f"op{i}" for i in range(5)]  # oldest first, each once
        assert _files(spool) == []
        assert _stats.get("http_analytics.points") == 5
    finally:
        exporter.shutdown(1.0)


def test_without_a_spool_the_retry_schedule_is_kept(http_server: RecordingServer) -> None:
    http_server.reply(HUNG, HUNG, HUNG)
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)
    exporter = HttpAnalyticsExporter(http_server.url + "/ingest", timeout_s=0.3, retry=retry)
    try:
        assert exporter.export([_record(0)]) is False  # given up after its attempts
        assert len(http_server.requests) == 3
        assert _stats.get("http_analytics.failed") == 1
    finally:
        http_server.release.set()
        exporter.shutdown(1.0)


# -- the per-point cost (to_data_point) -------------------------------------------------------


def test_ascii_blobs_are_not_encoded_to_be_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace.exporters import http_analytics

    calls: list[str] = []
    measure = http_analytics._truncate

    def counted(text: str, limit: int) -> str:
        calls.append(text)
        return measure(text, limit)

    monkeypatch.setattr(http_analytics, "_truncate", counted)
    record = {**_record(1), "trace_id": "ab" * 16, "span_id": "cd" * 8, "duration_ms": 1.5}
    point = http_analytics.to_data_point(record)
    assert point is not None
    assert calls == []  # 21 short ASCII strings: none encoded (each was, once per point)
    assert point["indexes"] == ["s19:op1"]
    assert point["blobs"][:4] == ["span", "s19", "", "op1"]
    # Anything else is still cut at a UTF-8 character boundary, lone surrogates made U+FFFD.
    long_ascii, accented, surrogate = "a" * 300, "é" * 200, "x\ud800y"
    point = http_analytics.to_data_point(
        {**record, "name": long_ascii, "status_message": accented, "kind": surrogate, "status": 42}
    )
    assert point is not None
    assert point["blobs"][3] == "a" * 256
    assert point["blobs"][17] == "é" * 128  # (2 bytes each)
    assert point["blobs"][4] == "x\ufffdy"
    assert point["blobs"][5] == "42"
    assert point["indexes"] == ["s19:" + "a" * 92]
    assert len(calls) == 4  # (the long, the accented, the surrogate and the index)
