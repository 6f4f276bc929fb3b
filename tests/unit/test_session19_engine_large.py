"""Big traces and objects in the engine: only what is asked is built, and an object is decoded
as it is decompressed (sizes and counts, never times)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, _reader, decode_object
from pitchey_trace.records import app_log_record

MS = 1_000_000
T0 = 1_790_000_000 * 10**9
TID = "ab" * 16


def _span(i: int, parent: int | None, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    start = T0 + i * MS
    return {
        "schema": 1,
        "type": "span",
        "trace_id": TID,
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None if parent is None else f"{parent + 1:016x}",
        "name": f"op{i}",
        "kind": "internal",
        "service": "svc",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 10 * MS,
        "status": "ok",
        "attributes": attrs or {},
        "events": [],
    }


def _records(n: int, value: str = "") -> list[dict[str, Any]]:
    """A trace of ``n`` spans, ten children under each parent (spans ``0..n-1``)."""
    return [_span(i, None if i == 0 else (i - 1) // 10, {"v": value} if value else None) for i in range(n)]


def _logs(n: int) -> list[dict[str, Any]]:
    return [
        app_log_record(
            time_unix_nano=T0 + (n - i) * MS,  # (written newest first: the answer sorts them)
            severity_number=9,
            severity_text="INFO",
            logger="app",
            body=f"line {i}",
            service="svc",
            environment="test",
            trace_id=int(TID, 16),
            span_id=1,
            trace_flags=1,
        )
        for i in range(n)
    ]


def test_trace_limit_builds_only_the_first_spans_and_logs() -> None:
    archive = Archive.from_records(_records(2500) + _logs(30))
    whole = archive.trace(TID)
    cut = archive.trace(TID, limit=100)
    assert whole is not None
    assert cut is not None
    assert (len(whole["spans"]), whole["span_count"], len(whole["logs"]), whole["log_count"]) == (
        2500,
        2500,
        30,
        30,
    )
    assert (len(cut["spans"]), cut["span_count"], len(cut["logs"]), cut["log_count"]) == (100, 2500, 30, 30)
    # the depth-first prefix of the whole answer, so each span's parent comes before it
    assert cut["spans"] == whole["spans"][:100]
    shown = {s["span_id"] for s in cut["spans"]}
    assert all(s["parent_span_id"] is None or s["parent_span_id"] in shown for s in cut["spans"])
    few = archive.trace(TID, limit=7)
    assert few is not None
    assert few["logs"] == whole["logs"][:7]  # the earliest log lines, as the whole answer orders them
    assert few["log_count"] == 30
    # everything else is the same answer
    drop = ("spans", "logs")
    assert {k: v for k, v in cut.items() if k not in drop} == {
        k: v for k, v in whole.items() if k not in drop
    }


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "10"])
def test_trace_limit_must_be_a_positive_int(bad: Any) -> None:
    archive = Archive.from_records(_records(3))
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        archive.trace(TID, limit=bad)


def test_analyze_of_a_trace_with_many_siblings_finds_one_n_plus_one_group() -> None:
    # 20,000 equal queries under one parent: one group holding every one of them
    root = _span(0, None)
    queries = [
        {
            **_span(
                i,
                0,
                {"db.system.name": "postgresql", "db.query.text": f"SELECT * FROM t WHERE id = {i}"},  # noqa: S608 - no database
            ),
            "kind": "client",
        }
        for i in range(1, 20_001)
    ]
    archive = Archive.from_records([root, *queries])
    result = archive.analyze(TID)
    assert result is not None
    assert [(g["count"], len(g["span_ids"])) for g in result["n_plus_one"]] == [(20_000, 20_000)]
    assert result["db"]["queries"] == 20_000
    view = archive.trace(TID, limit=10)
    assert view is not None
    assert view["spans"][0]["child_count"] == 20_000


def test_decode_object_reads_lines_across_chunks_and_members(monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records(50, value="y" * 300)
    lines = [json.dumps(r).encode() for r in records]
    one = gzip.compress(b"\n".join(lines[:30]) + b"\n")
    # a line that starts in one member and ends in the next (the text is read as one stream)
    two = gzip.compress(b"\n".join(lines[30:46])[:-100])
    three = gzip.compress(lines[45][-100:] + b"\nnot json\n" + b"\n".join(lines[46:]) + b"\n[1]\n")
    data = one + two + three
    assert decode_object(data) == (records, 2)
    for chunk in (1, 7, 301, 4096):  # lines split in pieces at every place
        monkeypatch.setattr(_reader, "_CHUNK", chunk)
        assert decode_object(data) == (records, 2)
        got, bad = decode_object(one + two[:-12])  # truncated: the lines before stay
        assert got[:30] == records[:30]
        assert bad >= 1


def test_decode_object_does_not_hold_the_whole_text_beside_its_records() -> None:
    # 40 records of 500 kB values: 20 MB of text. Holding the text and its lines beside the
    # records (as before) peaked at three times that.
    body = b"".join(json.dumps(r).encode() + b"\n" for r in _records(40, value="z" * 500_000))
    data = gzip.compress(body, compresslevel=1)
    tracemalloc.start()
    try:
        records, bad = decode_object(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(records), bad) == (40, 0)
    assert peak < 1.5 * len(body)
