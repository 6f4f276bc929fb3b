"""Rollups.observe_many (the pipeline's chunked path) counts exactly like observe()."""

from __future__ import annotations

import random

import pitchey_trace as pt
from pitchey_trace.processors import Rollups, merge_rollups


def _spans(n: int) -> list[pt.Span]:
    pt.configure(service="r", exporters=[], rollups=None, max_queue_size=10 * n, schedule_delay_ms=60_000)
    rng = random.Random(3)
    made = []
    for i in range(n):
        s = pt.start_span(f"op{i % 5}", start_time_ns=1_700_000_000_000_000_000 + i * 7_000_000)
        assert isinstance(s, pt.Span)
        if i % 9 == 0:
            s.set_status("error")
        s.end(s.start_ns + rng.randrange(1, 50_000_000))
        made.append(s)
    return made


def test_observe_many_equals_observe() -> None:
    spans = _spans(2_000)
    one, many = Rollups(), Rollups()
    for r in (one, many):
        r.bind(service="r", environment="e")
    for s in spans:
        one.observe(s)
    many.observe_many(spans)
    a = merge_rollups(one.collect(0, force=True))
    b = merge_rollups(many.collect(0, force=True))
    key = lambda r: (r["operation"], r["minute_start_unix_nano"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    assert sum(r["count"] for r in b) == 2_000
    assert sum(r["errors"] for r in b) == len(range(0, 2_000, 9))
