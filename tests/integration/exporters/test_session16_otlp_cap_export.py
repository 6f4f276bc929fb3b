"""Session 16, against real collectors on 127.0.0.1: ``max_request_bytes`` of the OTLP
exporters. OTLP/HTTP (protobuf and JSON; traces through the whole pipeline, logs): a large
batch goes as several requests within the cap, a span too large alone is dropped and counted,
the rest exported. OTLP/gRPC against a grpcio server whose ``max_receive_message_length`` is
small: without the cap the server refuses the export, with it everything arrives (traces and
metrics)."""

from __future__ import annotations

import json
import logging
import math
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._sketch import DurationSketch
from pitchey_trace.exporters import OTLPExporter, OTLPLogExporter, OTLPMetricsExporter, RetryPolicy, _http
from pitchey_trace.exporters import otlp_metrics as otlp_metrics_module
from pitchey_trace.exporters._grpc import EXPORT_METHOD
from tests.integration.exporters.servers import GrpcCollector, RecordingServer
from tests.support.otlp import base64_ids

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=2)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})


def _noise(rng: random.Random, n: int) -> str:
    """Text gzip does not shrink much (a server's limit applies to the message decompressed)."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def _spans(first: int, n: int, pad: int = 300, rng: random.Random | None = None) -> None:
    rng = rng or random.Random(first)
    for i in range(first, first + n):
        with pt.span("job", attributes={"seq": i, "note": _noise(rng, pad)}):
            pass


def _trace_seqs(request: ExportTraceServiceRequest) -> list[int]:
    return sorted(
        next(a.value.int_value for a in s.attributes if a.key == "seq")
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    )


# -- OTLP/HTTP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_traces_split_by_bytes_through_the_pipeline(
    http_server: RecordingServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    cap = 6_000
    exporter = OTLPExporter(
        http_server.url + "/v1/traces", protocol=protocol, max_request_bytes=cap, retry=FAST
    )
    pt.configure(service="jobs", exporters=[exporter], rollups=None)
    _spans(0, 30)
    with pt.span("huge", attributes={"seq": 999, "note": "h" * 8_000}):
        pass
    _spans(30, 10)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert pt.force_flush(20)
    assert len(http_server.requests) >= 3
    seqs: list[int] = []
    for req in http_server.requests:
        assert len(req.body) <= cap  # (the encoding, before gzip)
        if protocol == "http/json":
            message = json_format.Parse(json.dumps(base64_ids(req.json())), ExportTraceServiceRequest())
        else:
            message = ExportTraceServiceRequest.FromString(req.body)
        seqs += _trace_seqs(message)
    assert seqs == list(range(40))  # all but the huge one, in order
    assert max(len(r.body) for r in http_server.requests) >= 0.8 * cap  # (packed close to it)
    assert _stats.get("otlp.spans") == 40
    assert _stats.get("exported.otlp") == 40
    assert _stats.get("dropped.request_too_large.otlp") == 1
    assert _stats.get("dropped.export_failed") == 0
    assert any("max_request_bytes (6000)" in r.getMessage() for r in caplog.records)


def test_http_logs_split_by_bytes(http_server: RecordingServer) -> None:
    rng = random.Random(7)
    exporter = OTLPLogExporter(http_server.url + "/v1/logs", max_request_bytes=5_000, retry=FAST)
    records = [
        {
            "type": "audit",
            "service": "api",
            "environment": "prod",
            "category": "request",
            "action": f"GET /x/{i}",
            "target": _noise(rng, 200),
            "outcome": "200",
            "time_unix_nano": 10 + i,
            "attributes": {"seq": i},
        }
        for i in range(80)
    ]
    assert exporter.export(records) is True
    assert len(http_server.requests) >= 3
    seqs = []
    for req in http_server.requests:
        assert len(req.body) <= 5_000
        message = ExportLogsServiceRequest.FromString(req.body)
        seqs += [
            next(a.value.int_value for a in r.attributes if a.key == "seq")
            for rl in message.resource_logs
            for sl in rl.scope_logs
            for r in sl.log_records
        ]
    assert seqs == list(range(80))
    assert _stats.get("otlp_logs.records") == 80


# -- OTLP/gRPC: a server with a small message limit -------------------------------------------------

LIMIT = 16 * 1024


#: A server refusing any message over LIMIT bytes.
SMALL_MESSAGES = [("grpc.max_receive_message_length", LIMIT)]


@pytest.fixture
def trace_collector() -> Iterator[GrpcCollector]:
    c = GrpcCollector(EXPORT_METHOD, ExportTraceServiceRequest, options=SMALL_MESSAGES)
    yield c
    c.server.stop(None)


@pytest.fixture
def metrics_collector() -> Iterator[GrpcCollector]:
    c = GrpcCollector(otlp_metrics_module.EXPORT_METHOD, ExportMetricsServiceRequest, options=SMALL_MESSAGES)
    yield c
    c.server.stop(None)


def _records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    return [
        {
            "type": "span",
            "trace_id": f"{i + 1:032x}",
            "span_id": f"{i + 1:016x}",
            "name": "job",
            "kind": "internal",
            "start_time_unix_nano": 1,
            "end_time_unix_nano": 2,
            "status": "unset",
            "attributes": {"seq": i, "note": _noise(rng, 400)},
            "resource": {"service.name": "jobs"},
        }
        for i in range(n)
    ]


def test_grpc_a_request_over_the_server_limit_is_refused_without_the_cap(
    trace_collector: GrpcCollector,
) -> None:
    records = _records(100)  # (about 45 KB, the server takes 16 KiB)
    url = f"http://127.0.0.1:{trace_collector.port}"
    uncapped = OTLPExporter(url, protocol="grpc", retry=FAST)
    assert not uncapped.export(records)  # RESOURCE_EXHAUSTED: refused, not retried
    assert trace_collector.requests == []
    assert _stats.get("otlp.rejected") == 1
    uncapped.shutdown()
    capped = OTLPExporter(url, protocol="grpc", retry=FAST, max_request_bytes=LIMIT)
    assert capped.export(records) is True
    capped.shutdown()
    assert len(trace_collector.requests) >= 3
    assert all(size <= LIMIT for size in trace_collector.sizes)
    assert [i for r in trace_collector.requests for i in _trace_seqs(r)] == list(range(100))
    assert len(trace_collector.requests) <= math.ceil(sum(trace_collector.sizes) / LIMIT) + 1  # (packed)


def _rollup(op: int) -> dict[str, Any]:
    durations = [1.0 + (op * 7 + k * 13) % 900 for k in range(40)]
    sketch = DurationSketch()
    sketch.add_many(durations)
    return {
        "schema": 1,
        "type": "rollup",
        "service": "jobs",
        "environment": "test",
        "operation": f"op-{op}-{'x' * 60}",
        "kind": "server",
        "minute_start_unix_nano": 1_700_000_040_000_000_000,
        "interval_s": 60,
        "count": len(durations),
        "errors": 0,
        "duration_sum_ms": math.fsum(durations),
        "duration_min_ms": min(durations),
        "duration_max_ms": max(durations),
        "sketch": sketch.to_dict(),
    }


def test_grpc_metrics_over_the_server_limit_go_with_the_cap(metrics_collector: GrpcCollector) -> None:
    url = f"http://127.0.0.1:{metrics_collector.port}"
    rollups = [_rollup(op) for op in range(150)]
    uncapped = OTLPMetricsExporter(url, protocol="grpc", retry=FAST, sdk_stats=False, exemplars=False)
    uncapped.export(rollups)
    assert uncapped.force_flush(20)
    uncapped.shutdown()
    assert metrics_collector.requests == []
    assert _stats.get("otlp_metrics.rejected") == 1
    capped = OTLPMetricsExporter(url, protocol="grpc", retry=FAST, max_request_bytes=LIMIT, exemplars=False)
    capped.bind_resource({"service.name": "jobs"})
    capped.export(rollups)
    assert capped.force_flush(20)
    capped.shutdown()
    assert len(metrics_collector.requests) >= 3
    assert all(size <= LIMIT for size in metrics_collector.sizes)
    names = [
        next(a.value.string_value for a in p.attributes if a.key == "span.name")
        for r in metrics_collector.requests
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name.startswith("traces.")
        for p in getattr(m, m.WhichOneof("data")).data_points
    ]
    assert sorted(set(names)) == sorted(r["operation"] for r in rollups)
    assert len(names) == 150 * 2  # (a calls point and a duration point per series, each once)
    assert _stats.get("dropped.request_too_large") == 0
