"""Session 17: the resource is never cut by an attribute-count limit (OpenTelemetry exempts
resources: "Resource attributes SHOULD be exempt from the limits", specification/common,
Attribute Limits, Exempt Entities), and an event's or link's attributes dropped by the span's
limits or by the sanitizer are counted in that event's or link's ``dropped_attributes_count``
(absent when 0), validated by the JSON Schema and sent by the OTLP exporters as
``Span.Event`` / ``Span.Link`` ``dropped_attributes_count``.

Run on the C accelerator and (``PITCHEY_TRACE_PURE_PYTHON=1``) on Python: same expectations.
"""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._span import Link, Span
from pitchey_trace.exporters import ConsoleExporter
from pitchey_trace.exporters.otlp import encode_otlp_json, encode_otlp_protobuf
from pitchey_trace.exporters.zipkin import to_zipkin
from pitchey_trace.records import json_schema, make_resource, span_record
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans
from tests.support.otlp import base64_ids

RESOURCE = make_resource("svc", "prod", {})


def _attrs(n: int, prefix: str = "k") -> dict[str, Any]:
    return {f"{prefix}{i}": i for i in range(n)}


def _validate(records: list[dict[str, Any]]) -> None:
    validator = Draft202012Validator(json_schema())
    for rec in records:
        validator.validate(rec)


def _pb_span(record: dict[str, Any]) -> Any:
    message = ExportTraceServiceRequest.FromString(encode_otlp_protobuf([record]))
    return message.resource_spans[0].scope_spans[0].spans[0]


def _json_span(record: dict[str, Any]) -> dict[str, Any]:
    span: dict[str, Any] = encode_otlp_json([record])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    return span


# -- 1. the resource is not cut by max_attributes ----------------------------------------------------
def _big_resource() -> dict[str, Any]:
    # 40 attributes of the process's own, a secret far beyond any limit of 4
    extra = {f"app.tag{i}": f"v{i}" for i in range(30)}
    extra["app.db_password"] = "hunter2"
    extra["app.owner"] = "ada@example.org"
    return make_resource("svc", "prod", extra)


def test_the_sanitizer_keeps_every_resource_attribute_and_still_sanitizes_them() -> None:
    resource = _big_resource()
    assert len(resource) > 30
    san = Sanitizer(max_attributes=4)
    with capture_spans(rollups=None):
        span = pt.start_span("op", attributes=_attrs(2))
        assert isinstance(span, Span)
        span.end()
    for rec in (
        san._span_record(span, "svc", "prod", resource, None),
        san._span_records([span, span], "svc", "prod", resource, None)[1],  # (the C builder's turn)
        san(span_record(span, "svc", "prod", resource)),  # a record handed to the sanitizer
        san({**span_record(span, "svc", "prod", resource), "dataset": "x"}),  # the general path
        Sanitizer(max_attributes=4, cache_size=0)._span_record(span, "svc", "prod", resource, None),
    ):
        res = rec["resource"]
        assert list(res) == list(resource)  # every key, in order
        assert res["app.db_password"] == "[REDACTED]"  # (the 33rd attribute: sanitized too)
        assert res["app.owner"] == "[EMAIL]"
        assert res["app.tag29"] == "v29"
        assert "dropped_attributes_count" not in rec  # the span's own 2 attributes: nothing dropped
    assert _stats.get("sanitize.attributes_dropped") == 0
    _validate([rec])


def test_the_pipeline_exports_the_whole_resource_and_otlp_sends_no_dropped_count() -> None:
    extra = {f"app.tag{i}": i for i in range(20)}
    with capture_spans(sanitizer=Sanitizer(max_attributes=3), resource_attributes=extra, rollups=None) as mem:
        for _ in range(3):  # (cold then warm caches)
            with pt.span("op", attributes=_attrs(5)):
                pass
    records = mem.spans("op")
    assert len(records) == 3
    for rec in records:
        assert all(rec["resource"][f"app.tag{i}"] == i for i in range(20))
        assert len(rec["resource"]) >= 20 + 5
        assert rec["dropped_attributes_count"] == 2  # (the span's own map is still bounded)
    message = ExportTraceServiceRequest.FromString(encode_otlp_protobuf(records))
    resource = message.resource_spans[0].resource
    assert {kv.key for kv in resource.attributes} == set(records[0]["resource"])
    assert resource.dropped_attributes_count == 0
    _validate(records)


