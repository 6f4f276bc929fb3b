"""Rollups (exact per-minute RED metrics) and the mergeable duration sketch."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._sketch import DurationSketch, merge_sketches
from pitchey_trace._span import SpanKind, StatusCode
from pitchey_trace.processors import OTHER_OPERATION, Rollups, merge_rollups
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

MIN = 60_000_000_000
T0 = 1_800_000_000 * 1_000_000_000 // MIN * MIN  # a minute boundary


@dataclass
class FakeSpan:
    """What Rollups reads from a finished span."""

    name: str
    start_ns: int
    end_ns: int
    kind: SpanKind = SpanKind.SERVER
    status: StatusCode = StatusCode.UNSET


def span(name: str, end_ns: int, ms: float, error: bool = False) -> FakeSpan:
    return FakeSpan(
        name, end_ns - int(ms * 1e6), end_ns, status=StatusCode.ERROR if error else StatusCode.UNSET
    )


def exact_quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1]  # the nearest rank, as the analysis engine picks


def test_one_record_per_operation_and_minute_with_exact_counts() -> None:
    r = Rollups()
    r.bind(service="api", environment="prod")
    durations = [float(d) for d in range(1, 101)]
    for i, d in enumerate(durations):
        r.observe(span("GET /a", T0 + 1_000_000 * i, d, error=i % 10 == 0))  # type: ignore[arg-type]
    r.observe(span("GET /b", T0 + MIN + 5, 3.0))  # type: ignore[arg-type]
    assert r.collect(T0 + MIN + 1) == []  # the minute has not ended long enough ago
    [a] = r.collect(T0 + 2 * MIN)  # first minute + grace passed; second minute not yet
    assert a["operation"] == "GET /a"
    assert (a["service"], a["environment"], a["kind"]) == ("api", "prod", "server")
    assert a["minute_start_unix_nano"] == T0
    assert a["interval_s"] == 60
    assert (a["count"], a["errors"]) == (100, 10)
    assert a["duration_sum_ms"] == pytest.approx(5050.0)
    assert (a["duration_min_ms"], a["duration_max_ms"]) == (1.0, 100.0)
    for field, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        assert a[field] == pytest.approx(exact_quantile(durations, q), rel=0.01)
    jsonschema.validate(a, json_schema())
    [b] = r.collect(T0 + 10 * MIN, force=True)
    assert b["operation"] == "GET /b"
    assert r.collect(T0 + 10 * MIN, force=True) == []


def test_forced_partial_minute_is_not_emitted_twice_and_merges_back() -> None:
    r = Rollups()
    r.observe(span("op", T0 + 10, 1.0))  # type: ignore[arg-type]
    r.observe(span("op", T0 + 20, 3.0, error=True))  # type: ignore[arg-type]
    [first] = r.collect(T0 + 30, force=True)  # flush mid-minute
    r.observe(span("op", T0 + 40, 5.0))  # type: ignore[arg-type]
    [second] = r.collect(T0 + 2 * MIN)
    assert (first["count"], second["count"]) == (2, 1)
    [merged] = merge_rollups([first, second, {"type": "span"}])
    assert (merged["count"], merged["errors"]) == (3, 1)
    assert merged["duration_sum_ms"] == pytest.approx(9.0)
    assert (merged["duration_min_ms"], merged["duration_max_ms"]) == (1.0, 5.0)
    assert merged["p50_ms"] == pytest.approx(3.0, rel=0.01)
    assert DurationSketch.from_dict(merged["sketch"]).count == 3


def test_error_spans_durations_are_kept_apart_and_merge() -> None:
    """``error_durations``: the error spans' sum, extremes and sketch, and the others'
    extremes, so metrics can have a latency histogram per status. Partial records merge."""
    r = Rollups()
    r.bind(service="api", environment="prod")
    ok, failed = [2.0, 4.0, 6.0], [1.0, 9.0]
    for i, ms in enumerate(ok + failed):
        r.observe(span("op", T0 + 10 + i, ms, error=i >= len(ok)))  # type: ignore[arg-type]
    [record] = r.collect(T0 + 30, force=True)
    jsonschema.validate(record, json_schema())
    apart = record["error_durations"]
    assert (apart["sum_ms"], apart["min_ms"], apart["max_ms"]) == (10.0, 1.0, 9.0)
    assert (apart["ok_min_ms"], apart["ok_max_ms"]) == (2.0, 6.0)
    assert DurationSketch.from_dict(apart["sketch"]).count == 2
    # A record without errors has no such field; one with errors only has no others' extremes.
    r.observe(span("op", T0 + 40, 3.0))  # type: ignore[arg-type]
    r.observe(span("all-failed", T0 + 40, 7.0, error=True))  # type: ignore[arg-type]
    later = {x["operation"]: x for x in r.collect(T0 + 2 * MIN)}
    assert "error_durations" not in later["op"]
    all_failed = later["all-failed"]["error_durations"]
    assert (all_failed["ok_min_ms"], all_failed["ok_max_ms"]) == (None, None)
    jsonschema.validate(later["all-failed"], json_schema())
    # Merged: the errors' part of both, the others' extremes across both (3.0 came later).
    [merged] = merge_rollups([record, later["op"]])
    assert (merged["count"], merged["errors"]) == (6, 2)
    m = merged["error_durations"]
    assert (m["sum_ms"], m["min_ms"], m["max_ms"], m["ok_min_ms"], m["ok_max_ms"]) == (
        10.0,
        1.0,
        9.0,
        2.0,
        6.0,
    )
    assert DurationSketch.from_dict(m["sketch"]).count == 2
    # A record with errors from a writer before the field: the merged split is unknown, not wrong.
    old = {k: v for k, v in record.items() if k != "error_durations"}
    [unknown] = merge_rollups([old, later["op"]])
    assert "error_durations" not in unknown
    assert unknown["errors"] == 2


def test_error_durations_are_the_same_from_c_and_python() -> None:
    """The accelerated chunk summary and the Python one give the same records."""
    with capture_spans(rollups=None):
        spans = []
        for i in range(300):
            s = pt.start_span(f"op{i % 3}", start_time_ns=T0 + i * 1_000_000)
            assert isinstance(s, pt.Span)
            if i % 7 == 0:
                s.set_status("error")
            s.end(s.start_ns + (i * 7919) % 50_000_000)
            spans.append(s)
    c_path, py_path = Rollups(), Rollups()
    odd = [FakeSpan("op0", T0, T0 + 1, SpanKind.INTERNAL), FakeSpan("op0", T0 + 1, T0, SpanKind.INTERNAL)]
    c_path.observe_many(spans)
    c_path.observe_many(odd)
    py_path.observe_many([*spans, *odd])  # (a chunk with a non-Span: the Python summary)
    key = lambda x: x["operation"]  # noqa: E731
    a, b = sorted(c_path.collect(0, force=True), key=key), sorted(py_path.collect(0, force=True), key=key)
    assert [x["error_durations"]["sketch"] for x in a] == [x["error_durations"]["sketch"] for x in b]
    assert [{**x, "record_id": ""} for x in a] == [{**x, "record_id": ""} for x in b]


def test_error_durations_pass_the_sanitizer_whole() -> None:
    """The default pipeline (sanitizer on) exports a rollup's error sketch as it is: its
    ``counts`` may be longer than the sanitizer's sequence limit (256)."""
    now = T0
    with capture_spans() as exp:
        for i in range(40):  # error spans from 1 us to ~1 s: hundreds of buckets apart
            s = pt.start_span("op", start_time_ns=now)
            assert isinstance(s, pt.Span)
            s.set_status("error", "e")
            s.end(now + int(1000 * 1.4**i))
        pt.force_flush()
    [record] = exp.of_type("rollup")
    sketch = record["error_durations"]["sketch"]
    assert len(sketch["counts"]) > 256
    assert sum(sketch["counts"]) + sketch["zero_count"] == record["errors"] == 40


