"""aiohttp server spans on a real aiohttp server: ``http.response.body.size`` is the body bytes
sent (status line, headers and chunked framing excluded; none for HEAD, 204, 304; compressed
bytes when aiohttp compresses; aiohttp's own error pages; what a file cut short had sent), and
a WebSocket span carries ``websocket.messages.received`` / ``.sent`` and
``websocket.close.code``. Also the status of those cases: a client gone mid-file is not an
error, a response that failed after it started keeps the status it went out with."""

from __future__ import annotations

import asyncio
import random
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


# -- aiohttp's own error pages, files cut short, compressed bodies -------------------------------
def error_app(debug: bool = False, **options: Any) -> web.Application:
    app = web.Application()

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    async def slow_backend(request: web.Request) -> web.Response:
        raise asyncio.TimeoutError  # aiohttp answers 504 for it

    async def half_sent(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY)
        raise RuntimeError("failed mid-stream")  # too late for an error page

    async def half_sent_refusal(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=403)  # a streamed refusal page
        await response.prepare(request)
        await response.write(BODY)
        raise RuntimeError("failed mid-stream")

    async def socket_fails(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)  # the 101 handshake is out
        await socket.receive()
        raise RuntimeError("failed mid-conversation")

    app.router.add_get("/boom", boom)
    app.router.add_get("/slow-backend", slow_backend)
    app.router.add_get("/socket-fails", socket_fails)
    app.router.add_get("/half-sent", half_sent)
    app.router.add_get("/half-sent-refusal", half_sent_refusal)
    return init_aiohttp(app, **options)  # type: ignore[no-any-return]


def test_aiohttps_error_page_records_the_bytes_it_sent(serve_aiohttp: Any, wait_for: Any, logs: Any) -> None:
    """An unhandled exception: aiohttp answers with its own 500 page (plain text, or HTML for a
    browser), a TimeoutError with an empty 504; the span records that status and those bytes."""
    logs("aiohttp.server")  # (its "Error handling request" records, kept out of the output)
    with capture_spans() as exporter:
        url = serve_aiohttp(error_app())
        with httpx.Client() as client:
            plain = client.get(f"{url}/boom")
            html = client.get(f"{url}/boom", headers={"Accept": "text/html"})
            timeout = client.get(f"{url}/slow-backend")
        ordered = spans_in_order(exporter, 3, wait_for)
    assert [r.status_code for r in (plain, html, timeout)] == [500, 500, 504]
    assert len(plain.content) > 0
    assert len(html.content) > len(plain.content)
    assert [s["attributes"]["http.response.body.size"] for s in ordered] == [
        len(plain.content),
        len(html.content),
        0,
    ]
    assert [s["attributes"]["http.response.status_code"] for s in ordered] == [500, 500, 504]
    assert [s["attributes"]["error.type"] for s in ordered] == [
        "RuntimeError",
        "RuntimeError",
        "TimeoutError",
    ]
    assert plain.headers["x-trace-id"] == ordered[0]["trace_id"]


@pytest.mark.parametrize("header", ["X-Trace-Id", None], ids=["prepare-handler", "no-correlation-header"])
def test_a_stream_that_fails_after_sending_records_what_it_sent(
    serve_aiohttp: Any, wait_for: Any, logs: Any, header: str | None
) -> None:
    """No error page can follow bytes already sent: aiohttp drops the connection. The client
    got the stream's status (then a cut connection), so that is the status recorded, in the
    span, the audit record and the security event; the escaped exception still makes the span
    an error. (The status comes from the prepare handler, or from the writer when no
    correlation header is configured and there is no prepare handler.)"""
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(error_app(trace_id_header=header))
        statuses: list[int] = []
        for path in ("/half-sent", "/half-sent-refusal"):
            with httpx.Client() as client, client.stream("GET", f"{url}{path}") as r:
                statuses.append(r.status_code)
                with pytest.raises(httpx.HTTPError):
                    r.read()
        half, refusal = spans_in_order(exporter, 2, wait_for)
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 3 and exporter.of_type("audit"))
    assert statuses == [200, 403]
    for span, status in ((half, 200), (refusal, 403)):
        assert span["status"] == "error"
        assert span["attributes"]["error.type"] == "RuntimeError"
        assert span["attributes"]["http.response.status_code"] == status
        assert span["attributes"]["http.response.body.size"] == len(BODY)
    assert sorted(
        (a["category"], a["action"], a["outcome"], a["attributes"]["http.response.status_code"])
        for a in audits
    ) == [
        ("request", "GET /half-sent", "200", 200),
        ("request", "GET /half-sent-refusal", "403", 403),
        ("security", "GET /half-sent-refusal", "403", 403),
    ]


