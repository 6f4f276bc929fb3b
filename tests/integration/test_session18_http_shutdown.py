"""Session 18: an HTTP exporter's shutdown cuts off the request in flight, against real servers
on 127.0.0.1 (one that accepts and never answers, one that answers slowly): what could not be
sent is in the spool before shutdown returns (or given up and counted without a spool), and no
request starts after it returned. No timing upper bounds: each test checks the order of events
(the server saw the connection end before shutdown returned; no connection after it)."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import ZipkinExporter
from pitchey_trace.exporters._http import HttpResult, HttpSender, RetryPolicy
from tests.integration.exporters.servers import RecordingServer, Reply
from tests.support import collectors
from tests.support.collectors import RawHttpServer, read_request, span_records

pytestmark = pytest.mark.integration

servers = collectors.servers  # (a shared fixture)

ONE_TRY = RetryPolicy(max_attempts=1)
LONG = 60.0  # a timeout_s far beyond the tests: only the shutdown can end a request


class TcpServer(RawHttpServer):
    """Reads each request and runs ``answer(conn)`` (default: never answers). Records, with
    ``time.monotonic()``, when each connection came, when its request was read, and when the
    client ended it (EOF or reset)."""

    def __init__(self, answer: Callable[[socket.socket], None] | None = None) -> None:
        self.answer = answer
        self.connected: list[float] = []
        self.requests: list[float] = []
        self.ended: list[float] = []
        self.request_bytes: list[int] = []  # bytes read per connection
        self.cond = threading.Condition()
        super().__init__()

    def _note(self, what: list[Any], value: Any) -> None:
        with self.cond:
            what.append(value)
            self.cond.notify_all()

    def wait(self, what: list[Any], n: int) -> bool:
        with self.cond:
            assert self.cond.wait_for(lambda: len(what) >= n, 30.0), "the server never saw it"
        return True

    def accepted(self) -> None:
        self._note(self.connected, time.monotonic())

    def serve(self, conn: socket.socket) -> None:
        received = bytearray()
        try:
            if not read_request(conn, received):
                return
            self._note(self.requests, time.monotonic())
            if self.answer is not None:
                self.answer(conn)
            while conn.recv(65536):  # (no answer, or a slow one: wait for the client to go)
                pass
        finally:
            self._note(self.request_bytes, len(received))
            self._note(self.ended, time.monotonic())


def _zipkin(url: str, spool: Path | None = None) -> ZipkinExporter:
    """A Zipkin exporter to ``url`` that tries each request once, for as long as the server
    likes (only a shutdown ends it), keeping what it could not send in ``spool``."""
    return ZipkinExporter(url, timeout_s=LONG, retry=ONE_TRY, spool_dir=spool)


def _export_thread(before: set[threading.Thread], name: str = "zipkin") -> threading.Thread:
    """The exporter's thread the last ``configure()`` started (not in ``before``)."""
    (thread,) = [
        t for t in threading.enumerate() if t.name == f"pitchey-trace-export-{name}" and t not in before
    ]
    return thread


def _files(spool: Path) -> list[str]:
    return sorted(n for n in os.listdir(spool) if n.endswith(".ready"))


def _export_in_flight(exporter: ZipkinExporter, arrived: Callable[[], bool]) -> threading.Thread:
    """Configure with ``exporter``, end a span, start its export (a flush that gives up at
    once); once ``arrived()`` says the server has the request, the exporter's thread."""
    before = set(threading.enumerate())
    pt.configure(service="s18", exporters=[exporter])
    with pt.span("in flight"):
        pass
    pt.force_flush(0.0)
    assert arrived()
    return _export_thread(before)


def _shutdown_while_in_flight(server: TcpServer, exporter: ZipkinExporter) -> tuple[float, threading.Thread]:
    """:func:`_export_in_flight` until the server has the request, then shut down. Returns
    when shutdown returned, and the exporter's thread."""
    thread = _export_in_flight(exporter, lambda: server.wait(server.requests, 1))
    assert thread.is_alive()  # (the request is in flight: the thread waits for its answer)
    pt.shutdown(timeout=0.5)
    return time.monotonic(), thread


def test_shutdown_cuts_off_an_unanswered_request_and_keeps_it_in_the_spool(
    servers: list[Any], tmp_path: Path
) -> None:
    server = TcpServer()
    servers.append(server)
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url, spool)
    _, thread = _shutdown_while_in_flight(server, exporter)
    kept_at_return = _files(spool)
    # The request was cut off, not left to run on: it could only end by its 60 s timeout
    # otherwise. (Not the server's time of seeing the end against shutdown's return: under
    # load the server's thread notes it late.)
    thread.join(LONG / 2)
    assert not thread.is_alive()
    assert server.wait(server.ended, 1)
    assert len(kept_at_return) == 1  # on disk before shutdown returned
    assert _files(spool) == kept_at_return  # kept once (not by both threads)
    assert len(server.connected) == 1  # nothing sent after shutdown (no drain, no poll)
    assert _stats.get("zipkin.spooled") == 1
    assert _stats.get("exported.zipkin") == 1  # (kept: counted when kept, as every spooled batch)
    assert _stats.get("dropped.export_failed") == 0


