"""Exporters: where records go.

An exporter is any object with ``export(batch) -> bool`` (``batch`` is a list of sanitized
schema-v1 record dicts, which it must not mutate), and optionally ``force_flush(timeout)``,
``shutdown(timeout)``, ``after_fork()``, ``bind_resource(resource)`` (called as the pipeline
starts, with the process's resource attributes), ``poll()`` (called when its worker wakes with
nothing to export: work of its own, such as a spool to retry), a ``name`` and a ``datasets``
set restricting which datasets (``traces``, ``audit``, ``performance``) it receives. Each runs
on its own worker thread; it may block or retry there without affecting the application.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pitchey_trace.exporters.console import ConsoleExporter
from pitchey_trace.exporters.memory import InMemoryExporter

if TYPE_CHECKING:  # optional-dependency exporters load on first use
    from pitchey_trace.exporters._http import RetryPolicy
    from pitchey_trace.exporters.http_analytics import HttpAnalyticsExporter
    from pitchey_trace.exporters.local_archive import LocalArchiveExporter
    from pitchey_trace.exporters.logpush import LogpushExporter
    from pitchey_trace.exporters.otlp import OTLPExporter
    from pitchey_trace.exporters.otlp_logs import OTLPLogExporter
    from pitchey_trace.exporters.otlp_metrics import OTLPMetricsExporter
    from pitchey_trace.exporters.zipkin import ZipkinExporter

__all__ = [
    "ConsoleExporter",
    "HttpAnalyticsExporter",
    "InMemoryExporter",
    "LocalArchiveExporter",
    "LogpushExporter",
    "OTLPExporter",
    "OTLPLogExporter",
    "OTLPMetricsExporter",
    "RetryPolicy",
    "ZipkinExporter",
]

_LAZY = {
    "HttpAnalyticsExporter": "pitchey_trace.exporters.http_analytics",
    "LocalArchiveExporter": "pitchey_trace.exporters.local_archive",
    "LogpushExporter": "pitchey_trace.exporters.logpush",
    "OTLPExporter": "pitchey_trace.exporters.otlp",
    "OTLPLogExporter": "pitchey_trace.exporters.otlp_logs",
    "OTLPMetricsExporter": "pitchey_trace.exporters.otlp_metrics",
    "RetryPolicy": "pitchey_trace.exporters._http",
    "ZipkinExporter": "pitchey_trace.exporters.zipkin",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
