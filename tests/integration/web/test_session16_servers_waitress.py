"""WSGITracingMiddleware under waitress on 127.0.0.1: a Flask app (``init_flask``) and a bare
WSGI app, called over real connections. One server for the module."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from flask import Flask, Response, send_file

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import WSGITracingMiddleware, init_flask
from tests.integration.web.conftest import run_waitress
from tests.support.web import event_names, raw_connect, read_until, reset, server_span

pytestmark = pytest.mark.integration

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "10f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHUNK = b"w" * 1000
FILE_BODY = bytes(range(256)) * 400  # 102,400 bytes


def _flask_app(path: str) -> Flask:
    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        with pt.span("load_item"):
            pass
        return f"item {item_id}"

    @app.get("/busy")
    def busy() -> tuple[str, int]:
        return "later", 503

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaboom")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:
            for i in range(3):
                if i:
                    time.sleep(0.15)
                with pt.span("chunk"):
                    yield CHUNK

        return Response(body(), mimetype="application/octet-stream")

    @app.get("/endless")
    def endless() -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(2000):
                yield CHUNK * 64
                time.sleep(0.005)

        return Response(body(), mimetype="application/octet-stream")

    @app.get("/file")
    def file() -> Response:
        return send_file(path, mimetype="application/octet-stream")

    @app.get("/healthz")
    def healthz() -> str:
        with pt.span("health_work"):
            pass
        return "ok"

    init_flask(app)
    return app


def _bare(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/bare/boom":
        raise ValueError("bare app")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"bare body"]  # (no Content-Length: waitress sets it for a one-item list)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """waitress serving the Flask app and the traced bare app (two servers, one thread each
    running its loop)."""
    handle, path = tempfile.mkstemp()
    os.write(handle, FILE_BODY)
    os.close(handle)
    apps = (("flask", _flask_app(path)), ("bare", WSGITracingMiddleware(_bare)))
    options = {"threads": 4, "clear_untrusted_proxy_headers": True}
    try:
        with ExitStack() as stack:
            yield {name: stack.enter_context(run_waitress(app, **options)).url for name, app in apps}
    finally:
        os.unlink(path)


def test_traceparent_flask_route_and_header(servers: dict[str, str], wait_for: Any) -> None:
    with capture_spans() as exporter:
        response = httpx.get(f"{servers['flask']}/items/5?x=1", headers={"traceparent": TRACEPARENT})
        span = wait_for(server_span(exporter))
        children = [s for s in exporter.spans() if s["name"] == "load_item"]
    assert response.text == "item 5"
    assert response.headers["X-Trace-Id"] == TRACE_ID
    assert span["trace_id"] == TRACE_ID
    assert span["parent_span_id"] == PARENT_ID
    assert span["name"] == "GET /items/<int:item_id>"
    attrs = span["attributes"]
    assert attrs["http.route"] == "/items/<int:item_id>"
    assert attrs["http.response.status_code"] == 200
    assert attrs["network.protocol.version"] == "1.1"
    assert attrs["url.query"] == "x=1"
    assert children
    assert children[0]["parent_span_id"] == span["span_id"]


def test_5xx_and_exceptions(servers: dict[str, str], wait_for: Any) -> None:
    with capture_spans() as exporter:
        busy = httpx.get(f"{servers['flask']}/busy")
        boom = httpx.get(f"{servers['flask']}/boom")
        bare = httpx.get(f"{servers['bare']}/bare/boom")
        wait_for(lambda: len([s for s in exporter.spans() if s["kind"] == "server"]) >= 3)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans() if s["kind"] == "server"}
    assert (busy.status_code, boom.status_code, bare.status_code) == (503, 500, 500)
    assert boom.headers["X-Trace-Id"] == spans["/boom"]["trace_id"]  # (Flask's own 500)
    assert spans["/busy"]["status"] == "error"
    assert spans["/busy"]["attributes"]["error.type"] == "503"
    for path, error in (("/boom", "RuntimeError"), ("/bare/boom", "ValueError")):
        assert spans[path]["status"] == "error"
        assert spans[path]["attributes"]["error.type"] == error
        assert "exception" in event_names(spans[path])
    assert spans["/boom"]["attributes"]["http.response.status_code"] == 500


def test_generator_body_timed_to_its_last_chunk(servers: dict[str, str], wait_for: Any) -> None:
    with capture_spans() as exporter:
        started = time.monotonic()
        with httpx.stream("GET", f"{servers['flask']}/stream") as response:
            body = b"".join(response.iter_bytes())
        elapsed = time.monotonic() - started
        span = wait_for(server_span(exporter))
        chunks = [s for s in exporter.spans() if s["name"] == "chunk"]
    assert body == CHUNK * 3
    duration = (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e9
    assert 0.28 <= duration <= elapsed + 0.05
    assert span["attributes"]["http.response.body.size"] == 3000
    assert len(chunks) == 3
    assert all(c["parent_span_id"] == span["span_id"] for c in chunks)


def test_file_wrapper_body(servers: dict[str, str], wait_for: Any) -> None:
    """Flask's send_file hands waitress's ``wsgi.file_wrapper`` back: the whole file arrives
    and is counted."""
    with capture_spans() as exporter:
        response = httpx.get(f"{servers['flask']}/file")
        span = wait_for(server_span(exporter))
    assert response.content == FILE_BODY
    assert int(response.headers["content-length"]) == len(FILE_BODY)
    assert span["attributes"]["http.response.body.size"] == len(FILE_BODY)
    assert span["name"] == "GET /file"


def test_a_bare_list_body_keeps_its_length(servers: dict[str, str], wait_for: Any) -> None:
    """waitress sets Content-Length for a one-item list body; the traced body keeps that."""
    with capture_spans() as exporter:
        response = httpx.get(f"{servers['bare']}/bare")
        span = wait_for(server_span(exporter))
    assert response.content == b"bare body"
    assert response.headers.get("content-length") == "9"
    assert "transfer-encoding" not in response.headers
    assert span["attributes"]["http.response.body.size"] == 9


def test_client_leaving_mid_stream(servers: dict[str, str], wait_for: Any) -> None:
    """waitress raises its ``ClientDisconnected`` (not an ``OSError``) as it writes to the
    closed connection, and closes the body: the client left, not an error."""
    with capture_spans() as exporter:
        sock = raw_connect(servers["flask"])
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, CHUNK[:100], strict=True)
        reset(sock)
        span = wait_for(server_span(exporter), timeout=20)
    assert "client.disconnected" in event_names(span)
    assert span["status"] != "error"
    assert "error.type" not in span["attributes"]
    assert span["attributes"]["http.response.status_code"] == 200
    assert 0 < span["attributes"]["http.response.body.size"] < 2000 * 64 * 1000


def test_excluded_path(servers: dict[str, str], wait_for: Any) -> None:
    with capture_spans() as exporter:
        response = httpx.get(f"{servers['flask']}/healthz")
        assert httpx.get(f"{servers['flask']}/items/1").status_code == 200
        wait_for(server_span(exporter))
        names = [s["name"] for s in exporter.spans()]
    assert response.text == "ok"
    assert "x-trace-id" not in response.headers
    assert "health_work" not in names
    assert not any(n.startswith("GET /healthz") for n in names)