def test_memory_is_bounded_other_operation_and_interval_cap() -> None:
    r = Rollups(max_operations=3, max_open_intervals=2)
    for i in range(10):
        r.observe(span(f"op{i}", T0 + i, 1.0))  # type: ignore[arg-type]
    assert _stats.get("rollups.overflow") == 7
    r.observe(span("late", T0 + MIN, 1.0))  # type: ignore[arg-type]
    # a third open interval is refused
    r.observe(span("later", T0 + 2 * MIN, 1.0))  # type: ignore[arg-type]
    assert _stats.get("dropped.rollups_interval_cap") == 1
    recs = {x["operation"]: x["count"] for x in r.collect(T0 + 5 * MIN, force=True)}
    assert recs == {"op0": 1, "op1": 1, "op2": 1, OTHER_OPERATION: 7, "late": 1}
    assert r.pending() == 0


def test_clear_and_shutdown_forget_everything() -> None:
    r = Rollups()
    r.observe(span("op", T0, 1.0))  # type: ignore[arg-type]
    r.clear()
    assert r.collect(T0 + 10 * MIN, force=True) == []
    r.observe(span("op", T0, 1.0))  # type: ignore[arg-type]
    r.shutdown()
    assert r.pending() == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        Rollups(interval_s=0)
    with pytest.raises(ValueError):
        Rollups(relative_accuracy=1.5)
    with pytest.raises(ValueError):
        Rollups(max_operations=0)


