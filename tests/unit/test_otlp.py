"""OTLP JSON encoding (checked with the official proto classes) and endpoint configuration."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pitchey_trace._json import dumps, loads
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import OTLPExporter
from pitchey_trace.exporters.otlp import any_value, encode_otlp_json


def rec(i: int, resource: dict[str, Any], **kw: Any) -> dict[str, Any]:
    base = {
        "type": "span",
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "parent_span_id": None,
        "name": f"s{i}",
        "kind": "consumer",
        "start_time_unix_nano": 10,
        "end_time_unix_nano": 20,
        "status": "ok",
        "status_message": None,
        "attributes": {},
        "events": [],
        "links": [],
        "resource": resource,
        "service": resource.get("service.name", "x"),
    }
    base.update(kw)
    return base


def parse(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    def fix(o: Any) -> Any:
        if isinstance(o, dict):
            return {
                k: base64.b64encode(bytes.fromhex(v)).decode()
                if k.endswith(("traceId", "spanId"))
                else fix(v)
                for k, v in o.items()
            }
        return [fix(v) for v in o] if isinstance(o, list) else o

    return json_format.ParseDict(fix(loads(dumps(doc))), ExportTraceServiceRequest())


def test_spans_grouped_by_resource_with_enums_and_ids() -> None:
    r1, r2 = {"service.name": "a"}, {"service.name": "b", "k": 1}
    doc = encode_otlp_json(
        [
            rec(1, r1),
            rec(2, r2),
            rec(3, dict(r1), kind="producer", status="error", status_message="x"),
            {"type": "audit"},
        ]
    )
    msg = parse(doc)
    assert len(msg.resource_spans) == 2
    a = msg.resource_spans[0]
    assert [s.name for s in a.scope_spans[0].spans] == ["s1", "s3"]  # equal resources share a group
    s1, s3 = a.scope_spans[0].spans
    assert s1.kind == Span.SPAN_KIND_CONSUMER
    assert s3.kind == Span.SPAN_KIND_PRODUCER
    assert s1.status.code == 1
    assert s3.status.code == 2
    assert s3.status.message == "x"
    assert s1.trace_id == (1).to_bytes(16, "big")
    assert s1.start_time_unix_nano == 10
    assert (
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"] == "10"
    )  # int64 as string


def test_any_value_covers_every_attribute_type() -> None:
    assert any_value("s") == {"stringValue": "s"}
    assert any_value(True) == {"boolValue": True}
    assert any_value(7) == {"intValue": "7"}
    assert any_value(1 << 70) == {"stringValue": str(1 << 70)}
    assert any_value(0.25) == {"doubleValue": 0.25}
    assert any_value(float("inf")) == {"doubleValue": "Infinity"}
    assert any_value(float("nan")) == {"doubleValue": "NaN"}
    assert any_value([1, "a"]) == {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "a"}]}}
    assert any_value({"k": False}) == {
        "kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}
    }
    assert any_value(None) == {}
    assert any_value(b"x") == {"stringValue": "x"}
    doc = encode_otlp_json(
        [rec(1, {"service.name": "a"}, attributes={"n": float("nan"), "l": [0.5], "kv": {"a": 1}})]
    )
    attrs = {kv.key: kv.value for kv in parse(doc).resource_spans[0].scope_spans[0].spans[0].attributes}
    assert attrs["n"].double_value != attrs["n"].double_value  # NaN survives the proto3 JSON mapping
    assert attrs["l"].array_value.values[0].double_value == 0.5
    assert attrs["kv"].kvlist_value.values[0].value.int_value == 1


def test_endpoint_headers_and_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    assert OTLPExporter().endpoint == "http://localhost:4318/v1/traces"
    assert OTLPExporter("http://c:4318").endpoint == "http://c:4318/v1/traces"
    assert OTLPExporter("http://c:4318/custom").endpoint == "http://c:4318/custom"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert OTLPExporter().endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/otlp/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x=1,broken")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")
    exp = OTLPExporter()
    assert exp.endpoint == "http://tempo:4318/otlp/v1/traces"
    assert exp._sender.headers["api-key"] == "a b"
    assert exp._sender.headers["x"] == "1"
    assert "Content-Encoding" not in exp._sender.headers
    assert exp._sender.timeout_s == 2.5
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError):
        OTLPExporter()
    with pytest.raises(ConfigurationError):
        OTLPExporter("http://c/v1/traces", compression="zstd")
