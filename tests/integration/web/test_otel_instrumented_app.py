"""A Starlette app instrumented with OpenTelemetry's own ASGI middleware
(opentelemetry-instrumentation-asgi), served by uvicorn on 127.0.0.1 and called over HTTP:
through pitchey_trace.otel its spans become pitchey-trace records, continue the caller's trace,
nest with pitchey spans opened by the handler, and pass the sanitizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import pitchey_trace as pt
from pitchey_trace.otel import TracerProvider
from pitchey_trace.testing import capture_spans

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def pitch(request: Request) -> JSONResponse:
    with pt.span("load_pitch", {"pitch.id": request.path_params["pitch_id"]}):
        return JSONResponse({"ok": True})


def test_opentelemetry_instrumented_app_records_pitchey_spans(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    app = OpenTelemetryMiddleware(
        Starlette(routes=[Route("/pitches/{pitch_id}", pitch)]), tracer_provider=TracerProvider()
    )
    with capture_spans() as mem:
        url = serve_asgi(app)
        answer = httpx.get(
            url + "/pitches/42?token=s3cr3t-value", headers={"traceparent": CALLER}, timeout=10
        )
        assert answer.status_code == 200
        # (the middleware ends its span just after the client got the last byte)
        [server] = wait_for(lambda: [s for s in mem.spans() if s["kind"] == "server"])
        spans = mem.spans()
    load = next(s for s in spans if s["name"] == "load_pitch")
    assert server["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # the caller's trace continues
    assert server["parent_span_id"] == "00f067aa0ba902b7"
    assert server["attributes"]["otel.scope.name"] == "opentelemetry.instrumentation.asgi"
    assert server["attributes"].get("http.request.method", server["attributes"].get("http.method")) == "GET"
    assert load["parent_span_id"] == server["span_id"]  # pitchey inside OpenTelemetry's span
    assert load["trace_id"] == server["trace_id"]
    assert "s3cr3t-value" not in str(spans)  # OpenTelemetry's attributes pass our sanitizer
