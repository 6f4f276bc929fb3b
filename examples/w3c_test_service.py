"""A test service for the official W3C Trace Context test suite, built on pitchey-trace.

    python examples/w3c_test_service.py [port] [--print-spans]

Protocol (test/README.md of github.com/w3c/trace-context): the harness POSTs a JSON array of
``{"url": ..., "arguments": [...]}`` to ``/test``; for each element the service POSTs
``arguments`` (as JSON) to ``url``. Trace context crosses each hop through our SDK only:

* the incoming headers are read with :func:`pitchey_trace.extract` (a malformed, missing or
  ambiguous ``traceparent`` starts a new trace, as the spec requires),
* the request runs in a SERVER span that is a child of the extracted context,
* each callback runs in a CLIENT span whose context is written with
  :func:`pitchey_trace.inject`, after adding our own ``pitchey`` tracestate entry at the
  front (the spec's "modified keys move to the left" mutation).

Only the standard library (http.server, urllib) and pitchey-trace are used. Port 0 picks a
free port; the first line printed is ``listening on http://127.0.0.1:PORT/test``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pitchey_trace as pt
from pitchey_trace import propagation

# No proxies from the environment: the harness is always reached directly.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_CALL_TIMEOUT_S = 5.0


def call(url: str, arguments: Any) -> int:
    """POST ``arguments`` to ``url`` inside a CLIENT span, propagating its context."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"only http(s) URLs are called: {url!r}")
    with pt.span("POST", kind=pt.SpanKind.CLIENT, attributes={"url.full": url}) as span:
        context = span.context
        # Our own tracestate entry goes first; the other vendors' entries keep their order.
        context = context.with_trace_state(
            propagation.tracestate_with(context.trace_state, propagation.OWN_TRACESTATE_KEY, span.span_id_hex)
        )
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        propagation.inject(headers, context)
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, data=json.dumps(arguments).encode(), headers=headers, method="POST"
        )
        with _OPENER.open(request, timeout=_CALL_TIMEOUT_S) as response:
            response.read()
            span.set_attribute("http.response.status_code", response.status)
            return int(response.status)


class Handler(BaseHTTPRequestHandler):
    """``POST /test``: run the harness's instructions."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            actions = json.loads(body or b"[]")
        except ValueError:
            self._reply(400, {"error": "body is not JSON"})
            return
        parent = propagation.extract(self.headers)  # http.client.HTTPMessage: get_all()
        with pt.span(f"POST {self.path}", kind=pt.SpanKind.SERVER, context=parent) as span:
            results = []
            for action in actions if isinstance(actions, list) else []:
                if not isinstance(action, dict) or not isinstance(action.get("url"), str):
                    continue
                try:
                    results.append(call(action["url"], action.get("arguments") or []))
                except Exception as exc:  # a failing callback is reported, not fatal
                    span.record_exception(exc)
                    results.append(0)
        self._reply(200, {"calls": results})

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the harness prints what matters."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="W3C trace-context test service on pitchey-trace")
    parser.add_argument("port", nargs="?", type=int, default=5000, help="0 = any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--print-spans", action="store_true", help="NDJSON spans on stderr")
    args = parser.parse_args(argv)
    exporters = [pt.ConsoleExporter(stream=sys.stderr)] if args.print_spans else []
    pt.configure(service="w3c-test-service", environment="test", exporters=exporters, sample_rate=1.0)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="w3c-test-service", daemon=True)
    thread.start()
    print(f"listening on http://{args.host}:{server.server_address[1]}/test", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    pt.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
