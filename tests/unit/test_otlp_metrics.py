"""OTLPMetricsExporter's metrics, histograms and encodings, decoded with the official
opentelemetry-proto classes (the binary form, and the JSON form through protobuf's own JSON
parser, which must give the same message)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace._sketch import DurationSketch
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import OTLPMetricsExporter
from pitchey_trace.exporters.otlp_metrics import (
    CALLS_METRIC,
    DURATION_METRIC,
    _json,
    _proto,
    explicit_buckets,
    exponential_buckets,
)
from tests.support.otlp import base64_ids

MINUTE = 60_000_000_000
T0 = 1_700_000_040 * 1_000_000_000  # a minute boundary in the past


def rollup(
    durations: Sequence[float],
    *,
    errors: int = 0,
    operation: str = "GET /pitches/{id}",
    kind: str = "server",
    minute: int = T0,
    service: str = "pitch-api",
    apart: bool = True,
) -> dict[str, Any]:
    """A rollup record of ``durations``, the last ``errors`` of them error spans (kept apart in
    ``error_durations`` unless ``apart`` is false: a record written before they were)."""
    sketch = DurationSketch()
    sketch.add_many(durations)
    record: dict[str, Any] = {
        "schema": 1,
        "type": "rollup",
        "service": service,
        "environment": "test",
        "operation": operation,
        "kind": kind,
        "minute_start_unix_nano": minute,
        "interval_s": 60,
        "count": len(durations),
        "errors": errors,
        "duration_sum_ms": math.fsum(durations),
        "duration_min_ms": min(durations),
        "duration_max_ms": max(durations),
        "sketch": sketch.to_dict(),
    }
    if errors and apart:
        failed, ok = durations[len(durations) - errors :], durations[: len(durations) - errors]
        error_sketch = DurationSketch()
        error_sketch.add_many(failed)
        record["error_durations"] = {
            "sum_ms": math.fsum(failed),
            "min_ms": min(failed),
            "max_ms": max(failed),
            "ok_min_ms": min(ok, default=None),
            "ok_max_ms": max(ok, default=None),
            "sketch": error_sketch.to_dict(),
        }
    return record


def exporter(**kwargs: Any) -> OTLPMetricsExporter:
    kwargs.setdefault("sdk_stats", False)
    exp = OTLPMetricsExporter("http://127.0.0.1:9/v1/metrics", **kwargs)
    exp.bind_resource({"service.name": "pitch-api", "service.instance.id": "i-1", "host.name": "h"})
    return exp


def decoded(exp: OTLPMetricsExporter, records: list[dict[str, Any]]) -> ExportMetricsServiceRequest:
    """The request for ``records``, decoded from its binary form; its JSON form must parse to
    the same message."""
    tree = exp._fold_and_build(records)
    msg = ExportMetricsServiceRequest.FromString(bytes(_proto("request", tree)))
    from_json = json_format.Parse(dumps(base64_ids(_json("request", tree))), ExportMetricsServiceRequest())
    assert from_json == msg
    return msg


def metrics(msg: ExportMetricsServiceRequest) -> dict[str, Any]:
    return {m.name: m for rm in msg.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def attrs(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def exp_quantile(point: Any, q: float) -> float:
    """A quantile read from an exponential histogram point: its bucket's upper bound."""
    base = 2.0 ** (2.0**-point.scale)
    rank = q * (point.count - 1)
    seen = point.zero_count
    if seen > rank:
        return 0.0
    for j, c in enumerate(point.positive.bucket_counts):
        seen += c
        if seen > rank:
            return float(base ** (point.positive.offset + j + 1))
    raise AssertionError("rank beyond the buckets")


