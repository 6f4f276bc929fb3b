"""Session 17, against real OTLP receivers on 127.0.0.1 (an HTTP server for OTLP/HTTP protobuf
and JSON, a grpcio server for OTLP/gRPC), decoded with the official opentelemetry-proto classes
(protobuf's JSON parser refuses unknown fields): through the whole pipeline, an event's and a
link's attributes dropped by the span's limit and by the sanitizer arrive as ``Span.Event`` /
``Span.Link`` ``dropped_attributes_count``, and the resource arrives whole (no attribute limit
applies to it: ``Resource.dropped_attributes_count`` 0) although it is larger than the
sanitizer's ``max_attributes``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import OTLPExporter, RetryPolicy
from pitchey_trace.exporters._grpc import EXPORT_METHOD
from pitchey_trace.sanitize import Sanitizer
from tests.integration.exporters.servers import GrpcCollector, RecordingServer
from tests.support.otlp import base64_ids

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=2)
EXTRA_RESOURCE = {f"app.tag{i}": f"v{i}" for i in range(12)} | {"app.db_password": "hunter2"}


@pytest.fixture
def grpc_collector() -> Iterator[GrpcCollector]:
    c = GrpcCollector(EXPORT_METHOD, ExportTraceServiceRequest)
    yield c
    c.server.stop(None)


def _traffic() -> None:
    """Spans with events and links over the limits (span limit 4, sanitizer limit 3)."""
    other = pt.start_span("upstream")
    with pt.span(
        "GET /cart",
        kind=pt.SpanKind.SERVER,
        links=[pt.Link(other.context, {f"l{i}": i for i in range(6)})],  # 2 by the span, 1 by the sanitizer
    ) as s:
        s.add_event("cache_miss", {f"k{i}": i for i in range(9)})  # 5 by the span, 1 by the sanitizer
        s.add_event("retry", {"n": 1})
        s.record_exception(
            ValueError("boom"), {"a": 1, "b": 2}
        )  # 3 + 2 > 4: 1 by the span, 1 by the sanitizer
        s.add_link(other.context)
    other.end()
    for _ in range(3):  # (plain spans: the C builder's own where compiled)
        with pt.span("SELECT 1", kind=pt.SpanKind.CLIENT):
            pass


def _check(requests: list[ExportTraceServiceRequest]) -> None:
    spans = {
        s.name: (rs, s)
        for req in requests
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert set(spans) == {"GET /cart", "upstream", "SELECT 1"}
    _, cart = spans["GET /cart"]
    assert [(e.name, e.dropped_attributes_count) for e in cart.events] == [
        ("cache_miss", 6),
        ("retry", 0),
        ("exception", 2),
    ]
    assert [len(e.attributes) for e in cart.events] == [3, 1, 3]
    assert [lk.dropped_attributes_count for lk in cart.links] == [3, 0]
    assert len(cart.links[0].attributes) == 3
    assert (cart.dropped_attributes_count, cart.dropped_events_count, cart.dropped_links_count) == (0, 0, 0)
    for r, _ in spans.values():
        resource = {kv.key: kv.value.string_value for kv in r.resource.attributes}
        assert r.resource.dropped_attributes_count == 0
        assert all(resource[k] == v for k, v in EXTRA_RESOURCE.items() if k != "app.db_password")
        assert resource["app.db_password"] == "[REDACTED]"  # (beyond the limit, sanitized all the same)
        assert resource["service.name"] == "checkout"
        assert len(resource) > 3 + len(EXTRA_RESOURCE)


def _configure(exporter: OTLPExporter) -> None:
    pt.configure(
        service="checkout",
        exporters=[exporter],
        sanitizer=Sanitizer(max_attributes=3),
        max_attributes=4,
        resource_attributes=EXTRA_RESOURCE,
        rollups=None,
    )


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_event_and_link_counts_and_the_whole_resource_over_otlp_http(
    http_server: RecordingServer, protocol: str
) -> None:
    _configure(OTLPExporter(http_server.url + "/v1/traces", protocol=protocol, retry=FAST))
    _traffic()
    assert pt.force_flush(20)
    assert http_server.requests
    requests = []
    for req in http_server.requests:
        assert req.path == "/v1/traces"
        if protocol == "http/json":
            body = req.json()
            events = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
            assert any("droppedAttributesCount" in e for s in events for e in s.get("events", []))
            requests.append(json_format.Parse(json.dumps(base64_ids(body)), ExportTraceServiceRequest()))
        else:
            requests.append(ExportTraceServiceRequest.FromString(req.body))
    _check(requests)
    assert _stats.get("exported.otlp") == 5
    assert _stats.get("dropped.attribute_limit") == 5 + 2 + 1


def test_event_and_link_counts_and_the_whole_resource_over_otlp_grpc(grpc_collector: GrpcCollector) -> None:
    _configure(OTLPExporter(f"http://127.0.0.1:{grpc_collector.port}", protocol="grpc", retry=FAST))
    _traffic()
    assert pt.force_flush(20)
    _check(grpc_collector.requests)
    assert _stats.get("otlp.spans") == 5
    assert _stats.get("sanitize.attributes_dropped") == 3  # (the event's, the link's, the exception's)
