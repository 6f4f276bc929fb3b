"""ASGITracingMiddleware around Starlette and FastAPI apps served by uvicorn on 127.0.0.1,
called over real HTTP (httpx) and WebSocket (websockets) connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware, TraceContextFilter, auth_failure, set_user
from tests.support.web import server_span

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
CHUNK = b"x" * 1000


async def item(request: Request) -> Response:
    with pt.span("load_item"):
        pass
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def order(request: Request) -> Response:
    return PlainTextResponse("order")


async def busy(request: Request) -> Response:
    return PlainTextResponse("try later", status_code=503)


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def stream(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            if i:
                await asyncio.sleep(0.15)
            yield CHUNK

    return StreamingResponse(body(), media_type="application/octet-stream")


async def health(request: Request) -> Response:
    with pt.span("health_check_work"):
        pass
    return PlainTextResponse("ok")


async def me(request: Request) -> Response:
    set_user("u-17")
    return PlainTextResponse("me")


async def login(request: Request) -> Response:
    auth_failure("bad_password")
    return PlainTextResponse("no", status_code=401)


async def forbidden(request: Request) -> Response:
    return PlainTextResponse("no", status_code=403)


async def limited(request: Request) -> Response:
    return PlainTextResponse("slow down", status_code=429)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        if text == "bye":
            break
        await websocket.send_text(text.upper())
    await websocket.close(code=1000)


def starlette_app(**options: Any) -> ASGITracingMiddleware:
    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/busy", busy),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/healthz", health),
            Route("/me", me),
            Route("/login", login, methods=["POST"]),
            Route("/forbidden", forbidden),
            Route("/limited", limited),
            WebSocketRoute("/ws/{room}", echo),
            Mount("/api/v1", routes=[Route("/orders/{order_id:int}", order)]),
        ]
    )
    return ASGITracingMiddleware(app, **options)


def test_incoming_traceparent_is_continued(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app(traceresponse=True))
        r = httpx.get(f"{url}/items/42?page=2", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        span = wait_for(server_span(exporter, TRACE_ID))
        child = wait_for(lambda: exporter.spans("load_item"))[0]
    assert r.status_code == 200
    assert r.headers["x-trace-id"] == TRACE_ID
    assert r.headers["traceresponse"] == f"00-{TRACE_ID}-{span['span_id']}-01"
    assert span["parent_span_id"] == PARENT_ID
    assert span["name"] == "GET /items/{item_id}"
    attrs = span["attributes"]
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/items/{item_id}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/items/42"
    assert attrs["url.scheme"] == "http"
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user_agent.original"].startswith("python-httpx/")
    assert attrs["http.response.body.size"] == len(b"item 42")
    assert span["status"] == "unset"
    assert child["trace_id"] == TRACE_ID
    assert child["parent_span_id"] == span["span_id"]


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id is invalid (W3C 3.2.2.3)
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden (W3C 3.2.2.1)
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # ids are lowercase hex (W3C 3.2.2.3)
    ],
)
def test_new_trace_when_traceparent_absent_or_malformed(
    serve_asgi: Any, wait_for: Any, traceparent: str | None
) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        r = httpx.get(f"{url}/items/1", headers=headers)
        span = wait_for(server_span(exporter))
    assert r.status_code == 200
    assert span["parent_span_id"] is None
    assert span["trace_id"] != TRACE_ID
    assert span["trace_id"] == r.headers["x-trace-id"]


def test_unsampled_incoming_flag_is_honoured(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans(sample_rate=1.0) as exporter:
        url = serve_asgi(starlette_app(traceresponse=True))
        r = httpx.get(f"{url}/items/7", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
        # The audit record is written when the span ends; once it is out, the span would be too.
        audit = wait_for(lambda: exporter.of_type("audit"))[0]
        r2 = httpx.get(f"{url}/items/8")  # and a fresh root request is sampled (rate 1.0)
        wait_for(server_span(exporter, r2.headers["x-trace-id"]))
    assert r.headers["x-trace-id"] == TRACE_ID
    assert r.headers["traceresponse"].endswith("-00")
    assert audit["trace_id"] == TRACE_ID
    assert [s for s in exporter.spans() if s["trace_id"] == TRACE_ID] == []


def test_routes_are_templated_never_raw_paths(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        httpx.get(f"{url}/api/v1/orders/991")
        httpx.get(f"{url}/no/such/123")
        httpx.delete(f"{url}/items/5")  # route exists, method does not: 405
        spans = wait_for(lambda: len(exporter.spans()) >= 3 and exporter.spans())
    by_status = {s["attributes"]["http.response.status_code"]: s for s in spans if s["kind"] == "server"}
    assert by_status[200]["name"] == "GET /api/v1/orders/{order_id:int}"
    assert by_status[200]["attributes"]["http.route"] == "/api/v1/orders/{order_id:int}"
    assert by_status[404]["name"] == "GET"
    assert "http.route" not in by_status[404]["attributes"]
    assert by_status[405]["name"] == "DELETE /items/{item_id}"
    assert all("991" not in s["name"] and "123" not in s["name"] for s in spans)


def test_5xx_response_marks_the_span_as_error(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        r = httpx.get(f"{url}/busy")
        span = wait_for(server_span(exporter))
    assert r.status_code == 503
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "503"
    assert span["attributes"]["http.response.status_code"] == 503


def test_exception_is_recorded_reraised_and_correlated(serve_asgi: Any, wait_for: Any, logs: Any) -> None:
    collector = logs("uvicorn.error", TraceContextFilter())
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        r = httpx.get(f"{url}/boom")
        span = wait_for(server_span(exporter))
        # uvicorn logs the exception it got back from the app: proof it was re-raised.
        record = wait_for(lambda: [x for x in collector.records if x.exc_info])[0]
    assert r.status_code == 500
    trace_id = r.headers["x-trace-id"]
    assert span["trace_id"] == trace_id
    assert span["status"] == "error"
    assert span["status_message"] == "RuntimeError: kaboom"
    assert span["attributes"]["error.type"] == "RuntimeError"
    [event] = [e for e in span["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert isinstance(record.exc_info[1], RuntimeError)
    assert str(record.exc_info[1]) == "kaboom"
    assert record.trace_id == trace_id  # type: ignore[attr-defined]
    assert record.span_id == span["span_id"]  # type: ignore[attr-defined]


def test_streaming_response_is_timed_to_its_last_byte(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        with httpx.Client() as client, client.stream("GET", f"{url}/stream") as r:
            chunks = r.iter_raw()
            first = next(chunks)
            first_at = time.time_ns()
            rest = b"".join(chunks)
            last_at = time.time_ns()
        span = wait_for(server_span(exporter))
    assert len(first) + len(rest) == 3 * len(CHUNK)
    assert span["attributes"]["http.response.body.size"] == 3 * len(CHUNK)
    # Two 150 ms pauses come after the first chunk: the span covers them.
    assert span["end_time_unix_nano"] - first_at >= 250_000_000
    assert span["start_time_unix_nano"] < first_at
    assert span["duration_ms"] >= 300
    assert span["end_time_unix_nano"] <= last_at + 1_000_000_000


def test_excluded_paths_are_not_traced(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        health = httpx.get(f"{url}/healthz")
        other = httpx.get(f"{url}/items/3")
        wait_for(server_span(exporter, other.headers["x-trace-id"]))
    assert health.status_code == 200
    assert "x-trace-id" not in health.headers
    assert [s["name"] for s in exporter.spans()] == ["load_item", "GET /items/{item_id}"]
    assert [a["target"] for a in exporter.of_type("audit")] == ["/items/{item_id}"]


def test_excluded_paths_are_configurable(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app(excluded_paths=["/items/*"]))
        items = httpx.get(f"{url}/items/3")
        health = httpx.get(f"{url}/healthz")
        wait_for(server_span(exporter))
    assert "x-trace-id" not in items.headers
    assert health.headers["x-trace-id"]
    assert {s["name"] for s in exporter.spans()} == {"GET /healthz", "health_check_work"}


def test_websocket_connection_is_its_own_span(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        ws_url = url.replace("http://", "ws://") + "/ws/lobby"
        with connect(ws_url, additional_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}) as ws:
            header = ws.response.headers["X-Trace-Id"]
            replies = []
            for text in ("hello", "again"):
                ws.send(text)
                replies.append(ws.recv())
            ws.send("bye")
        span = wait_for(server_span(exporter, TRACE_ID))
        audit = wait_for(lambda: exporter.of_type("audit"))[0]
    assert replies == ["HELLO", "AGAIN"]
    assert header == TRACE_ID
    assert span["name"] == "WEBSOCKET /ws/{room}"
    assert span["parent_span_id"] == PARENT_ID
    attrs = span["attributes"]
    assert attrs["url.scheme"] == "ws"
    assert attrs["url.path"] == "/ws/lobby"
    assert attrs["http.route"] == "/ws/{room}"
    assert attrs["websocket.messages.received"] == 3
    assert attrs["websocket.messages.sent"] == 2
    assert attrs["websocket.close.code"] == 1000
    assert span["status"] == "unset"
    assert audit["action"] == "WEBSOCKET /ws/{room}"
    assert audit["outcome"] == "101"


def test_audit_records_for_requests_and_security_events(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(starlette_app())
        me_r = httpx.get(f"{url}/me", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        httpx.post(f"{url}/login")
        httpx.get(f"{url}/forbidden")
        httpx.get(f"{url}/limited")
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 7 and exporter.of_type("audit"))
    requests_ = {a["action"]: a for a in audits if a["category"] == "request"}
    security = sorted((a["action"], a["outcome"]) for a in audits if a["category"] == "security")
    assert set(requests_) == {"GET /me", "POST /login", "GET /forbidden", "GET /limited"}
    me_audit = requests_["GET /me"]
    assert me_audit["actor"] == "u-17"
    assert me_audit["target"] == "/me"
    assert me_audit["outcome"] == "200"
    assert me_audit["trace_id"] == me_r.headers["x-trace-id"] == TRACE_ID
    assert me_audit["attributes"]["http.request.method"] == "GET"
    assert me_audit["attributes"]["http.response.status_code"] == 200
    assert me_audit["attributes"]["client.address"] == "127.0.0.1"
    assert me_audit["attributes"]["duration_ms"] >= 0
    # The login's explicit auth failure replaces its 401 event; 403 and 429 get one each.
    assert security == [
        ("GET /forbidden", "403"),
        ("GET /limited", "429"),
        ("POST /login", "bad_password"),
    ]
    [me_span] = [s for s in exporter.spans() if s["name"] == "GET /me"]
    assert me_span["attributes"]["user.id"] == "u-17"


def test_fastapi_route_templates(serve_asgi: Any, wait_for: Any) -> None:
    api = FastAPI()
    router = APIRouter(prefix="/pitches")

    @router.get("/{pitch_id}/comments/{comment_id}")
    async def comment(pitch_id: int, comment_id: int) -> dict[str, int]:
        return {"pitch": pitch_id, "comment": comment_id}

    api.include_router(router)
    api.add_middleware(ASGITracingMiddleware)
    with capture_spans() as exporter:
        url = serve_asgi(api)
        r = httpx.get(f"{url}/pitches/12/comments/99")
        span = wait_for(server_span(exporter))
    assert r.json() == {"pitch": 12, "comment": 99}
    assert span["name"] == "GET /pitches/{pitch_id}/comments/{comment_id}"
    assert span["trace_id"] == r.headers["x-trace-id"]


def test_a_requests_warnings_are_events_of_its_span(serve_asgi: Any, wait_for: Any) -> None:
    import logging

    from pitchey_trace.web import instrument_logging, uninstrument_logging

    log = logging.getLogger("pitch.quotes")

    async def quote(request: Request) -> Response:
        log.warning("quote service slow for %s", request.path_params["sym"])
        return PlainTextResponse("42")

    app = ASGITracingMiddleware(Starlette(routes=[Route("/quotes/{sym}", quote)]))
    instrument_logging()
    try:
        with capture_spans() as exporter:
            url = serve_asgi(app)
            r = httpx.get(f"{url}/quotes/ACME")
            span = wait_for(server_span(exporter))
    finally:
        uninstrument_logging()
    assert r.status_code == 200
    assert span["name"] == "GET /quotes/{sym}"
    [event] = span["events"]
    assert event["name"] == "log"
    assert event["attributes"]["log.message"] == "quote service slow for ACME"
    assert event["attributes"]["log.logger"] == "pitch.quotes"
    assert span["start_time_unix_nano"] <= event["time_unix_nano"] <= span["end_time_unix_nano"]
