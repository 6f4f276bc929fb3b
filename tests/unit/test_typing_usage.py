"""The typed usage file (tests/typing/usage.py) passes ``mypy --strict``.

One mypy run (a few seconds, the only slow-ish unit test). The usage file pins return types
with ``assert_type`` and rejected misuses with ``# type: ignore[code]``; ``--strict`` turns an
ignore that is no longer needed into an error, so both directions are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USAGE = ROOT / "tests" / "typing" / "usage.py"


def test_usage_file_passes_mypy_strict(tmp_path: Path) -> None:
    assert "assert_type(" in USAGE.read_text("utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "mypy-cache"), str(USAGE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
