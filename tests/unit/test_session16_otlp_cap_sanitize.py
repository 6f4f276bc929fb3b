"""Session 16: what the sanitizer drops at record time (attributes beyond its
``max_attributes``, events beyond its ``max_events``) is added to the span record's
``dropped_attributes_count`` / ``dropped_events_count`` (created when absent), on every path
that builds or sanitizes a span record: the pipeline (C builder where compiled, which hands
such spans to Python; Python otherwise), a sanitizer with text rules, a sanitizer called on a
record. A record with nothing dropped is unchanged.

Run on the C accelerator and (``PITCHEY_TRACE_PURE_PYTHON=1``) on Python: same expectations.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._span import Span
from pitchey_trace.exporters.otlp import encode_otlp_protobuf
from pitchey_trace.records import json_schema, make_resource, span_record, span_template
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans

RESOURCE = make_resource("svc", "prod", {})


def _validate(records: list[dict[str, Any]]) -> None:
    validator = Draft202012Validator(json_schema())
    for rec in records:
        validator.validate(rec)


def _attrs(n: int) -> dict[str, Any]:
    return {f"k{i}": i for i in range(n)}


def test_the_pipeline_counts_what_the_sanitizer_drops_per_span() -> None:
    san = Sanitizer(max_attributes=3, max_events=2)
    with capture_spans(sanitizer=san, rollups=None) as mem:
        with pt.span("many", attributes=_attrs(7)) as s:
            for i in range(5):
                s.add_event(f"e{i}")
        with pt.span("plain", attributes=_attrs(3)) as s:
            s.add_event("one")
            s.add_event("two")
        for _ in range(3):  # (warm caches: the C builder's turn, where compiled)
            with pt.span("many", attributes=_attrs(5)):
                pass
    records = mem.spans()
    first, *rest = mem.spans("many")
    assert len(first["attributes"]) == 3
    assert len(first["events"]) == 2
    assert first["dropped_attributes_count"] == 4
    assert first["dropped_events_count"] == 3
    assert "dropped_links_count" not in first
    assert [r["dropped_attributes_count"] for r in rest] == [2, 2, 2]
    assert all("dropped_events_count" not in r for r in rest)
    (plain,) = mem.spans("plain")
    assert not any(k.startswith("dropped_") for k in plain)  # (nothing dropped: unchanged)
    assert set(plain) == set(span_template("s", "e", {}))
    assert _stats.get("sanitize.attributes_dropped") >= 4 + 3 * 2  # (and the resource's)
    assert _stats.get("sanitize.events_dropped") == 3
    _validate(records)
    message = ExportTraceServiceRequest.FromString(encode_otlp_protobuf([first]))
    span = message.resource_spans[0].scope_spans[0].spans[0]
    assert (span.dropped_attributes_count, span.dropped_events_count) == (4, 3)


def test_the_span_limits_and_the_sanitizer_add_up() -> None:
    san = Sanitizer(max_attributes=2, max_events=1)
    with capture_spans(sanitizer=san, max_attributes=4, max_events=3, rollups=None) as mem:
        with pt.span("op", attributes=_attrs(6)) as s:  # 2 dropped by the span, 2 by the sanitizer
            for i in range(5):  # 2 dropped by the span, 2 by the sanitizer
                s.add_event(f"e{i}")
    (rec,) = mem.spans("op")
    assert rec["dropped_attributes_count"] == 4
    assert rec["dropped_events_count"] == 4
    _validate([rec])


def _span(n_attrs: int, n_events: int) -> Span:
    with capture_spans(rollups=None):
        span = pt.start_span("op", attributes=_attrs(n_attrs))
        assert isinstance(span, Span)
        for i in range(n_events):
            span.add_event(f"e{i}")
        span.end()
    return span


def test_every_path_counts_the_same() -> None:
    spans = [_span(6, 4), _span(2, 0), _span(6, 0), _span(0, 4)]
    expected = [(3, 2), (None, None), (3, None), (None, 2)]

    def counts(recs: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
        return [(r.get("dropped_attributes_count"), r.get("dropped_events_count")) for r in recs]

    san = Sanitizer(max_attributes=3, max_events=2)
    for _ in range(2):  # cold caches, then warm
        assert counts(san._span_records(spans, "svc", "prod", RESOURCE, None)) == expected
    assert counts([san._span_record(s, "svc", "prod", RESOURCE, None) for s in spans]) == expected
    with_rules = Sanitizer(max_attributes=3, max_events=2, add=[lambda key, text: text])
    assert counts(with_rules._span_records(spans, "svc", "prod", RESOURCE, None)) == expected
    plain = [span_record(s, "svc", "prod", RESOURCE) for s in spans]
    assert counts([san(r) for r in plain]) == expected  # (a record handed to the sanitizer)
    assert counts([san(san(r)) for r in plain]) == expected  # (sanitized twice: counted once)
    odd = {**plain[0], "dataset": "x"}  # (not the exact key set: the general path)
    assert counts([san(odd)]) == expected[:1]


def test_counts_already_in_the_record_are_added_to() -> None:
    with capture_spans(max_attributes=5, rollups=None):
        span = pt.start_span("op", attributes=_attrs(8))
        assert isinstance(span, Span)
        span.end()
    rec = span_record(span, "svc", "prod", RESOURCE)
    assert rec["dropped_attributes_count"] == 3
    san = Sanitizer(max_attributes=2)
    assert san._span_record(span, "svc", "prod", RESOURCE, None)["dropped_attributes_count"] == 6
    assert san(rec)["dropped_attributes_count"] == 6
    assert rec["dropped_attributes_count"] == 3  # (the record handed in is not changed)
