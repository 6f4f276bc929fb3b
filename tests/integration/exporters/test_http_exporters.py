"""HttpAnalyticsExporter and OTLPExporter against real HTTP servers on 127.0.0.1 that record
requests and answer 500, 429/503 with Retry-After, 400, or hang."""

from __future__ import annotations

import base64
import email.utils
import time
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter, OTLPExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.processors import Rollups
from tests.integration.exporters.servers import RecordingServer, Reply

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


def span_rec(seq: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "span",
        "trace_id": f"{seq + 1:032x}",
        "span_id": f"{seq + 1:016x}",
        "parent_span_id": None,
        "name": f"op{seq}",
        "kind": "server",
        "service": "svc",
        "environment": "test",
        "start_time_unix_nano": 1_800_000_000_000_000_000,
        "end_time_unix_nano": 1_800_000_000_005_000_000,
        "duration_ms": 5.0,
        "status": "ok",
        "status_message": None,
        "category": "fast",
        "attributes": {"seq": seq},
        "events": [],
        "links": [],
        "resource": {"service.name": "svc"},
    }


# -- analytics --------------------------------------------------------------------------------------
def test_analytics_points_through_the_pipeline(http_server: RecordingServer) -> None:
    exp = HttpAnalyticsExporter(http_server.url + "/ingest", token="s3cret", max_points_per_request=50)
    pt.configure(service="svc-" + "x" * 100, exporters=[exp], rollups=Rollups())
    for i in range(120):
        with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER) as s:
            s.set_attribute("http.response.status_code", 404 if i % 10 == 0 else 200)
            s.set_attribute("http.route", "/pitches/{id}")
    pt.emit_audit("login", "session", "denied", category="security")
    assert pt.force_flush(20)
    points = [p for r in http_server.requests for p in r.json()["points"]]
    for r in http_server.requests:
        assert r.path == "/ingest"
        assert r.headers["Authorization"] == "Bearer s3cret"
        assert r.headers["Content-Encoding"] == "gzip"
        assert len(r.json()["points"]) <= 50
    by_type: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        assert len(p["indexes"]) == 1
        assert len(p["indexes"][0].encode()) <= 96
        assert len(p["blobs"]) <= 20
        assert len(p["doubles"]) <= 20
        by_type.setdefault(p["blobs"][0], []).append(p)
    spans = by_type["span"]
    assert len(spans) == 120
    assert {p["blobs"][3] for p in spans} == {"GET /pitches/{id}"}
    assert {p["blobs"][11] for p in spans} == {"/pitches/{id}"}
    assert sorted(p["doubles"][3] for p in spans).count(404.0) == 12
    assert len(by_type["audit"]) == 1
    assert by_type["audit"][0]["blobs"][3:6] == ["login", "security", "denied"]
    assert sum(p["doubles"][5] for p in by_type["rollup"]) == 120  # rollup double6 = count
    assert pt.stats()["http_analytics.points"] == len(points) == 120 + 1 + len(by_type["rollup"])


def test_analytics_500_is_retried_then_delivered_once(http_server: RecordingServer) -> None:
    http_server.reply(Reply(500), Reply(500))
    exp = HttpAnalyticsExporter(http_server.url, retry=FAST)
    assert exp.export([span_rec(1), span_rec(2)]) is True
    assert len(http_server.requests) == 3
    assert http_server.requests[0].body == http_server.requests[2].body
    assert _stats.get("http_analytics.retried") == 2
    assert _stats.get("retried") == 2
    assert _stats.get("http_analytics.points") == 2


def test_analytics_429_retry_after_seconds_is_honoured(http_server: RecordingServer) -> None:
    http_server.reply(Reply(429, {"Retry-After": "1"}))
    exp = HttpAnalyticsExporter(http_server.url, retry=FAST)
    assert exp.export([span_rec(1)])
    first, second = http_server.requests
    assert second.at - first.at >= 0.95  # the backoff alone would have waited ~10 ms


