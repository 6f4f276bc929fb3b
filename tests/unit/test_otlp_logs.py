"""OTLPLogExporter's log records from audit records, decoded with the official
opentelemetry-proto classes (binary, and the JSON form through protobuf's own parser)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace.exporters import OTLPLogExporter
from pitchey_trace.exporters._otlp_proto import encode_node
from pitchey_trace.exporters.otlp import json_node
from pitchey_trace.exporters.otlp_logs import _SCHEMA, log_record
from pitchey_trace.records import app_log_record
from tests.support.otlp import base64_ids

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def audit(category: str = "request", outcome: str = "200", **extra: Any) -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "audit",
        "category": category,
        "time_unix_nano": 1_800_000_000_000_000_000,
        "trace_id": TRACE,
        "span_id": SPAN,
        "service": "pitch-api",
        "environment": "prod",
        "actor": "u-42",
        "action": "GET /pitches/{id}",
        "target": "/pitches/{id}",
        "outcome": outcome,
        "attributes": {"http.request.method": "GET", "client.address": "10.0.0.7"},
        **extra,
    }


def exporter(**kwargs: Any) -> OTLPLogExporter:
    exp = OTLPLogExporter("http://127.0.0.1:9/v1/logs", **kwargs)
    exp.bind_resource({"service.name": "pitch-api", "service.instance.id": "i-1"})
    return exp


def decoded(records: list[dict[str, Any]]) -> ExportLogsServiceRequest:
    tree = exporter().request(records)
    msg = ExportLogsServiceRequest.FromString(bytes(encode_node(_SCHEMA, "request", tree)))
    from_json = json_format.Parse(
        dumps(base64_ids(json_node(_SCHEMA, "request", tree))), ExportLogsServiceRequest()
    )
    assert from_json == msg
    return msg


def test_an_audit_record_becomes_a_log_record() -> None:
    msg = decoded([audit()])
    [rl] = msg.resource_logs
    resource = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
    assert resource["service.instance.id"] == "i-1"
    assert resource["deployment.environment.name"] == "prod"
    [log] = rl.scope_logs[0].log_records
    assert log.time_unix_nano == 1_800_000_000_000_000_000
    assert log.observed_time_unix_nano > log.time_unix_nano - 10**18
    assert (log.severity_number, log.severity_text) == (9, "INFO")
    assert log.body.string_value == "GET /pitches/{id} -> 200"
    assert log.event_name == "pitchey_trace.audit.request"
    assert (log.trace_id.hex(), log.span_id.hex()) == (TRACE, SPAN)
    attrs = {kv.key: kv.value.string_value for kv in log.attributes}
    assert attrs["audit.category"] == "request"
    assert attrs["audit.target"] == "/pitches/{id}"
    assert attrs["enduser.id"] == "u-42"
    assert attrs["http.request.method"] == "GET"


@pytest.mark.parametrize(
    ("category", "outcome", "severity"),
    [
        ("request", "200", "INFO"),
        ("request", "404", "WARN"),
        ("request", "503", "ERROR"),
        ("security", "invalid_token", "WARN"),
        ("security", "403", "WARN"),
        ("data_access", "success", "INFO"),
        ("data_access", "error", "ERROR"),
    ],
)
def test_severity(category: str, outcome: str, severity: str) -> None:
    log = log_record(audit(category, outcome), 0)
    assert log is not None
    assert log["severityText"] == severity


def test_without_trace_or_actor_the_fields_are_left_out() -> None:
    log = log_record(audit(trace_id=None, span_id=None, actor=None), 0)
    assert log is not None
    assert "traceId" not in log
    assert "spanId" not in log
    assert "enduser.id" not in log["attributes"]


def test_other_and_malformed_records_are_skipped_and_counted() -> None:
    _stats.reset()
    broken = {k: v for k, v in audit().items() if k != "action"}
    msg = decoded([audit(), broken, {"type": "span", "name": "x"}])
    assert len(msg.resource_logs[0].scope_logs[0].log_records) == 1
    assert _stats.get("otlp_logs.bad_record") == 1
    assert exporter().export([{"type": "span"}, {"type": "rollup"}]) is True
    assert _stats.get("otlp_logs.skipped") == 2


def app_log() -> dict[str, Any]:
    return app_log_record(
        time_unix_nano=1_800_000_000_000_000_000,
        severity_number=13,
        severity_text="WARNING",
        logger="pitch.orders",
        body="stock low for pitch 7",
        service="pitch-api",
        environment="prod",
        trace_id=int(TRACE, 16),
        span_id=int(SPAN, 16),
        trace_flags=1,
        attributes={"code.line.number": 12, "order.id": 7},
    )


def test_an_application_log_record_becomes_a_log_record() -> None:
    [log] = decoded([app_log()]).resource_logs[0].scope_logs[0].log_records
    assert (log.time_unix_nano, log.severity_number, log.severity_text) == (
        1_800_000_000_000_000_000,
        13,
        "WARNING",
    )
    assert log.body.string_value == "stock low for pitch 7"
    assert (log.trace_id.hex(), log.span_id.hex(), log.flags) == (TRACE, SPAN, 1)
    attrs = {kv.key: kv.value for kv in log.attributes}
    assert attrs["logger.name"].string_value == "pitch.orders"
    assert attrs["code.line.number"].int_value == 12
    assert log.event_name == ""  # (an audit record's has one)
    outside = log_record(app_log_record(
        time_unix_nano=1, severity_number=9, severity_text="INFO", logger="x", body="b", service="s",
        environment="e",
    ), 0)  # fmt: skip
    assert outside is not None
    assert "traceId" not in outside
    assert "flags" not in outside
    broken = {k: v for k, v in app_log().items() if k != "body"}
    assert log_record(broken, 0) is None


def test_endpoint_from_the_logs_variables_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    assert OTLPLogExporter().endpoint == "http://localhost:4318/v1/logs"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert OTLPLogExporter().endpoint == "http://collector:4318/v1/logs"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9000/in")
    assert OTLPLogExporter().endpoint == "http://logs:9000/in"
    assert OTLPLogExporter().datasets == frozenset({"audit", "logs"})


def test_otel_logs_exporter_adds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace import _config

    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    [exp] = _config._logs_exporters_from_env()
    assert isinstance(exp, OTLPLogExporter)
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "console")  # (another logs SDK's: ignored)
    assert _config._logs_exporters_from_env() == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_records_per_request": 0}, ValueError),
        ({"protocol": "smoke"}, ValueError),
        ({"name": ""}, TypeError),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        OTLPLogExporter("http://127.0.0.1:9", **kwargs)
