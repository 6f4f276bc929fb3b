"""Session 17: what a new user of the archive commands ran into.

* ``--last`` and ``--since`` together: one of them was silently ignored; now a usage error.
* ``perf --step``: a step finer than the rollups' minute printed "every 10s" over per-minute
  points, and without ``--operation`` every operation was merged without saying so.
* ``show`` described a failed HTTP span without an exception as ``error``; ``errors`` as
  ``HTTP 502``.
* An archive directory removed after the ``Archive`` was made answered nothing instead of
  failing.

Every archive here is written by the SDK's own LocalArchiveExporter.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
import pitchey_trace.cli as cli
from pitchey_trace.analysis import Archive
from pitchey_trace.exceptions import ArchiveUnavailable
from pitchey_trace.exporters import InMemoryExporter
from tests.support.analysis_data import TraceData, make_traces
from tests.support.cli import ok, run, write_archive

MS = 1_000_000
MINUTE = 60 * 10**9


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, TraceData]:
    data = make_traces()
    return write_archive(tmp_path / "archive", data.records), data


# -- 1. --last and --since together ----------------------------------------------------------------
WINDOWED = ["search", "perf", "errors", "deps", "audit", "logs", "overview"]


@pytest.mark.parametrize("command", [*WINDOWED, "show"])
@pytest.mark.parametrize("order", ["since-first", "last-first"])
def test_last_and_since_together_are_a_usage_error(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], command: str, order: str
) -> None:
    root, data = archived
    both = ["--since", "1s", "--last", "2h"] if order == "since-first" else ["--last", "2h", "--since", "1s"]
    argv = [command, *([data.orders] if command == "show" else []), "-a", str(root), *both]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "--last" in err
    assert "--since" in err
    assert "not allowed with" in err


def test_last_or_since_alone_still_work(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data = archived
    for flag in ("--last", "--since"):
        found = json.loads(ok(capsys, "search", "-a", str(root), flag, "2h", "--json"))
        assert data.orders in [t["trace_id"] for t in found]
        assert json.loads(ok(capsys, "search", "-a", str(root), flag, "1s", "--json")) == []
    assert ok(capsys, "show", data.orders, "-a", str(root), "--last", "2h").startswith(f"trace {data.orders}")


# -- 2. perf --step: the resolution and what is merged -------------------------------------------
def test_step_finer_than_the_rollups_minute_says_per_minute(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = archived
    argv = ["perf", "-a", str(root), "--operation", "SELECT order_items", "--step", "10s"]
    out = json.loads(ok(capsys, *argv, "--json"))
    assert out["source"] == "rollups"
    assert out["step_s"] == 10  # what was asked
    assert out["point_s"] == 60  # what each point is: one minute, the rollups' resolution
    assert out["points"]
    assert all(p["start_unix_nano"] % MINUTE == 0 for p in out["points"])
    text = ok(capsys, *argv)
    assert "every 10s" not in text
    assert text.splitlines()[0].startswith("from (UTC), every 60s")
    assert "rollups are per minute" in text
    assert "--step 10s" in text


def test_step_not_a_whole_number_of_minutes_rounds_up_with_rollups(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = archived
    out = json.loads(
        ok(capsys, "perf", "-a", str(root), "--operation", "SELECT order_items", "--step", "90s", "--json")
    )
    assert (out["step_s"], out["point_s"]) == (90, 120)
    assert all(p["start_unix_nano"] % (120 * 10**9) == 0 for p in out["points"])
    assert sum(p["count"] for p in out["points"]) == 6
    # a whole number of minutes is taken as it is
    exact = json.loads(
        ok(capsys, "perf", "-a", str(root), "--operation", "SELECT order_items", "--step", "2m", "--json")
    )
    assert (exact["step_s"], exact["point_s"]) == (120, 120)


def test_step_from_spans_keeps_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_traces()
    root = write_archive(tmp_path / "archive", [r for r in data.records if r.get("type") != "rollup"])
    argv = ["perf", "-a", str(root), "--operation", "SELECT order_items", "--step", "10s"]
    out = json.loads(ok(capsys, *argv, "--json"))
    assert (out["source"], out["step_s"], out["point_s"]) == ("spans", 10, 10)
    text = ok(capsys, *argv)
    assert text.splitlines()[0].startswith("from (UTC), every 10s")
    assert "per minute" not in text
    assert "together" not in text  # one operation: nothing merged


def test_step_without_operation_says_what_is_merged(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = archived
    rows = json.loads(ok(capsys, "perf", "-a", str(root), "--json"))
    out = json.loads(ok(capsys, "perf", "-a", str(root), "--step", "1m", "--json"))
    merged = {(o["service"], o["operation"], o["kind"]) for o in out["operations"]}
    assert merged == {(r["service"], r["operation"], r["kind"]) for r in rows}
    assert len(merged) > 1
    text = ok(capsys, "perf", "-a", str(root), "--step", "1m")
    services = {r["service"] for r in rows}
    kinds = ", ".join(sorted({r["kind"] for r in rows}))
    assert f"all {len(merged)} operations of {len(services)} services together" in text
    assert kinds in text
    assert "--operation" in text
    # one service: the same, of that service
    text = ok(capsys, "perf", "-a", str(root), "--step", "1m", "--service", "payments")
    assert "together" not in text  # its one operation: nothing merged
    one = json.loads(ok(capsys, "perf", "-a", str(root), "--operation", "SELECT order_items", "--json"))
    assert [o["operation"] for o in one["operations"]] == ["SELECT order_items"]


def test_operation_of_several_services_or_kinds_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.time_ns() - MINUTE
    records: list[dict[str, Any]] = []
    for service, kind in (("front", pt.SpanKind.CLIENT), ("back", pt.SpanKind.SERVER)):
        mem = InMemoryExporter()
        pt.configure(service=service, exporters=[mem], sample_rate=1.0)
        pt.start_span("GET", kind=kind, start_time_ns=t0).end(t0 + 5 * MS)
        assert pt.force_flush(10)
        pt.shutdown(5)
        records += mem.records
    root = write_archive(tmp_path / "archive", records)
    text = ok(capsys, "perf", "-a", str(root), "--operation", "GET")
    assert "2 operations named GET together" in text
    assert "back server" in text
    assert "front client" in text
    assert "--service picks one service" in text


# -- 3. show describes a failed HTTP span as errors does -------------------------------------------
def _http_502(tmp_path: Path) -> tuple[Path, str]:
    t0 = time.time_ns() - MINUTE
    mem = InMemoryExporter()
    pt.configure(service="shop", exporters=[mem], sample_rate=1.0)
    root = pt.start_span(
        "GET /orders/{oid}",
        kind=pt.SpanKind.SERVER,
        start_time_ns=t0,
        attributes={"http.request.method": "GET", "http.response.status_code": 502},
    )
    root.set_status("error")  # a bad gateway: no exception, no message
    root.end(t0 + 20 * MS)
    assert pt.force_flush(10)
    pt.shutdown(5)
    return write_archive(tmp_path / "archive", mem.records), root.trace_id_hex


def test_show_describes_a_failed_http_span_as_errors_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, trace_id = _http_502(tmp_path)
    groups = json.loads(ok(capsys, "errors", "-a", str(root), "--json"))
    assert [(g["name"], g["exception_type"], g["message"]) for g in groups] == [
        ("GET /orders/{oid}", None, "HTTP 502")
    ]
    out = ok(capsys, "show", trace_id, "-a", str(root))
    assert "error in GET /orders/{oid}: HTTP 502\n" in out
    assert ": error\n" not in out
    analysis = Archive(root).analyze(trace_id)
    assert analysis is not None
    assert [e["message"] for e in analysis["errors"]] == ["HTTP 502"]


def test_show_and_errors_agree_on_exceptions(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data = archived
    analysis = Archive(root).analyze(data.payment)
    assert analysis is not None
    assert [(e["exception_type"], e["message"]) for e in analysis["errors"]] == [
        ("ValueError", "card declined for order 4242")
    ]
    out = ok(capsys, "show", data.payment, "-a", str(root))
    assert "error in POST /charge: ValueError card declined for order 4242\n" in out


# -- 4. an archive directory removed after the Archive was made ------------------------------------
def test_removed_directory_is_unavailable_not_empty(archived: tuple[Path, TraceData]) -> None:
    root, _ = archived
    archive = Archive(root)
    shutil.rmtree(root)
    with pytest.raises(ArchiveUnavailable, match=str(root)):
        archive.search()
    with pytest.raises(ArchiveUnavailable):
        archive.performance()
    with pytest.raises(ValueError, match="archive directory not found"):
        Archive(root)  # (still: a directory missing when the Archive is made)


def test_removed_directory_of_several_is_unavailable(tmp_path: Path) -> None:
    data = make_traces()
    one = write_archive(tmp_path / "one", data.records)
    two = write_archive(tmp_path / "two", data.records)
    archive = Archive([one, two])
    shutil.rmtree(two)
    with pytest.raises(ArchiveUnavailable, match="two"):
        archive.overview()


def test_removed_directory_exits_2_on_the_command_line(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _data = archived
    made = cli._archive

    def then_removed(args: Any) -> Any:
        archive = made(args)
        shutil.rmtree(root)  # gone between making the Archive and reading it
        return archive

    monkeypatch.setattr(cli, "_archive", then_removed)
    code, out, err = run(capsys, "search", "-a", str(root))
    assert (code, out) == (2, "")
    assert err.startswith("pitchey-trace: error: ")
    assert str(root) in err
    assert len(err.splitlines()) == 1
