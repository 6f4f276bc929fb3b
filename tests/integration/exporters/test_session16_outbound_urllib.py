"""urllib.request instrumentation and a caller's Request object: a Request sent twice carries
the context of each call, and is not left holding our headers. A real HTTP server on
127.0.0.1 records the headers each request arrived with."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import instrument_urllib, uninstrument_urllib

pytestmark = pytest.mark.integration


class HeaderServer:
    """Answers 200 to every GET and keeps the headers of each request (lower-case names)."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.received.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[HeaderServer]:
    s = HeaderServer()
    yield s
    s.close()


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_urllib()
    try:
        yield
    finally:
        uninstrument_urllib()


def _get(req: urllib.request.Request) -> None:
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  (http to 127.0.0.1)
        assert resp.read() == b"ok"


def _our_headers(req: urllib.request.Request) -> set[str]:
    names = {k.lower() for k, _ in req.header_items()}
    return names & {"traceparent", "tracestate", "baggage"}


def test_a_reused_request_carries_each_calls_own_context(server: HeaderServer, traced: None) -> None:
    req = urllib.request.Request(server.url + "/a")  # noqa: S310
    with capture_spans() as exporter:
        with pt.span("first"):
            _get(req)
        assert _our_headers(req) == set()  # the caller's object is as it was
        with pt.span("second"):
            _get(req)
    clients = [s for s in exporter.spans() if s["kind"] == "client"]
    assert len(clients) == 2
    sent = [r["traceparent"] for r in server.received]
    assert [tp.split("-")[1:3] for tp in sent] == [[c["trace_id"], c["span_id"]] for c in clients]
    assert sent[0] != sent[1]
    assert _our_headers(req) == set()


def test_a_reused_request_sent_where_nothing_is_traced_carries_no_stale_header(
    server: HeaderServer, traced: None
) -> None:
    req = urllib.request.Request(server.url + "/b")  # noqa: S310
    with pt.span("traced"), pt.set_baggage(tenant="acme"):
        _get(req)
    with pt.suppress_tracing():
        _get(req)  # a call that injects nothing must send nothing of ours
    uninstrument_urllib()
    _get(req)
    first, suppressed, plain = server.received
    assert "traceparent" in first
    assert first["baggage"] == "tenant=acme"
    for got in (suppressed, plain):
        assert "traceparent" not in got
        assert "baggage" not in got


def test_the_callers_own_headers_stay_and_go(server: HeaderServer, traced: None) -> None:
    req = urllib.request.Request(server.url + "/c", headers={"X-Request-Id": "r-1"})  # noqa: S310
    req.add_unredirected_header("X-Once", "1")
    with pt.span("call"):
        _get(req)
    [got] = server.received
    assert got["x-request-id"] == "r-1"
    assert got["x-once"] == "1"
    assert "traceparent" in got
    assert req.unredirected_hdrs["X-once"] == "1"  # (urllib's own Host etc. may be there too)
    assert _our_headers(req) == set()
