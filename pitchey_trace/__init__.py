"""pitchey-trace: distributed tracing for Python services.

    import pitchey_trace as pt
    pt.configure(service="pitch-api", exporters=[pt.ConsoleExporter()])
    with pt.span("load_pitch", attributes={"pitch.id": 42}) as s:
        s.add_event("cache_miss")

See ``docs/quickstart.md``. Everything public is listed in ``__all__``; other modules whose
names start with an underscore are private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pitchey_trace._config import configure, force_flush, is_configured, shutdown, stats
from pitchey_trace._context import ContextThreadPoolExecutor, suppress_tracing, wrap_context
from pitchey_trace._span import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    Span,
    SpanKind,
    StatusCode,
    TraceContext,
)
from pitchey_trace._tracer import (
    current_context,
    current_span,
    emit_audit,
    get_tracer,
    span,
    start_span,
    traced,
    use_context,
)
from pitchey_trace.exceptions import (
    ArchiveUnavailable,
    ConfigurationError,
    IntegrationUnavailable,
    PitcheyTraceError,
)
from pitchey_trace.exporters import ConsoleExporter, InMemoryExporter
from pitchey_trace.processors import Rollups, Router
from pitchey_trace.propagation import (
    B3Propagator,
    CompositePropagator,
    W3CPropagator,
    baggage_entries,
    extract,
    get_baggage,
    get_propagators,
    inject,
    set_baggage,
    set_propagators,
    with_baggage,
)
from pitchey_trace.records import CategoryThresholds
from pitchey_trace.sampling import (
    AlwaysOff,
    AlwaysOn,
    Decision,
    ParentBased,
    RateLimited,
    Rule,
    RuleBased,
    TraceIdRatio,
)
from pitchey_trace.sanitize import Sanitizer

__all__ = [
    "INVALID_SPAN",
    "AlwaysOff",
    "AlwaysOn",
    "ArchiveUnavailable",
    "B3Propagator",
    "CategoryThresholds",
    "CompositePropagator",
    "ConfigurationError",
    "ConsoleExporter",
    "ContextThreadPoolExecutor",
    "Decision",
    "InMemoryExporter",
    "IntegrationUnavailable",
    "Link",
    "NonRecordingSpan",
    "ParentBased",
    "PitcheyTraceError",
    "RateLimited",
    "Rollups",
    "Router",
    "Rule",
    "RuleBased",
    "Sanitizer",
    "Span",
    "SpanKind",
    "StatusCode",
    "TraceContext",
    "TraceIdRatio",
    "W3CPropagator",
    "__version__",
    "baggage_entries",
    "configure",
    "current_context",
    "current_span",
    "emit_audit",
    "extract",
    "force_flush",
    "get_baggage",
    "get_propagators",
    "get_tracer",
    "inject",
    "is_configured",
    "set_baggage",
    "set_propagators",
    "shutdown",
    "span",
    "start_span",
    "stats",
    "suppress_tracing",
    "traced",
    "use_context",
    "with_baggage",
    "wrap_context",
]
