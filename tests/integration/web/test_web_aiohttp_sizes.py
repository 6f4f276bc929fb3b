"""aiohttp server spans on a real aiohttp server: ``http.response.body.size`` is the body bytes
sent (status line, headers and chunked framing excluded; none for HEAD, 204, 304), and a
WebSocket span carries ``websocket.messages.received`` / ``.sent`` and ``websocket.close.code``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, WSMsgType, web

from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import init_aiohttp

pytestmark = pytest.mark.integration

BODY = b"x" * 1000


def build_app() -> web.Application:
    app = web.Application()
    routes = web.RouteTableDef()

    @routes.get("/chunked")
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY[:400])
        await response.write(memoryview(BODY[400:]))
        await response.write_eof()
        return response

    @routes.get("/sized")
    async def sized(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BODY)
        await response.prepare(request)
        await response.write(BODY)
        await response.write_eof()
        return response

    @routes.get("/no-eof")
    async def no_eof(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # aiohttp writes the end after the handler returns
        await response.prepare(request)
        await response.write(BODY)
        return response

    @routes.get("/plain")
    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    @routes.get("/empty")
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    @routes.get("/generated")
    async def generated(request: web.Request) -> web.Response:
        async def body() -> Any:
            for part in (b"abc", b"defgh", b"ij"):
                await asyncio.sleep(0)
                yield part

        return web.Response(body=body())

    @routes.get("/missing")
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    @routes.get("/moved")
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/plain")

    app.add_routes(routes)
    return init_aiohttp(app)  # type: ignore[no-any-return]


def spans_in_order(exporter: Any, count: int, wait_for: Any) -> list[dict[str, Any]]:
    """The exported spans, once ``count`` have arrived, in the order they started."""
    spans = wait_for(lambda: len(exporter.spans()) >= count and exporter.spans())
    return sorted(spans, key=lambda s: s["start_time_unix_nano"])


def body_sizes(exporter: Any, count: int, wait_for: Any) -> dict[str, int]:
    return {
        s["name"]: s["attributes"]["http.response.body.size"]
        for s in spans_in_order(exporter, count, wait_for)
    }


def test_streamed_bodies_count_body_bytes_without_headers_or_framing(
    serve_aiohttp: Any, wait_for: Any
) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        with httpx.Client() as client:
            got = {path: client.get(f"{url}{path}") for path in ("/chunked", "/sized", "/no-eof")}
        sizes = body_sizes(exporter, 3, wait_for)
    assert {path: len(r.content) for path, r in got.items()} == dict.fromkeys(got, len(BODY))
    assert got["/chunked"].headers["transfer-encoding"] == "chunked"
    assert sizes == {"GET /chunked": 1000, "GET /sized": 1000, "GET /no-eof": 1000}


def test_a_generated_payload_counts_its_chunks(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        r = httpx.get(f"{url}/generated")
        sizes = body_sizes(exporter, 1, wait_for)
    assert r.content == b"abcdefghij"
    assert sizes == {"GET /generated": 10}


def test_no_body_size_for_head_and_204(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        with httpx.Client() as client:
            head = client.head(f"{url}/plain")
            head_stream = client.head(f"{url}/generated")
            empty = client.get(f"{url}/empty")
            get = client.get(f"{url}/plain")
        ordered = spans_in_order(exporter, 4, wait_for)
    assert (head.content, head_stream.content, empty.content) == (b"", b"", b"")
    assert head.headers["content-length"] == str(len(BODY))  # declared, not sent
    assert [(s["name"], s["attributes"]["http.response.body.size"]) for s in ordered] == [
        ("HEAD /plain", 0),
        ("HEAD /generated", 0),
        ("GET /empty", 0),
        ("GET /plain", len(get.content)),
    ]


def test_a_raised_http_exception_records_the_body_aiohttp_sends(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        with httpx.Client() as client:
            missing = client.get(f"{url}/missing")
            moved = client.get(f"{url}/moved")
            unrouted = client.get(f"{url}/no/such/route")
        ordered = spans_in_order(exporter, 3, wait_for)
    assert [r.status_code for r in (missing, moved, unrouted)] == [404, 302, 404]
    assert [s["attributes"]["http.response.body.size"] for s in ordered] == [
        len(missing.content),
        len(moved.content),
        len(unrouted.content),
    ]
    assert len(missing.content) > 0  # "404: Not Found"


def ws_app(close_code: int | None = None) -> web.Application:
    app = web.Application()

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                if message.data == "bye" and close_code is not None:
                    await socket.close(code=close_code)
                    break
                await socket.send_str(message.data.upper())
                await socket.send_json({"echo": message.data})
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data[::-1])
        return socket

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app.router.add_get("/ws", ws)
    app.router.add_get("/refuse", refuse)
    return init_aiohttp(app)  # type: ignore[no-any-return]


def test_websocket_span_counts_messages_and_the_client_close_code(serve_aiohttp: Any, wait_for: Any) -> None:
    async def talk(url: str) -> list[Any]:
        async with ClientSession() as session, session.ws_connect(f"{url}/ws") as socket:
            got: list[Any] = []
            await socket.send_str("hello")
            got += [(await socket.receive()).data, (await socket.receive()).data]
            await socket.ping()  # (control frames are not messages)
            await socket.send_bytes(b"abc")
            got.append((await socket.receive()).data)
            await socket.close(code=4001)
            return got

    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(ws_app())
        replies = asyncio.run(talk(url))
        span = wait_for(lambda: exporter.spans() and exporter.spans()[0])
    assert errors == []
    assert replies == ["HELLO", '{"echo": "hello"}', b"cba"]
    assert span["name"] == "WEBSOCKET /ws"
    attrs = span["attributes"]
    assert attrs["websocket.messages.received"] == 2
    assert attrs["websocket.messages.sent"] == 3
    assert attrs["websocket.close.code"] == 4001
    assert attrs["http.response.status_code"] == 101


def test_websocket_span_records_the_servers_close_code(serve_aiohttp: Any, wait_for: Any) -> None:
    async def talk(url: str) -> int | None:
        async with ClientSession() as session, session.ws_connect(f"{url}/ws") as socket:
            await socket.send_str("bye")
            message = await socket.receive()
            assert message.type == WSMsgType.CLOSE
            return socket.close_code

    with capture_spans() as exporter:
        url = serve_aiohttp(ws_app(close_code=4002))
        code = asyncio.run(talk(url))
        span = wait_for(lambda: exporter.spans() and exporter.spans()[0])
    assert code == 4002
    attrs = span["attributes"]
    assert (attrs["websocket.messages.received"], attrs["websocket.messages.sent"]) == (1, 0)
    assert attrs["websocket.close.code"] == 4002


def test_a_refused_upgrade_has_no_websocket_attributes(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(ws_app())
        r = httpx.get(
            f"{url}/refuse",
            headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
        )
        span = wait_for(lambda: exporter.spans() and exporter.spans()[0])
    assert r.status_code == 403
    assert span["attributes"]["http.response.status_code"] == 403
    assert not any(k.startswith("websocket.") for k in span["attributes"])
