"""ASGITracingMiddleware under uvicorn: clients that go away (mid-upload, mid-stream, from a
WebSocket) are not server errors, as in the aiohttp integration; route templates of routers
FastAPI nests (``include_router`` prefixes, a router included twice) and of routes mounted twice.
Every client here is a raw socket, so it can leave at an exact point."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
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
from uvicorn.protocols.utils import ClientDisconnected

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from tests.support.web import event_names, raw_connect, read_until, reset, server_span

pytestmark = pytest.mark.integration

CHUNK = b"x" * 4096
BODY_SIZE = "http.response.body.size"


def _ws_connect(url: str, path: str) -> socket.socket:
    """A raw WebSocket client: the handshake done, the socket returned."""
    sock = raw_connect(url)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in read_until(sock, b"\r\n\r\n").split(b"\r\n", 1)[0]
    return sock


def _ws_text(sock: socket.socket, text: str) -> None:
    payload, mask = text.encode(), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def _spec_2_4(app: Any) -> Any:
    """What an ASGI 2.4 server does (uvicorn does it for WebSockets, not for HTTP): its HTTP
    ``send`` raises ``ClientDisconnected`` (an ``OSError``) once the client has gone, rather
    than dropping the message. Sits between uvicorn and the middleware; counts the body bytes
    it handed on."""
    passed: list[int] = []

    async def server(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope["asgi"] = {**scope.get("asgi", {}), "spec_version": "2.4"}
        cycle = send.__self__  # (uvicorn's RequestResponseCycle: knows when its client left)

        async def strict_send(message: Any) -> None:
            if cycle.disconnected:
                raise ClientDisconnected()
            await send(message)
            if message["type"] == "http.response.body":
                passed.append(len(message.get("body", b"")))

        await app(scope, receive, strict_send)

    server.passed = passed  # type: ignore[attr-defined]
    return server


async def upload(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(f"{len(body)} bytes")


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(500):
            yield CHUNK
            await asyncio.sleep(0.01)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def backend_fails_mid_stream(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield CHUNK
        raise ConnectionRefusedError("the pricing service refused")

    return StreamingResponse(body(), media_type="application/octet-stream")


async def backend_refused(request: Request) -> Response:
    raise ConnectionRefusedError("the pricing service refused")


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/upload", upload, methods=["POST"]),
            Route("/endless", endless),
            Route("/backend-mid-stream", backend_fails_mid_stream),
            Route("/backend", backend_refused),
        ]
    )


def test_a_client_gone_mid_upload_is_not_a_server_error(serve_asgi: Any, wait_for: Any) -> None:
    """The body's read gets ``http.disconnect``: Starlette raises ``ClientDisconnect`` and its
    error middleware answers 500, to no one. It was an error span with that 500; now, as with
    aiohttp: no status (the audit outcome is ``aborted``), no body bytes, no error, and a
    ``client.disconnected`` event."""
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(starlette_app()))
        sock = raw_connect(url)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        time.sleep(0.3)  # (the app is reading the body)
        sock.close()
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["name"] == "POST /upload"
    assert span["status"] == "unset"
    assert "http.response.status_code" not in span["attributes"]
    assert "error.type" not in span["attributes"]
    assert span["attributes"]["http.response.body.size"] == 0
    assert span["attributes"]["http.request.body.size"] == 100000
    assert event_names(span) == ["client.disconnected"]
    assert span["events"][0]["attributes"]["exception.type"] == "ClientDisconnect"
    assert audit["outcome"] == "aborted"


@pytest.mark.parametrize("stream", ["starlette", "bare"])
def test_a_client_gone_mid_stream_keeps_the_status_and_the_bytes_sent(
    serve_asgi: Any, wait_for: Any, stream: str
) -> None:
    """An ASGI 2.4 server's ``send`` raises ``ClientDisconnected`` once the client left; it
    escapes the app (through Starlette's ``ClientDisconnect``, or as it is from a bare app).
    It was an error span; now the status that went out, the body bytes the server took (not
    the refused message's), no error, a ``client.disconnected`` event."""

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(500):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})

    server = _spec_2_4(ASGITracingMiddleware(starlette_app() if stream == "starlette" else bare))
    with capture_spans() as exporter:
        url = serve_asgi(server)
        sock = raw_connect(url)
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(sock, CHUNK[:100])
        reset(sock)
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["status"] == "unset"
    assert span["attributes"]["http.response.status_code"] == 200
    assert "error.type" not in span["attributes"]
    assert span["attributes"]["http.response.body.size"] == sum(server.passed)
    assert 0 < sum(server.passed) < 500 * len(CHUNK)
    assert event_names(span) == ["client.disconnected"]
    expected = "ClientDisconnect" if stream == "starlette" else "ClientDisconnected"
    assert span["events"][0]["attributes"]["exception.type"] == expected
    assert audit["outcome"] == "200"


