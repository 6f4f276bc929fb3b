"""Every record an exporter is handed is counted once: delivered (``exported.<name>``) or in a
``dropped.*`` counter. Real HTTP servers on 127.0.0.1: a batch split into several requests of
which one is given up; a 413 answered by splitting (not a rejection); spans still queued when
``shutdown()``'s time runs out."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.exporters import InMemoryExporter, OTLPExporter, RetryPolicy, ZipkinExporter


class _Endpoint:
    """A collector whose answer to each request ``answer(n, body)`` decides (n from 1)."""

    def __init__(self, answer: Any) -> None:
        self.requests = 0
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with endpoint.lock:
                    endpoint.requests += 1
                    n = endpoint.requests
                status = answer(n, body)
                if status == 200:
                    with endpoint.lock:
                        endpoint.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[list[_Endpoint]]:
    made: list[_Endpoint] = []
    yield made
    for e in made:
        e.close()


def _otlp_span_ids(bodies: list[bytes]) -> list[str]:
    return [
        s["spanId"]
        for body in bodies
        for rs in json.loads(body)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    ]


def _twenty_spans_in_requests_of_ten(e: _Endpoint) -> None:
    """One batch of 20 spans to ``e``, sent 10 per request, each request tried once."""
    exporter = OTLPExporter(
        f"http://127.0.0.1:{e.port}/v1/traces",
        protocol="http/json",
        compression=None,
        max_spans_per_request=10,
        retry=RetryPolicy(max_attempts=1),
    )
    pt.configure(service="counting", exporters=[exporter], rollups=None, export_batch_size=20)
    for i in range(20):
        with pt.span(f"s{i}"):
            pass


def test_a_batch_partly_given_up_counts_only_the_given_up_requests_as_dropped(
    endpoints: list[_Endpoint],
) -> None:
    # 20 spans in one batch, 10 per request: the second request is refused for good.
    e = _Endpoint(lambda n, body: 503 if n == 2 else 200)
    endpoints.append(e)
    _twenty_spans_in_requests_of_ten(e)
    assert pt.force_flush(10) is False  # (a request was given up: the flush says so)
    pt.shutdown(10)
    stats = pt.stats()
    delivered = _otlp_span_ids(e.bodies)
    assert e.requests == 2
    assert len(delivered) == len(set(delivered)) == 10
    assert stats["exported.otlp"] == stats["otlp.spans"] == 10
    assert stats["dropped.export_failed.otlp"] == stats["dropped.export_failed"] == 10


def test_a_batch_whose_requests_all_fail_is_given_up_whole(endpoints: list[_Endpoint]) -> None:
    e = _Endpoint(lambda n, body: 503)
    endpoints.append(e)
    _twenty_spans_in_requests_of_ten(e)
    pt.shutdown(10)
    stats = pt.stats()
    assert e.requests == 2
    assert stats["dropped.export_failed.otlp"] == 20
    assert stats.get("exported.otlp", 0) == 0


def test_a_413_answered_by_splitting_is_not_a_rejection(
    endpoints: list[_Endpoint], caplog: pytest.LogCaptureFixture
) -> None:
    # A proxy's body limit: every request over 3,000 bytes is refused as too large.
    e = _Endpoint(lambda n, body: 413 if len(body) > 3000 else 200)
    endpoints.append(e)
    exporter = ZipkinExporter(f"http://127.0.0.1:{e.port}/api/v2/spans")
    pt.configure(service="counting", exporters=[exporter], rollups=None)
    for _ in range(40):
        with pt.span("op", attributes={"pad": "x" * 200}):
            pass
    pt.shutdown(10)
    stats = pt.stats()
    assert stats["zipkin.spans"] == stats["exported.zipkin"] == 40
    assert sum(len(json.loads(b)) for b in e.bodies) == 40
    assert stats["zipkin.split_too_large"] > 0
    assert stats.get("zipkin.rejected", 0) == 0
    assert not [r for r in caplog.records if "rejected a batch" in r.getMessage()]


def test_a_single_item_refused_as_too_large_is_still_a_rejection(endpoints: list[_Endpoint]) -> None:
    e = _Endpoint(lambda n, body: 413 if len(body) > 3000 else 200)
    endpoints.append(e)
    exporter = ZipkinExporter(f"http://127.0.0.1:{e.port}/api/v2/spans")
    pt.configure(service="counting", exporters=[exporter], rollups=None)
    with pt.span("big", attributes={"pad": "x" * 3500}):
        pass
    with pt.span("small"):
        pass
    pt.shutdown(10)
    stats = pt.stats()
    assert stats["zipkin.rejected"] == 1
    assert stats["exported.zipkin"] == 1
    assert stats["dropped.export_failed.zipkin"] == 1


def test_spans_still_queued_when_shutdown_runs_out_are_counted() -> None:
    def slow(record: Any) -> Any:
        time.sleep(0.002)
        return record

    memory = InMemoryExporter()
    pt.configure(
        service="counting", exporters=[memory], processors=[slow], rollups=None, max_queue_size=100_000
    )
    made = 3000
    for _ in range(made):
        with pt.span("s"):
            pass
    assert pt.shutdown(0.5) is False
    # The pipeline worker, a daemon, may still be taking spans: whatever it takes from now on
    # is counted as it hands it over; wait until nothing is left uncounted or it stops.
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        stats = pt.stats()
        counted = len(memory.records) + stats.get("dropped.shutdown_timeout", 0)
        if counted >= made:
            break
        time.sleep(0.05)
    stats = pt.stats()
    assert len(memory.records) + stats["dropped.shutdown_timeout"] == made
    assert stats["dropped.shutdown_timeout"] == (
        stats.get("dropped.shutdown_timeout.memory", 0) + stats.get("dropped.shutdown_timeout.pipeline", 0)
    )
    assert stats.get("dropped.shutdown_timeout.pipeline", 0) > 0