def test_a_websocket_handler_that_fails_after_the_handshake_records_101(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    logs("aiohttp.server")

    async def talk(url: str) -> Any:
        async with ClientSession() as session, session.ws_connect(f"{url}/socket-fails") as socket:
            await socket.send_str("hello")
            return (await socket.receive()).type

    with capture_spans() as exporter:
        url = serve_aiohttp(error_app())
        ended = asyncio.run(talk(url))
        (span,) = spans_in_order(exporter, 1, wait_for)
    assert ended in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    assert span["name"] == "WEBSOCKET /socket-fails"
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "RuntimeError"
    assert span["attributes"]["http.response.status_code"] == 101


def _read_some_then_reset(url: str, path: str, keep: int) -> int:
    """GET ``path``, read ``keep`` bytes past the headers, then reset the connection: the
    client that goes away mid-download. Returns the body bytes it read."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        body = len(data.split(b"\r\n\r\n", 1)[1])
        while body < keep:
            body += len(sock.recv(65536))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return body


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "nosendfile"])
def test_a_file_cut_short_records_what_was_sent(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, sendfile: bool
) -> None:
    """A ``FileResponse`` goes out with ``sendfile``, which aiohttp's writer never sees: a
    client that leaves mid-download leaves a span with the bytes handed to the network (what
    the file position says), not the file's length. Without sendfile (``AIOHTTP_NOSENDFILE``)
    the file goes through the writer in chunks: the chunks it took. Either way the client
    that went away is not an error of the server."""
    import aiohttp.web_fileresponse

    monkeypatch.setattr(aiohttp.web_fileresponse, "NOSENDFILE", not sendfile)
    size = 256 * 1024 * 1024
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(size)  # sparse: nothing written to disk
    app = web.Application()

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(tmp_path / "big.bin")

    app.router.add_get("/big", file)
    init_aiohttp(app)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(app)
        read = _read_some_then_reset(url, "/big", 256 * 1024)
        (span,) = spans_in_order(exporter, 1, wait_for)
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert errors == []
    assert span["attributes"]["http.response.status_code"] == 200
    sent = span["attributes"]["http.response.body.size"]
    assert read <= sent < size
    # the client went away: not the server's error (as when the request is cancelled)
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert [e["name"] for e in span["events"]] == ["client.disconnected"]  # (no exception event)
    assert audit["outcome"] == "200"


def test_a_client_gone_before_its_file_went_out_is_not_an_error(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any
) -> None:
    """The client resets the connection while the handler still works: aiohttp's writer
    refuses the headers (a ``ConnectionResetError``) as the ``FileResponse`` is prepared.
    Not an error of the server, and no byte of the file was sent."""
    import socket
    import threading

    (tmp_path / "deck.pdf").write_bytes(b"%PDF" + b"x" * 300_000)
    app = web.Application()
    handling = threading.Event()

    async def late_file(request: web.Request) -> web.FileResponse:
        handling.set()
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)  # (until aiohttp has seen the client go)
        return web.FileResponse(tmp_path / "deck.pdf")

    app.router.add_get("/late", late_file)
    init_aiohttp(app)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(app)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /late HTTP/1.1\r\nHost: test\r\n\r\n")
            assert handling.wait(10)  # (reset once the request is in: it is handled, not lost)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        (span,) = spans_in_order(exporter, 1, wait_for)
    assert errors == []
    assert span["name"] == "GET /late"
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert [e["name"] for e in span["events"]] == ["client.disconnected"]  # (no exception event)
    assert span["attributes"]["http.response.body.size"] == 0


# -- an HTTP exception, or a client gone, after the stream started --------------------------------
def started_app(**options: Any) -> web.Application:
    app = web.Application()

    def stream_that_raises(exc: Exception) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()  # a 200 stream: its headers and bytes go out
            await response.prepare(request)
            await response.write(BODY)
            raise exc

        return handler

    async def not_found(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()  # (nothing went out: aiohttp answers with it)

    app.router.add_get("/started-not-found", stream_that_raises(web.HTTPNotFound()))
    app.router.add_get("/started-forbidden", stream_that_raises(web.HTTPForbidden()))
    app.router.add_get("/started-unavailable", stream_that_raises(web.HTTPServiceUnavailable()))
    app.router.add_get("/backend-reset", stream_that_raises(ConnectionResetError("backend reset")))
    app.router.add_get("/not-found", not_found)
    return init_aiohttp(app, **options)  # type: ignore[no-any-return]


@pytest.mark.parametrize("header", ["X-Trace-Id", None], ids=["prepare-handler", "no-correlation-header"])
def test_an_http_exception_after_the_stream_started_records_what_went_out(
    serve_aiohttp: Any, wait_for: Any, logs: Any, header: str | None
) -> None:
    """aiohttp answers an ``HTTPException`` with the exception itself: raised after a stream's
    headers went out, that second response (its status line, headers and body) lands in the
    first one's body. The client got the stream's status and a corrupted body: that status is
    recorded (span, audit; no security event for a 403 the client never got), and the span
    is an error whatever the exception's status, as for any exception after the start. The
    body size is the bytes that followed the headers through the writer, the exception's
    body included (its status line and headers are not counted, as no response's are)."""
    logs("aiohttp.server")
    paths = ["/started-not-found", "/started-forbidden", "/started-unavailable"]
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(started_app(trace_id_header=header))
        statuses: list[int] = []
        for path in paths:
            with httpx.Client() as client, client.stream("GET", f"{url}{path}") as r:
                statuses.append(r.status_code)
                with pytest.raises(httpx.HTTPError):  # (the second response is no chunk)
                    r.read()
        with httpx.Client() as client:
            unwritten = client.get(f"{url}/not-found")
        spans = spans_in_order(exporter, 4, wait_for)
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 4 and exporter.of_type("audit"))
    assert errors == []
    assert statuses == [200, 200, 200]
    *started, unwritten_span = spans
    for span, (name, body) in zip(
        started,
        [
            ("HTTPNotFound", "404: Not Found"),
            ("HTTPForbidden", "403: Forbidden"),
            ("HTTPServiceUnavailable", "503: Service Unavailable"),
        ],
        strict=True,
    ):
        assert span["status"] == "error"
        assert span["attributes"]["error.type"] == name
        assert span["attributes"]["http.response.status_code"] == 200
        assert span["attributes"]["http.response.body.size"] == len(BODY) + len(body)
    # raised before anything went out: the exception is the response
    assert unwritten.status_code == 404
    assert unwritten_span["status"] == "unset"
    assert unwritten_span["attributes"]["http.response.status_code"] == 404
    assert unwritten_span["attributes"]["http.response.body.size"] == len(unwritten.content)
    assert sorted((a["category"], a["action"], a["outcome"]) for a in audits) == [
        ("request", "GET /not-found", "404"),
        ("request", "GET /started-forbidden", "200"),
        ("request", "GET /started-not-found", "200"),
        ("request", "GET /started-unavailable", "200"),
    ]


def test_a_connection_error_of_the_handlers_own_is_an_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """A ``ConnectionError`` that did not come from the response's writer (the handler's own
    call to a backend failed) is an error of the server, with the status that went out."""
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(started_app())
        with httpx.Client() as client, client.stream("GET", f"{url}/backend-reset") as r:
            assert r.status_code == 200
            with pytest.raises(httpx.HTTPError):
                r.read()
        (span,) = spans_in_order(exporter, 1, wait_for)
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionResetError"
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["attributes"]["http.response.body.size"] == len(BODY)


def gone_app(handling: Any) -> web.Application:
    app = web.Application()
    chunk = b"y" * 65536

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1 << 40  # (a long download: no chunked framing)
        await response.prepare(request)
        for _ in range(1_000_000):  # until the client goes: a write fails, the error escapes
            await response.write(chunk)
        return response

    async def gone_then_backend_fails(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1 << 40
        await response.prepare(request)
        try:
            for _ in range(1_000_000):
                await response.write(chunk)
        except ConnectionError:
            pass  # the client went away: the handler carries on with its own work, which fails
        raise ConnectionRefusedError("backend refused")

    async def gone_at_eof(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY)
        handling.set()
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)  # (until aiohttp has seen the client go)
        await response.write_eof()  # fails: the client is gone
        return response

    app.router.add_get("/endless", endless)
    app.router.add_get("/gone-then-backend-fails", gone_then_backend_fails)
    app.router.add_get("/gone-at-eof", gone_at_eof)
    return init_aiohttp(app)  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/endless", "/gone-at-eof"])
def test_a_client_gone_mid_stream_is_not_a_server_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any, path: str
) -> None:
    """The client resets the connection while the handler streams: the handler's ``write`` (or
    ``write_eof``) raises aiohttp's ``ClientConnectionResetError`` (a ``ConnectionResetError``)
    and the handler lets it escape. As for a file cut short: not an error of the server, the
    status the stream went out with, the body bytes it had sent."""
    import threading

    logs("aiohttp.server")
    handling = threading.Event()
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(gone_app(handling))
        read = _read_some_then_reset(url, path, 256 * 1024 if path == "/endless" else len(BODY))
        (span,) = spans_in_order(exporter, 1, wait_for)
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert errors == []
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert [e["name"] for e in span["events"]] == ["client.disconnected"]  # (no exception event)
    assert span["attributes"]["http.response.status_code"] == 200
    sent = span["attributes"]["http.response.body.size"]
    if path == "/endless":
        assert read <= sent < 1 << 40
    else:
        assert sent == len(BODY)  # (chunked: the bytes read include its framing)
    assert audit["outcome"] == "200"


