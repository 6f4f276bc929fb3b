"""Session 17: a WSGI file-wrapper response keeps the server's own file path (waitress's
channel, wsgiref's file check, gunicorn's sendfile) and its span still ends at the last byte
with the right size; an aiohttp 405 is named after the resource aiohttp's own resolution
order reaches first."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import FileWrapper as WsgirefFileWrapper

import httpx
import pytest
from aiohttp import web
from waitress.buffers import ReadOnlyFileBasedBuffer

from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import WSGITracingMiddleware, init_aiohttp
from tests.integration.web.conftest import run_waitress
from tests.support.web import event_names, raw_connect, read_until, reset, server_span

pytestmark = pytest.mark.integration

FILE_BODY = bytes(range(256)) * 400  # 102,400 bytes
BIG_SIZE = 48 * 1024 * 1024


class Handed:
    """A WSGI app outside the traced one: notes the class of each response object the server
    receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.classes: list[type] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        result = self.app(environ, start_response)
        self.classes.append(type(result))
        return result


def _file_app(paths: dict[str, str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = paths[environ["PATH_INFO"]]
        size = os.path.getsize(path)
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        )
        return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)  # (the server closes it)

    return app


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("files")
    (folder / "small.bin").write_bytes(FILE_BODY)
    (folder / "empty.bin").write_bytes(b"")
    with open(folder / "big.bin", "wb") as big:
        big.truncate(BIG_SIZE)
    return {
        "/small": str(folder / "small.bin"),
        "/empty": str(folder / "empty.bin"),
        "/big": str(folder / "big.bin"),
    }


@pytest.fixture(scope="module")
def waitress_server(files: dict[str, str]) -> Iterator[tuple[str, Handed]]:
    handed = Handed(WSGITracingMiddleware(_file_app(files)))
    with run_waitress(handed, threads=2) as server:
        yield server.url, handed


def _small_window(url: str) -> socket.socket:
    """A raw connection to ``url`` with a 4 KiB receive buffer (the server soon blocks)."""
    sock = raw_connect(url)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def test_waitress_sends_a_file_wrapper_by_its_own_channel_path(
    waitress_server: tuple[str, Handed], wait_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """waitress gets its own ``ReadOnlyFileBasedBuffer`` back, and its channel reads it with
    ``get`` (its file path), never iterating it in blocks; the span ends once the last byte
    was sent, with the file's size."""
    url, handed = waitress_server
    calls = {"get": 0, "next": 0}
    get, next_ = ReadOnlyFileBasedBuffer.get, ReadOnlyFileBasedBuffer.__next__

    def counted_get(self: Any, *args: Any, **kwargs: Any) -> bytes:
        calls["get"] += 1
        return get(self, *args, **kwargs)

    def counted_next(self: Any) -> bytes:
        calls["next"] += 1
        return next_(self)

    monkeypatch.setattr(ReadOnlyFileBasedBuffer, "get", counted_get)
    monkeypatch.setattr(ReadOnlyFileBasedBuffer, "__next__", counted_next)
    handed.classes.clear()
    with capture_spans() as exporter:
        started = time.time_ns()
        response = httpx.get(f"{url}/small")
        span = wait_for(server_span(exporter))
    assert response.content == FILE_BODY
    assert int(response.headers["content-length"]) == len(FILE_BODY)
    assert response.headers["x-trace-id"] == span["trace_id"]
    assert handed.classes == [ReadOnlyFileBasedBuffer]
    assert calls["get"] >= 1
    assert calls["next"] == 0
    assert span["attributes"]["http.response.body.size"] == len(FILE_BODY)
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["status"] != "error"
    assert "client.disconnected" not in event_names(span)
    # (ended as waitress closes the wrapper after its last send: that may come just after the
    # client has the body, so no bound from the client's side)
    assert started <= span["start_time_unix_nano"] <= span["end_time_unix_nano"]


def test_waitress_empty_file(waitress_server: tuple[str, Handed], wait_for: Any) -> None:
    url, _ = waitress_server
    with capture_spans() as exporter:
        response = httpx.get(f"{url}/empty")
        span = wait_for(server_span(exporter))
    assert response.status_code == 200
    assert response.content == b""
    assert span["attributes"]["http.response.body.size"] == 0
    assert "client.disconnected" not in event_names(span)


def test_waitress_client_leaving_mid_file(waitress_server: tuple[str, Handed], wait_for: Any) -> None:
    """The client resets the connection early in a 48 MiB file: waitress's channel closes the
    wrapper with bytes remaining; the span counts what was sent and says the client left."""
    url, _ = waitress_server
    with capture_spans() as exporter:
        sock = _small_window(url)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, b"\r\n\r\n", size=4096, strict=True)
        reset(sock)
        span = wait_for(server_span(exporter), timeout=20)
    assert "client.disconnected" in event_names(span)
    assert span["status"] != "error"
    assert span["attributes"]["http.response.status_code"] == 200
    assert 0 <= span["attributes"]["http.response.body.size"] < BIG_SIZE


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _run_wsgiref(app: Any) -> Iterator[str]:
    """wsgiref's own server on 127.0.0.1 (in a background thread) until the block exits: its
    base URL."""
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_wsgiref_recognises_its_file_wrapper(files: dict[str, str], wait_for: Any) -> None:
    """wsgiref checks ``isinstance(result, wsgi_file_wrapper)`` (a handler's ``sendfile()``
    then may send it): it gets its own ``FileWrapper``, and the bytes read from the file are
    counted."""
    handed = Handed(WSGITracingMiddleware(_file_app(files)))
    with _run_wsgiref(handed) as url, capture_spans() as exporter:
        response = httpx.get(f"{url}/small")
        span = wait_for(server_span(exporter))
    assert response.content == FILE_BODY
    assert handed.classes == [WsgirefFileWrapper]
    assert span["attributes"]["http.response.body.size"] == len(FILE_BODY)
    assert "client.disconnected" not in event_names(span)


