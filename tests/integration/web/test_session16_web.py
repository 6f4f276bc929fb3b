"""Real servers on 127.0.0.1: the size of a chunked upload (ASGI), a stream the app stops as
uvicorn reports the client gone (ASGI), a WebSocket whose client left before the handshake and
the route of aiohttp's 405 (aiohttp), and what ``http.route`` is under a ``root_path`` and a
``Mount`` (ASGI). Clients are raw sockets where they must leave at an exact point."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware, init_aiohttp
from tests.support.web import event_names, raw_connect, read_until, reset, server_span

pytestmark = pytest.mark.integration

CHUNK = b"x" * 4096


# -- 1. ASGI: a chunked upload's size -----------------------------------------------------------


def _receiving_app() -> tuple[Any, list[Any]]:
    """A bare ASGI app that reads the whole body and answers its length; keeps the receive
    callables it was handed."""
    handed: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        handed.append(receive)
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    return app, handed


def _is_servers_receive(receive: Any) -> bool:
    name = getattr(getattr(receive, "__func__", None), "__qualname__", "")
    return str(name).endswith("RequestResponseCycle.receive")


def test_a_chunked_upload_records_the_bytes_received(serve_asgi: Any, wait_for: Any, path_kind: str) -> None:
    """No Content-Length, ``Transfer-Encoding: chunked``: there was no
    ``http.request.body.size``; now it is the body bytes the app received."""
    app, handed = _receiving_app()
    parts = [b"a" * 1000, b"b" * 2345, b"c" * 7]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(app))
        sock = raw_connect(url)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        answer = read_until(sock, b"3352")
        sock.close()
        span = wait_for(server_span(exporter))
    assert b"3352" in answer
    assert span["attributes"]["http.request.body.size"] == 3352
    assert span["attributes"]["http.response.status_code"] == 200
    assert not _is_servers_receive(handed[0])


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_a_chunked_upload_of_other_methods_is_counted_too(
    serve_asgi: Any, wait_for: Any, path_kind: str, method: str
) -> None:
    app, _ = _receiving_app()
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(app))
        sock = raw_connect(url)
        sock.sendall(
            f"{method} /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"5\r\nhello\r\n0\r\n\r\n"
        )
        assert b"\r\n5\r\n" in read_until(sock, b"\r\n0\r\n\r\n", strict=True)  # (a chunked answer)
        sock.close()
        span = wait_for(server_span(exporter))
    assert span["attributes"]["http.request.body.size"] == 5


def test_requests_with_a_content_length_or_no_body_get_the_servers_receive(
    serve_asgi: Any, wait_for: Any, path_kind: str
) -> None:
    """The common GET (and any request with a Content-Length) is not slowed down: the app gets
    the server's own ``receive``, and the size comes from the header as before."""
    app, handed = _receiving_app()
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(app))
        with httpx.Client(base_url=url) as client:
            assert client.get("/page").text == "0"
            assert client.post("/form", content=b"z" * 321).text == "321"
        wait_for(lambda: len(exporter.spans()) >= 2)
        spans = {s["name"]: s for s in exporter.spans()}
    assert all(_is_servers_receive(r) for r in handed)
    assert "http.request.body.size" not in spans["GET"]["attributes"]
    assert spans["POST"]["attributes"]["http.request.body.size"] == 321


# -- 2. ASGI: a stream stopped on http.disconnect ------------------------------------------------


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(500):
            yield CHUNK
            await asyncio.sleep(0.01)

    return StreamingResponse(body(), media_type="application/octet-stream")


def test_a_stream_the_app_stops_on_http_disconnect_is_a_client_that_left(
    serve_asgi: Any, wait_for: Any, path_kind: str
) -> None:
    """uvicorn (ASGI 2.3) gives ``http.disconnect``; Starlette's ``StreamingResponse`` hears it
    in a task and cancels the stream without raising. It was a plain 200 with no trace of the
    client leaving; now the span has the ``client.disconnected`` event (no ``exception.type``:
    nothing was raised), keeps the status that went out and is no error."""
    app = ASGITracingMiddleware(Starlette(routes=[Route("/endless", endless)]))
    with capture_spans() as exporter:
        url = serve_asgi(app)
        sock = raw_connect(url)
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(sock, CHUNK[:100])
        reset(sock)
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["name"] == "GET /endless"
    assert span["status"] == "unset"
    assert span["attributes"]["http.response.status_code"] == 200
    assert 0 < span["attributes"]["http.response.body.size"] < 500 * len(CHUNK)
    assert event_names(span) == ["client.disconnected"]
    assert "exception.type" not in span["events"][0]["attributes"]
    assert audit["outcome"] == "200"


