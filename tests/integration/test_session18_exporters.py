"""Session 18 robustness review of the HTTP exporters against real (misbehaving) servers on
127.0.0.1: answers cut off after a 2xx status, answers dripped a byte at a time, flushes and
shutdowns while a collector hangs. No timing upper bounds: each test checks the order of events
(the client returned while the server was still holding the request)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import ZipkinExporter
from pitchey_trace.exporters._http import HttpSender, RetryPolicy
from pitchey_trace.exporters.zipkin import to_zipkin
from pitchey_trace.testing import capture_spans
from tests.integration.exporters import conftest as exporter_fixtures
from tests.integration.exporters.servers import RecordingServer, Reply
from tests.support import collectors
from tests.support.collectors import RawHttpServer, read_request, span_records
from tests.support.httpserver import HandlerServer, QuietHandler

pytestmark = pytest.mark.integration

# shared fixtures
http_server = exporter_fixtures.http_server
servers = collectors.servers

ONE_TRY = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=3)


class RawServer(RawHttpServer):
    """Reads one HTTP request per connection and then runs ``answer(conn, stop)`` (``stop`` is
    set when the test ends); counts the requests read."""

    def __init__(self, answer: Callable[[socket.socket, threading.Event], None]) -> None:
        self.answer = answer
        self.requests = 0
        self.stop = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        if read_request(conn, bytearray()):
            self.requests += 1
            self.answer(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        super().close()


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST: the client sees "connection reset by peer"


@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_an_accepted_request_whose_answer_is_cut_off_is_not_sent_again(
    servers: list[RawServer], framing: bytes
) -> None:
    # The collector said 200 (it took the batch), then the connection was reset in the middle
    # of the answer's body: the batch is delivered. Sending it again would duplicate it, and
    # counting it failed would be false.
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\n"
            + framing
            + b"\r\n"
            + (b"10\r\n" if b"chunked" in framing else b"")
            + b'{"a"'
        )
        time.sleep(0.1)
        _reset(conn)

    server = RawServer(answer)
    servers.append(server)
    sender = HttpSender(server.url, counter="t18", timeout_s=5.0, retry=FAST)
    result = sender.send(b"{}")
    assert result.ok
    assert result.status == 200
    assert result.attempts == 1
    assert server.requests == 1


def test_an_answer_dripped_a_byte_at_a_time_is_bounded_by_timeout_s(servers: list[RawServer]) -> None:
    # Each byte comes well within timeout_s, so a per-read timeout never fires: the attempt
    # would last as long as the server likes. timeout_s bounds the whole answer.
    dripping = threading.Event()

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        dripping.set()
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1_000:
                if stop.is_set():
                    return
                conn.sendall(bytes([b]))
                time.sleep(0.02)
        finally:
            dripping.clear()

    server = RawServer(answer)
    servers.append(server)
    sender = HttpSender(server.url, counter="t18", timeout_s=0.5, retry=ONE_TRY)
    result = sender.send(b"{}")
    still_dripping = dripping.is_set()
    server.stop.set()
    assert not result.ok
    assert result.error is not None
    assert "Timeout" in result.error
    assert still_dripping  # the sender gave up while the server was still sending


def _spool_one(server: RecordingServer, exporter: ZipkinExporter) -> None:
    """Put one request into the exporter's spool (the server refuses it with a retryable 503).
    (The exporter is used without a pipeline: no idle poll sends the spool behind the test.)"""
    server.reply(Reply(status=503))
    assert exporter.export(span_records()) is True  # (kept on disk: not a loss)
    assert exporter._spool is not None
    assert len(exporter._spool) == 1


def test_force_flush_with_a_spool_keeps_to_its_timeout_while_the_collector_hangs(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    # timeout_s is large (a slow collector is allowed 60 s per request): a flush asked to take
    # at most 0.3 s must not wait for it.
    exporter = ZipkinExporter(
        http_server.url + "/api/v2/spans", timeout_s=60.0, retry=ONE_TRY, spool_dir=tmp_path / "spool"
    )
    _spool_one(http_server, exporter)
    http_server.reply(Reply(hang=15.0))
    flushed = exporter.force_flush(0.3)
    still_hanging = http_server.in_flight == 1
    http_server.release.set()
    assert http_server.wait_requests(2)
    assert flushed is False  # the spool is not empty: the collector did not answer in time
    assert still_hanging  # it returned while the collector still held the request
    assert exporter._spool is not None
    assert len(exporter._spool) == 1
    exporter.shutdown(1.0)
    assert _stats.get("zipkin.requests") >= 2


class LimitedServer(HandlerServer):
    """An HTTP server refusing bodies over ``limit`` bytes with 413 (as nginx's
    ``client_max_body_size`` does), recording the JSON lists it took."""

    def __init__(self, limit: int) -> None:
        self.taken: list[list[Any]] = []
        self.refused = 0
        outer = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if len(body) > limit:
                    outer.refused += 1
                    status = 413
                else:
                    outer.taken.append(json.loads(body))
                    status = 202
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return super().url + "/api/v2/spans"


def test_a_batch_the_collector_refuses_as_too_large_goes_again_in_smaller_requests() -> None:
    # The collector's body limit is below max_request_bytes (nobody told the exporter): a 413
    # refuses the size of the request, not its spans. Halves go again, each span once.
    with capture_spans() as captured:
        for i in range(40):
            with pt.span("job", attributes={"seq": i}):
                pass
        pt.force_flush(10.0)
    records = list(captured.records)
    one = len(json.dumps([to_zipkin(records[0])]))
    server = LimitedServer(limit=one * 7)
    try:
        exporter = ZipkinExporter(server.url, compress=False, retry=FAST)
        assert exporter.export(records) is True
        seqs = sorted(int(s["tags"]["seq"]) for body in server.taken for s in body)
        assert seqs == list(range(40))
        assert server.refused >= 1
        assert _stats.get("zipkin.split_too_large") >= 1
    finally:
        server.close()


def test_a_single_span_the_collector_refuses_as_too_large_is_given_up() -> None:
    with capture_spans() as captured:
        with pt.span("job"):
            pass
        pt.force_flush(10.0)
    server = LimitedServer(limit=10)
    try:
        exporter = ZipkinExporter(server.url, compress=False, retry=FAST)
        assert exporter.export(list(captured.records)) is False
        assert server.refused == 1  # not split further, not sent again
    finally:
        server.close()
