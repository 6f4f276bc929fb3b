"""OTLP JSON and binary protobuf encodings (checked with the official proto classes), endpoint
and protocol configuration."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import pitchey_trace as pt
from pitchey_trace._json import dumps, loads
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import OTLPExporter
from pitchey_trace.exporters._otlp_proto import parse_partial_success
from pitchey_trace.exporters.otlp import any_value, encode_otlp_json, encode_otlp_protobuf


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
                if k in ("traceId", "spanId", "parentSpanId")
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
    # the signal's path goes before a query (a token some gateways take there), not after it
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://gw:4318/otlp?token=abc")
    assert OTLPExporter().endpoint == "https://gw:4318/otlp/v1/traces?token=abc"
    assert OTLPExporter("http://c:4318/?token=abc").endpoint == "http://c:4318/v1/traces?token=abc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
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


def test_trace_specific_variables_win_over_the_general_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting, general, traces in (
        ("HEADERS", "api-key=general", "api-key=traces,extra=1"),
        ("COMPRESSION", "none", "gzip"),
        ("TIMEOUT", "2500", "750"),
    ):
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{setting}", general)
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_TRACES_{setting}", traces)
    exp = OTLPExporter("http://c:4318")
    assert exp._sender.headers["api-key"] == "traces"
    assert exp._sender.headers["extra"] == "1"
    assert exp._sender.headers["Content-Encoding"] == "gzip"
    assert exp._sender.timeout_s == 0.75
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", " ")  # blank: the general one applies
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")
    exp = OTLPExporter("http://c:4318")
    assert exp._sender.timeout_s == 2.5
    assert "Content-Encoding" not in exp._sender.headers
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="TIMEOUT must be milliseconds"):
        OTLPExporter("http://c:4318")


# -- http/protobuf ----------------------------------------------------------------------------------
def rich_records() -> list[dict[str, Any]]:
    r1, r2 = {"service.name": "a", "host.name": "h"}, {"service.name": "b", "k": 1}
    attrs = {
        "s": "text ü ☃",
        "b": False,
        "t": True,
        "i": -5,
        "zero": 0,
        "big": 1 << 70,
        "max": (1 << 63) - 1,
        "min": -(1 << 63),
        "f": 0.25,
        "inf": float("-inf"),
        "l": [1, "a", 0.5, [True]],
        "kv": {"x": {"y": None}},
        "none": None,
        "raw": b"\xffok",
        "obj": ValueError("oops"),
        "surrogate": "a\ud800b",
    }
    return [
        rec(1, r1, attributes=attrs, parent_span_id="00000000000000aa"),
        rec(
            2,
            r2,
            kind="server",
            status="unset",
            events=[{"time_unix_nano": 5, "name": "e", "attributes": {"n": 1}}],
        ),
        rec(
            3,
            dict(r1),
            kind="internal",
            status="error",
            status_message="boom",
            links=[
                {"trace_id": "ff" * 16, "span_id": "ee" * 8, "attributes": {"why": "batch"}},
                {"trace_id": "dd" * 16, "span_id": "cc" * 8, "attributes": {}, "trace_state": "k=v"},
            ],
            trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            start_time_unix_nano=1_800_000_000_000_000_001,
            end_time_unix_nano=1_800_000_000_000_000_002,
        ),
        rec(4, r2, name="", kind="?", attributes={}),
        {"type": "audit"},
    ]


def test_protobuf_is_the_json_message_field_for_field() -> None:
    records = rich_records()
    binary = encode_otlp_protobuf(records)
    msg = ExportTraceServiceRequest.FromString(binary)  # the official generated classes
    assert msg == parse(encode_otlp_json(records))
    assert len(msg.resource_spans) == 2
    assert msg.resource_spans[0].scope_spans[0].scope.version == pt.__version__
    attrs = {kv.key: kv.value for kv in msg.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert attrs["min"].int_value == -(1 << 63)
    assert attrs["big"].string_value == str(1 << 70)
    assert attrs["b"].HasField("bool_value")
    assert attrs["zero"].HasField("int_value")
    assert not attrs["none"].ListFields()
    assert attrs["surrogate"].string_value == "a\ufffdb"  # UTF-8 cannot carry a lone surrogate
    assert attrs["raw"].string_value == "\ufffdok"
    s3 = msg.resource_spans[0].scope_spans[0].spans[1]
    assert s3.start_time_unix_nano == 1_800_000_000_000_000_001
    assert s3.links[0].trace_id == b"\xff" * 16
    assert (s3.links[0].trace_state, s3.links[1].trace_state) == ("", "k=v")
    assert s3.trace_state == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert msg.resource_spans[0].scope_spans[0].spans[0].trace_state == ""  # none: not sent
    assert s3.status.code == 2
    assert s3.status.message == "boom"
    s4 = msg.resource_spans[1].scope_spans[0].spans[1]
    assert (s4.name, s4.kind) == ("", 0)


def test_protobuf_keeps_nan() -> None:
    msg = ExportTraceServiceRequest.FromString(
        encode_otlp_protobuf([rec(1, {"service.name": "a"}, attributes={"n": float("nan")})])
    )
    value = msg.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.double_value
    assert value != value


_scalars = (
    st.text()
    | st.booleans()
    | st.integers(min_value=-(1 << 80), max_value=1 << 80)
    | st.floats(allow_nan=False)
    | st.none()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(attrs=st.dictionaries(st.text(max_size=12), _values, max_size=6), name=st.text(max_size=20))
def test_protobuf_equals_json_for_any_attributes(attrs: dict[str, Any], name: str) -> None:
    records = [rec(7, {"service.name": "svc"}, attributes=attrs, name=name)]
    assert ExportTraceServiceRequest.FromString(encode_otlp_protobuf(records)) == parse(
        encode_otlp_json(records)
    )


def partial_rejected_proto(body: bytes) -> int:
    """The rejected count of a binary answer (0 when it says nothing or cannot be read)."""
    partial = parse_partial_success(body, "application/grpc")
    return 0 if partial is None else partial.rejected


def test_partial_success_of_a_binary_answer() -> None:
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 300
    answer.partial_success.error_message = "x" * 200
    assert partial_rejected_proto(answer.SerializeToString()) == 300
    assert partial_rejected_proto(b"") == 0
    assert partial_rejected_proto(ExportTraceServiceResponse().SerializeToString()) == 0
    for garbage in (b"\xff", b"\x0a\x05\x08", b"\x0a\x02\x08\x80", b"\x0f", b"\x80" * 20):
        assert partial_rejected_proto(garbage) == 0  # unreadable: nothing rejected, no error


def test_protocol_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    exp = OTLPExporter("http://c:4318")
    assert exp.protocol == "http/protobuf"
    assert exp._sender.headers["Content-Type"] == "application/x-protobuf"
    assert (
        OTLPExporter("http://c:4318", protocol="HTTP/JSON")._sender.headers["Content-Type"]
        == "application/json"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert OTLPExporter("http://c:4318").protocol == "http/json"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert OTLPExporter("http://c:4318").protocol == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert OTLPExporter("http://c:4317").protocol == "grpc"
    with pytest.raises(ConfigurationError, match="protocol must be"):
        OTLPExporter("http://c:4318", protocol="thrift")


def test_the_attribute_cache_keeps_only_short_pairs() -> None:
    # Repeated short pairs are encoded once; long values (rarely repeated) are not kept, so the
    # cache stays small whatever the attributes.
    from pitchey_trace.exporters import _otlp_proto

    _otlp_proto._KV_CACHE.clear()
    long_value = "x" * 5000
    records = [
        rec(i, {"service.name": "a"}, attributes={"m": "GET", "body": long_value, "n": i}) for i in range(50)
    ]
    msg = ExportTraceServiceRequest.FromString(encode_otlp_protobuf(records))
    assert len(msg.resource_spans[0].scope_spans[0].spans) == 50
    cached = list(_otlp_proto._KV_CACHE.values())
    assert all(len(kv) <= _otlp_proto._KV_CACHE_ITEM_MAX for kv in cached)
    assert ("m", "GET", str) in _otlp_proto._KV_CACHE
    assert ("body", long_value, str) not in _otlp_proto._KV_CACHE


def test_spans_made_through_the_opentelemetry_api_keep_their_tracers_scope() -> None:
    """A span of ``get_tracer("acme.payments", "2.1")`` (``pitchey_trace.otel``) goes out under
    that instrumentation scope, in both encodings; the others under ``pitchey_trace``. It used to
    be ``pitchey_trace`` for all, with the scope as two span attributes."""
    from pitchey_trace.otel import TracerProvider
    from pitchey_trace.testing import capture_spans

    with capture_spans() as exporter:
        provider = TracerProvider()
        with provider.get_tracer("acme.payments", "2.1").start_as_current_span("charge") as s:
            s.set_attribute("amount", 3)
            with pt.span("load_card"):
                pass
        with provider.get_tracer("acme.mail").start_as_current_span("send"):
            pass
    records = exporter.spans()
    assert len(records) == 3
    for msg in (
        ExportTraceServiceRequest.FromString(encode_otlp_protobuf(records)),
        parse(encode_otlp_json(records)),
    ):
        (rs,) = msg.resource_spans
        scopes = {(ss.scope.name, ss.scope.version): [sp.name for sp in ss.spans] for ss in rs.scope_spans}
        assert scopes == {
            ("pitchey_trace", pt.__version__): ["load_card"],
            ("acme.payments", "2.1"): ["charge"],
            ("acme.mail", ""): ["send"],
        }
        for ss in rs.scope_spans:
            for sp in ss.spans:
                keys = {kv.key for kv in sp.attributes}
                assert not keys & {"otel.scope.name", "otel.scope.version"}
                if sp.name == "charge":
                    assert "amount" in keys