def test_a_connection_error_after_the_client_went_is_still_the_handlers(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """The writer failed (the client went away), the handler caught that and went on, and its
    own backend call failed: that ``ConnectionError`` is not the writer's, so it is an error."""
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(gone_app(None))
        _read_some_then_reset(url, "/gone-then-backend-fails", 256 * 1024)
        (span,) = spans_in_order(exporter, 1, wait_for)
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionRefusedError"
    assert span["attributes"]["http.response.status_code"] == 200


def test_a_stream_cancelled_as_its_client_went_keeps_what_went_out(wait_for: Any) -> None:
    """With ``handler_cancellation=True`` aiohttp cancels the handler when its client goes
    away: a stream that had started is aborted (not an error) with the status it went out with
    and the bytes it had sent, as when its write fails; one that had not started has none."""
    import socket
    import threading
    import time

    started = threading.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY[:300])
        started.set()
        await asyncio.sleep(30)  # (cancelled when the client goes away)
        return response

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/slow", slow)
    init_aiohttp(app)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    loop.run_until_complete(runner.setup())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with capture_spans() as exporter, swallowed_errors() as errors:
            for path in ("/stream", "/slow"):
                started.clear()
                client = socket.create_connection(sock.getsockname())
                client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert started.wait(10)
                time.sleep(0.1)  # (the stream's bytes are out)
                client.close()
            cut, slow_span = spans_in_order(exporter, 2, wait_for)
            audits = wait_for(lambda: len(exporter.of_type("audit")) == 2 and exporter.of_type("audit"))
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sock.close()
    assert errors == []
    assert [s["status"] for s in (cut, slow_span)] == ["unset", "unset"]
    assert cut["attributes"]["http.response.status_code"] == 200
    assert cut["attributes"]["http.response.body.size"] == 300
    assert "http.response.status_code" not in slow_span["attributes"]
    assert slow_span["attributes"]["http.response.body.size"] == 0
    assert sorted(a["outcome"] for a in audits) == ["200", "aborted"]


