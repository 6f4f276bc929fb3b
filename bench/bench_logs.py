"""Shipping the application's logs: what one ``logger.info(...)`` costs with our log export
beside OpenTelemetry's logging handler, same process, same call.

    .venv/bin/python bench/bench_logs.py     # after: make bench-setup (~30 s)

One op = ``log.info("order %s placed for %s", 42, "pitch-7", extra={"order.id": 42})`` inside a
span of the SDK under test, on a logger of its own (no other handler, not propagated):
  floor   the same call on a logger whose only handler is a ``logging.NullHandler``
  pt      ``LogExportHandler`` (the code ``export_logs()`` runs): a sanitized ``log`` record
          with the span's ids, through the pipeline to a no-op exporter
  otel    OpenTelemetry's ``LoggingHandler`` on a ``LoggerProvider`` with a
          ``BatchLogRecordProcessor`` and a no-op exporter (OpenTelemetry SDK 1.45)
Both SDKs are flushed every 4,000 ops inside the timing, so the export threads' work (our
record's sanitizing and routing; OpenTelemetry's batching) is charged to the op.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import NoopExporter, measure, otel_noop_provider, report

import pitchey_trace as pt
from pitchey_trace.web import LogExportHandler

FLUSH_EVERY = 4000


def lone_logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogExporter, LogExportResult

    noop = NoopExporter()
    pt.configure(service="bench", exporters=[noop], rollups=None)

    class OtelNoop(LogExporter):
        def __init__(self) -> None:
            self.records = 0

        def export(self, batch: Any) -> LogExportResult:
            self.records += len(batch)
            return LogExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    otel_exporter = OtelNoop()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(otel_exporter))
    otel_tracer = otel_noop_provider().get_tracer("bench")

    floor_log = lone_logger("bench.floor", logging.NullHandler())
    pt_log = lone_logger("bench.pt", LogExportHandler(logging.INFO))
    otel_log = lone_logger("bench.otel", LoggingHandler(logging.INFO, logger_provider=provider))
    extra = {"order.id": 42}

    def floor(n: int) -> None:
        with pt.span("request"):
            for _ in range(n):
                floor_log.info("order %s placed for %s", 42, "pitch-7", extra=extra)

    def ours(n: int) -> None:
        with pt.span("request"):
            for i in range(n):
                pt_log.info("order %s placed for %s", 42, "pitch-7", extra=extra)
                if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                    pt.force_flush()
        pt.force_flush()

    def otel(n: int) -> None:
        with otel_tracer.start_as_current_span("request"):
            for i in range(n):
                otel_log.info("order %s placed for %s", 42, "pitch-7", extra=extra)
                if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                    provider.force_flush()
        provider.force_flush()

    results = measure({"floor": floor, "pt": ours, "otel": otel}, rounds=args.rounds)
    report(
        "one logger.info() shipped with its trace ids",
        results,
        [("pt / otel", "pt", "otel"), ("pt / floor", "pt", "floor")],
    )
    added = (results["pt"] - results["floor"]) / (results["otel"] - results["floor"])
    print(f"  ratio of added cost (ours / OpenTelemetry's)   {added:9.3f}")
    dropped = pt.stats().get("dropped", 0)
    print(
        f"  records: ours {noop.records} exported, {dropped} dropped; OpenTelemetry {otel_exporter.records}"
    )
    pt.shutdown()
    provider.shutdown()


if __name__ == "__main__":
    main()
