"""Session 19: every audit, log and rollup record gets its ``record_id`` when it is made (Python
builders and the C request-audit builder alike), the sanitizer leaves it alone, a forked child
never repeats its parent's ids, and a batch archived twice is counted once."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pitchey_trace as pt
from pitchey_trace import _accel
from pitchey_trace._span import SpanKind, StatusCode
from pitchey_trace.analysis import Archive
from pitchey_trace.exporters import InMemoryExporter, LocalArchiveExporter
from pitchey_trace.processors import Rollups
from pitchey_trace.records import (
    AUDIT_RECORD_KEYS,
    PENDING_AUDIT,
    RECORD_ID,
    app_log_record,
    audit_record,
    request_audit,
)
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.web import WSGITracingMiddleware, export_logs, stop_export_logs

T0 = 1_800_000_000 * 10**9  # a minute boundary
HEX16 = re.compile(r"[0-9a-f]{16}")
#: A Luhn-valid card number that is also 16 lowercase hex digits: a possible record id.
CARD_LIKE_ID = "4111111111111111"
AUDIT_ORDER = [
    "schema", "type", "record_id", "category", "time_unix_nano", "trace_id", "span_id", "service",
    "environment", "actor", "action", "target", "outcome", "attributes",
]  # fmt: skip
LOG_ORDER = [
    "schema", "type", "record_id", "time_unix_nano", "trace_id", "span_id", "trace_flags", "service",
    "environment", "severity_number", "severity_text", "logger", "body", "attributes",
]  # fmt: skip


def _log(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        time_unix_nano=1, severity_number=9, severity_text="INFO", logger="app", body="hi",
        service="s", environment="e",
    )  # fmt: skip
    args.update(kw)
    return app_log_record(**args)


def _audit(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        action="read", target="pitches", outcome="ok", time_unix_nano=1, service="s", environment="e"
    )
    args.update(kw)
    return audit_record(**args)


def _pending(i: int, client: str | None = "1.2.3.4") -> tuple[Any, ...]:
    return (
        PENDING_AUDIT,
        "request",
        i,
        0xAB + i,
        0xCD,
        None,
        "GET /a",
        "/a",
        "200",
        "GET",
        200,
        10 * i,
        client,
    )


@dataclass
class _FakeSpan:
    """What Rollups reads from a finished span."""

    name: str
    start_ns: int
    end_ns: int
    kind: SpanKind = SpanKind.SERVER
    status: StatusCode = StatusCode.UNSET


def _rollups(n_ops: int = 3) -> list[dict[str, Any]]:
    roll = Rollups()
    for i in range(n_ops):
        roll.observe(_FakeSpan(f"op{i}", T0, T0 + 1_000_000))  # type: ignore[arg-type]
    return roll.collect(0, force=True)


def _environ(path: str) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": ""}
    setup_testing_defaults(env)
    return env


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    with pt.span("handler"):
        logging.getLogger("recid.app").warning("served %s", environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _requests(n: int) -> None:
    app = WSGITracingMiddleware(_app)
    for i in range(n):
        list(app(_environ(f"/p/{i % 3}"), lambda status, headers, exc_info=None: None))


# -- the Python builders ---------------------------------------------------------------------------
def test_audit_and_log_records_get_a_fresh_record_id_in_schema_order() -> None:
    audits = [_audit() for _ in range(500)]
    logs = [_log() for _ in range(500)]
    ids = [r[RECORD_ID] for r in (*audits, *logs)]
    assert all(HEX16.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert list(audits[0]) == AUDIT_ORDER
    assert set(AUDIT_ORDER) == AUDIT_RECORD_KEYS
    assert list(logs[0]) == LOG_ORDER


def test_rollup_records_get_a_record_id_each() -> None:
    records = _rollups(3)
    assert len(records) == 3
    ids = [r[RECORD_ID] for r in records]
    assert all(HEX16.fullmatch(i) for i in ids)
    assert len(set(ids)) == 3
    assert list(records[0])[:3] == ["schema", "type", "record_id"]  # (schema order)


def test_merge_rollups_counts_a_copy_once_and_gives_a_merge_no_id() -> None:
    from pitchey_trace.processors import merge_rollups

    [one] = _rollups(1)
    other = {**one, "record_id": "0123456789abcdef"}  # (a second process's record of that minute)
    [merged] = merge_rollups([one, dict(one), other])  # (one read twice: a copy)
    assert merged["count"] == 2 * one["count"]
    assert RECORD_ID not in merged  # (a new record, no copy of either)
    [alone] = merge_rollups([one, dict(one)])
    assert alone == one


def test_request_audits_get_an_id_from_python_and_c_builders_with_the_same_keys_in_order() -> None:
    san = Sanitizer()
    items = [_pending(i, client) for i in range(1, 41) for client in ("1.2.3.4", "", None)]
    py = [san(request_audit(p, "s", "e")) for p in items]  # the Python builder, then the sanitizer
    one = [san._request_audit(p, "s", "e") for p in items]  # C once the caches are warm
    chunk, rest = san._request_audits(items, "s", "e")  # C over a chunk ([] in pure-Python mode)
    if _accel.build_audit_records is None:
        assert os.environ.get("PITCHEY_TRACE_PURE_PYTHON")
        assert (chunk, rest) == ([], items)
    else:
        assert rest == []
        assert len(chunk) == len(items)
    built = [*py, *one, *chunk]
    ids = [r[RECORD_ID] for r in built]
    assert all(HEX16.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    for rec in built:
        assert list(rec) == AUDIT_ORDER
    # apart from the id, the C records are the Python ones, field for field and in order
    strip = [{k: v for k, v in r.items() if k != RECORD_ID} for r in (*one, *chunk)]
    assert strip == [{k: v for k, v in r.items() if k != RECORD_ID} for r in py] * (len(strip) // len(py))
    assert [list(r["attributes"]) for r in (*one, *chunk)] == [list(r["attributes"]) for r in py] * (
        len(strip) // len(py)
    )


def test_c_request_audit_builder_gives_each_record_a_new_id() -> None:
    build = _accel.build_audit_record
    if build is None:  # pure-Python mode: the Python builder made every record above
        assert os.environ.get("PITCHEY_TRACE_PURE_PYTHON")
        return
    san = Sanitizer()
    pending = _pending(1)
    san._request_audit(pending, "s", "e")  # warm the caches
    args = (pending, "s", "e", san._key_cache, san._text_cache, san._sql_cache, san.max_attributes)
    recs = [build(*args) for _ in range(2000)]
    ids = {r[RECORD_ID] for r in recs if r is not None}
    assert len(ids) == 2000
    assert all(HEX16.fullmatch(i) for i in ids)


def test_c_audit_builder_used_on_its_own_seeds_its_ids_and_reseeds_after_fork() -> None:
    # The span-id generator gets its seed source from install_methods(), which pure-Python mode
    # never calls; the module's audit builder (used there by tests, for instance) must still work
    # (it crashed reading a NULL function) and give a forked child ids of its own.
    script = textwrap.dedent(
        """
        import os
        from pitchey_trace import _speedups
        from pitchey_trace.records import PENDING_AUDIT
        from pitchey_trace.sanitize import Sanitizer

        san = Sanitizer()
        p = (PENDING_AUDIT, "request", 1, 0xAB, 0xCD, None, "GET /a", "/a", "200", "GET", 200, 10, "")
        san._request_audit(p, "s", "e")
        args = (p, "s", "e", san._key_cache, san._text_cache, san._sql_cache, 128)
        ids = [_speedups.build_audit_record(*args)["record_id"] for _ in range(2)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, _speedups.build_audit_record(*args)["record_id"].encode())
            os._exit(0)
        os.waitpid(pid, 0)
        ids.append(os.read(r, 16).decode())
        ids.append(_speedups.build_audit_record(*args)["record_id"])
        print(" ".join(ids))
        """
    )
    env = {**os.environ, "PITCHEY_TRACE_PURE_PYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 4
    assert all(HEX16.fullmatch(i) for i in ids)
    assert len(set(ids)) == 4  # (the child's id is not the parent's next one)


# -- the sanitizer ---------------------------------------------------------------------------------
def test_record_id_is_structural_and_never_scanned() -> None:
    san = Sanitizer()
    # The measure: scanned as text, such an id would be masked as a card number.
    assert san.scrub(CARD_LIKE_ID, RECORD_ID) != CARD_LIKE_ID
    [rollup, *_] = _rollups(1)
    records = [
        {**_audit(), RECORD_ID: CARD_LIKE_ID},  # the audit fast path
        {**_audit(actor="u"), RECORD_ID: CARD_LIKE_ID, "dataset": "audit"},  # the general path
        {**_log(), RECORD_ID: CARD_LIKE_ID},
        {**rollup, RECORD_ID: CARD_LIKE_ID},
    ]
    for rec in records:
        assert san(rec)[RECORD_ID] == CARD_LIKE_ID, rec["type"]
    # the other fields are still sanitized
    assert (
        san({**_log(body=f"card {CARD_LIKE_ID}"), RECORD_ID: CARD_LIKE_ID})["body"] != f"card {CARD_LIKE_ID}"
    )


# -- the pipeline ----------------------------------------------------------------------------------
class _PidFileExporter:
    """NDJSON to a file named after the exporting process's pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def export(self, batch: list[dict[str, Any]]) -> bool:
        with open(self.directory / f"{os.getpid()}.ndjson", "a") as fh:
            for rec in batch:
                fh.write(json.dumps(rec) + "\n")
        return True


