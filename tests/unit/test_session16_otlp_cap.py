"""Session 16: ``max_request_bytes`` for the OTLP exporters (traces, logs, metrics; protobuf
and JSON): a request over the cap goes as several, each within it, in order, packed close to
the cap (items measured without their resource and scope framing); an item too large alone is
dropped and counted (``dropped.request_too_large[.<name>]``); the common batch is one request,
byte for byte as before. Requests are recorded here; tests/integration/exporters has them
against real HTTP and gRPC collectors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pitchey_trace import _stats
from pitchey_trace._sketch import DurationSketch
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import OTLPExporter, OTLPLogExporter, OTLPMetricsExporter, _http
from pitchey_trace.exporters._http import HttpResult, SenderExporter
from pitchey_trace.exporters.otlp import encode_otlp_json, encode_otlp_protobuf

PROTOCOLS = ["http/protobuf", "http/json"]
RES_A = {"service.name": "a", "host.name": "h" * 200}
RES_B = {"service.name": "b"}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})


def span(
    i: int, pad: int = 100, resource: dict[str, Any] | None = None, scope: str | None = None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {"seq": i, "note": "n" * pad}
    if scope is not None:
        attrs["otel.scope.name"] = scope
        attrs["otel.scope.version"] = "1.0"
    return {
        "schema": 1,
        "type": "span",
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": "job",
        "kind": "internal",
        "service": "s",
        "environment": "e",
        "start_time_unix_nano": 1,
        "end_time_unix_nano": 2,
        "duration_ms": 0.0,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": attrs,
        "events": [],
        "links": [],
        "resource": resource if resource is not None else RES_A,
    }


def recording(exp: SenderExporter) -> list[bytes]:
    sent: list[bytes] = []

    def deliver(payload: bytes, items: int) -> HttpResult:
        sent.append(payload)
        return HttpResult(True, 200)

    exp._deliver = deliver  # type: ignore[method-assign]
    return sent


def span_seqs(payload: bytes, protocol: str) -> list[int]:
    if protocol == "http/json":
        doc = json.loads(payload)
        return [
            int(next(a["value"]["intValue"] for a in s["attributes"] if a["key"] == "seq"))
            for rs in doc["resourceSpans"]
            for ss in rs["scopeSpans"]
            for s in ss["spans"]
        ]
    msg = ExportTraceServiceRequest.FromString(payload)
    return [
        next(a.value.int_value for a in s.attributes if a.key == "seq")
        for rs in msg.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def in_order(sent: list[bytes], seqs: Callable[[bytes, str], list[int]], protocol: str) -> list[int]:
    """The items of ``sent`` request after request (within one, grouped by resource and scope:
    in order within each group, so sorted here)."""
    return [i for p in sent for i in sorted(seqs(p, protocol))]


def mixed(n: int) -> list[dict[str, Any]]:
    """Spans of two resources and two scopes, of varied sizes, interleaved."""
    return [
        span(
            i, pad=10 + (i * 37) % 600, resource=RES_A if i % 3 else RES_B, scope="x" if i % 4 == 1 else None
        )
        for i in range(n)
    ]


# -- traces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_under_the_cap_is_one_request_byte_for_byte_as_before(protocol: str) -> None:
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", protocol=protocol)
    assert exp.max_request_bytes == 4 << 20
    sent = recording(exp)
    records = mixed(512)
    assert exp.export(records) is True
    expected = (
        json.dumps(encode_otlp_json(records), separators=(",", ":")).encode()
        if protocol == "http/json"
        else encode_otlp_protobuf(records)
    )
    assert sent == [expected] if protocol != "http/json" else json.loads(sent[0]) == json.loads(expected)
    assert _stats.get("otlp.spans") == 512


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_over_the_cap_goes_in_order_as_requests_packed_close_to_it(protocol: str) -> None:
    cap = 20_000
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", protocol=protocol, max_request_bytes=cap)
    sent = recording(exp)
    records = mixed(512)
    assert exp.export(records) is True
    assert all(len(p) <= cap for p in sent)
    assert in_order(sent, span_seqs, protocol) == list(range(512))  # all, in order
    assert min(len(p) for p in sent[:-1]) >= 0.9 * cap  # (close to the cap, not half of it)
    whole = len(exp._payload(records))
    assert len(sent) <= math.ceil(whole / cap) + 1
    # SenderExporter._fit measures each span as a whole request (framing and all): more requests.
    naive, _ = SenderExporter._fit(exp, records, exp._payload(records), cap, exp._payload)
    assert len(sent) < len(naive)
    assert _stats.get("otlp.spans") == 512
    assert _stats.get("dropped.request_too_large") == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_span_too_large_alone_is_dropped_and_counted_the_rest_go(protocol: str) -> None:
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", protocol=protocol, max_request_bytes=5_000)
    sent = recording(exp)
    records = [span(i) for i in range(40)]
    records[7] = span(7, pad=6_000)
    result = exp.export(records)
    assert result == 1
    assert isinstance(result, _stats.PartlyRejected)  # (the worker counts the other 39 exported)
    assert in_order(sent, span_seqs, protocol) == [i for i in range(40) if i != 7]
    assert all(len(p) <= 5_000 for p in sent)
    assert _stats.get("dropped.request_too_large.otlp") == 1
    assert _stats.get("otlp.too_large") == 1
    assert _stats.get("otlp.spans") == 39


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_span_that_fills_the_cap_exactly_is_sent_alone(protocol: str) -> None:
    big = span(5, pad=3_000, scope="x")
    probe = OTLPExporter("http://127.0.0.1:9/v1/traces", protocol=protocol)
    cap = len(probe._payload([big]))  # (its request alone is exactly the cap: it goes)
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", protocol=protocol, max_request_bytes=cap)
    sent = recording(exp)
    records = (
        [span(i, resource=RES_B) for i in range(5)] + [big] + [span(i, resource=RES_B) for i in range(6, 9)]
    )
    assert exp.export(records) is True
    assert in_order(sent, span_seqs, protocol) == list(range(9))
    assert [5] in [span_seqs(p, protocol) for p in sent]
    assert all(len(p) <= cap for p in sent)


def test_the_cap_is_checked() -> None:
    for cls in (OTLPExporter, OTLPLogExporter, OTLPMetricsExporter):
        assert cls("http://127.0.0.1:9/x").max_request_bytes == 4 << 20  # type: ignore[attr-defined]
        assert cls("http://127.0.0.1:9/x", max_request_bytes=1000)._max_request_bytes == 1000
        for bad in (0, -1, 1.5, True, 2**31):
            with pytest.raises(ConfigurationError, match="max_request_bytes"):
                cls("http://127.0.0.1:9/x", max_request_bytes=bad)  # type: ignore[arg-type]


# -- logs -----------------------------------------------------------------------------------------


def audit(i: int, pad: int = 100, service: str = "api") -> dict[str, Any]:
    return {
        "type": "audit",
        "service": service,
        "environment": "prod",
        "category": "request",
        "action": f"GET /x/{i}",
        "target": "t" * pad,
        "outcome": "200",
        "time_unix_nano": 10 + i,
        "attributes": {"seq": i},
    }


def log_seqs(payload: bytes, protocol: str) -> list[int]:
    if protocol == "http/json":
        doc = json.loads(payload)
        return [
            int(next(a["value"]["intValue"] for a in r["attributes"] if a["key"] == "seq"))
            for rl in doc["resourceLogs"]
            for sl in rl["scopeLogs"]
            for r in sl["logRecords"]
        ]
    msg = ExportLogsServiceRequest.FromString(payload)
    return [
        next(a.value.int_value for a in r.attributes if a.key == "seq")
        for rl in msg.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_logs_split_close_to_the_cap_and_drop_a_record_too_large_alone(protocol: str) -> None:
    cap = 8_000
    exp = OTLPLogExporter("http://127.0.0.1:9/v1/logs", protocol=protocol, max_request_bytes=cap)
    exp.bind_resource({"service.name": "api", "host.name": "h" * 100})
    sent = recording(exp)
    records: list[dict[str, Any]] = [
        audit(i, pad=50 + (i * 53) % 400, service="api" if i % 2 else "worker") for i in range(300)
    ]
    records[10] = audit(10, pad=9_000)
    records[20] = {"type": "audit", "service": "api"}  # (malformed: counted once, left out)
    result = exp.export(records)
    assert result == 1
    assert all(len(p) <= cap for p in sent)
    assert in_order(sent, log_seqs, protocol) == [i for i in range(300) if i not in (10, 20)]
    assert min(len(p) for p in sent[:-1]) >= 0.85 * cap
    assert _stats.get("otlp_logs.bad_record") == 1
    assert _stats.get("dropped.request_too_large.otlp_logs") == 1
    assert _stats.get("otlp_logs.too_large") == 1


def test_logs_under_the_cap_are_one_request_as_request_builds_it() -> None:
    exp = OTLPLogExporter("http://127.0.0.1:9/v1/logs")
    sent = recording(exp)
    records = [audit(i) for i in range(50)]
    assert exp.export(records) is True
    assert len(sent) == 1
    got = ExportLogsServiceRequest.FromString(sent[0])
    assert [r.body.string_value for r in got.resource_logs[0].scope_logs[0].log_records] == [
        r["body"] for r in exp.request(records)["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    ]


# -- metrics --------------------------------------------------------------------------------------

T0 = 1_700_000_000_000_000_000 // 60_000_000_000 * 60_000_000_000


def rollup(op: int, errors: int = 1, minute: int = T0) -> dict[str, Any]:
    durations = [1.0 + (op * 7 + k * 13) % 900 for k in range(40)]
    sketch = DurationSketch()
    sketch.add_many(durations)
    failed, ok = durations[-errors:], durations[:-errors]
    error_sketch = DurationSketch()
    error_sketch.add_many(failed)
    return {
        "schema": 1,
        "type": "rollup",
        "service": "pitch-api",
        "environment": "test",
        "operation": f"GET /op/{op}",
        "kind": "server",
        "minute_start_unix_nano": minute,
        "interval_s": 60,
        "count": len(durations),
        "errors": errors,
        "duration_sum_ms": math.fsum(durations),
        "duration_min_ms": min(durations),
        "duration_max_ms": max(durations),
        "sketch": sketch.to_dict(),
        "error_durations": {
            "sum_ms": math.fsum(failed),
            "min_ms": min(failed),
            "max_ms": max(failed),
            "ok_min_ms": min(ok),
            "ok_max_ms": max(ok),
            "sketch": error_sketch.to_dict(),
        },
    }


def metrics_exporter(protocol: str, cap: int | None = None, **kwargs: Any) -> OTLPMetricsExporter:
    if cap is not None:
        kwargs["max_request_bytes"] = cap
    exp = OTLPMetricsExporter("http://127.0.0.1:9/v1/metrics", protocol=protocol, **kwargs)
    exp.bind_resource({"service.name": "pitch-api", "service.instance.id": "i-1"})
    return exp


def fake_send(exp: OTLPMetricsExporter, ok: Callable[[int], bool] = lambda n: True) -> list[bytes]:
    sent: list[bytes] = []

    def send(payload: bytes, retry: Any = None) -> HttpResult:
        sent.append(payload)
        return HttpResult(ok(len(sent)), 200)

    exp._sender.send = send  # type: ignore[method-assign]
    return sent


def points(payload: bytes, protocol: str) -> list[tuple[str, str, str]]:
    """(metric, span.name, status.code) of each data point."""
    if protocol == "http/json":
        doc = json.loads(payload)
        out = []
        for rm in doc["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    kind = next(k for k in ("sum", "histogram", "exponentialHistogram") if k in m)
                    for p in m[kind]["dataPoints"]:
                        a = {x["key"]: x["value"].get("stringValue") for x in p.get("attributes", [])}
                        out.append((m["name"], a.get("span.name", ""), a.get("status.code", "")))
        return out
    msg = ExportMetricsServiceRequest.FromString(payload)
    out = []
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = getattr(m, m.WhichOneof("data")).data_points
                for p in data:
                    a = {x.key: x.value.string_value for x in p.attributes}
                    out.append((m.name, a.get("span.name", ""), a.get("status.code", "")))
    return out


def fold(exp: OTLPMetricsExporter, records: list[dict[str, Any]]) -> None:
    with exp._lock:
        exp._fold(records)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sdk_stats", [False, True])
def test_metrics_over_the_cap_go_as_several_requests_with_whole_series(
    protocol: str, sdk_stats: bool
) -> None:
    records = [rollup(op) for op in range(200)]
    whole = metrics_exporter(protocol, sdk_stats=sdk_stats)
    one = fake_send(whole)
    fold(whole, records)
    whole._send()
    assert len(one) == 1
    cap = 12_000
    assert len(one[0]) > 5 * cap
    before = _stats.get("otlp_metrics.points")
    exp = metrics_exporter(protocol, cap, sdk_stats=sdk_stats)
    sent = fake_send(exp)
    fold(exp, records)
    exp._send()
    assert len(sent) > 5
    assert all(len(p) <= cap for p in sent)
    got = [pt for p in sent for pt in points(p, protocol)]
    expected = points(one[0], protocol)
    spans_only = [pt for pt in got if pt[0].startswith("traces.")]
    assert sorted(spans_only) == sorted(pt for pt in expected if pt[0].startswith("traces."))
    assert len(got) == len(expected) + (1 if sdk_stats else 0)  # (a counter more: otlp_metrics.points)
    assert min(len(p) for p in sent[:-1]) >= 0.8 * cap
    for op in range(200):  # a series' points are in one request
        assert sum(any(name == f"GET /op/{op}" for _, name, _ in points(p, protocol)) for p in sent) == 1
    assert _stats.get("otlp_metrics.points") - before == len(got)
    assert _stats.get("dropped.request_too_large") == 0


def test_delta_puts_back_only_the_series_of_a_request_that_failed() -> None:
    exp = metrics_exporter("http/protobuf", 6_000, temporality="delta", sdk_stats=False)
    sent = fake_send(exp, ok=lambda n: n != 2)  # (the second request fails)
    fold(exp, [rollup(op) for op in range(60)])
    exp._send()
    assert len(sent) > 3
    failed = {name for _, name, _ in points(sent[1], "http/protobuf")}
    assert failed
    assert {key[2] for key, _ in exp._pending} == failed  # only those wait for the next request
    again = fake_send(exp)
    exp._send()
    assert {name for p in again for _, name, _ in points(p, "http/protobuf")} == failed


def test_a_series_too_large_alone_is_left_out_and_counted() -> None:
    exp = metrics_exporter("http/protobuf", 600, sdk_stats=False, histogram="exponential")
    sent = fake_send(exp)
    fold(exp, [rollup(op) for op in range(3)])
    exp._send()
    assert sent == []
    assert _stats.get("otlp_metrics.too_large") == 12  # (2 calls + 2 durations per series)
    assert _stats.get("dropped.request_too_large.otlp_metrics") == 12
