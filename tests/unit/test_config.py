"""configure(): environment variables, precedence, validation, reconfiguration, shutdown."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())

ENV_VARS = (
    "PITCHEY_TRACE_SERVICE",
    "OTEL_SERVICE_NAME",
    "PITCHEY_TRACE_ENVIRONMENT",
    "PITCHEY_TRACE_SAMPLE_RATE",
    "PITCHEY_TRACE_DISABLED",
    "OTEL_SDK_DISABLED",
    "PITCHEY_TRACE_KEEP_ERRORS",
    "PITCHEY_TRACE_SLOW_THRESHOLD_MS",
    "PITCHEY_TRACE_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def finish(mem: InMemoryExporter) -> list[dict[str, Any]]:
    """Flush and shut down, validate every record, return the span records."""
    assert pt.force_flush(10.0)
    pt.shutdown(10.0)
    for rec in mem.records:
        _VALIDATOR.validate(rec)
    return mem.spans()


def one_span(**configure_kwargs: Any) -> dict[str, Any]:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], **configure_kwargs)
    with pt.span("op"):
        pass
    spans = finish(mem)
    assert len(spans) == 1
    return spans[0]


def root_is_sampled(**configure_kwargs: Any) -> bool:
    """Whether a new root span is head-sampled under this configuration (checked on many)."""
    pt.configure(exporters=[], **configure_kwargs)
    decisions = {pt.start_span("op").sampled for _ in range(64)}
    pt.shutdown()
    assert len(decisions) == 1, "expected an all-or-nothing sampler here"
    return decisions.pop()


# -- service / environment ----------------------------------------------------------------------
def test_service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = one_span()
    assert rec["service"] == "unknown_service"
    assert rec["environment"] == "development"
    assert rec["resource"]["service.name"] == "unknown_service"
    assert rec["resource"]["deployment.environment.name"] == "development"


def test_service_from_otel_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-svc")
    assert one_span()["service"] == "otel-svc"


def test_pitchey_service_wins_over_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-svc")
    monkeypatch.setenv("PITCHEY_TRACE_SERVICE", "pitch-api")
    monkeypatch.setenv("PITCHEY_TRACE_ENVIRONMENT", "staging")
    rec = one_span()
    assert (rec["service"], rec["environment"]) == ("pitch-api", "staging")
    assert rec["resource"]["service.name"] == "pitch-api"


def test_explicit_service_and_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_SERVICE", "from-env")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-svc")
    monkeypatch.setenv("PITCHEY_TRACE_ENVIRONMENT", "staging")
    rec = one_span(service="explicit", environment="production")
    assert (rec["service"], rec["environment"]) == ("explicit", "production")


def test_resource_attributes_are_added() -> None:
    rec = one_span(service="svc", resource_attributes={"service.version": "1.2.3"})
    assert rec["resource"]["service.version"] == "1.2.3"
    assert rec["resource"]["telemetry.sdk.name"] == "pitchey-trace"


# -- sampling from the environment --------------------------------------------------------------
def test_sample_rate_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", "0")
    assert root_is_sampled() is False
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", "1")
    assert root_is_sampled() is True


def test_explicit_sample_rate_and_sampler_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", "0")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert root_is_sampled(sample_rate=1.0) is True
    assert root_is_sampled(sampler=pt.AlwaysOn()) is True


def test_otel_traces_sampler_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert root_is_sampled() is False
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    assert root_is_sampled() is False
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    assert root_is_sampled() is True
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert root_is_sampled() is True


def test_pitchey_sample_rate_wins_over_otel_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", "1")
    assert root_is_sampled() is True


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PITCHEY_TRACE_SAMPLE_RATE", "abc"),
        ("PITCHEY_TRACE_SAMPLE_RATE", "1.5"),
        ("PITCHEY_TRACE_DISABLED", "maybe"),
        ("PITCHEY_TRACE_EXPORTER", "carrier-pigeon"),
        ("PITCHEY_TRACE_SLOW_THRESHOLD_MS", "slow"),
    ],
)
def test_invalid_env_values_raise(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(pt.ConfigurationError):
        pt.configure()
    assert not pt.is_configured()


# -- disabled -----------------------------------------------------------------------------------
@pytest.mark.parametrize("var", ["PITCHEY_TRACE_DISABLED", "OTEL_SDK_DISABLED"])
def test_disabled_from_env(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "true")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    assert not pt.is_configured()
    with pt.span("op") as s:
        assert not s.is_recording
        assert pt.current_span() is s
        with pt.span("child") as child:
            assert child.trace_id == s.trace_id
    assert pt.force_flush(1.0)
    assert mem.records == []


def test_explicit_disabled_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_DISABLED", "1")
    pt.configure(exporters=[], disabled=False)
    assert pt.is_configured()
    pt.shutdown()
    monkeypatch.delenv("PITCHEY_TRACE_DISABLED")
    pt.configure(exporters=[], disabled=True)
    assert not pt.is_configured()


def test_pitchey_disabled_false_wins_over_otel_sdk_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_DISABLED", "false")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    pt.configure(exporters=[])
    assert pt.is_configured()
    pt.shutdown()
    monkeypatch.delenv("PITCHEY_TRACE_DISABLED")
    pt.configure(exporters=[])
    assert not pt.is_configured()


@pytest.mark.parametrize("value", ["no", "false", 2, 1.0, []])
def test_disabled_must_be_a_bool(value: object) -> None:
    with pytest.raises(TypeError, match="disabled"):
        pt.configure(exporters=[], disabled=value)  # type: ignore[arg-type]
    assert not pt.is_configured()
    pt.configure(exporters=[], disabled=0)  # the 0/1 some code passes for bools
    assert pt.is_configured()


def test_disabling_flushes_the_previous_pipeline() -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    with pt.span("before"):
        pass
    pt.configure(disabled=True)
    assert not pt.is_configured()
    assert [r["name"] for r in mem.spans()] == ["before"]
    assert mem.shut_down


# -- exporters from the environment -------------------------------------------------------------
def test_console_exporter_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_EXPORTER", "console")
    pt.configure(service="env-console")
    with pt.span("printed"):
        pass
    pt.shutdown(10.0)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    spans = [rec for rec in lines if rec["type"] == "span"]
    assert [s["name"] for s in spans] == ["printed"]
    assert spans[0]["service"] == "env-console"
    for rec in lines:
        _VALIDATOR.validate(rec)


def test_console_pretty_exporter_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_EXPORTER", "console-pretty")
    pt.configure()
    with pt.span("pretty"):
        pass
    pt.shutdown(10.0)
    out = capsys.readouterr().out
    assert "trace " in out
    assert "  pretty  " in out


def test_explicit_exporters_win_over_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_EXPORTER", "console")
    assert one_span()["name"] == "op"
    assert capsys.readouterr().out == ""


def test_keep_errors_and_slow_threshold_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_KEEP_ERRORS", "false")
    monkeypatch.setenv("PITCHEY_TRACE_SLOW_THRESHOLD_MS", "200")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], sample_rate=0.0)
    with pt.span("error, not kept") as s:
        s.set_status("error", "x")
    slow = pt.start_span("slow, kept", start_time_ns=1_000_000_000)
    slow.end(end_time_ns=1_000_000_000 + 250_000_000)
    assert [r["name"] for r in finish(mem)] == ["slow, kept"]


# -- validation ---------------------------------------------------------------------------------
class NoExport:
    name = "broken"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"exporters": [NoExport()]}, TypeError),
        ({"exporters": [object()]}, TypeError),
        ({"sample_rate": 1.5}, pt.ConfigurationError),
        ({"sample_rate": -0.5}, pt.ConfigurationError),
        ({"sample_rate": "lots"}, pt.ConfigurationError),
        ({"slow_threshold_ms": -1}, pt.ConfigurationError),
        ({"processors": [1]}, TypeError),
        ({"max_queue_size": 0}, pt.ConfigurationError),
        ({"exporter_queue_size": 0}, pt.ConfigurationError),
        ({"export_batch_size": 0}, pt.ConfigurationError),
        ({"max_attributes": 0}, pt.ConfigurationError),
        ({"max_events": -1}, pt.ConfigurationError),
        ({"max_queue_size": 10.5}, pt.ConfigurationError),
        ({"max_queue_size": True}, pt.ConfigurationError),
        ({"schedule_delay_ms": 0}, pt.ConfigurationError),
        ({"sampler": object()}, TypeError),
        ({"sanitizer": 42}, TypeError),
        ({"router": "traces"}, TypeError),
        ({"rollups": object()}, TypeError),
        ({"service": 123}, TypeError),
        # Not finite, a bool for a number, beyond what the worker can wait or C can hold: each
        # of these once passed, then broke the worker thread, lost every span or raised
        # OverflowError from a span's __exit__.
        ({"schedule_delay_ms": float("nan")}, pt.ConfigurationError),
        ({"schedule_delay_ms": float("inf")}, pt.ConfigurationError),
        ({"schedule_delay_ms": 1e300}, pt.ConfigurationError),
        ({"schedule_delay_ms": True}, pt.ConfigurationError),
        ({"slow_threshold_ms": float("inf")}, pt.ConfigurationError),
        ({"slow_threshold_ms": float("nan")}, pt.ConfigurationError),
        ({"slow_threshold_ms": True}, pt.ConfigurationError),
        ({"sample_rate": True}, pt.ConfigurationError),
        ({"max_queue_size": 10**30}, pt.ConfigurationError),
        ({"max_attributes": 10**30}, pt.ConfigurationError),
        ({"keep_errors": "no"}, TypeError),
        ({"category_thresholds": "x"}, TypeError),
        ({"resource_attributes": "ab"}, TypeError),
        ({"resource_attributes": 5}, TypeError),
        ({"exporters": "console"}, TypeError),
        ({"exporters": 5}, TypeError),
        ({"processors": 5}, TypeError),
    ],
)
def test_invalid_arguments_raise_at_configure_time(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        pt.configure(**kwargs)
    assert not pt.is_configured()


def test_processors_none_means_none() -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], processors=None, rollups=None)
    with pt.span("p"):
        pass
    assert [r["name"] for r in finish(mem)] == ["p"]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        pt.configure(sample_rate=7)


def test_failed_configure_keeps_the_previous_pipeline() -> None:
    mem = InMemoryExporter()
    pt.configure(service="first", exporters=[mem])
    with pytest.raises(pt.ConfigurationError):
        pt.configure(service="second", max_queue_size=0)
    assert pt.is_configured()
    with pt.span("still traced") as s:
        assert s.is_recording
    spans = finish(mem)
    assert [(r["name"], r["service"]) for r in spans] == [("still traced", "first")]


# -- reconfigure and shutdown -------------------------------------------------------------------
def test_reconfigure_flushes_the_old_pipeline_into_the_old_exporter() -> None:
    old, new = InMemoryExporter(), InMemoryExporter()
    pt.configure(service="v1", exporters=[old])
    with pt.span("before"):
        pass
    in_flight = pt.start_span("in flight")
    pt.configure(service="v2", exporters=[new])
    assert old.shut_down
    assert [r["name"] for r in old.spans()] == ["before"]
    with pt.span("after"):
        pass
    in_flight.end()  # belongs to the old, shut-down pipeline: refused and counted
    spans = finish(new)
    assert [(r["name"], r["service"]) for r in spans] == [("after", "v2")]
    assert [r["name"] for r in old.spans()] == ["before"]
    assert pt.stats()["dropped.after_shutdown"] == 1


def test_shutdown_makes_tracing_a_noop() -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    assert pt.is_configured()
    with pt.span("kept"):
        pass
    assert pt.shutdown(10.0) is True
    assert not pt.is_configured()
    assert mem.shut_down
    with pt.span("after shutdown") as s:
        assert not s.is_recording
    assert pt.shutdown() is True  # idempotent
    assert pt.force_flush(1.0) is True
    assert [r["name"] for r in mem.spans()] == ["kept"]


def test_force_flush_delivers_without_shutting_down() -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], schedule_delay_ms=60_000)
    with pt.span("one"):
        pass
    assert pt.force_flush(10.0) is True
    assert [r["name"] for r in mem.spans()] == ["one"]
    assert not mem.shut_down
    assert pt.is_configured()


def test_stats_counts_accepted_and_exported() -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], rollups=None)
    for _ in range(3):
        with pt.span("op"):
            pass
    finish(mem)
    stats = pt.stats()
    assert stats["accepted"] == 3
    assert stats["exported"] == 3
    assert stats["dropped"] == 0


def test_flush_and_shutdown_timeouts_of_any_value() -> None:
    # A timeout that is not a number was an internal error and a failed flush; now the default.
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], rollups=None)
    with pt.span("t"):
        pass
    for odd in ("5", [], float("nan"), True):
        assert pt.force_flush(odd) is True  # type: ignore[arg-type]
    assert pt.force_flush(float("inf")) is True  # capped, not an OverflowError
    assert pt.force_flush(-3) in (True, False)  # zero time to wait: a bool, no error
    assert [r["name"] for r in mem.spans()] == ["t"]
    assert pt.shutdown("soon") is True  # type: ignore[arg-type]
    assert pt.stats().get("internal_errors", 0) == 0
    assert pt.stats()["misuse.timeout_type"] == 5


def test_use_context_none_starts_a_new_trace_and_rejects_other_types() -> None:
    # `with pt.use_context(pt.extract(headers)):` when the message carried no context.
    with capture_spans() as mem, pt.span("outer") as outer:
        with pt.use_context(pt.extract({})):
            with pt.span("inner") as inner:
                pass
    assert inner.trace_id != outer.trace_id
    assert inner.parent_span_id == 0
    assert {r["name"] for r in mem.spans()} == {"outer", "inner"}
    with pytest.raises(TypeError, match="use_context"):
        pt.use_context(42)  # type: ignore[arg-type]


def test_an_exporter_with_datasets_as_one_string_is_refused_and_the_old_setup_kept() -> None:
    class Letters:
        datasets = "traces"  # would have been {"t", "r", "a", "c", "e", "s"}: nothing routed to it

        def export(self, batch: Any) -> bool:
            return True

    mem = InMemoryExporter()
    pt.configure(service="first", exporters=[mem], rollups=None)
    with pytest.raises(TypeError, match="datasets"):
        pt.configure(exporters=[Letters()])
    assert pt.is_configured()
    with pt.span("kept"):
        pass
    assert [r["name"] for r in finish(mem)] == ["kept"]