def test_analytics_503_retry_after_http_date_is_honoured(http_server: RecordingServer) -> None:
    http_server.reply(Reply(503, {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}))
    exp = HttpAnalyticsExporter(http_server.url, retry=FAST)
    assert exp.export([span_rec(1)])
    first, second = http_server.requests
    assert second.at - first.at >= 0.9  # the date has 1 s resolution: between 1 and 2 s


def test_analytics_client_errors_are_not_retried_and_give_up_is_bounded(http_server: RecordingServer) -> None:
    http_server.reply(Reply(400, body=b'{"error":"bad"}'))
    exp = HttpAnalyticsExporter(http_server.url, retry=FAST)
    assert exp.export([span_rec(1)]) is False
    assert len(http_server.requests) == 1
    assert _stats.get("http_analytics.rejected") == 1

    http_server.reply(*[Reply(500)] * 5)
    exp2 = HttpAnalyticsExporter(http_server.url, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01))
    assert exp2.export([span_rec(2)]) is False
    assert len(http_server.requests) == 1 + 3
    assert _stats.get("http_analytics.failed") == 1


def test_analytics_unreachable_endpoint_fails_without_raising() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    exp = HttpAnalyticsExporter(
        f"http://127.0.0.1:{port}/x", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    )
    assert exp.export([span_rec(1)]) is False
    assert _stats.get("http_analytics.requests") == 2


