"""Throughput of ``HttpAnalyticsExporter`` against a fast endpoint on 127.0.0.1.

    .venv/bin/python bench/bench_analytics_throughput.py [--seconds 5] [--profile]
        [--latency-ms 20] [--max-concurrent N] [--batch 512]

The endpoint runs in a process of its own (it must not take the GIL from the exporter): it
reads each request (Content-Length) and answers ``204`` on the kept-alive connection, after
``--latency-ms`` (default 0: at once; 20 is a remote endpoint's round trip). The
exporter is handed batches of 512 span records (``--batch``), as the export worker hands them (one
``export()`` per batch, 250 points per request), for ``--seconds``. Printed: points/s
delivered, requests, and the same with ``compress=False`` as the anchor (the time left when
gzip is taken out), and their ratio. ``--profile``: cProfile of the gzip run (top 25 by
cumulative time). ``--max-concurrent``: the exporter's ``max_concurrent_requests`` (default 4;
1 is the exporter's own default); with ``--latency-ms``, the anchor is the same run with one request at a time
(``max_concurrent_requests=1``) instead of ``compress=False``.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import pstats
import random
import socket
import threading
import time
from typing import Any


def _serve(port_out: Any, latency_s: float = 0.0) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port_out.send(srv.getsockname()[1])

    def handle(conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(buf) < length:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf[length:]
                if latency_s:
                    time.sleep(latency_s)  # (this connection's thread only, as a remote endpoint)
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def span_records(n: int) -> list[dict[str, Any]]:
    """Realistic span records (as the pipeline hands them to exporters)."""
    rnd = random.Random(21)  # (random ids: they are what gzip cannot shrink)
    out = []
    for i in range(n):
        out.append(
            {
                "schema": 1,
                "type": "span",
                "trace_id": rnd.getrandbits(128).to_bytes(16, "big").hex(),
                "span_id": rnd.getrandbits(64).to_bytes(8, "big").hex(),
                "parent_span_id": rnd.getrandbits(64).to_bytes(8, "big").hex() if i % 4 else None,
                "name": "SELECT pitches" if i % 3 else "GET /pitches/{id}",
                "kind": "client" if i % 3 else "server",
                "service": "pitch-api",
                "environment": "production",
                "start_time_unix_nano": 1_764_000_000_000_000_000 + i * 1000,
                "end_time_unix_nano": 1_764_000_000_000_000_000 + i * 1000 + 1_234_567,
                "duration_ms": 1.234567,
                "status": "ok",
                "status_message": "",
                "category": "fast",
                "attributes": {
                    "http.request.method": "GET",
                    "http.route": "/pitches/{id}",
                    "http.response.status_code": 200,
                    "db.system.name": "postgresql",
                    "db.operation.name": "SELECT",
                    "db.collection.name": "pitches",
                    "server.address": "db.internal",
                },
                "events": [],
                "links": [],
                "resource": {"service.version": "1.4.2", "host.name": "web-1"},
            }
        )
    return out


def run(
    url: str,
    seconds: float,
    compress: bool,
    profile: bool = False,
    concurrent: int | None = None,
    batch_size: int = 512,
) -> tuple[float, float, int]:
    from pitchey_trace import _stats
    from pitchey_trace.exporters import HttpAnalyticsExporter

    options: dict[str, Any] = {} if concurrent is None else {"max_concurrent_requests": concurrent}
    exp = HttpAnalyticsExporter(url, compress=compress, token="bench-token", **options)  # noqa: S106 - a local test endpoint
    batch = span_records(batch_size)
    exp.export(batch)  # (connects)
    before = _stats.get("http_analytics.requests")
    prof = cProfile.Profile() if profile else None
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    if prof:
        prof.enable()
    while time.perf_counter() - t0 < seconds:
        assert exp.export(batch) is True
        n += len(batch)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    requests = _stats.get("http_analytics.requests") - before
    exp.shutdown()
    # (CPU seconds of this process per point: the exporting thread and its sending threads,
    # what it takes from the application; steadier than the wall clock on a busy machine)
    return n / elapsed, cpu / n * 1e6, requests


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="the endpoint answers after this long")
    ap.add_argument("--max-concurrent", type=int, default=4, help="max_concurrent_requests")
    ap.add_argument("--batch", type=int, default=512, help="records per export() (export_batch_size)")
    args = ap.parse_args()
    parent, child = multiprocessing.Pipe()
    latency_s = max(0.0, args.latency_ms) / 1000.0
    server = multiprocessing.Process(target=_serve, args=(child, latency_s), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{parent.recv()}/ingest"
    try:
        ours, ours_cpu, reqs = run(url, args.seconds, True, args.profile, args.max_concurrent, args.batch)
        if latency_s:
            anchor, anchor_cpu, _ = run(url, args.seconds, True, concurrent=1, batch_size=args.batch)
        else:
            anchor, anchor_cpu, _ = run(
                url, args.seconds, False, concurrent=args.max_concurrent, batch_size=args.batch
            )
    finally:
        server.terminate()
    label = str(args.max_concurrent)
    print(f"endpoint latency {args.latency_ms:g} ms, max_concurrent_requests={label}, batch {args.batch}")
    print(
        f"analytics export, gzip:  {ours:10,.0f} points/s  {ours_cpu:5.1f} us CPU/point  ({reqs:,} requests)"
    )
    if latency_s:
        print(f"anchor, 1 at a time:     {anchor:10,.0f} points/s  {anchor_cpu:5.1f} us CPU/point")
        print(f"ratio concurrent/1:      {ours / anchor:.2f} (points/s)")
    else:
        print(f"anchor, compress=False:  {anchor:10,.0f} points/s  {anchor_cpu:5.1f} us CPU/point")
        print(f"ratio gzip/no-gzip:      {ours / anchor:.2f} (points/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