#: 100 kB that compress to about 45: zlib hands out compressed bytes as the writes go.
TEXT = bytes(random.Random(7).choices(b"pitch deck ", k=100_000))


def compressed_app(tmp_path: Any) -> web.Application:
    app = web.Application()
    text = TEXT

    async def plain(request: web.Request) -> web.Response:
        response = web.Response(body=text)
        response.enable_compression()
        return response

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_compression()
        await response.prepare(request)
        for i in range(0, len(text), 5000):
            await response.write(text[i : i + 5000])
        await response.write_eof()
        return response

    async def stream_no_eof(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # aiohttp flushes the compressor after the handler
        response.enable_compression()
        await response.prepare(request)
        await response.write(text)
        return response

    async def generated(request: web.Request) -> web.Response:
        async def body() -> Any:
            for i in range(0, len(text), 5000):
                await asyncio.sleep(0)
                yield text[i : i + 5000]

        response = web.Response(body=body())
        response.enable_compression()
        return response

    async def file(request: web.Request) -> web.FileResponse:
        response = web.FileResponse(tmp_path / "deck.txt")
        response.enable_compression()
        return response

    (tmp_path / "deck.txt").write_bytes(text)
    for path, handler in [
        ("/plain", plain),
        ("/stream", stream),
        ("/stream-no-eof", stream_no_eof),
        ("/generated", generated),
        ("/file", file),
    ]:
        app.router.add_get(path, handler)
    return init_aiohttp(app)  # type: ignore[no-any-return]


COMPRESSED = ["/plain", "/stream", "/stream-no-eof", "/generated", "/file"]


def _raw_get(client: httpx.Client, url: str, encoding: str) -> tuple[str | None, bytes, bytes]:
    """(Content-Encoding, the body as sent, without chunked framing; the body decoded)."""
    with client.stream("GET", url, headers={"Accept-Encoding": encoding}) as r:
        raw = b"".join(r.iter_raw())
        encoding_sent = r.headers.get("content-encoding")
    decoded = httpx.Response(200, headers={"content-encoding": encoding_sent or "identity"}, content=raw)
    return encoding_sent, raw, decoded.read()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_record_the_bytes_on_the_wire(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any, encoding: str
) -> None:
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(compressed_app(tmp_path))
        with httpx.Client() as client:
            got = [_raw_get(client, f"{url}{path}", encoding) for path in COMPRESSED]
        sizes = body_sizes(exporter, len(COMPRESSED), wait_for)
    assert errors == []
    assert [sent for sent, _, _ in got] == [encoding] * len(COMPRESSED)
    assert all(body == TEXT for _, _, body in got)
    assert all(len(raw) < len(TEXT) * 0.6 for _, raw, _ in got)
    assert sizes == {f"GET {path}": len(raw) for path, (_, raw, _) in zip(COMPRESSED, got, strict=True)}


def test_compression_enabled_but_not_accepted_records_the_plain_body(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any
) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(compressed_app(tmp_path))
        with httpx.Client() as client:
            got = [_raw_get(client, f"{url}{path}", "identity") for path in COMPRESSED]
        sizes = body_sizes(exporter, len(COMPRESSED), wait_for)
    assert [sent for sent, _, _ in got] == [None] * len(COMPRESSED)
    assert sizes == dict.fromkeys((f"GET {path}" for path in COMPRESSED), len(TEXT))
