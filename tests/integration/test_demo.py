"""``examples/demo.py`` end to end: it runs as a subprocess (its own PostgreSQL, uvicorn on
127.0.0.1, an instrumented httpx client, a local archive in a temporary directory), and we
check what it left on disk ourselves: file names, every record against the JSON Schema,
client -> server trace structure, audit records, rollups, and the absence of the secrets the
demo's app leaks into spans on purpose."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from pitchey_trace.processors import merge_rollups
from pitchey_trace.records import json_schema

# The demo runs once per test session (see run_demo).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("demo")]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.py"
REQUESTS = 80
HEALTH_CHECKS = 5  # GET /healthz requests in every demo plan; excluded from tracing
GATEWAY_UA = "upstream-gateway/1.0"
UPSTREAM_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OBJECT_NAME = re.compile(r"^(\d{8})T\d{6}Z_(\d{8})T\d{6}Z_[0-9a-f]{16}\.log\.gz$")


@dataclass
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    archive: Path
    files: dict[str, list[Path]]
    records: dict[str, list[dict[str, Any]]]
    raw: bytes

    def spans(self) -> list[dict[str, Any]]:
        return self.records["traces"]


def run_demo(workdir: Path) -> tuple[int, str, str, Path]:
    """Run the demo with its archive in ``workdir``, once: under pytest-xdist every worker that
    gets a test of this module asks, and the first one runs it while the others wait on the
    lock and read its saved result (the ``xdist_group`` mark alone does not keep the module on
    one worker with every pytest/xdist version)."""
    archive = workdir / "archive"
    result = workdir / "result.json"
    with open(workdir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            proc = subprocess.run(
                [sys.executable, str(DEMO), "--archive", str(archive), "--requests", str(REQUESTS)],
                capture_output=True,
                text=True,
                timeout=180,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            saved = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
            result.write_text(json.dumps(saved))
    saved = json.loads(result.read_text())
    return saved["returncode"], saved["stdout"], saved["stderr"], archive


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        workdir = tmp_path_factory.mktemp("demo")
    else:  # the session's base directory, shared by the workers
        workdir = tmp_path_factory.getbasetemp().parent / "demo"
        workdir.mkdir(exist_ok=True)
    returncode, stdout, stderr, archive = run_demo(workdir)
    files: dict[str, list[Path]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    chunks: list[bytes] = []
    if archive.is_dir():
        for dataset in sorted(p for p in archive.iterdir() if p.is_dir()):
            files[dataset.name] = sorted(dataset.rglob("*.log.gz"))
            for path in files[dataset.name]:
                data = gzip.decompress(path.read_bytes())
                chunks.append(data)
                records.setdefault(dataset.name, []).extend(
                    json.loads(line) for line in data.splitlines() if line.strip()
                )
    return DemoRun(returncode, stdout, stderr, archive, files, records, b"".join(chunks))


def test_demo_exits_zero_and_reports_every_check_passed(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert re.search(r"secret check over \d+ KiB of archive: PASS", demo.stdout)
    passed = re.search(r"Checks: (\d+)/(\d+) passed", demo.stdout)
    assert passed is not None
    assert passed.group(1) == passed.group(2), demo.stdout[-2000:]
    # The waterfalls drawn are of the archived trace with the longest span among those holding
    # a slow query, and of the 500.
    slowest = re.search(r"^Slowest trace with a slow query ([0-9a-f]{32}) ", demo.stdout, re.M)
    assert slowest is not None
    spans = demo.spans()
    with_slow = {
        s["trace_id"]
        for s in spans
        if "db.query.text" in s["attributes"]
        and (s["duration_ms"] >= 150 or any(e["name"] == "slow_query" for e in s["events"]))
    }
    longest = max((s for s in spans if s["trace_id"] in with_slow), key=lambda s: s["duration_ms"])
    assert slowest.group(1) == longest["trace_id"]
    error = re.search(r"^An error trace ([0-9a-f]{32}) ", demo.stdout, re.M)
    assert error is not None
    assert any(
        s["trace_id"] == error.group(1) and s["attributes"].get("http.response.status_code") == 500
        for s in demo.spans()
    )
    # The demo collects log records itself: nothing (no traceback, no SDK warning) on stderr.
    assert "Traceback" not in demo.stderr
    assert "pitchey_trace" not in demo.stderr


def test_archive_files_follow_the_logpush_layout(demo: DemoRun) -> None:
    assert set(demo.files) == {"traces", "audit", "performance", "logs"}
    for dataset, paths in demo.files.items():
        assert paths, dataset
        for path in paths:
            match = OBJECT_NAME.match(path.name)
            assert match is not None, path
            assert path.parent.name == match.group(1)  # the date folder is the start's day
            assert path.parent.parent.name == dataset
    leftovers = [p for p in demo.archive.rglob("*") if p.is_file() and not p.name.endswith(".log.gz")]
    assert leftovers == []  # no temporary files: objects appear atomically


def test_every_record_validates_against_the_schema(demo: DemoRun) -> None:
    validator = Draft202012Validator(json_schema())
    expected_type = {"traces": "span", "audit": "audit", "performance": "rollup", "logs": "log"}
    total = 0
    for dataset, recs in demo.records.items():
        for rec in recs:
            errors = [e.message for e in validator.iter_errors(rec)]
            assert errors == [], (dataset, rec)
            assert rec["type"] == expected_type[dataset]
            assert rec["service"] == "pitch-api"
            assert rec["environment"] == "demo"
            total += 1
    assert total > 100


def test_client_span_is_root_and_server_span_its_child(demo: DemoRun) -> None:
    spans = demo.spans()
    by_id = {s["span_id"]: s for s in spans}
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        by_trace[s["trace_id"]].append(s)
    checked = 0
    for server in (s for s in spans if s["kind"] == "server"):
        if server["attributes"].get("user_agent.original") == GATEWAY_UA:
            continue  # sent without our client instrumentation; checked below
        client = by_id[server["parent_span_id"]]
        assert client["kind"] == "client"
        assert client["trace_id"] == server["trace_id"]
        assert client["parent_span_id"] is None
        roots = [s for s in by_trace[server["trace_id"]] if s["parent_span_id"] is None]
        assert roots == [client]
        # The client span is the call that produced this request.
        assert urlsplit(client["attributes"]["url.full"]).path == server["attributes"]["url.path"]
        assert client["attributes"]["http.request.method"] == server["attributes"]["http.request.method"]
        assert client["start_time_unix_nano"] <= server["start_time_unix_nano"]
        checked += 1
    assert checked >= 5


def test_incoming_traceparents(demo: DemoRun) -> None:
    gateway = [
        s
        for s in demo.spans()
        if s["kind"] == "server" and s["attributes"].get("user_agent.original") == GATEWAY_UA
    ]
    upstream = [s for s in gateway if s["trace_id"] == UPSTREAM_TRACE_ID]
    # Sampled upstream: both requests continue that trace (parent-based sampling keeps them).
    assert sorted(s["parent_span_id"] for s in upstream) == ["00f067aa0ba902b7", "00f067aa0ba902b8"]
    # Malformed upstream header: a new trace (archived only when our sampler picked it).
    for s in gateway:
        if s["trace_id"] != UPSTREAM_TRACE_ID:
            assert s["parent_span_id"] is None


def test_failed_requests_keep_their_traces(demo: DemoRun) -> None:
    spans = demo.spans()
    server = [s for s in spans if s["kind"] == "server"]
    statuses = Counter(s["attributes"].get("http.response.status_code") for s in server)
    # Tail keeping: the 500, the 409s, the 401s/403s and the slow reports are always archived.
    assert statuses[500] == 1
    assert statuses[409] >= 1
    slow = [s for s in server if s["name"] == "GET /slow"]
    assert len(slow) == 3
    for s in slow:
        children = [c for c in spans if c["parent_span_id"] == s["span_id"]]
        assert any(e["name"] == "slow_query" for c in children for e in c["events"])
    error = next(s for s in server if s["attributes"].get("http.response.status_code") == 500)
    assert error["status"] == "error"
    assert error["name"] == "POST /signup"
    tx = [s for s in spans if s["parent_span_id"] == error["span_id"]]
    assert [s["attributes"].get("db.transaction.outcome") for s in tx] == ["rollback"]


def test_secrets_never_reach_the_archive(demo: DemoRun) -> None:
    raw = demo.raw.decode("utf-8")
    assert "4242424242424242" not in raw  # the card number typed into the search box
    assert "GB82WEST12345698765432" not in raw  # the IBAN pasted there too
    assert not re.search(r"ptk_live_[0-9a-f]{32}", raw)  # bearer tokens
    assert not re.search(r"[a-z0-9.]+@(pitchey|bounce)\.example", raw)  # e-mail addresses
    assert not re.search(r"[A-Z][a-z]+-[a-z]+-\d{4}[!?]", raw)  # seeded and mistyped passwords
    assert "Sunflower-77-secret!" not in raw
    assert not re.search(r"Tulip-\d+!", raw)
    # ... although the app put them into spans: they arrive masked.
    spans = demo.spans()
    queries = {s["attributes"].get("url.query") for s in spans}
    assert "q=[CARD]+[IBAN]" in queries
    auth = {s["attributes"].get("http.request.header.authorization") for s in spans} - {None}
    assert auth == {"[REDACTED]"}
    attempts = [e["attributes"] for s in spans for e in s["events"] if e["name"] == "login.attempt"]
    assert attempts
    assert all(a == {"email": "[EMAIL]", "password": "[REDACTED]"} for a in attempts)
    bounced = [
        e["attributes"]["exception.message"]
        for s in spans
        for e in s["events"]
        if e["name"] == "exception" and s["name"] == "smtp send"
    ]
    assert bounced == ["550 5.1.1 mailbox unavailable: [EMAIL]"]


def test_audit_records(demo: DemoRun) -> None:
    audits = demo.records["audit"]
    by_cat: dict[str, Counter[str]] = defaultdict(Counter)
    for a in audits:
        by_cat[a["category"]][a["outcome"]] += 1
    assert set(by_cat) == {"request", "security", "data_access"}
    # One request record per traced request (health checks are not traced).
    assert sum(by_cat["request"].values()) == REQUESTS - HEALTH_CHECKS
    assert by_cat["request"]["500"] == 1
    assert by_cat["security"]["bad_password"] == 3
    assert by_cat["security"]["invalid_token"] == 3
    assert by_cat["security"]["403"] == 2
    tables = {a["target"] for a in audits if a["category"] == "data_access"}
    assert tables == {"users", "auth_tokens"}
    for a in audits:
        assert a["trace_id"] is not None
        assert a["span_id"] is not None


def test_rollups_count_every_span(demo: DemoRun) -> None:
    rollups = demo.records["performance"]
    assert rollups
    merged = merge_rollups([{**r, "minute_start_unix_nano": 0} for r in rollups])
    server = {r["operation"]: r for r in merged if r["kind"] == "server"}
    # Exact counts before sampling: every traced request, although most traces were dropped.
    assert sum(r["count"] for r in server.values()) == REQUESTS - HEALTH_CHECKS
    assert sum(1 for s in demo.spans() if s["kind"] == "server") < REQUESTS - HEALTH_CHECKS
    assert server["GET /slow"]["count"] == 3
    assert server["GET /slow"]["p50_ms"] >= 200 * 0.99  # pg_sleep(0.2), sketch accuracy 1%
    assert server["POST /signup"]["errors"] == 1
    for r in merged:
        assert r["duration_min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["duration_max_ms"]