def test_without_a_spool_the_cut_off_batch_is_counted_dropped(servers: list[Any]) -> None:
    server = TcpServer()
    servers.append(server)
    exporter = _zipkin(server.url)
    _, thread = _shutdown_while_in_flight(server, exporter)
    thread.join(LONG / 2)  # (cut off: else only its 60 s timeout ends it)
    assert not thread.is_alive()
    assert server.wait(server.ended, 1)
    assert len(server.connected) == 1
    assert _stats.get("dropped.export_failed.zipkin") == 1
    assert _stats.get("exported.zipkin") == 0


def test_shutdown_cuts_off_a_slow_answer_and_keeps_the_request(servers: list[Any], tmp_path: Path) -> None:
    # A collector that answers, but only long after the request (RecordingServer: a real HTTP
    # server; its answer comes once released, or after a minute).
    server = RecordingServer()
    servers.append(server)
    server.reply(Reply(hang=LONG))
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url + "/api/v2/spans", spool)
    thread = _export_in_flight(exporter, lambda: server.wait_requests(1))
    pt.shutdown(timeout=0.5)
    kept_at_return = _files(spool)
    still_answering = server.in_flight == 1  # the server had not answered yet
    server.release.set()  # (it answers now: too late, the client is gone)
    thread.join(LONG)
    assert still_answering
    assert len(kept_at_return) == 1
    assert len(server.requests) == 1  # not sent again after shutdown
    assert _files(spool) == kept_at_return


def test_a_200_whose_body_drips_is_delivered_when_shutdown_cuts_it_off(
    servers: list[Any], tmp_path: Path
) -> None:
    # The status line came (the collector took the batch), then the body drips slowly: cut
    # off by shutdown, the batch is delivered, so it is neither kept nor sent again.
    dripping = threading.Event()
    dripped: list[int] = []

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        dripping.set()
        for _ in range(1000):  # (50 s in all: only a cut ends it sooner)
            conn.sendall(b"x")
            dripped.append(1)
            if select.select([conn], [], [], 0.05)[0] and not conn.recv(1):
                return  # the client ended the connection (EOF)

    server = TcpServer(answer)
    servers.append(server)
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url, spool)
    thread = _export_in_flight(exporter, lambda: dripping.wait(30.0))
    pt.shutdown(timeout=0.5)
    # The cut: the export thread is done (it would read for 50 s) and the server saw the
    # connection end before its answer was whole. (When the server notices is its own loop's
    # business: no comparison with when shutdown returned, which raced in CI.)
    thread.join(LONG)
    assert not thread.is_alive()
    server.wait(server.ended, 1)
    assert len(dripped) < 1000
    assert _files(spool) == []
    assert len(server.connected) == 1
    assert _stats.get("zipkin.spans") == 1
    assert _stats.get("exported.zipkin") == 1


def test_no_request_starts_after_shutdown(servers: list[Any], tmp_path: Path) -> None:
    server = RecordingServer()
    servers.append(server)
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url + "/api/v2/spans", spool)
    records = span_records()
    assert exporter.export(records) is True  # (a live exporter sends: the server works)
    assert len(server.requests) == 1
    exporter.shutdown(1.0)
    assert exporter.export(records) is True  # kept on disk for the next start, not sent
    assert len(_files(spool)) == 1
    assert exporter.force_flush(1.0) is False  # (the file waits: not sent after shutdown)
    exporter.poll()
    assert len(server.requests) == 1
    no_spool = _zipkin(server.url + "/api/v2/spans")
    no_spool.shutdown(1.0)
    assert no_spool.export(records) is False  # given up (the worker counts it dropped)
    assert len(server.requests) == 1
    no_spool.shutdown(1.0)  # (twice: never raises)


def test_abort_between_connect_and_request_sends_nothing(servers: list[Any]) -> None:
    # The shutting-down thread acts right after the sender's thread connected, before its
    # request goes out: the request must not go out.
    server = TcpServer()
    servers.append(server)
    sender = HttpSender(server.url, counter="t18", timeout_s=LONG, retry=ONE_TRY)
    connect = sender._open_socket

    def connect_then_abort(*args: Any) -> socket.socket:
        sock = connect(*args)
        threading.Thread(target=sender.abort).start()
        server.wait(server.connected, 1)
        time.sleep(0.2)  # (let the abort land first)
        return sock

    sender._open_socket = connect_then_abort  # type: ignore[method-assign]
    result = sender.send(b"{}")
    assert not result.ok
    server.wait(server.ended, 1)
    assert server.request_bytes == [0]  # connected, but not one byte of a request
    assert sender.send(b"{}").ok is False  # and no new connection afterwards
    assert len(server.connected) == 1


