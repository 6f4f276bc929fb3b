"""OTLPMetricsExporter behind a real pipeline, to real servers on 127.0.0.1 (OTLP/HTTP with
binary protobuf and JSON, OTLP/gRPC), decoded with the official opentelemetry-proto classes:
the metrics count every span, sampled or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import InMemoryExporter, OTLPMetricsExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters.otlp_metrics import CALLS_METRIC, DURATION_METRIC, EXPORT_METHOD
from tests.integration.exporters.servers import RecordingServer, Reply

pytestmark = pytest.mark.integration


def traffic(n: int, errors: int) -> None:
    """``n`` requests, the first ``errors`` of them failing, each with a database call."""
    for i in range(n):
        with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER) as span:
            with pt.span("SELECT pitches", kind=pt.SpanKind.CLIENT):
                pass
            if i < errors:
                span.set_status("error", "boom")


def metrics(msg: ExportMetricsServiceRequest) -> dict[str, Any]:
    return {m.name: m for rm in msg.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def attrs(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def calls(msg: ExportMetricsServiceRequest) -> dict[tuple[str, str], int]:
    return {
        (attrs(p)["span.name"], attrs(p)["status.code"]): p.as_int
        for p in metrics(msg)[CALLS_METRIC].sum.data_points
    }


def test_every_span_is_counted_at_a_low_sample_rate(http_server: RecordingServer) -> None:
    spans = InMemoryExporter()
    pt.configure(
        service="pitch-api",
        sample_rate=0.1,
        keep_errors=False,
        slow_threshold_ms=None,
        exporters=[spans, OTLPMetricsExporter(http_server.url)],
    )
    traffic(200, errors=9)
    assert pt.force_flush(20)
    assert http_server.wait_requests(1)
    [req] = http_server.requests
    assert req.path == "/v1/metrics"
    assert req.headers["Content-Type"] == "application/x-protobuf"
    assert req.headers.get("Content-Encoding") == "gzip"
    msg = ExportMetricsServiceRequest.FromString(req.body)
    assert calls(msg) == {
        ("GET /pitches/{id}", "STATUS_CODE_UNSET"): 191,
        ("GET /pitches/{id}", "STATUS_CODE_ERROR"): 9,
        ("SELECT pitches", "STATUS_CODE_UNSET"): 200,
    }
    sampled = [r for r in spans.records if r["type"] == "span"]
    assert len(sampled) < 200  # (the traces were sampled; the metrics were not)
    [rm] = msg.resource_metrics
    resource = {kv.key: kv.value for kv in rm.resource.attributes}
    assert resource["service.instance.id"].string_value == sampled[0]["resource"]["service.instance.id"]
    hist = {
        (attrs(p)["span.name"], attrs(p)["status.code"]): p
        for p in metrics(msg)[DURATION_METRIC].exponential_histogram.data_points
    }
    # Durations by status, as the calls: every span counted, the errors apart.
    assert {key: p.count for key, p in hist.items()} == calls(msg)
    ok, failed = (
        hist[("GET /pitches/{id}", "STATUS_CODE_UNSET")],
        hist[("GET /pitches/{id}", "STATUS_CODE_ERROR")],
    )
    assert failed.zero_count + sum(failed.positive.bucket_counts) == 9
    # The exemplar is the slowest span that was exported: its trace is in the trace backend.
    [exemplar] = ok.exemplars
    exported = {(r["trace_id"], r["span_id"]): r for r in sampled}
    linked = exported[(exemplar.trace_id.hex(), exemplar.span_id.hex())]
    assert (linked["name"], linked["status"]) == ("GET /pitches/{id}", "unset")
    assert exemplar.as_double == pytest.approx(
        max(r["duration_ms"] for r in sampled if r["name"] == "GET /pitches/{id}" and r["status"] != "error")
    )
    # The errors' point links to an error span, when one was exported (sampled at 10%).
    sampled_errors = {(r["trace_id"], r["span_id"]) for r in sampled if r["status"] == "error"}
    assert len(failed.exemplars) == min(1, len(sampled_errors))
    assert {(e.trace_id.hex(), e.span_id.hex()) for e in failed.exemplars} <= sampled_errors
    assert ok.max >= hist[("SELECT pitches", "STATUS_CODE_UNSET")].max  # (each request holds its query)
    # The SDK's own counters went along.
    assert metrics(msg)["pitchey_trace.accepted"].sum.data_points[0].as_int >= 400
    assert _stats.get("otlp_metrics.points") > 0


def test_json_protocol(http_server: RecordingServer) -> None:
    pt.configure(
        service="pitch-api",
        exporters=[OTLPMetricsExporter(http_server.url, protocol="http/json", histogram="explicit")],
    )
    traffic(20, errors=2)
    assert pt.force_flush(20)
    assert http_server.wait_requests(1)
    [req] = http_server.requests
    assert req.headers["Content-Type"] == "application/json"
    msg = json_format.Parse(req.body, ExportMetricsServiceRequest())
    assert calls(msg)[("GET /pitches/{id}", "STATUS_CODE_ERROR")] == 2
    points = {
        attrs(p)["status.code"]: p
        for p in metrics(msg)[DURATION_METRIC].histogram.data_points
        if attrs(p)["span.name"] == "GET /pitches/{id}"
    }
    assert {status: (sum(p.bucket_counts), p.count) for status, p in points.items()} == {
        "STATUS_CODE_UNSET": (18, 18),
        "STATUS_CODE_ERROR": (2, 2),
    }
    assert all(len(p.explicit_bounds) == len(p.bucket_counts) - 1 for p in points.values())


def test_a_lost_request_is_made_up_by_the_next_cumulative_one(http_server: RecordingServer) -> None:
    http_server.reply(Reply(status=500))  # (not retried: the request is given up)
    pt.configure(
        service="pitch-api",
        exporters=[OTLPMetricsExporter(http_server.url, retry=RetryPolicy(max_attempts=1), sdk_stats=False)],
    )
    traffic(30, errors=0)
    pt.force_flush(20)
    traffic(12, errors=1)
    assert pt.force_flush(20)
    assert http_server.wait_requests(2)
    first, second = (ExportMetricsServiceRequest.FromString(r.body) for r in http_server.requests)
    assert calls(first)[("GET /pitches/{id}", "STATUS_CODE_UNSET")] == 30
    assert calls(second)[("GET /pitches/{id}", "STATUS_CODE_UNSET")] == 30 + 11  # running totals
    assert calls(second)[("GET /pitches/{id}", "STATUS_CODE_ERROR")] == 1
    assert _stats.get("otlp_metrics.failed") == 1


def test_partial_success_is_counted(http_server: RecordingServer) -> None:
    answer = ExportMetricsServiceResponse()
    answer.partial_success.rejected_data_points = 3
    http_server.reply(Reply(body=answer.SerializeToString()))
    pt.configure(service="pitch-api", exporters=[OTLPMetricsExporter(http_server.url)])
    traffic(5, errors=0)
    assert pt.force_flush(20)
    assert _stats.get("otlp_metrics.partial_rejected") == 3


@pytest.fixture
def grpc_collector() -> Iterator[tuple[int, list[tuple[ExportMetricsServiceRequest, dict[str, str]]]]]:
    received: list[tuple[ExportMetricsServiceRequest, dict[str, str]]] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append(
            (ExportMetricsServiceRequest.FromString(request), dict(context.invocation_metadata()))
        )
        return ExportMetricsServiceResponse().SerializeToString()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service, method = EXPORT_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(export)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, received
    server.stop(None)


def test_grpc_metrics_service(
    grpc_collector: tuple[int, list[tuple[ExportMetricsServiceRequest, dict[str, str]]]],
) -> None:
    port, received = grpc_collector
    exporter = OTLPMetricsExporter(
        f"http://127.0.0.1:{port}", protocol="grpc", temporality="delta", headers={"X-Tenant": "growth"}
    )
    pt.configure(service="pitch-api", exporters=[exporter])
    traffic(15, errors=4)
    assert pt.force_flush(20)
    [(msg, metadata)] = received
    assert metadata["x-tenant"] == "growth"
    assert calls(msg)[("GET /pitches/{id}", "STATUS_CODE_ERROR")] == 4
    assert metrics(msg)[CALLS_METRIC].sum.aggregation_temporality == 1  # delta


def test_a_hanging_endpoint_holds_up_nothing(http_server: RecordingServer) -> None:
    """While a request hangs, the exporter keeps taking spans and rollups in at once (its
    queue in the pipeline stays empty), and the next request carries every count."""
    http_server.reply(Reply(hang=30.0))
    exporter = OTLPMetricsExporter(http_server.url, timeout_s=30.0, sdk_stats=False)
    pt.configure(service="pitch-api", exporter_queue_size=200, schedule_delay_ms=20, exporters=[exporter])
    traffic(10, errors=0)
    pipeline = pt._config._TRACER.pipeline  # type: ignore[attr-defined]
    assert pipeline is not None
    pipeline.force_flush(0.5)  # (the rollups go out now; the request hangs)
    assert http_server.wait_requests(1)
    [worker] = pipeline.workers
    for _ in range(20):  # 2,000 spans through a 200-record queue while the request hangs
        traffic(50, errors=0)  # (100 spans a burst)
        deadline = time.monotonic() + 10
        while (pipeline.queue or worker._pending) and time.monotonic() < deadline:  # (both drained)
            time.sleep(0.01)
    assert _stats.get("dropped.exporter_queue_full.otlp_metrics") == 0
    assert len(http_server.requests) == 1  # (still the one hanging request)
    http_server.release.set()
    assert pt.force_flush(20)
    last = ExportMetricsServiceRequest.FromString(http_server.requests[-1].body)
    assert calls(last)[("GET /pitches/{id}", "STATUS_CODE_UNSET")] == 1010
    assert calls(last)[("SELECT pitches", "STATUS_CODE_UNSET")] == 1010


def test_delta_intervals_of_a_failed_request_go_with_the_next(http_server: RecordingServer) -> None:
    http_server.reply(Reply(status=503))
    exporter = OTLPMetricsExporter(
        http_server.url, temporality="delta", retry=RetryPolicy(max_attempts=1), sdk_stats=False
    )
    pt.configure(service="pitch-api", exporters=[exporter])
    traffic(7, errors=0)
    pt.force_flush(20)
    traffic(5, errors=0)
    assert pt.force_flush(20)
    assert http_server.wait_requests(2)
    second = ExportMetricsServiceRequest.FromString(http_server.requests[1].body)
    points = [
        p
        for p in metrics(second)[CALLS_METRIC].sum.data_points
        if attrs(p)["span.name"] == "GET /pitches/{id}"
    ]
    assert sorted(p.as_int for p in points) == [5, 7]  # (both intervals, each as it was)


def test_a_refused_request_is_not_sent_again(http_server: RecordingServer) -> None:
    http_server.reply(Reply(status=400, body=b'{"error": "bad"}'))
    pt.configure(
        service="pitch-api",
        exporters=[OTLPMetricsExporter(http_server.url, temporality="delta", sdk_stats=False)],
    )
    traffic(3, errors=0)
    pt.force_flush(20)
    traffic(2, errors=0)
    assert pt.force_flush(20)
    assert http_server.wait_requests(2)
    second = ExportMetricsServiceRequest.FromString(http_server.requests[1].body)
    assert [p.as_int for p in metrics(second)[CALLS_METRIC].sum.data_points] == [2, 2]  # (both span names)
    assert _stats.get("otlp_metrics.rejected") == 1


def test_a_forked_child_sends_its_own_series(http_server: RecordingServer) -> None:
    import os

    pt.configure(service="pitch-api", exporters=[OTLPMetricsExporter(http_server.url, sdk_stats=False)])
    traffic(20, errors=0)
    assert pt.force_flush(20)  # (the parent's sender thread is running)
    pid = os.fork()
    if pid == 0:  # the child: its counts only, from zero, under its own instance id
        code = 1
        try:
            traffic(3, errors=1)
            code = 0 if pt.shutdown(20) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    traffic(5, errors=0)
    assert pt.shutdown(20)
    requests = [ExportMetricsServiceRequest.FromString(r.body) for r in http_server.requests]
    by_instance: dict[str, list[ExportMetricsServiceRequest]] = {}
    for msg in requests:
        [rm] = msg.resource_metrics
        instance = {kv.key: kv.value.string_value for kv in rm.resource.attributes}["service.instance.id"]
        by_instance.setdefault(instance, []).append(msg)
    assert len(by_instance) == 2
    child = next(msgs for msgs in by_instance.values() if len(msgs) == 1)
    parent = next(msgs for msgs in by_instance.values() if len(msgs) == 2)
    assert calls(child[0])[("GET /pitches/{id}", "STATUS_CODE_UNSET")] == 2
    assert calls(child[0])[("GET /pitches/{id}", "STATUS_CODE_ERROR")] == 1
    assert calls(parent[-1])[("GET /pitches/{id}", "STATUS_CODE_UNSET")] == 25  # (its own running total)


@pytest.mark.allow_internal_errors
@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_a_failing_build_does_not_stop_the_sender(
    http_server: RecordingServer, monkeypatch: pytest.MonkeyPatch, temporality: str
) -> None:
    exporter = OTLPMetricsExporter(http_server.url, sdk_stats=False, temporality=temporality)
    real = exporter._request
    calls_made = []

    def flaky(items: Any) -> Any:
        calls_made.append(len(items))
        if len(calls_made) == 1:
            raise RuntimeError("a bug in building the request")
        return real(items)

    monkeypatch.setattr(exporter, "_request", flaky)
    pt.configure(service="pitch-api", exporters=[exporter])
    traffic(4, errors=0)
    pt.force_flush(20)
    assert http_server.requests == []
    assert _stats.get("internal_errors.export.otlp_metrics") == 1
    traffic(3, errors=0)
    assert pt.force_flush(20)
    [req] = http_server.requests
    msg = ExportMetricsServiceRequest.FromString(req.body)
    points = [
        p for p in metrics(msg)[CALLS_METRIC].sum.data_points if attrs(p)["span.name"] == "GET /pitches/{id}"
    ]
    # Nothing taken in was lost: the running total, or both intervals.
    assert sum(p.as_int for p in points) == 7
