"""Analytics Engine point mapping, retry policy and Retry-After parsing (no network here;
tests/integration/exporters/test_http_exporters.py runs the exporter against real servers)."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import HttpAnalyticsExporter
from pitchey_trace.exporters._http import RetryPolicy, parse_retry_after
from pitchey_trace.exporters.http_analytics import MAX_BLOBS, MAX_DOUBLES, to_data_point
from pitchey_trace.records import app_log_record

SPAN: dict[str, Any] = {
    "schema": 1,
    "type": "span",
    "trace_id": "ab" * 16,
    "span_id": "cd" * 8,
    "parent_span_id": None,
    "name": "GET /pitches/{id}",
    "kind": "server",
    "service": "api",
    "environment": "prod",
    "start_time_unix_nano": 1_800_000_000_123_000_000,
    "end_time_unix_nano": 1_800_000_000_173_000_000,
    "duration_ms": 50.0,
    "status": "error",
    "status_message": "boom",
    "category": "slow",
    "attributes": {
        "http.request.method": "GET",
        "http.route": "/pitches/{id}",
        "http.response.status_code": 500,
        "db.response.returned_rows": 7,
        "error.type": "ValueError",
    },
    "events": [{"name": "e", "time_unix_nano": 1, "attributes": {}}],
    "links": [],
    "resource": {"service.name": "api", "host.name": "web-1", "service.version": "2.0"},
}


def test_span_point_columns() -> None:
    p = to_data_point(SPAN)
    assert p is not None
    assert p["indexes"] == ["api:GET /pitches/{id}"]
    assert len(p["blobs"]) == MAX_BLOBS
    b, d = p["blobs"], p["doubles"]
    assert b[:10] == [
        "span",
        "api",
        "prod",
        "GET /pitches/{id}",
        "server",
        "error",
        "slow",
        "ab" * 16,
        "cd" * 8,
        "",
    ]
    assert b[10:12] == ["GET", "/pitches/{id}"]
    assert b[16:20] == ["ValueError", "boom", "2.0", "web-1"]
    assert d == [50.0, 1_800_000_000_123.0, 1.0, 500.0, 7.0, 1.0, 1.0, 1.0]


def test_rollup_and_audit_points() -> None:
    rollup = {
        "type": "rollup",
        "service": "api",
        "environment": "prod",
        "operation": "db",
        "kind": "client",
        "minute_start_unix_nano": 60_000_000_000,
        "interval_s": 60,
        "count": 10,
        "errors": 2,
        "duration_sum_ms": 30.0,
        "duration_min_ms": 1.0,
        "duration_max_ms": 9.0,
        "p50_ms": 2.0,
        "p95_ms": 8.0,
        "p99_ms": 9.0,
        "sketch": {},
    }
    p = to_data_point(rollup)
    assert p is not None
    assert p["blobs"] == ["rollup", "api", "prod", "db", "client"]
    assert p["doubles"] == [30.0, 60_000.0, 2.0, 0.0, 0.0, 10.0, 0.0, 0.0, 1.0, 9.0, 2.0, 8.0, 9.0, 60.0]
    audit = {
        "type": "audit",
        "service": "api",
        "environment": "prod",
        "action": "login",
        "category": "security",
        "outcome": "denied",
        "target": "session",
        "trace_id": None,
        "span_id": None,
        "actor": "u1",
        "time_unix_nano": 2_000_000,
    }
    a = to_data_point(audit)
    assert a is not None
    assert a["blobs"] == ["audit", "api", "prod", "login", "security", "denied", "session", "", "", "u1"]
    assert a["doubles"][1] == 2.0
    assert to_data_point({"type": "custom"}) is None


def test_log_points() -> None:
    log = app_log_record(
        time_unix_nano=3_000_000,
        severity_number=17,
        severity_text="ERROR",
        logger="payments",
        body="card declined",
        service="api",
        environment="prod",
        trace_id=0xAB,
        span_id=0xCD,
        attributes={"exception.type": "ValueError"},
    )
    p = to_data_point(log)
    assert p is not None
    assert p["indexes"] == ["api:payments"]
    ids = [f"{0xAB:032x}", f"{0xCD:016x}"]
    assert p["blobs"] == ["log", "api", "prod", "payments", "ERROR", "card declined", "ValueError", *ids]
    assert p["doubles"] == [0.0, 3.0, 1.0, 17.0, 0.0, 1.0]


def test_limits_index_96_bytes_on_a_character_boundary_and_blob_size() -> None:
    rec = dict(SPAN, service="é" * 60, name="x" * 1000)
    p = to_data_point(rec, max_blob_bytes=10)
    assert p is not None
    index = p["indexes"][0]
    assert len(index.encode()) <= 96
    assert index == "é" * 48  # 96 bytes of two-byte characters, none cut in half
    assert all(len(b.encode()) <= 10 for b in p["blobs"])
    assert len(p["doubles"]) <= MAX_DOUBLES
    weird = dict(SPAN, duration_ms=float("nan"), attributes={"http.response.status_code": "oops"})
    q = to_data_point(weird)
    assert q is not None
    assert q["doubles"][0] == 0.0
    assert q["doubles"][3] == 0.0


def test_exporter_options() -> None:
    exp = HttpAnalyticsExporter("http://127.0.0.1:9/x", token="t", datasets={"traces"})
    assert exp.datasets == frozenset({"traces"})
    assert exp._sender.headers["Authorization"] == "Bearer t"
    with pytest.raises(ConfigurationError):
        HttpAnalyticsExporter("ftp://nowhere")
    with pytest.raises(ConfigurationError):
        HttpAnalyticsExporter("http://127.0.0.1/x", max_points_per_request=0)


def test_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_ANALYTICS_TOKEN", "from-env")
    assert HttpAnalyticsExporter("http://127.0.0.1/x")._sender.headers["Authorization"] == "Bearer from-env"


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    from pitchey_trace import exporters

    assert exporters.RetryPolicy is RetryPolicy  # the public name
    p = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0, multiplier=2.0, jitter=0.5)
    for retry, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        waits = [p.backoff(retry) for _ in range(200)]
        assert all(base * 0.5 <= w <= base for w in waits)
        assert max(waits) - min(waits) > 0  # jittered
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(jitter=2)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_a_lone_surrogate_is_written_as_replacement_not_an_error() -> None:
    # Blob and index texts are cut by UTF-8 length: a string UTF-8 cannot carry once raised
    # here and cost the whole batch.
    p = to_data_point({**SPAN, "service": "api\ud800", "name": "GET \udcff" + "x" * 300})
    assert p is not None
    assert p["indexes"] == [("api\ufffd:GET \ufffd" + "x" * 300).encode()[:96].decode()]
    assert p["blobs"][1] == "api\ufffd"
    assert p["blobs"][3].startswith("GET \ufffdxxx")
    assert all(len(str(b).encode()) <= 256 for b in p["blobs"])
