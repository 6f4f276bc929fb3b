"""RED metrics over OTLP: what one minute of spans costs to count and encode, ours beside
OpenTelemetry's metrics SDK, same process, same spans.

    .venv/bin/python bench/bench_otlp_metrics.py     # after: make bench-setup (~30 s)

One op = one minute of 20,000 finished spans over 50 operations (2% errors), turned into an
encoded ``ExportMetricsServiceRequest`` with a call counter by status and a duration histogram
per operation (exponential buckets). Figures are us per span.
Cases:
  pt            what the pipeline worker and OTLPMetricsExporter do: Rollups.observe_many in
                512-span chunks, collect, the exporter's exemplar pass over the span records,
                the request built and encoded (binary protobuf)
  pt_no_exemplars   the same with exemplars=False (no pass over the span records)
  otel          OpenTelemetry's metrics SDK doing the same in process: per span, counter.add()
                and histogram.record() with the same 4 attributes (an exponential-histogram
                view), then InMemoryMetricReader.get_metrics_data() and the OTLP exporter's
                encode_metrics(...).SerializeToString()
Spans here are plain objects with the fields the rollups read; OpenTelemetry's instruments are
fed the same durations. Sending (gzip, HTTP) is left out: both would send one request.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, report

from pitchey_trace._span import SpanKind, StatusCode
from pitchey_trace.exporters.otlp_metrics import OTLPMetricsExporter, _proto
from pitchey_trace.processors import Rollups

SPANS = 20_000
OPERATIONS = 50


@dataclass
class FinishedSpan:
    name: str
    start_ns: int
    end_ns: int
    kind: SpanKind
    status: StatusCode


def workload() -> tuple[list[FinishedSpan], list[dict[str, Any]]]:
    rng = random.Random(7)
    now = time.time_ns()
    minute = now - now % 60_000_000_000 - 60_000_000_000
    spans: list[FinishedSpan] = []
    records: list[dict[str, Any]] = []
    for i in range(SPANS):
        end = minute + rng.randrange(60_000_000_000)
        ms = rng.lognormvariate(2.0, 1.0)
        error = rng.random() < 0.02
        name = f"GET /route/{i % OPERATIONS}"
        spans.append(
            FinishedSpan(
                name,
                end - int(ms * 1e6),
                end,
                SpanKind.SERVER,
                StatusCode.ERROR if error else StatusCode.UNSET,
            )
        )
        records.append(
            {
                "type": "span",
                "service": "pitch-api",
                "environment": "prod",
                "name": name,
                "kind": "server",
                "trace_id": f"{i + 1:032x}",
                "span_id": f"{i + 1:016x}",
                "duration_ms": ms,
                "end_time_unix_nano": end,
                "status": "error" if error else "unset",
            }
        )
    return spans, records


def ours(spans: list[FinishedSpan], records: list[dict[str, Any]], exemplars: bool) -> int:
    rollups = Rollups()
    rollups.bind(service="pitch-api", environment="prod")
    for i in range(0, len(spans), 512):
        rollups.observe_many(spans[i : i + 512])
    out = rollups.collect(time.time_ns(), force=True)
    exporter = OTLPMetricsExporter("http://127.0.0.1:9", sdk_stats=False, exemplars=exemplars)
    exporter.bind_resource({"service.name": "pitch-api", "deployment.environment.name": "prod"})
    if exemplars:
        for i in range(0, len(records), 512):
            with exporter._lock:
                exporter._observe(records[i : i + 512])
    return len(_proto("request", exporter._fold_and_build(out)))


def theirs(spans: list[FinishedSpan]) -> int:
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "pitch-api", "deployment.environment.name": "prod"}),
        views=[
            View(
                instrument_name="traces.span.metrics.duration",
                aggregation=ExponentialBucketHistogramAggregation(),
            )
        ],
    )
    meter = provider.get_meter("bench")
    calls = meter.create_counter("traces.span.metrics.calls")
    duration = meter.create_histogram("traces.span.metrics.duration", unit="ms")
    for s in spans:
        attributes = {
            "service.name": "pitch-api",
            "span.name": s.name,
            "span.kind": "SPAN_KIND_SERVER",
            "status.code": "STATUS_CODE_ERROR" if s.status == StatusCode.ERROR else "STATUS_CODE_UNSET",
        }
        calls.add(1, attributes)
        duration.record((s.end_ns - s.start_ns) / 1e6, attributes)
    size = len(encode_metrics(reader.get_metrics_data()).SerializeToString())
    provider.shutdown()
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    spans, records = workload()

    def pt(n: int) -> None:
        for _ in range(n):
            ours(spans, records, exemplars=True)

    def pt_no_exemplars(n: int) -> None:
        for _ in range(n):
            ours(spans, records, exemplars=False)

    def otel(n: int) -> None:
        for _ in range(n):
            theirs(spans)

    results = measure({"pt": pt, "pt_no_exemplars": pt_no_exemplars, "otel": otel}, rounds=args.rounds)
    per_span = {name: us / SPANS for name, us in results.items()}
    report(
        f"RED metrics for one minute of {SPANS:,} spans over {OPERATIONS} operations (us per span)",
        per_span,
        [
            ("ours / OpenTelemetry's metrics SDK", "pt", "otel"),
            ("without exemplars / OpenTelemetry's", "pt_no_exemplars", "otel"),
        ],
    )
    print(
        f"  request size: ours {ours(spans, records, True):,} bytes, OpenTelemetry's {theirs(spans):,} bytes"
        " (before gzip)"
    )


if __name__ == "__main__":
    main()