def test_a_nested_map_in_a_resource_value_is_still_bounded() -> None:
    # (the exemption is for the resource's own attributes, the limit's "top-level" ones)
    san = Sanitizer(max_attributes=2)
    out = san({**span_record_of_nothing(), "resource": {"a": 1, "b": 2, "c": {"x": 1, "y": 2, "z": 3}}})
    assert list(out["resource"]) == ["a", "b", "c"]
    assert out["resource"]["c"] == {"x": 1, "y": 2}


def span_record_of_nothing() -> dict[str, Any]:
    with capture_spans(rollups=None):
        span = pt.start_span("op")
        assert isinstance(span, Span)
        span.end()
    return span_record(span, "svc", "prod", RESOURCE)


# -- 2. events and links: the span's limits --------------------------------------------------------
def test_the_span_limit_counts_an_events_and_a_links_dropped_attributes() -> None:
    with capture_spans(max_attributes=3, rollups=None) as mem:
        other = pt.start_span("other")
        with pt.span("op", links=[Link(other.context, _attrs(5, "l"))]) as s:
            s.add_event("big", _attrs(7))
            s.add_event("small", _attrs(2))
            s.add_event("bare")
            s.add_link(other.context, _attrs(4, "m"))
            s.add_link(other.context, {"one": 1})
        other.end()
    (rec,) = mem.spans("op")
    big, small, bare = rec["events"]
    assert big["dropped_attributes_count"] == 4
    assert big["attributes"] == _attrs(3)
    assert list(big) == ["name", "time_unix_nano", "attributes", "dropped_attributes_count"]
    assert "dropped_attributes_count" not in small
    assert "dropped_attributes_count" not in bare
    first, second, third = rec["links"]
    assert first["dropped_attributes_count"] == 2
    assert first["attributes"] == _attrs(3, "l")
    assert second["dropped_attributes_count"] == 1
    assert "dropped_attributes_count" not in third
    assert list(first) == ["trace_id", "span_id", "attributes", "dropped_attributes_count"]
    assert not any(k.startswith("dropped_") for k in rec)  # (the span's own counts: nothing)
    assert _stats.get("dropped.attribute_limit") == 4 + 2 + 1
    _validate([rec])


def test_a_link_remembers_what_the_limit_dropped() -> None:
    assert Link(pt.TraceContext(1, 2, 1)).dropped_attributes_count == 0
    with capture_spans(max_attributes=2, rollups=None):
        span = pt.start_span("op")
        assert isinstance(span, Span)
        span.add_link(pt.TraceContext(1, 2, 1), _attrs(5))
        span.end()
    assert span.links is not None
    assert span.links[0].dropped_attributes_count == 3
    assert span.links[0].attributes == _attrs(2)


def test_an_exception_events_own_attributes_count_towards_the_limit() -> None:
    with capture_spans(max_attributes=4, max_events=2, rollups=None) as mem, pt.span("op") as s:
        s.record_exception(ValueError("boom"), {"a": 1, "b": 2, "c": 3})
        s.record_exception(KeyError("k"), {"a": 1})
        s.record_exception(TypeError("t"), _attrs(9))  # (the event itself is over max_events)
    (rec,) = mem.spans("op")
    first, second = rec["events"]
    assert list(first["attributes"]) == ["exception.type", "exception.message", "exception.stacktrace", "a"]
    assert first["dropped_attributes_count"] == 2
    assert "dropped_attributes_count" not in second
    assert rec["dropped_events_count"] == 1
    assert _stats.get("dropped.attribute_limit") == 2  # (not the dropped event's attributes)
    assert _stats.get("dropped.event_limit") == 1
    _validate([rec])


