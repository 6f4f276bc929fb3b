"""FastAPI's native OpenTelemetry telemetry (FastAPI >= 0.16x switches it on once a global
OpenTelemetry tracer provider is set, as ``pitchey_trace.otel.install()`` does) beside
``ASGITracingMiddleware``, under a real uvicorn: how many server spans each request gets, how
the request's spans nest, and the warning that says so (counted as misuse)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from websockets.sync.client import connect

import pitchey_trace as pt
from pitchey_trace.otel import install
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from tests.support.otel_global import _otel_global_provider_restored  # noqa: F401 (autouse)

pytestmark = pytest.mark.integration

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
COUNTER = "misuse.otel.duplicate_instrumentation.fastapi"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        with pt.span("load_item"):
            # OpenTelemetry code annotating "the current span" reaches a span that records
            otel_trace.get_current_span().set_attribute("item.id", item_id)
            return {"id": item_id}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    return app


def _servers(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == "server"]


def _get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def _one_tree(spans: list[dict[str, Any]], server: dict[str, Any]) -> None:
    """Every span of the request is in the server span's trace and below it."""
    by_id = {s["span_id"]: s for s in spans}
    for span in spans:
        assert span["trace_id"] == server["trace_id"], span["name"]
        node = span
        while node is not server:
            node = by_id[node["parent_span_id"]]


