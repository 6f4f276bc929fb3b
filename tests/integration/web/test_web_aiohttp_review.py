"""aiohttp server spans on a real aiohttp server, reviewed against aiohttp's own semantics: the
status a response that failed after it started went out with when the application set the
correlation header itself (or registered no prepare handler), a client that left a WebSocket
or a stream before its headers went out, ``HTTPException``s returned rather than raised,
``FileResponse`` 412 / 416 / HEAD, static routes, class-based views, nested sub-applications
and other middlewares."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
from typing import Any

import httpx
import pytest
from aiohttp import web

from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import aiohttp_middleware, init_aiohttp
from tests.support.web import event_names, reset

pytestmark = pytest.mark.integration

BODY = b"x" * 1000


def spans_in_order(exporter: Any, count: int, wait_for: Any) -> list[dict[str, Any]]:
    """The exported spans, once ``count`` have arrived, in the order they started."""
    spans = wait_for(lambda: len(exporter.spans()) >= count and exporter.spans())
    return sorted(spans, key=lambda s: s["start_time_unix_nano"])


def audit_rows(exporter: Any, count: int, wait_for: Any) -> list[tuple[str, str, str]]:
    audits = wait_for(lambda: len(exporter.of_type("audit")) >= count and exporter.of_type("audit"))
    return sorted((a["category"], a["action"], a["outcome"]) for a in audits)


# -- defect 1: the status that went out, whoever set the correlation header ----------------------
def own_header_app(header: str, *, register_prepare: bool = True, **options: Any) -> web.Application:
    """Streams whose handler sets the correlation header itself, then fail once they started."""
    app = web.Application()

    def failing_stream(status: int, exc: Exception) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(status=status, headers={header: "the-app-s-own"})
            await response.prepare(request)
            await response.write(BODY)
            raise exc

        return handler

    async def socket_fails(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        socket.headers[header] = "the-app-s-own"
        await socket.prepare(request)  # the 101 handshake is out
        await socket.receive()
        raise RuntimeError("failed mid-conversation")

    app.router.add_get("/socket-fails", socket_fails)
    app.router.add_get("/half-sent", failing_stream(200, RuntimeError("failed mid-stream")))
    app.router.add_get("/half-sent-refusal", failing_stream(403, RuntimeError("failed mid-stream")))
    app.router.add_get("/started-not-found", failing_stream(200, web.HTTPNotFound()))
    if register_prepare:
        return init_aiohttp(app, **options)  # type: ignore[no-any-return]
    middleware, _ = aiohttp_middleware(**options)  # (its prepare handler left unregistered)
    app.middlewares.append(middleware)
    return app


def _fetch_cut(url: str, paths: list[str]) -> list[tuple[int, str | None, str | None]]:
    """GET each path: (status, X-Trace-Id, traceresponse) of a response cut short."""
    got = []
    for path in paths:
        with httpx.Client() as client, client.stream("GET", f"{url}{path}") as r:
            got.append((r.status_code, r.headers.get("x-trace-id"), r.headers.get("traceresponse")))
            with pytest.raises(httpx.HTTPError):
                r.read()
    return got


def test_a_stream_with_the_apps_own_trace_header_keeps_the_status_that_went_out(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """The handler set ``X-Trace-Id`` itself (its value wins) and its stream then failed: the
    span, the audit record and the security event carry the status the client got, not 500."""
    logs("aiohttp.server")
    paths = ["/half-sent", "/half-sent-refusal", "/started-not-found"]
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(own_header_app("X-Trace-Id", traceresponse=True))
        got = _fetch_cut(url, paths)
        spans = spans_in_order(exporter, 3, wait_for)
        audits = audit_rows(exporter, 4, wait_for)
    assert errors == []
    assert [status for status, _, _ in got] == [200, 403, 200]
    assert {trace_id for _, trace_id, _ in got} == {"the-app-s-own"}
    # the other correlation header is still added
    assert [tr.split("-")[1] if tr else None for _, _, tr in got] == [s["trace_id"] for s in spans]
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 403, 200]
    assert [s["status"] for s in spans] == ["error"] * 3
    assert [s["attributes"]["error.type"] for s in spans] == ["RuntimeError", "RuntimeError", "HTTPNotFound"]
    assert audits == [
        ("request", "GET /half-sent", "200"),
        ("request", "GET /half-sent-refusal", "403"),
        ("request", "GET /started-not-found", "200"),
        ("security", "GET /half-sent-refusal", "403"),
    ]


def test_a_custom_correlation_header_set_by_the_app_keeps_the_status_too(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(own_header_app("X-Request-Trace", trace_id_header="X-Request-Trace"))
        with httpx.Client() as client, client.stream("GET", f"{url}/half-sent-refusal") as r:
            assert r.headers["x-request-trace"] == "the-app-s-own"
            with pytest.raises(httpx.HTTPError):
                r.read()
        (span,) = spans_in_order(exporter, 1, wait_for)
        audits = audit_rows(exporter, 2, wait_for)
    assert span["attributes"]["http.response.status_code"] == 403
    assert audits == [
        ("request", "GET /half-sent-refusal", "403"),
        ("security", "GET /half-sent-refusal", "403"),
    ]


def test_without_the_prepare_handler_registered_the_status_that_went_out_is_kept(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """An app that assembles its middleware with ``aiohttp_middleware`` and leaves the prepare
    handler out: the status comes from the status line handed to the writer."""
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(own_header_app("X-Other", register_prepare=False))
        got = _fetch_cut(url, ["/half-sent", "/half-sent-refusal"] * 2)
        spans = spans_in_order(exporter, 4, wait_for)
    assert [status for status, _, _ in got] == [200, 403] * 2
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 403] * 2


def test_a_websocket_with_the_apps_own_trace_header_that_fails_keeps_101(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    logs("aiohttp.server")
    with capture_spans() as exporter:
        url = serve_aiohttp(own_header_app("X-Trace-Id"))
        sock = _ws_connect(url, "/socket-fails")
        sock.sendall(_masked_text("hello"))
        (span,) = spans_in_order(exporter, 1, wait_for)
        sock.close()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "RuntimeError"
    assert span["attributes"]["http.response.status_code"] == 101


# -- defect 2: a WebSocket client that went away -------------------------------------------------
def _ws_connect(url: str, path: str) -> socket.socket:
    """A raw WebSocket client: the handshake done, the socket returned."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101"), data
    return sock


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_gone_app(handling: threading.Event) -> web.Application:
    app = web.Application()

    async def wait_until_gone(request: web.Request, socket: web.WebSocketResponse) -> None:
        await socket.receive()  # "go"
        await socket.send_str("first")
        handling.set()
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)  # (until aiohttp has seen the client go)

    def pushing(send: str) -> Any:
        async def handler(request: web.Request) -> web.WebSocketResponse:
            socket = web.WebSocketResponse()
            await socket.prepare(request)
            await wait_until_gone(request, socket)
            if send == "str":
                await socket.send_str("late")
            elif send == "bytes":
                await socket.send_bytes(b"late")
            elif send == "json":
                await socket.send_json({"late": True})
            elif send == "retry":
                try:
                    await socket.send_str("late")
                except ConnectionError:
                    pass  # (tries once more: that one escapes)
                await socket.send_str("again")
            elif send == "frame":
                from aiohttp import WSMsgType

                await socket.send_frame(b"late", WSMsgType.TEXT)
            else:
                await socket.ping()
            return socket

        return handler

    async def gone_then_backend_fails(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await wait_until_gone(request, socket)
        try:
            await socket.send_str("late")
        except ConnectionError:
            pass  # the client left: the handler goes on with its own work, which fails
        raise ConnectionRefusedError("backend refused")

    async def backend_fails(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.receive()
        handling.set()
        raise ConnectionResetError("backend reset")  # the client is still there

    async def closed_then_sends(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.receive()
        handling.set()
        await socket.close(code=4000)  # the handler closes, then sends: its own mistake
        await socket.send_str("after close")
        return socket

    app.router.add_get("/closed-then-sends", closed_then_sends)
    for send in ("str", "bytes", "json", "frame", "ping", "retry"):
        app.router.add_get(f"/push-{send}", pushing(send))
    app.router.add_get("/gone-then-backend-fails", gone_then_backend_fails)
    app.router.add_get("/backend-fails", backend_fails)
    return init_aiohttp(app)  # type: ignore[no-any-return]


@pytest.mark.parametrize("send", ["str", "bytes", "json", "frame", "ping", "retry"])
def test_a_websocket_send_to_a_client_that_left_is_not_a_server_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any, send: str
) -> None:
    """The client went away; the handler's next ``send_*`` raises aiohttp's
    ``ClientConnectionResetError``, which escapes the handler. As on the HTTP paths (a stream
    or a file whose client left): no error status, the 101 that went out, a
    ``client.disconnected`` event naming what the send raised."""
    logs("aiohttp.server")
    handling = threading.Event()
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(ws_gone_app(handling))
        sock = _ws_connect(url, f"/push-{send}")
        sock.sendall(_masked_text("go"))
        assert handling.wait(10)
        reset(sock)
        (span,) = spans_in_order(exporter, 1, wait_for)
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert errors == []
    assert span["name"] == f"WEBSOCKET /push-{send}"
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert span["attributes"]["http.response.status_code"] == 101
    assert span["attributes"]["websocket.messages.sent"] == 1  # ("first"; the failed send is not)
    assert event_names(span) == ["client.disconnected"]
    assert span["events"][0]["attributes"]["exception.type"] == "ClientConnectionResetError"
    assert audit["outcome"] == "101"


@pytest.mark.parametrize(
    ("path", "error_type"),
    [("/gone-then-backend-fails", "ConnectionRefusedError"), ("/backend-fails", "ConnectionResetError")],
)
def test_a_websocket_handlers_own_connection_error_is_an_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any, path: str, error_type: str
) -> None:
    """Only what the socket's own send raised counts as the client leaving: a ``ConnectionError``
    of the handler's (a backend it called), after the client left or not, is an error."""
    logs("aiohttp.server")
    handling = threading.Event()
    with capture_spans() as exporter:
        url = serve_aiohttp(ws_gone_app(handling))
        sock = _ws_connect(url, path)
        sock.sendall(_masked_text("go"))
        assert handling.wait(10)
        if path == "/gone-then-backend-fails":
            reset(sock)
        (span,) = spans_in_order(exporter, 1, wait_for)
        sock.close()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == error_type
    assert span["attributes"]["http.response.status_code"] == 101
    assert "client.disconnected" not in event_names(span)


def test_a_websocket_send_after_the_handler_closed_it_is_an_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """aiohttp refuses a frame after the handler closed the socket itself with the same
    ``ClientConnectionResetError``: no client left there, so it is an error of the handler."""
    logs("aiohttp.server")
    handling = threading.Event()
    with capture_spans() as exporter:
        url = serve_aiohttp(ws_gone_app(handling))
        sock = _ws_connect(url, "/closed-then-sends")
        sock.sendall(_masked_text("go"))
        (span,) = spans_in_order(exporter, 1, wait_for)
        sock.close()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ClientConnectionResetError"
    assert span["attributes"]["websocket.close.code"] == 4000
    assert "client.disconnected" not in event_names(span)


# -- a client that left before a stream's headers went out --------------------------------------
def test_a_client_gone_before_a_stream_started_is_not_a_server_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """The client resets the connection while the handler still works; the handler then
    prepares a ``StreamResponse``, whose headers aiohttp's writer refuses (its
    ``ClientConnectionResetError`` escapes ``prepare``). As for a ``FileResponse`` returned
    then: not an error of the server, nothing of the body sent."""
    logs("aiohttp.server")
    handling = threading.Event()
    app = web.Application()

    async def late_stream(request: web.Request) -> web.StreamResponse:
        handling.set()
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)  # (until aiohttp has seen the client go)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(BODY)
        return response

    app.router.add_get("/late-stream", late_stream)
    init_aiohttp(app)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(app)
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"GET /late-stream HTTP/1.1\r\nHost: test\r\n\r\n")
        assert handling.wait(10)
        reset(sock)
        (span,) = spans_in_order(exporter, 1, wait_for)
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert errors == []
    assert span["status"] == "unset"
    assert "error.type" not in span["attributes"]
    assert event_names(span) == ["client.disconnected"]
    assert span["attributes"]["http.response.body.size"] == 0
    assert audit["outcome"] == str(span["attributes"]["http.response.status_code"])