# -- 3. events and links: the sanitizer's limit ------------------------------------------------------
def _span_with_items(n_event: int, n_link: int) -> Span:
    with capture_spans(rollups=None):
        span = pt.start_span("op", attributes={"a": 1})
        assert isinstance(span, Span)
        span.add_event("e", _attrs(n_event))
        span.add_event("plain", {"a": 1})
        span.add_link(pt.TraceContext(7, 8, 1, trace_state=(("congo", "t61"),)), _attrs(n_link))
        span.end()
    return span


def test_the_sanitizer_counts_what_it_drops_of_events_and_links() -> None:
    san = Sanitizer(max_attributes=2)
    span = _span_with_items(5, 6)
    rec = san._span_record(span, "svc", "prod", RESOURCE, None)
    event, plain = rec["events"]
    (link,) = rec["links"]
    assert event["dropped_attributes_count"] == 3
    assert len(event["attributes"]) == 2
    assert "dropped_attributes_count" not in plain
    assert link["dropped_attributes_count"] == 4
    assert list(link) == ["trace_id", "span_id", "attributes", "trace_state", "dropped_attributes_count"]
    assert "dropped_attributes_count" not in rec  # (the span's own map fits)
    _validate([rec])


def test_the_span_limit_and_the_sanitizer_add_up_for_events_and_links() -> None:
    with capture_spans(sanitizer=Sanitizer(max_attributes=2), max_attributes=4, rollups=None) as mem:
        with pt.span("op") as s:
            s.add_event("e", _attrs(7))  # 3 dropped by the span, 2 by the sanitizer
            s.add_link(pt.TraceContext(7, 8, 1), _attrs(5))  # 1 by the span, 2 by the sanitizer
    (rec,) = mem.spans("op")
    assert rec["events"][0]["dropped_attributes_count"] == 5
    assert rec["links"][0]["dropped_attributes_count"] == 3
    _validate([rec])


def test_every_path_counts_the_same_for_events_and_links() -> None:
    spans = [_span_with_items(5, 6), _span_with_items(1, 1), _span_with_items(3, 0)]

    def counts(recs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            tuple(e.get("dropped_attributes_count") for e in r["events"])
            + tuple(lk.get("dropped_attributes_count") for lk in r["links"])
            for r in recs
        ]

    expected = [(3, None, 4), (None, None, None), (1, None, None)]
    san = Sanitizer(max_attributes=2)
    python = [san._span_record(s, "svc", "prod", RESOURCE, None) for s in spans]
    assert counts(python) == expected
    for _ in range(2):  # cold caches, then warm (the C builder where compiled)
        got = san._span_records(spans, "svc", "prod", RESOURCE, None)
        assert got == python
        assert [list(r) for r in got] == [list(r) for r in python]
        assert [[list(e) for e in r["events"]] for r in got] == [
            [list(e) for e in r["events"]] for r in python
        ]
    with_rules = Sanitizer(max_attributes=2, add=[lambda key, text: text])
    assert counts(with_rules._span_records(spans, "svc", "prod", RESOURCE, None)) == expected
    plain = [span_record(s, "svc", "prod", RESOURCE) for s in spans]
    assert counts([san(r) for r in plain]) == expected  # (a record handed to the sanitizer)
    assert counts([san(san(r)) for r in plain]) == expected  # (sanitized twice: counted once)
    odd = {**plain[0], "dataset": "x"}  # (not the exact key set: the general path)
    assert counts([san(odd)]) == expected[:1]
    assert all("dropped_attributes_count" not in e for r in plain for e in r["events"])  # (no limit hit)