class _Gunicorn:
    """A gunicorn started by ``_run_gunicorn``: its port, the app's log file and, once it has
    stopped, what it printed."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.out = ""
        self.err = ""

    def get(self, path: str, deadline: float) -> httpx.Response:
        """GET ``path`` on a fresh connection, retried until gunicorn answers (by ``deadline``)."""
        while True:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers={"Connection": "close"})
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gunicorn did not answer"
                time.sleep(0.1)

    def records(self) -> list[dict[str, Any]]:
        """The JSON records its ConsoleExporter printed."""
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


@contextmanager
def _run_gunicorn(
    tmp_path: Path, source: str, module: str, file_path: str, *options: str
) -> Iterator[_Gunicorn]:
    """gunicorn (one sync worker, ``options`` added) serving ``module:app``, written from
    ``source`` into ``tmp_path``; the app finds ``HANDED_LOG`` and ``FILE_PATH`` in its
    environment. Stopped with SIGTERM as the block exits."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gunicorn = _Gunicorn(port, tmp_path / "handed.log")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    environ.update(HANDED_LOG=str(gunicorn.log), FILE_PATH=file_path, PYTHONPATH=os.getcwd())
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        *options,
        f"{module}:app",
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield gunicorn
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: the worker flushes at exit
        gunicorn.out, gunicorn.err = server.communicate(timeout=60)


GUNICORN_APP = """
import os, sys
from gunicorn.http import wsgi as gwsgi
import pitchey_trace as pt
from pitchey_trace.exporters import ConsoleExporter
from pitchey_trace.web import WSGITracingMiddleware

LOG = os.environ["HANDED_LOG"]
PATH = os.environ["FILE_PATH"]
pt.configure(service="gunicorn-files", exporters=[ConsoleExporter()])
sendfile = gwsgi.Response.sendfile


def noted_sendfile(self, respiter):
    done = sendfile(self, respiter)
    with open(LOG, "a") as log:
        log.write(f"sendfile {done}\\n")
    return done


gwsgi.Response.sendfile = noted_sendfile


def files(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(PATH, "rb"))


traced = WSGITracingMiddleware(files)


def app(environ, start_response):
    result = traced(environ, start_response)
    with open(LOG, "a") as log:
        log.write(f"class {type(result).__module__}.{type(result).__qualname__}\\n")
    return result
"""


def test_gunicorn_sends_a_file_wrapper_with_sendfile(files: dict[str, str], tmp_path: Path) -> None:
    """gunicorn's sync worker sends its own ``FileWrapper`` with ``sendfile`` (and seeks the
    file back): the span still gets the file's size."""
    with _run_gunicorn(tmp_path, GUNICORN_APP, "files_app", files["/small"]) as gunicorn:
        response = gunicorn.get("/file", time.monotonic() + 30)
    spans = [r for r in gunicorn.records() if r["type"] == "span" and r["kind"] == "server"]
    assert response.content == FILE_BODY
    assert gunicorn.log.read_text().splitlines() == ["class gunicorn.http.wsgi.FileWrapper", "sendfile True"]
    assert len(spans) == 1, gunicorn.err[-2000:]
    assert spans[0]["attributes"]["http.response.body.size"] == len(FILE_BODY)
    assert spans[0]["attributes"]["http.response.status_code"] == 200
    assert response.headers["x-trace-id"] == spans[0]["trace_id"]


