"""pitchey_trace.otel: odd arguments from OpenTelemetry-instrumented code never raise into it
and never cost the span (the SDK drops a None link and keeps the span), and OpenTelemetry's
suppress_instrumentation() is honoured."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Link, SpanContext

import pitchey_trace as pt
from pitchey_trace.otel import install
from pitchey_trace.testing import capture_spans
from tests.support.otel_global import _otel_global_provider_restored  # noqa: F401 (autouse)

VALID = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True)


@pytest.mark.parametrize("attributes", [[1, 2], "ab", 5], ids=["list", "str", "int"])
def test_non_mapping_attributes_are_ignored_not_raised(attributes: Any) -> None:
    tracer = install().get_tracer("t")
    with capture_spans() as mem:
        span = tracer.start_span("x", attributes=attributes)
        span.add_event("e", attributes)
        span.record_exception(ValueError("v"), attributes=attributes)
        span.add_link(VALID, attributes)
        span.end()
        pt.force_flush()
        [record] = mem.spans()
    assert record["name"] == "x"
    assert [e["name"] for e in record["events"]] == ["e", "exception"]
    assert [link["span_id"] for link in record["links"]] == ["00f067aa0ba902b7"]
    assert record["attributes"]["otel.scope.name"] == "t"


@pytest.mark.parametrize("context", [None, object(), "00-ab-cd-01"], ids=["none", "object", "str"])
def test_add_link_ignores_what_is_not_a_span_context(context: Any) -> None:
    with capture_spans() as mem:
        span = install().get_tracer("t").start_span("x")
        span.add_link(context)
        span.add_link(trace.INVALID_SPAN_CONTEXT)
        span.end()
        pt.force_flush()
        [record] = mem.spans()
    assert record["links"] == []


def test_bad_links_at_start_drop_the_link_not_the_span() -> None:
    with capture_spans() as mem:
        span = (
            install()
            .get_tracer("t")
            .start_span(
                "x",
                links=[None, 5, Link(VALID, [1]), Link(trace.INVALID_SPAN_CONTEXT), Link(VALID, {"a": 1})],
            )
        )
        assert span.is_recording()
        span.end()
        pt.force_flush()
        [record] = mem.spans()
    assert [(link["span_id"], link["attributes"]) for link in record["links"]] == [
        ("00f067aa0ba902b7", {}),
        ("00f067aa0ba902b7", {"a": 1}),
    ]


def test_suppress_instrumentation_makes_bridge_and_pitchey_spans_no_ops() -> None:
    tracer = install().get_tracer("t")
    with capture_spans() as mem:
        with suppress_instrumentation():
            otel_span = tracer.start_span("hidden.otel")
            assert not otel_span.is_recording()
            otel_span.end()
            with pt.span("hidden.pitchey") as ours:
                assert not ours.is_recording
            headers: dict[str, str] = {}
            pt.inject(headers)
            assert "traceparent" not in headers
        with tracer.start_as_current_span("shown"):
            pass
        pt.force_flush()
        assert [s["name"] for s in mem.spans()] == ["shown"]
