"""Memory, disk and latency bounds while an exporter's endpoint is down.

    .venv/bin/python bench/outage_bounds.py --seconds 60            # every scenario
    .venv/bin/python bench/outage_bounds.py --seconds 20 --only otlp_grpc

Each scenario runs in a fresh process: two threads make spans at ``--rate`` spans/s in all
(``with pt.span(...)``), a third logs through ``pt.export_logs()`` and a fourth emits audit
records inside a request span (the middleware's pattern), for ``--seconds``. One exporter
points at an endpoint that fails in one way:

* ``refused``: nothing listens on the port;
* ``hung``: accepts the connection and never answers;
* ``503``: answers 503 with ``Retry-After: 1`` (gRPC: ``UNAVAILABLE``);
* ``slow``: answers 200, one byte a second (gRPC: the call never ends);
* ``full`` / ``readonly`` (local archive): a 2 MiB tmpfs, or a read-only mount (root only);
* ``ok``: a working endpoint, the baseline for the latency columns.

The failing servers run in a process of their own (they must not take the GIL from the
application). Reported per scenario: the resident set size after the warm-up (10 s) and at
the end, its peak, the spool directory's size, the request threads' span latency (start and
end of one span, every 50th span timed: median, 99th percentile, maximum), spans made vs.
accepted, and the drop counters of ``pt.stats()``. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCENARIOS = [
    "analytics/ok",
    "analytics/refused",
    "analytics/hung",
    "analytics/503",
    "analytics/slow",
    "analytics+spool/refused",
    "analytics+spool/hung",
    "analytics+spool/slow",
    "otlp_http/ok",
    "otlp_http/refused",
    "otlp_http/hung",
    "otlp_http/503",
    "otlp_http/slow",
    "otlp_grpc/ok",
    "otlp_grpc/refused",
    "otlp_grpc/hung",
    "otlp_grpc/503",
    "otlp_grpc/slow",
    "logpush/ok",
    "logpush/refused",
    "logpush/hung",
    "logpush/503",
    "logpush/slow",
    "local_archive/ok",
    "local_archive/full",
    "local_archive/readonly",
    "local_archive+spool/full",
]

WARMUP_S = 10.0


# -- the failing servers (own process) ---------------------------------------------------------
def _read_request(conn: socket.socket) -> bool:
    """Read one HTTP request (headers and Content-Length body); False at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return True


def _tcp_server(handle: Any) -> int:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return int(srv.getsockname()[1])


def _hang(conn: socket.socket) -> None:
    held.append(conn)  # open, read by nobody: the client's request waits forever


def _slow(conn: socket.socket) -> None:
    try:
        while _read_request(conn):
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            for i in range(len(answer)):
                conn.sendall(answer[i : i + 1])
                time.sleep(1.0)
    except OSError:
        pass
    finally:
        conn.close()


held: list[socket.socket] = []


