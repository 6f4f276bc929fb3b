"""HttpAnalyticsExporter sends the requests of one batch at once (``max_concurrent_requests``),
each on a keep-alive connection of its own, against a real HTTP server on 127.0.0.1 that
answers after a delay and records how many requests it held at once, on which connections,
and every point it received. Every point arrives once or is counted dropped once; retries,
the spool, shutdown and fork hold as with one request at a time."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter, RetryPolicy
from tests.integration.exporters.servers import numbered_span, wait_until

#: A batch of 1,000 points: 4 requests of 250.
N = 1000


@dataclass
class Seen:
    """One request: its number (arrival order), the client's port (its connection), the names
    of its points, when it arrived and when it was answered (monotonic), and the status."""

    n: int
    port: int
    names: list[str]
    arrived: float
    answered: float = 0.0
    status: int = 0


class SlowServer:
    """Answers each POST after ``delay_s`` (or, with ``hang``, once ``release`` is set), with
    ``status_for(n)`` (n: the request's number; default 204), recording the most requests it
    held at once."""

    def __init__(self, delay_s: float, status_for: Callable[[int], int] = lambda n: 204) -> None:
        self.delay_s = delay_s
        self.status_for = status_for
        self.hang = False
        self.release = threading.Event()
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                points = json.loads(gzip.decompress(raw))["points"]
                with outer._lock:
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                    seen = Seen(
                        len(outer.seen),
                        self.client_address[1],
                        [p["blobs"][3] for p in points],
                        time.monotonic(),
                    )
                    outer.seen.append(seen)
                try:
                    if outer.hang:
                        outer.release.wait(60.0)
                    else:
                        time.sleep(outer.delay_s)
                    seen.status = outer.status_for(seen.n)
                    seen.answered = time.monotonic()
                    self.send_response(seen.status)
                    if seen.status == 503:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # (the client gave up first)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/points"

    def delivered(self) -> Counter[str]:
        """Each point name with the number of times a 2xx answered a request holding it."""
        return Counter(name for s in list(self.seen) if 200 <= s.status < 300 for name in s.names)

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[SlowServer]]:
    made: list[SlowServer] = []
    yield made
    for s in made:
        s.close()


def _server(
    made: list[SlowServer], delay_s: float, status_for: Callable[[int], int] = lambda n: 204
) -> SlowServer:
    s = SlowServer(delay_s, status_for)
    made.append(s)
    return s


def _batch(first: int = 0, n: int = N) -> list[dict[str, Any]]:
    return [numbered_span(i) for i in range(first, first + n)]


def _names(first: int = 0, n: int = N) -> Counter[str]:
    return Counter(f"op{i}" for i in range(first, first + n))


def _send_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pitchey-trace-send-")]


def test_a_batch_goes_out_on_several_connections_at_once_every_point_once(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.2)
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4)
    assert exp.export(_batch()) is True
    exp.shutdown(5)
    assert server.delivered() == _names()
    assert len(server.seen) == 4
    assert server.most_in_flight > 1
    assert len({s.port for s in server.seen}) > 1  # (connections of their own)
    # (the last request arrived before the first was answered: they overlapped)
    assert max(s.arrived for s in server.seen) < min(s.answered for s in server.seen)
    assert _stats.get("http_analytics.points") == N
    assert _send_threads() == []  # (the sending threads ended with the batch)


def test_one_request_at_a_time_with_max_concurrent_requests_1(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.05)
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=1)
    assert exp.export(_batch()) is True
    exp.shutdown(5)
    assert server.delivered() == _names()
    assert server.most_in_flight == 1
    assert len({s.port for s in server.seen}) == 1  # (one keep-alive connection)
    ordered = sorted(server.seen, key=lambda s: s.n)
    assert all(a.answered <= b.arrived for a, b in itertools.pairwise(ordered))


def test_the_connections_are_kept_alive_across_batches(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.05)
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4)
    for k in range(3):
        assert exp.export(_batch(k * N)) is True
    exp.shutdown(5)
    assert server.delivered() == _names(0, 3 * N)
    assert len({s.port for s in server.seen}) <= 4  # (at most one connection per lane)


def test_refused_requests_of_a_concurrent_batch_are_counted_dropped_once(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.1, lambda n: 400 if n in (1, 2) else 204)
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4)
    result = exp.export(_batch())
    exp.shutdown(5)
    refused = sum(len(s.names) for s in server.seen if s.status == 400)
    delivered = server.delivered()
    assert refused > 0
    assert len(server.seen) == 4
    assert isinstance(result, _stats.PartlyFailed)
    assert int(result) == refused
    assert sum(delivered.values()) == N - refused
    assert max(delivered.values()) == 1
    assert _stats.get("http_analytics.points") == N - refused
    assert _stats.get("dropped.export_failed.http_analytics") == refused
    assert _stats.get("http_analytics.rejected") == 2


def test_each_request_is_retried_on_its_own_after_retry_after(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.1, lambda n: 503 if n in (0, 3) else 204)
    exp = HttpAnalyticsExporter(
        server.url, max_concurrent_requests=4, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    )
    assert exp.export(_batch()) is True
    exp.shutdown(5)
    assert server.delivered() == _names()  # (each point once: the retries too)
    assert len(server.seen) == 6
    assert _stats.get("http_analytics.retried") == 2


def test_413_splitting_on_a_concurrent_batch(servers: list[SlowServer]) -> None:
    # (requests of 250 refused as too large: each goes again as halves, on its own lane)
    server = _server(servers, 0.05)
    server.status_for = lambda n: 413 if len(server.seen[n].names) > 125 else 204
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4)
    assert exp.export(_batch()) is True
    exp.shutdown(5)
    assert server.delivered() == _names()
    assert _stats.get("http_analytics.split_too_large") == 4


def test_failed_requests_go_to_the_spool_and_are_sent_once_later(
    servers: list[SlowServer], tmp_path: Path
) -> None:
    server = _server(servers, 0.1, lambda n: 500 if n in (0, 2) else 204)
    exp = HttpAnalyticsExporter(
        server.url, max_concurrent_requests=4, spool_dir=tmp_path, retry=RetryPolicy(initial_backoff_s=0.01)
    )
    assert exp.export(_batch()) is True  # (what failed is kept: counted once it is sent)
    assert wait_until(lambda: exp.force_flush(5))  # (a flush stops at a failed request: again)
    exp.shutdown(5)
    assert server.delivered() == _names()
    assert _stats.get("http_analytics.points") == N


def test_shutdown_cuts_off_every_request_of_a_batch_on_a_hung_endpoint(
    servers: list[SlowServer], tmp_path: Path
) -> None:
    server = _server(servers, 0.0)
    server.hang = True
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4, spool_dir=tmp_path, timeout_s=60)
    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(exp.export(_batch())), daemon=True)
    worker.start()
    assert wait_until(lambda: server.in_flight == 4)
    exp.shutdown(2)
    shut_down = time.monotonic()
    worker.join(30)
    assert not worker.is_alive()
    assert wait_until(lambda: _send_threads() == [])
    assert out == [True]  # (all four kept in the spool: sent by the next start)
    assert len(exp._spool or ()) == 4
    server.release.set()
    assert wait_until(lambda: server.in_flight == 0)
    assert all(s.status == 0 or s.answered > shut_down for s in server.seen)  # (none answered before)


def test_shutdown_without_a_spool_gives_the_hung_requests_up(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.0)
    server.hang = True
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4, timeout_s=60)
    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(exp.export(_batch())), daemon=True)
    worker.start()
    assert wait_until(lambda: server.in_flight == 4)
    exp.shutdown(2)
    worker.join(30)
    assert not worker.is_alive()
    assert out == [False]  # (none went out: the worker counts the batch as given up)
    assert _stats.get("http_analytics.points") == 0
    assert wait_until(lambda: _send_threads() == [])


def test_a_forked_child_sends_on_connections_of_its_own(servers: list[SlowServer]) -> None:
    server = _server(servers, 0.05)
    exp = HttpAnalyticsExporter(server.url, max_concurrent_requests=4)
    assert exp.export(_batch()) is True
    parent_ports = {s.port for s in server.seen}
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if exp.export(_batch(N)) is True else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_ports = {s.port for s in server.seen[4:]}
    assert len(server.seen) == 8
    assert not child_ports & parent_ports
    assert exp.export(_batch(2 * N)) is True  # (the parent's connections still work)
    exp.shutdown(5)
    assert server.delivered() == _names(0, 3 * N)
