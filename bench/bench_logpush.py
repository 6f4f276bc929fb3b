"""Logpush encoding throughput beside the NDJSON + gzip floor, same process, same records.

    .venv/bin/python bench/bench_logpush.py            # ~1 minute
    .venv/bin/python bench/bench_logpush.py --quick    # fewer rounds

Input: 10,000 schema-v1 span records (~530 bytes of JSON each: 6 attributes, 1 event, a small
resource), built once, not timed. One op = one record; the sanitizer is not involved.
Cases (us per record):
  floor_json_gzip6     stdlib json (compact) per record, joined, gzip level 6 - one batch
  floor_orjson_gzip6   orjson per record, joined, gzip level 6 - one batch
  pt_encoder           what LogpushExporter does per batch: encode_line() per record
                       + gzip_ndjson() at the same level
  pt_export_spool      the whole exporter path: export() appends to the spool file on disk,
                       the batch closes, the uploader thread reads it back, gzips and hands it
                       to a no-op store, the file is deleted (flush waits for all of it)
  pt_export_memory     the same without a spool directory
Target (issue 6): pt_encoder >= 70% of the faster floor's records/s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
from _harness import measure

from pitchey_trace.exporters._archive import ArchiveExporter, encode_line, gzip_ndjson
from pitchey_trace.exporters._http import RetryPolicy

BATCH = 10_000
LEVEL = 6
NAMES = [
    "GET /api/pitches",
    "GET /api/pitches/{id}",
    "POST /api/pitches",
    "GET /api/users/{id}",
    "POST /api/auth/login",
    "GET /api/feed",
    "SELECT pitches",
    "INSERT pitches",
    "UPDATE users",
    "redis GET",
    "s3 PutObject",
    "render template",
]


def make_records(n: int = BATCH, seed: int = 6) -> list[dict[str, Any]]:
    """Realistic span records: traces of 5 spans, log-normal durations, ~3% errors."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    t0 = 1_800_000_000_000_000_000
    trace_id, parent = "", None
    for i in range(n):
        if i % 5 == 0:
            trace_id, parent = f"{rnd.getrandbits(128):032x}", None
        span_id = f"{rnd.getrandbits(64):016x}"
        start = t0 + i * 1_000_000 + rnd.randrange(1_000_000)
        dur = int(rnd.lognormvariate(13.0, 1.2))
        name = rnd.choice(NAMES)
        err = rnd.random() < 0.03
        method, _, route = name.partition(" ")
        out.append(
            {
                "schema": 1,
                "type": "span",
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": parent,
                "name": name,
                "kind": "server" if parent is None else "client",
                "service": "pitch-api",
                "environment": "production",
                "start_time_unix_nano": start,
                "end_time_unix_nano": start + dur,
                "duration_ms": round(dur / 1e6, 6),
                "status": "error" if err else "unset",
                "status_message": "timeout" if err else None,
                "category": "fast",
                "attributes": {
                    "http.request.method": method,
                    "http.route": route,
                    "http.response.status_code": 500 if err else rnd.choice((200, 200, 201, 304, 404)),
                    "user.id": f"u-{rnd.randrange(100_000)}",
                    "db.system.name": "postgresql",
                    "server.address": f"db-{rnd.randrange(4)}.internal",
                },
                "events": [
                    {
                        "name": "cache.miss",
                        "time_unix_nano": start + rnd.randrange(max(1, dur)),
                        "attributes": {"cache.key": f"pitch:{rnd.randrange(1_000_000)}"},
                    }
                ],
                "links": [],
                "resource": {"service.name": "pitch-api", "host.name": "web-1"},
            }
        )
        parent = span_id
    return out


class NullStore:
    def put(self, dataset: str, key: str, body: bytes) -> None:
        pass

    def reset(self) -> None:
        pass


def exporter(spool: str | None) -> ArchiveExporter:
    return ArchiveExporter(
        NullStore(),
        name="bench",
        datasets=None,
        prefixes=None,
        max_batch_bytes=1 << 40,
        max_batch_records=1 << 40,
        max_interval_s=3600.0,
        compresslevel=LEVEL,
        spool_dir=spool,
        spool_max_bytes=1 << 40,
        fsync_interval_s=3600.0,
        router=None,
        retry=RetryPolicy(),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    args = ap.parse_args()
    recs = make_records()
    json_enc = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    dumps = orjson.dumps

    def floor_json(n: int) -> None:
        for _ in range(n // BATCH):
            gzip.compress(("\n".join(map(json_enc, recs)) + "\n").encode(), LEVEL)

    def floor_orjson(n: int) -> None:
        for _ in range(n // BATCH):
            gzip.compress(b"\n".join(map(dumps, recs)) + b"\n", LEVEL)

    def pt_encoder(n: int) -> None:
        for _ in range(n // BATCH):
            gzip_ndjson([encode_line(r) for r in recs], LEVEL)

    spool_dir = tempfile.mkdtemp(prefix="pt-bench-spool-")
    spooled, in_memory = exporter(spool_dir), exporter(None)

    def via(exp: ArchiveExporter) -> Any:
        def run(n: int) -> None:
            for _ in range(n // BATCH):
                for i in range(0, BATCH, 512):  # the pipeline hands batches of 512 records
                    exp.export(recs[i : i + 512])
                if not exp.force_flush(60):
                    raise RuntimeError("flush did not complete")

        return run

    # one op = one record: the harness calibrates n, each call handles n // BATCH batches
    cases = {
        "floor_json_gzip6": floor_json,
        "floor_orjson_gzip6": floor_orjson,
        "pt_encoder": pt_encoder,
        "pt_export_spool": via(spooled),
        "pt_export_memory": via(in_memory),
    }

    def per_batch_runner(f: Any) -> Any:
        return lambda n: f(max(1, n) * BATCH)

    scaled = {k: per_batch_runner(f) for k, f in cases.items()}
    per_batch = measure(scaled, rounds=3 if args.quick else 5, repeats=2, min_time=0.3)
    us = {k: v / BATCH for k, v in per_batch.items()}  # per record
    spooled.shutdown(5)
    in_memory.shutdown(5)

    raw = len(b"".join(encode_line(r) for r in recs))
    comp = len(gzip_ndjson([encode_line(r) for r in recs], LEVEL))
    floor = min(us["floor_json_gzip6"], us["floor_orjson_gzip6"])
    print(f"\n== logpush encoding, gzip level {LEVEL}, CPython {sys.version.split()[0]} ==")
    print(f"  records: {BATCH}, {raw / BATCH:.0f} bytes raw, {comp / BATCH:.1f} bytes gzipped per record")
    for name, v in us.items():
        print(f"  {name:<22} {v:7.2f} us/record  {1e6 / v:10,.0f} records/s")
    for name in ("pt_encoder", "pt_export_spool", "pt_export_memory"):
        print(f"  {name} / floor (records/s): {floor / us[name]:.2f}  (target >= 0.70 for pt_encoder)")


if __name__ == "__main__":
    main()