def test_calls_and_duration_follow_the_span_metrics_connector() -> None:
    durations = [random.Random(1).lognormvariate(3, 1) for _ in range(500)]
    msg = decoded(exporter(), [rollup(durations, errors=7)])
    [rm] = msg.resource_metrics
    resource = attrs(rm.resource)
    assert resource["service.name"] == "pitch-api"
    assert resource["service.instance.id"] == "i-1"
    assert resource["deployment.environment.name"] == "test"
    ms = metrics(msg)
    calls = ms[CALLS_METRIC].sum
    assert calls.is_monotonic
    assert calls.aggregation_temporality == 2
    by_status = {attrs(p)["status.code"]: p.as_int for p in calls.data_points}
    assert by_status == {"STATUS_CODE_UNSET": 493, "STATUS_CODE_ERROR": 7}
    assert {attrs(p)["span.kind"] for p in calls.data_points} == {"SPAN_KIND_SERVER"}
    assert {attrs(p)["span.name"] for p in calls.data_points} == {"GET /pitches/{id}"}
    duration = ms[DURATION_METRIC]
    assert duration.unit == "ms"
    # One histogram per status, as the calls (the last 7 durations are the errors').
    points = {attrs(p)["status.code"]: p for p in duration.exponential_histogram.data_points}
    assert points.keys() == {"STATUS_CODE_UNSET", "STATUS_CODE_ERROR"}
    for status, part in (("STATUS_CODE_UNSET", durations[:493]), ("STATUS_CODE_ERROR", durations[493:])):
        point = points[status]
        assert attrs(point)["span.name"] == "GET /pitches/{id}"
        assert point.count == len(part)
        assert sum(point.positive.bucket_counts) + point.zero_count == len(part)
        assert point.sum == pytest.approx(math.fsum(part))
        assert (point.min, point.max) == (min(part), max(part))
        assert point.scale == 5  # as fine as the sketch's 1% buckets
        ordered = sorted(part)
        for q in (0.5, 0.95, 0.99):
            exact = ordered[round(q * (len(ordered) - 1))]
            assert exp_quantile(point, q) == pytest.approx(exact, rel=0.045)


def test_a_rollup_without_its_errors_apart_counts_its_durations_as_one() -> None:
    """A record written before rollups kept the errors' durations apart: its durations cannot
    be split, so they stay in one histogram (under the status most of its spans had)."""
    durations = [float(i) for i in range(1, 11)]
    msg = decoded(exporter(), [rollup(durations, errors=2, apart=False)])
    [point] = metrics(msg)[DURATION_METRIC].exponential_histogram.data_points
    assert attrs(point)["status.code"] == "STATUS_CODE_UNSET"
    assert (point.count, point.min, point.max) == (10, 1.0, 10.0)
    calls = {attrs(p)["status.code"]: p.as_int for p in metrics(msg)[CALLS_METRIC].sum.data_points}
    assert calls == {"STATUS_CODE_UNSET": 8, "STATUS_CODE_ERROR": 2}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-5, max_value=1e6, allow_nan=False), min_size=1, max_size=300),
    st.integers(min_value=2, max_value=200),
)
def test_exponential_buckets_keep_every_count_within_max_size(values: list[float], max_size: int) -> None:
    sketch = DurationSketch()
    sketch.add_many(values)
    scale, offset, counts = exponential_buckets(sketch, 1.0, max_size, min(values), max(values))
    assert len(counts) <= max_size
    assert sum(counts) + sketch.zero_count == len(values)
    assert not counts or (counts[0] > 0 and counts[-1] > 0)
    base = 2.0 ** (2.0**-scale)
    # Every value lies in or next to its bucket: within the sketch's 1% of the bounds.
    for v in values:
        k = math.ceil(math.log2(v) * 2.0**scale) - 1
        assert offset - 1 <= k <= offset + len(counts)
        assert base**k <= v * 1.0201
        assert v <= base ** (k + 1) * 1.0201


def test_a_wide_range_lowers_the_scale() -> None:
    values = [10.0**e for e in range(-3, 6)]  # 1 us to 100 s
    sketch = DurationSketch()
    sketch.add_many(values)
    scale, _, counts = exponential_buckets(sketch, 1.0, 20)
    assert scale < 5
    assert len(counts) <= 20
    assert sum(counts) == len(values)