def test_a_complete_stream_has_no_disconnect_event(serve_asgi: Any, wait_for: Any, path_kind: str) -> None:
    async def short(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield CHUNK

        return StreamingResponse(body())

    app = ASGITracingMiddleware(Starlette(routes=[Route("/short", short)]))
    with capture_spans() as exporter:
        url = serve_asgi(app)
        assert len(httpx.get(url + "/short").content) == 3 * len(CHUNK)
        span = wait_for(server_span(exporter))
    assert event_names(span) == []
    assert span["attributes"]["http.response.body.size"] == 3 * len(CHUNK)


def test_an_app_that_returns_mid_response_with_its_client_there_is_not_a_client_that_left(
    serve_asgi: Any, wait_for: Any, path_kind: str
) -> None:
    """The app's own mistake (uvicorn then logs it and closes the connection): the server's
    receive would wait for the client, so nothing says it left; the middleware does not wait."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})

    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(app))
        sock = raw_connect(url)
        started = time.monotonic()
        sock.sendall(b"GET /half HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(sock, CHUNK[:100])
        span = wait_for(server_span(exporter))
        sock.close()
    assert event_names(span) == []
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["end_time_unix_nano"] - span["start_time_unix_nano"] < 5e9
    assert time.monotonic() - started < 5


# -- 4. ASGI: http.route under a root_path and a Mount ------------------------------------------


def test_routes_are_relative_to_the_servers_root_path_and_include_mounts(
    serve_asgi: Any, wait_for: Any
) -> None:
    """Decided: ``http.route`` stays the app's own template (mount prefixes included), without
    the ``root_path`` a server or proxy puts the app under (``url.path`` has it), as
    OpenTelemetry's FastAPI and Starlette instrumentations name it; see docs/middleware.md."""
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    async def thing(request: Request) -> Response:
        return PlainTextResponse("ok")

    api.mount("/sub", Starlette(routes=[Route("/things/{name}", thing)]))
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(api), root_path="/api")
        with httpx.Client(base_url=url) as client:
            assert client.get("/items/7").json() == {"item_id": 7}
            assert client.get("/sub/things/x").text == "ok"
        wait_for(lambda: len(exporter.spans()) >= 2)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans()}
    assert spans["/api/items/7"]["attributes"]["http.route"] == "/items/{item_id}"
    assert spans["/api/items/7"]["name"] == "GET /items/{item_id}"
    assert spans["/api/sub/things/x"]["attributes"]["http.route"] == "/sub/things/{name}"


# -- 3. aiohttp ---------------------------------------------------------------------------------


def test_aiohttp_websocket_client_gone_before_the_handshake_is_not_an_error(
    serve_aiohttp: Any, wait_for: Any
) -> None:
    """``WebSocketResponse.prepare()`` raises ``ConnectionResetError("Connection lost")`` (from
    its handshake, before any byte is written) when the client has already left. It was an
    error span; now, like the other ways a client leaves: no status, no error, the event."""
    from aiohttp import web

    async def socket_handler(request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(0.3)  # (the client leaves meanwhile)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket_handler)
    init_aiohttp(app)
    with capture_spans() as exporter:
        url = serve_aiohttp(app)
        sock = raw_connect(url)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        time.sleep(0.05)
        reset(sock)
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["name"] == "WEBSOCKET /ws"
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert "http.response.status_code" not in span["attributes"]
    assert event_names(span) == ["client.disconnected"]
    assert span["events"][0]["attributes"]["exception.type"] == "ConnectionResetError"
    assert audit["outcome"] == "aborted"


def test_aiohttp_405_is_named_after_the_route_that_matched_the_path(
    serve_aiohttp: Any, wait_for: Any
) -> None:
    """aiohttp's router answers 405 with a ``MatchInfoError`` that keeps no resource: the span
    was named ``POST`` with no ``http.route``; now after the resource whose path matched (in a
    sub-application too)."""
    from aiohttp import web

    async def item(request: web.Request) -> web.Response:
        return web.Response(text="item")

    app = web.Application()
    app.router.add_get("/items/{item_id}", item)
    shop = web.Application()
    shop.router.add_get("/orders/{order_id}", item)
    shop.router.add_put("/orders/{order_id}", item)
    app.add_subapp("/shop", shop)
    init_aiohttp(app)
    with capture_spans() as exporter:
        url = serve_aiohttp(app)
        with httpx.Client(base_url=url) as client:
            assert client.post("/items/3").status_code == 405
            assert client.delete("/shop/orders/9").status_code == 405
            assert client.post("/nowhere").status_code == 404
        wait_for(lambda: len(exporter.spans()) >= 3)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans()}
    items, orders, nowhere = spans["/items/3"], spans["/shop/orders/9"], spans["/nowhere"]
    assert items["name"] == "POST /items/{item_id}"
    assert items["attributes"]["http.route"] == "/items/{item_id}"
    assert items["attributes"]["http.response.status_code"] == 405
    assert orders["name"] == "DELETE /shop/orders/{order_id}"
    assert orders["attributes"]["http.route"] == "/shop/orders/{order_id}"
    assert nowhere["name"] == "POST"
    assert "http.route" not in nowhere["attributes"]
