"""Rollups.observe_many (the pipeline's chunked path) counts exactly like observe()."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace._sketch import DurationSketch
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
    no_id = lambda rs: [{**r, "record_id": ""} for r in sorted(rs, key=key)]  # noqa: E731 (random)
    assert no_id(a) == no_id(b)
    assert sum(r["count"] for r in b) == 2_000
    assert sum(r["errors"] for r in b) == len(range(0, 2_000, 9))


def test_observe_many_matches_an_independent_count_per_operation() -> None:
    """Grouped counting gives what adding every span one by one gives (counts, errors,
    min/max, sum, the sketch's buckets and thus p50/p95/p99)."""
    spans = _spans(1_500)
    rollups = Rollups(interval_s=1, max_open_intervals=100)
    rollups.bind(service="r", environment="e")
    for i in range(0, len(spans), 512):
        rollups.observe_many(spans[i : i + 512])
    interval = 1_000_000_000
    expected: dict[tuple[str, int], dict[str, Any]] = {}
    for s in spans:
        ms = (s.end_ns - s.start_ns) / 1e6
        key = (s.name, s.end_ns - s.end_ns % interval)
        e = expected.setdefault(key, {"n": 0, "err": 0, "sum": 0.0, "min": math.inf, "max": 0.0})
        e.setdefault("sketch", DurationSketch()).add(ms)
        e["n"] += 1
        e["err"] += s.status == pt.StatusCode.ERROR
        e["sum"] += ms
        e["min"], e["max"] = min(e["min"], ms), max(e["max"], ms)
    records = rollups.collect(0, force=True)
    assert len(records) == len(expected) > 20  # several intervals per operation
    for r in records:
        e = expected[(r["operation"], r["minute_start_unix_nano"])]
        assert (r["count"], r["errors"]) == (e["n"], e["err"])
        assert (r["duration_min_ms"], r["duration_max_ms"]) == (round(e["min"], 6), round(e["max"], 6))
        assert r["duration_sum_ms"] == pytest.approx(e["sum"], rel=1e-9)
        assert r["sketch"] == e["sketch"].to_dict()


def test_add_many_equals_add() -> None:
    values = [0.0, -1.0, 1e-9, 0.5, 0.5, 3.0, 1234.5] + [i / 7 for i in range(500)]
    one, many = DurationSketch(), DurationSketch()
    for v in values:
        one.add(v)
    many.add_many(values)
    assert many.to_dict() == one.to_dict()
    assert (many.count, many.zero_count) == (len(values), one.zero_count)
