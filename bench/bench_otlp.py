"""OTLP encoding: our http/protobuf and http/json payloads beside OpenTelemetry's own OTLP
protobuf encoder, same process, same spans.

    .venv/bin/python bench/bench_otlp.py            # after: make bench-setup (~30 s)

Input: 512 spans (one export batch) with 10 HTTP-server attributes each (some repeating, some
not: path, body size), a parent and a status, made once by each SDK and not timed: our span
records, OpenTelemetry's ReadableSpans. One op = one batch.
Cases (us per batch):
  pt_protobuf        OTLPExporter's default payload: encode_otlp_protobuf(records)
  pt_json            protocol="http/json": dumps(encode_otlp_json(records))
  otel_protobuf      opentelemetry-exporter-otlp-proto-common's encode_spans(spans)
                     .SerializeToString() (what OTLPSpanExporter sends; protobuf's C runtime)
Gzip is left out: the exporters compress alike, and a smaller payload only helps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, report

from pitchey_trace._json import dumps
from pitchey_trace.exporters.otlp import encode_otlp_json, encode_otlp_protobuf

BATCH = 512


def attributes(i: int) -> dict[str, Any]:
    return {
        "http.request.method": "GET",
        "http.route": "/pitches/{pitch_id}",
        "http.response.status_code": 200,
        "url.path": f"/pitches/{1000 + i}",
        "url.scheme": "http",
        "client.address": "10.0.0.7",
        "user_agent.original": "python-httpx/0.27",
        "http.response.body.size": 1200 + i,
        "server.address": "pitch-api",
        "server.port": 8080,
    }


def our_records() -> list[dict[str, Any]]:
    resource = {"service.name": "pitch-api", "deployment.environment.name": "prod"}
    return [
        {
            "schema": 1,
            "type": "span",
            "trace_id": f"{i + 1:032x}",
            "span_id": f"{i + 1:016x}",
            "parent_span_id": f"{i + 7:016x}",
            "name": "GET /pitches/{pitch_id}",
            "kind": "server",
            "start_time_unix_nano": 1_800_000_000_000_000_000 + i,
            "end_time_unix_nano": 1_800_000_000_005_000_000 + i,
            "status": "ok",
            "status_message": None,
            "attributes": attributes(i),
            "events": [],
            "links": [],
            "resource": resource,
        }
        for i in range(BATCH)
    ]


def otel_spans() -> list[Any]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind, Status, StatusCode

    spans: list[Any] = []

    class Keep(SpanExporter):
        def export(self, batch: Any) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(
        resource=Resource.create({"service.name": "pitch-api", "deployment.environment.name": "prod"})
    )
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("bench")
    for i in range(BATCH):
        with tracer.start_as_current_span("parent"):
            with tracer.start_as_current_span(
                "GET /pitches/{pitch_id}", kind=SpanKind.SERVER, attributes=attributes(i)
            ) as s:
                s.set_status(Status(StatusCode.OK))
    return [s for s in spans if s.name != "parent"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    records = our_records()
    spans = otel_spans()
    assert len(spans) == BATCH

    def pt_protobuf(n: int) -> None:
        for _ in range(n):
            encode_otlp_protobuf(records)

    def pt_json(n: int) -> None:
        for _ in range(n):
            dumps(encode_otlp_json(records))

    def otel_protobuf(n: int) -> None:
        for _ in range(n):
            encode_spans(spans).SerializeToString()

    sizes = {
        "pt_protobuf": len(encode_otlp_protobuf(records)),
        "pt_json": len(dumps(encode_otlp_json(records))),
        "otel_protobuf": len(encode_spans(spans).SerializeToString()),
    }
    results = measure(
        {"pt_protobuf": pt_protobuf, "pt_json": pt_json, "otel_protobuf": otel_protobuf}, rounds=args.rounds
    )
    report(
        f"OTLP encoding, one batch of {BATCH} spans",
        results,
        [
            ("protobuf: ours / OpenTelemetry's", "pt_protobuf", "otel_protobuf"),
            ("json / protobuf (ours)", "pt_json", "pt_protobuf"),
        ],
    )
    for name, size in sizes.items():
        print(f"  payload {name:<36} {size:9d} bytes  ({results[name] / BATCH:.2f} us/span)")


if __name__ == "__main__":
    main()
