"""ASGITracingMiddleware on real servers (127.0.0.1, real HTTP clients and raw sockets):

* ``http.response.pathsend``: Starlette's ``FileResponse`` sends the file by path when the
  server offers the extension. No server installed here offers it (uvicorn does not; hypercorn
  0.18 does not either), so a thin layer between uvicorn and the traced app plays that part of
  the server: it advertises the extension and sends the file's bytes through uvicorn.
* hypercorn and a bare app that keeps streaming to a client that left, without calling
  ``receive``: what the middleware can and cannot tell (docs/middleware.md, "client gone").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from tests.integration.web.conftest import run_hypercorn, run_uvicorn
from tests.support.web import event_names, raw_connect, read_until, server_span

pytestmark = pytest.mark.integration

FILE_BYTES = bytes(range(256)) * 400  # 102,400 bytes
CHUNK = b"k" * 1000


# --- http.response.pathsend -------------------------------------------------------------------


def offering_pathsend(app: Any, seen: list[str]) -> Any:
    """The server's side of the pathsend extension, over uvicorn: advertised in the scope; a
    ``http.response.pathsend`` message becomes the file's bytes (64 KiB body messages)."""

    async def server(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "http.response.pathsend": {}}}

        async def sending(message: Any) -> None:
            seen.append(message["type"])
            if message["type"] != "http.response.pathsend":
                await send(message)
                return
            data = Path(message["path"]).read_bytes()
            for at in range(0, len(data), 65536):
                part = data[at : at + 65536]
                await send({"type": "http.response.body", "body": part, "more_body": at + 65536 < len(data)})

        await app(scope, receive, sending)

    return server


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "report.bin"
    path.write_bytes(FILE_BYTES)
    return path


#: When each request's background task started (ns since the epoch).
BACKGROUND_STARTS: list[int] = []


async def _background() -> None:
    BACKGROUND_STARTS.append(time.time_ns())
    await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def file_server(report_file: Path) -> Iterator[tuple[str, list[str]]]:
    async def download(request: Request) -> Response:
        # a background task after the response: not part of the request's span
        return FileResponse(report_file, background=BackgroundTask(_background))

    seen: list[str] = []
    app = offering_pathsend(ASGITracingMiddleware(Starlette(routes=[Route("/report", download)])), seen)
    with run_uvicorn(app) as server:
        yield server.url, seen


def test_a_file_sent_by_path_is_counted_and_ends_the_span(
    file_server: tuple[str, list[str]], path_kind: str, wait_for: Any
) -> None:
    url, seen = file_server
    seen.clear()
    BACKGROUND_STARTS.clear()
    with capture_spans() as exporter:
        response = httpx.get(f"{url}/report", timeout=10)
        span = wait_for(server_span(exporter))
    assert response.status_code == 200
    assert response.content == FILE_BYTES
    assert seen == ["http.response.start", "http.response.pathsend"]  # (Starlette used it)
    attrs = span["attributes"]
    assert attrs["http.response.body.size"] == len(FILE_BYTES)  # before: 0
    assert attrs["http.route"] == "/report"
    assert "client.disconnected" not in event_names(span)
    # ended before the background task started (it used to end with the whole call, the
    # background task included)
    assert span["end_time_unix_nano"] <= BACKGROUND_STARTS[0]


def test_a_file_sent_by_path_to_a_head_request(
    file_server: tuple[str, list[str]], path_kind: str, wait_for: Any
) -> None:
    url, _ = file_server
    with capture_spans() as exporter:
        response = httpx.head(f"{url}/report", timeout=10)
        span = wait_for(server_span(exporter))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(FILE_BYTES))
    assert span["attributes"]["http.response.body.size"] == 0


# --- hypercorn: a bare app streaming to a client that left -----------------------------------


class Observed:
    """What the server's own send and receive said once the traced app had returned: whether
    hypercorn's stream object was ``closed``, and the messages its receive had queued."""

    def __init__(self) -> None:
        self.by_path: dict[str, tuple[Any, Any]] = {}


def observing(app: Any, observed: Observed) -> Any:
    async def server(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            closed = getattr(getattr(send, "__self__", None), "closed", None)
            types: list[str] = []  # what receive has queued (the app never asked)
            try:
                while not types or types[-1] == "http.request":
                    types.append((await asyncio.wait_for(receive(), 1))["type"])
            except asyncio.TimeoutError:
                pass
            observed.by_path[scope["path"]] = (closed, types)

    return server


async def bare_stream(scope: Any, receive: Any, send: Any) -> None:
    """Never calls receive; streams 40 chunks (0.6 s) and completes the response."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for _ in range(40):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await asyncio.sleep(0.015)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def hypercorn_server() -> Iterator[tuple[str, Observed]]:
    observed = Observed()
    with run_hypercorn(observing(ASGITracingMiddleware(bare_stream), observed)) as server:
        yield server.url, observed


def test_hypercorn_hides_a_departed_client_from_a_bare_app_that_never_receives(
    hypercorn_server: tuple[str, Observed], path_kind: str, wait_for: Any
) -> None:
    """The documented limit: hypercorn drops what the app sends after its client left and
    raises nothing; the app completes its response. Once the app has returned, hypercorn's
    state is the same as after a response that did reach its client (the stream ``closed``,
    ``http.disconnect`` queued for ``receive``), so nothing tells the two apart afterwards:
    the span looks complete, counting every byte the app handed over."""
    url, observed = hypercorn_server
    with capture_spans() as exporter:
        complete = httpx.get(f"{url}/complete", timeout=10)
        sock = raw_connect(url)
        sock.sendall(b"GET /left HTTP/1.1\r\nHost: t\r\n\r\n")
        read_until(sock, CHUNK[:200], strict=True)
        sock.close()
        wait_for(lambda: len([s for s in exporter.spans() if s["kind"] == "server"]) >= 2)
        wait_for(lambda: len(observed.by_path) >= 2 or None)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans() if s["kind"] == "server"}
    assert complete.content == CHUNK * 40
    # hypercorn's state once the app returned: the same whether the client got it all or left
    assert observed.by_path["/complete"] == (True, ["http.request", "http.disconnect"])
    assert observed.by_path["/left"] == (True, ["http.request", "http.disconnect"])
    for path in ("/complete", "/left"):
        span = spans[path]
        assert span["attributes"]["http.response.body.size"] == 40 * len(CHUNK)
        assert "client.disconnected" not in event_names(span)
        assert span["status"] != "error"