# -- OTLP -------------------------------------------------------------------------------------------
def _ids_to_base64(obj: Any) -> Any:
    """OTLP JSON carries ids as hex; the proto3 JSON parser expects base64 for bytes fields."""
    if isinstance(obj, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId")
            else _ids_to_base64(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_ids_to_base64(v) for v in obj]
    return obj


@pytest.mark.parametrize("protocol", [None, "http/json"])
def test_otlp_payload_parses_with_the_official_proto_classes(
    http_server: RecordingServer, protocol: str | None
) -> None:
    exp = OTLPExporter(http_server.url, headers={"x-tenant": "t1"}, protocol=protocol)
    pt.configure(
        service="checkout",
        environment="prod",
        exporters=[exp],
        resource_attributes={"service.version": "1.2"},
    )
    other = pt.TraceContext(0x1234, 0x99, is_remote=True, trace_state=(("vendor", "v1"),))
    with pt.span("POST /pay", kind=pt.SpanKind.SERVER, attributes={"http.request.method": "POST"}) as root:
        root.set_attributes({"retries": 3, "ratio": 0.5, "cached": False, "tags": ["a", "b"], "ids": [1, 2]})
        root.add_event("charged", {"amount.cents": 1250})
        root.add_link(other, {"why": "batch"})
        with pt.span("db.query", kind=pt.SpanKind.CLIENT) as child:
            child.set_status("error", "deadlock")
    pt.emit_audit("pay", "order", "ok")  # not a span: not sent over OTLP
    assert pt.force_flush(20)
    [req] = http_server.requests
    assert req.path == "/v1/traces"
    assert req.headers["Content-Encoding"] == "gzip"
    assert req.headers["x-tenant"] == "t1"
    if protocol is None:  # the OTLP default: binary protobuf
        assert req.headers["Content-Type"] == "application/x-protobuf"
        msg = ExportTraceServiceRequest.FromString(req.body)
    else:
        assert req.headers["Content-Type"] == "application/json"
        msg = json_format.ParseDict(_ids_to_base64(req.json()), ExportTraceServiceRequest())
    [rs] = msg.resource_spans
    res = {kv.key: kv.value for kv in rs.resource.attributes}
    assert res["service.name"].string_value == "checkout"
    assert res["service.version"].string_value == "1.2"
    assert res["deployment.environment.name"].string_value == "prod"
    [ss] = rs.scope_spans
    assert ss.scope.name == "pitchey_trace"
    assert ss.scope.version == pt.__version__
    spans = {s.name: s for s in ss.spans}
    r, c = spans["POST /pay"], spans["db.query"]
    assert r.trace_id == bytes.fromhex(root.trace_id_hex)
    assert len(r.trace_id) == 16
    assert r.span_id == bytes.fromhex(root.span_id_hex)
    assert c.parent_span_id == r.span_id
    assert r.parent_span_id == b""
    assert r.kind == Span.SPAN_KIND_SERVER
    assert c.kind == Span.SPAN_KIND_CLIENT
    assert c.status.code == Status.STATUS_CODE_ERROR
    assert c.status.message == "deadlock"
    assert r.status.code == Status.STATUS_CODE_UNSET
    assert r.end_time_unix_nano >= r.start_time_unix_nano > 1_700_000_000 * 10**9
    attrs = {kv.key: kv.value for kv in r.attributes}
    assert attrs["http.request.method"].string_value == "POST"
    assert attrs["retries"].int_value == 3
    assert attrs["ratio"].double_value == 0.5
    assert attrs["cached"].HasField("bool_value")
    assert attrs["cached"].bool_value is False
    assert [v.string_value for v in attrs["tags"].array_value.values] == ["a", "b"]
    assert [v.int_value for v in attrs["ids"].array_value.values] == [1, 2]
    [event] = r.events
    assert event.name == "charged"
    assert event.attributes[0].value.int_value == 1250
    [link] = r.links
    assert link.trace_id == (0x1234).to_bytes(16, "big")
    assert link.span_id == (0x99).to_bytes(8, "big")
    assert link.trace_state == "vendor=v1"
    assert (r.trace_state, c.trace_state) == ("", "")  # a root of ours has no tracestate
    assert _stats.get("otlp.spans") == 2


@pytest.mark.parametrize("protocol", [None, "http/json"])
def test_otlp_spans_carry_the_callers_tracestate(http_server: RecordingServer, protocol: str | None) -> None:
    """A request that came with a ``tracestate`` (a vendor's sampling data, say) is exported with
    it on every span of the trace in this process, as OpenTelemetry's SDK does; other traces
    carry none."""
    pt.configure(service="checkout", exporters=[OTLPExporter(http_server.url, protocol=protocol)])
    incoming = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",
    }
    with pt.use_context(pt.extract(incoming)):
        with pt.span("GET /", kind=pt.SpanKind.SERVER), pt.span("child"):
            pass
    with pt.span("unrelated"):
        pass
    assert pt.force_flush(20)
    [req] = http_server.requests
    if protocol is None:
        msg = ExportTraceServiceRequest.FromString(req.body)
    else:
        msg = json_format.ParseDict(_ids_to_base64(req.json()), ExportTraceServiceRequest())
    spans = {s.name: s for s in msg.resource_spans[0].scope_spans[0].spans}
    assert spans["GET /"].trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert spans["child"].trace_state == spans["GET /"].trace_state
    assert spans["unrelated"].trace_state == ""


def test_otlp_retries_503_honours_retry_after_and_counts_partial_success(
    http_server: RecordingServer,
) -> None:
    http_server.reply(
        Reply(503, {"Retry-After": "1"}),
        Reply(200, body=b'{"partialSuccess":{"rejectedSpans":1,"errorMessage":"too old"}}'),
    )
    exp = OTLPExporter(http_server.url + "/v1/traces", compression=None, retry=FAST, protocol="http/json")
    assert exp.export([span_rec(1), span_rec(2)])
    first, second = http_server.requests
    assert second.at - first.at >= 0.95
    assert "Content-Encoding" not in second.headers
    assert len(second.json()["resourceSpans"][0]["scopeSpans"][0]["spans"]) == 2
    assert _stats.get("otlp.partial_rejected") == 1


