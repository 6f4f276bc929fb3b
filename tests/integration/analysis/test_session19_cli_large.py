"""``pitchey-trace show`` of a big trace, read from an archive the real LocalArchiveExporter
wrote: the output is bounded (counts and sizes, never times)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import ok, run, write_archive
from tests.unit.test_session19_engine_large import TID, _logs, _records


@pytest.fixture
def big(tmp_path: Path) -> Path:
    # 2,500 spans with 10 kB values, and 30 log lines
    return write_archive(tmp_path / "archive", _records(2500, value="v" * 10_000) + _logs(30))


def test_show_prints_the_first_spans_and_says_how_many_more(
    big: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(capsys, "show", TID, "-a", str(big))
    bars = [line for line in out.splitlines() if line.startswith("|")]
    assert len(bars) == 1000
    assert "... 1,500 more spans not shown (--limit N shows more, --all every one)" in out
    assert len(out) < 200_000
    out = ok(capsys, "show", TID, "-a", str(big), "--limit", "10")
    assert len([line for line in out.splitlines() if line.startswith("|")]) == 10
    assert "... 2,490 more spans not shown" in out
    assert "logs (30):" in out
    assert "... 20 more log lines not shown" in out
    out = ok(capsys, "show", TID, "-a", str(big), "--all")
    assert len([line for line in out.splitlines() if line.startswith("|")]) == 2500
    assert "more spans not shown" not in out


def test_show_json_is_cut_too_and_says_so_on_stderr(big: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "show", TID, "-a", str(big), "--json", "--limit", "50")
    assert code == 0
    assert err == "pitchey-trace: note: 50 of 2,500 spans printed (--limit N prints more, --all every one)\n"
    data = json.loads(out)
    view = data["trace"]
    assert (len(view["spans"]), view["span_count"], len(view["logs"]), view["log_count"]) == (
        50,
        2500,
        30,
        30,
    )
    assert len(data["analysis"]["critical_path"]) <= 50
    # 10 kB values are cut at 4,000 characters, their whole length under "clipped"
    assert {len(s["attributes"]["v"]) for s in view["spans"][1:]} == {4000}
    assert view["spans"][1]["clipped"] == {"attributes": {"v": 10_000}}
    assert len(out) < 50 * 6000
    code, out, err = run(capsys, "show", TID, "-a", str(big), "--json", "--limit", "5", "--full-values")
    assert code == 0
    spans = json.loads(out)["trace"]["spans"]
    assert {len(s["attributes"]["v"]) for s in spans[1:]} == {10_000}
    assert all("clipped" not in s for s in spans)
    code, out, err = run(capsys, "show", TID, "-a", str(big), "--json", "--all")
    assert (code, err) == (0, "")
    assert len(json.loads(out)["trace"]["spans"]) == 2500


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "argument --limit: expected a whole number from 1, got '0'"),
        (["--limit", "ten"], "argument --limit: expected a whole number from 1, got 'ten'"),
        (["--limit", "5", "--all"], "argument --all: not allowed with argument --limit"),
    ],
)
def test_show_refuses_bad_limits(
    big: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "show", TID, "-a", str(big), *argv)
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == f"pitchey-trace show: error: {message}"