def test_explicit_buckets_count_each_value_in_its_bucket() -> None:
    sketch = DurationSketch()
    sketch.add_many([9.5] * 5 + [0.0, 3.0, 10.5, 20_000.0])
    counts = explicit_buckets(sketch, (2.0, 4.0, 10.0, 100.0), 1.0, 0.0, 20_000.0)
    # (zero in the first; 3 ms in (2, 4]; 9.5 ms in (4, 10]; 10.5 in (10, 100]; 20 s above all)
    assert counts == [1, 1, 5, 1, 1]


def test_one_repeated_duration_on_a_bound_stays_in_that_bound_s_bucket() -> None:
    # Within a 1% sketch bucket a value's side of a bound is unknown, but the record's exact
    # min and max pin a single repeated duration.
    sketch = DurationSketch()
    sketch.add_many([10.0] * 4)
    assert explicit_buckets(sketch, (4.0, 10.0, 100.0), 1.0, 10.0, 10.0) == [0, 4, 0, 0]


def test_explicit_histogram_in_seconds() -> None:
    durations = [1.0, 3.0, 7.0, 300.0, 20_000.0]
    msg = decoded(exporter(histogram="explicit", unit="s"), [rollup(durations)])
    duration = metrics(msg)[DURATION_METRIC]
    assert duration.unit == "s"
    [point] = duration.histogram.data_points
    assert list(point.explicit_bounds)[:3] == pytest.approx([0.002, 0.004, 0.006])
    assert sum(point.bucket_counts) == point.count == 5
    assert point.bucket_counts[0] == 1
    assert point.bucket_counts[-1] == 1
    assert point.sum == pytest.approx(sum(durations) / 1000)
    assert (point.min, point.max) == (pytest.approx(0.001), pytest.approx(20.0))


def test_cumulative_series_add_up_across_requests() -> None:
    exp = exporter()
    first = decoded(exp, [rollup([5.0] * 10, errors=2)])
    second = decoded(exp, [rollup([5.0] * 4, minute=T0 + MINUTE), rollup([1.0], operation="GET /health")])
    calls = metrics(second)[CALLS_METRIC].sum.data_points
    totals = {(attrs(p)["span.name"], attrs(p)["status.code"]): p.as_int for p in calls}
    assert totals == {
        ("GET /pitches/{id}", "STATUS_CODE_UNSET"): 12,
        ("GET /pitches/{id}", "STATUS_CODE_ERROR"): 2,
        ("GET /health", "STATUS_CODE_UNSET"): 1,
    }
    before = metrics(first)[CALLS_METRIC].sum.data_points[0]
    after = next(p for p in calls if attrs(p)["span.name"] == "GET /pitches/{id}")
    assert after.start_time_unix_nano == before.start_time_unix_nano  # one series since the start
    assert before.start_time_unix_nano < before.time_unix_nano <= after.time_unix_nano  # never back
    hist = {
        attrs(p)["status.code"]: p.count
        for p in metrics(second)[DURATION_METRIC].exponential_histogram.data_points
        if attrs(p)["span.name"] == "GET /pitches/{id}"
    }
    assert hist == {"STATUS_CODE_UNSET": 12, "STATUS_CODE_ERROR": 2}  # (the errors' point stays)


def test_delta_sends_each_interval_and_merges_partial_records() -> None:
    exp = exporter(temporality="delta")
    # (a flush emitted a partial minute: a second record of the same key, to be added)
    msg = decoded(exp, [rollup([5.0] * 3), rollup([5.0] * 2, errors=1), rollup([5.0], minute=T0 + MINUTE)])
    calls = metrics(msg)[CALLS_METRIC].sum
    assert calls.aggregation_temporality == 1
    points = sorted((p.start_time_unix_nano, attrs(p)["status.code"], p.as_int) for p in calls.data_points)
    assert points == [
        (T0, "STATUS_CODE_ERROR", 1),
        (T0, "STATUS_CODE_UNSET", 4),
        (T0 + MINUTE, "STATUS_CODE_UNSET", 1),
    ]
    assert all(p.time_unix_nano == p.start_time_unix_nano + MINUTE for p in calls.data_points)
    again = decoded(exp, [rollup([5.0], minute=T0 + 2 * MINUTE)])
    assert [p.as_int for p in metrics(again)[CALLS_METRIC].sum.data_points] == [1]  # no running total


