"""Session 18: a new user's walk through the archive commands, from a pip-installed wheel.

* ``--last 24`` (the unit forgotten) read digits as Unix nanoseconds: "the last 24" meant
  "since 1970" and every trace was answered; ``--last 2026-12-01`` was a start time. ``--last``
  now takes an age only (``--since`` still takes any time).
* An archive that holds nothing (``--archive archive/traces`` for ``--archive archive``, an
  empty bucket) answered "no trace matches" exactly like a search that matched nothing; a note
  on stderr now says the archive holds no objects.

Archives are written by the SDK's own LocalArchiveExporter; the bucket is moto's S3 server
over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitchey_trace.analysis._time import is_relative, parse_time
from tests.integration.exporters.servers import S3_ENV, start_moto
from tests.support.analysis_data import TraceData, make_traces
from tests.support.cli import ok, run, write_archive


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, TraceData]:
    data = make_traces()
    return write_archive(tmp_path / "archive", data.records), data


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    server, url = start_moto()
    try:
        yield url
    finally:
        server.stop()


# -- 1. --last takes an age -------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "perf", "errors", "deps", "overview", "show"])
@pytest.mark.parametrize("value", ["24", "0", "2026-12-01", "2026-12-01T12:00:00Z"])
def test_last_without_a_unit_is_a_usage_error(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    root, data = archived
    argv = [command, *([data.orders] if command == "show" else []), "-a", str(root), "--last", value]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    last = err.splitlines()[-1]
    assert "--last" in last
    assert "--since" in last
    assert repr(value) in last


def test_last_24_no_longer_answers_the_whole_archive(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data = archived
    # The traces are a minute old: the last 24 hours hold them, the last 24 ms do not.
    assert data.orders in [
        t["trace_id"] for t in json.loads(ok(capsys, "search", "-a", str(root), "--last", "24h", "--json"))
    ]
    assert json.loads(ok(capsys, "search", "-a", str(root), "--last", "24ms", "--json")) == []
    assert run(capsys, "search", "-a", str(root), "--last", "24", "--json")[0] == 2
    # --since keeps taking any time, Unix nanoseconds as digits included (documented).
    found = json.loads(ok(capsys, "search", "-a", str(root), "--since", "24", "--json"))
    assert data.orders in [t["trace_id"] for t in found]


def test_is_relative_matches_what_parse_time_reads_as_an_age() -> None:
    now = 10**18
    for text in ("24h", " 15m ", "1.5h", "500ms", "2w"):
        assert is_relative(text)
        assert parse_time(text, now_ns=now) < now
    for text in ("24", "", "h", "24hours", "-1h", "2026-12-01", "1e3"):
        assert not is_relative(text)


# -- 2. an archive that holds nothing says so ---------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ("search",),
        ("search", "--last", "1h"),
        ("perf",),
        ("errors",),
        ("deps",),
        ("logs",),
        ("audit",),
        ("overview",),
        ("show", "0123456789abcdef0123456789abcdef"),
        ("show", "01234567"),
    ],
)
def test_a_dataset_folder_given_as_the_archive_gets_a_note(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    root, _ = archived
    wrong = root / "traces"  # the user's mistake: the dataset folder, not the archive's
    assert any(wrong.rglob("*.log.gz"))
    code, _out, err = run(capsys, argv[0], *argv[1:], "-a", str(wrong))
    assert code == (1 if argv[0] == "show" else 0)
    note = err.splitlines()[-1]
    assert note.startswith("pitchey-trace: note: the archive holds no objects")
    assert str(wrong) in note
    assert "traces/" in note


def test_no_note_when_the_archive_holds_objects(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = archived
    # Nothing in the window, or nothing that matches: the archive is fine, no note.
    assert json.loads(ok(capsys, "search", "-a", str(root), "--last", "1ms", "--json")) == []
    assert ok(capsys, "search", "-a", str(root), "--name", "no such span") == "no trace matches\n"
    code, _, err = run(capsys, "show", "0123456789abcdef0123456789abcdef", "-a", str(root))
    assert code == 1
    assert "note" not in err


def test_an_empty_bucket_gets_the_note(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="walk-empty")
    config = tmp_path / "logpush.toml"
    config.write_text(f'endpoint_url = "{s3_endpoint}"\nregion = "us-east-1"\nbucket = "walk-empty"\n')
    code, out, err = run(capsys, "search", "--s3-config", str(config))
    assert (code, out) == (0, "no trace matches\n")
    assert "note: the archive holds no objects (s3://walk-empty/traces" in err


def test_a_bucket_with_objects_gets_no_note(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="walk-full")
    local = write_archive(tmp_path / "archive", make_traces().records)
    for path in local.rglob("*.log.gz"):
        client.put_object(Bucket="walk-full", Key=path.relative_to(local).as_posix(), Body=path.read_bytes())
    config = tmp_path / "logpush.toml"
    config.write_text(f'endpoint_url = "{s3_endpoint}"\nregion = "us-east-1"\nbucket = "walk-full"\n')
    assert (
        ok(capsys, "search", "--s3-config", str(config), "--name", "nothing like it") == "no trace matches\n"
    )
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"  # (moto's credentials, not a real account's)
