"""Soak: the whole pipeline under steady load with a flapping OTLP endpoint; memory, threads,
file descriptors and queues must stay bounded, and every record must be accounted for.

    .venv/bin/python bench/soak.py --seconds 300            # ~5k spans/s, endpoint up 10 s / down 10 s
    .venv/bin/python bench/soak.py --seconds 60 --rate 2000 --flap 5

One pipeline with the defaults (head sampler at ``--sample-rate``, tail keeping, sanitizer,
rollups) feeds four exporters: a counting exporter (every dataset), a ``LocalArchiveExporter``
in a temporary directory, an ``OTLPExporter`` (OTLP/HTTP JSON, with a ``spool_dir``) and an
``HttpAnalyticsExporter`` (no spool), both pointed at a collector in a child process that is
killed and restarted on the same port every ``--flap`` seconds (down: connection refused).
Two threads make nested spans (1 in 100 requests fails, 1 in 500 has a slow span), an audit
record and, every 20th request, a shipped WARNING log record.

Every second it samples the resident set size, the thread count, the open file descriptors,
the main queue, each exporter's queue and the OTLP spool's size, and prints them as a table
with the drop counters. At the end (endpoint up again, spool drained, shutdown) it prints the
non-zero ``pt.stats()`` and checks: (1) the last third of the samples is no higher than the
middle third (RSS within 10% + 16 MiB, threads within 2, fds within 8, spool within 10% +
1 MiB), and (2) accounting: the counting exporter got ``exported.count`` records; the archive
holds ``exported.local_archive`` records; for OTLP and HTTP analytics, ``exported.<name>`` plus
their ``dropped.*.<name>`` counters equal what they were handed (their datasets' records), and
the collector received at least ``exported.otlp`` spans (delivery from the spool is at least
once) and exactly ``exported.http_analytics`` points. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import gzip
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
from pathlib import Path
from typing import Any

import pitchey_trace as pt
from pitchey_trace import _tracer
from pitchey_trace.exporters import HttpAnalyticsExporter, LocalArchiveExporter, OTLPExporter, RetryPolicy
from pitchey_trace.web.logs import export_logs

# The collector appends one line per delivered request to a file ("path items"), so its
# counts survive being killed.
COLLECTOR = r"""
import gzip, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out = open(sys.argv[2], "a", buffering=1)

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        doc = json.loads(data)
        if self.path.startswith("/v1/traces"):
            n = sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])
        else:
            n = len(doc["points"])
        out.write(f"{self.path} {n}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

ThreadingHTTPServer.allow_reuse_address = True
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
srv.daemon_threads = True
print("up", flush=True)
srv.serve_forever()
"""


class Count:
    """Counts the records it receives, by type."""

    name = "count"

    def __init__(self) -> None:
        self.by_type: dict[str, int] = {}
        self.lock = threading.Lock()

    def export(self, batch: Any) -> bool:
        with self.lock:
            for r in batch:
                t = r.get("type", "?")
                self.by_type[t] = self.by_type.get(t, 0) + 1
        return True


class Collector:
    """The flapping endpoint: a child process started and killed on one port."""

    def __init__(self, log: Path) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", COLLECTOR, str(self.port), str(self.log)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.proc.stdout is not None
            self.proc.stdout.readline()

    def down(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def received(self) -> dict[str, int]:
        got: dict[str, int] = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                path, n = line.rsplit(" ", 1)
                got[path] = got.get(path, 0) + int(n)
        return got


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def archived(root: Path) -> int:
    n = 0
    for p in root.rglob("*.log.gz"):
        n += sum(1 for line in gzip.decompress(p.read_bytes()).splitlines() if line)
    return n


def load(stop: threading.Event, rate: float, made: list[int]) -> None:
    """Requests of 3 spans at ``rate`` spans/s (this thread's share), paced per 10 ms."""
    log = logging.getLogger("soak")
    per_tick = max(1, round(rate / 3 / 100))
    i = 0
    next_tick = time.monotonic()
    while not stop.is_set():
        for _ in range(per_tick):
            i += 1
            try:
                with pt.span("request", attributes={"i": i, "user.email": "someone@example.com"}):
                    with pt.span("db.query", attributes={"db.query.text": "SELECT * FROM t WHERE id = 42"}):
                        pass
                    with pt.span("render"):
                        if i % 500 == 0:
                            time.sleep(0.06)  # a slow trace, kept by the tail keeper
                    pt.emit_audit("read", f"pitch/{i % 1000}", "success", actor="user-1")
                    if i % 20 == 0:
                        log.warning("request %d was odd", i)
                    if i % 100 == 0:
                        raise ValueError("boom")
            except ValueError:
                pass
            made[0] += 3
        next_tick += 0.01
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.monotonic()  # behind: do not try to catch up in a burst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="spans per second, all threads")
    ap.add_argument("--flap", type=float, default=10.0, help="seconds up, then seconds down")
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pt-soak-"))
    collector = Collector(tmp / "received.txt")
    collector.up()
    count = Count()
    fast = RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=2.0, max_elapsed_s=5.0)
    otlp_spool = tmp / "otlp-spool"
    exporters = [
        count,
        LocalArchiveExporter(tmp / "archive", fsync=False),
        OTLPExporter(
            f"{collector.url}/v1/traces", protocol="http/json", retry=fast, timeout_s=5, spool_dir=otlp_spool
        ),
        HttpAnalyticsExporter(
            f"{collector.url}/points", retry=fast, timeout_s=5, max_points_per_request=1000
        ),
    ]
    logging.getLogger("pitchey_trace").setLevel(logging.ERROR)  # (the outage warnings, once a minute)
    logging.getLogger("soak").propagate = False
    logging.getLogger("soak").addHandler(logging.NullHandler())  # (shipped, not printed)
    pt.configure(service="soak", sample_rate=args.sample_rate, slow_threshold_ms=50, exporters=exporters)
    export_logs(logging.WARNING)
    pipeline = _tracer._TRACER.pipeline
    assert pipeline is not None

    stop = threading.Event()
    made = [[0] for _ in range(args.threads)]
    producers = [
        threading.Thread(target=load, args=(stop, args.rate / args.threads, m), daemon=True) for m in made
    ]
    started = time.monotonic()
    for t in producers:
        t.start()

    samples: list[dict[str, float]] = []
    header = (
        f"{'t':>5} {'up':>3} {'rss MiB':>8} {'thr':>4} {'fds':>4} {'queue':>6} "
        + " ".join(f"{w.name[:10]:>10}" for w in pipeline.workers)
        + f" {'spool KiB':>9} {'spans/s':>8} {'drops':>7}"
    )
    print(header)
    last_made = 0
    while (elapsed := time.monotonic() - started) < args.seconds:
        time.sleep(1.0)
        is_up = int(elapsed // args.flap) % 2 == 0
        (collector.up if is_up else collector.down)()
        st = pt.stats()
        total = sum(m[0] for m in made)
        s = {
            "t": elapsed,
            "up": float(is_up),
            "rss": rss_mib(),
            "threads": float(len(os.listdir("/proc/self/task"))),
            "fds": float(len(os.listdir("/proc/self/fd"))),
            "queue": float(len(pipeline.queue)),
            "spool": float(dir_bytes(otlp_spool)),
            "rate": float(total - last_made),
            "drops": float(sum(v for k, v in st.items() if k.startswith("dropped.") and k.count(".") == 1)),
        }
        last_made = total
        for w in pipeline.workers:
            s[f"q.{w.name}"] = float(w._pending)
        samples.append(s)
        print(
            f"{s['t']:5.0f} {int(s['up']):3d} {s['rss']:8.1f} {int(s['threads']):4d} {int(s['fds']):4d} "
            f"{int(s['queue']):6d} "
            + " ".join(f"{int(s[f'q.{w.name}']):10d}" for w in pipeline.workers)
            + f" {s['spool'] / 1024:9.0f} {int(s['rate']):8d} {int(s['drops']):7d}",
            flush=True,
        )
    stop.set()
    for t in producers:
        t.join()

    # Endpoint up, spool drained, then shut down.
    collector.up()
    drained = False
    for _ in range(12):
        if pt.force_flush(10):
            drained = True
            break
    ok_shutdown = pt.shutdown(30)
    time.sleep(0.5)  # (the collector's last lines)
    st = pt.stats()
    received = collector.received()
    collector.down()
    print("\nstats:", json.dumps({k: v for k, v in sorted(st.items()) if v}, indent=1))
    spans_made = sum(m[0] for m in made)
    print(
        f"spans made {spans_made:,}; flush drained: {drained}; shutdown: {ok_shutdown}; received {received}"
    )

    failures: list[str] = []
    n = len(samples)
    mid, last = samples[n // 3 : 2 * n // 3], samples[2 * n // 3 :]
    if mid and last:

        def peak(rows: list[dict[str, float]], key: str) -> float:
            return max(r[key] for r in rows)

        for key, ratio, slack in (
            ("rss", 1.10, 16.0),
            ("threads", 1.0, 2.0),
            ("fds", 1.0, 8.0),
            ("spool", 1.10, 2**20),
        ):
            a, b = peak(mid, key), peak(last, key)
            print(f"{key}: middle third peak {a:,.1f}, last third peak {b:,.1f}")
            if b > a * ratio + slack:
                failures.append(f"{key} grew: {a:,.1f} -> {b:,.1f}")

    def dropped(name: str) -> int:
        return sum(v for k, v in st.items() if k.startswith("dropped.") and k.endswith(f".{name}"))

    handed_all = sum(count.by_type.values()) + dropped("count")
    spans = count.by_type.get("span", 0)
    checks = [
        ("count: received == exported.count", sum(count.by_type.values()), st.get("exported.count", 0)),
        (
            "archive: on disk == exported.local_archive",
            archived(tmp / "archive"),
            st.get("exported.local_archive", 0),
        ),
        (
            "archive: exported + dropped == handed",
            st.get("exported.local_archive", 0) + dropped("local_archive"),
            handed_all,
        ),
        (
            "otlp: exported + dropped == handed (spans)",
            st.get("exported.otlp", 0) + dropped("otlp"),
            spans + dropped("count"),
        ),
        (
            "http_analytics: exported + dropped == handed",
            st.get("exported.http_analytics", 0) + dropped("http_analytics"),
            handed_all,
        ),
        (
            "http_analytics: received == exported",
            received.get("/points", 0),
            st.get("exported.http_analytics", 0),
        ),
    ]
    for what, a, b in checks:
        print(f"{'ok ' if a == b else 'BAD'} {what}: {a:,} vs {b:,}")
        if a != b:
            failures.append(what)
    got_spans = received.get("/v1/traces", 0)
    print(f"otlp: collector received {got_spans:,} spans, exported.otlp {st.get('exported.otlp', 0):,}")
    if got_spans < st.get("exported.otlp", 0) - st.get("dropped.spool_cap", 0):
        failures.append("otlp: fewer spans received than exported (and not counted in dropped.spool_cap)")
    shutil.rmtree(tmp, ignore_errors=True)
    print("OK" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
