"""Helpers for testing code instrumented with pitchey-trace.

from pitchey_trace.testing import capture_spans

def test_checkout():
    with capture_spans() as exporter:
        checkout()
    assert [s["name"] for s in exporter.spans()] == ["charge", "checkout"]  # as they end
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pitchey_trace import _safety, _stats
from pitchey_trace._config import configure, force_flush, shutdown
from pitchey_trace.exporters.memory import InMemoryExporter

__all__ = ["InMemoryExporter", "capture_spans", "reset", "swallowed_errors"]


@contextmanager
def capture_spans(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """Configure tracing with an :class:`InMemoryExporter` (always-on sampling unless told
    otherwise); on exit flush, so the exporter holds every record, then shut down."""
    exporter = InMemoryExporter()
    configure_kwargs.setdefault("sample_rate", 1.0)
    configure_kwargs.setdefault("service", "test")
    configure(exporters=[exporter, *configure_kwargs.pop("exporters", [])], **configure_kwargs)
    try:
        yield exporter
    finally:
        force_flush(10.0)
        shutdown(10.0)


def reset() -> None:
    """Shut tracing down and zero the counters (between tests)."""
    shutdown(5.0)
    _stats.reset()
    _safety._last_logged.clear()


@contextmanager
def swallowed_errors() -> Iterator[list[tuple[str, BaseException]]]:
    """Collect every internal error the SDK swallowed inside the block (our bugs show up in
    tests even though users never see them)."""
    seen: list[tuple[str, BaseException]] = []
    previous = _safety.swallowed_hook
    _safety.swallowed_hook = lambda kind, exc: seen.append((kind, exc))
    try:
        yield seen
    finally:
        _safety.swallowed_hook = previous
