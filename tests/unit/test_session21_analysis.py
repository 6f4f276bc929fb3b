"""Hostile archives: records whose ids and containers have the wrong form, lines far longer than
any record, and symbolic links out of the archive directory. The engine skips or repairs them
and counts what it skipped; it never answers what it cannot open, nor reads outside the archive."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

from pitchey_trace.analysis import Archive, _reader
from pitchey_trace.analysis._reader import decode_object

T0 = 1_750_000_000 * 10**9
DAY = "20250615"  # (T0's day)
NAME = f"{DAY}T000000Z_{DAY}T000001Z_abc.log.gz"


def span(trace_id: str, span_id: str, parent: str | None = None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": "op",
        "kind": "server",
        "service": "svc",
        "start_time_unix_nano": T0,
        "end_time_unix_nano": T0 + 10**6,
        "duration_ms": 1.0,
        "status": "ok",
        "status_message": None,
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {},
    }
    record.update(fields)
    return record


def write(folder: Path, name: str, records: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))
    return path


# -- trace and span ids ------------------------------------------------------------------------------


def test_a_span_whose_trace_id_is_not_hex_is_unusable_and_counted() -> None:
    # Listed, it could not be opened: the API and the CLI take only 32 hex characters.
    archive = Archive.from_records(
        [span("z" * 32, "1" * 16), span("<script>x</script>" + "0" * 14, "2" * 16), span("a" * 32, "3" * 16)]
    )
    assert [t["trace_id"] for t in archive.search(limit=100)] == ["a" * 32]
    assert archive.read_stats["unusable_records"] == 2


def test_an_uppercase_trace_id_is_the_same_trace_as_its_lowercase_form() -> None:
    root = span("AB" * 16, "AAAAAAAAAAAAAAAA", end_time_unix_nano=T0 + 10 * 10**6, duration_ms=10.0)
    child = span("ab" * 16, "bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa", name="child")
    archive = Archive.from_records([root, child])

    assert [t["trace_id"] for t in archive.search(limit=100)] == ["ab" * 16]
    view = archive.trace("AB" * 16)
    assert view is not None
    assert [(s["span_id"], s["depth"]) for s in view["spans"]] == [("a" * 16, 0), ("b" * 16, 1)]
    assert view["missing_parents"] == []


# -- containers of the wrong type -------------------------------------------------------------------


def test_links_resource_and_event_attributes_of_the_wrong_type_are_repaired() -> None:
    good_link = {"trace_id": "c" * 32, "span_id": "c" * 16, "attributes": {"k": "v"}}
    archive = Archive.from_records(
        [
            span(
                "a" * 32,
                "1" * 16,
                links=[None, 5, "x", good_link, {"trace_id": "d" * 32, "attributes": [1, 2]}],
                resource="service.name=svc",
                events=[{"name": "e", "time_unix_nano": T0, "attributes": "not a map"}, None],
            ),
            span("b" * 32, "2" * 16, links=5, resource=[1, 2]),
        ]
    )
    a = archive.trace("a" * 32)
    b = archive.trace("b" * 32)
    assert a is not None
    assert b is not None
    [sa], [sb] = a["spans"], b["spans"]
    assert sa["links"] == [good_link, {"trace_id": "d" * 32, "attributes": {}}]
    assert sa["resource"] == {}
    assert sa["events"] == [{"name": "e", "time_unix_nano": T0, "attributes": {}}]
    assert sb["links"] == []
    assert sb["resource"] == {}


def test_an_archived_clipped_field_is_not_passed_on() -> None:
    # "clipped" is what the API says it cut: an archived one would make the page claim cuts.
    archive = Archive.from_records([span("a" * 32, "1" * 16, clipped={"attributes": {"k": 10**6}})])
    view = archive.trace("a" * 32)
    assert view is not None
    assert "clipped" not in view["spans"][0]


# -- lines far longer than a record -----------------------------------------------------------------


def _one_long_line_then_a_span(length: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = c.compress(b'{"type":"span","name":"')
    for _ in range(length >> 20):
        data += c.compress(b"x" * (1 << 20))
    data += c.compress(b'"}\n' + json.dumps(span("a" * 32, "1" * 16)).encode() + b"\n")
    return data + c.flush()


def test_a_line_longer_than_the_limit_is_a_bad_line_read_in_bounded_memory() -> None:
    # A gzip bomb of one line: 80 MiB of text in about 80 kB. Held whole, it cost the reader
    # more than ten times its size; now only up to the limit is held before it is passed over.
    data = _one_long_line_then_a_span(80 << 20)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        records, bad = decode_object(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bad == 1
    assert [r["span_id"] for r in records] == ["1" * 16]  # the line after it is read
    assert peak < 2 * _reader.MAX_LINE_BYTES


def test_lines_up_to_the_limit_are_read(monkeypatch: Any) -> None:
    monkeypatch.setattr(_reader, "MAX_LINE_BYTES", 4096)
    fits = json.dumps({"type": "log", "body": "y" * 3000}).encode()
    too_long = json.dumps({"type": "log", "body": "z" * 5000}).encode()
    # (in one chunk, and torn at the end of a truncated object)
    records, bad = decode_object(gzip.compress(fits + b"\n" + too_long + b"\n" + fits + b"\n"))
    assert (len(records), bad) == (2, 1)
    records, bad = decode_object(gzip.compress(fits + b"\n" + too_long))
    assert (len(records), bad) == (1, 1)


# -- symbolic links out of the archive ----------------------------------------------------------------


def test_symbolic_links_out_of_the_archive_are_not_read_and_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    day = root / "traces" / DAY
    write(day, NAME, [span("a" * 32, "1" * 16)])
    secret = write(tmp_path / "elsewhere", NAME, [span("e" * 32, "e" * 16, name="SECRET")])
    os.symlink(secret, day / f"{DAY}T000000Z_{DAY}T000001Z_link.log.gz")
    os.symlink(tmp_path / "elsewhere", root / "traces" / "20250616")  # a day folder
    # a link that stays inside the archive is read as the file it names
    write(root / "spare", NAME, [span("b" * 32, "2" * 16)])
    os.symlink(root / "spare" / NAME, day / f"{DAY}T000000Z_{DAY}T000001Z_inner.log.gz")

    archive = Archive(root)
    assert sorted(t["trace_id"] for t in archive.search(limit=100)) == ["a" * 32, "b" * 32]
    assert archive.search(name="SECRET") == []
    assert archive.read_stats["unreadable_objects"] == 2
    assert archive.read_stats["objects"] == 2


def test_a_dataset_folder_that_is_a_link_is_still_read(tmp_path: Path) -> None:
    # (an operator may keep a dataset on another disk: the folder the dataset names is trusted)
    write(tmp_path / "disk2" / "traces" / DAY, NAME, [span("a" * 32, "1" * 16)])
    root = tmp_path / "archive"
    root.mkdir()
    os.symlink(tmp_path / "disk2" / "traces", root / "traces")
    archive = Archive(root)
    assert [t["trace_id"] for t in archive.search(limit=100)] == ["a" * 32]
    assert archive.read_stats["unreadable_objects"] == 0


def test_a_long_bad_attr_filter_is_clipped_in_the_message() -> None:
    """The attr filter's error echoed the whole parameter (the other messages clip at 40)."""
    from starlette.testclient import TestClient

    from pitchey_trace.analysis import Archive
    from pitchey_trace.analysis.api import create_app

    with TestClient(create_app(Archive.from_records([]))) as client:
        answer = client.get("/api/search", params={"attr": "x" * 5000})
    assert answer.status_code == 400
    assert "attr must look like key=value" in answer.json()["error"]
    assert len(answer.json()["error"]) < 200
