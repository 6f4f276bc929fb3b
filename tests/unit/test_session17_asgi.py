"""ASGITracingMiddleware, in-process (a scripted server): the ``http.response.pathsend``
extension (a file the server sends by path), and the C and Python request paths agreeing on
it and on clients that leave. Every test runs on both request paths."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from pitchey_trace.web import _common as common
from pitchey_trace.web import asgi as asgi_module

CHUNK = b"x" * 100
PATHSEND = {"http.response.pathsend": {}}


@pytest.fixture(params=["accelerated", "python"])
def path_kind(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both request paths of the middleware: the C start, sender and finish, and Python's."""
    if request.param == "python":
        monkeypatch.setattr(asgi_module, "fast_begin", None)
        monkeypatch.setattr(asgi_module, "fast_finish", None)
    elif os.environ.get("PITCHEY_TRACE_PURE_PYTHON", "") not in ("", "0"):
        assert asgi_module.fast_begin is None  # (the pure-Python run: both params are Python)
    else:  # (the C path: CI builds it; not built is a setup failure, not a skip)
        assert asgi_module.fast_begin is not None, "the C accelerator is not built"
    return str(request.param)


def scope_for(
    path: str = "/", method: str = "GET", extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


class Server:
    """A scripted ASGI server for one request. ``receive`` gives the request body, then waits
    until ``leave()`` (the client goes away), then gives ``http.disconnect`` as often as asked
    (as uvicorn does). ``send`` records what it took; after ``leave()`` it drops every
    message silently (uvicorn, hypercorn); ``pathsend_delay`` is how long it takes to send
    a file by path."""

    def __init__(self, *, raise_on_pathsend: bool = False, pathsend_delay: float = 0.0) -> None:
        self.gone = asyncio.Event()
        self.body_given = False
        self.delivered: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.raise_on_pathsend = raise_on_pathsend
        self.pathsend_delay = pathsend_delay
        self.pathsend_done_ns = 0  # when its send of a pathsend message returned

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self.body_given and not self.gone.is_set():
            self.body_given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.pathsend":
            if self.raise_on_pathsend:
                raise ConnectionResetError("client gone")
            await asyncio.sleep(self.pathsend_delay)
            self.pathsend_done_ns = time.time_ns()
        if self.gone.is_set():
            self.dropped.append(message)
        else:
            self.delivered.append(message)


def serve(app: Any, scope: dict[str, Any], server: Server) -> None:
    asyncio.run(ASGITracingMiddleware(app)(scope, server.receive, server.send))


def events(span: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(e["name"], e["attributes"].get("exception.type")) for e in span["events"]]


def body(size: int, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": b"b" * size, "more_body": more}


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


# --- http.response.pathsend ------------------------------------------------------------------


def pathsend_app(path: Any) -> Any:
    """A bare app: a 200 start, then ``path`` sent by ``http.response.pathsend``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.pathsend", "path": path})

    return app


def file_app(path: Path, background: list[int] | None = None) -> Any:
    """Starlette's FileResponse of ``path``; with ``background``, a background task after the
    response that notes when it started there."""

    async def note_start() -> None:
        assert background is not None
        background.append(time.time_ns())
        await asyncio.sleep(0.05)

    async def download(request: Request) -> Response:
        return FileResponse(path, background=BackgroundTask(note_start) if background is not None else None)

    return Starlette(routes=[Route("/file", download)])


def test_pathsend_is_the_last_body_message_sized_from_the_file(path_kind: str, tmp_path: Path) -> None:
    """Starlette's FileResponse sends ``http.response.pathsend`` when the server offers it:
    the span ends once the server's send of it returned (not after the background task) and
    counts the file's size."""
    data = tmp_path / "report.bin"
    data.write_bytes(b"r" * 12345)
    server = Server(pathsend_delay=0.05)
    background: list[int] = []
    with capture_spans() as exporter:
        serve(file_app(data, background), scope_for("/file", extensions=dict(PATHSEND)), server)
    [span] = exporter.spans()
    assert [m["type"] for m in server.delivered] == ["http.response.start", "http.response.pathsend"]
    # ends once the server's send of it returned, before the background task (it used to end
    # with the whole call, the background task included)
    assert server.pathsend_done_ns <= span["end_time_unix_nano"] <= background[0]
    attrs = span["attributes"]
    assert attrs["http.response.body.size"] == 12345  # before: 0
    assert attrs["http.route"] == "/file"
    assert events(span) == []


def test_pathsend_for_a_head_request_is_size_zero(path_kind: str, tmp_path: Path) -> None:
    data = tmp_path / "f.txt"
    data.write_bytes(b"abc")
    app = pathsend_app(str(data))
    with capture_spans() as exporter:
        serve(app, scope_for("/f", method="HEAD", extensions=dict(PATHSEND)), Server())
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 0


@pytest.mark.parametrize("kind", ["missing", "relative", "directory", "not text", "nul"])
def test_pathsend_of_a_file_whose_size_cannot_be_read_leaves_the_size_out(
    path_kind: str, tmp_path: Path, kind: str
) -> None:
    target: Any = {
        "missing": str(tmp_path / "nothing-here"),
        "relative": "relative/file.txt",
        "directory": str(tmp_path),
        "not text": str(tmp_path).encode(),
        "nul": str(tmp_path) + "/a\x00b",
    }[kind]
    app = pathsend_app(target)
    server = Server(pathsend_delay=0.05)
    with capture_spans() as exporter:
        serve(app, scope_for("/f", extensions=dict(PATHSEND)), server)
    [span] = exporter.spans()
    [audit] = exporter.of_type("audit")
    attrs = span["attributes"]
    assert "http.response.body.size" not in attrs
    assert attrs["http.response.status_code"] == 200
    assert audit["outcome"] == "200"
    assert events(span) == []
    assert span["end_time_unix_nano"] >= server.pathsend_done_ns  # (timed to the server's send of it)


def test_pathsend_not_offered_by_the_server_is_not_counted(path_kind: str, tmp_path: Path) -> None:
    """Only a server that advertised the extension sends the file: to any other the message
    goes as it is (the server decides), and nothing is counted."""
    data = tmp_path / "f.txt"
    data.write_bytes(b"abcdef")

    returned: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.pathsend", "path": str(data)})
        await asyncio.sleep(0.05)
        returned.append(time.time_ns())

    server = Server()
    with capture_spans() as exporter:
        serve(app, scope_for("/f", extensions={"http.response.trailers": {}}), server)
    [span] = exporter.spans()
    assert [m["type"] for m in server.delivered] == ["http.response.start", "http.response.pathsend"]
    assert span["attributes"]["http.response.body.size"] == 0
    assert span["end_time_unix_nano"] >= returned[0]  # (no last byte: the app's return)


def test_pathsend_the_server_refuses_as_its_client_left(path_kind: str, tmp_path: Path) -> None:
    data = tmp_path / "f.txt"
    data.write_bytes(b"abcdef")
    app = pathsend_app(str(data))
    with capture_spans() as exporter:
        with pytest.raises(ConnectionResetError):
            serve(app, scope_for("/f", extensions=dict(PATHSEND)), Server(raise_on_pathsend=True))
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 0
    assert events(span) == [("client.disconnected", "ConnectionResetError")]
    assert span["status"] != "error"


def test_pathsend_leaves_the_apps_message_unchanged(path_kind: str, tmp_path: Path) -> None:
    data = tmp_path / "f.txt"
    data.write_bytes(b"abcdef")
    message = {"type": "http.response.pathsend", "path": str(data)}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send(message)

    server = Server()
    with capture_spans():
        serve(app, scope_for("/f", extensions=dict(PATHSEND)), server)
    assert server.delivered[1] is message
    assert message == {"type": "http.response.pathsend", "path": str(data)}


def test_file_size_reads_regular_files_only(tmp_path: Path) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(b"z" * 77)
    assert common.file_size(str(data)) == 77
    assert common.file_size(str(tmp_path)) is None
    assert common.file_size("f.bin") is None
    assert common.file_size(data) is None  # (a Path: the extension gives text)
    assert common.file_size(str(tmp_path / "none")) is None
    assert common.file_size("/dev/null") is None


# --- the C path and the Python path agree -----------------------------------------------------

_STEPS = st.lists(
    st.sampled_from(["body", "empty", "last", "leave", "pathsend", "pathsend-missing", "start", "raise"]),
    max_size=7,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=_STEPS,
    offered=st.booleans(),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    status=st.sampled_from([200, 204, 404, 503]),
)
def test_c_and_python_paths_count_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, steps: list[str], offered: bool, method: str, status: int
) -> None:
    """Any order of body messages, a client that leaves (reported by receive), files sent by
    path (sized or not, offered or not) and an error: the same records on both paths."""
    data = tmp_path / "f.bin"
    data.write_bytes(b"q" * 321)

    def one(fast: bool) -> tuple[list[Any], list[str]]:
        server = Server()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            for step in steps:
                if step == "start":
                    await send({"type": "http.response.start", "status": status, "headers": []})
                elif step == "body":
                    await send(body(10))
                elif step == "empty":
                    await send({"type": "http.response.body"})
                elif step == "last":
                    await send(body(3, more=False))
                elif step == "leave":
                    server.leave()
                    await receive()
                elif step == "pathsend":
                    await send({"type": "http.response.pathsend", "path": str(data)})
                elif step == "pathsend-missing":
                    await send({"type": "http.response.pathsend", "path": str(tmp_path / "no")})
                else:
                    raise ValueError("boom")

        with monkeypatch.context() as m:
            if not fast:
                m.setattr(asgi_module, "fast_begin", None)
                m.setattr(asgi_module, "fast_finish", None)
            with capture_spans() as exporter:
                try:
                    serve(
                        app,
                        scope_for("/x", method=method, extensions=dict(PATHSEND) if offered else {}),
                        server,
                    )
                except ValueError:
                    pass
        records = []
        for rec in exporter.records:
            if rec["type"] not in ("span", "audit"):
                continue
            out = {
                k: v
                for k, v in rec.items()
                if not k.endswith("_id") and "time" not in k and k != "duration_ms"
            }
            out.pop("category", None)
            out["attributes"] = {k: v for k, v in rec["attributes"].items() if k != "duration_ms"}
            if "events" in rec:
                out["events"] = events(rec)
            records.append(out)
        return records, [m["type"] for m in server.delivered]

    assert one(fast=True) == one(fast=False)