def test_otlp_protobuf_partial_success_is_counted(http_server: RecordingServer) -> None:
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 2
    answer.partial_success.error_message = "too old"
    http_server.reply(Reply(200, body=answer.SerializeToString()), Reply(200, body=b""))
    exp = OTLPExporter(http_server.url, retry=FAST)
    assert exp.export([span_rec(1), span_rec(2), span_rec(3)])
    assert exp.export([span_rec(4)])  # an empty answer is a full success
    first, _ = http_server.requests
    assert first.headers["Content-Type"] == "application/x-protobuf"
    sent = ExportTraceServiceRequest.FromString(first.body).resource_spans[0].scope_spans[0].spans
    assert [sp.span_id for sp in sent] == [bytes.fromhex(span_rec(i)["span_id"]) for i in (1, 2, 3)]
    assert _stats.get("otlp.partial_rejected") == 2
    assert _stats.get("otlp.spans") == 4


def test_otlp_does_not_retry_500_or_400_per_the_otlp_spec(http_server: RecordingServer) -> None:
    http_server.reply(Reply(500), Reply(400))
    exp = OTLPExporter(http_server.url)  # default policy: 429/502/503/504 and network errors only
    assert exp.export([span_rec(1)]) is False
    assert exp.export([span_rec(2)]) is False
    assert len(http_server.requests) == 2
    assert _stats.get("otlp.rejected") == 2


