"""The analysis index's memory is bounded by bytes, not only by spans: an archive whose records
are each large (1 MB values a foreign tool wrote) is read within ``max_bytes`` (derived from
``max_spans`` when not given), with the same effect as ``max_spans`` when reached. And every span
the trace answer shows can be fetched from its own endpoint."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, _engine
from pitchey_trace.analysis._reader import decode_object, record_weight
from pitchey_trace.analysis.api import create_app
from tests.unit.test_analysis_api import get

T0 = 1_796_000_000_000_000_000  # 2026-11-30
MIB = 1 << 20


def span(i: int, value_len: int = 0, **fields: Any) -> dict[str, Any]:
    """Span ``i`` of its own trace, started ``i`` ms after T0, with a ``value_len`` value."""
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": "op",
        "kind": "server",
        "service": "svc",
        "start_time_unix_nano": T0 + i * 10**6,
        "end_time_unix_nano": T0 + i * 10**6 + 1000,
        "duration_ms": 0.001,
        "status": "ok",
        "status_message": None,
        "attributes": {"blob": "x" * value_len} if value_len else {"http.request.method": "GET"},
        "events": [],
        "links": [],
        "resource": {},
    }
    record.update(fields)
    return record


def write_archive(root: Path, records: list[dict[str, Any]], per_object: int) -> None:
    """``records`` in objects of ``per_object``, the first records in the oldest object."""
    day = root / "traces" / "20261130"
    day.mkdir(parents=True)
    for n, first in enumerate(range(0, len(records), per_object)):
        lines = b"".join(json.dumps(r).encode() + b"\n" for r in records[first : first + per_object])
        name = f"20261130T{n // 60:02d}{n % 60:02d}00Z_20261130T235959Z_{n:08x}.log.gz"
        (day / name).write_bytes(gzip.compress(lines, 1))


def read_all(archive: Archive) -> tuple[int, dict[str, Any]]:
    """The traced peak memory of the first query, and the overview it gives."""
    tracemalloc.start()
    try:
        overview = archive.overview()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, overview


def test_large_records_are_held_within_max_bytes_newest_first(tmp_path: Path) -> None:
    # 120 spans of 1 MB each (120 MB) in objects of 10; the budget is 8 MiB.
    write_archive(tmp_path, [span(i, 1_000_000) for i in range(120)], per_object=10)
    budget = 8 * MIB
    archive = Archive(tmp_path, max_bytes=budget)
    peak, overview = read_all(archive)
    held = archive._index.spans
    assert 1 <= len(held) <= budget // 1_000_000
    assert archive._index.weight <= budget
    # the newest spans are held, as with max_spans
    assert {trace for trace, _ in held} == {f"{i + 1:032x}" for i in range(120 - len(held), 120)}
    # older objects were left unread and counted; the answer says it is partial
    stats = archive.read_stats
    assert stats["skipped_objects"] >= 10
    assert stats["objects"] + stats["skipped_objects"] == 12
    assert stats["dropped_spans"] == stats["objects"] * 10 - len(held)
    assert overview["partial"] is True
    assert overview["spans"] == len(held)
    # the held weight stays under 1.5 budgets; decoding a 1 MB line takes a few MB more
    assert peak < budget * 3 // 2 + 24 * MIB
    # without the bound every record is held: the bound above is not met by chance
    assert budget * 3 // 2 + 24 * MIB < 120 * 1_000_000


def test_one_object_bigger_than_the_budget_is_bounded_while_it_is_decoded(tmp_path: Path) -> None:
    # One object of 60 MB of records (one gzip member, small on disk): bounded as it is read,
    # not once it is decoded whole.
    write_archive(tmp_path, [span(i, 1_000_000) for i in range(60)], per_object=60)
    budget = 4 * MIB
    archive = Archive(tmp_path, max_bytes=budget)
    peak, overview = read_all(archive)
    assert archive.read_stats["objects"] == 1
    assert 1 <= len(archive._index.spans) <= 4
    assert archive.read_stats["dropped_spans"] == 60 - len(archive._index.spans)
    assert f"{60:032x}" in archive._index.by_trace  # (the last span read is kept)
    assert overview["partial"] is True
    assert peak < budget * 3 // 2 + 24 * MIB < 60 * 1_000_000


def test_max_spans_alone_implies_a_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # max_spans x 8 KiB (the floor of 64 MiB lowered, so a small test archive shows it): 50
    # spans of 100 kB would be 5 MB held; the derived budget is 400 KiB.
    monkeypatch.setattr(_engine, "_MIN_DERIVED_BYTES", 0)
    write_archive(tmp_path, [span(i, 100_000) for i in range(50)], per_object=5)
    archive = Archive(tmp_path, max_spans=50)
    assert archive._max_bytes == 50 * 8 * 1024
    overview = archive.overview()
    assert 1 <= len(archive._index.spans) <= 4
    assert archive._index.weight <= 50 * 8 * 1024
    assert overview["partial"] is True
    assert archive.read_stats["skipped_objects"] > 0


def test_the_derived_budget_holds_every_ordinary_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ordinary SDK-sized records: max_spans bounds them, not the bytes, even without the floor.
    monkeypatch.setattr(_engine, "_MIN_DERIVED_BYTES", 0)
    records = [
        span(i, 0, attributes={"db.query.text": "SELECT * FROM t WHERE id = $1" * 20}) for i in range(300)
    ]
    write_archive(tmp_path, records, per_object=50)
    whole = Archive(tmp_path)
    bounded = Archive(tmp_path, max_spans=300)
    assert bounded.search(limit=1000) == whole.search(limit=1000)
    assert len(bounded._index.spans) == 300
    assert bounded.read_stats["dropped_spans"] == bounded.read_stats["skipped_objects"] == 0
    assert bounded.overview()["partial"] is False
    assert whole.overview() == bounded.overview()
    # and a span bound still cuts at its span count
    fewer = Archive(tmp_path, max_spans=100)
    fewer.overview()
    assert len(fewer._index.spans) == 100
    assert fewer.read_stats["skipped_objects"] == 4
    assert fewer.overview()["partial"] is True


def test_a_span_heavier_than_the_whole_budget_is_dropped_not_everything_else(tmp_path: Path) -> None:
    records = [span(0, 100), span(1, 2_000_000), span(2, 100)]
    write_archive(tmp_path, records, per_object=3)
    archive = Archive(tmp_path, max_bytes=MIB)
    overview = archive.overview()
    assert sorted(t for t, _ in archive._index.spans) == [f"{1:032x}", f"{3:032x}"]
    assert archive.read_stats["dropped_spans"] == 1
    assert overview["partial"] is True


def test_refresh_reads_newer_objects_within_the_budget(tmp_path: Path) -> None:
    records = [span(i, 500_000) for i in range(40)]
    write_archive(tmp_path, records[:20], per_object=5)
    archive = Archive(tmp_path, max_bytes=4 * MIB)
    archive.overview()
    day = tmp_path / "traces" / "20261130"
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in records[20:])
    (day / "20261130T230000Z_20261130T235959Z_ffffffff.log.gz").write_bytes(gzip.compress(lines, 1))
    archive.refresh()
    archive.overview()
    held = {t for t, _ in archive._index.spans}
    assert archive._index.weight <= 4 * MIB
    assert held
    assert held <= {f"{i + 1:032x}" for i in range(32, 40)}  # the newest
    assert f"{40:032x}" in held


def test_max_bytes_must_be_a_positive_int(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_bytes must be an int >= 1"):
            Archive(tmp_path, max_bytes=bad)  # type: ignore[arg-type]


def test_record_weight_follows_memory_not_only_length() -> None:
    # A line of tiny containers takes about 20 times its length in memory: it weighs as much.
    tiny = b'{"a":[' + b",".join([b"{}"] * 100_000) + b"]}"
    tracemalloc.start()
    try:
        decoded = json.loads(tiny)
        memory, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded
    assert record_weight(tiny) >= memory // 2
    assert record_weight(tiny) > 10 * len(tiny)
    big = json.dumps({"a": "x" * 100_000}).encode()
    assert len(big) <= record_weight(big) < len(big) + 1000


def test_decode_object_still_answers_records_and_bad_lines() -> None:
    data = gzip.compress(json.dumps(span(0)).encode() + b"\nnot json\n" + json.dumps(span(1)).encode())
    records, bad = decode_object(data)
    assert [r["span_id"] for r in records] == [f"{1:016x}", f"{2:016x}"]
    assert bad == 1


def test_the_cli_takes_max_mib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pitchey_trace import cli

    write_archive(tmp_path, [span(i, 1_000_000) for i in range(20)], per_object=2)
    assert cli.main(["overview", "--archive", str(tmp_path), "--max-mib", "3", "--json"]) == 0
    overview = json.loads(capsys.readouterr().out)
    assert 1 <= overview["spans"] <= 3
    assert overview["partial"] is True
    assert cli.main(["overview", "--archive", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spans"] == 20
    # the text form says so too
    assert cli.main(["overview", "--archive", str(tmp_path), "--max-mib", "3"]) == 0
    assert "partial: " in capsys.readouterr().out
    assert cli.main(["overview", "--archive", str(tmp_path)]) == 0
    assert "partial" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["overview", "--archive", str(tmp_path), "--max-mib", "0"])
    assert exc.value.code == 2


# -- span ids ------------------------------------------------------------------------------------

TRACE = "ab" * 16


def test_every_span_the_tree_shows_can_be_fetched_from_its_endpoint() -> None:
    records = [
        span(0, trace_id=TRACE, span_id="1A2B"),  # hex without its leading zeros, upper case
        span(1, trace_id=TRACE, span_id="c" * 16, parent_span_id="1a2b"),
        span(2, trace_id=TRACE, span_id="span-one"),  # not hex: cannot be fetched, unusable
        span(3, trace_id=TRACE, span_id="d" * 18),  # too long
        span(4, trace_id=TRACE, span_id=""),
        span(5, trace_id=TRACE, span_id="e" * 16, parent_span_id="not-hex"),
    ]
    archive = Archive.from_records(records)
    assert archive.read_stats["unusable_records"] == 3
    app = create_app(archive, refresh_interval_s=None)
    view = get(app, f"/api/traces/{TRACE}").json()
    ids = [s["span_id"] for s in view["spans"]]
    assert sorted(ids) == ["0000000000001a2b", "c" * 16, "e" * 16]
    by_id = {s["span_id"]: s for s in view["spans"]}
    assert by_id["c" * 16]["depth"] == 1  # its parent, normalised alike, is found
    assert view["missing_parents"] == ["not-hex"]
    for sid in ids:
        response = get(app, f"/api/traces/{TRACE}/spans/{sid}")
        assert response.status_code == 200, (sid, response.text)
        assert response.json()["span_id"] == sid


def test_a_deeply_nested_line_is_a_bad_line_with_the_stdlib_json(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without orjson (the `fast` extra), json.loads raises RecursionError on deep nesting: it
    # came out of every query (a 500 from the API) instead of counting as one bad line.
    from pitchey_trace import _json

    monkeypatch.setattr(_json, "loads", json.loads)
    nested = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    records, bad = decode_object(gzip.compress(nested + b"\n" + json.dumps(span(0)).encode() + b"\n"))
    assert bad == 1
    assert [r["span_id"] for r in records] == [f"{1:016x}"]


def test_a_trace_evicted_while_its_object_is_read_is_not_held_in_part(tmp_path: Path) -> None:
    """The budget is applied every half budget within an object: a trace evicted then got its
    later spans in that object held again (2 of its 3 spans, a missing parent)."""
    trace = f"{999:032x}"

    def a(k: int) -> dict[str, Any]:
        return span(
            0,
            trace_id=trace,
            span_id=f"{900 + k:016x}",
            parent_span_id=None if k == 0 else f"{900:016x}",
            name=f"a{k}",
            start_time_unix_nano=T0 + k,
            end_time_unix_nano=T0 + 10**6,
        )

    records = [a(0), span(1, 20000), *(span(i) for i in range(2, 10)), a(1), a(2)]
    write_archive(tmp_path, records, per_object=12)
    assert len(Archive(tmp_path).trace(trace, since=T0 - 10**9)["spans"]) == 3
    for budget in (36_000, 40_000, 44_000):
        archive = Archive(tmp_path, max_bytes=budget)
        assert archive.overview(since=T0 - 10**9)["partial"] is True
        held = [key for key in archive._index.spans if key[0] == trace]
        assert len(held) in (0, 3), (budget, held)  # whole or not at all
