from __future__ import annotations

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans


def test_nested_spans_share_trace_and_parent() -> None:
    with capture_spans() as mem:
        with pt.span("outer") as outer, pt.span("inner"):
            pass
    spans = {s["name"]: s for s in mem.spans()}
    assert spans["inner"]["trace_id"] == spans["outer"]["trace_id"] == outer.trace_id_hex
    assert spans["inner"]["parent_span_id"] == spans["outer"]["span_id"]
    assert spans["outer"]["parent_span_id"] is None