def test_counts_already_on_an_event_are_added_to_and_the_given_record_is_not_changed() -> None:
    with capture_spans(max_attributes=5, rollups=None):
        span = pt.start_span("op")
        assert isinstance(span, Span)
        span.add_event("e", _attrs(8))
        span.add_link(pt.TraceContext(7, 8, 1), _attrs(9))
        span.end()
    rec = span_record(span, "svc", "prod", RESOURCE)
    assert rec["events"][0]["dropped_attributes_count"] == 3
    assert rec["links"][0]["dropped_attributes_count"] == 4
    san = Sanitizer(max_attributes=2)
    out = san(rec)
    assert out["events"][0]["dropped_attributes_count"] == 6
    assert out["links"][0]["dropped_attributes_count"] == 7
    assert san._span_record(span, "svc", "prod", RESOURCE, None)["events"][0]["dropped_attributes_count"] == 6
    assert rec["events"][0]["dropped_attributes_count"] == 3  # (the record handed in is unchanged)
    assert len(rec["events"][0]["attributes"]) == 5


# -- 4. the JSON Schema ------------------------------------------------------------------------------
def test_the_schema_accepts_event_and_link_counts_of_one_or_more_only() -> None:
    rec = span_record(_span_with_items(1, 1), "svc", "prod", RESOURCE)
    rec = {**rec, "events": [{**rec["events"][0], "dropped_attributes_count": 1}]}
    rec["links"] = [{**rec["links"][0], "dropped_attributes_count": 2}]
    _validate([rec])
    for bad in (0, -1, "3", 1.5):
        with pytest.raises(jsonschema.ValidationError):
            _validate([{**rec, "events": [{**rec["events"][0], "dropped_attributes_count": bad}]}])
        with pytest.raises(jsonschema.ValidationError):
            _validate([{**rec, "links": [{**rec["links"][0], "dropped_attributes_count": bad}]}])


# -- 5. the exporters ------------------------------------------------------------------------------
def _record_with_drops() -> dict[str, Any]:
    with capture_spans(max_attributes=2, rollups=None) as mem:
        with pt.span("op") as s:
            s.add_event("big", _attrs(5))
            s.add_event("small", {"a": 1})
            s.add_link(pt.TraceContext(7, 8, 1, trace_state=(("congo", "t61"),)), _attrs(4))
            s.add_link(pt.TraceContext(9, 10, 1))
    (rec,) = mem.spans("op")
    return rec


def test_otlp_protobuf_carries_event_and_link_counts() -> None:
    span = _pb_span(_record_with_drops())
    assert [e.dropped_attributes_count for e in span.events] == [3, 0]
    assert [lk.dropped_attributes_count for lk in span.links] == [2, 0]
    assert span.links[0].trace_state == "congo=t61"
    assert [len(e.attributes) for e in span.events] == [2, 1]
    assert span.dropped_attributes_count == 0
    assert span.dropped_events_count == 0


def test_otlp_json_carries_event_and_link_counts_as_the_proto_json_mapping_reads_them() -> None:
    rec = _record_with_drops()
    span = _json_span(rec)
    assert [e.get("droppedAttributesCount") for e in span["events"]] == [3, None]
    assert [lk.get("droppedAttributesCount") for lk in span["links"]] == [2, None]
    # protobuf's own JSON parser knows the field (it refuses unknown ones)
    message = json_format.Parse(json.dumps(base64_ids(encode_otlp_json([rec]))), ExportTraceServiceRequest())
    pspan = message.resource_spans[0].scope_spans[0].spans[0]
    assert [e.dropped_attributes_count for e in pspan.events] == [3, 0]
    assert [lk.dropped_attributes_count for lk in pspan.links] == [2, 0]


