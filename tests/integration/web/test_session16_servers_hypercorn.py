"""ASGITracingMiddleware under hypercorn on 127.0.0.1, over HTTP/1.1 and HTTP/2 (h2c with prior
knowledge: httpx with ``http2=True``, and a raw ``h2`` client where a stream must be reset at an
exact point), and a WebSocket over HTTP/1.1. One server for the module."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from tests.integration.web.conftest import run_hypercorn
from tests.support.web import event_names, server_span

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHUNK = b"s" * 1000


async def item(request: Request) -> Response:
    with pt.span("load_item"):
        pass
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def upload(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(str(len(body)))


async def order(request: Request) -> Response:
    return PlainTextResponse(f"order {request.path_params['order_id']}")


async def busy(request: Request) -> Response:
    return PlainTextResponse("later", status_code=503)


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def stream(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            if i:
                await asyncio.sleep(0.15)
            yield CHUNK

    return StreamingResponse(body(), media_type="application/octet-stream")


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(400):  # 20 s: the client leaves long before
            yield CHUNK
            await asyncio.sleep(0.05)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo {text}")
    await websocket.close(code=1000)


async def plain_boom(scope: Any, receive: Any, send: Any) -> None:
    raise ValueError("bare app")


def _app() -> Any:
    inner = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/upload", upload, methods=["POST"]),
            Route("/busy", busy),
            Route("/boom", boom),
            Route("/stream", stream),
            Route("/endless", endless),
            WebSocketRoute("/ws/{room}", echo_ws),
            Mount("/api/v1", routes=[Route("/orders/{order_id:int}", order)]),
        ]
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bare-boom":
            await plain_boom(scope, receive, send)
        else:
            await inner(scope, receive, send)

    return ASGITracingMiddleware(app)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """hypercorn serving the traced app on a socket bound beforehand (its own loop, in a
    background thread) for the whole module."""
    with run_hypercorn(_app(), probe="/busy") as server:
        yield server.url


@pytest.fixture(params=["1.1", "2"])
def version(request: Any) -> str:
    return str(request.param)


def _client(base_url: str, version: str) -> httpx.Client:
    """HTTP/1.1, or HTTP/2 with prior knowledge (h2c: no upgrade, no TLS)."""
    http2 = version == "2"
    return httpx.Client(base_url=base_url, http1=not http2, http2=http2, timeout=10)


def _port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def test_traceparent_route_status_header_and_protocol_version(
    base_url: str, version: str, path_kind: str, wait_for: Any
) -> None:
    with capture_spans() as exporter:
        with _client(base_url, version) as client:
            response = client.get("/items/42?x=1", headers={"traceparent": TRACEPARENT})
        span = wait_for(server_span(exporter))
        children = [s for s in exporter.spans() if s["name"] == "load_item"]
    assert response.http_version == f"HTTP/{version}"
    assert response.status_code == 200
    assert response.text == "item 42"
    # HTTP/2 header names must be lowercase: ours is, and it reaches the client
    assert ("x-trace-id", TRACE_ID) in [(k.decode(), v.decode()) for k, v in response.headers.raw]
    assert span["trace_id"] == TRACE_ID
    assert span["parent_span_id"] == PARENT_ID
    assert span["name"] == "GET /items/{item_id}"
    attrs = span["attributes"]
    assert attrs["http.route"] == "/items/{item_id}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["network.protocol.version"] == version
    assert attrs["url.query"] == "x=1"
    assert attrs["http.response.body.size"] == len("item 42")
    assert children
    assert children[0]["parent_span_id"] == span["span_id"]


def test_mounted_route_template(base_url: str, version: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        with _client(base_url, version) as client:
            assert client.get("/api/v1/orders/7").status_code == 200
        span = wait_for(server_span(exporter))
    assert span["name"] == "GET /api/v1/orders/{order_id:int}"


def test_5xx_and_exceptions(base_url: str, version: str, path_kind: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        with _client(base_url, version) as client:
            busy_resp = client.get("/busy")
            boom_resp = client.get("/boom")
        with _client(base_url, version) as client:  # (a fresh connection: the last one may be closed)
            bare_resp = client.get("/bare-boom")
        wait_for(lambda: len([s for s in exporter.spans() if s["kind"] == "server"]) >= 3)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans() if s["kind"] == "server"}
    assert busy_resp.status_code == 503
    assert spans["/busy"]["status"] == "error"
    assert spans["/busy"]["attributes"]["error.type"] == "503"
    for resp, path, error in ((boom_resp, "/boom", "RuntimeError"), (bare_resp, "/bare-boom", "ValueError")):
        span = spans[path]
        assert resp.status_code == 500
        assert resp.headers["x-trace-id"] == span["trace_id"]
        assert span["attributes"]["http.response.status_code"] == 500
        assert span["attributes"]["error.type"] == error
        assert span["status"] == "error"
        assert "exception" in event_names(span)


def test_request_body_sizes_with_and_without_content_length(
    base_url: str, version: str, path_kind: str, wait_for: Any
) -> None:
    """HTTP/2 bodies streamed by the client come without Content-Length (and without
    Transfer-Encoding, which HTTP/2 forbids): counted as the app receives them."""

    def parts() -> Iterator[bytes]:
        yield b"a" * 700
        yield b"b" * 300
        yield b"c" * 34

    with capture_spans() as exporter:
        with _client(base_url, version) as client:
            sized = client.post("/upload", content=b"z" * 1234, headers={"traceparent": TRACEPARENT})
            streamed = client.post("/upload", content=parts())
        wait_for(lambda: len([s for s in exporter.spans() if s["kind"] == "server"]) >= 2)
        spans = [s for s in exporter.spans() if s["kind"] == "server"]
    assert (sized.text, streamed.text) == ("1234", "1034")
    by_trace = {s["trace_id"] == TRACE_ID: s for s in spans}
    assert by_trace[True]["attributes"]["http.request.body.size"] == 1234
    assert by_trace[False]["attributes"]["http.request.body.size"] == 1034
    for span in spans:
        assert span["attributes"]["http.response.body.size"] == 4
        assert span["attributes"]["network.protocol.version"] == version


def test_streaming_response_timed_to_its_last_byte(
    base_url: str, version: str, path_kind: str, wait_for: Any
) -> None:
    with capture_spans() as exporter:
        with _client(base_url, version) as client:
            started = time.monotonic()
            with client.stream("GET", "/stream") as response:
                body = b"".join(response.iter_bytes())
            elapsed = time.monotonic() - started
        span = wait_for(server_span(exporter))
    assert "content-length" not in response.headers  # (a stream: no length known up front)
    assert body == CHUNK * 3
    duration = (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e9
    assert 0.28 <= duration <= elapsed + 0.05
    assert span["attributes"]["http.response.body.size"] == 3000
    assert "client.disconnected" not in event_names(span)


def _h2_reset_mid_stream(base_url: str, path: str) -> None:
    """Ask for ``path`` over HTTP/2, read the first DATA frame, then reset the stream
    (RST_STREAM CANCEL) and keep the connection open a moment: the stream is gone, the
    connection is not."""
    sock = socket.create_connection(("127.0.0.1", _port(base_url)), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "test")]
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    got_data = False
    while not got_data:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                got_data = True
        sock.sendall(conn.data_to_send())
    conn.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    sock.sendall(conn.data_to_send())
    time.sleep(0.3)
    sock.close()


def _h11_close_mid_stream(base_url: str, path: str) -> None:
    sock = socket.create_connection(("127.0.0.1", _port(base_url)), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while CHUNK[:100] not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    sock.close()


def test_client_leaving_mid_stream_is_not_an_error(
    base_url: str, version: str, path_kind: str, wait_for: Any
) -> None:
    """hypercorn gives ``http.disconnect`` once (Starlette's stream listener takes it and stops
    the stream) and its ``send`` raises nothing: the unfinished response is still recognised as
    the client leaving, over an HTTP/2 stream reset as over a closed HTTP/1.1 connection."""
    with capture_spans() as exporter:
        started = time.monotonic()
        if version == "2":
            _h2_reset_mid_stream(base_url, "/endless")
        else:
            _h11_close_mid_stream(base_url, "/endless")
        span = wait_for(server_span(exporter))
    assert time.monotonic() - started < 5  # (the stream stopped; it would run 20 s)
    assert "client.disconnected" in event_names(span)
    assert "exception" not in event_names(span)
    assert span["status"] != "error"
    attrs = span["attributes"]
    assert attrs["http.response.status_code"] == 200
    assert "error.type" not in attrs
    assert 1000 <= attrs["http.response.body.size"] < 400 * 1000
    assert attrs["network.protocol.version"] == version


def test_websocket(base_url: str, wait_for: Any) -> None:
    """hypercorn's WebSocket over HTTP/1.1: one span, the header on the handshake's answer."""
    ws_url = base_url.replace("http://", "ws://") + "/ws/lobby"
    with capture_spans() as exporter:
        with connect(ws_url, additional_headers={"traceparent": TRACEPARENT}) as ws:
            ws.send("hi")
            assert ws.recv() == "echo hi"
            assert ws.response is not None
            trace_header = ws.response.headers["x-trace-id"]
        span = wait_for(server_span(exporter))
    assert trace_header == TRACE_ID
    assert span["trace_id"] == TRACE_ID
    assert span["name"] == "WEBSOCKET /ws/{room}"
    attrs = span["attributes"]
    assert attrs["websocket.messages.received"] == 1
    assert attrs["websocket.messages.sent"] == 1
    assert attrs["websocket.close.code"] == 1000
    assert attrs["network.protocol.version"] == "1.1"
    assert span["status"] != "error"
