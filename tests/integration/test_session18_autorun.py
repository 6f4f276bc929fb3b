"""``pitchey-trace run``, session 18 review: a bad variable is one clear line, never a traceback
labelled an internal error, and can be checked before the program starts
(``pitchey_trace.auto._check_environment``, what the command needs to call)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pitchey_trace
from pitchey_trace import _config
from pitchey_trace.auto import _check_environment
from pitchey_trace.exceptions import ConfigurationError

pytestmark = pytest.mark.integration

SHIM = Path(pitchey_trace.__file__).resolve().parent / "_autorun"
PROGRAM = """
import sys, pitchey_trace as pt
from pitchey_trace import _config
with pt.span("work"):
    pass
print("ran", _config.is_configured(), sys.argv[1:], flush=True)
sys.exit(3)
"""

BAD = [
    ({"PITCHEY_TRACE_SAMPLE_RATE": "abc"}, "PITCHEY_TRACE_SAMPLE_RATE must be a number, got 'abc'"),
    ({"OTEL_PROPAGATORS": "xray"}, "OTEL_PROPAGATORS: unknown propagator 'xray'"),
    ({"PITCHEY_TRACE_DISABLED": "maybe"}, "PITCHEY_TRACE_DISABLED must be true or false, got 'maybe'"),
    (
        {"PITCHEY_TRACE_AUTO_EXCLUDE": "redis,mongo"},
        "PITCHEY_TRACE_AUTO_EXCLUDE: unknown libraries ['mongo']",
    ),
]


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    return {**environ, **extra}


@pytest.mark.parametrize(("variables", "message"), BAD)
def test_a_bad_variable_in_the_programs_environment_is_one_clear_line(
    variables: dict[str, str], message: str, tmp_path: Path
) -> None:
    """What the shim does in the program (a variable the command did not see, e.g. set for a
    child process): one line naming the variable; the program runs, untraced, with its exit
    status and arguments."""
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    environ = clean_environ(PYTHONPATH=str(SHIM), **variables)
    proc = subprocess.run(
        [sys.executable, str(script), "a", "--b"], capture_output=True, text=True, timeout=60, env=environ
    )
    assert proc.returncode == 3
    assert proc.stdout == "ran False ['a', '--b']\n"
    assert "Traceback" not in proc.stderr
    assert "internal error" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("pitchey-trace run: tracing not started: ")
    assert message in line


def test_a_good_environment_still_traces_the_program(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    environ = clean_environ(PYTHONPATH=str(SHIM), PITCHEY_TRACE_EXPORTER="console")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=environ
    )
    assert proc.returncode == 3
    assert proc.stdout.splitlines()[0] == "ran True []"
    assert '"name":"work"' in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        *BAD,
        (
            {"PITCHEY_TRACE_LOG_EVENT_LEVEL": "LOUD"},
            "PITCHEY_TRACE_LOG_EVENT_LEVEL: unknown log level 'LOUD'",
        ),
        ({"PITCHEY_TRACE_EXPORT_LOGS": "LOUD"}, "PITCHEY_TRACE_EXPORT_LOGS: unknown log level 'LOUD'"),
        ({"PITCHEY_TRACE_FLUSH_ON_SIGTERM": "maybe"}, "PITCHEY_TRACE_FLUSH_ON_SIGTERM must be true or false"),
        ({"PITCHEY_TRACE_EXPORTER": "jaeger"}, "PITCHEY_TRACE_EXPORTER: unknown exporter 'jaeger'"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP_MAX_QUEUE_SIZE must be a positive integer"),
    ],
)
def test_check_environment_refuses_what_the_program_would_refuse(
    variables: dict[str, str], message: str
) -> None:
    before = dict(os.environ)
    with pytest.raises(ConfigurationError) as refused:
        _check_environment(clean_environ(**variables))
    assert message in str(refused.value)
    assert dict(os.environ) == before  # this process's environment is left as it was
    assert not _config.is_configured()


def test_check_environment_accepts_a_good_one_and_leaves_this_process_alone() -> None:
    before = dict(os.environ)
    handler = signal.getsignal(signal.SIGTERM)
    _check_environment(
        clean_environ(
            PITCHEY_TRACE_EXPORTER="console",
            PITCHEY_TRACE_SAMPLE_RATE="0.5",
            PITCHEY_TRACE_FLUSH_ON_SIGTERM="true",
            PITCHEY_TRACE_AUTO_EXCLUDE="fastapi, redis",
            PITCHEY_TRACE_EXPORT_LOGS="info",
        )
    )
    assert dict(os.environ) == before
    assert not _config.is_configured()  # tried, then shut down
    assert signal.getsignal(signal.SIGTERM) == handler  # no SIGTERM handler left behind


@pytest.mark.parametrize(("variables", "message"), BAD)
def test_run_refuses_a_bad_variable_before_starting_the_program(
    variables: dict[str, str], message: str, tmp_path: Path
) -> None:
    """``pitchey-trace run`` checks the environment the program would get: one line, exit 2,
    and the program is not started (it would have run untraced)."""
    marker = tmp_path / "started"
    script = tmp_path / "app.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    cli = Path(sys.executable).with_name("pitchey-trace")
    proc = subprocess.run(
        [str(cli), "run", "--", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(**variables),
    )
    assert proc.returncode == 2
    assert not marker.exists()
    [line] = proc.stderr.splitlines()
    assert line.startswith("pitchey-trace: error: ")
    assert message in line
