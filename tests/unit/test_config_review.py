"""Configuration review: invalid environment values name their variable, exporter lists with
empty members, strict OTEL_RESOURCE_ATTRIBUTES decoding, argument types, and resource
detectors that fail or meet hostile values on their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _resource, _stats
from pitchey_trace._config import _exporters_from_env, _resource_from_env
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import ConsoleExporter, OTLPExporter
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.testing import swallowed_errors


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in list(os.environ):
        if var.startswith(("PITCHEY_TRACE_", "OTEL_")):
            monkeypatch.delenv(var, raising=False)
    yield
    pt.shutdown(5.0)


# -- invalid numbers: a ConfigurationError naming the variable (docs/configuration.md) -------------
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PITCHEY_TRACE_SAMPLE_RATE", "1.5"),
        ("PITCHEY_TRACE_SAMPLE_RATE", "nan"),
        ("PITCHEY_TRACE_SAMPLE_RATE", "-inf"),
        ("PITCHEY_TRACE_SLOW_THRESHOLD_MS", "inf"),
        ("PITCHEY_TRACE_SLOW_THRESHOLD_MS", "-5"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "99999999999"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3000000000"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1_000"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "\uff11\uff12"),  # fullwidth digits: int() takes them
        ("OTEL_BSP_SCHEDULE_DELAY", "1e30"),
    ],
)
def test_invalid_numbers_name_their_variable_and_keep_the_previous_setup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        pt.configure(exporters=[])
    assert pt.is_configured()


def test_a_valid_sample_rate_variable_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_SAMPLE_RATE", " -0 ")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem], keep_errors=False, slow_threshold_ms=None, rollups=None)
    with pt.span("op"):
        pass
    assert pt.force_flush(10.0)
    assert mem.spans() == []


def test_an_invalid_sample_rate_argument_names_the_argument() -> None:
    with pytest.raises(ConfigurationError, match="sample_rate"):
        pt.configure(exporters=[], sample_rate=1.5)


# -- exporter lists -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["console,", "console,,otlp", " , console", "console, none,"])
def test_empty_members_of_the_exporter_list_are_skipped(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    made = _exporters_from_env()
    assert isinstance(made[0], ConsoleExporter)
    assert [type(e) for e in made[1:]] == ([OTLPExporter] if "otlp" in value else [])


def test_an_unknown_exporter_is_still_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,,jaeger")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'"):
        _exporters_from_env()


# -- OTEL_RESOURCE_ATTRIBUTES: a value that cannot be decoded discards the variable (the spec) ----
@pytest.mark.parametrize(
    "value",
    [
        "team=a%ZZ,region=eu",
        "team=100%,region=eu",
        "team=%E2%82,region=eu",  # a truncated UTF-8 sequence
        "my team=a,region=eu",
        "te\x01am=a,region=eu",
    ],
)
def test_undecodable_resource_attributes_are_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", value)
    assert _resource_from_env() == {}
    assert _stats.get("misuse.otel_resource_attributes") == 1


def test_resource_attributes_edge_cases_that_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "a=b=c,,d=%E2%82%AC%20x,a2=1,a2=2, k = v ")
    assert _resource_from_env() == {"a": "b=c", "d": "\u20ac x", "a2": "2", "k": "v"}


def test_otel_service_name_wins_over_service_name_in_resource_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-resource")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    mem = InMemoryExporter()
    pt.configure(exporters=[mem])
    with pt.span("op"):
        pass
    assert pt.force_flush(10.0)
    assert mem.spans()[0]["service"] == "from-service-name"


# -- argument types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"service": 123}, "service"),
        ({"environment": b"prod"}, "environment"),
        ({"keep_errors": 2}, "keep_errors"),
    ],
)
def test_invalid_argument_types_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(TypeError, match=f"^{name} must be"):
        pt.configure(exporters=[], **kwargs)


# -- resource detection ---------------------------------------------------------------------------
def test_a_failing_detector_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_environ: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(_resource, "_cloud", broken)
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "K8S_POD_NAME": "api-0", "AWS_LAMBDA_FUNCTION_NAME": "f"}
    with swallowed_errors() as errors:
        attrs = _resource._detect(env)
    assert attrs["k8s.pod.name"] == "api-0"
    assert "service.instance.id" in attrs
    assert [kind for kind, _ in errors] == ["resource.detect"]


@pytest.mark.parametrize("memory", ["\u00b2", "1" * 5000, "12a", ""])
def test_a_hostile_lambda_memory_size_is_ignored(memory: str) -> None:
    with swallowed_errors() as errors:
        attrs = _resource._detect(
            {"AWS_LAMBDA_FUNCTION_NAME": "f", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": memory}
        )
    assert errors == []
    assert attrs["faas.name"] == "f"
    assert "faas.max_memory" not in attrs


def test_detected_values_lose_control_characters_and_are_bounded() -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "K8S_POD_NAME": "api-0\r\nX-Injected: 1\x00",
        "K8S_NAMESPACE_NAME": "n" * 100_000,
        "AWS_LAMBDA_FUNCTION_NAME": "  ",
        "WEBSITE_SITE_NAME": "site\x1b[31m",
    }
    attrs = _resource._detect(env)
    assert attrs["k8s.pod.name"] == "api-0X-Injected: 1"
    assert len(attrs["k8s.namespace.name"]) == 256
    # (a blank Lambda name is no Lambda: the next platform's variables are read)
    assert (attrs["cloud.platform"], attrs.get("faas.name")) == ("azure_app_service", None)
    assert "\x1b" not in repr(attrs)