def test_a_client_gone_mid_upload_is_not_a_server_error(serve_aiohttp: Any, wait_for: Any, logs: Any) -> None:
    """The client resets the connection halfway through its request body: the handler's
    ``await request.read()`` raises the ``ConnectionResetError`` aiohttp set on the body's
    stream, and lets it escape. Nothing was answered: aborted, not an error of the server
    (as when ``handler_cancellation`` cancels it); a backend's ``ConnectionError`` still is."""
    logs("aiohttp.server")
    handling = threading.Event()
    app = web.Application()

    async def upload(request: web.Request) -> web.Response:
        handling.set()
        body = await request.read()
        return web.Response(text=str(len(body)))

    async def backend(request: web.Request) -> web.Response:
        await request.read()
        raise ConnectionResetError("backend reset")

    app.router.add_post("/upload", upload)
    app.router.add_post("/backend", backend)
    init_aiohttp(app)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(app)
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n" + BODY)
        assert handling.wait(10)
        reset(sock)
        (gone,) = spans_in_order(exporter, 1, wait_for)
        failed = httpx.post(f"{url}/backend", content=BODY)
        _, backend_span = spans_in_order(exporter, 2, wait_for)
        audits = audit_rows(exporter, 2, wait_for)
    assert errors == []
    assert gone["name"] == "POST /upload"
    assert gone["status"] == "unset"
    assert "error.type" not in gone["attributes"]
    assert "http.response.status_code" not in gone["attributes"]
    assert event_names(gone) == ["client.disconnected"]
    assert failed.status_code == 500
    assert backend_span["status"] == "error"
    assert backend_span["attributes"]["error.type"] == "ConnectionResetError"
    assert audits == [("request", "POST /backend", "500"), ("request", "POST /upload", "aborted")]


