"""WSGITracingMiddleware under werkzeug's threaded server: a client that goes away mid-response
is not a server error (as in the aiohttp integration); Django's ``include()`` / ``re_path``
route templates (a Django project in a subprocess: its settings are process-wide)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, Response, stream_with_context

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import WSGITracingMiddleware, init_flask
from tests.support.web import event_names, server_span

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHUNK = b"z" * 65536
CHUNKS = 300


def _leave_mid_body(url: str, path: str) -> int:
    """GET ``path``, read the headers and some body, then reset the connection; the body
    bytes read."""
    host, port = url.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or data.split(b"\r\n\r\n", 1)[1].count(b"z") < 1000:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection first"
        data += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    return data.split(b"\r\n\r\n", 1)[1].count(b"z")


def _slow_body() -> Iterator[bytes]:
    for _ in range(CHUNKS):
        yield CHUNK
        time.sleep(0.01)


def plain_stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _slow_body()


def plain_write(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The legacy ``write()`` callable: the server's write raises under the app."""
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for chunk in _slow_body():
        write(chunk)
    return []


def flask_app() -> Flask:
    app = Flask("pitchey_wsgi_review")

    @app.get("/stream")
    def stream() -> Response:
        return Response(stream_with_context(_slow_body()), mimetype="application/octet-stream")

    return init_flask(app)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["generator", "flask", "write"])
def test_a_client_gone_mid_response_is_not_a_server_error(serve_wsgi: Any, wait_for: Any, kind: str) -> None:
    """werkzeug's write to the socket fails (reset by the client): it stops iterating and
    closes the body (the span ended with no sign of it, the failed chunk counted as sent), or,
    for ``write()``, the exception escapes the app (an error span). Now: the status that went
    out, the chunks written before the failed one, no error, a ``client.disconnected``
    event."""
    app = {"generator": WSGITracingMiddleware(plain_stream), "write": WSGITracingMiddleware(plain_write)}.get(
        kind
    ) or flask_app()
    with capture_spans() as exporter:
        url = serve_wsgi(app)
        got = _leave_mid_body(url, "/stream")
        span = wait_for(server_span(exporter))
        [audit] = wait_for(lambda: exporter.of_type("audit"))
    assert span["status"] == "unset"
    assert span["attributes"]["http.response.status_code"] == 200
    assert "error.type" not in span["attributes"]
    assert event_names(span) == ["client.disconnected"]
    assert span["events"][0]["attributes"]["exception.type"] in ("ConnectionResetError", "BrokenPipeError")
    size = span["attributes"]["http.response.body.size"]
    assert size % len(CHUNK) == 0
    assert size < CHUNKS * len(CHUNK)
    assert got <= size + len(CHUNK)  # (a chunk the client got part of before leaving: not counted)
    assert audit["outcome"] == "200"


def test_a_body_generators_own_connection_error_is_an_error(serve_wsgi: Any, wait_for: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"partial"
        raise ConnectionRefusedError("the report service refused")

    with capture_spans() as exporter:
        url = serve_wsgi(WSGITracingMiddleware(app))
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/report")
        span = wait_for(server_span(exporter))
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionRefusedError"
    assert "client.disconnected" not in event_names(span)


class ExportAborted(Exception):
    pass


def test_an_error_raised_anew_after_catching_the_servers_is_an_error(serve_wsgi: Any, wait_for: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        try:
            for chunk in _slow_body():
                write(chunk)
        except OSError as exc:
            raise ExportAborted("export cut short") from exc
        return []

    with capture_spans() as exporter:
        url = serve_wsgi(WSGITracingMiddleware(app))
        _leave_mid_body(url, "/export")
        span = wait_for(server_span(exporter))
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ExportAborted"
    assert "client.disconnected" not in event_names(span)


DJANGO_PROJECT = textwrap.dedent(
    """
    import json, sys, threading
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        INSTALLED_APPS=[],
        MIDDLEWARE=["pitchey_trace.web.django.PitcheyRouteMiddleware"],
    )
    django.setup()

    import httpx
    from django.http import HttpResponse
    from django.urls import include, path, re_path
    from werkzeug.serving import make_server

    from pitchey_trace.testing import capture_spans
    from pitchey_trace.web import WSGITracingMiddleware

    def view(request, **kwargs):
        return HttpResponse("ok")

    shop = ([path("items/<int:pk>/", view), re_path(r"^archive/(?P<year>[0-9]{4})/$", view)], "shop")
    urlpatterns = [
        path("api/v1/", include(shop, namespace="v1")),
        re_path(r"^legacy/", include([re_path(r"^orders/(?P<n>[0-9]+)$", view)])),
        re_path(r"^top/(?P<n>[0-9]+)/\\Z", view),
    ]

    from django.core.wsgi import get_wsgi_application

    with capture_spans() as mem:
        server = make_server("127.0.0.1", 0, WSGITracingMiddleware(get_wsgi_application()), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        paths = ["/api/v1/items/3/", "/api/v1/archive/2020/", "/legacy/orders/5", "/top/7/", "/nowhere/"]
        statuses = [httpx.get(base + p).status_code for p in paths]
        server.shutdown()
    names = {s["attributes"]["url.path"]: s["name"] for s in mem.spans()}
    print(json.dumps({"statuses": statuses, "names": names}))
    """
)


def test_django_include_namespaces_and_re_path_templates() -> None:
    """``path()`` routes under a namespaced ``include()`` keep Django's joined route; a
    ``re_path()`` route's regex anchors were kept, after the leading slash:
    ``GET /^top/(?P<n>[0-9]+)/\\Z``."""
    done = subprocess.run(
        [sys.executable, "-c", DJANGO_PROJECT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200, 200, 200, 200, 404]
    assert result["names"] == {
        "/api/v1/items/3/": "GET /api/v1/items/<int:pk>/",
        "/api/v1/archive/2020/": "GET /api/v1/archive/(?P<year>[0-9]{4})/",
        "/legacy/orders/5": "GET /legacy/orders/(?P<n>[0-9]+)",
        "/top/7/": "GET /top/(?P<n>[0-9]+)/",
        "/nowhere/": "GET",
    }