def _ids(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"audit": [], "log": [], "rollup": []}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] in out:
            out[rec["type"]].append(rec[RECORD_ID])
    return out


def test_a_forked_child_never_repeats_its_parents_record_ids(tmp_path: Path) -> None:
    pt.configure(service="forky", exporters=[_PidFileExporter(tmp_path)], sample_rate=1.0)
    export_logs("INFO")
    try:
        _requests(5)  # (the C builder's caches and id generator are warm before the fork)
        pid = os.fork()
        if pid == 0:  # child: the same work as the parent after the fork
            code = 1
            try:
                _requests(50)
                pt.emit_audit("read", "pitches", "ok")
                code = 0 if pt.shutdown(10) else 2
            finally:
                os._exit(code)
        _requests(50)
        pt.emit_audit("read", "pitches", "ok")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pt.shutdown(10)
    finally:
        stop_export_logs()
    child, parent = _ids(tmp_path / f"{pid}.ndjson"), _ids(tmp_path / f"{os.getpid()}.ndjson")
    assert (len(child["audit"]), len(child["log"])) == (51, 50)
    assert (len(parent["audit"]), len(parent["log"])) == (56, 55)
    assert child["rollup"]
    assert parent["rollup"]
    every = [i for ids in (child, parent) for kind in ids.values() for i in kind]
    assert all(HEX16.fullmatch(i) for i in every)
    assert len(set(every)) == len(every)  # no id in both processes, none twice in one


