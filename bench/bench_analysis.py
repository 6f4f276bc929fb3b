"""The analysis engine over a synthetic archive: load rate against the parse floor, query times.

    .venv/bin/python bench/bench_analysis.py                  # 20,000 traces x 10 spans
    .venv/bin/python bench/bench_analysis.py --traces 50000

The archive is written in the exporters' layout (gzip NDJSON, 5,000 records per object) into a
temporary directory. "floor" is the least any reader of it must do: gunzip every object and
parse every line (orjson when installed), keeping the records. The engine's first query also
indexes what it reads; its ratio to the floor is the engine's own reading cost. Then each kind
of query runs on the loaded archive (median of --repeat runs). Memory is the process's peak
RSS growth while the engine loads (before the floor runs), per span.
"""

from __future__ import annotations

import argparse
import gzip
import random
import resource
import statistics
import sys
import tempfile
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
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
