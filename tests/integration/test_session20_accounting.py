"""Accounting across the whole pipeline (docs/operations.md, "What to watch"): every record an
exporter is handed either reaches its destination (and is counted in ``exported.<name>``) or is
counted in a ``dropped.*`` counter of that exporter, exactly once.

One pipeline with the defaults (sampler, tail keeping, sanitizer, rollups) feeds four exporters
at once: an in-memory one (the reference: it takes every dataset and never fails), a local
archive, an OTLP/HTTP exporter and an HTTP analytics exporter, the last two pointed at a real
HTTP server in a child process that answers part of the requests with 503, cuts part of them off
without an answer and answers part of them slowly. Spans come from several threads (nested,
errors, slow ones, head-sampled out), with audit and log records among them."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.exporters import (
    HttpAnalyticsExporter,
    InMemoryExporter,
    LocalArchiveExporter,
    OTLPExporter,
    RetryPolicy,
)
from pitchey_trace.web.logs import export_logs, stop_export_logs

# The collector: the POSTs to each path are numbered; by its number a request gets a 503 (two
# in a row: with two attempts, a batch given up), no answer at all (the connection closed) or a
# slow 200; otherwise a 200. Items are counted only for the 200s it
# wrote, so what it reports is what was delivered. GET /counts returns the tallies.
_SERVER = r"""
import gzip, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
state = {"n": {}, "spans": [], "points": 0, "requests": 0, "failed": 0}

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        with lock:
            body = json.dumps(state).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        with lock:
            n = state["n"][self.path] = state["n"].get(self.path, 0) + 1
        if n % 6 in (1, 2):
            with lock:
                state["failed"] += 1
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if n % 6 == 4:
            with lock:
                state["failed"] += 1
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if n % 4 == 3:
            time.sleep(0.2)
        doc = json.loads(data)
        with lock:
            state["requests"] += 1
            if self.path.startswith("/v1/traces"):
                for rs in doc["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        state["spans"].extend(s["spanId"] for s in ss["spans"])
            else:
                state["points"] += len(doc["points"])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


@pytest.fixture
def collector() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def _counts(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/counts", timeout=10) as resp:  # noqa: S310 (our server)
        result: dict[str, Any] = json.loads(resp.read())
    return result


def _archived(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*.log.gz")):
        out.extend(json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line)
    return out


def _dropped(stats: dict[str, int], name: str) -> dict[str, int]:
    """Every per-exporter dropped counter of ``name`` that is not zero."""
    return {k: v for k, v in stats.items() if k.startswith("dropped.") and k.endswith(f".{name}") and v}


THREADS, REQUESTS = 4, 150


def _load() -> int:
    """Spans from several threads: nested, some errors, some slow; an audit record and a log
    record per request. Returns the number of requests made."""
    log = logging.getLogger("session20.accounting")

    def work(t: int) -> None:
        for i in range(REQUESTS):
            try:
                with pt.span("request", attributes={"t": t, "i": i, "user.email": "a@b.example"}):
                    with pt.span("db"), pt.span("query"):
                        pass
                    if i % 50 == 7:
                        with pt.span("slow"):
                            time.sleep(0.06)
                    pt.emit_audit("read", f"pitch/{i}", "success", actor="u1")
                    log.warning("request %d of thread %d", i, t)
                    if i % 25 == 3:
                        raise RuntimeError("boom")
            except RuntimeError:
                pass

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return THREADS * REQUESTS


def test_every_record_handed_to_an_exporter_is_delivered_or_counted(collector: str, tmp_path: Path) -> None:
    memory = InMemoryExporter()
    archive = LocalArchiveExporter(tmp_path / "archive", fsync=False)
    fast = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)
    otlp = OTLPExporter(
        f"{collector}/v1/traces",
        protocol="http/json",
        retry=fast,
        max_spans_per_request=1000,
        timeout_s=30,
    )
    # One request per export() call (batches of 200): when one request of a batch split into
    # several is given up, the whole batch is counted in dropped.export_failed although the
    # others were delivered (reported in session 20; not what this test is about).
    analytics = HttpAnalyticsExporter(
        f"{collector}/points", retry=fast, max_points_per_request=1000, timeout_s=30
    )
    pt.configure(
        service="accounting",
        sample_rate=0.5,
        slow_threshold_ms=50,
        exporters=[memory, archive, otlp, analytics],
        export_batch_size=200,
        schedule_delay_ms=50,
    )
    export_logs(logging.WARNING)
    try:
        requests = _load()
    finally:
        stop_export_logs()
    flushed = pt.shutdown(60)
    st = pt.stats()
    # (shutdown says False when a batch was given up since the last flush: here some were)
    assert st["dropped.export_failed"] > 0
    assert flushed is False

    # Nothing refused before the exporters; the reference exporter got every record.
    assert not st.get("dropped.queue_full")
    assert not st.get("dropped.sanitize_error")
    assert _dropped(st, "memory") == {}
    records = memory.records
    by_type = Counter(r["type"] for r in records)
    assert st["exported.memory"] == len(records)
    assert by_type["audit"] == requests
    assert by_type["log"] == requests
    assert by_type["span"] > 0
    assert by_type["rollup"] > 0
    spans = [r for r in records if r["type"] == "span"]
    # Every span made was taken in, and either kept or discarded by the tail keeper.
    made = requests * 3 + THREADS * len(range(7, REQUESTS, 50))
    assert st["accepted"] == made + 2 * requests
    assert len(spans) + st["tail.discarded"] == made
    # Tail keeping: every request with an error or a slow span is kept whole.
    kept_roots = {r["trace_id"] for r in spans if r["name"] == "request"}
    errors = {r["trace_id"] for r in spans if r["status"] == "error"}
    assert errors <= kept_roots
    assert len(errors) == THREADS * len(range(3, REQUESTS, 25))
    # Some were sampled out: fewer requests kept than made.
    assert len(kept_roots) < requests

    # The archive: everything, exactly once, on disk.
    archived = _archived(tmp_path / "archive")
    assert _dropped(st, "local_archive") == {}
    assert len(archived) == len(records) == st["exported.local_archive"] == st["local_archive.uploaded"]
    assert Counter(json.dumps(r, sort_keys=True) for r in archived) == Counter(
        json.dumps(r, sort_keys=True) for r in records
    )

    got = _counts(collector)
    assert got["failed"] > 0
    assert got["requests"] > 0
    # OTLP: handed the spans; received + dropped == handed, received == exported.otlp.
    received = got["spans"]
    assert len(received) == len(set(received))  # none delivered twice
    assert st["exported.otlp"] == len(received) == st["otlp.spans"]
    assert set(received) <= {r["span_id"] for r in spans}
    assert st["exported.otlp"] + sum(_dropped(st, "otlp").values()) == len(spans)
    # HTTP analytics: handed everything; every record is a point here.
    assert not st.get("http_analytics.skipped")
    assert st["exported.http_analytics"] == got["points"] == st["http_analytics.points"]
    assert st["exported.http_analytics"] + sum(_dropped(st, "http_analytics").values()) == len(records)
    # The global counters are the sums of the per-exporter ones.
    names = ("memory", "local_archive", "otlp", "http_analytics")
    assert st["exported"] == sum(st.get(f"exported.{n}", 0) for n in names)
    assert st.get("dropped.export_failed", 0) == sum(st.get(f"dropped.export_failed.{n}", 0) for n in names)
