"""FastAPI traced by pitchey-trace: request spans, route names, audit, outbound calls, logs.

    .venv/bin/python examples/fastapi_app.py            # serve on 127.0.0.1:8000 (PORT=...)
    curl -i localhost:8000/pitches/42                   # note the X-Trace-Id response header
    .venv/bin/python examples/fastapi_app.py --demo     # start, call itself, print, exit

Or under your own server: ``uvicorn examples.fastapi_app:app --port 8000`` (tracing is configured
in the app's lifespan, so importing this module has no side effects; uvicorn's CLI installs its
own log handlers, so its access lines carry no trace ids there, while the app's lines do).
Under ``--demo`` the client's own calls are traced too: each tree's root is a ``GET`` client span.
The ``/boom`` traceback on stderr is expected: the error log line and the 500 response carry the
same trace id.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request

import pitchey_trace as pt
from pitchey_trace.web import ASGITracingMiddleware, TraceFormatter, auth_failure, instrument_httpx, set_user

log = logging.getLogger("pitch_api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pt.configure(service="pitch-api", exporters=[pt.ConsoleExporter(pretty=True)])
    instrument_httpx()  # outbound calls get client spans and a traceparent header
    handler = logging.StreamHandler()
    handler.setFormatter(TraceFormatter())  # every log line shows trace_id and span_id
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    yield
    pt.shutdown()


app = FastAPI(lifespan=lifespan)
app.add_middleware(ASGITracingMiddleware, traceresponse=True)


@app.get("/pitches/{pitch_id}")
async def get_pitch(pitch_id: int) -> dict[str, object]:
    with pt.span("load_pitch", attributes={"pitch.id": pitch_id}):
        log.info("loading pitch %s", pitch_id)
        return {"id": pitch_id, "title": "Solar kettles"}


@app.get("/me")
async def me(x_user_id: str | None = Header(default=None)) -> dict[str, str]:
    if x_user_id is None:
        auth_failure("missing_user")  # a security audit event
        raise HTTPException(status_code=401, detail="who are you?")
    set_user(x_user_id)  # the audit record's actor
    return {"user": x_user_id}


@app.get("/feed")
async def feed(request: Request) -> dict[str, object]:
    # The call below continues this trace in the called service (here: ourselves, on the
    # address the server listens on: not the Host header, which the client chooses).
    host, port = request.scope["server"]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        first = (await client.get("/pitches/1")).json()
    return {"feed": [first]}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("the 500 response and this log record carry the same trace id")


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}  # excluded by default: no span, no audit


def demo() -> None:
    """Serve on a free port, call a few endpoints, print what the client sees, stop."""
    import socket

    # Keep the bound socket and hand it to uvicorn: no window for another process to take the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("uvicorn did not start")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    for path, headers in (
        ("/pitches/42", {}),
        ("/me", {"X-User-Id": "u-7"}),
        ("/me", {}),
        ("/feed", {}),
        ("/boom", {}),
        ("/healthz", {}),
    ):
        r = httpx.get(base + path, headers=headers)
        print(f"GET {path:<12} -> {r.status_code}  X-Trace-Id: {r.headers.get('x-trace-id', '-')}")
    server.should_exit = True
    thread.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FastAPI traced by pitchey-trace")
    parser.add_argument("--demo", action="store_true", help="start, call a few endpoints, exit")
    if parser.parse_args().demo:
        demo()
    else:
        # log_config=None: uvicorn's records reach the root handler (and TraceFormatter).
        uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), log_config=None)
