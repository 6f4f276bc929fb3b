"""OpenTelemetry's global tracer provider can be set once per process: tests that call
``pitchey_trace.otel.install()`` in-process put it back afterwards, or every later test in the
worker would record the spans of libraries that use the OpenTelemetry API natively (FastAPI's
own request spans, for one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace as otel_trace


@pytest.fixture(autouse=True)
def _otel_global_provider_restored() -> Iterator[None]:
    once = otel_trace._TRACER_PROVIDER_SET_ONCE
    saved = (otel_trace._TRACER_PROVIDER, once._done)
    yield
    otel_trace._TRACER_PROVIDER, once._done = saved
