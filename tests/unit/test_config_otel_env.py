"""configure() reads OpenTelemetry's SDK environment variables: a service set up for an
OpenTelemetry SDK keeps its resource, exporter, propagator, batching and limit settings."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import propagation
from pitchey_trace._config import _resource_from_env
from pitchey_trace._tracer import get_tracer
from pitchey_trace.cli import _OTEL_READ
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import ConsoleExporter, OTLPExporter
from pitchey_trace.exporters.memory import InMemoryExporter

# Every OpenTelemetry variable the SDK reads (the list `pitchey-trace config` uses), ours, and two
# that nothing here reads.
ENV_VARS = sorted(
    _OTEL_READ
    | {
        "PITCHEY_TRACE_SERVICE",
        "PITCHEY_TRACE_ENVIRONMENT",
        "PITCHEY_TRACE_EXPORTER",
        "PITCHEY_TRACE_DISABLED",
        "PITCHEY_TRACE_EXPORT_SPOOL_DIR",
        "OTEL_EXPORTER_JAEGER_ENDPOINT",
        "OTEL_PYTHON_EXCLUDED_URLS",
    }
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    pt.shutdown(5.0)
    propagation.set_propagators(None)


def one_record(**kwargs: Any) -> dict[str, Any]:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], **kwargs)
    with pt.span("op", {"a": 1, "b": 2, "c": 3}):
        pass
    assert pt.force_flush(10.0)
    (rec,) = mem.spans()
    return rec


def exporters_of_pipeline() -> list[Any]:
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    return [w.exporter for w in pipeline.workers]


# -- OTEL_RESOURCE_ATTRIBUTES ---------------------------------------------------------------------
def test_resource_attributes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES",
        " team=pay%20ments , region = eu-west-1,service.name=billing,deployment.environment.name=prod,"
        "url=a%3Db%2Cc",
    )
    rec = one_record(resource_attributes={"region": "us-east-1"})
    assert (rec["service"], rec["environment"]) == ("billing", "prod")
    res = rec["resource"]
    assert res["team"] == "pay ments"  # percent-decoded, trimmed
    assert res["url"] == "a=b,c"
    assert res["region"] == "us-east-1"  # the argument wins per key
    assert (res["service.name"], res["deployment.environment.name"]) == ("billing", "prod")


def test_service_variables_win_over_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing,deployment.environment=qa")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-name")
    rec = one_record()
    assert (rec["service"], rec["environment"]) == ("otel-name", "qa")
    assert "deployment.environment" not in rec["resource"]  # carried as the environment
    monkeypatch.setenv("PITCHEY_TRACE_SERVICE", "ours")
    monkeypatch.setenv("PITCHEY_TRACE_ENVIRONMENT", "staging")
    rec = one_record()
    assert (rec["service"], rec["environment"]) == ("ours", "staging")
    assert one_record(service="explicit")["service"] == "explicit"


@pytest.mark.parametrize("value", ["team=pay,broken", "=x,team=pay", "team"])
def test_a_malformed_resource_variable_is_ignored_whole(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", value)
    before = pt.stats().get("misuse.otel_resource_attributes", 0)
    rec = one_record()
    assert "team" not in rec["resource"]
    assert rec["service"] == "unknown_service"
    assert pt.stats()["misuse.otel_resource_attributes"] == before + 1


# -- OTEL_TRACES_EXPORTER -------------------------------------------------------------------------
def test_exporters_named_by_otel_traces_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp, console,otlp")
    pt.configure()
    kinds = [type(e) for e in exporters_of_pipeline()]
    assert kinds == [OTLPExporter, ConsoleExporter]
    assert exporters_of_pipeline()[0].endpoint == "http://127.0.0.1:9/v1/traces"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    pt.configure()
    assert exporters_of_pipeline() == []


def test_pitchey_exporter_variable_and_argument_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("PITCHEY_TRACE_EXPORTER", "console-pretty")
    pt.configure()
    (only,) = exporters_of_pipeline()
    assert isinstance(only, ConsoleExporter)
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    assert exporters_of_pipeline() == [mem]


@pytest.mark.parametrize("variable", ["OTEL_TRACES_EXPORTER", "PITCHEY_TRACE_EXPORTER"])
def test_an_unknown_exporter_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "otlp,jaeger")
    with pytest.raises(ConfigurationError, match=f"{variable}: unknown exporter 'jaeger'; known: console"):
        pt.configure()


def test_zipkin_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace.exporters import ZipkinExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://zipkin.internal:9411/api/v2/spans")
    pt.configure()
    (only,) = exporters_of_pipeline()
    assert isinstance(only, ZipkinExporter)
    assert only.url == "http://zipkin.internal:9411/api/v2/spans"
    monkeypatch.delenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT")
    pt.configure()
    assert exporters_of_pipeline()[0].url == "http://localhost:9411/api/v2/spans"  # Zipkin's default


# -- OTEL_PROPAGATORS -----------------------------------------------------------------------------
def test_propagators_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    pt.configure(exporters=[])
    headers: dict[str, str] = {}
    with pt.span("op") as sp:
        pt.inject(headers)
    assert headers["x-b3-traceid"] == f"{sp.trace_id:032x}"
    assert "traceparent" not in headers


def test_propagators_chosen_in_code_win(monkeypatch: pytest.MonkeyPatch) -> None:
    propagation.set_propagators([pt.B3Propagator()])
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext")
    pt.configure(exporters=[])
    assert [type(p) for p in pt.get_propagators()] == [pt.B3Propagator]


def test_an_unknown_propagator_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,xray")
    with pytest.raises(ConfigurationError, match="OTEL_PROPAGATORS: unknown propagator 'xray'"):
        pt.configure(exporters=[])
    assert [type(p) for p in pt.get_propagators()] == [pt.W3CPropagator]  # unchanged


# -- batching and limits ----------------------------------------------------------------------------
def test_batching_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4096")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "128")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    assert (pipeline.max_queue_size, pipeline.schedule_delay_s) == (4096, 0.25)
    assert pipeline.workers[0].batch_size == 128
    pt.configure(exporters=[mem], max_queue_size=100, export_batch_size=10, schedule_delay_ms=50)
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    assert (pipeline.max_queue_size, pipeline.schedule_delay_s) == (100, 0.05)
    assert pipeline.workers[0].batch_size == 10


def test_attribute_limits_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "2")
    assert len(one_record()["attributes"]) == 2
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "1")  # the span-specific one wins
    assert len(one_record()["attributes"]) == 1
    assert len(one_record(max_attributes=3)["attributes"]) == 3


def test_event_and_link_limits_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "1")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    other = pt.start_span("other")
    with pt.span("op") as sp:
        for i in range(4):
            sp.add_event(f"e{i}")
            sp.add_link(other.context)
    other.end()
    assert pt.force_flush(10.0)
    rec = next(r for r in mem.spans() if r["name"] == "op")
    assert (len(rec["events"]), len(rec["links"])) == (2, 1)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots", "must be an integer"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "must be a positive integer"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-5", "must be a positive integer"),
        ("OTEL_SPAN_LINK_COUNT_LIMIT", "1.5", "must be an integer"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0", "must be > 0 ms"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon", "must be a number"),
    ],
)
def test_bad_values_are_clear_errors_and_keep_the_previous_setup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=f"{variable} {message}"):
        pt.configure(exporters=[])
    assert exporters_of_pipeline() == [mem]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)
)
def test_any_resource_variable_is_parsed_or_ignored_never_raises(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", raw)
    parsed = _resource_from_env()
    entries = [item for item in raw.split(",") if item.strip()]
    if parsed:
        assert all(key and key == key.strip() for key in parsed)
        assert len(parsed) <= len(entries)

    def valid_entry(item: str) -> bool:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key):
            return False
        try:
            urllib.parse.unquote(value.strip(), errors="strict")
        except UnicodeDecodeError:
            return False
        return re.search(r"%(?![0-9A-Fa-f]{2})", value) is None

    valid = entries and all(valid_entry(item) for item in entries)
    assert bool(parsed) == bool(valid)


# -- pitchey-trace config: what configure() makes of the environment --------------------------------
def test_config_command_shows_the_resolved_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pitchey_trace.cli import main

    monkeypatch.setenv("OTEL_SERVICE_NAME", "pitch-api")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,team=growth")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,b3")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "128")
    assert main(["config", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["service"], info["environment"]) == ("pitch-api", "prod")
    assert info["resource"]["team"] == "growth"
    [otlp] = info["exporters"]
    assert (otlp["type"], otlp["endpoint"], otlp["datasets"]) == (
        "OTLPExporter",
        "http://collector:4318/v1/traces",
        ["traces"],
    )
    assert info["propagators"] == ["TraceContextPropagator", "B3Propagator"]
    assert info["export_batch_size"] == 128
    assert info["sanitizer"] == "Sanitizer"
    assert get_tracer().pipeline is None  # the command shut its setup down
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "OTLPExporter http/protobuf http://collector:4318/v1/traces" in text
    assert "team=growth" in text


def test_config_command_reports_bad_and_disabled_setups(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pitchey_trace.cli import main

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    assert main(["config"]) == 2
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'" in capsys.readouterr().err
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert main(["config"]) == 0
    assert "disabled" in capsys.readouterr().out
    monkeypatch.setenv("OTEL_EXPORTER_JAEGER_ENDPOINT", "http://jaeger:14268")  # nothing here reads it
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz")  # read by OpenTelemetry's packages
    assert main(["config", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["enabled"] is False
    assert "OTEL_EXPORTER_JAEGER_ENDPOINT" in info["unread_otel_variables"]
    assert "OTEL_PYTHON_EXCLUDED_URLS" not in info["unread_otel_variables"]
    assert "OTEL_SDK_DISABLED" not in info["unread_otel_variables"]
    assert main(["config"]) == 0
    assert "not read     OTEL_EXPORTER_JAEGER_ENDPOINT" in capsys.readouterr().out


def test_a_disabled_sdk_makes_no_exporter_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")  # would fail OTLPExporter()
    pt.configure()
    assert get_tracer().pipeline is None
    with pt.span("op") as sp:
        assert not sp.is_recording


def test_the_config_commands_list_covers_every_variable_the_package_reads() -> None:
    # `pitchey-trace config` reports OTEL_* variables outside _OTEL_READ as "not read": a new
    # variable read somewhere in the package must join the list.
    package = Path(pt.__file__).parent
    named = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"\"(OTEL_[A-Z_]+)\"", path.read_text())
        if not name.endswith("_")  # (prefixes)
    }
    assert named, "the scan found nothing: the pattern is wrong"
    assert named <= _OTEL_READ, sorted(named - _OTEL_READ)


def test_otel_metrics_exporter_adds_the_metrics_exporter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pitchey_trace import _config
    from pitchey_trace.exporters import OTLPMetricsExporter

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp, otlp")
    [exporter] = _config._metrics_exporters_from_env()
    assert isinstance(exporter, OTLPMetricsExporter)
    assert exporter.datasets == frozenset({"performance", "traces"})
    # Another metrics SDK's exporter names are its own business: ignored, said once, no error.
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    with caplog.at_level("WARNING", logger="pitchey_trace"):
        assert _config._metrics_exporters_from_env() == []
    assert "OTEL_METRICS_EXPORTER=prometheus" in caplog.text
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert _config._metrics_exporters_from_env() == []


def test_config_shows_the_metrics_temporality(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pitchey_trace.cli import main

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    assert main(["config"]) == 0
    assert (
        "OTLPMetricsExporter http/protobuf delta http://localhost:4318/v1/metrics" in capsys.readouterr().out
    )


def test_export_spool_dir_gives_each_exporter_a_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from pitchey_trace import _config
    from pitchey_trace.cli import main

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,zipkin")
    monkeypatch.setenv("PITCHEY_TRACE_EXPORT_SPOOL_DIR", str(tmp_path))
    otlp, zipkin = _config._exporters_from_env()
    assert (otlp.spool_dir, zipkin.spool_dir) == (str(tmp_path / "otlp"), str(tmp_path / "zipkin"))
    for exporter in (otlp, zipkin):
        exporter.shutdown()
    assert main(["config"]) == 0
    assert f"(spool {tmp_path / 'otlp'})" in capsys.readouterr().out
