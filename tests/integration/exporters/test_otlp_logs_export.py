"""OTLPLogExporter behind a real pipeline, to real OTLP receivers on 127.0.0.1 (HTTP and gRPC),
decoded with the official opentelemetry-proto classes: audit records arrive as log records of
the trace they belong to, sanitized."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import OTLPLogExporter
from pitchey_trace.exporters.otlp_logs import EXPORT_METHOD
from pitchey_trace.web import export_logs, stop_export_logs
from tests.integration.exporters.servers import RecordingServer, Reply

pytestmark = pytest.mark.integration


def events() -> str:
    with pt.span("POST /login", kind=pt.SpanKind.SERVER) as span:
        pt.emit_audit("login", "/login", "bad_password", category="security", actor="ada@pitchey.example")
        pt.emit_audit("SELECT", "users", "success", category="data_access", attributes={"db.rows": 1})
    return span.trace_id_hex


def logs(msg: ExportLogsServiceRequest) -> list[Any]:
    return [log for rl in msg.resource_logs for sl in rl.scope_logs for log in sl.log_records]


def test_audit_records_arrive_as_log_records_of_their_trace(http_server: RecordingServer) -> None:
    answer = ExportLogsServiceResponse()
    answer.partial_success.rejected_log_records = 1
    http_server.reply(Reply(body=answer.SerializeToString()))
    pt.configure(service="pitch-api", exporters=[OTLPLogExporter(http_server.url)])
    trace_id = events()
    assert pt.force_flush(20)
    [req] = http_server.requests
    assert req.path == "/v1/logs"
    assert req.headers["Content-Type"] == "application/x-protobuf"
    security, access = logs(ExportLogsServiceRequest.FromString(req.body))
    assert {security.trace_id.hex(), access.trace_id.hex()} == {trace_id}
    assert (security.severity_text, security.event_name) == ("WARN", "pitchey_trace.audit.security")
    attrs = {kv.key: kv.value.string_value for kv in security.attributes}
    assert attrs["enduser.id"] == "[EMAIL]"  # (sanitized before any exporter sees it)
    assert "ada@pitchey.example" not in req.body.decode("latin-1")
    assert access.body.string_value == "SELECT -> success"
    assert _stats.get("otlp_logs.records") == 2
    assert _stats.get("otlp_logs.partial_rejected") == 1


def test_application_logs_arrive_with_their_trace(http_server: RecordingServer) -> None:
    """export_logs(): the application's own log records reach the log backend, sanitized, each
    linked to the span it was logged in."""
    pt.configure(service="pitch-api", exporters=[OTLPLogExporter(http_server.url)])
    export_logs("INFO")
    log = logging.getLogger("pitch.orders")
    log.setLevel(logging.INFO)
    try:
        with pt.span("POST /orders") as span:
            log.warning("order for %s failed", "ada@pitchey.example", extra={"order.id": 7})
        log.info("idle")
        assert pt.force_flush(20)
    finally:
        stop_export_logs()
    [req] = http_server.requests
    failed, idle = logs(ExportLogsServiceRequest.FromString(req.body))
    assert (failed.trace_id.hex(), failed.span_id.hex()) == (span.trace_id_hex, f"{span.span_id:016x}")
    assert failed.flags & 1
    assert (failed.severity_number, failed.severity_text) == (13, "WARNING")
    assert failed.body.string_value == "order for [EMAIL] failed"
    assert "ada@pitchey.example" not in req.body.decode("latin-1")
    attrs = {kv.key: kv.value for kv in failed.attributes}
    assert attrs["order.id"].int_value == 7
    assert attrs["logger.name"].string_value == "pitch.orders"
    assert (idle.trace_id, idle.body.string_value) == (b"", "idle")


def test_grpc_logs_service() -> None:
    received: list[ExportLogsServiceRequest] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append(ExportLogsServiceRequest.FromString(request))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service, method = EXPORT_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(export)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        pt.configure(
            service="pitch-api", exporters=[OTLPLogExporter(f"http://127.0.0.1:{port}", protocol="grpc")]
        )
        trace_id = events()
        assert pt.force_flush(20)
    finally:
        server.stop(None)
    [msg] = received
    assert [log.trace_id.hex() for log in logs(msg)] == [trace_id, trace_id]
