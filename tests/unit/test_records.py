"""Exported records: span and audit record fields, categories, and the JSON Schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import (
    SCHEMA_VERSION,
    CategoryThresholds,
    audit_record,
    category_of,
    dataset_of,
    json_schema,
    span_record,
)
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())
SPAN_KEYS = {
    "schema",
    "type",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "service",
    "environment",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "duration_ms",
    "status",
    "status_message",
    "category",
    "attributes",
    "events",
    "links",
    "resource",
}
AUDIT_KEYS = {
    "schema",
    "type",
    "record_id",
    "category",
    "time_unix_nano",
    "trace_id",
    "span_id",
    "service",
    "environment",
    "actor",
    "action",
    "target",
    "outcome",
    "attributes",
}
T0 = 1_700_000_000_000_000_000


@contextmanager
def captured(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """capture_spans, then check every exported record against the JSON Schema."""
    with capture_spans(**configure_kwargs) as mem:
        yield mem
    for rec in mem.records:
        _VALIDATOR.validate(rec)


def timed(name: str, duration_ns: int, kind: pt.SpanKind = pt.SpanKind.INTERNAL) -> None:
    pt.start_span(name, kind=kind, start_time_ns=T0).end(end_time_ns=T0 + duration_ns)


def categories(mem: InMemoryExporter) -> dict[str, str]:
    return {r["name"]: r["category"] for r in mem.spans()}


# -- span records -------------------------------------------------------------------------------
def test_span_record_fields() -> None:
    with (
        captured(service="pitch-api", environment="test-env") as mem,
        pt.span("parent", kind=pt.SpanKind.SERVER) as parent,
    ):
        child = pt.start_span("child", attributes={"db.system.name": "postgresql"}, start_time_ns=T0)
        child.add_event("retry", {"attempt": 2}, timestamp_ns=T0 + 5)
        child.add_link(pt.TraceContext(0xAB, 0xCD), {"why": "batch"})
        child.set_status("error", "lost connection")
        child.end(end_time_ns=T0 + 12_345_678)
    rec = next(r for r in mem.spans() if r["name"] == "child")
    assert set(rec) == SPAN_KEYS
    assert rec["schema"] == SCHEMA_VERSION == 1
    assert rec["type"] == "span"
    assert re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", rec["span_id"])
    assert rec["trace_id"] == parent.trace_id_hex
    assert rec["span_id"] == child.span_id_hex
    assert rec["parent_span_id"] == parent.span_id_hex
    assert (rec["name"], rec["kind"]) == ("child", "internal")
    assert (rec["service"], rec["environment"]) == ("pitch-api", "test-env")
    assert rec["start_time_unix_nano"] == T0
    assert rec["end_time_unix_nano"] == T0 + 12_345_678
    assert rec["duration_ms"] == pytest.approx(12.345678)
    assert (rec["status"], rec["status_message"]) == ("error", "lost connection")
    assert rec["category"] == "fast"
    assert rec["attributes"] == {"db.system.name": "postgresql"}
    assert rec["events"] == [{"name": "retry", "time_unix_nano": T0 + 5, "attributes": {"attempt": 2}}]
    assert rec["links"] == [
        {"trace_id": f"{0xAB:032x}", "span_id": f"{0xCD:016x}", "attributes": {"why": "batch"}}
    ]
    assert rec["resource"]["service.name"] == "pitch-api"
    assert rec["resource"]["telemetry.sdk.language"] == "python"
    root = next(r for r in mem.spans() if r["name"] == "parent")
    assert root["parent_span_id"] is None
    assert root["kind"] == "server"
    assert json.loads(json.dumps(rec)) == rec  # plain JSON types only


def test_span_record_ids_keep_leading_zeros() -> None:
    ctx = pt.TraceContext(1, 2)
    with captured() as mem, pt.span("op", context=ctx) as s:
        pass
    rec = mem.spans()[0]
    assert rec["trace_id"] == "0" * 31 + "1"
    assert rec["parent_span_id"] == "0" * 15 + "2"
    assert rec["span_id"] == f"{s.span_id:016x}"
    assert len(rec["span_id"]) == 16


def test_status_strings() -> None:
    with captured() as mem:
        with pt.span("unset"):
            pass
        with pt.span("ok") as s:
            s.set_status("ok")
        with pt.span("error") as s:
            s.set_status(pt.StatusCode.ERROR)
    got = {r["name"]: (r["status"], r["status_message"]) for r in mem.spans()}
    assert got == {"unset": ("unset", None), "ok": ("ok", None), "error": ("error", None)}


def test_span_record_function_directly() -> None:
    with captured():
        span = pt.start_span("direct", kind=pt.SpanKind.CLIENT, start_time_ns=T0)
        span.end(end_time_ns=T0 + 50_000_000)
    assert isinstance(span, pt.Span)
    thresholds = CategoryThresholds(per_kind={"client": (1, 20, 40)})
    rec = span_record(span, "svc", "env", {"service.name": "svc"}, thresholds)
    _VALIDATOR.validate(rec)
    assert (rec["service"], rec["environment"], rec["resource"]) == ("svc", "env", {"service.name": "svc"})
    assert rec["category"] == "very_slow"
    assert span_record(span, "svc", "env", {})["category"] == "normal"  # default client: 10/1000/5000


# -- categories ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "duration_ns", "expected"),
    [
        (pt.SpanKind.INTERNAL, 0, "fast"),
        (pt.SpanKind.INTERNAL, 99_999_999, "fast"),
        (pt.SpanKind.INTERNAL, 100_000_000, "normal"),
        (pt.SpanKind.INTERNAL, 999_999_999, "normal"),
        (pt.SpanKind.INTERNAL, 1_000_000_000, "slow"),
        (pt.SpanKind.INTERNAL, 4_999_999_999, "slow"),
        (pt.SpanKind.INTERNAL, 5_000_000_000, "very_slow"),
        (pt.SpanKind.SERVER, 100_000_000, "normal"),
        (pt.SpanKind.SERVER, 1_000_000_000, "slow"),
        (pt.SpanKind.CLIENT, 9_999_999, "fast"),
        (pt.SpanKind.CLIENT, 10_000_000, "normal"),
        (pt.SpanKind.CLIENT, 1_000_000_000, "slow"),
        (pt.SpanKind.CLIENT, 5_000_000_000, "very_slow"),
        (pt.SpanKind.PRODUCER, 50_000_000, "fast"),
        (pt.SpanKind.CONSUMER, 6_000_000_000, "very_slow"),
    ],
)
def test_default_category_boundaries(kind: pt.SpanKind, duration_ns: int, expected: str) -> None:
    with captured(sample_rate=1.0) as mem:
        timed("op", duration_ns, kind)
    assert categories(mem) == {"op": expected}
    assert category_of(duration_ns / 1e6, kind.value) == expected


def test_per_kind_category_thresholds() -> None:
    thresholds = CategoryThresholds(per_kind={"server": (5, 50, 500)})
    with captured(category_thresholds=thresholds) as mem:
        timed("server fast", 4_999_999, pt.SpanKind.SERVER)
        timed("server normal", 5_000_000, pt.SpanKind.SERVER)
        timed("server slow", 50_000_000, pt.SpanKind.SERVER)
        timed("server very slow", 500_000_000, pt.SpanKind.SERVER)
        timed("internal unaffected", 50_000_000)
    assert categories(mem) == {
        "server fast": "fast",
        "server normal": "normal",
        "server slow": "slow",
        "server very slow": "very_slow",
        "internal unaffected": "fast",
    }


def test_slow_threshold_sets_the_slow_boundary() -> None:
    with captured(slow_threshold_ms=2000) as mem:
        timed("normal", 1_999_999_999)
        timed("slow", 2_000_000_000)
        timed("still slow", 9_999_999_999)
        timed("very slow", 10_000_000_000)
    assert categories(mem) == {
        "normal": "normal",
        "slow": "slow",
        "still slow": "slow",
        "very slow": "very_slow",
    }


@pytest.mark.parametrize("slow_ms", [50, 0])
def test_slow_threshold_below_the_default_fast_boundary(slow_ms: int) -> None:
    with captured(slow_threshold_ms=slow_ms) as mem:
        timed("at threshold", slow_ms * 1_000_000)
        timed("far over", slow_ms * 1_000_000 + 10_000_000)
    assert categories(mem) == {"at threshold": "slow", "far over": "slow"}


def test_category_thresholds_defaults_and_validation() -> None:
    default = CategoryThresholds()
    assert default.table["internal"] == (100.0, 1000.0, 5000.0)
    assert default.table["client"] == (10.0, 1000.0, 5000.0)
    assert default.slow_ms("server") == 1000.0
    assert CategoryThresholds(slow_ms=3000).table["internal"] == (100.0, 3000.0, 15000.0)
    with pytest.raises(ValueError):
        CategoryThresholds(fast_ms=500, slow_ms=100)
    with pytest.raises(ValueError):
        CategoryThresholds(fast_ms=-1)
    with pytest.raises(ValueError):
        CategoryThresholds(per_kind={"batch": (1, 2, 3)})
    with pytest.raises(ValueError):
        CategoryThresholds(per_kind={"server": (3, 2, 1)})


def test_category_of_with_thresholds() -> None:
    thresholds = CategoryThresholds(per_kind={"client": (1, 2, 3)})
    assert [category_of(ms, "client", thresholds) for ms in (0.5, 1, 2, 3)] == [
        "fast",
        "normal",
        "slow",
        "very_slow",
    ]


# -- audit records ------------------------------------------------------------------------------
def test_audit_record_inside_a_span() -> None:
    remote = pt.TraceContext(0x1234, 0x5678, baggage=(("user.id", "u-42"),))
    with captured(service="pitch-api", environment="prod") as mem:
        with pt.use_context(remote), pt.span("POST /login") as s:
            pt.emit_audit("login", "session", "success", category="security", attributes={"http.status": 200})
        pt.emit_audit("export", "pitches", "denied", actor="admin-1", category="data_access")
    first, second = mem.of_type("audit")
    assert set(first) == AUDIT_KEYS
    assert first["schema"] == 1
    assert first["type"] == "audit"
    assert (first["action"], first["target"], first["outcome"]) == ("login", "session", "success")
    assert first["category"] == "security"
    assert first["actor"] == "u-42"  # from the user.id baggage entry
    assert first["trace_id"] == s.trace_id_hex == f"{0x1234:032x}"
    assert first["span_id"] == s.span_id_hex
    assert (first["service"], first["environment"]) == ("pitch-api", "prod")
    assert first["attributes"] == {"http.status": 200}
    assert isinstance(first["time_unix_nano"], int)
    assert (second["actor"], second["category"]) == ("admin-1", "data_access")
    assert second["trace_id"] is None
    assert second["span_id"] is None
    assert second["attributes"] == {}
    assert dataset_of(first) == "audit"


def test_audit_record_function() -> None:
    rec = audit_record(
        action="delete",
        target="pitch",
        outcome="success",
        time_unix_nano=T0,
        service="svc",
        environment="env",
        trace_id=1,
        span_id=2,
        actor="u1",
        attributes={"n": 1},
    )
    _VALIDATOR.validate(rec)
    assert re.fullmatch(r"[0-9a-f]{16}", rec["record_id"])
    assert rec == {
        "schema": 1,
        "type": "audit",
        "record_id": rec["record_id"],
        "category": "request",
        "time_unix_nano": T0,
        "trace_id": "0" * 31 + "1",
        "span_id": "0" * 15 + "2",
        "service": "svc",
        "environment": "env",
        "actor": "u1",
        "action": "delete",
        "target": "pitch",
        "outcome": "success",
        "attributes": {"n": 1},
    }


def test_audit_before_configure_is_a_noop() -> None:
    pt.emit_audit("login", "session", "success")
    assert pt.stats()["internal_errors"] == 0


# -- schema and datasets ------------------------------------------------------------------------
def test_json_schema_is_draft_2020_12() -> None:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_rejects_what_the_sdk_must_never_emit() -> None:
    with captured() as mem, pt.span("op"):
        pass
    good = mem.spans()[0]
    for bad in (
        {**good, "trace_id": "0" * 32},
        {**good, "span_id": good["span_id"].upper()},
        {**good, "status": "failed"},
        {**good, "category": "glacial"},
        {**good, "attributes": {"k": {"nested": 1}}},
        {key: value for key, value in good.items() if key != "resource"},
    ):
        assert not _VALIDATOR.is_valid(bad)


def test_dataset_of() -> None:
    assert dataset_of({"type": "span"}) == "traces"
    assert dataset_of({"type": "audit"}) == "audit"
    assert dataset_of({"type": "rollup"}) == "performance"
    assert dataset_of({"type": "span", "dataset": "special"}) == "special"
    assert dataset_of({"type": "unknown"}) == "traces"


@pytest.mark.parametrize("sanitize", [True, False], ids=["sanitized", "unsanitized"])
def test_a_traces_tracestate_is_kept_on_its_span_records_and_links(sanitize: bool) -> None:
    """Spans under a context with a tracestate carry it (the W3C header form, as OTLP sends it)
    in ``trace_state``, as do links to such contexts; other records have no such key, so the
    common record keeps its exact key set."""
    incoming = pt.extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "congo=t61rcWkgMzE , rojo=00f067aa0ba902b7",
        }
    )
    assert incoming is not None
    options: dict[str, Any] = {} if sanitize else {"sanitizer": None}
    with captured(**options) as mem:
        with pt.use_context(incoming), pt.span("parent"), pt.span("child", links=[pt.Link(incoming)]):
            pass
        with pt.span("other", links=[pt.Link(pt.TraceContext(7, 8))]):
            pass
    spans = {r["name"]: r for r in mem.spans()}
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert spans["parent"]["trace_state"] == spans["child"]["trace_state"] == state
    assert spans["child"]["links"][0]["trace_state"] == state
    assert set(spans["other"]) == SPAN_KEYS
    assert "trace_state" not in spans["other"]["links"][0]
    assert not _VALIDATOR.is_valid({**spans["parent"], "trace_state": ""})


def test_the_sanitizer_leaves_a_tracestate_as_it_was_propagated() -> None:
    """``trace_state`` is structure (what the header already carried to and from other
    services), so digits in a vendor's entry that look like a card number are not masked."""
    incoming = pt.extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=4111111111111111",
        }
    )
    with captured() as mem, pt.use_context(incoming), pt.span("op", attributes={"n": "4111111111111111"}):
        pass
    [rec] = mem.spans()
    assert rec["trace_state"] == "vendor=4111111111111111"
    assert rec["attributes"]["n"] != "4111111111111111"  # (the same digits elsewhere are masked)
    # and a sanitizer applied to such a record again (a processor's, an exporter's) agrees
    again = Sanitizer()({**rec, "name": "4111111111111111"})
    assert (again["trace_state"], again["name"]) == ("vendor=4111111111111111", "[CARD]")


def test_a_duck_typed_link_context_with_an_odd_trace_state_is_linked_without_it() -> None:
    class Ctx:
        trace_id, span_id = 7, 8

    odd = Ctx()
    odd.trace_state = (("k", 1),)  # type: ignore[attr-defined]
    good = Ctx()
    good.trace_state = (("k", "v"),)  # type: ignore[attr-defined]
    with captured() as mem, pt.span("op", links=[pt.Link(odd), pt.Link(good), pt.Link(Ctx())]):  # type: ignore[arg-type]
        pass
    links = mem.spans()[0]["links"]
    assert [link.get("trace_state") for link in links] == [None, "k=v", None]
    assert pt.stats()["internal_errors"] == 0
