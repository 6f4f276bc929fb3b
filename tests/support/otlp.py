"""Helpers for reading what the OTLP exporters send."""

from __future__ import annotations

import base64
from typing import Any


def base64_ids(node: Any) -> Any:
    """An OTLP JSON tree with its trace and span ids as base64: OTLP JSON writes them in hex,
    protobuf's own JSON parser reads bytes fields as base64 (everything else as it is)."""
    if isinstance(node, list):
        return [base64_ids(v) for v in node]
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId") else base64_ids(v)
            for k, v in node.items()
        }
    return node


#: Per signal: the Export*ServiceResponse class (module, name) and its partial success's count.
_RESPONSES = {
    "traces": ("opentelemetry.proto.collector.trace.v1.trace_service_pb2", "ExportTraceServiceResponse"),
    "logs": ("opentelemetry.proto.collector.logs.v1.logs_service_pb2", "ExportLogsServiceResponse"),
    "metrics": (
        "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
        "ExportMetricsServiceResponse",
    ),
}
REJECTED_FIELD = {
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
    "metrics": "rejected_data_points",
}


def partial_success_answer(
    signal: str, rejected: int, message: str = "", encoding: str = "protobuf"
) -> bytes:
    """A collector's successful answer for ``signal`` (``traces``, ``logs``, ``metrics``) with a
    partial success, written by the official opentelemetry-proto classes: binary
    (``encoding="protobuf"``) or protobuf's own JSON form (``"json"``: int64 as a string)."""
    import importlib

    from google.protobuf import json_format

    module, name = _RESPONSES[signal]
    answer = getattr(importlib.import_module(module), name)()
    setattr(answer.partial_success, REJECTED_FIELD[signal], rejected)
    answer.partial_success.error_message = message
    if encoding == "json":
        return json_format.MessageToJson(answer).encode()
    return bytes(answer.SerializeToString())
