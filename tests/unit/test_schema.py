"""Every record the pipeline exports validates against the published JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import pitchey_trace as pt
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

ROOT = Path(__file__).resolve().parents[2]


def test_schema_file_is_valid_and_shipped() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (ROOT / "pitchey_trace" / "schema" / "record-v1.json").exists()
    assert "record-v1.json" in (ROOT / "docs" / "schema.md").read_text()


def test_every_exported_record_validates() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    with (
        capture_spans() as mem,
        pt.span(
            "GET /pitches/{id}", kind=pt.SpanKind.SERVER, attributes={"http.route": "/pitches/{id}"}
        ) as s,
    ):
        s.add_event("cache_miss", {"keys": ["a", "b"]})
        s.add_link(pt.TraceContext(0x1234, 0x5678), {"reason": "batch"})
        s.set_attribute("flags", [True, False])
        pt.emit_audit("GET /pitches/{id}", "/pitches/{id}", "200", actor="u-1")
        with pytest.raises(ZeroDivisionError), pt.span("compute", kind=pt.SpanKind.CLIENT):
            1 / 0  # noqa: B018
    records = mem.records
    assert {r["type"] for r in records} >= {"span", "audit", "rollup"}
    for rec in records:
        validator.validate(json.loads(json.dumps(rec)))


def test_schema_rejects_malformed_records() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    with capture_spans(rollups=None) as mem, pt.span("x"):
        pass
    good = json.loads(json.dumps(mem.spans()[0]))
    for key, bad in (("trace_id", "0" * 32), ("span_id", "XYZ"), ("kind", "weird"), ("status", "fine")):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**good, key: bad})


def test_record_key_sets_match_what_the_pipeline_builds() -> None:
    # The sanitizer's fast paths key on these sets: a new field must be added to them.
    from pitchey_trace.records import AUDIT_RECORD_KEYS, SPAN_RECORD_KEYS

    with capture_spans(rollups=None) as mem, pt.span("x"):
        pt.emit_audit("read", "pitches", "success")
    [span] = mem.spans()
    [audit] = mem.of_type("audit")
    assert span.keys() == SPAN_RECORD_KEYS
    assert audit.keys() == AUDIT_RECORD_KEYS
    schema = json_schema()["$defs"]
    assert set(schema["span"]["required"]) == SPAN_RECORD_KEYS
    # record_id is built on every audit but optional in the schema: archives written before it
    # stay valid. Every built key is a property the schema knows.
    assert set(schema["audit"]["required"]) == AUDIT_RECORD_KEYS - {"record_id"}
    assert "record_id" in AUDIT_RECORD_KEYS
    assert schema["audit"]["properties"].keys() >= AUDIT_RECORD_KEYS
    for kind in ("audit", "log", "rollup"):
        assert "record_id" in schema[kind]["properties"]
        assert "record_id" not in schema[kind]["required"]