def payload_app() -> web.Application:
    app = web.Application()
    big = 64 * 1024 * 1024

    async def sized(request: web.Request) -> web.Response:
        import io

        return web.Response(body=io.BytesIO(bytes(big)))  # (a Content-Length: the declared size)

    def failing(exc: Exception) -> Any:
        async def handler(request: web.Request) -> web.Response:
            async def body() -> Any:
                yield BODY
                await asyncio.sleep(0)
                raise exc  # (the generator's own source failed)

            return web.Response(body=body())  # written by aiohttp after the handler returned

        return handler

    app.router.add_get("/sized", sized)
    app.router.add_get("/generator-fails", failing(RuntimeError("source failed")))
    app.router.add_get("/generator-backend-fails", failing(ConnectionRefusedError("backend refused")))
    return init_aiohttp(app)  # type: ignore[no-any-return]


def _read_some_then_reset(url: str, path: str, keep: int) -> int:
    """GET ``path``, read ``keep`` body bytes, reset the connection; the body bytes read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    body = len(data.split(b"\r\n\r\n", 1)[1])
    while body < keep:
        body += len(sock.recv(65536))
    reset(sock)
    return body


def test_a_returned_payload_cut_short_by_its_client_records_what_was_sent(
    serve_aiohttp: Any, wait_for: Any
) -> None:
    """A returned ``Response`` with a streamed payload of a known size is written by aiohttp
    after the handler returned; a client that leaves mid-body: not an error, the bytes the
    writer took (not the declared ``Content-Length``), a ``client.disconnected`` event."""
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(payload_app())
        read = _read_some_then_reset(url, "/sized", 256 * 1024)
        (span,) = spans_in_order(exporter, 1, wait_for)
    assert errors == []
    assert span["status"] == "unset"
    assert span["attributes"]["http.response.status_code"] == 200
    assert read <= span["attributes"]["http.response.body.size"] < 64 * 1024 * 1024
    assert event_names(span) == ["client.disconnected"]


def test_a_returned_payload_whose_generator_fails_is_an_error(
    serve_aiohttp: Any, wait_for: Any, logs: Any
) -> None:
    """The payload's generator raises while aiohttp writes it (the 200 and a chunk went out;
    aiohttp drops the connection): an error of the server, with the status that went out and
    the bytes sent, whatever the exception (a ``ConnectionError`` of a backend too)."""
    logs("aiohttp.server")
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(payload_app())
        for path in ("/generator-fails", "/generator-backend-fails"):
            with httpx.Client() as client, client.stream("GET", f"{url}{path}") as r:
                assert r.status_code == 200
                with pytest.raises(httpx.HTTPError):
                    r.read()
        spans = spans_in_order(exporter, 2, wait_for)
    assert errors == []
    assert [s["status"] for s in spans] == ["error", "error"]
    assert [s["attributes"]["error.type"] for s in spans] == ["RuntimeError", "ConnectionRefusedError"]
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 200]
    assert [s["attributes"]["http.response.body.size"] for s in spans] == [len(BODY)] * 2
    assert ["client.disconnected" in event_names(s) for s in spans] == [False, False]


# -- static routes, files, views, sub-applications, returned exceptions -------------------------
def test_static_routes_are_named_with_their_file_template(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any
) -> None:
    """``add_static``'s resource template (``canonical``) is its prefix alone; the span is named
    ``{prefix}/{filename}`` (aiohttp's own match name), so it matches the paths it serves, also
    for files under the root."""
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "app.css").write_bytes(b"body{}")
    (tmp_path / "deck.pdf").write_bytes(b"%PDF" + b"x" * 3000)
    app, root = web.Application(), web.Application()
    app.router.add_static("/static", tmp_path)
    root.router.add_static("/", tmp_path)
    init_aiohttp(app)
    init_aiohttp(root)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url, root_url = serve_aiohttp(app), serve_aiohttp(root)
        with httpx.Client() as client:
            got = [
                client.get(f"{url}/static/css/app.css"),
                client.get(f"{url}/static/deck.pdf", headers={"Range": "bytes=0-9"}),
                client.get(f"{url}/static/missing.css"),
                client.head(f"{url}/static/deck.pdf"),
                client.get(f"{root_url}/deck.pdf"),
            ]
        spans = spans_in_order(exporter, 5, wait_for)
    assert errors == []
    assert [r.status_code for r in got] == [200, 206, 404, 200, 200]
    assert [(s["name"], s["attributes"]["http.route"]) for s in spans] == [
        ("GET /static/{filename}", "/static/{filename}"),
        ("GET /static/{filename}", "/static/{filename}"),
        ("GET /static/{filename}", "/static/{filename}"),
        ("HEAD /static/{filename}", "/static/{filename}"),
        ("GET /{filename}", "/{filename}"),
    ]
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 206, 404, 200, 200]
    assert [s["attributes"]["http.response.body.size"] for s in spans] == [6, 10, 0, 0, 3004]


def test_file_preconditions_views_sub_apps_and_returned_exceptions(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any
) -> None:
    """What aiohttp answers is what is recorded: a ``FileResponse``'s 416 / 412 / HEAD, an
    ``HTTPException`` returned (deprecated) rather than raised, a class-based view's methods
    (405 for one it lacks), the templates of regex routes and of nested sub-applications."""
    import warnings

    (tmp_path / "deck.pdf").write_bytes(b"%PDF" + b"x" * 3000)
    app, middle, leaf = web.Application(), web.Application(), web.Application()

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(tmp_path / "deck.pdf")

    async def returned(request: web.Request) -> web.Response:
        return {  # type: ignore[return-value]
            "404": web.HTTPNotFound(),
            "503": web.HTTPServiceUnavailable(),
            "302": web.HTTPFound("/file"),
        }[request.match_info["status"]]

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    class Pitch(web.View):
        async def get(self) -> web.Response:
            return web.Response(text="pitch")

        async def post(self) -> web.Response:
            raise web.HTTPCreated(text="made")

    app.router.add_get("/file", file)
    app.router.add_get("/returned/{status}", returned)
    app.router.add_view("/pitches/{pitch_id}", Pitch)
    app.router.add_get(r"/numbers/{n:\d+}", plain)
    leaf.router.add_get("/items/{item_id}", plain)
    middle.add_subapp("/b", leaf)
    app.add_subapp("/a", middle)
    init_aiohttp(app)
    requests = [
        ("GET", "/file", {"Range": "bytes=99999-"}),
        ("GET", "/file", {"If-Match": '"other"'}),
        ("HEAD", "/file", {}),
        ("GET", "/returned/404", {}),
        ("GET", "/returned/503", {}),
        ("GET", "/returned/302", {}),
        ("GET", "/pitches/7", {}),
        ("POST", "/pitches/7", {}),
        ("PUT", "/pitches/7", {}),
        ("GET", "/numbers/42", {}),
        ("GET", "/a/b/items/9", {}),
    ]
    with capture_spans() as exporter, swallowed_errors() as errors, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (returning an HTTPException)
        url = serve_aiohttp(app)
        with httpx.Client() as client:
            got = [client.request(m, f"{url}{path}", headers=h) for m, path, h in requests]
        spans = spans_in_order(exporter, len(requests), wait_for)
    assert errors == []
    statuses = [416, 412, 200, 404, 503, 302, 200, 201, 405, 200, 200]
    assert [r.status_code for r in got] == statuses
    assert [s["attributes"]["http.response.status_code"] for s in spans] == statuses
    assert [s["attributes"]["http.response.body.size"] for s in spans] == [len(r.content) for r in got]
    assert [s["name"] for s in spans] == [
        "GET /file",
        "GET /file",
        "HEAD /file",
        "GET /returned/{status}",
        "GET /returned/{status}",
        "GET /returned/{status}",
        "GET /pitches/{pitch_id}",
        "POST /pitches/{pitch_id}",
        "PUT /pitches/{pitch_id}",
        "GET /numbers/{n}",
        "GET /a/b/items/{item_id}",
    ]
    assert [s["status"] for s in spans] == ["unset"] * 4 + ["error"] + ["unset"] * 6


def test_other_middlewares_run_inside_the_span(serve_aiohttp: Any, wait_for: Any) -> None:
    """``init_aiohttp`` puts its middleware first: the app's own middlewares (given to the
    ``Application`` or appended later) run inside the span, so what they answer is recorded (an
    auth middleware's 401 and its security event, an error middleware's 500 page, the 308
    ``normalize_path_middleware`` redirects with)."""
    import json

    @web.middleware
    async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except RuntimeError as exc:
            return web.json_response({"error": str(exc)}, status=500)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/private") and "Authorization" not in request.headers:
            raise web.HTTPUnauthorized()
        return await handler(request)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    async def private(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application(middlewares=[web.normalize_path_middleware(), errors_as_json])
    app.middlewares.append(auth)
    app.router.add_get("/boom", boom)
    app.router.add_get("/private/", private)
    init_aiohttp(app)
    assert app.middlewares[0] is not errors_as_json  # (ours, first)
    with capture_spans() as exporter:
        url = serve_aiohttp(app)
        with httpx.Client() as client:
            got = [
                client.get(f"{url}/boom"),
                client.get(f"{url}/private/"),
                client.get(f"{url}/private"),
            ]
        spans = spans_in_order(exporter, 3, wait_for)
        audits = audit_rows(exporter, 4, wait_for)
    assert [r.status_code for r in got] == [500, 401, 308]
    assert json.loads(got[0].content) == {"error": "kaboom"}
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [500, 401, 308]
    assert [s["status"] for s in spans] == ["error", "unset", "unset"]
    assert [s["name"] for s in spans] == ["GET /boom", "GET /private/", "GET"]
    assert [r.headers["x-trace-id"] for r in got] == [s["trace_id"] for s in spans]
    assert audits == [
        ("request", "GET", "308"),
        ("request", "GET /boom", "500"),
        ("request", "GET /private/", "401"),
        ("security", "GET /private/", "401"),
    ]