class _Status(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 200
    # It writes the status and headers, then the body: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK of the headers (40 ms a request, about 20 requests/s
    # on one connection): the "ok" rows measured that stall, not a healthy endpoint.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"{}" if self.status == 200 else b"<Error><Code>SlowDown</Code></Error>"
        self.send_response(self.status)
        if self.status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = _answer


class _Status503(_Status):
    status = 503


def _http_server(handler: type[BaseHTTPRequestHandler]) -> int:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return int(srv.server_address[1])


def _grpc_server(mode: str) -> int:
    from concurrent import futures

    import grpc

    def export(request: bytes, context: Any) -> bytes:
        if mode == "503":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down for maintenance")
        if mode == "slow":
            time.sleep(3600)
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servers.append(server)
    return int(port)


servers: list[Any] = []


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # (nothing listens there any more)
    return port


def serve() -> None:
    """Start every failing server; print their ports (JSON) and wait for stdin to close."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (moto's request log)

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    ports = {
        "ok": _http_server(_Status),
        "503": _http_server(_Status503),
        "hung": _tcp_server(_hang),
        "slow": _tcp_server(_slow),
        "refused": _refused_port(),
        "moto": moto.get_host_and_port()[1],
        "grpc_ok": _grpc_server("ok"),
        "grpc_503": _grpc_server("503"),
        "grpc_slow": _grpc_server("slow"),
    }
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
    os._exit(0)  # (grpc's and moto's threads would keep the process alive)


# -- the application (own process per scenario) ------------------------------------------------
def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dir_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def make_exporter(
    scenario: str, ports: dict[str, int], scratch: Path, mounts: list[Path]
) -> tuple[Any, Path | None]:
    """The scenario's exporter and its spool (or archive) directory; adds mounts to undo to
    ``mounts`` (before anything can fail)."""
    from pitchey_trace.exporters import (
        HttpAnalyticsExporter,
        LocalArchiveExporter,
        LogpushExporter,
        OTLPExporter,
    )

    kind, mode = scenario.split("/")
    base = kind.split("+")[0]
    spool = scratch / "spool" if kind.endswith("+spool") else None
    if base in ("analytics", "otlp_http"):
        url = f"http://127.0.0.1:{ports[mode]}"
        if base == "analytics":
            return HttpAnalyticsExporter(url + "/ingest", spool_dir=spool), spool
        return OTLPExporter(url + "/v1/traces", protocol="http/protobuf", spool_dir=spool), spool
    if base == "otlp_grpc":
        port = ports[{"503": "grpc_503", "slow": "grpc_slow", "ok": "grpc_ok"}.get(mode, mode)]
        return OTLPExporter(f"http://127.0.0.1:{port}", protocol="grpc", spool_dir=spool), spool
    if base == "logpush":
        import boto3

        port = ports["moto" if mode == "ok" else mode]
        url = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{ports['moto']}", region_name="us-east-1"
        ).create_bucket(Bucket="outage")
        # (its spool is on by default, in the system's temporary folder: here, ours)
        spool = scratch / "spool"
        exp = LogpushExporter("outage", endpoint_url=url, region="us-east-1", spool_dir=spool)
        return exp, spool
    # local archive
    root = scratch / "archive"
    if mode == "full":
        mounts.append(root)
        if not _mount(root, "size=2m"):
            raise SystemExit("cannot mount a tmpfs (needs root)")
        if spool is not None:
            spool = root / "spool"
    elif mode == "readonly":
        mounts.append(root)
        if not _mount(root, "ro,size=1m"):
            raise SystemExit("cannot mount a tmpfs (needs root)")
    exp = LocalArchiveExporter(root, spool_dir=spool)
    return exp, (spool or root)


def run_child(scenario: str, seconds: float, rate: int, ports: dict[str, int]) -> dict[str, Any]:
    import pitchey_trace as pt

    scratch = Path(tempfile.mkdtemp(prefix="outage-"))
    mounts: list[Path] = []
    try:
        try:
            exporter, watched = make_exporter(scenario, ports, scratch, mounts)
        except Exception as exc:  # (a read-only archive root: the exporter refuses at once)
            return {"scenario": scenario, "error": f"{type(exc).__name__}: {exc}"}
        pt.configure(service="outage", exporters=[exporter])
        from pitchey_trace.web import export_logs

        export_logs(logging.INFO)
        app_log = logging.getLogger("outage.app")
        app_log.setLevel(logging.INFO)
        app_log.propagate = False
        stop = threading.Event()
        made = [0, 0, 0, 0]  # spans of producer 0 and 1, log records, audit spans
        samples: list[list[int]] = [[], []]

        def produce(k: int) -> None:
            per_tick = max(1, rate // 2 // 1000)  # a tick is a millisecond
            timed = samples[k]
            clock = time.perf_counter_ns
            n = 0
            next_tick = time.perf_counter()
            while not stop.is_set():
                for _ in range(per_tick):
                    if n % 50 == 0:
                        t0 = clock()
                        with pt.span("work", attributes={"n": n}):
                            pass
                        timed.append(clock() - t0)
                    else:
                        with pt.span("work", attributes={"n": n}):
                            pass
                    n += 1
                made[k] = n
                next_tick += 0.001
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

        def logs() -> None:
            n = 0
            while not stop.wait(0.002):  # ~500 log records/s
                app_log.info("handled request %d", n)
                n += 1
                made[2] = n

        def audits() -> None:
            n = 0
            while not stop.wait(0.002):  # ~500 requests/s, one audit record each
                with pt.span("GET /pitch", kind=pt.SpanKind.SERVER):
                    pt.emit_audit("read", "pitch", "success", actor="u1")
                n += 1
                made[3] = n

        rss: list[tuple[float, int]] = []
        spool_max = 0
        threads = [threading.Thread(target=produce, args=(k,)) for k in (0, 1)]
        threads += [threading.Thread(target=logs), threading.Thread(target=audits)]
        start = time.monotonic()
        for t in threads:
            t.start()
        while (now := time.monotonic()) - start < seconds:
            rss.append((now - start, rss_kib()))
            spool_max = max(spool_max, dir_bytes(watched))
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        during = pt.stats()
        t0 = time.monotonic()
        pt.shutdown(timeout=5.0)
        shutdown_s = time.monotonic() - t0
        after = pt.stats()
        timed = sorted(samples[0] + samples[1])

        def pct(p: float) -> float:
            return timed[min(len(timed) - 1, int(p * len(timed)))] / 1000.0 if timed else 0.0

        warm = [kib for t, kib in rss if t >= WARMUP_S] or [kib for _, kib in rss]
        return {
            "scenario": scenario,
            "spans_made": made[0] + made[1] + made[3],  # (+ one audit record per request span)
            "audits_made": made[3],
            "logs_made": made[2],
            "rate": round((made[0] + made[1]) / seconds),
            "rss_warm_mib": round(warm[0] / 1024, 1),
            "rss_end_mib": round(rss[-1][1] / 1024, 1),
            # (at two thirds of the run: a flat end third says the growth stopped)
            "rss_2_3_mib": round(rss[len(rss) * 2 // 3][1] / 1024, 1),
            "rss_peak_mib": round(max(k for _, k in rss) / 1024, 1),
            "spool_peak_mib": round(spool_max / 2**20, 2),
            "p50_us": round(pct(0.5), 1),
            "p99_us": round(pct(0.99), 1),
            "max_us": round(pct(1.0), 1),
            "shutdown_s": round(shutdown_s, 2),
            "stats_during": during,
            "stats_after": after,
        }
    finally:
        for m in mounts:
            _umount(m)
        shutil.rmtree(scratch, ignore_errors=True)


def _drops(stats: dict[str, Any]) -> str:
    keys = sorted(k for k in stats if k.startswith("dropped.") and k.count(".") == 1 and stats[k])
    return ", ".join(f"{k[8:]}={stats[k]}" for k in keys) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=20_000, help="spans/s from the two producer threads")
    parser.add_argument(
        "--only", default="", help="run the scenarios whose name contains one of these (comma-separated)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if args.child:
        print(json.dumps(run_child(args.child, args.seconds, args.rate, json.loads(args.ports))))
        return 0
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent/outage-bench",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/outage-bench",
        }
    )
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    assert server.stdin is not None
    ports = server.stdout.readline().strip()
    results = []
    print(
        "| scenario | spans/s | RSS warm / at 2/3 / end / peak (MiB) | spool peak (MiB) "
        "| span p50 / p99 / max (us) | accepted / made | dropped (by reason) | shutdown (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    try:
        for scenario in SCENARIOS:
            if not any(part in scenario for part in args.only.split(",")):
                continue
            cmd = [sys.executable, __file__, "--child", scenario, "--seconds", str(args.seconds)]
            cmd += ["--rate", str(args.rate), "--ports", ports]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 120)
            try:
                r = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print(f"| {scenario} | failed: {done.stderr.strip()[-300:]!r} |||||||", flush=True)
                continue
            results.append(r)
            if "error" in r:
                print(f"| {scenario} | exporter refused: {r['error']} |||||||", flush=True)
                continue
            after = r["stats_after"]
            made = r["spans_made"] + r["audits_made"] + r["logs_made"]
            print(
                f"| {scenario} | {r['rate']} "
                f"| {r['rss_warm_mib']} / {r['rss_2_3_mib']} / {r['rss_end_mib']} / {r['rss_peak_mib']} "
                f"| {r['spool_peak_mib']} | {r['p50_us']} / {r['p99_us']} / {r['max_us']} "
                f"| {after.get('accepted', 0)} / {made} | {_drops(after)} "
                f"| {r['shutdown_s']} |",
                flush=True,
            )
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