def test_otlp_ignores_odd_event_and_link_counts_in_hand_made_records() -> None:
    base: dict[str, Any] = {
        "type": "span",
        "trace_id": "1" * 32,
        "span_id": "2" * 16,
        "name": "x",
        "events": [
            {"name": "a", "time_unix_nano": 1, "attributes": {}, "dropped_attributes_count": "3"},
            {"name": "b", "time_unix_nano": 2, "attributes": {}, "dropped_attributes_count": -1},
            {"name": "c", "time_unix_nano": 3, "attributes": {}, "dropped_attributes_count": 2**40},
            {"name": "d", "time_unix_nano": 4, "attributes": {}, "dropped_attributes_count": True},
        ],
        "links": [
            {"trace_id": "3" * 32, "span_id": "4" * 16, "attributes": {}, "dropped_attributes_count": 2**33},
            {"trace_id": "5" * 32, "span_id": "6" * 16, "attributes": {}, "dropped_attributes_count": 0},
        ],
    }
    span = _json_span(base)
    assert [e.get("droppedAttributesCount") for e in span["events"]] == [None, None, 0xFFFFFFFF, None]
    assert [lk.get("droppedAttributesCount") for lk in span["links"]] == [0xFFFFFFFF, None]
    pspan = _pb_span(base)
    assert [e.dropped_attributes_count for e in pspan.events] == [0, 0, 0xFFFFFFFF, 0]
    assert [lk.dropped_attributes_count for lk in pspan.links] == [0xFFFFFFFF, 0]


def test_the_otlp_payload_of_records_without_drops_is_unchanged() -> None:
    # (the common path: no count, no byte more than before; field 4 of an event never written)
    with capture_spans(rollups=None) as mem, pt.span("op") as s:
        s.add_event("e", {"a": 1})
        s.add_link(pt.TraceContext(7, 8, 1), {"b": 2})
    (rec,) = mem.spans("op")
    span = _json_span(rec)
    assert "droppedAttributesCount" not in span["events"][0]
    assert "droppedAttributesCount" not in span["links"][0]
    body = encode_otlp_protobuf([rec])
    event, link = rec["events"][0], rec["links"][0]
    zero = {
        **rec,
        "events": [{**event, "dropped_attributes_count": 0}],
        "links": [{**link, "dropped_attributes_count": 0}],
    }
    assert encode_otlp_protobuf([zero]) == body  # (a zero count is not written)
    assert encode_otlp_json([zero]) == encode_otlp_json([rec])
    counted = {**rec, "events": [{**event, "dropped_attributes_count": 1}]}
    assert len(encode_otlp_protobuf([counted])) > len(body)


def test_console_ndjson_writes_the_counts_and_zipkin_annotations_stay_as_they_were() -> None:
    rec = _record_with_drops()
    out = io.StringIO()
    assert ConsoleExporter(stream=out).export([rec])
    (line,) = out.getvalue().splitlines()
    written = json.loads(line)
    assert written["events"][0]["dropped_attributes_count"] == 3
    assert written["links"][0]["dropped_attributes_count"] == 2
    zipkin = to_zipkin(rec)
    assert zipkin is not None
    # (Zipkin has no place for drop counts, span-level ones included: the annotation is the
    # event's name and attributes, as before)
    assert json.loads(zipkin["annotations"][0]["value"]) == {"big": {"k0": 0, "k1": 1}}
    assert json.loads(zipkin["annotations"][1]["value"]) == {"small": {"a": 1}}
    assert "dropped" not in json.dumps(zipkin)


def test_the_stats_count_every_spans_dropped_attributes_also_when_the_map_is_memoised() -> None:
    # (the resource used to hide this: its cut added to the counter; repeated maps are memoised)
    san = Sanitizer(max_attributes=3)
    with capture_spans(sanitizer=san, rollups=None) as mem:
        for _ in range(4):
            with pt.span("op", attributes=_attrs(5)):
                pass
    assert [r["dropped_attributes_count"] for r in mem.spans("op")] == [2, 2, 2, 2]
    assert _stats.get("sanitize.attributes_dropped") == 4 * 2
    assert san._memo_hits >= 1  # (the case: at least one map came from the memo)