@pytest.mark.parametrize("order", ["install_first", "install_after_middleware"])
def test_wrapped_fastapi_app_gets_one_server_span_and_one_trace(
    order: str, serve_asgi: Callable[..., str], wait_for: Callable[..., Any], logs: Any
) -> None:
    """Both orders: FastAPI's native server span gives way to the middleware's, and FastAPI's
    operation spans and the handler's span nest under the middleware's server span (before,
    the handler's spans went to a second trace under FastAPI's own server span)."""
    warnings = logs("pitchey_trace")
    with capture_spans() as mem:
        if order == "install_first":
            install()
            app = ASGITracingMiddleware(_app())
        else:
            app = ASGITracingMiddleware(_app())
            install()
        url = serve_asgi(app)
        assert _get(url + "/items/7").status_code == 200
        assert _get(url + "/items/8").status_code == 200
        wait_for(lambda: len([s for s in mem.spans() if s["name"] == "fastapi.serialization"]) == 2)
        servers = wait_for(lambda: len(_servers(mem.spans())) >= 2 and _servers(mem.spans()))
        spans = mem.spans()
    assert len(servers) == 2  # one per request, not two
    for server in servers:
        assert server["name"] == "GET /items/{item_id}"
        assert "otel.scope.name" not in server["attributes"]  # the middleware's span
        assert server["parent_span_id"] is None
        mine = [s for s in spans if s["trace_id"] == server["trace_id"]]
        assert {s["name"] for s in mine} >= {"load_item", "fastapi.endpoint", "fastapi.serialization"}
        _one_tree(mine, server)
    assert sorted(s["attributes"]["item.id"] for s in spans if s["name"] == "load_item") == [7, 8]
    assert pt.stats()[COUNTER] == 2  # counted per request, logged once
    [warning] = [r for r in warnings.records if "FastAPI" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "telemetry={'tracing': False}" in warning.getMessage()


def test_wrapped_fastapi_app_continues_the_callers_trace_once(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    """With a traceparent, both used to be siblings under the caller's span."""
    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(_app()))
        assert _get(url + "/items/7", traceparent=CALLER).status_code == 200
        wait_for(lambda: any(s["name"] == "fastapi.serialization" for s in mem.spans()))
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    [server] = _servers(spans)
    assert server["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server["parent_span_id"] == "00f067aa0ba902b7"
    _one_tree(spans, server)


def test_error_is_recorded_once_on_the_middlewares_server_span(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(_app()))
        assert _get(url + "/boom").status_code == 500
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    [server] = _servers(spans)
    assert server["status"] == "error"
    assert server["name"] == "GET /boom"
    assert [e["name"] for e in server["events"]].count("exception") == 1
    _one_tree(spans, server)


def test_websocket_connection_gets_one_server_span(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        with pt.span("ws.echo"):
            await ws.send_text(await ws.receive_text())
        await ws.close()

    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(app))
        with connect(url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    [server] = _servers(spans)
    assert "otel.scope.name" not in server["attributes"]
    _one_tree(spans, server)
    assert any(s["name"] == "ws.echo" for s in spans)
    assert pt.stats()[COUNTER] == 1


def test_fastapi_app_called_in_process_from_a_traced_request_keeps_its_server_span(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    """Another app served in-process (httpx's ASGITransport) from a traced handler is a request
    of its own: its server span is FastAPI's, not folded into the outer request's."""
    inner = _app()
    outer = FastAPI()

    @outer.get("/proxy")
    async def proxy() -> dict[str, int]:
        transport = httpx.ASGITransport(app=inner)
        async with httpx.AsyncClient(transport=transport, base_url="http://inner") as client:
            return dict((await client.get("/items/3")).json())

    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(outer))
        assert _get(url + "/proxy").json() == {"id": 3}
        wait_for(lambda: len(_servers(mem.spans())) == 2)
        spans = mem.spans()
    names = sorted((s["name"], s["attributes"].get("otel.scope.name")) for s in _servers(spans))
    assert names == [("GET /items/{item_id}", "fastapi"), ("GET /proxy", None)]
    assert COUNTER in pt.stats()  # the outer request is the wrapped FastAPI app's


def test_fastapi_without_install_has_no_native_spans(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    with capture_spans() as mem:
        url = serve_asgi(ASGITracingMiddleware(_app()))
        assert _get(url + "/items/7").status_code == 200
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    [server] = _servers(spans)
    assert [s["name"] for s in spans if s["name"].startswith("fastapi.")] == []
    _one_tree(spans, server)
    assert COUNTER not in pt.stats()


def test_fastapi_tracing_off_leaves_only_the_middlewares_spans(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    """The switch the warning names: FastAPI(telemetry={"tracing": False})."""
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/x")
    def x() -> int:
        return 1

    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(app))
        assert _get(url + "/x").status_code == 200
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    assert [s["name"] for s in spans] == ["GET /x"]
    assert COUNTER not in pt.stats()


def test_add_middleware_inside_fastapi_is_warned_at_construction(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any], logs: Any
) -> None:
    """Added with add_middleware(), the middleware runs inside FastAPI's native server span
    (FastAPI starts it before its stack): two server spans, which the warning (given when the
    stack is built, on the first request) says, with the two ways out."""
    warnings = logs("pitchey_trace")
    app = _app()
    app.add_middleware(ASGITracingMiddleware)
    with capture_spans() as mem:
        install()
        url = serve_asgi(app)
        assert _get(url + "/items/7").status_code == 200
        servers = wait_for(lambda: len(_servers(mem.spans())) == 2 and _servers(mem.spans()))
    assert sorted(str(s["attributes"].get("otel.scope.name")) for s in servers) == ["None", "fastapi"]
    assert pt.stats()[COUNTER] == 1
    [warning] = [r for r in warnings.records if "add_middleware" in r.getMessage()]
    assert "telemetry={'tracing': False}" in warning.getMessage()


def test_add_middleware_without_install_is_not_warned() -> None:
    app = _app()
    app.add_middleware(ASGITracingMiddleware)
    app.build_middleware_stack()
    assert COUNTER not in pt.stats()


def test_excluded_path_records_no_fastapi_span_either(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    """The middleware serves /health untraced ("nothing is recorded below"); FastAPI's native
    server span for it, started with an explicit (extracted) parent, was recorded as a root."""
    app = _app()

    @app.get("/health")
    def health() -> int:
        return 1

    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(app))
        assert _get(url + "/health", traceparent=CALLER).status_code == 200
        assert _get(url + "/health").status_code == 200
        assert _get(url + "/items/7").status_code == 200  # (a traced request, to wait for)
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    assert [s["name"] for s in _servers(spans)] == ["GET /items/{item_id}"]
    assert not [s for s in spans if s["attributes"].get("url.path") == "/health"]


def test_opentelemetry_span_with_explicit_context_is_not_recorded_when_suppressed() -> None:
    tracer = install().get_tracer("lib")
    with capture_spans() as mem:
        with pt.suppress_tracing():
            span = tracer.start_span("explicit-root", context=otel_context.Context())
            assert not span.is_recording()
            span.end()
            with tracer.start_as_current_span("explicit-current", context=otel_context.Context()) as s:
                assert not s.is_recording()
        with pt.span("after"):
            pass
    assert [s["name"] for s in mem.spans()] == ["after"]


def test_add_middleware_with_fastapi_tracing_off_is_not_warned() -> None:
    """The switch the warning names, taken: no warning."""
    install()
    app = FastAPI(telemetry={"tracing": False})
    app.add_middleware(ASGITracingMiddleware)
    app.build_middleware_stack()
    assert COUNTER not in pt.stats()


def test_add_middleware_with_pitchey_provider_given_to_fastapi_is_warned() -> None:
    """No global provider, but FastAPI given one of ours: its spans are recorded here too."""
    from pitchey_trace.otel import TracerProvider

    app = FastAPI(telemetry={"tracer_provider": TracerProvider()})
    app.add_middleware(ASGITracingMiddleware)
    app.build_middleware_stack()
    assert pt.stats()[COUNTER] == 1


def test_current_span_outside_fastapis_operation_spans_is_the_middlewares(
    serve_asgi: Callable[..., str], wait_for: Callable[..., Any]
) -> None:
    """In FastAPI's own middleware (outside its operation spans) OpenTelemetry's current span is
    the request's server span: an attribute set through it lands on the middleware's span, not on
    FastAPI's stand-in, which records nothing."""
    app = _app()

    @app.middleware("http")
    async def tag(request: Any, call_next: Any) -> Any:
        otel_trace.get_current_span().set_attribute("app.tagged", True)
        return await call_next(request)

    with capture_spans() as mem:
        install()
        url = serve_asgi(ASGITracingMiddleware(app))
        assert _get(url + "/items/7").status_code == 200
        wait_for(lambda: _servers(mem.spans()))
        spans = mem.spans()
    [server] = _servers(spans)
    assert server["attributes"].get("app.tagged") is True