def test_a_partial_minute_ends_now_not_in_the_future() -> None:
    import time

    now = time.time_ns()
    minute = now - now % MINUTE
    msg = decoded(exporter(temporality="delta"), [rollup([1.0], minute=minute)])
    [point] = metrics(msg)[CALLS_METRIC].sum.data_points
    assert minute < point.time_unix_nano <= time.time_ns()


def test_temporality_preference_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "LowMemory")
    assert exporter().temporality == "delta"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sideways")
    with pytest.raises(ConfigurationError, match="TEMPORALITY_PREFERENCE"):
        exporter()
    assert exporter(temporality="cumulative").temporality == "cumulative"


def test_endpoint_from_the_metrics_variables_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    assert OTLPMetricsExporter().endpoint == "http://localhost:4318/v1/metrics"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert OTLPMetricsExporter().endpoint == "http://collector:4318/v1/metrics"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:9000/ingest")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    exp = OTLPMetricsExporter()
    assert (exp.endpoint, exp.protocol) == ("http://metrics:9000/ingest", "http/json")
    assert OTLPMetricsExporter("http://other:4318").endpoint == "http://other:4318/v1/metrics"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"temporality": "sometimes"}, ConfigurationError),
        ({"histogram": "linear"}, ConfigurationError),
        ({"unit": "us"}, ConfigurationError),
        ({"bounds": [5.0, 1.0]}, ConfigurationError),
        ({"bounds": [1.0, math.inf]}, ConfigurationError),
        ({"bounds": ["a"]}, ConfigurationError),
        ({"max_buckets": 0}, ValueError),
        ({"max_series": -1}, ValueError),
        ({"sdk_stats": "yes"}, TypeError),
        ({"idle_series_s": -1}, ConfigurationError),
        ({"idle_series_s": "long"}, ConfigurationError),
        ({"protocol": "carrier-pigeon"}, ConfigurationError),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        OTLPMetricsExporter("http://127.0.0.1:9", **kwargs)


def test_malformed_records_are_skipped_and_counted_the_rest_go() -> None:
    _stats.reset()
    bad_sketch = {**rollup([1.0]), "sketch": {"kind": "tdigest"}}
    no_count = {k: v for k, v in rollup([1.0]).items() if k != "count"}
    msg = decoded(exporter(), [bad_sketch, no_count, rollup([2.0, 3.0], operation="ok")])
    calls = metrics(msg)[CALLS_METRIC].sum.data_points
    assert [(attrs(p)["span.name"], p.as_int) for p in calls] == [("ok", 2)]
    assert _stats.get("otlp_metrics.bad_record") == 2


def test_series_beyond_the_cap_are_counted_under_other() -> None:
    _stats.reset()
    exp = exporter(max_series=2)
    msg = decoded(exp, [rollup([1.0] * (i + 1), operation=f"op{i}") for i in range(4)])
    totals = {attrs(p)["span.name"]: p.as_int for p in metrics(msg)[CALLS_METRIC].sum.data_points}
    assert totals == {"op0": 1, "op1": 2, "_other": 3 + 4}
    assert _stats.get("otlp_metrics.series_overflow") == 7