# -- aiohttp: a 405 is named after the resource aiohttp's own resolution reaches first --------
def _overlapping_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info.route.resource.canonical)  # type: ignore[union-attr]

    app = web.Application()
    app.router.add_get("/items/{item_id}", ok)  # added first; matches /items/special too
    app.router.add_get("/items/special", ok)  # aiohttp resolves /items/special to this one
    app.router.add_get("/files/{name}", ok)
    app.router.add_get("/files/{name:.+}", ok)  # same index key: the one added first wins
    sub = web.Application()
    sub.router.add_get("/{kind}/list", ok)
    sub.router.add_get("/pages/list", ok)
    app.add_subapp("/sub", sub)
    return init_aiohttp(app)


def test_aiohttp_405_is_named_after_the_resource_aiohttp_resolves(serve_aiohttp: Any, wait_for: Any) -> None:
    requests = [
        ("GET", "/items/special"),
        ("DELETE", "/items/special"),
        ("DELETE", "/items/7"),
        ("DELETE", "/files/a"),
        ("GET", "/sub/pages/list"),
        ("DELETE", "/sub/pages/list"),
        ("DELETE", "/sub/other/list"),
    ]
    with capture_spans() as exporter:
        url = serve_aiohttp(_overlapping_app())
        with httpx.Client() as client:
            got = [client.request(method, f"{url}{path}") for method, path in requests]
        spans = wait_for(lambda: len(exporter.spans()) >= len(requests) and exporter.spans())
    spans = sorted(spans, key=lambda s: s["start_time_unix_nano"])
    assert [r.status_code for r in got] == [200, 405, 405, 405, 200, 405, 405]
    assert got[0].text == "/items/special"  # what aiohttp matches for an allowed method
    assert got[4].text == "/sub/pages/list"
    assert [s["name"] for s in spans] == [
        "GET /items/special",
        "DELETE /items/special",
        "DELETE /items/{item_id}",
        "DELETE /files/{name}",
        "GET /sub/pages/list",
        "DELETE /sub/pages/list",
        "DELETE /sub/{kind}/list",
    ]
    assert [s["attributes"].get("http.route") for s in spans] == [s["name"].split(" ", 1)[1] for s in spans]


# -- review fixes: Content-Length caps the count; a file without a descriptor; no body -------
def _sized_app(path: str) -> Any:
    """``/range``: 206 with ``Content-Length: 10`` for the whole file; ``/memory``,
    ``/memory-empty``: an ``io.BytesIO`` in the server's file wrapper (no file descriptor)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        wrapper = environ["wsgi.file_wrapper"]
        if environ["PATH_INFO"] == "/range":
            start_response(
                "206 Partial Content", [("Content-Length", "10"), ("Content-Range", "bytes 0-9/*")]
            )
            return wrapper(open(path, "rb"))  # (the server closes it)
        data = b"" if environ["PATH_INFO"] == "/memory-empty" else b"hello"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return wrapper(io.BytesIO(data))

    return app


def _spans_by_path(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["attributes"]["url.path"]: s for s in records if s["kind"] == "server"}


def test_waitress_head_of_a_big_file_ends_while_the_connection_stays_open(
    waitress_server: tuple[str, Handed], wait_for: Any
) -> None:
    """waitress sends the 48 MiB file even for HEAD; the client reads the headers and keeps
    the connection open, then closes it: the span ended with the headers (no body, no
    ``client.disconnected``), not as the connection closed."""
    url, _ = waitress_server
    with capture_spans() as exporter:
        sock = _small_window(url)
        try:
            sock.sendall(b"HEAD /big HTTP/1.1\r\nHost: t\r\n\r\n")
            data = read_until(sock, b"\r\n\r\n", size=4096, strict=True)
            assert data.startswith(b"HTTP/1.1 200 ")
            span = wait_for(server_span(exporter), timeout=10)  # (the connection still open)
        finally:
            reset(sock)
        time.sleep(0.3)  # (waitress closes the wrapper as it sees the reset)
    assert span["attributes"]["http.request.method"] == "HEAD"
    assert span["attributes"]["http.response.body.size"] == 0
    assert "client.disconnected" not in event_names(span)
    assert span["status"] != "error"
    assert [s for s in exporter.spans() if s["kind"] == "server"] == [span]


def test_waitress_counts_a_content_length_and_a_file_without_a_descriptor(
    files: dict[str, str], wait_for: Any
) -> None:
    with run_waitress(WSGITracingMiddleware(_sized_app(files["/small"]))) as server:
        with swallowed_errors() as swallowed, capture_spans() as exporter:
            with httpx.Client(base_url=server.url) as client:
                got = {p: client.get(p).content for p in ("/range", "/memory", "/memory-empty")}
            spans = _spans_by_path(wait_for(lambda: len(exporter.spans()) >= 3 and exporter.spans()))
    assert got == {"/range": FILE_BODY[:10], "/memory": b"hello", "/memory-empty": b""}
    assert swallowed == []
    assert {p: s["attributes"]["http.response.body.size"] for p, s in spans.items()} == {
        "/range": 10,
        "/memory": 5,
        "/memory-empty": 0,
    }
    assert all("client.disconnected" not in event_names(s) for s in spans.values())


def test_wsgiref_counts_a_file_without_a_descriptor_without_an_error(
    files: dict[str, str], wait_for: Any
) -> None:
    """An ``io.BytesIO`` in wsgiref's ``FileWrapper``: iterated, counted by its position; an
    empty one is 0 bytes, not an internal error of its ``fileno()``."""
    handed = Handed(WSGITracingMiddleware(_sized_app(files["/small"])))
    with _run_wsgiref(handed) as url, swallowed_errors() as swallowed, capture_spans() as exporter:
        got = {p: httpx.get(f"{url}{p}").content for p in ("/memory", "/memory-empty")}
        spans = _spans_by_path(wait_for(lambda: len(exporter.spans()) >= 2 and exporter.spans()))
    assert got == {"/memory": b"hello", "/memory-empty": b""}
    assert handed.classes == [WsgirefFileWrapper, WsgirefFileWrapper]
    assert swallowed == []
    assert spans["/memory"]["attributes"]["http.response.body.size"] == 5
    assert spans["/memory-empty"]["attributes"]["http.response.body.size"] == 0


GUNICORN_SIZED_APP = """
import io, os
from gunicorn.http import wsgi as gwsgi
import pitchey_trace as pt
from pitchey_trace.exporters import ConsoleExporter
from pitchey_trace.web import WSGITracingMiddleware

