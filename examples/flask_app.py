"""Flask traced by pitchey-trace: request spans named after url rules, audit, logs, outbound.

.venv/bin/python examples/flask_app.py              # serve on 127.0.0.1:5000 (PORT=...)
curl -i localhost:5000/pitches/42                   # note the X-Trace-Id response header
.venv/bin/python examples/flask_app.py --demo       # start, call itself, print, exit

werkzeug logs its access lines after the request's span ended: they carry empty trace ids.
The /boom traceback on stderr is expected (its log line carries the 500's trace id).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Iterator

import requests
from flask import Flask, Response, abort, request, stream_with_context
from werkzeug.serving import make_server

import pitchey_trace as pt
from pitchey_trace.web import TraceContextFilter, TraceFormatter, init_flask, instrument_requests, set_user


def create_app() -> Flask:
    app = Flask("pitch_web")

    @app.get("/pitches/<int:pitch_id>")
    def get_pitch(pitch_id: int) -> dict[str, object]:
        with pt.span("load_pitch", attributes={"pitch.id": pitch_id}):
            app.logger.info("loading pitch %s", pitch_id)
            return {"id": pitch_id, "title": "Quiet drums"}

    @app.get("/me")
    def me() -> dict[str, str]:
        user = request.headers.get("X-User-Id")
        if user is None:
            abort(401)  # a 401 response: request and security audit records
        set_user(user)
        return {"user": user}

    @app.get("/export")
    def export() -> Response:
        def rows() -> Iterator[str]:  # streamed: the request span ends after the last row
            for i in range(3):
                with pt.span("render_row"):
                    yield f"row {i}\n"

        return Response(stream_with_context(rows()), mimetype="text/plain")

    @app.get("/feed")
    def feed() -> dict[str, object]:
        # (ourselves, on the address the server listens on: not the Host header)
        own = f"http://{request.environ['SERVER_NAME']}:{request.environ['SERVER_PORT']}"
        first = requests.get(f"{own}/pitches/1", timeout=5).json()  # trace continues
        return {"feed": [first]}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the 500 response and the error log carry the same trace id")

    return init_flask(app, traceresponse=True)  # type: ignore[no-any-return]


def setup() -> None:
    pt.configure(service="pitch-web", exporters=[pt.ConsoleExporter(pretty=True)])
    instrument_requests()
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(TraceFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def demo() -> None:
    """Serve on a free port, call a few endpoints, print what the client sees, stop."""
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    with pt.suppress_tracing():  # the demo's own calls are not part of the traces
        for path, headers in (
            ("/pitches/42", {}),
            ("/me", {"X-User-Id": "u-7"}),
            ("/me", {}),
            ("/export", {}),
            ("/feed", {}),
            ("/boom", {}),
        ):
            r = requests.get(base + path, headers=headers, timeout=10)
            print(f"GET {path:<12} -> {r.status_code}  X-Trace-Id: {r.headers.get('X-Trace-Id', '-')}")
    server.shutdown()
    thread.join(10)
    pt.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Flask traced by pitchey-trace")
    parser.add_argument("--demo", action="store_true", help="start, call a few endpoints, exit")
    setup()
    if parser.parse_args().demo:
        demo()
    else:
        create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
