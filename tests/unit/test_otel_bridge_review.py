"""pitchey_trace.otel against the OpenTelemetry SDK's behaviour for the same API calls:
status rules, start_span as a context manager, record_exception's timestamp, remote span
contexts, and baggage shared between opentelemetry.baggage and pitchey-trace."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import pitchey_trace as pt
from pitchey_trace.otel import TracerProvider
from pitchey_trace.testing import capture_spans

REMOTE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def tracer() -> Any:
    return TracerProvider().get_tracer("review")


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in records}


def test_set_status_follows_the_sdk_rules(tracer: Any) -> None:
    with capture_spans() as mem:
        with tracer.start_as_current_span("error-then-unset") as s:
            s.set_status(Status(StatusCode.ERROR, "desc"))
            s.set_status(StatusCode.UNSET)  # ignored: UNSET never clears a status
            s.set_status(Status(StatusCode.UNSET))
        with tracer.start_as_current_span("ok-is-final") as s:
            s.set_status(StatusCode.OK)
            s.set_status(StatusCode.ERROR, "late")
        with tracer.start_as_current_span("status-object-wins") as s:
            s.set_status(Status(StatusCode.ERROR, "a"), "b")
        with tracer.start_as_current_span("last-error-wins") as s:
            s.set_status(StatusCode.ERROR, "one")
            s.set_status(StatusCode.ERROR, "two")
    spans = by_name(mem.spans())
    assert (spans["error-then-unset"]["status"], spans["error-then-unset"]["status_message"]) == (
        "error",
        "desc",
    )
    assert (spans["ok-is-final"]["status"], spans["ok-is-final"]["status_message"]) == ("ok", None)
    assert spans["status-object-wins"]["status_message"] == "a"
    assert spans["last-error-wins"]["status_message"] == "two"


def test_start_span_as_a_context_manager_records_an_exception_as_the_sdk(tracer: Any) -> None:
    with capture_spans() as mem:
        with pytest.raises(RuntimeError), tracer.start_span("recorded") as s:
            assert otel_trace.get_current_span() is not s  # (start_span does not make it current)
            raise RuntimeError("r")
        with pytest.raises(RuntimeError):
            with tracer.start_span("quiet", record_exception=False, set_status_on_exception=False):
                raise RuntimeError("r")
        with pytest.raises(RuntimeError), tracer.start_span("status-only", record_exception=False):
            raise RuntimeError("r")
        with pytest.raises(KeyboardInterrupt), tracer.start_span("interrupted"):
            raise KeyboardInterrupt
    spans = by_name(mem.spans())
    rec = spans["recorded"]
    assert (rec["status"], rec["status_message"]) == ("error", "RuntimeError: r")
    assert [e["attributes"]["exception.type"] for e in rec["events"]] == ["RuntimeError"]
    assert (spans["quiet"]["status"], spans["quiet"]["events"]) == ("unset", [])
    assert (spans["status-only"]["status"], spans["status-only"]["events"]) == ("error", [])
    assert (spans["interrupted"]["status"], spans["interrupted"]["events"]) == ("unset", [])
    assert rec["end_time_unix_nano"]  # ended on exit


def test_record_exception_keeps_the_timestamp_given(tracer: Any) -> None:
    at = 1_900_000_000_000_000_123
    with capture_spans() as mem:
        s = tracer.start_span("handled")
        try:
            raise OSError("disk")
        except OSError as exc:
            s.record_exception(exc, {"retry": 1}, timestamp=at, escaped=True)
            s.record_exception(exc)  # no timestamp: now
        s.end()
    (rec,) = mem.spans()
    first, second = rec["events"]
    assert first["time_unix_nano"] == at
    assert first["attributes"]["retry"] == 1
    assert first["attributes"]["exception.message"] == "disk"
    assert second["time_unix_nano"] != at


def test_a_remote_parent_made_current_reports_is_remote(tracer: Any) -> None:
    with capture_spans():
        with pt.use_context(pt.extract({"traceparent": REMOTE})):
            ctx = otel_trace.get_current_span().get_span_context()
            assert ctx.is_remote
            assert ctx.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
        with tracer.start_as_current_span("local") as s:
            assert not s.get_span_context().is_remote


def test_opentelemetry_baggage_is_pitchey_baggage(tracer: Any) -> None:
    with capture_spans() as mem:
        with tracer.start_as_current_span("request"):
            token = otel_context.attach(otel_baggage.set_baggage("user.id", "u-17"))
            try:
                assert pt.get_baggage("user.id") == "u-17"
                carrier: dict[str, str] = {}
                pt.inject(carrier)
                assert carrier["baggage"] == "user.id=u-17"
                with pt.span("child"):
                    assert pt.get_baggage("user.id") == "u-17"
                    assert otel_baggage.get_baggage("user.id") == "u-17"
            finally:
                otel_context.detach(token)
            assert pt.get_baggage("user.id") is None
        token = otel_context.attach(otel_baggage.set_baggage("tenant", "acme"))  # outside any span
        try:
            assert pt.get_baggage("tenant") == "acme"
        finally:
            otel_context.detach(token)
        assert pt.get_baggage("tenant") is None
    spans = by_name(mem.spans())
    assert spans["child"]["parent_span_id"] == spans["request"]["span_id"]


def test_pitchey_baggage_is_opentelemetry_baggage(tracer: Any) -> None:
    with capture_spans() as mem:
        with pt.span("request") as outer, pt.set_baggage(tenant="acme"):
            assert otel_baggage.get_baggage("tenant") == "acme"
            assert otel_trace.get_current_span().get_span_context().span_id == outer.span_id
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # the global propagator: W3C trace context + baggage
            assert carrier["baggage"] == "tenant=acme"
            assert carrier["traceparent"].split("-")[2] == f"{outer.span_id:016x}"
            with tracer.start_as_current_span("inner") as inner:
                assert inner.is_recording()
                assert otel_baggage.get_baggage("tenant") == "acme"
                assert pt.get_baggage("tenant") == "acme"
        assert otel_baggage.get_baggage("tenant") is None
    spans = by_name(mem.spans())
    assert spans["inner"]["parent_span_id"] == spans["request"]["span_id"]


def test_an_explicit_context_brings_its_baggage_and_tracestate(tracer: Any) -> None:
    remote = propagate.extract(
        {"traceparent": REMOTE, "tracestate": "vendor=x,other=y", "baggage": "user.id=u-17"}
    )
    with capture_spans() as mem:
        with tracer.start_as_current_span("from-remote", context=remote) as s:
            assert s.get_span_context().trace_state.to_header() == "vendor=x,other=y"
            # as with the SDK: the parent context's baggage is not made current by the span
            assert otel_baggage.get_baggage("user.id") is pt.get_baggage("user.id") is None
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            assert carrier["tracestate"] == "vendor=x,other=y"
        token = otel_context.attach(remote)  # what a server middleware does
        try:
            with tracer.start_as_current_span("attached"):
                assert otel_baggage.get_baggage("user.id") == pt.get_baggage("user.id") == "u-17"
                with pt.span("pitchey-child"):
                    carrier = {}
                    pt.inject(carrier)
                    assert carrier["baggage"] == "user.id=u-17"
        finally:
            otel_context.detach(token)
        root = tracer.start_span("fresh", context=otel_baggage.set_baggage("k", "v", otel_context.Context()))
        root.end()
    spans = by_name(mem.spans())
    assert spans["from-remote"]["parent_span_id"] == "00f067aa0ba902b7"
    assert spans["attached"]["parent_span_id"] == "00f067aa0ba902b7"
    assert spans["pitchey-child"]["parent_span_id"] == spans["attached"]["span_id"]
    assert spans["fresh"]["parent_span_id"] is None
    assert spans["fresh"]["trace_id"] != spans["from-remote"]["trace_id"]
