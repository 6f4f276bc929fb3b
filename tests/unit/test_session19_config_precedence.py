"""Session 19: configuration precedence. What the code chose wins over the environment where
configuration.md says so, and a switch with a typo is an error, not silently ignored."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pitchey_trace as pt
from pitchey_trace import _config, _resource, propagation
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import ConfigurationError

ROOT = Path(pt.__file__).resolve().parent.parent
SHIM = ROOT / "pitchey_trace" / "_autorun"
CONFIG_MD = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in list(os.environ):
        if var.startswith(("PITCHEY_TRACE_", "OTEL_")) and var != "PITCHEY_TRACE_PURE_PYTHON":
            monkeypatch.delenv(var)
    propagation.set_propagators(None)
    yield
    pt.shutdown(5.0)
    propagation.set_propagators(None)


def kinds() -> list[type]:
    return [type(p) for p in pt.get_propagators()]


def injected() -> dict[str, str]:
    headers: dict[str, str] = {}
    with pt.span("op"):
        pt.inject(headers)
    return headers


# -- OTEL_PROPAGATORS and set_propagators() --------------------------------------------------------
@pytest.mark.parametrize(
    "chosen",
    [
        lambda: [propagation.W3CPropagator()],
        lambda: [propagation.TraceContextPropagator(), propagation.BaggagePropagator()],
    ],
    ids=["W3CPropagator", "tracecontext+baggage"],
)
def test_a_default_list_chosen_in_code_wins_over_otel_propagators(
    chosen: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configuration.md: the variable applies "unless the code chose its propagators" - also
    when the code's choice equals the default (which is stored as "no custom propagators")."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    propagation.set_propagators(chosen())  # type: ignore[operator]
    pt.configure(exporters=[])
    assert kinds() == [propagation.W3CPropagator]
    headers = injected()
    assert "traceparent" in headers
    assert "b3" not in headers


def test_a_code_choice_is_not_refused_for_a_variable_it_does_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The code chose: OTEL_PROPAGATORS is not applied, so a name only another SDK knows there
    does not fail configure() (the same as for a non-default choice)."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "xray")
    propagation.set_propagators([propagation.W3CPropagator()])
    pt.configure(exporters=[])
    assert kinds() == [propagation.W3CPropagator]
    propagation.set_propagators([propagation.B3Propagator()])
    pt.configure(exporters=[])
    assert kinds() == [propagation.B3Propagator]


def test_otel_propagators_is_read_again_at_every_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code never chose: each configure() applies the variable as it is then; a value
    applied by an earlier call is not mistaken for the code's choice."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    pt.configure(exporters=[])
    assert kinds() == [propagation.B3Propagator]
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext")
    pt.configure(exporters=[])
    assert kinds() == [propagation.TraceContextPropagator]
    monkeypatch.delenv("OTEL_PROPAGATORS")
    pt.configure(exporters=[])
    assert kinds() == [propagation.W3CPropagator]  # the default again
    assert "traceparent" in injected()


def test_set_propagators_none_undoes_the_codes_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    propagation.set_propagators([propagation.W3CPropagator()])
    propagation.set_propagators(None)
    assert kinds() == [propagation.W3CPropagator]  # the default at once ...
    pt.configure(exporters=[])
    assert kinds() == [propagation.B3Propagator]  # ... and the variable applies again
    assert "x-b3-traceid" in injected()


def test_a_refused_set_propagators_keeps_the_previous_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    propagation.set_propagators([propagation.W3CPropagator()])
    with pytest.raises(TypeError, match="not a propagator"):
        propagation.set_propagators([object()])  # type: ignore[list-item]
    pt.configure(exporters=[])
    assert kinds() == [propagation.W3CPropagator]


def test_an_invalid_otel_propagators_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    pt.configure(exporters=[])
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,xray")
    with pytest.raises(ConfigurationError, match="OTEL_PROPAGATORS: unknown propagator 'xray'"):
        pt.configure(exporters=[])
    assert kinds() == [propagation.B3Propagator]


def test_configuration_md_says_how_otel_propagators_and_set_propagators_combine() -> None:
    assert "applied at every `configure()` (read again each time)" in CONFIG_MD
    assert "even the default `[W3CPropagator()]`; `set_propagators(None)` undoes that choice" in CONFIG_MD


# -- PITCHEY_TRACE_RESOURCE_DETECTION --------------------------------------------------------------
def resource() -> dict[str, object]:
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    return dict(pipeline.resource)


@pytest.mark.parametrize("typo", ["flase", "disabled", "nope", "ture"])
def test_a_resource_detection_typo_is_a_configuration_error(
    typo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As PITCHEY_TRACE_KEEP_ERRORS, PITCHEY_TRACE_DISABLED...: not silently left on."""
    pt.configure(exporters=[])
    before = get_tracer().pipeline
    monkeypatch.setenv("PITCHEY_TRACE_RESOURCE_DETECTION", typo)
    with pytest.raises(
        ConfigurationError, match=f"PITCHEY_TRACE_RESOURCE_DETECTION must be true or false, got '{typo}'"
    ):
        pt.configure(exporters=[])
    assert get_tracer().pipeline is before  # a refused configure() changes nothing


