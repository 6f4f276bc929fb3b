"""Regression tests for configuration fixes: `pitchey-trace config` masking credentials,
re-configure with the same exporter instances, OpenTelemetry env parsing per the spec,
resource_attributes service/environment, log-level validation, container.id detection."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from test_config_otel_env import ENV_VARS

import pitchey_trace as pt
from pitchey_trace import propagation
from pitchey_trace._tracer import get_tracer
from pitchey_trace.cli import main
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.sampling import ParentBased, TraceIdRatio

EXTRA_VARS = ("PITCHEY_TRACE_EXPORT_LOGS", "PITCHEY_TRACE_LOG_EVENT_LEVEL")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (*ENV_VARS, *EXTRA_VARS):
        monkeypatch.delenv(var, raising=False)
    yield
    pt.shutdown(5.0)
    propagation.set_propagators(None)


# -- 1. `pitchey-trace config` masks credentials in endpoint URLs ----------------------------------
def test_config_command_masks_credentials_in_endpoints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,zipkin")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://user:s3cret@collector:4318/v1/traces?token=abc"
    )
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://zipkin:9411/api/v2/spans?api_key=QQQ&x=1")
    assert main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    for secret in ("s3cret", "abc", "QQQ"):
        assert secret not in out
    info = json.loads(out)
    urls = [e.get("endpoint") or e.get("url") for e in info["exporters"]]
    assert "https://user:***@collector:4318/v1/traces?token=***" in urls
    assert "http://zipkin:9411/api/v2/spans?api_key=***&x=***" in urls
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    for secret in ("s3cret", "abc", "QQQ"):
        assert secret not in text
    assert "user:***@collector:4318" in text


# -- 2. configure() again with the same exporter instances keeps them working ---------------------
class _Recording:
    name = "recording"

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False
        self.flushes = 0

    def export(self, batch: Any) -> bool:
        if self.closed:
            return False
        self.records.extend(batch)
        return True

    def force_flush(self, timeout: float | None = None) -> bool:
        self.flushes += 1
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        self.closed = True


def test_reconfigure_with_the_same_exporter_does_not_shut_it_down() -> None:
    kept, dropped = _Recording(), _Recording()
    pt.configure(exporters=[kept, dropped])
    with pt.span("before"):
        pass
    pt.configure(exporters=[kept], sample_rate=1.0)  # e.g. to change the sample rate
    assert not kept.closed
    assert kept.flushes >= 1
    assert dropped.closed  # one the new call no longer uses is shut down as before
    assert [r["name"] for r in kept.records if r.get("type") == "span"] == ["before"]
    with pt.span("after"):
        pass
    assert pt.force_flush(10.0)
    assert [r["name"] for r in kept.records if r.get("type") == "span"] == ["before", "after"]
    pt.shutdown(5.0)
    assert kept.closed


def test_otlp_metrics_export_after_shutdown_is_a_failure() -> None:
    from test_otlp_metrics import exporter, rollup

    exp = exporter()
    exp.shutdown(0.1)
    assert exp.export([rollup([1.0, 2.0])]) is False


# -- 3. OTEL_TRACES_SAMPLER / _ARG: unknown or invalid values warn and fall back (OTel spec) -------
@pytest.fixture
def warnings_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Any:
    from pitchey_trace import _safety

    monkeypatch.setattr(_safety, "_last_logged", {})  # (each test sees its first warnings)
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    return caplog


@pytest.mark.parametrize("name", ["parentbased_jaeger_remote", "xray", "nonsense"])
def test_unknown_otel_sampler_warns_and_uses_the_default(
    name: str, monkeypatch: pytest.MonkeyPatch, warnings_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    pt.configure(exporters=[])
    assert repr(get_tracer().sampler) == repr(ParentBased(TraceIdRatio(1.0)))
    assert "OTEL_TRACES_SAMPLER" in warnings_log.text
    assert name in warnings_log.text


@pytest.mark.parametrize("arg", ["abc", "1.5", "nan", "-0.1"])
def test_invalid_otel_sampler_arg_warns_and_counts_as_unset(
    arg: str, monkeypatch: pytest.MonkeyPatch, warnings_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    pt.configure(exporters=[])
    assert repr(get_tracer().sampler) == repr(ParentBased(TraceIdRatio(1.0)))
    assert "OTEL_TRACES_SAMPLER_ARG" in warnings_log.text
    assert arg in warnings_log.text


def test_valid_otel_sampler_settings_and_strict_pitchey_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    pt.configure(exporters=[])
    assert repr(get_tracer().sampler) == repr(TraceIdRatio(0.25))
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", "abc")  # ours stays strict, as documented
    with pytest.raises(ConfigurationError, match="PITCHEY_TRACE_SAMPLE_RATE"):
        pt.configure(exporters=[])


# -- 4. OTEL_SDK_DISABLED and other OTEL_* booleans: only "true" is true (OTel spec) ---------------
@pytest.mark.parametrize(
    ("value", "disabled", "warns"),
    [
        ("true", True, False),
        ("TRUE", True, False),
        ("false", False, False),
        ("1", False, True),
        ("yes", False, True),
        ("on", False, True),
        ("bogus", False, True),
    ],
)
def test_otel_sdk_disabled_is_true_only_for_true(
    value: str,
    disabled: bool,
    warns: bool,
    monkeypatch: pytest.MonkeyPatch,
    warnings_log: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    pt.configure(exporters=[])  # never raises
    assert pt.is_configured() is not disabled or get_tracer().pipeline is None
    assert (get_tracer().pipeline is None) is disabled
    assert ("OTEL_SDK_DISABLED" in warnings_log.text) is warns


def test_pitchey_trace_disabled_keeps_its_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_DISABLED", "1")
    pt.configure(exporters=[])
    assert get_tracer().pipeline is None
    monkeypatch.setenv("PITCHEY_TRACE_DISABLED", "bogus")
    with pytest.raises(ConfigurationError, match="PITCHEY_TRACE_DISABLED"):
        pt.configure(exporters=[])


# -- 5. resource_attributes= service.name / deployment.environment[.name] become the record fields -
def test_resource_attributes_argument_sets_service_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace.exporters.memory import InMemoryExporter

    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    attrs = {"service.name": "billing", "deployment.environment.name": "prod", "team": "growth"}
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], resource_attributes=attrs)
    assert attrs["service.name"] == "billing"  # (the caller's mapping is left alone)
    with pt.span("op"):
        pass
    assert pt.force_flush(10.0)
    (rec,) = mem.spans()
    assert (rec["service"], rec["environment"]) == ("billing", "prod")
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    assert pipeline.resource["service.name"] == "billing"
    assert pipeline.resource["team"] == "growth"
    # explicit service= / environment= still win; the older deployment.environment key counts too
    pt.configure(
        exporters=[],
        service="api",
        resource_attributes={"service.name": "billing", "deployment.environment": "staging"},
    )
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    assert (pipeline.service, pipeline.environment) == ("api", "staging")
    pt.configure(exporters=[], environment="qa", resource_attributes={"deployment.environment.name": "prod"})
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    assert (pipeline.service, pipeline.environment) == ("from-env", "qa")


# -- 6. log levels: validated (name or number), each variable on its own -----------------------------
@pytest.mark.parametrize("var", EXTRA_VARS)
def test_config_command_refuses_an_unknown_log_level(
    var: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(var, "LOUD")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert var in err
    assert "LOUD" in err


def test_log_levels_by_name_or_number() -> None:
    from pitchey_trace import auto

    assert auto._level("info", "X") == "INFO"
    assert auto._level(" 15 ", "X") == 15
    for bad in ("LOUD", "-5", "1.5"):
        with pytest.raises(ConfigurationError, match="X"):
            auto._level(bad, "X")


def test_a_bad_log_event_level_does_not_stop_log_export(
    monkeypatch: pytest.MonkeyPatch, warnings_log: pytest.LogCaptureFixture
) -> None:
    from pitchey_trace import auto
    from pitchey_trace.web import logs

    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(logs, "instrument_logging", lambda level: calls.append(("events", level)))
    monkeypatch.setattr(logs, "export_logs", lambda level: calls.append(("export", level)))
    monkeypatch.setenv("PITCHEY_TRACE_LOG_EVENT_LEVEL", "LOUD")
    monkeypatch.setenv("PITCHEY_TRACE_EXPORT_LOGS", "error")
    auto._logging(logging)
    assert calls == [("export", "ERROR")]
    assert "PITCHEY_TRACE_LOG_EVENT_LEVEL" in warnings_log.text
    calls.clear()
    monkeypatch.setenv("PITCHEY_TRACE_LOG_EVENT_LEVEL", "info")
    monkeypatch.setenv("PITCHEY_TRACE_EXPORT_LOGS", "LOUD")
    auto._logging(logging)
    assert calls == [("events", "INFO")]
    assert "PITCHEY_TRACE_EXPORT_LOGS" in warnings_log.text


def test_config_command_shows_the_resolved_batch_size_without_exporters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
    assert main(["config"]) == 0
    assert "batches of 64" in capsys.readouterr().out
    assert main(["config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["export_batch_size"] == 64