def test_rollups_are_exact_at_ten_percent_sampling_through_the_pipeline() -> None:
    with capture_spans(sample_rate=0.1, keep_errors=False, slow_threshold_ms=None, rollups=Rollups()) as mem:
        for i in range(3000):
            with pt.span("checkout", kind=pt.SpanKind.SERVER) as s:
                if i % 30 == 0:
                    s.set_status("error")
            with pt.span("db", kind=pt.SpanKind.CLIENT):
                pass
    rollups = mem.of_type("rollup")
    by_op: dict[str, list[dict[str, Any]]] = {}
    for x in rollups:
        by_op.setdefault(x["operation"], []).append(x)
    assert sum(x["count"] for x in by_op["checkout"]) == 3000
    assert sum(x["errors"] for x in by_op["checkout"]) == 100
    assert sum(x["count"] for x in by_op["db"]) == 3000
    assert {x["kind"] for x in by_op["db"]} == {"client"}
    assert len(mem.spans()) < 1500  # the spans themselves were sampled
    assert {x["service"] for x in rollups} == {"test"}


# -- the sketch --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-4, max_value=1e6, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_sketch_quantiles_are_within_relative_accuracy(values: list[float], q: float) -> None:
    s = DurationSketch(0.01)
    for v in values:
        s.add(v)
    assert s.quantile(q) == pytest.approx(exact_quantile(values, q), rel=0.0101)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), max_size=200),
    st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), max_size=200),
)
def test_sketch_merge_equals_the_sketch_of_the_union(a: list[float], b: list[float]) -> None:
    sa, sb, su = DurationSketch(), DurationSketch(), DurationSketch()
    for v in a:
        sa.add(v)
        su.add(v)
    for v in b:
        sb.add(v)
        su.add(v)
    assert merge_sketches([sa.to_dict(), sb.to_dict()]) == su.to_dict()
    round_trip = DurationSketch.from_dict(su.to_dict())
    assert round_trip.to_dict() == su.to_dict()
    assert round_trip.count == len(a) + len(b)


def test_sketch_bins_are_bounded_and_only_low_quantiles_lose_accuracy() -> None:
    s = DurationSketch(0.01, max_bins=100)
    values = [10 ** random.Random(7).uniform(-5, 8) for _ in range(5000)]
    for v in values:
        s.add(v)
    d = s.to_dict()
    assert len(d["counts"]) <= 100
    assert sum(d["counts"]) + d["zero_count"] == 5000
    assert s.quantile(0.99) == pytest.approx(exact_quantile(values, 0.99), rel=0.0101)
    with pytest.raises(ValueError):
        s.merge(DurationSketch(0.02))
    with pytest.raises(ValueError):
        DurationSketch.from_dict({"kind": "tdigest"})
    assert DurationSketch().quantile(0.5) == 0.0
    assert math.isfinite(DurationSketch.from_dict(d).quantile(0.5))


def test_rollups_and_thresholds_arguments_are_checked() -> None:
    from pitchey_trace.records import CategoryThresholds

    for kwargs in (
        {"grace_s": float("nan")},
        {"max_operations": 1.5},
        {"relative_accuracy": 0},
        {"max_open_intervals": None},
    ):
        with pytest.raises((pt.ConfigurationError, TypeError)):
            Rollups(**kwargs)  # type: ignore[arg-type]
    for kwargs in (
        {"fast_ms": float("nan")},
        {"slow_ms": "1s"},
        {"very_slow_ms": float("inf")},
        {"per_kind": 3},
        {"per_kind": {"server": (1, "x", 3)}},
    ):
        with pytest.raises((ValueError, TypeError)):
            CategoryThresholds(**kwargs)  # type: ignore[arg-type]
    assert CategoryThresholds(fast_ms=5, slow_ms=50, per_kind={"server": (1, 2, 3)}).table["server"] == (
        1.0,
        2.0,
        3.0,
    )
