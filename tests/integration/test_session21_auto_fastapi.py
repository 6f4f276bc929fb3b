"""``pitchey-trace run`` traces FastAPI apps: FastAPI overrides Starlette's
``build_middleware_stack`` without calling it, so the Starlette hook alone left every FastAPI
app untraced (no span, no ``X-Trace-Id``). And ``run``'s middleware steps aside for a request
another pitchey middleware traces (a mounted app's parent, an app the program wrapped itself),
or serves untraced: such requests were two server spans, and the program's own options were
not the only ones applied. Real uvicorn servers in child processes started by the command,
the console exporter's NDJSON read back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.integration.db.test_auto_instrumentation import spans_of

pytestmark = pytest.mark.integration

SERVE = """
import socket, sys, threading, time
import httpx, uvicorn

def call(asgi, *paths):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    for path in paths:
        r = httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}{path}", timeout=10)
        print("GOT", path, r.status_code, r.headers.get("x-trace-id"), r.headers.get("x-own-trace"),
              flush=True)
        print("BODY", path, r.text, flush=True)
    server.should_exit = True  # a graceful stop: the request's span has ended after it
    thread.join(10)
"""

PROGRAM = """
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router
from pitchey_trace.web import ASGITracingMiddleware

app = FastAPI()
sub = FastAPI()
app.get("/items/{item_id}")(lambda item_id: item_id)
sub.get("/leaf/{n}")(lambda n: n)
app.mount("/sub", sub)

own = FastAPI()  # instrumented by the program itself: its options win, one middleware
own.get("/hello")(lambda: 1)
own.add_middleware(ASGITracingMiddleware, trace_id_header="X-Own-Trace")

wrapped = FastAPI()  # wrapped by the program itself (the documented way for FastAPI)
wrapped.get("/mine")(lambda: 1)
wrapped.get("/internal/ping")(lambda: 1)

async def plain(request):
    return PlainTextResponse("plain")

bare = Starlette(routes=[Route("/s/{n}", plain)])  # mounted below a Router, served directly

rooted = FastAPI(root_path="/api")  # (FastAPI sets scope["root_path"] in its __call__)
rooted.get("/health")(lambda: 1)
rooted.get("/who")(lambda: "rooted")

import copy
from fastapi import APIRouter
clone = copy.copy(rooted)  # (a variant made from a template app answers for itself)
clone.router = APIRouter()
clone.router.get("/who")(lambda: "clone")
clone.middleware_stack = None

call(app, "/items/7", "/sub/leaf/3")
call(rooted, "/api/health", "/api/who")
call(clone, "/api/who")
call(own, "/hello")
call(ASGITracingMiddleware(wrapped, trace_id_header="X-Own-Trace", excluded_paths=["/internal/*"]),
     "/mine", "/internal/ping")
call(Router(routes=[Mount("/api", app=bare)]), "/api/s/1")
call(sub, "/leaf/5")  # mounted in app, served on its own too
"""

INSTALLED = """
import pitchey_trace as pt
import pitchey_trace.otel
from fastapi import FastAPI

pitchey_trace.otel.install()
app = FastAPI()

@app.get("/items/{item_id}")
def item(item_id: int):
    with pt.span("work"):
        return item_id

call(app, "/items/7")
"""


def run(tmp_path: Path, program: str) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(SERVE) + textwrap.dedent(program))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pitchey_trace.cli", "run", "--exporter", "console", "--exclude", "httpx",
         "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(("GOT", "BODY")):
            got.setdefault(line.split()[1], []).extend(line.split()[2:])
    return got, spans_of(proc.stdout)


def test_fastapi_apps_are_traced_once_under_run(tmp_path: Path) -> None:
    got, spans = run(tmp_path, PROGRAM)
    servers = [s for s in spans if s["kind"] == "server"]
    assert sorted(s["name"] for s in servers) == [
        "GET /api/s/{n}",
        "GET /hello",
        "GET /items/{item_id}",
        "GET /leaf/{n}",
        "GET /mine",
        "GET /sub/leaf/{n}",
        "GET /who",
        "GET /who",
    ]
    assert {s["parent_span_id"] for s in servers} == {None}
    trace_of = {s["name"]: s["trace_id"] for s in servers}
    # the default header from run's middleware, the program's own header on its own apps
    assert got["/items/7"][:3] == ["200", trace_of["GET /items/{item_id}"], "None"]
    assert got["/sub/leaf/3"][:3] == ["200", trace_of["GET /sub/leaf/{n}"], "None"]
    assert got["/hello"][:3] == ["200", "None", trace_of["GET /hello"]]
    assert got["/mine"][:3] == ["200", "None", trace_of["GET /mine"]]
    assert got["/internal/ping"][:3] == ["200", "None", "None"]  # the program's exclusion holds
    assert got["/api/s/1"][:3] == ["200", trace_of["GET /api/s/{n}"], "None"]
    assert got["/leaf/5"][:3] == ["200", trace_of["GET /leaf/{n}"], "None"]
    assert got["/api/health"][:3] == ["200", "None", "None"]  # excluded below FastAPI's root path
    # the template app and its copy each answer for themselves, each traced
    assert got["/api/who"] == [
        "200",
        got["/api/who"][1],
        "None",
        '"rooted"',
        "200",
        got["/api/who"][5],
        "None",
        '"clone"',
    ]
    assert {got["/api/who"][1], got["/api/who"][5]} == {
        s["trace_id"] for s in servers if s["name"] == "GET /who"
    }


def test_fastapis_native_span_gives_way_under_run_with_install(tmp_path: Path) -> None:
    """With ``pitchey_trace.otel.install()`` FastAPI starts its own server span, before its
    middleware stack: ``run``'s middleware goes around ``FastAPI.__call__``, so it is the one
    server span and FastAPI's operation spans nest under it."""
    got, spans = run(tmp_path, INSTALLED)
    servers = [s for s in spans if s["kind"] == "server"]
    assert [s["name"] for s in servers] == ["GET /items/{item_id}"]
    (server,) = servers
    assert got["/items/7"][:2] == ["200", server["trace_id"]]
    fastapi = [s for s in spans if s["name"].startswith("fastapi.")]
    assert fastapi
    assert {s["parent_span_id"] for s in fastapi} == {server["span_id"]}
    assert {s["trace_id"] for s in spans if s["kind"] != "ddsketch"} == {server["trace_id"]}
