"""``pitchey-trace run`` refuses, before the program starts, the option values the program's
``configure()`` would refuse or ignore; the archive commands check ``--max-spans`` and the
trace id of ``show`` with one clear line (exit 2)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pitchey_trace import cli


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    """Records the exec of ``run`` instead of replacing the test process."""
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_exec(file: str, argv: list[str], env: dict[str, str]) -> Any:
        calls.append((file, argv, env))

    monkeypatch.setattr(os, "execvpe", fake_exec)
    return calls


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--exporter", "jaeger"],
            "--exporter 'jaeger': expected console, console-pretty, otlp, zipkin, archive, none",
        ),
        (["--exporter", "otlp,foo"], "--exporter 'otlp,foo'"),
        (["--exporter", ""], "--exporter ''"),
        (["--metrics", "prometheus"], "--metrics 'prometheus': expected otlp"),
        (["--logs", "console"], "--logs 'console': expected otlp"),
        (["--export-logs", "LOUD"], "--export-logs: unknown log level 'LOUD'"),
    ],
)
def test_run_refuses_values_configure_would_refuse(
    args: list[str],
    expected: str,
    started: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["run", *args, "--", "python", "app.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pitchey-trace: error: run: ")
    assert expected in err
    assert "Traceback" not in err
    assert started == []  # the program was not started (untraced)


def test_run_passes_valid_values_to_the_program(started: list[Any]) -> None:
    argv = ["--exporter", "OTLP, console", "--metrics", "otlp", "--logs", "none", "--export-logs", "info"]
    assert cli.main(["run", *argv, "--", "python", "app.py"]) == 0
    [(file, program, env)] = started
    assert (file, program) == ("python", ["python", "app.py"])
    assert env["PITCHEY_TRACE_EXPORTER"] == "OTLP, console"
    assert (env["OTEL_METRICS_EXPORTER"], env["OTEL_LOGS_EXPORTER"]) == ("otlp", "none")
    assert env["PITCHEY_TRACE_EXPORT_LOGS"] == "info"
    started.clear()
    assert cli.main(["run", "--exporter", "none", "--export-logs", "off", "--", "python", "app.py"]) == 0
    assert len(started) == 1


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_spans_is_a_usage_error(value: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "--archive", str(tmp_path), "--max-spans", value])
    assert exc.value.code == 2
    assert f"argument --max-spans: expected a whole number from 1, got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("trace_id", ["xyz", "1234567", "g" * 32, "0" * 33])
def test_show_names_what_a_trace_id_is(
    trace_id: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["show", trace_id, "--archive", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "pitchey-trace: error: a trace id is 32 hex characters (or the first 8 or more of them), "
        f"got {trace_id!r}\n"
    )


def test_serve_has_no_json_flag(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """(Its answers are JSON over HTTP: a --json that did nothing was misleading.)"""
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--archive", str(tmp_path), "--json"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --json" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "65", "x"])
def test_s3_concurrency_is_checked(value: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "--s3-config", str(tmp_path / "c.toml"), "--s3-concurrency", value])
    assert exc.value.code == 2
    assert "--s3-concurrency: expected a whole number from 1 to 64" in capsys.readouterr().err


def test_s3_concurrency_reaches_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace.analysis import S3Source

    seen: dict[str, Any] = {}

    def from_config(config: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(S3Source, "from_config", staticmethod(from_config))
    args = cli.build_parser().parse_args(["search", "--s3-config", "c.toml", "--s3-concurrency", "3"])
    with pytest.raises(RuntimeError, match="stop here"):
        cli._archive(args)
    assert seen == {"cache_dir": None, "concurrency": 3}
