"""The analysis engine over a synthetic archive: load rate against the parse floor, query times.

    .venv/bin/python bench/bench_analysis.py                  # 20,000 traces x 10 spans
    .venv/bin/python bench/bench_analysis.py --traces 50000
    .venv/bin/python bench/bench_analysis.py --s3 500      # reading 500 objects from S3 (moto)
    .venv/bin/python bench/bench_analysis.py --s3 500 --s3-latency-ms 40

The archive is written in the exporters' layout (gzip NDJSON, 5,000 records per object) into a
temporary directory. "floor" is the least any reader of it must do: gunzip every object and
parse every line (orjson when installed), keeping the records. The engine's first query also
indexes what it reads; its ratio to the floor is the engine's own reading cost. Then each kind
of query runs on the loaded archive (median of --repeat runs). Memory is the process's peak
RSS growth while the engine loads (before the floor runs), per span.

``--s3 N`` instead times reading N small objects (10 spans each) from moto's S3 server (run
as its own process on 127.0.0.1, needs the ``s3`` extra and moto) with ``S3Source``'s
``concurrency`` 1 (one GET at a time) and the default. Moto answers in a few ms of CPU on the
same machine; ``--s3-latency-ms`` adds that long a wait to each GET (botocore's
``before-send`` event), about what a GET from a real S3 or R2 bucket takes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pitchey_trace import _json
from pitchey_trace.analysis import Archive

NAMES = ["SELECT pitches", "SELECT users", "render", "load_pitch", "UPDATE pitches"]
T0 = 1_796_000_000_000_000_000


def write_archive(root: Path, traces: int, seed: int = 1) -> int:
    """``traces`` traces of 10 spans (a server root and 9 children) in 5,000-record objects."""
    rng = random.Random(seed)
    day = root / "traces" / "20261130"
    day.mkdir(parents=True)
    resource_ = {"service.name": "pitch-api", "host.name": "bench", "telemetry.sdk.name": "pitchey-trace"}
    lines: list[bytes] = []
    objects = 0

    def flush() -> None:
        nonlocal objects, lines
        if lines:
            opened = f"20261130T{objects // 60 % 24:02d}{objects % 60:02d}00Z"
            name = f"{opened}_20261130T235959Z_{objects:08x}.log.gz"
            (day / name).write_bytes(gzip.compress(b"".join(lines), 6))
            objects += 1
            lines = []

    for t in range(traces):
        tid = f"{rng.getrandbits(128):032x}"
        start = T0 + t * 10_000_000
        root_id = f"{rng.getrandbits(64):016x}"
        spans: list[tuple[str, str | None, str, int, int]] = [
            (root_id, None, "GET /pitches/{id}", start, start + rng.randint(5, 300) * 1_000_000)
        ]
        for i in range(9):
            s = start + (i + 1) * 200_000
            spans.append(
                (f"{rng.getrandbits(64):016x}", root_id, NAMES[i % 5], s, s + rng.randint(1, 40) * 100_000)
            )
        for sid, parent, name, s, e in spans:
            attrs: dict[str, Any] = (
                {"db.system.name": "postgresql", "db.query.text": f"{name} WHERE id = $1"}
                if parent
                else {"http.request.method": "GET", "http.response.status_code": 200}
            )
            rec = {
                "schema": 1,
                "type": "span",
                "trace_id": tid,
                "span_id": sid,
                "parent_span_id": parent,
                "name": name,
                "kind": "client" if parent else "server",
                "service": "pitch-api",
                "environment": "bench",
                "start_time_unix_nano": s,
                "end_time_unix_nano": e,
                "duration_ms": (e - s) / 1e6,
                "status": "error" if rng.random() < 0.01 else "unset",
                "status_message": None,
                "category": "fast",
                "attributes": attrs,
                "events": [],
                "links": [],
                "resource": resource_,
            }
            lines.append(_json.dumps(rec) + b"\n")
        if len(lines) >= 5000:
            flush()
    flush()
    return objects


def floor(root: Path) -> tuple[float, int]:
    t = time.perf_counter()
    kept: list[Any] = []
    for path in sorted(root.rglob("*.log.gz")):
        kept.extend(_json.loads(line) for line in gzip.decompress(path.read_bytes()).split(b"\n") if line)
    return time.perf_counter() - t, len(kept)


def median_s(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_s3(objects: int, latency_ms: float, repeat: int) -> None:
    """Time reading ``objects`` objects from moto's S3 server, one GET at a time and concurrently."""
    import boto3

    from pitchey_trace.analysis import S3Source
    from pitchey_trace.analysis._reader import S3_CONCURRENCY
    from pitchey_trace.logpush_config import make_s3_client

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, bucket = f"http://127.0.0.1:{port}", "pt-bench-analysis"
    try:
        writer = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        deadline = time.monotonic() + 30
        while True:
            try:
                writer.create_bucket(Bucket=bucket)
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)

        def put(i: int) -> None:
            t = T0 // 10**9 + i * 60
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
            lines = [
                _json.dumps(
                    {
                        "type": "span",
                        "trace_id": f"{i * 10 + j + 1:032x}",
                        "span_id": f"{i * 10 + j + 1:016x}",
                        "parent_span_id": None,
                        "name": "GET /pitches",
                        "kind": "server",
                        "service": "pitch-api",
                        "start_time_unix_nano": t * 10**9 + j,
                        "end_time_unix_nano": t * 10**9 + j + 2_000_000,
                        "status": "ok",
                        "attributes": {},
                        "events": [],
                        "links": [],
                        "resource": {"service.name": "pitch-api"},
                    }
                )
                + b"\n"
                for j in range(10)
            ]
            key = f"traces/{stamp[:8]}/{stamp}_{stamp}_{i:08x}.log.gz"
            writer.put_object(Bucket=bucket, Key=key, Body=gzip.compress(b"".join(lines)))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(objects)))

        def read(concurrency: int) -> float:
            client = make_s3_client(endpoint_url=url, region="us-east-1", max_attempts=3)
            if latency_ms:
                client.meta.events.register(
                    "before-send.s3.GetObject", lambda **_: time.sleep(latency_ms / 1000)
                )
            archive = Archive(S3Source(bucket, datasets=["traces"], client=client, concurrency=concurrency))
            t = time.perf_counter()
            assert archive.overview()["spans"] == objects * 10
            return time.perf_counter() - t

        extra = f", {latency_ms:g} ms added to each GET" if latency_ms else ""
        print(f"S3 (moto{extra}): {objects} objects, {objects * 10:,} spans; median of {repeat}")
        for concurrency in (1, S3_CONCURRENCY):
            times = [read(concurrency) for _ in range(repeat)]
            med = statistics.median(times)
            print(
                f"  concurrency {concurrency:<2}  {med:6.2f} s  {med / objects * 1000:6.2f} ms/object"
                f"  (min {min(times):.2f} s)"
            )
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--s3", type=int, metavar="N", help="time reading N objects from S3 (moto) instead")
    ap.add_argument("--s3-latency-ms", type=float, default=0.0, help="with --s3: wait added to each GET")
    args = ap.parse_args()
    if args.s3:
        bench_s3(args.s3, args.s3_latency_ms, min(args.repeat, 3))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        objects = write_archive(root, args.traces)
        spans = args.traces * 10
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before anything is parsed
        archive = Archive(root)
        t = time.perf_counter()
        ov = archive.overview()
        load_s = time.perf_counter() - t
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert ov["spans"] == spans
        floor_s, n = floor(root)
        assert n == spans
        slow = archive.search(sort="duration", limit=1)[0]["trace_id"]
        queries = {
            "search min_duration_ms=250": lambda: archive.search(min_duration_ms=250, limit=20),
            "search attributes + name glob": lambda: archive.search(
                name="SELECT *", attributes={"db.system.name": "postgresql"}, limit=20
            ),
            "trace + analyze (10 spans)": lambda: (archive.trace(slow), archive.analyze(slow)),
            "performance (from spans)": archive.performance,
            "errors": archive.errors,
            "overview": archive.overview,
        }
        print(f"archive: {args.traces:,} traces, {spans:,} spans in {objects} objects")
        print(f"floor (gunzip + parse, kept): {floor_s:6.2f} s  {spans / floor_s:10,.0f} spans/s")
        print(f"engine first query (read + index): {load_s:6.2f} s  {spans / load_s:10,.0f} spans/s")
        print(f"ratio engine/floor: {load_s / floor_s:.2f}")
        print(f"memory: {(rss1 - rss0) * 1024 / spans:,.0f} bytes per span (peak RSS growth while loading)")
        for label, fn in queries.items():
            print(f"  {label:<32} {median_s(fn, args.repeat) * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