@pytest.mark.parametrize(("path", "status"), [("/backend", 500), ("/backend-mid-stream", 200)])
def test_the_apps_own_connection_errors_are_still_errors(
    serve_asgi: Any, wait_for: Any, path: str, status: int
) -> None:
    """A backend's ``ConnectionError``, raised by the handler or by its streamed body (which
    Starlette turns into ``ClientDisconnect`` on an ASGI 2.4 server), is no client leaving."""
    with capture_spans() as exporter:
        url = serve_asgi(_spec_2_4(ASGITracingMiddleware(starlette_app())))
        # (a stream cut short: the client sees the connection dropped mid-body)
        with pytest.raises(httpx.HTTPError) if status == 200 else contextlib.nullcontext():
            httpx.get(url + path)
        span = wait_for(server_span(exporter))
    assert span["status"] == "error"
    assert span["attributes"]["http.response.status_code"] == status
    assert "client.disconnected" not in event_names(span)
    assert "exception" in event_names(span)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:  # (WebSocketDisconnect, raised as the client leaves, is not caught)
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())


SENT: list[int] = []


async def ticker(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    for _ in range(500):
        await websocket.send_text("tick")  # (raises once the client has gone)
        SENT.append(1)
        await asyncio.sleep(0.01)


async def backend_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    raise ConnectionResetError("the chat backend reset")


def websocket_app() -> ASGITracingMiddleware:
    return ASGITracingMiddleware(
        Starlette(
            routes=[
                WebSocketRoute("/echo", echo),
                WebSocketRoute("/ticker", ticker),
                WebSocketRoute("/backend", backend_socket),
            ]
        )
    )


def test_a_websocket_client_that_leaves_is_not_a_server_error(serve_asgi: Any, wait_for: Any) -> None:
    """The server reports ``websocket.disconnect``; Starlette's ``receive_text`` raises
    ``WebSocketDisconnect``, which escapes the handler. It was an error span; now status 101,
    no error, a ``client.disconnected`` event (audit outcome 101)."""
    with capture_spans() as exporter:
        url = serve_asgi(websocket_app())
        sock = _ws_connect(url, "/echo")
        _ws_text(sock, "hello")
        assert b"HELLO" in read_until(sock, b"HELLO")
        reset(sock)
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["name"] == "WEBSOCKET /echo"
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert event_names(span) == ["client.disconnected"]
    assert span["events"][0]["attributes"]["exception.type"] == "WebSocketDisconnect"
    assert span["attributes"]["websocket.messages.received"] == 1
    assert span["attributes"]["websocket.messages.sent"] == 1
    assert audit["outcome"] == "101"


def test_a_websocket_send_to_a_client_that_left_is_not_a_server_error(serve_asgi: Any, wait_for: Any) -> None:
    """uvicorn's ``send`` raises ``ClientDisconnected`` (Starlette: ``WebSocketDisconnect``). It
    was an error span, and the refused message was counted as sent."""
    SENT.clear()
    with capture_spans() as exporter:
        url = serve_asgi(websocket_app())
        sock = _ws_connect(url, "/ticker")
        _ws_text(sock, "go")
        read_until(sock, b"tick")
        reset(sock)
        span = wait_for(server_span(exporter))
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert event_names(span) == ["client.disconnected"]
    assert span["attributes"]["websocket.messages.sent"] == len(SENT) > 0


def test_a_websocket_handlers_own_connection_error_is_an_error(serve_asgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(websocket_app())
        sock = _ws_connect(url, "/backend")
        _ws_text(sock, "go")
        span = wait_for(server_span(exporter))
        sock.close()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionResetError"
    assert "client.disconnected" not in event_names(span)


def test_fastapi_include_router_prefixes_are_in_the_route(serve_asgi: Any, wait_for: Any) -> None:
    """FastAPI nests an included router (``_IncludedRouter``) rather than copying its routes:
    ``scope["route"]`` is the router's own route, without the prefixes given to
    ``include_router``. Spans were named ``GET /orders/{order_id}`` for
    ``/api/v1/orders/5``; a router included twice (FastAPI's way to serve an API under two
    prefixes) is named after the prefix the request came through."""
    orders = APIRouter(prefix="/orders")

    @orders.get("/{order_id}")
    async def get_order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    v1 = APIRouter(prefix="/v1")
    v1.include_router(orders)
    api = FastAPI()
    api.include_router(v1, prefix="/api")
    api.include_router(v1, prefix="/latest")
    api.add_middleware(ASGITracingMiddleware)
    with capture_spans() as exporter:
        url = serve_asgi(api)
        paths = ["/api/v1/orders/5", "/latest/v1/orders/6", "/api/v1/orders/7"]
        assert [httpx.get(url + p).status_code for p in paths] == [200, 200, 200]
        spans = wait_for(lambda: len(exporter.spans()) == 3 and exporter.spans())
    assert [(s["attributes"]["url.path"], s["name"]) for s in spans] == [
        ("/api/v1/orders/5", "GET /api/v1/orders/{order_id}"),
        ("/latest/v1/orders/6", "GET /latest/v1/orders/{order_id}"),
        ("/api/v1/orders/7", "GET /api/v1/orders/{order_id}"),
    ]
    assert spans[1]["attributes"]["http.route"] == "/latest/v1/orders/{order_id}"


def test_routes_mounted_twice_are_named_after_the_mount_they_came_through(
    serve_asgi: Any, wait_for: Any
) -> None:
    """The same Route objects under two Mounts (an API served under /v1 and /latest), under a
    root_path: every request was named after the first mount."""

    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    shared = [Route("/things/{thing_id:int}", thing)]
    app = Starlette(routes=[Mount("/v1", routes=shared), Mount("/latest", routes=shared)])
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(app), root_path="/shop")
        for p in ("/v1/things/1", "/latest/things/2", "/v1/things/3"):
            assert httpx.get(url + p).status_code == 200
        spans = wait_for(lambda: len(exporter.spans()) == 3 and exporter.spans())
    assert [(s["attributes"]["url.path"], s["name"]) for s in spans] == [
        ("/shop/v1/things/1", "GET /v1/things/{thing_id:int}"),
        ("/shop/latest/things/2", "GET /latest/things/{thing_id:int}"),
        ("/shop/v1/things/3", "GET /v1/things/{thing_id:int}"),
    ]


@pytest.mark.parametrize("status", [200, 204, 304])
def test_no_body_goes_out_for_head_204_and_304(serve_asgi: Any, wait_for: Any, status: int) -> None:
    """uvicorn sends no body for HEAD, 204 or 304, whatever the app hands it: the span counted
    the app's bytes (http.response.body.size 7 for a HEAD of a 7-byte page)."""

    async def page(request: Request) -> Response:
        code = int(request.query_params.get("status", "200"))
        return Response(b"payload", status_code=code)

    app = ASGITracingMiddleware(Starlette(routes=[Route("/page", page, methods=["GET", "HEAD"])]))
    with capture_spans() as exporter:
        url = serve_asgi(app)
        get = httpx.get(f"{url}/page?status={status}")
        head = httpx.head(f"{url}/page?status={status}")
        assert (get.status_code, head.status_code, head.content) == (status, status, b"")
        spans = wait_for(lambda: len(exporter.spans()) == 2 and exporter.spans())
    sizes = {s["attributes"]["http.request.method"]: s["attributes"][BODY_SIZE] for s in spans}
    assert sizes == {"GET": 7 if status == 200 else 0, "HEAD": 0}
