"""ZipkinExporter against a real HTTP server on 127.0.0.1, and the v2 span shape."""

from __future__ import annotations

from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import RetryPolicy, ZipkinExporter
from pitchey_trace.exporters.zipkin import to_zipkin
from tests.integration.exporters.servers import RecordingServer, Reply

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
HEX = set("0123456789abcdef")


def test_spans_of_the_pipeline_reach_zipkin_as_v2_json(http_server: RecordingServer) -> None:
    exporter = ZipkinExporter(http_server.url + "/api/v2/spans", max_spans_per_request=2)
    pt.configure(service="pitch-api", exporters=[exporter])
    with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER, attributes={"http.route": "/pitches/{id}"}):
        with pt.span("SELECT pitches", kind=pt.SpanKind.CLIENT) as query:
            query.set_attribute("db.system.name", "postgresql")
            query.set_attribute("server.address", "10.0.0.5")
            query.set_attribute("server.port", 5432)
            query.add_event("retry", {"attempt": 2})
        with pt.span("charge", kind=pt.SpanKind.CLIENT, attributes={"server.address": "pay.example"}) as call:
            call.set_status("error", "card declined")
    pt.emit_audit("login", "session", "denied", category="security")  # not a span: not sent
    assert pt.force_flush(20)
    spans = [s for r in http_server.requests for s in r.json()]
    for r in http_server.requests:
        assert r.path == "/api/v2/spans"
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Content-Encoding"] == "gzip"
        assert len(r.json()) <= 2
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"GET /pitches/{id}", "SELECT pitches", "charge"}
    root, query_span, charge = by_name["GET /pitches/{id}"], by_name["SELECT pitches"], by_name["charge"]
    for s in spans:
        assert len(s["traceId"]) == 32
        assert set(s["traceId"]) <= HEX
        assert len(s["id"]) == 16
        assert set(s["id"]) <= HEX
        assert isinstance(s["timestamp"], int)
        assert s["timestamp"] > 1_600_000_000_000_000
        assert isinstance(s["duration"], int)
        assert s["duration"] >= 1
        assert s["localEndpoint"] == {"serviceName": "pitch-api"}
        assert all(isinstance(v, str) for v in s.get("tags", {}).values())
    assert "parentId" not in root
    assert root["kind"] == "SERVER"
    assert query_span["parentId"] == charge["parentId"] == root["id"]
    assert query_span["kind"] == "CLIENT"
    assert query_span["remoteEndpoint"] == {"ipv4": "10.0.0.5", "port": 5432}
    assert query_span["tags"]["server.port"] == "5432"
    assert query_span["annotations"][0]["value"] == '{"retry":{"attempt":2}}'
    assert charge["remoteEndpoint"] == {"serviceName": "pay.example"}
    assert charge["tags"]["error"] == "card declined"
    assert charge["tags"]["otel.status_code"] == "ERROR"
    assert pt.stats()["zipkin.spans"] == 3


def test_retries_and_a_dead_endpoint(http_server: RecordingServer) -> None:
    record = {
        "type": "span",
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "parent_span_id": None,
        "name": "job",
        "kind": "internal",
        "service": "svc",
        "start_time_unix_nano": 1_800_000_000_000_000_000,
        "end_time_unix_nano": 1_800_000_000_000_000_400,  # 0.4 us: lasts 1 us in Zipkin
        "status": "unset",
        "attributes": {"tags": ["a", "b"], "ok": True},
        "events": [],
    }
    http_server.reply(Reply(503))
    exporter = ZipkinExporter(http_server.url, retry=FAST, compress=False)
    assert exporter.export([record, {"type": "audit"}]) is True
    assert len(http_server.requests) == 2  # one retry
    [sent] = http_server.requests[1].json()
    assert "kind" not in sent  # an internal span has none
    assert sent["duration"] == 1
    assert sent["tags"] == {"tags": '["a","b"]', "ok": "true"}
    assert _stats.get("zipkin.retried") == 1
    dead = ZipkinExporter(
        "http://127.0.0.1:9/api/v2/spans", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    )
    assert dead.export([record]) is False
    assert _stats.get("zipkin.failed") == 1


def test_records_without_a_zipkin_form_and_bad_arguments() -> None:
    assert to_zipkin({"type": "rollup"}) is None
    assert to_zipkin({"type": "audit"}) is None
    with pytest.raises((TypeError, ValueError)):
        ZipkinExporter("not a url")
    with pytest.raises((TypeError, ValueError)):
        ZipkinExporter(max_spans_per_request=0)
    exporter: Any = ZipkinExporter()
    assert exporter.url == "http://localhost:9411/api/v2/spans"
    assert exporter.datasets == frozenset({"traces"})