def test_a_pipeline_archiving_every_record_twice_counts_audits_logs_and_rollups_once(tmp_path: Path) -> None:
    # Two archive exporters on one directory: every record is written to two objects, as a
    # retried upload or a replayed spool batch leaves it.
    datasets = ["traces", "audit", "performance", "logs"]
    twice = [LocalArchiveExporter(tmp_path, fsync=False, datasets=datasets) for _ in range(2)]
    pt.configure(service="svc", environment="t", exporters=twice, sample_rate=1.0)
    export_logs("INFO")
    try:
        _requests(12)  # 12 request audits, 12 log lines, 24 spans (request and handler)
        pt.emit_audit("read", "pitches", "ok")
        assert pt.shutdown(10)
    finally:
        stop_export_logs()
    raw: dict[str, int] = {}
    for obj in tmp_path.glob("*/*/*.log.gz"):
        for line in gzip.decompress(obj.read_bytes()).splitlines():
            kind = json.loads(line)["type"]
            raw[kind] = raw.get(kind, 0) + 1
    assert (raw["audit"], raw["log"], raw["span"]) == (26, 24, 48)  # each written twice
    archive = Archive(tmp_path, datasets=datasets)
    assert len(archive.audit(limit=1000)) == 13
    assert len(archive.logs(limit=1000)) == 12
    perf = archive.performance()
    assert sum(r["count"] for r in perf if r["source"] == "rollups") == 24
    assert sum(t["span_count"] for t in archive.search(limit=1000)) == 24


def test_log_records_shipped_by_the_pipeline_carry_their_id() -> None:
    mem = InMemoryExporter()
    pt.configure(service="svc", exporters=[mem], sample_rate=1.0)
    export_logs("INFO")
    try:
        logging.getLogger("recid.app").warning("one")
        logging.getLogger("recid.app").warning("two")
        assert pt.force_flush(10)
    finally:
        stop_export_logs()
    logs = [r for r in mem.records if r["type"] == "log"]
    assert [list(r) for r in logs] == [LOG_ORDER, LOG_ORDER]
    assert logs[0][RECORD_ID] != logs[1][RECORD_ID]
