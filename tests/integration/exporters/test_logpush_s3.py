"""LogpushExporter against moto's S3 server over real HTTP: layout, batch limits, datasets,
storage outages, SIGKILL recovery from the spool, the spool cap, the full pipeline."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.processors import Rollups, merge_rollups
from pitchey_trace.records import json_schema
from tests.integration.exporters.servers import S3, S3_ENV, FaultProxy

pytestmark = pytest.mark.integration

KEY = re.compile(
    r"^(?P<prefix>[a-z/]+)/(?P<date>\d{8})/(?P<start>\d{8}T\d{6}Z)_(?P<end>\d{8}T\d{6}Z)_[0-9a-f]{16}\.log\.gz$"
)
FAST_RETRY = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.2)


def span_rec(seq: int, name: str = "op") -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "span",
        "trace_id": f"{seq + 1:032x}",
        "span_id": f"{seq + 1:016x}",
        "parent_span_id": None,
        "name": name,
        "kind": "internal",
        "service": "svc",
        "environment": "test",
        "start_time_unix_nano": 1_800_000_000_000_000_000 + seq,
        "end_time_unix_nano": 1_800_000_000_000_000_100 + seq,
        "duration_ms": 0.0001,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": {"seq": seq},
        "events": [],
        "links": [],
        "resource": {"service.name": "svc"},
    }


def audit_rec(seq: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "audit",
        "category": "security",
        "time_unix_nano": 1_800_000_000_000_000_000,
        "trace_id": None,
        "span_id": None,
        "service": "svc",
        "environment": "test",
        "actor": "u1",
        "action": "login",
        "target": "session",
        "outcome": "denied",
        "attributes": {"seq": seq},
    }


def seqs(records: list[dict[str, Any]]) -> collections.Counter[int]:
    return collections.Counter(r["attributes"]["seq"] for r in records)


def make(endpoint: str, bucket: str, spool: Path, **kw: Any) -> LogpushExporter:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("connect_timeout_s", 1.0)
    kw.setdefault("read_timeout_s", 3.0)
    return LogpushExporter(bucket, endpoint_url=endpoint, region="us-east-1", spool_dir=spool, **kw)


def test_objects_follow_the_logpush_layout_and_hold_every_record(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    exp = make(s3.endpoint, bucket, tmp_path / "spool")
    recs = [span_rec(i) for i in range(300)] + [audit_rec(i) for i in range(7)]
    assert exp.export(recs[:150])
    assert exp.export(recs[150:])
    assert exp.force_flush(20)
    exp.shutdown(5)
    keys = s3.keys(bucket)
    assert len(keys) == 2
    by_prefix = {KEY.match(k)["prefix"]: k for k in keys}  # type: ignore[index]
    assert set(by_prefix) == {"traces", "audit"}
    for k in keys:
        m = KEY.match(k)
        assert m is not None
        assert m["date"] == m["start"][:8]
        assert m["start"] <= m["end"]
    assert s3.records(bucket, by_prefix["traces"]) == recs[:300]
    assert s3.records(bucket, by_prefix["audit"]) == recs[300:]
    head = s3.client.head_object(Bucket=bucket, Key=by_prefix["traces"])
    assert head["ContentType"] == "application/gzip"
    stats = pt.stats()
    assert stats["logpush.uploaded"] == 307
    assert stats["logpush.objects"] == 2
    assert stats["spooled"] == 307
    assert stats["dropped"] == 0
    assert [p.name for p in (tmp_path / "spool").iterdir()] == []  # uploaded files deleted, lock released


def test_first_batch_limit_hit_closes_the_batch(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    exp = make(s3.endpoint, bucket, tmp_path / "a", max_batch_records=100)
    exp.export([span_rec(i) for i in range(250)])
    assert exp.force_flush(20)
    exp.shutdown(5)
    sizes = sorted(len(s3.records(bucket, k)) for k in s3.keys(bucket))
    assert sizes == [50, 100, 100]

    bucket2 = s3.new_bucket()
    line = len(dumps(span_rec(100))) + 1  # 3-digit ids: equal sizes
    exp2 = make(s3.endpoint, bucket2, tmp_path / "b", max_batch_bytes=line * 10 + 5)
    exp2.export([span_rec(i) for i in range(100, 135)])
    assert exp2.force_flush(20)
    exp2.shutdown(5)
    assert sorted(len(s3.records(bucket2, k)) for k in s3.keys(bucket2)) == [5, 10, 10, 10]

    bucket3 = s3.new_bucket()
    exp3 = make(s3.endpoint, bucket3, tmp_path / "c", max_interval_s=0.3)
    exp3.export([span_rec(i) for i in range(5)])
    deadline = time.monotonic() + 20
    while not s3.keys(bucket3) and time.monotonic() < deadline:  # no flush: the interval closes it
        time.sleep(0.05)
    assert len(s3.records(bucket3, s3.keys(bucket3)[0])) == 5
    exp3.shutdown(5)


def test_per_dataset_buckets_and_prefixes(s3: S3, tmp_path: Path) -> None:
    main_bucket, audit_bucket = s3.new_bucket(), s3.new_bucket()
    exp = LogpushExporter(
        main_bucket,
        buckets={"audit": audit_bucket},
        prefixes={"traces": "logs/spans"},
        endpoint_url=s3.endpoint,
        region="us-east-1",
        spool_dir=tmp_path / "s",
        retry=FAST_RETRY,
    )
    exp.export([span_rec(1), audit_rec(2)])
    assert exp.force_flush(20)
    exp.shutdown(5)
    [trace_key] = s3.keys(main_bucket)
    [audit_key] = s3.keys(audit_bucket)
    assert trace_key.startswith("logs/spans/")
    assert audit_key.startswith("audit/")
    assert seqs(s3.records(main_bucket, trace_key)) == {1: 1}


@pytest.mark.parametrize("outage", ["down", "503"])
def test_storage_down_then_back_every_record_arrives_exactly_once(
    s3: S3, proxy: FaultProxy, tmp_path: Path, outage: str
) -> None:
    bucket = s3.new_bucket()
    exp = make(proxy.url, bucket, tmp_path / "spool", max_batch_records=100)
    exp.export([span_rec(i) for i in range(150)])  # one closed batch, one open
    proxy.set_mode(outage)
    exp.export([span_rec(i) for i in range(150, 420)])
    assert not exp.force_flush(0.5)  # storage is down: flush cannot confirm
    deadline = time.monotonic() + 20
    while _stats.get("logpush.retried") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stats.get("logpush.retried") >= 3
    exp.export([span_rec(i) for i in range(420, 500)])
    proxy.set_mode("up")
    assert exp.force_flush(30)
    exp.shutdown(5)
    got = seqs(s3.all_records(bucket))
    assert got == {i: 1 for i in range(500)}
    stats = pt.stats()
    assert stats["logpush.uploaded"] == 500
    assert stats["dropped"] == 0
    assert proxy.refused >= 1


def test_restart_uploads_what_a_previous_run_left_in_the_spool(
    s3: S3, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    spool = tmp_path / "spool"
    proxy.set_mode("down")
    first = make(proxy.url, bucket, spool, max_batch_records=40)
    first.export([span_rec(i) for i in range(100)])
    first.shutdown(2)  # cannot upload: everything stays on disk
    assert _stats.get("logpush.left_in_spool") == 100
    assert len([p for p in spool.iterdir() if p.suffix == ".ready"]) == 3
    proxy.set_mode("up")
    second = make(proxy.url, bucket, spool)  # no export call: leftovers go first on start
    assert second.force_flush(20)
    second.shutdown(5)
    assert seqs(s3.all_records(bucket)) == {i: 1 for i in range(100)}
    assert _stats.get("logpush.recovered") == 100
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize("storage", ["down", "up"])
def test_sigkill_mid_run_then_restart_uploads_the_spool(
    s3: S3, proxy: FaultProxy, tmp_path: Path, storage: str
) -> None:
    bucket = s3.new_bucket()
    spool = tmp_path / "spool"
    fsync_interval = 1.0
    if storage == "down":
        proxy.set_mode("down")
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("spool_child.py")),
            proxy.url,
            bucket,
            str(spool),
            str(fsync_interval),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **S3_ENV},
    )
    emitted: list[tuple[int, float]] = []
    ready = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("READY"):
                ready.set()
            elif line.startswith("EMITTED"):
                _, seq, at = line.split()
                emitted.append((int(seq), float(at)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "the child did not start"
        deadline = time.monotonic() + 60
        while (not emitted or emitted[-1][0] < 3000) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.7)  # batches closed, some uploaded (storage up), the open one being written
    finally:
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        reader.join(5)
    assert child.returncode == -signal.SIGKILL
    before = [seq for seq, at in emitted if at < killed_at - fsync_interval]
    assert before
    assert before[-1] >= 3000
    must_arrive = before[-1]  # every span up to this one ended > 1 flush interval before the kill
    leftovers = [p for p in spool.iterdir() if p.suffix in (".open", ".ready")]
    uploaded_by_child = len(s3.keys(bucket))
    if storage == "down":  # nothing could be uploaded: every batch is still in the spool
        assert uploaded_by_child == 0
        assert len(leftovers) >= 2
        proxy.set_mode("up")

    restarted = make(proxy.url, bucket, spool)
    assert restarted.force_flush(30)
    restarted.shutdown(5)
    got = seqs(s3.all_records(bucket))
    assert all(got[i] == 1 for i in range(must_arrive + 1)), "a record accepted before the kill was lost"
    assert set(got.values()) == {1}, "a record arrived twice"
    assert max(got) <= emitted[-1][0] + 50
    if storage == "down":
        assert _stats.get("logpush.recovered") == sum(got.values())  # everything came from the spool
    else:  # the restarted exporter uploaded nothing but the dead process's leftovers
        assert _stats.get("logpush.uploaded") == _stats.get("logpush.recovered")
    assert not [p for p in spool.iterdir() if p.suffix in (".open", ".ready")]


def test_full_pipeline_records_are_schema_valid_and_rollups_exact(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    exp = make(s3.endpoint, bucket, tmp_path / "spool")
    pt.configure(
        service="pipe",
        environment="test",
        exporters=[exp],
        sample_rate=0.1,
        keep_errors=False,
        slow_threshold_ms=None,
        rollups=Rollups(),
    )
    for i in range(2000):
        with pt.span("GET /pitches" if i % 2 else "db.query", kind=pt.SpanKind.SERVER) as s:
            s.set_attribute("i", i)
            if i % 100 == 0:
                s.set_status("error", "boom")
    pt.emit_audit("login", "session", "denied", actor="u-1", category="security")
    assert pt.force_flush(30)
    pt.shutdown(10)
    validator = jsonschema.Draft202012Validator(json_schema())
    by_type: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for key in s3.keys(bucket):
        prefix = key.split("/", 1)[0]
        for rec in s3.records(bucket, key):
            validator.validate(rec)
            by_type[rec["type"]].append(rec)
            assert prefix == {"span": "traces", "audit": "audit", "rollup": "performance"}[rec["type"]]
    assert 100 < len(by_type["span"]) < 400  # ~10% head sampling
    assert len(by_type["audit"]) == 1
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    for r in merge_rollups(by_type["rollup"]):  # one record per operation and minute
        counts[r["operation"]] += r["count"]
        errors[r["operation"]] += r["errors"]
    assert counts == {"GET /pitches": 1000, "db.query": 1000}  # exact although 10% sampled
    assert errors == {"db.query": 20, "GET /pitches": 0}


def test_exporter_from_the_cli_config_file(s3: S3, tmp_path: Path) -> None:
    bucket, audit_bucket = s3.new_bucket(), s3.new_bucket()
    cfg = tmp_path / "logpush.toml"
    cfg.write_text(
        f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n'
        f'spool_dir = "{tmp_path / "spool"}"\n'
        '[datasets.traces]\nprefix = "t"\n'
        f'[datasets.audit]\nbucket = "{audit_bucket}"\n'
        "[batch]\nmax_records = 2\n"
    )
    exp = LogpushExporter.from_config(cfg, retry=FAST_RETRY)
    assert exp.datasets == frozenset({"traces", "audit"})
    assert exp.max_batch_records == 2
    exp.export([span_rec(1), span_rec(2), span_rec(3), audit_rec(4)])
    assert exp.force_flush(20)
    exp.shutdown(5)
    assert [k.split("/")[0] for k in s3.keys(bucket)] == ["t", "t"]
    assert seqs(s3.all_records(bucket)) == {1: 1, 2: 1, 3: 1}
    assert seqs(s3.all_records(audit_bucket, "audit/")) == {4: 1}