LOG = os.environ["HANDED_LOG"]
PATH = os.environ["FILE_PATH"]
pt.configure(service="gunicorn-sized", exporters=[ConsoleExporter()])
sendfile = gwsgi.Response.sendfile


def noted_sendfile(self, respiter):
    done = sendfile(self, respiter)
    with open(LOG, "a") as log:
        log.write(f"{self.req.path} sendfile {done}\\n")
    return done


gwsgi.Response.sendfile = noted_sendfile


def files(environ, start_response):
    wrapper = environ["wsgi.file_wrapper"]
    if environ["PATH_INFO"] == "/range":
        start_response("206 Partial Content", [("Content-Length", "10"), ("Content-Range", "bytes 0-9/*")])
        return wrapper(open(PATH, "rb"))
    data = b"" if environ["PATH_INFO"] == "/memory-empty" else b"hello"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return wrapper(io.BytesIO(data))


app = WSGITracingMiddleware(files)
"""


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "no-sendfile"])
def test_gunicorn_counts_no_more_than_the_content_length(
    files: dict[str, str], tmp_path: Path, sendfile: bool
) -> None:
    """A 206 with ``Content-Length: 10`` for a 102,400-byte file: gunicorn sends 10 bytes
    (``sendfile`` of 10; iterated, it reads the whole file and cuts its writes at 10), and the
    span says 10. An ``io.BytesIO`` (no descriptor: iterated) is counted without an error."""
    options = [] if sendfile else ["--no-sendfile"]
    got: dict[str, bytes] = {}
    with _run_gunicorn(tmp_path, GUNICORN_SIZED_APP, "sized_app", files["/small"], *options) as gunicorn:
        deadline = time.monotonic() + 30
        for path in ("/range", "/memory", "/memory-empty"):
            got[path] = gunicorn.get(path, deadline).content
    spans = _spans_by_path([r for r in gunicorn.records() if r["type"] == "span"])
    assert got == {"/range": FILE_BODY[:10], "/memory": b"hello", "/memory-empty": b""}
    assert gunicorn.log.read_text().splitlines() == [
        f"/range sendfile {sendfile}",
        "/memory sendfile False",
        "/memory-empty sendfile False",
    ]
    assert {p: s["attributes"]["http.response.body.size"] for p, s in spans.items()} == {
        "/range": 10,
        "/memory": 5,
        "/memory-empty": 0,
    }
    assert "internal error" not in gunicorn.err, gunicorn.err[-2000:]
    assert spans["/range"]["attributes"]["http.response.status_code"] == 206