@pytest.mark.parametrize(
    ("value", "detected"),
    [
        ("false", False),
        (" OFF ", False),
        ("0", False),
        ("No", False),
        ("true", True),
        ("1", True),
        ("YES", True),
        ("on", True),
        ("", True),
    ],
)
def test_resource_detection_values(value: str, detected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_RESOURCE_DETECTION", value)
    pt.configure(exporters=[])
    assert ("service.instance.id" in resource()) is detected
    assert _resource.enabled() is detected


def test_resource_enabled_never_raises_on_a_value_set_after_configure() -> None:
    """enabled() runs where the resource is built: a bad value there (configure() refuses it
    first) keeps the default, detection on."""
    assert _resource.enabled({"PITCHEY_TRACE_RESOURCE_DETECTION": "flase"}) is True
    assert _resource.enabled({"PITCHEY_TRACE_RESOURCE_DETECTION": "Off"}) is False


def test_configuration_md_says_a_resource_detection_typo_is_refused() -> None:
    assert "any other value (a typo such as `flase`) is a `ConfigurationError` at `configure()`" in CONFIG_MD
    assert "any other value leaves detection on, without an error" not in CONFIG_MD


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:
        environ["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    return {**environ, **extra}


def test_pitchey_trace_run_refuses_a_resource_detection_typo_before_starting(tmp_path: Path) -> None:
    """One line and exit 2 from the command; the program is not started."""
    marker = tmp_path / "started"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pitchey_trace.cli", "run", "--",
            sys.executable, "-c", f"open({str(marker)!r}, 'w').close()",
        ],
        env=clean_environ(PITCHEY_TRACE_RESOURCE_DETECTION="flase", PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert not marker.exists()
    [line] = proc.stderr.splitlines()
    assert "PITCHEY_TRACE_RESOURCE_DETECTION must be true or false, got 'flase'" in line
    assert "Traceback" not in proc.stderr


def test_a_resource_detection_typo_in_the_programs_environment_is_one_line(tmp_path: Path) -> None:
    """Set past the command (a child's environment): the shim says it in one line and the
    program runs, untraced."""
    script = tmp_path / "app.py"
    script.write_text("from pitchey_trace import _config\nprint('ran', _config.is_configured())\n")
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=clean_environ(PITCHEY_TRACE_RESOURCE_DETECTION="flase", PYTHONPATH=f"{SHIM}{os.pathsep}{ROOT}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout == "ran False\n"
    [line] = proc.stderr.splitlines()
    assert line.startswith("pitchey-trace run: tracing not started: ")
    assert "PITCHEY_TRACE_RESOURCE_DETECTION must be true or false, got 'flase'" in line


def test_check_environment_refuses_a_resource_detection_typo() -> None:
    from pitchey_trace.auto import _check_environment

    with pytest.raises(ConfigurationError, match="PITCHEY_TRACE_RESOURCE_DETECTION"):
        _check_environment(clean_environ(PITCHEY_TRACE_RESOURCE_DETECTION="flase"))
    assert not _config.is_configured()


@pytest.mark.parametrize(
    ("value", "pure"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("no", False),
     ("off", False), ("", False), ("flase", False)],
)  # fmt: skip
def test_pure_python_switch_values(value: str, pure: bool, tmp_path: Path) -> None:
    """Only a true value turns the C accelerator off ("false", "no" and "off" did too)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from pitchey_trace import _accel; print(_accel.build_span_records is None)"],
        env={**clean_environ(PYTHONPATH=str(ROOT)), "PITCHEY_TRACE_PURE_PYTHON": value},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout == f"{pure}\n"


def test_run_turns_the_sigterm_flush_on_when_the_variable_is_empty(tmp_path: Path) -> None:
    """An empty value is unset for configure(): `run` sets its default then too (it kept the
    empty value, so the flush on SIGTERM was off)."""
    probe = (
        "import signal; from pitchey_trace import _config; "
        "print(signal.getsignal(signal.SIGTERM) is _config._flush_then_die)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pitchey_trace.cli", "run", "--", sys.executable, "-c", probe],
        env=clean_environ(
            PITCHEY_TRACE_FLUSH_ON_SIGTERM="", PITCHEY_TRACE_EXPORTER="none", PYTHONPATH=str(ROOT)
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "True\n", proc.stderr


def test_an_otlp_insecure_typo_means_tls_and_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pitchey_trace.exporters.otlp import _resolve_grpc_endpoint

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "ture")
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert _resolve_grpc_endpoint("collector:4317") == "https://collector:4317"
    assert any("INSECURE='ture' is not true or false" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "TRUE")
    assert _resolve_grpc_endpoint("collector:4317") == "http://collector:4317"


def test_an_otel_logging_switch_typo_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pitchey_trace.auto import export_logs_level

    monkeypatch.delenv("PITCHEY_TRACE_EXPORT_LOGS", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "yes")
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert export_logs_level() is None  # (the spec: only "true" is true)
    assert any(
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED='yes'" in r.getMessage() for r in caplog.records
    )
    monkeypatch.setenv("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "True")
    assert export_logs_level() == "INFO"