def test_abort_ends_a_connect_in_progress(servers: list[Any]) -> None:
    # A listener whose backlog is full: the SYN is not answered, the connect waits.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    servers.append(listener)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
        servers.append(s)
    probe = socket.socket()
    probe.settimeout(0.2)
    with pytest.raises(OSError):  # (the setup works: a connect here waits)
        probe.connect(("127.0.0.1", port))
    probe.close()
    sender = HttpSender(f"http://127.0.0.1:{port}/x", counter="t18", timeout_s=LONG, retry=ONE_TRY)
    results: list[HttpResult] = []
    thread = threading.Thread(target=lambda: results.append(sender.send(b"{}")))
    thread.start()
    while sender._handle is None:  # (the socket is registered just before it connects)
        time.sleep(0.01)
    time.sleep(0.1)
    sender.abort()
    thread.join(LONG)
    assert not thread.is_alive()
    assert len(results) == 1
    assert not results[0].ok


def test_abort_reaches_a_connection_that_replaced_a_closed_one(servers: list[Any]) -> None:
    # The collector closes the kept-alive connection; the next request goes on a new one and
    # hangs there: abort must shut down that one (not the first connection's socket).
    server = RecordingServer(idle_timeout_s=0.2)
    servers.append(server)
    sender = HttpSender(server.url + "/x", counter="t18", timeout_s=LONG, retry=ONE_TRY)
    assert sender.send(b"{}").ok
    first = sender._handle
    time.sleep(0.5)  # (the server closes the idle connection)
    server.reply(Reply(hang=LONG))
    results: list[HttpResult] = []
    thread = threading.Thread(target=lambda: results.append(sender.send(b"{}")))
    thread.start()
    assert server.wait_requests(2)
    sender.abort()
    thread.join(LONG)
    still_hanging = server.in_flight == 1
    server.release.set()
    assert still_hanging  # the sender returned while the server still held the request
    assert not results[0].ok
    assert first is not None
    assert first.fileno() == -1  # (the replaced connection's copy is closed)
    sender.close()
    assert sender._handle is None


def test_shutdown_keeps_a_delivery_its_thread_cannot_settle_in_time(
    servers: list[Any], tmp_path: Path
) -> None:
    # The exporter's thread is stuck before connecting (as in a slow host-name lookup, which
    # nothing can interrupt): shutdown keeps the payload in the spool itself; the thread, once
    # free, neither sends it nor keeps it a second time.
    server = TcpServer()
    servers.append(server)
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url, spool)
    sender = exporter._sender
    assert isinstance(sender, HttpSender)
    stalled, go = threading.Event(), threading.Event()
    connect = sender._open_socket

    def slow_lookup(*args: Any) -> socket.socket:
        stalled.set()
        go.wait(LONG)
        return connect(*args)

    sender._open_socket = slow_lookup  # type: ignore[method-assign]
    records = span_records()
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(exporter.export(records)))
    thread.start()
    assert stalled.wait(30.0)
    exporter.shutdown(0.2)
    kept_at_return = _files(spool)
    go.set()
    thread.join(LONG)
    assert len(kept_at_return) == 1
    assert results == [True]  # kept: not a loss
    assert _files(spool) == kept_at_return
    assert server.connected == []
    assert _stats.get("zipkin.spooled") == 1


# -- documented behaviour (docs/exporters.md, "Redirects and proxies") ------------------------


def test_a_redirect_is_not_followed_and_the_batch_is_refused(servers: list[Any], tmp_path: Path) -> None:
    target = RecordingServer()
    servers.append(target)
    server = RecordingServer()
    servers.append(server)
    server.reply(Reply(status=307, headers={"Location": target.url + "/api/v2/spans"}))
    spool = tmp_path / "spool"
    exporter = _zipkin(server.url + "/api/v2/spans", spool)
    assert exporter.export(span_records()) is False  # refused: not kept, not retried
    exporter.shutdown(1.0)
    assert len(server.requests) == 1
    assert target.requests == []
    assert _files(spool) == []
    assert _stats.get("zipkin.rejected") == 1


def test_proxy_environment_variables_are_not_used(
    servers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = TcpServer()
    servers.append(proxy)
    proxy_url = proxy.url.rsplit("/api", 1)[0]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = RecordingServer()
    servers.append(server)
    exporter = _zipkin(server.url + "/api/v2/spans")
    assert exporter.export(span_records()) is True
    exporter.shutdown(1.0)
    assert len(server.requests) == 1  # straight to the endpoint
    assert proxy.connected == []
