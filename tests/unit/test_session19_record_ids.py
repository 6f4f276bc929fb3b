"""Session 19: audit, log and rollup records deduplicated by ``record_id`` in the analysis engine
(a batch written twice, a record in two datasets), and ``compare()``'s two windows of one length."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pitchey_trace._sketch import DurationSketch
from pitchey_trace.analysis import Archive
from pitchey_trace.exporters import LocalArchiveExporter
from pitchey_trace.records import RECORD_ID, json_schema, new_record_id

MS = 10**6
MINUTE = 60 * 10**9
T0 = 1_900_000_000 * 10**9  # a whole minute


def _audit(when: int, rid: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema": 1,
        "type": "audit",
        "category": "request",
        "time_unix_nano": when,
        "trace_id": None,
        "span_id": None,
        "service": "svc",
        "environment": "t",
        "actor": "u-1",
        "action": "GET /pitches/{id}",
        "target": "/pitches/{id}",
        "outcome": "200",
        "attributes": {},
    }
    if rid is not None:
        rec[RECORD_ID] = rid
    return rec


def _log(when: int, rid: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema": 1,
        "type": "log",
        "time_unix_nano": when,
        "trace_id": None,
        "span_id": None,
        "trace_flags": 0,
        "service": "svc",
        "environment": "t",
        "severity_number": 17,
        "severity_text": "ERROR",
        "logger": "app",
        "body": "payment failed",
        "attributes": {},
    }
    if rid is not None:
        rec[RECORD_ID] = rid
    return rec


def _rollup(minute: int, rid: str | None = None, n: int = 3) -> dict[str, Any]:
    sketch = DurationSketch()
    sketch.add(5.0, n)
    rec: dict[str, Any] = {
        "schema": 1,
        "type": "rollup",
        "service": "svc",
        "environment": "t",
        "operation": "op",
        "kind": "internal",
        "minute_start_unix_nano": minute,
        "interval_s": 60,
        "count": n,
        "errors": 0,
        "duration_sum_ms": 5.0 * n,
        "duration_min_ms": 5.0,
        "duration_max_ms": 5.0,
        "p50_ms": 5.0,
        "p95_ms": 5.0,
        "p99_ms": 5.0,
        "sketch": sketch.to_dict(),
    }
    if rid is not None:
        rec[RECORD_ID] = rid
    return rec


def _span(n: int, start: int, name: str = "op") -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "span",
        "trace_id": f"{n:032x}",
        "span_id": f"{n:016x}",
        "parent_span_id": None,
        "name": name,
        "kind": "internal",
        "service": "svc",
        "environment": "t",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 2 * MS,
        "duration_ms": 2.0,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {},
    }


def _counts(archive: Archive) -> tuple[int, int, int]:
    """(audit records, log lines, calls counted by the rollups) of the whole archive."""
    perf = archive.performance()
    return (
        len(archive.audit(limit=1000)),
        len(archive.logs(limit=1000)),
        sum(r["count"] for r in perf if r["source"] == "rollups"),
    )


# -- record ids ------------------------------------------------------------------------------------
def test_new_record_id_is_16_lowercase_hex_and_differs_each_call() -> None:
    ids = {new_record_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_schema_takes_a_record_id_on_audit_log_and_rollup_records_and_does_not_require_it() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    rid = new_record_id()
    for make in (_audit, _log):
        validator.validate(make(T0))  # (archives written before ids: still valid)
        validator.validate(make(T0, rid))
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(make(T0, "not-an-id"))
    validator.validate(_rollup(T0))
    validator.validate(_rollup(T0, rid))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(_rollup(T0, rid.upper()))
    with pytest.raises(jsonschema.ValidationError):  # (spans have their span id)
        validator.validate({**_span(1, T0), RECORD_ID: rid})


# -- the engine keeps one copy ---------------------------------------------------------------------
def test_copies_of_a_record_with_an_id_are_counted_once() -> None:
    batch = [_audit(T0, new_record_id()), _log(T0, new_record_id()), _rollup(T0, new_record_id())]
    a = Archive.from_records([*batch, *(dict(r) for r in batch)])
    assert _counts(a) == (1, 1, 3)
    assert len(a.logs(trace_id=None)) == 1


def test_records_with_distinct_ids_all_count_even_when_otherwise_equal() -> None:
    # Two partial rollups of one minute (a flush in between) and two equal events are real ones.
    one, two = "1" * 16, "2" * 16
    a = Archive.from_records(
        [_audit(T0, one), _audit(T0, two), _log(T0, one), _log(T0, two), _rollup(T0, one), _rollup(T0, two)]
    )
    assert _counts(a) == (2, 2, 6)


def test_one_id_at_two_times_is_two_records() -> None:
    # (the key holds the time: a clash of two random ids does not merge different records)
    rid = "abcdef0123456789"
    a = Archive.from_records(
        [_audit(T0, rid), _audit(T0 + 1, rid), _rollup(T0, rid), _rollup(T0 + MINUTE, rid)]
    )
    assert len(a.audit()) == 2
    assert sum(r["count"] for r in a.performance()) == 6


def test_records_without_a_valid_id_are_all_counted_as_before() -> None:
    # Archives written before record ids, or an id a sanitizer rule rewrote ("[CARD]"): a copy
    # cannot be told from a second event, so nothing is left out.
    for rid in (None, "[CARD]", "ABCDEF0123456789", "abc", 12345):
        batch = [_audit(T0), _log(T0), _rollup(T0)]
        if rid is not None:
            for rec in batch:
                rec[RECORD_ID] = rid
        a = Archive.from_records([*batch, *(dict(r) for r in batch)])
        assert _counts(a) == (2, 2, 6), rid


def test_a_batch_written_twice_to_a_local_archive_is_counted_once(tmp_path: Path) -> None:
    # What a retried upload or a replayed spool batch leaves: the same records in two objects.
    batch = [
        _span(1, T0),
        _audit(T0, new_record_id()),
        _log(T0, new_record_id()),
        _rollup(T0, new_record_id()),
        _audit(T0 + 5),  # (no id: as archives written before ids)
    ]
    exporter = LocalArchiveExporter(tmp_path, fsync=False)
    try:
        assert exporter.export(batch)
        assert exporter.force_flush(5)
        assert exporter.export(batch)
    finally:
        exporter.shutdown(5)
    assert len(list(tmp_path.glob("audit/*/*.log.gz"))) == 2
    a = Archive(tmp_path, datasets=["traces", "audit", "performance", "logs"])
    assert _counts(a) == (1 + 2, 1, 3)
    assert [s["span_count"] for s in a.search()] == [1]
    assert a.read_stats["unusable_records"] == 0


def test_a_record_routed_to_two_datasets_is_counted_once(tmp_path: Path) -> None:
    audit = _audit(T0, new_record_id())
    exporter = LocalArchiveExporter(tmp_path, fsync=False, router=lambda rec: ["audit", "security"])
    try:
        assert exporter.export([audit])
    finally:
        exporter.shutdown(5)
    a = Archive(tmp_path, datasets=["audit", "security"])
    assert len(a.audit()) == 1
    assert json.loads(json.dumps(a.audit()[0]))[RECORD_ID] == audit[RECORD_ID]


def test_a_rewritten_object_is_read_again_with_its_records_once(tmp_path: Path) -> None:
    # A rebuild (an object rewritten in place) starts the index over: ids seen before do not
    # hide the records read again.
    exporter = LocalArchiveExporter(tmp_path, fsync=False)
    try:
        assert exporter.export([_audit(T0, new_record_id())])
    finally:
        exporter.shutdown(5)
    a = Archive(tmp_path)
    assert len(a.audit()) == 1
    [obj] = tmp_path.glob("audit/*/*.log.gz")
    obj.write_bytes(obj.read_bytes())
    st = obj.stat()  # (a later mtime: the version the source lists changes)
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    a.refresh()
    assert len(a.audit()) == 1


# -- compare ---------------------------------------------------------------------------------------
def test_compare_baseline_is_as_long_as_the_window_at_the_boundaries() -> None:
    # The window [since, until] holds both ends: until - since + 1 ns. The baseline is as long
    # and ends just before since: [since - (until - since + 1), since - 1].
    since, until = T0, T0 + MINUTE
    length = until - since + 1
    records = [
        _span(1, until),  # the window's last nanosecond
        _span(2, since),  # its first
        _span(3, since - 1),  # the baseline's last
        _span(4, since - length),  # the baseline's first
        _span(5, since - length - 1),  # before the baseline: in neither
        _span(6, until + 1),  # after the window: in neither
    ]
    [row] = Archive.from_records(records).compare(since=since, until=until)
    assert row["source"] == "spans"
    assert (row["count"], row["baseline_count"]) == (2, 2)


def test_compare_from_rollups_gives_both_windows_the_same_whole_minutes() -> None:
    since, until = T0, T0 + 10 * MINUTE
    # ten minutes each side; the minute starting at until is after the window
    records = [_rollup(since + m * MINUTE, n=2) for m in range(-11, 11)]
    [row] = Archive.from_records(records).compare(since=since, until=until)
    assert row["source"] == "rollups"
    assert (row["count"], row["baseline_count"]) == (20, 20)
