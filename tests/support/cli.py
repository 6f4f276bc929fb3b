"""Helpers of the ``pitchey-trace`` CLI tests: write an archive, run a command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pitchey_trace.cli as cli
from pitchey_trace.exporters import LocalArchiveExporter


def write_archive(root: Path, records: list[dict[str, Any]]) -> Path:
    """``records`` written to an archive at ``root`` by the SDK's LocalArchiveExporter; ``root``."""
    exporter = LocalArchiveExporter(root)
    assert exporter.export(records)
    exporter.shutdown()
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit code as the shell sees it (argparse's usage errors included), stdout, stderr."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The stdout of a command that must succeed without writing to stderr."""
    code, out, err = run(capsys, *argv)
    if (code, err) != (0, ""):
        pytest.fail(f"exit {code}, stderr {err!r}")
    return out
