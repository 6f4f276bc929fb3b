"""examples/w3c_test_service.py over real HTTP: the service runs as a subprocess on a free port,
a local echo server records the callbacks it makes, and we check the W3C Trace Context
behaviour the official suite checks (our own requests and assertions)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SERVICE = Path(__file__).resolve().parents[2] / "examples" / "w3c_test_service.py"
TRACE_ID = "12345678901234567890123456789012"
TP = f"00-{TRACE_ID}-1234567890123456-01"


class Echo:
    """A local HTTP server that records the headers of every request it gets."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str]]] = []
        self._lock = threading.Lock()
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with echo._lock:
                    echo.requests.append(list(self.headers.items()))
                data = body or b"null"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def take(self) -> list[list[tuple[str, str]]]:
        with self._lock:
            got, self.requests = self.requests, []
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE), "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line + (
            proc.stderr.read() if proc.stderr else ""
        )
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert proc.returncode == 0  # clean shutdown on SIGTERM


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


def drive(service: tuple[str, int], headers: list[tuple[str, str]], actions: list[Any]) -> dict[str, Any]:
    """POST the harness-style instructions with exactly these (possibly repeated) headers."""
    conn = http.client.HTTPConnection(*service, timeout=10)
    try:
        body = json.dumps(actions).encode()
        conn.putrequest("POST", "/test")
        for name, value in [
            *headers,
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]:
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        assert response.status == 200
        result: dict[str, Any] = json.loads(response.read())
        return result
    finally:
        conn.close()


def one_callback(
    service: tuple[str, int], echo: Echo, headers: list[tuple[str, str]]
) -> tuple[list[str], list[str], list[str]]:
    """(traceparent values, tracestate values, baggage values) of the single callback."""
    result = drive(service, headers, [{"url": echo.url, "arguments": []}])
    assert result == {"calls": [200]}
    (request,) = echo.take()

    def pick(name: str) -> list[str]:
        return [v for k, v in request if k.lower() == name]

    return pick("traceparent"), pick("tracestate"), pick("baggage")


def test_continues_incoming_trace_with_new_parent_and_own_tracestate_first(
    service: tuple[str, int], echo: Echo
) -> None:
    tp, ts, bag = one_callback(
        service,
        echo,
        [
            ("traceparent", TP),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1"),
            ("baggage", "user.id=u%201"),
        ],
    )
    assert len(tp) == 1
    version, trace_id, parent_id, flags = tp[0].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id != "1234567890123456"
    assert len(ts) == 1
    assert ts[0] == f"pitchey={parent_id},foo=1,bar=2,rojo=1"
    assert bag == ["user.id=u%201"]


@pytest.mark.parametrize(
    "headers",
    [
        [
            ("traceparent", f"00-{TRACE_ID}-1234567890123456-01"),
            ("traceparent", f"00-{TRACE_ID[:-1]}3-1234567890123456-01"),
        ],
        [("traceparent", f"ff-{TRACE_ID}-1234567890123456-01")],
        [("traceparent", f"00-{'AB' * 16}-1234567890123456-01")],
        [("traceparent", f"00-{TRACE_ID}-0000000000000000-01")],
        [("traceparent", TP + ".")],
        [("trace-parent", TP)],
        [("tracestate", "foo=1")],
        [],
    ],
)
def test_invalid_or_missing_traceparent_starts_a_new_trace(
    service: tuple[str, int], echo: Echo, headers: list[tuple[str, str]]
) -> None:
    tp, ts, _ = one_callback(service, echo, headers)
    assert len(tp) == 1
    version, trace_id, parent_id, _flags = tp[0].split("-")
    assert version == "00"
    assert len(trace_id) == 32
    assert trace_id not in (TRACE_ID, TRACE_ID[:-1] + "3", "0" * 32, "ab" * 16)
    assert int(trace_id, 16) != 0
    assert ts == [f"pitchey={parent_id}"]  # incoming tracestate discarded


def test_future_version_and_random_flag_and_header_casing(service: tuple[str, int], echo: Echo) -> None:
    tp, _, _ = one_callback(service, echo, [("TrAcEpArEnT", f"cc-{TRACE_ID}-1234567890123456-03-future")])
    assert tp[0].startswith(f"00-{TRACE_ID}-")
    assert int(tp[0][-2:], 16) & 0x02  # the random flag is kept (Level 2)
    tp, _, _ = one_callback(service, echo, [("traceparent", f"cc-{TRACE_ID}-1234567890123456-01.future")])
    assert not tp[0].startswith(f"00-{TRACE_ID}-")


def test_invalid_tracestate_is_discarded_but_trace_continues(service: tuple[str, int], echo: Echo) -> None:
    tp, ts, _ = one_callback(service, echo, [("traceparent", TP), ("tracestate", "foo=1,BAR=2")])
    assert tp[0].startswith(f"00-{TRACE_ID}-")
    assert ts == [f"pitchey={tp[0].split('-')[2]}"]
    members = ",".join(f"k{i}={i}" for i in range(33))
    tp, ts, _ = one_callback(service, echo, [("traceparent", TP), ("tracestate", members)])
    assert ts == [f"pitchey={tp[0].split('-')[2]}"]


def test_several_callbacks_get_distinct_parents_in_one_trace(service: tuple[str, int], echo: Echo) -> None:
    result = drive(service, [("traceparent", TP)], [{"url": echo.url, "arguments": []} for _ in range(3)])
    assert result == {"calls": [200, 200, 200]}
    parents = set()
    for request in echo.take():
        (tp,) = [v for k, v in request if k.lower() == "traceparent"]
        assert tp.startswith(f"00-{TRACE_ID}-")
        parents.add(tp.split("-")[2])
    assert len(parents) == 3