def test_sdk_counters_go_along_since_the_exporter_started() -> None:
    _stats.reset()
    _stats.incr("dropped.queue_full", 5)
    exp = exporter(sdk_stats=True)
    _stats.incr("dropped.queue_full", 2)
    _stats.incr("odd name with spaces", 1)  # (not a valid metric name: left out)
    ms = metrics(decoded(exp, [rollup([1.0])]))
    [point] = ms["pitchey_trace.dropped.queue_full"].sum.data_points
    assert point.as_int == 2
    assert ms["pitchey_trace.dropped.queue_full"].sum.is_monotonic
    assert not any(" " in name for name in ms)
    delta = exporter(sdk_stats=True, temporality="delta")
    _stats.incr("dropped.queue_full", 4)
    assert (
        metrics(decoded(delta, [rollup([1.0])]))["pitchey_trace.dropped.queue_full"].sum.data_points[0].as_int
        == 4
    )
    _stats.incr("dropped.queue_full", 1)
    assert (
        metrics(decoded(delta, [rollup([1.0])]))["pitchey_trace.dropped.queue_full"].sum.data_points[0].as_int
        == 1
    )


def test_after_fork_the_series_start_again() -> None:
    exp = exporter()
    decoded(exp, [rollup([1.0] * 3)])
    exp.after_fork()
    msg = decoded(exp, [rollup([1.0])])
    assert [p.as_int for p in metrics(msg)[CALLS_METRIC].sum.data_points] == [1]


def test_other_records_are_skipped_and_an_empty_batch_sends_nothing() -> None:
    _stats.reset()
    exp = exporter()
    assert exp.datasets == frozenset({"performance", "traces"})  # (spans: for the exemplars)
    assert exp.export([{"type": "span"}, {"type": "audit"}]) is True  # (nothing to send: no request)
    assert _stats.get("otlp_metrics.skipped") == 1
    assert _stats.get("otlp_metrics.requests") == 0
    assert exporter(exemplars=False).datasets == frozenset({"performance"})


def span_record(
    name: str, duration_ms: float, end_ns: int, status: str = "unset", n: int = 0
) -> dict[str, Any]:
    return {
        "type": "span",
        "service": "pitch-api",
        "environment": "test",
        "name": name,
        "kind": "server",
        "trace_id": f"{n + 1:032x}",
        "span_id": f"{n + 1:016x}",
        "duration_ms": duration_ms,
        "end_time_unix_nano": end_ns,
        "status": status,
    }


def test_exemplars_link_points_to_kept_spans() -> None:
    import time

    exp = exporter()
    end = time.time_ns()
    minute = end - end % MINUTE
    name = "GET /pitches/{id}"
    exp.export(
        [
            span_record(name, 12.0, end - 3, n=0),
            span_record(name, 480.0, end - 2, n=1),  # the slowest
            span_record(name, 30.0, end - 1, status="error", n=2),  # the latest error
            span_record(name, 5.0, end, status="error", n=3),
            span_record("GET /health", 1.0, end, n=4),  # (no rollup in this request: kept for later)
        ]
    )
    msg = decoded(exp, [rollup([12.0, 480.0, 30.0, 5.0], errors=2, minute=minute)])
    points = {
        attrs(p)["status.code"]: p for p in metrics(msg)[DURATION_METRIC].exponential_histogram.data_points
    }
    [slowest] = points["STATUS_CODE_UNSET"].exemplars
    assert (slowest.trace_id.hex(), slowest.span_id.hex(), slowest.as_double) == (
        f"{2:032x}",
        f"{2:016x}",
        480.0,
    )
    assert slowest.time_unix_nano == end - 2
    # The errors' histogram: the latest error span, with its own duration.
    [latest] = points["STATUS_CODE_ERROR"].exemplars
    assert (latest.span_id.hex(), latest.as_double) == (f"{4:016x}", 5.0)
    by_status = {attrs(p)["status.code"]: p for p in metrics(msg)[CALLS_METRIC].sum.data_points}
    [error] = by_status["STATUS_CODE_ERROR"].exemplars
    assert error.span_id.hex() == f"{4:016x}"
    assert error.as_int == 1
    assert not by_status["STATUS_CODE_UNSET"].exemplars
    # Used up: the next request of the same series has none; the other series' waits for its rollup.
    again = decoded(
        exp, [rollup([1.0], minute=minute), rollup([1.0], operation="GET /health", minute=minute)]
    )
    hist = {
        attrs(p)["span.name"]: p for p in metrics(again)[DURATION_METRIC].exponential_histogram.data_points
    }
    assert not hist[name].exemplars
    assert hist["GET /health"].exemplars[0].span_id.hex() == f"{5:016x}"