# -- a hanging collector ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["otlp", "analytics"])
def test_a_hanging_collector_does_not_slow_the_application(http_server: RecordingServer, kind: str) -> None:
    http_server.reply(Reply(hang=60))  # the first request is held until released (or 60 s)
    exp: Any = (
        OTLPExporter(http_server.url, timeout_s=60, protocol="http/json")
        if kind == "otlp"
        else HttpAnalyticsExporter(http_server.url, timeout_s=60, datasets={"traces"})
    )
    pt.configure(service="app", exporters=[exp], schedule_delay_ms=20)
    with pt.span("first"):
        pass
    assert http_server.wait_requests(1)  # the exporter is now stuck in a request
    started = time.monotonic()
    for i in range(1000):
        with pt.span("work") as s:
            s.set_attribute("i", i)
    loop_s = time.monotonic() - started
    # Functional: the application finished its 1000 spans while the collector still held the
    # first request - it never waited for the exporter.
    assert http_server.in_flight == 1
    assert len(http_server.requests) == 1
    assert loop_s < 60
    http_server.release.set()
    assert pt.force_flush(30)
    sent = [
        s
        for r in http_server.requests
        for s in (
            [sp for rs in r.json()["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]]
            if kind == "otlp"
            else r.json()["points"]
        )
    ]
    assert len(sent) == 1001


def test_a_request_that_times_out_is_retried(http_server: RecordingServer) -> None:
    http_server.reply(Reply(hang=10))  # longer than the exporter's timeout; then answers 200
    exp = HttpAnalyticsExporter(http_server.url, timeout_s=0.3, retry=FAST)
    assert exp.export([span_rec(1)]) is True
    assert len(http_server.requests) == 2
    assert _stats.get("http_analytics.retried") == 1
    exp.shutdown()


def test_a_huge_answer_is_read_only_up_to_a_bound(http_server: RecordingServer) -> None:
    # A collector answering 8 MB: at most 1 MB is read (memory stays bounded), the connection
    # that still holds the rest is dropped, and the next request works on a new one.
    http_server.reply(Reply(200, body=b"{" + b" " * (8 << 20) + b"}"), Reply(200, body=b"{}"))
    exp = OTLPExporter(http_server.url, retry=FAST, protocol="http/json")
    first = exp._sender.send(b"{}")
    assert first.ok
    assert len(first.body) == 1 << 20  # not the 8 MB the collector sent
    second = exp._sender.send(b"{}")
    assert second.ok
    assert second.body == b"{}"
    assert len(http_server.requests) == 2
    exp.shutdown()


# -- keep-alive connections the collector closed --------------------------------------------------
ONE_TRY = RetryPolicy(max_attempts=1)


@pytest.mark.parametrize("kind", ["otlp", "analytics"])
def test_a_connection_the_collector_closed_while_idle_is_not_a_failure(kind: str) -> None:
    # Collectors and load balancers close keep-alive connections idle for a while (here 0.2 s).
    # Sending on such a connection failed an attempt (BrokenPipeError): a backoff and a warning
    # each time, and with a single attempt the batch was dropped, the collector being healthy.
    server = RecordingServer(idle_timeout_s=0.2)
    exp: Any = (
        OTLPExporter(server.url, retry=ONE_TRY, protocol="http/json")
        if kind == "otlp"
        else HttpAnalyticsExporter(server.url, retry=ONE_TRY)
    )
    counter = "otlp" if kind == "otlp" else "http_analytics"
    try:
        for i in range(3):
            if i:
                time.sleep(0.5)  # idle longer than the collector keeps the connection
            assert exp.export([span_rec(i)]) is True
        assert len(server.requests) == 3
        assert _stats.get(f"{counter}.requests") == 3
        assert _stats.get(f"{counter}.failed") == 0
        assert _stats.get(f"{counter}.retried") == 0
        # Once the collector closed it, the connection is seen closed before use: no request is
        # written into it (the sender's next connection is a new, unconnected one).
        deadline = time.monotonic() + 10
        while exp._sender._connection().sock is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exp._sender._connection().sock is None
    finally:
        exp.shutdown()
        server.close()


@pytest.mark.parametrize("tls", [False, True])
def test_a_reused_connection_closed_as_the_request_arrives_is_sent_again_at_once(
    tmp_path: Any, tls: bool
) -> None:
    # The race an idle check cannot see: the collector closes the connection just as the next
    # request arrives, before answering. Sent again on a new connection, not counted as an attempt.
    from tests.integration.exporters.servers import self_signed_certificate

    cert_key = self_signed_certificate(tmp_path) if tls else None
    server = RecordingServer(tls=cert_key)
    server.reply(Reply(), Reply(drop=True))
    exp = OTLPExporter(
        server.url,
        retry=ONE_TRY,
        protocol="http/json",
        certificate_file=cert_key[0] if cert_key else None,
    )
    try:
        assert exp.export([span_rec(1)]) is True
        started = time.monotonic()
        result = exp._sender.send(b"{}")
        assert result.ok
        assert result.attempts == 1
        assert time.monotonic() - started < 5  # at once, no backoff
        assert len(server.requests) == 3  # the first batch, the dropped request, its resend
        assert server.requests[1].body == server.requests[2].body == b"{}"
        assert _stats.get("otlp.retried") == 0
    finally:
        exp.shutdown()
        server.close()


def test_a_new_connection_that_fails_is_still_a_failed_attempt(http_server: RecordingServer) -> None:
    # Only a reused connection is tried again at once, and only once: the new connection's
    # failure is a failed attempt, retried per the policy.
    http_server.reply(Reply(), Reply(drop=True), Reply(drop=True), Reply())
    exp = OTLPExporter(
        http_server.url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01), protocol="http/json"
    )
    assert exp.export([span_rec(1)]) is True
    result = exp._sender.send(b"{}")
    assert result.ok
    assert result.attempts == 2
    assert len(http_server.requests) == 4
    assert _stats.get("otlp.retried") == 1
    # A first request on a new connection that the collector drops: the batch's single try.
    http_server.reply(Reply(drop=True))
    fresh = OTLPExporter(http_server.url, retry=ONE_TRY, protocol="http/json")
    assert fresh.export([span_rec(2)]) is False
    assert len(http_server.requests) == 5
    assert _stats.get("otlp.failed") == 1
    exp.shutdown()
    fresh.shutdown()
