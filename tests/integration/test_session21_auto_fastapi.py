"""``pitchey-trace run`` traces FastAPI apps: FastAPI overrides Starlette's
``build_middleware_stack`` without calling it, so the Starlette hook alone left every FastAPI
app untraced (no span, no ``X-Trace-Id``). A real uvicorn server in a child process started by
the command, the console exporter's NDJSON read back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.db.test_auto_instrumentation import spans_of

pytestmark = pytest.mark.integration

PROGRAM = """
import socket, sys, threading, time
import httpx, uvicorn
from fastapi import FastAPI
from pitchey_trace.web import ASGITracingMiddleware

app = FastAPI()
sub = FastAPI()

@app.get("/items/{item_id}")
def item(item_id: int):
    return {"id": item_id}

@sub.get("/leaf/{n}")
def leaf(n: int):
    return {"n": n}

app.mount("/sub", sub)

own = FastAPI()  # instrumented by the program itself: its options win, one middleware

@own.get("/hello")
def hello():
    return {"hello": 1}

own.add_middleware(ASGITracingMiddleware, trace_id_header="X-Own-Trace")

def serve(asgi):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"

for asgi, path in ((app, "/items/7"), (app, "/sub/leaf/3"), (own, "/hello")):
    server, thread, url = serve(asgi)
    r = httpx.get(url + path, timeout=10)
    print("GOT", path, r.status_code, r.headers.get("x-trace-id"), r.headers.get("x-own-trace"),
          flush=True)
    server.should_exit = True  # a graceful stop: the request's span has ended after it
    thread.join(10)
"""


def test_fastapi_apps_are_traced_under_run(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pitchey_trace.cli", "run", "--exporter", "console", "--",
         sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {line.split()[1]: line.split()[2:] for line in proc.stdout.splitlines() if line.startswith("GOT")}
    spans = spans_of(proc.stdout)
    servers = [s for s in spans if s["kind"] == "server"]
    assert sorted(s["name"] for s in servers) == ["GET /hello", "GET /items/{item_id}", "GET /sub/leaf/{n}"]
    by_name = {s["name"]: s for s in servers}
    # the default header on the auto-wrapped app, the program's own header on its own app
    assert got["/items/7"][0] == "200"
    assert got["/items/7"][1] == by_name["GET /items/{item_id}"]["trace_id"]
    assert got["/sub/leaf/3"][1] == by_name["GET /sub/leaf/{n}"]["trace_id"]
    assert got["/hello"][1:] == ["None", by_name["GET /hello"]["trace_id"]]
    # each under the program's httpx client span, one server span per request
    clients = {s["span_id"] for s in spans if s["kind"] == "client"}
    assert {s["parent_span_id"] for s in servers} <= clients
    assert len(clients) == 3