def test_delta_exemplars_wait_for_the_rollup_of_their_minute() -> None:
    import time

    exp = exporter(temporality="delta")
    now = time.time_ns()
    m1 = now - now % MINUTE - 3 * MINUTE
    m2 = m1 + MINUTE
    exp.export([span_record("op", 7.0, m1 + 5, n=0), span_record("op", 9.0, m2 + 5, n=1)])
    first = metrics(decoded(exp, [rollup([7.0], operation="op", minute=m1)]))
    assert [
        e.span_id.hex() for e in first[DURATION_METRIC].exponential_histogram.data_points[0].exemplars
    ] == [f"{1:016x}"]
    second = metrics(decoded(exp, [rollup([9.0], operation="op", minute=m2)]))
    assert [e.as_double for e in second[DURATION_METRIC].exponential_histogram.data_points[0].exemplars] == [
        9.0
    ]


def test_without_exemplars_spans_are_not_looked_at() -> None:
    import time

    exp = exporter(exemplars=False)
    end = time.time_ns()
    exp.export([span_record("op", 7.0, end)])
    msg = decoded(exp, [rollup([7.0], operation="op", minute=end - end % MINUTE)])
    assert not metrics(msg)[DURATION_METRIC].exponential_histogram.data_points[0].exemplars


def test_idle_cumulative_series_go_on_with_their_totals() -> None:
    import time

    now = time.time_ns()
    minute = now - now % MINUTE - 2 * MINUTE
    exp = exporter()
    decoded(
        exp, [rollup([1.0] * 5, minute=minute), rollup([2.0] * 3, operation="GET /health", minute=minute)]
    )
    later = decoded(exp, [rollup([1.0] * 2, minute=minute + MINUTE)])
    points = {attrs(p)["span.name"]: p for p in metrics(later)[CALLS_METRIC].sum.data_points}
    assert points["GET /pitches/{id}"].as_int == 7
    # No spans of GET /health in the last minute: its total goes on, as of this request's time.
    assert points["GET /health"].as_int == 3
    assert points["GET /health"].time_unix_nano == points["GET /pitches/{id}"].time_unix_nano
    hist = {
        attrs(p)["span.name"]: p for p in metrics(later)[DURATION_METRIC].exponential_histogram.data_points
    }
    assert hist["GET /health"].count == 3


@pytest.mark.parametrize("idle", [0, 0.05])
def test_idle_series_stop_after_idle_series_s(idle: float) -> None:
    import time

    now = time.time_ns()
    minute = now - now % MINUTE - 2 * MINUTE
    exp = exporter(idle_series_s=idle)
    decoded(
        exp, [rollup([1.0] * 5, minute=minute), rollup([2.0] * 3, operation="GET /health", minute=minute)]
    )
    time.sleep(0.1)
    later = decoded(exp, [rollup([1.0] * 2, minute=minute + MINUTE)])
    assert [attrs(p)["span.name"] for p in metrics(later)[CALLS_METRIC].sum.data_points] == [
        "GET /pitches/{id}"
    ]


def test_delta_sends_no_idle_series() -> None:
    exp = exporter(temporality="delta")
    decoded(exp, [rollup([1.0]), rollup([1.0], operation="GET /health")])
    later = decoded(exp, [rollup([1.0], minute=T0 + MINUTE)])
    assert [attrs(p)["span.name"] for p in metrics(later)[CALLS_METRIC].sum.data_points] == [
        "GET /pitches/{id}"
    ]
