"""OTLPMetricsExporter: the rollups as OpenTelemetry metrics, to any OTLP backend.

The rollups (``pitchey_trace.processors.Rollups``) count every span before sampling, so the
request rate, error rate and latency histogram they carry are exact at any sample rate. This
exporter turns each rollup record into the two metrics OpenTelemetry Collector's span-metrics
connector produces, under the same names and attributes, so the dashboards and alerts written
for those work unchanged:

- ``traces.span.metrics.calls``: a monotonic sum of spans, by ``service.name``, ``span.name``,
  ``span.kind`` (``SPAN_KIND_SERVER``, ...) and ``status.code`` (``STATUS_CODE_ERROR`` for
  error spans, ``STATUS_CODE_UNSET`` for the others);
- ``traces.span.metrics.duration``: a histogram of span durations (``ms`` by default), by the
  same four attributes: exponential (base-2 buckets, read from the rollup's sketches) or with
  explicit bounds. The error spans' durations are apart in the rollups (``error_durations``),
  so each status has its own exact histogram.

Cumulative temporality (the default, as the OpenTelemetry SDK's) keeps one running total per
series in the exporter, so a request that is lost is made up by the next one; delta sends each
rollup's own minute. Exemplars link each duration point to the slowest exported span of its
interval (the latest error span for the errors' point) and each error count to an error span.
Optionally the SDK's own counters (``pt.stats()``) go along as ``pitchey_trace.<counter>``
sums.

The payload is an ``ExportMetricsServiceRequest``: binary protobuf (``http/protobuf``), the
OTLP JSON encoding (``http/json``), or gRPC (``MetricsService/Export``), written here from the
opentelemetry-proto metrics schema. Field numbers, from
``opentelemetry/proto/{collector/metrics,metrics}/v1/*.proto``:

    ExportMetricsServiceRequest  1 resource_metrics
    ResourceMetrics              1 resource, 2 scope_metrics
    ScopeMetrics                 1 scope, 2 metrics
    Metric                       1 name, 2 description, 3 unit, 7 sum, 9 histogram,
                                 10 exponential_histogram
    Sum                          1 data_points, 2 aggregation_temporality, 3 is_monotonic
    Histogram / ExponentialHistogram  1 data_points, 2 aggregation_temporality
    NumberDataPoint              7 attributes, 2 start_time_unix_nano, 3 time_unix_nano (fixed64),
                                 6 as_int (sfixed64)
    HistogramDataPoint           9 attributes, 2 / 3 times, 4 count (fixed64), 5 sum,
                                 6 bucket_counts (packed fixed64), 7 explicit_bounds (packed
                                 double), 11 min, 12 max
    ExponentialHistogramDataPoint 1 attributes, 2 / 3 times, 4 count, 5 sum, 6 scale (sint32),
                                 7 zero_count (fixed64), 8 positive, 12 min, 13 max,
                                 14 zero_threshold
    Buckets                      1 offset (sint32), 2 bucket_counts (packed uint64)
    ExportMetricsServiceResponse 1 partial_success { 1 rejected_data_points, 2 error_message }
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pitchey_trace import _safety, _stats
from pitchey_trace._batch import _suppressed_thread, start_thread
from pitchey_trace._json import dumps
from pitchey_trace._sketch import MIN_INDEXABLE, DurationSketch
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import finite, positive_int, text
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters._http import (
    DEFAULT_MAX_REQUEST_BYTES,
    RetryPolicy,
    SenderExporter,
    checked_max_request_bytes,
    count_dropped,
    count_rejected,
    note_partial_success,
    warn_limited,
)
from pitchey_trace.exporters._otlp_proto import (
    MAX_LENGTH_BYTES,
    Schema,
    encode_node,
    field_size,
    resource_framing_size,
    scope_framing_size,
)
from pitchey_trace.exporters.otlp import ResourceBound, _otlp_env, _scope_version, json_node, otlp_sender
from pitchey_trace.processors import OTHER_OPERATION, merge_rollups
from pitchey_trace.records import Record

__all__ = [
    "CALLS_METRIC",
    "DEFAULT_BOUNDS_MS",
    "DURATION_METRIC",
    "OTLPMetricsExporter",
    "explicit_buckets",
    "exponential_buckets",
]

CALLS_METRIC = "traces.span.metrics.calls"
DURATION_METRIC = "traces.span.metrics.duration"
EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
#: The span-metrics connector's default histogram bounds, in milliseconds.
DEFAULT_BOUNDS_MS = (
    *(2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0),
    *(1000.0, 1400.0, 2000.0, 5000.0, 10000.0, 15000.0),
)
_UNITS = {"ms": 1.0, "s": 1e-3}
_TEMPORALITY = {"delta": 1, "cumulative": 2}
_KIND = {
    "internal": "SPAN_KIND_INTERNAL",
    "server": "SPAN_KIND_SERVER",
    "client": "SPAN_KIND_CLIENT",
    "producer": "SPAN_KIND_PRODUCER",
    "consumer": "SPAN_KIND_CONSUMER",
}
_OK, _ERROR = "STATUS_CODE_UNSET", "STATUS_CODE_ERROR"
# An OpenTelemetry instrument name: what a counter must look like to become a metric name.
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,240}")


# -- histograms from a rollup's sketch ----------------------------------------------------------
def _values(sketch: DurationSketch, factor: float, low: float, high: float) -> Iterable[tuple[float, int]]:
    """(value in the exported unit, count) per sketch bucket: the bucket's representative value,
    kept within the record's exact min and max (one duration repeated lands where it belongs)."""
    for index, count in sorted(sketch.bins.items()):
        yield min(high, max(low, sketch._value(index))) * factor, count


# (gamma, factor, scale) -> sketch bucket -> exponential bucket, for the unclamped buckets: the
# same few hundred buckets recur in every rollup. Bounded by the sketch's index range.
_INDEX_CACHE: dict[tuple[float, float, int], dict[int, int]] = {}


def _exponential_index(value: float, scale: int) -> int:
    return math.ceil(math.log2(value) * 2.0**scale) - 1


def exponential_buckets(
    sketch: DurationSketch, factor: float = 1.0, max_size: int = 160, low: float = 0.0, high: float = math.inf
) -> tuple[int, int, list[int]]:
    """(scale, offset, counts) of an OpenTelemetry exponential histogram holding ``sketch``'s
    values (times ``factor``). Bucket ``offset + j`` is ``(base**k, base**(k+1)]`` with
    ``base = 2**(2**-scale)``. The scale starts as fine as the sketch's own buckets (scale 5 for
    1% accuracy) and is lowered, halving the buckets each step, until at most ``max_size``
    remain, as OpenTelemetry SDKs do; the sketch's zero bucket is the histogram's."""
    scale = min(20, math.floor(math.log2(math.log(2.0) / math.log(sketch.gamma))))
    bins = sketch.bins
    indexes: dict[int, int] = {}
    if bins:
        cached = _INDEX_CACHE.get((sketch.gamma, factor, scale))
        if cached is None:
            if len(_INDEX_CACHE) >= 16:
                _INDEX_CACHE.clear()
            cached = _INDEX_CACHE[(sketch.gamma, factor, scale)] = {}
        first, last = min(bins), max(bins)
        for i, count in bins.items():
            if i in (first, last):  # (only these can hold the exact min or max: clamped)
                value = min(high, max(low, sketch._value(i))) * factor
                if value <= 0.0:
                    continue
                k = _exponential_index(value, scale)
            else:
                known = cached.get(i)
                k = cached[i] = (
                    _exponential_index(sketch._value(i) * factor, scale) if known is None else known
                )
            indexes[k] = indexes.get(k, 0) + count
    if not indexes:
        return scale, 0, []
    lo, hi = min(indexes), max(indexes)
    while hi - lo + 1 > max_size and scale > -10:
        scale -= 1
        lo, hi = lo >> 1, hi >> 1  # (an arithmetic shift: floor, for negative indexes too)
        folded: dict[int, int] = {}
        for k, count in indexes.items():
            folded[k >> 1] = folded.get(k >> 1, 0) + count
        indexes = folded
    return scale, lo, [indexes.get(k, 0) for k in range(lo, hi + 1)]


def explicit_buckets(
    sketch: DurationSketch,
    bounds: Sequence[float],
    factor: float = 1.0,
    low: float = 0.0,
    high: float = math.inf,
) -> list[int]:
    """Counts per explicit bucket ``(bounds[i-1], bounds[i]]`` (``len(bounds) + 1`` of them, the
    last unbounded above) of ``sketch``'s values times ``factor``; zeros go to the first."""
    counts = [0] * (len(bounds) + 1)
    counts[0] = sketch.zero_count
    for value, count in _values(sketch, factor, low, high):
        i = 0
        while i < len(bounds) and value > bounds[i]:
            i += 1
        counts[i] += count
    return counts


# -- the request, as a tree in the JSON form's shape, and its two encodings ---------------------
# message -> JSON key -> (field number, type, message of a nested field)
_SCHEMA: Schema = {
    "request": {"resourceMetrics": (1, "messages", "resource_metrics")},
    "resource_metrics": {
        "resource": (1, "message", "resource"),
        "scopeMetrics": (2, "messages", "scope_metrics"),
    },
    "resource": {"attributes": (1, "attributes", "")},
    "scope_metrics": {"scope": (1, "message", "scope"), "metrics": (2, "messages", "metric")},
    "scope": {"name": (1, "string", ""), "version": (2, "string", "")},
    "metric": {
        "name": (1, "string", ""),
        "description": (2, "string", ""),
        "unit": (3, "string", ""),
        "sum": (7, "message", "sum"),
        "histogram": (9, "message", "histogram"),
        "exponentialHistogram": (10, "message", "exponential_histogram"),
    },
    "sum": {
        "dataPoints": (1, "messages", "number_point"),
        "aggregationTemporality": (2, "varint", ""),
        "isMonotonic": (3, "bool", ""),
    },
    "histogram": {
        "dataPoints": (1, "messages", "histogram_point"),
        "aggregationTemporality": (2, "varint", ""),
    },
    "exponential_histogram": {
        "dataPoints": (1, "messages", "exponential_point"),
        "aggregationTemporality": (2, "varint", ""),
    },
    "number_point": {
        "attributes": (7, "attributes", ""),
        "startTimeUnixNano": (2, "fixed64", ""),
        "timeUnixNano": (3, "fixed64", ""),
        "asInt": (6, "fixed64", ""),  # sfixed64: the same eight bytes for a value >= 0
        "exemplars": (5, "messages", "exemplar"),
    },
    "histogram_point": {
        "attributes": (9, "attributes", ""),
        "startTimeUnixNano": (2, "fixed64", ""),
        "timeUnixNano": (3, "fixed64", ""),
        "count": (4, "fixed64", ""),
        "sum": (5, "double", ""),
        "bucketCounts": (6, "packed_fixed64", ""),
        "explicitBounds": (7, "packed_double", ""),
        "min": (11, "double", ""),
        "max": (12, "double", ""),
        "exemplars": (8, "messages", "exemplar"),
    },
    "exponential_point": {
        "attributes": (1, "attributes", ""),
        "startTimeUnixNano": (2, "fixed64", ""),
        "timeUnixNano": (3, "fixed64", ""),
        "count": (4, "fixed64", ""),
        "sum": (5, "double", ""),
        "scale": (6, "sint32", ""),
        "zeroCount": (7, "fixed64", ""),
        "positive": (8, "message", "buckets"),
        "min": (12, "double", ""),
        "max": (13, "double", ""),
        "zeroThreshold": (14, "double", ""),
        "exemplars": (11, "messages", "exemplar"),
    },
    "buckets": {"offset": (1, "sint32", ""), "bucketCounts": (2, "packed_varint", "")},
    "exemplar": {
        "timeUnixNano": (2, "fixed64", ""),
        "asDouble": (3, "double", ""),
        "asInt": (6, "fixed64", ""),
        "spanId": (4, "hex_id", ""),
        "traceId": (5, "hex_id", ""),
    },
}


def _proto(message: str, node: Mapping[str, Any]) -> bytearray:
    return encode_node(_SCHEMA, message, node)


def _json(message: str, node: Mapping[str, Any]) -> dict[str, Any]:
    return json_node(_SCHEMA, message, node)


# -- series ---------------------------------------------------------------------------------------
def _exemplar(item: _Exemplar, field: str, value: float) -> dict[str, Any]:
    return {"timeUnixNano": item[1], field: value, "spanId": item[3], "traceId": item[2]}


class _Durations:
    """The durations of one status class of a series: count, sum, extremes, sketch."""

    __slots__ = ("count", "high", "low", "sketch", "sum")

    def __init__(self, relative_accuracy: float) -> None:
        self.count = 0
        self.sum = 0.0
        self.low, self.high = math.inf, -math.inf
        self.sketch = DurationSketch(relative_accuracy)

    def add(
        self, count: int, total: float, low: float | None, high: float | None, sketch: DurationSketch
    ) -> None:
        if count <= 0:
            return
        self.count += count
        self.sum += total
        if low is not None:
            self.low = min(self.low, low)
        if high is not None:
            self.high = max(self.high, high)
        self.sketch.merge(sketch)


class _Series:
    """One (service, environment, operation, kind): what a record adds, or a running total;
    its durations apart by status (``ok``: unset, ``error``)."""

    __slots__ = ("count", "error", "errors", "ok", "seen", "start_ns", "time_ns")

    def __init__(self, start_ns: int, time_ns: int, relative_accuracy: float) -> None:
        self.start_ns = start_ns
        self.time_ns = time_ns
        self.seen = time.monotonic()  # when spans last added to it
        self.count = self.errors = 0
        self.ok = _Durations(relative_accuracy)
        self.error = _Durations(relative_accuracy)

    def add(self, record: Mapping[str, Any], sketch: DurationSketch, apart: _Apart | None) -> None:
        count, errors = int(record["count"]), int(record["errors"])
        total = float(record["duration_sum_ms"])
        low, high = float(record["duration_min_ms"]), float(record["duration_max_ms"])
        if apart is None:  # no errors (or a record from before rollups kept them apart)
            self.ok.add(count, total, low, high, sketch)
        else:
            e_total, e_low, e_high, ok_low, ok_high, e_sketch = apart
            self.ok.add(count - errors, total - e_total, ok_low, ok_high, _without(sketch, e_sketch))
            self.error.add(errors, e_total, e_low, e_high, e_sketch)
        self.count += count
        self.errors += errors
        self.seen = time.monotonic()


#: A rollup's ``error_durations``, parsed: sum, min, max ms, the others' min/max, sketch.
_Apart = tuple[float, float, float, float | None, float | None, DurationSketch]


def _without(sketch: DurationSketch, part: DurationSketch) -> DurationSketch:
    """``sketch`` less the counts of ``part`` (a sub-population of it)."""
    out = DurationSketch(sketch.relative_accuracy)
    for i, c in sketch.bins.items():
        left = c - part.bins.get(i, 0)
        if left > 0:
            out.bins[i] = left
            out.count += left
    out.zero_count = max(0, sketch.zero_count - part.zero_count)
    out.count += out.zero_count
    return out


_Key = tuple[str, str, str, str]  # service, environment, operation, kind
#: An exemplar candidate: a kept span's duration (ms), end time, trace id and span id (hex).
_Exemplar = tuple[float, int, str, str]
#: What a failed request puts back: the series (key, series) it carried, and whether it
#: carried the SDK's counters.
_Undo = Callable[["list[tuple[_Key, _Series]] | None", bool], None]
#: One data point of a request being split: (its resource, scope and metric indexes, the
#: metric's kind, the point).
_Leaf = tuple[int, int, int, str, dict[str, Any]]
_KINDS = ("sum", "histogram", "exponentialHistogram")
_MINUTE_NS = 60_000_000_000
_CANDIDATE_MINUTES = 4  # minutes of candidates kept per series, waiting for their rollup


def _key(record: Mapping[str, Any]) -> _Key:
    return str(record["service"]), str(record["environment"]), str(record["operation"]), str(record["kind"])


def _window(record: Mapping[str, Any]) -> tuple[int, int]:
    """The record's interval; a partial one (emitted by a flush) ends now, not in the future
    (backends refuse points from the future)."""
    start = int(record["minute_start_unix_nano"])
    end = start + int(record["interval_s"]) * 1_000_000_000
    return start, max(start + 1, min(end, time.time_ns()))


class OTLPMetricsExporter(SenderExporter, ResourceBound):
    """Send the rollups as OpenTelemetry metrics (request counts, errors, duration histograms)
    to an OTLP endpoint: HTTP with binary protobuf (default) or JSON, or gRPC.

    Args:
        endpoint: full URL (``http://collector:4318/v1/metrics``); a URL without a path gets
            ``/v1/metrics``. Default: ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, else
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/metrics``, else
            ``http://localhost:4318/v1/metrics``. For gRPC ``http(s)://host:port``.
        temporality: ``"cumulative"`` (running totals since the exporter started) or ``"delta"``
            (each rollup's own interval). Default: ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
            (``delta`` and ``lowmemory`` mean delta here), else cumulative.
        histogram: ``"exponential"`` (default) or ``"explicit"`` (``bounds``).
        bounds: explicit histogram bounds in ``unit`` (default: the span-metrics connector's,
            2 ms to 15 s).
        max_buckets: at most this many exponential buckets per point (default 160, as
            OpenTelemetry SDKs; the scale is lowered to fit).
        unit: ``"ms"`` (default, as the span-metrics connector) or ``"s"``.
        max_series: running totals kept (cumulative); the spans of operations beyond it are
            counted under operation ``_other`` (counter ``otlp_metrics.series_overflow``).
        sdk_stats: also send the SDK's own counters (``pt.stats()``) as ``pitchey_trace.<name>``
            sums, each time rollups are sent (default True).
        exemplars: attach exemplars from the exported span records (default True; the
            exporter then also takes the ``traces`` dataset unless ``datasets`` is given).
        idle_series_s: cumulative series that saw no spans go on being sent with their
            unchanged totals for this long (default 15 minutes; None: for as long as the
            process lives, as OpenTelemetry's SDK; 0: only series with new spans).
        headers, compression, timeout_s, retry, protocol, certificate_file,
        client_certificate_file, client_key_file: as :class:`OTLPExporter`, read from the
            ``OTEL_EXPORTER_OTLP_METRICS_*`` variables first, then ``OTEL_EXPORTER_OTLP_*``.
        max_request_bytes: a request's bytes at most (before gzip; default 4 MiB, gRPC's
            default message limit): a larger one goes as several requests, each with whole
            series (a series' points are never split between two requests); a series whose
            points alone are larger is left out (its points counted in
            ``dropped.request_too_large[.<name>]`` and ``otlp_metrics.too_large``).

    The metrics come from the ``performance`` dataset (rollup records); records that are neither
    rollups nor spans are skipped (counted ``otlp_metrics.skipped``). Counters:
    ``otlp_metrics.points``, ``.requests``, ``.retried``, ``.failed``, ``.rejected``, ``.too_large``,
    ``.partial_rejected`` and ``.partial_warning`` (a partial success: not sent again; the data
    points the backend refused are counted in ``dropped.rejected[.<name>]`` too, and the
    backend's message is logged at most once a minute).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        temporality: str | None = None,
        histogram: str = "exponential",
        bounds: Sequence[float] | None = None,
        max_buckets: int = 160,
        unit: str = "ms",
        max_series: int = 10_000,
        sdk_stats: bool = True,
        exemplars: bool = True,
        idle_series_s: float | None = 900.0,
        headers: Mapping[str, str] | None = None,
        compression: str | None = "default",
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        datasets: Iterable[str] | None = None,
        scope_name: str = "pitchey_trace",
        name: str = "otlp_metrics",
        protocol: str | None = None,
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if temporality is None:
            preference = (_otlp_env("TEMPORALITY_PREFERENCE", "METRICS") or "cumulative").strip().lower()
            if preference not in ("cumulative", "delta", "lowmemory"):
                raise ConfigurationError(
                    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE must be cumulative, delta or "
                    f"lowmemory, got {preference!r}"
                )
            temporality = "cumulative" if preference == "cumulative" else "delta"
        if temporality not in _TEMPORALITY:
            raise ConfigurationError(f"temporality must be 'cumulative' or 'delta', got {temporality!r}")
        if histogram not in ("exponential", "explicit"):
            raise ConfigurationError(f"histogram must be 'exponential' or 'explicit', got {histogram!r}")
        if unit not in _UNITS:
            raise ConfigurationError(f"unit must be 'ms' or 's', got {unit!r}")
        if bounds is None:
            bounds = tuple(b * _UNITS[unit] for b in DEFAULT_BOUNDS_MS)
        try:
            checked = tuple(float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigurationError(f"bounds must be numbers, got {bounds!r}") from None
        if any(not math.isfinite(b) for b in checked) or any(a >= b for a, b in itertools.pairwise(checked)):
            raise ConfigurationError(f"bounds must be finite and increasing, got {bounds!r}")
        positive_int("max_buckets", max_buckets)
        positive_int("max_series", max_series)
        if not isinstance(sdk_stats, bool):
            raise TypeError(f"sdk_stats must be True or False, got {sdk_stats!r}")
        if not isinstance(exemplars, bool):
            raise TypeError(f"exemplars must be True or False, got {exemplars!r}")
        if datasets is None:
            datasets = ("performance", "traces") if exemplars else ("performance",)
        if idle_series_s is not None:
            finite("idle_series_s", idle_series_s, 0.0, 366 * 86_400.0)
        text("scope_name", scope_name)
        text("name", name)
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.temporality = temporality
        self.histogram = histogram
        self.bounds = checked
        self.max_buckets = max_buckets
        self.unit = unit
        self.max_series = max_series
        self.sdk_stats = sdk_stats
        self.exemplars = exemplars
        self.idle_series_s = idle_series_s
        self.scope_name = scope_name
        self.max_request_bytes = self._max_request_bytes = checked_max_request_bytes(max_request_bytes)
        self._owners: dict[int, tuple[_Key, _Series]] = {}  # id(data point) -> its series
        self._sender, self.protocol = otlp_sender(
            "METRICS",
            "otlp_metrics",
            EXPORT_METHOD,
            endpoint,
            headers=headers,
            compression=compression,
            timeout_s=timeout_s,
            retry=retry,
            protocol=protocol,
            certificate_file=certificate_file,
            client_certificate_file=client_certificate_file,
            client_key_file=client_key_file,
        )
        self._begin()

    def _begin(self) -> None:
        """Start the running totals from zero now (at construction, and in a forked child)."""
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # a send finished (force_flush waits on it)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._folded = 0  # rollup batches taken in, and how many of them a send has covered
        self._covered = 0
        self._started_ns = time.time_ns()
        self._series: dict[_Key, _Series] = {}
        self._touched: dict[_Key, _Series] = {}  # cumulative: series to send (their totals)
        self._pending: list[tuple[_Key, _Series]] = []  # delta: intervals to send, oldest first
        # series -> minute of the span's end -> [slowest kept span, latest kept error span]
        self._candidates: dict[_Key, dict[int, list[_Exemplar | None]]] = {}
        self._stats_base = _stats.snapshot()  # (a forked child inherits its parent's counters)
        self._stats_sent = dict(self._stats_base)
        self._stats_sent_ns = self._started_ns

    # -- pipeline hooks ------------------------------------------------------------------------
    def after_fork(self) -> None:
        """A forked child is a new process: its series start again from zero."""
        super().after_fork()
        self._begin()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Send what was taken in so far; True when it was sent (or given up) in time."""
        deadline = time.monotonic() + (30.0 if timeout is None else max(0.0, timeout))
        with self._lock:
            target = self._folded
            if self._covered >= target:
                return True
            self._wake.set()
            while self._covered < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._done.wait(left)
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Send what is left, then stop the sender thread and close the connection."""
        self.force_flush(timeout)
        self._closed = True
        self._wake.set()
        super().shutdown(timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    @property
    def endpoint(self) -> str:
        """The resolved endpoint: the ``/v1/metrics`` URL, or the gRPC target's URL."""
        return self._sender.url

    # -- export --------------------------------------------------------------------------------
    def export(self, batch: Sequence[Record]) -> bool:
        """Take in the rollup records of ``batch`` (and its span records, for exemplars) and
        wake the sender thread; never waits for the network. While the endpoint is slow or
        down, nothing piles up in the pipeline: cumulative series keep their totals, which the
        next request carries; delta intervals wait (at most ``max_series`` of them)."""
        rollups = [r for r in batch if r.get("type") == "rollup"]
        spans = [r for r in batch if r.get("type") == "span"] if self.exemplars else []
        if len(rollups) + len(spans) != len(batch):
            _stats.incr("otlp_metrics.skipped", len(batch) - len(rollups) - len(spans))
        with self._lock:
            if self._closed:  # after shutdown nothing is sent: a failure (counted dropped)
                return not (rollups or spans)
            if spans:
                self._observe(spans)
            if not rollups:
                return True
            self._fold(rollups)
            self._folded += 1
            inline = False
            if self._thread is None:
                thread = _suppressed_thread(self._run, "pitchey-trace-otlp-metrics")
                if start_thread(thread):
                    self._thread = thread
                else:  # (Python 3.12+ in the exit flush: no new thread; send from here)
                    inline = True
        if inline:
            self._send_now()
            return True
        self._wake.set()
        return True

    def _send_now(self) -> None:
        """One send on the calling thread (what the sender thread does per wake-up)."""
        with self._lock:
            target = self._folded
        try:
            self._send()
        except Exception as exc:
            _safety.report("export.otlp_metrics", exc)
        with self._lock:
            self._covered = max(self._covered, target)
            self._done.notify_all()

    def _fold_and_build(self, rollups: Iterable[Record]) -> dict[str, Any]:
        """Take ``rollups`` in and return the ``ExportMetricsServiceRequest`` the sender would
        send next, in the JSON form's shape (attributes as mappings), without sending it (tests
        and benchmarks). Malformed records are skipped (counted ``otlp_metrics.bad_record``)."""
        with self._lock:
            self._fold(rollups)
            return self._build()[0]

    def _run(self) -> None:
        """The sender thread: one request at a time, for everything taken in since the last
        (a bug must not end the thread: :meth:`_send_now` reports it, later sends still go)."""
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self._send_now()

    def _send(self) -> None:
        with self._lock:
            if not self._touched and not self._pending:
                return
            request, undo = self._build()
        points = sum(
            len(m[kind]["dataPoints"])
            for rm in request["resourceMetrics"]
            for sm in rm["scopeMetrics"]
            for m in sm["metrics"]
            for kind in _KINDS
            if kind in m
        )
        try:
            payload = self._encode(request)
            cap = self._max_request_bytes
            parts: Sequence[tuple[bytes, int, list[tuple[_Key, _Series]] | None, bool]]
            if cap is None or len(payload) <= cap:
                parts = [(payload, points, None, True)]
            else:
                parts = self._split(request, payload, cap)
        except Exception as exc:  # (what was taken in is put back for the next request)
            _safety.report("export.otlp_metrics", exc)
            with self._lock:
                undo(None, True)
            return
        failed: list[tuple[_Key, _Series]] = []
        failed_all = failed_stats = False
        for data, count, series, with_stats in parts:
            try:
                result = self._sender.send(data)
            except Exception as exc:
                _safety.report("export.otlp_metrics", exc)
                result = None
            if result is None or not result.ok:
                if result is None or not result.rejected:  # (a refused request would be refused again)
                    failed_all = failed_all or series is None
                    failed.extend(series or ())
                    failed_stats = failed_stats or with_stats
                continue
            _stats.incr("otlp_metrics.points", count)
            # (a partial success: not sent again; the refused points counted in dropped.rejected,
            # not taken off exported, which counts the records taken in, not points)
            rejected = note_partial_success(
                result,
                counter="otlp_metrics",
                count_key="rejectedDataPoints",
                noun="data points",
                items=count,
                url=self._sender.url,
            )
            if rejected:
                count_rejected(self._exporter_name(), rejected)
        if failed_all or failed or failed_stats:
            with self._lock:
                undo(None if failed_all else failed, failed_stats)

    def _encode(self, request: Mapping[str, Any]) -> bytes:
        if self.protocol == "http/json":
            return dumps(_json("request", request))
        return bytes(_proto("request", request))

    def _split(
        self, request: dict[str, Any], payload: bytes, cap: int
    ) -> list[tuple[bytes, int, list[tuple[_Key, _Series]], bool]]:
        """``request`` (``payload`` encoded, over ``cap`` bytes) as requests of at most ``cap``
        bytes each: (payload, data points, the series it carries, whether it carries the SDK's
        counters). A series' points go together (a delta interval put back after a failure is
        then never sent twice); each SDK counter is a unit of its own. Units are measured alone
        (each point's message, plus once per request the framing of its resource, scope and
        metric: upper bounds) and packed greedily, in order; a unit whose request alone is over
        the cap is left out and counted."""
        as_json = self.protocol == "http/json"
        rms = request["resourceMetrics"]
        leaves: list[_Leaf] = []
        framing: dict[tuple[int, ...], int] = {}
        for ri, rm in enumerate(rms):
            framing[(ri,)] = (
                len(dumps(_json("resource_metrics", {"resource": rm["resource"], "scopeMetrics": []}))) + 1
                if as_json
                else resource_framing_size(rm["resource"]["attributes"])
            )
            for si, sm in enumerate(rm["scopeMetrics"]):
                scope = sm["scope"]
                framing[(ri, si)] = (
                    len(dumps(_json("scope_metrics", {"scope": scope, "metrics": []}))) + 1
                    if as_json
                    else scope_framing_size(scope["name"], scope["version"])
                )
                for mi, m in enumerate(sm["metrics"]):
                    kind = next(k for k in _KINDS if k in m)
                    empty = {**m, kind: {**m[kind], "dataPoints": []}}
                    framing[(ri, si, mi)] = (
                        len(dumps(_json("metric", empty))) + 1
                        if as_json  # (below: the field's length, and the grown length of the kind's)
                        else 1 + 2 * MAX_LENGTH_BYTES + len(_proto("metric", empty))
                    )
                    leaves.extend((ri, si, mi, kind, point) for point in m[kind]["dataPoints"])
        # Units: the points of one series (in order of its first point), or one SDK counter.
        owners = self._owners
        units: dict[int, list[int]] = {}
        for index, leaf in enumerate(leaves):
            owner = owners.get(id(leaf[4]))
            units.setdefault(id(owner[1]) if owner is not None else -1 - index, []).append(index)
        sizes = [self._point_size(leaf[3], leaf[4], as_json) for leaf in leaves]
        base = len(b'{"resourceMetrics":[]}') if as_json else 0
        out: list[tuple[bytes, int, list[tuple[_Key, _Series]], bool]] = []
        lost = 0
        pack: list[int] = []
        seen: set[tuple[int, ...]] = set()
        total = base

        def close() -> None:
            self._pack_into(out, rms, leaves, sorted(pack), cap)

        for unit in units.values():
            groups = {g for i in unit for g in ((leaves[i][0],), leaves[i][:2], leaves[i][:3])}
            size = sum(sizes[i] for i in unit)
            alone = size + sum(framing[g] for g in groups)
            if base + alone > cap and len(self._encode(_sub_request(rms, [leaves[i] for i in unit]))) > cap:
                lost += len(unit)  # (over by the bounds, and measured)
                continue
            extra = size + sum(framing[g] for g in groups - seen)
            if pack and total + extra > cap:
                close()
                pack, total = [], base
                seen = set()
                extra = alone
            pack.extend(unit)
            total += extra
            seen |= groups
        if pack:
            close()
        if lost:
            _stats.incr("otlp_metrics.too_large", lost)
            count_dropped("request_too_large", self._exporter_name(), lost)
            warn_limited(
                "otlp_metrics.too_large",
                "pitchey_trace otlp_metrics: dropped %d data point(s) whose request alone would be "
                "larger than max_request_bytes (%d) (counted in dropped.request_too_large; the "
                "request that held them was %d bytes)",
                lost,
                cap,
                len(payload),
            )
        return out

    def _point_size(self, kind: str, point: Mapping[str, Any], as_json: bool) -> int:
        message = _SCHEMA[_SCHEMA["metric"][kind][2]]["dataPoints"][2]
        if as_json:
            return len(dumps(_json(message, point))) + 1
        return field_size(len(_proto(message, point)))

    def _pack_into(
        self,
        out: list[tuple[bytes, int, list[tuple[_Key, _Series]], bool]],
        rms: list[dict[str, Any]],
        leaves: list[_Leaf],
        indexes: list[int],
        cap: int,
    ) -> None:
        """The request of the points ``indexes`` (in order) appended to ``out``, or, while its
        payload is over ``cap`` (an estimate that missed), those of its halves (by series)."""
        points = [leaves[i][4] for i in indexes]
        payload = self._encode(_sub_request(rms, [leaves[i] for i in indexes]))
        series: dict[int, tuple[_Key, _Series]] = {}
        with_stats = False
        for point in points:
            owner = self._owners.get(id(point))
            if owner is None:
                with_stats = True
            else:
                series.setdefault(id(owner[1]), owner)
        units = len(series) + sum(1 for p in points if id(p) not in self._owners)
        if len(payload) <= cap or units <= 1:
            out.append((payload, len(points), list(series.values()), with_stats))
            return
        half: list[int] = []
        firsts: set[int] = set()
        for i in indexes:  # (the first half of the units, whole)
            owner = self._owners.get(id(leaves[i][4]))
            unit = id(owner[1]) if owner is not None else -1 - i
            if unit not in firsts and len(firsts) >= units // 2:
                continue
            firsts.add(unit)
            half.append(i)
        taken = set(half)
        rest = [i for i in indexes if i not in taken]
        self._pack_into(out, rms, leaves, half, cap)
        self._pack_into(out, rms, leaves, rest, cap)

    def _fold(self, rollups: Iterable[Record]) -> None:
        """Take rollup records in (the lock is held): into the running totals, or as
        intervals waiting to be sent."""
        if self.temporality == "delta":
            for record in merge_rollups(rollups):
                series = self._delta(record)
                if series is not None:
                    self._pending.append((_key(record), series))
            excess = len(self._pending) - self.max_series
            if excess > 0:  # (the endpoint has been down long: the oldest intervals go)
                _stats.incr("otlp_metrics.intervals_dropped", excess)
                del self._pending[:excess]
        else:
            for record in rollups:
                self._accumulate(record, self._touched)

    def _build(self) -> tuple[dict[str, Any], _Undo]:
        """The request for what is waiting (the lock is held), and how to put it back if the
        request is given up: cumulative series are marked again (a later request carries
        their totals then), delta intervals go back in front, the counters' last values too."""
        if self.temporality == "delta":
            items, self._pending = self._pending, []
        else:
            touched, self._touched = self._touched, {}
            items = list(touched.items())
            if items and self.idle_series_s != 0:
                # Series without spans lately go too, with their unchanged totals as of now, so
                # a backend's rate over them reads 0 rather than nothing (for idle_series_s).
                now = max(series.time_ns for _, series in items)
                horizon = -math.inf if self.idle_series_s is None else time.monotonic() - self.idle_series_s
                for key, series in self._series.items():
                    if key not in touched and series.seen >= horizon:
                        series.time_ns = max(series.time_ns, now)
                        items.append((key, series))
        sent, sent_ns = self._stats_sent, self._stats_sent_ns

        def undo(part: list[tuple[_Key, _Series]] | None = None, stats: bool = True) -> None:
            """Put back the series of ``part`` (None: all), and the counters' last values
            when ``stats``."""
            if stats:
                self._stats_sent, self._stats_sent_ns = sent, sent_ns
            back = items if part is None else part
            if self.temporality == "delta":
                self._pending[:0] = back
                del self._pending[: max(0, len(self._pending) - self.max_series)]
            else:
                for key, series in back:
                    self._touched.setdefault(key, series)

        try:
            return self._request(items), undo
        except Exception:
            undo()  # (nothing taken in is lost to a failed build)
            raise

    def _request(self, items: list[tuple[_Key, _Series]]) -> dict[str, Any]:
        """The request for ``items`` and the SDK's counters (the lock is held). Each data point
        of a series is noted in ``_owners`` (what a split request puts back when it fails)."""
        self._owners = {}
        by_service: dict[tuple[str, str], list[tuple[_Key, _Series]]] = {}
        for key, series in items:
            by_service.setdefault(key[:2], []).append((key, series))
        stats_metrics = self._stats_metrics() if self.sdk_stats else []
        resource_metrics = []
        for (service, environment), items in by_service.items():
            resource = self.resource_for(service, environment)
            metrics = self._metrics(items)
            if stats_metrics and service == self._resource.get("service.name", service):
                metrics += stats_metrics
                stats_metrics = []
            resource_metrics.append(self._resource_metrics(resource, metrics))
        if stats_metrics:  # (rollups of another service only: the SDK's counters still go)
            resource_metrics.append(self._resource_metrics(dict(self._resource), stats_metrics))
        self._prune_candidates()
        return {"resourceMetrics": resource_metrics}

    # -- exemplars: kept spans that show what a point counts ---------------------------------
    def _observe(self, spans: Iterable[Record]) -> None:
        """Remember, per series and minute, the slowest span that is not an error and the
        latest error span among the exported (sampled or kept) span records: the exemplars of
        the next points, so a latency spike or an error count links to a trace the trace
        backend has."""
        candidates = self._candidates
        for r in spans:
            try:  # (span records of this SDK: strs and numbers already; anything odd is passed over)
                key = (r["service"], r["environment"], r["name"], r["kind"])
                item = (r["duration_ms"] + 0.0, r["end_time_unix_nano"] + 0, r["trace_id"], r["span_id"])
            except (KeyError, TypeError):
                continue
            slots = candidates.get(key)
            if slots is None:
                if len(candidates) >= self.max_series:
                    continue
                slots = candidates[key] = {}
            minute = item[1] // _MINUTE_NS
            slot = slots.get(minute)
            if slot is None:
                if len(slots) >= _CANDIDATE_MINUTES:
                    del slots[min(slots)]
                slot = slots[minute] = [None, None]
            slowest, error = slot
            if r.get("status") == "error":
                if error is None or item[1] >= error[1]:
                    slot[1] = item
            elif slowest is None or item[0] > slowest[0]:
                slot[0] = item

    def _take_exemplars(self, key: _Key, low: int, high: int) -> tuple[_Exemplar | None, _Exemplar | None]:
        """The slowest and the latest error candidate of ``key`` that ended in ``[low, high]``.
        Every candidate that ended by ``high`` is used up (this point covers its time); later
        ones wait for a later point."""
        slots = self._candidates.get(key)
        slowest = error = None
        if not slots:
            return None, None
        for minute in sorted(slots):
            slot = slots[minute]
            s, e = slot
            if s is not None and low <= s[1] <= high and (slowest is None or s[0] > slowest[0]):
                slowest = s
            if e is not None and low <= e[1] <= high and (error is None or e[1] >= error[1]):
                error = e
            for i, item in enumerate(slot):
                if item is not None and item[1] <= high:
                    slot[i] = None
            if slot[0] is None and slot[1] is None:
                del slots[minute]
        if not slots:
            del self._candidates[key]
        return slowest, error

    def _prune_candidates(self) -> None:
        """Forget candidates no rollup came for (a series that stopped, or one over the cap)."""
        oldest = time.time_ns() // _MINUTE_NS - 2 * _CANDIDATE_MINUTES
        for key in list(self._candidates):
            slots = self._candidates[key]
            for minute in [m for m in slots if m < oldest]:
                del slots[minute]
            if not slots:
                del self._candidates[key]

    def _resource_metrics(self, resource: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
        scope = {"name": self.scope_name, "version": _scope_version(None)}
        return {"resource": {"attributes": resource}, "scopeMetrics": [{"scope": scope, "metrics": metrics}]}

    def _parsed(
        self, record: Mapping[str, Any]
    ) -> tuple[tuple[int, int], DurationSketch, _Apart | None] | None:
        try:
            window = _window(record)
            sketch = DurationSketch.from_dict(record["sketch"])
            int(record["count"]), float(record["duration_sum_ms"])
            float(record["duration_min_ms"]), float(record["duration_max_ms"])
            apart: _Apart | None = None
            if int(record["errors"]):
                e = record.get("error_durations")
                if e is not None:

                    def opt(v: Any) -> float | None:
                        return None if v is None else float(v)

                    e_sketch = DurationSketch.from_dict(e["sketch"])
                    apart = (
                        float(e["sum_ms"]),
                        float(e["min_ms"]),
                        float(e["max_ms"]),
                        opt(e["ok_min_ms"]),
                        opt(e["ok_max_ms"]),
                        e_sketch,
                    )
        except (KeyError, TypeError, ValueError, AttributeError):
            _stats.incr("otlp_metrics.bad_record")
            return None
        return window, sketch, apart

    def _delta(self, record: Mapping[str, Any]) -> _Series | None:
        parsed = self._parsed(record)
        if parsed is None:
            return None
        (start, end), sketch, apart = parsed
        series = _Series(start, end, sketch.relative_accuracy)
        try:
            series.add(record, sketch, apart)
        except ValueError:  # an error sketch of another accuracy than its record's
            _stats.incr("otlp_metrics.bad_record")
            return None
        return series

    def _accumulate(self, record: Mapping[str, Any], touched: dict[_Key, _Series]) -> None:
        parsed = self._parsed(record)
        if parsed is None:
            return
        (_, end), sketch, apart = parsed
        key = _key(record)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                _stats.incr("otlp_metrics.series_overflow", int(record["count"]))
                key = (key[0], key[1], OTHER_OPERATION, key[3])
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self._started_ns, end, sketch.relative_accuracy)
        try:
            series.add(record, sketch, apart)
        except ValueError:  # a sketch of another accuracy cannot be merged into the total
            _stats.incr("otlp_metrics.bad_record")
            return
        series.time_ns = max(series.time_ns, end, series.start_ns + 1)
        touched[key] = series

    def _metrics(self, items: list[tuple[_Key, _Series]]) -> list[dict[str, Any]]:
        temporality = _TEMPORALITY[self.temporality]
        factor = _UNITS[self.unit]
        calls: list[dict[str, Any]] = []
        durations: list[dict[str, Any]] = []
        owners = self._owners
        for owner in items:
            key, s = owner
            service, _, operation, kind = key
            attributes = {"service.name": service, "span.name": operation, "span.kind": _KIND.get(kind, kind)}
            times = {"startTimeUnixNano": s.start_ns, "timeUnixNano": s.time_ns}
            slowest, error = self._take_exemplars(key, s.start_ns, s.time_ns)
            for status, count in ((_OK, s.count - s.errors), (_ERROR, s.errors)):
                # (a cumulative series always says how many went well; errors once there were some)
                if count or (status == _OK and self.temporality == "cumulative"):
                    call = {"attributes": {**attributes, "status.code": status}, **times, "asInt": count}
                    if status == _ERROR and error is not None:
                        call["exemplars"] = [_exemplar(error, "asInt", 1)]
                    calls.append(call)
                    owners[id(call)] = owner
            for status, part, exemplar in ((_OK, s.ok, slowest), (_ERROR, s.error, error)):
                # (a cumulative series keeps the points it has had; a delta one sends what it got)
                if not part.count:
                    continue
                point: dict[str, Any] = {
                    "attributes": {**attributes, "status.code": status},
                    **times,
                    "count": part.count,
                    "sum": max(0.0, part.sum) * factor,
                }
                sk, low, high = part.sketch, max(0.0, part.low), part.high
                if self.histogram == "explicit":
                    point["bucketCounts"] = explicit_buckets(sk, self.bounds, factor, low, high)
                    point["explicitBounds"] = list(self.bounds)
                else:
                    scale, offset, counts = exponential_buckets(sk, factor, self.max_buckets, low, high)
                    point["scale"] = scale
                    point["zeroCount"] = sk.zero_count
                    point["zeroThreshold"] = MIN_INDEXABLE * factor
                    point["positive"] = {"offset": offset, "bucketCounts": counts}
                if low <= high:  # (the extremes of a class are unknown in an old record: left out)
                    point["min"] = low * factor
                    point["max"] = high * factor
                if exemplar is not None:
                    point["exemplars"] = [_exemplar(exemplar, "asDouble", exemplar[0] * factor)]
                durations.append(point)
                owners[id(point)] = owner
        out: list[dict[str, Any]] = [
            {
                "name": CALLS_METRIC,
                "description": "Spans, from every span before sampling.",
                "unit": "{span}",
                "sum": {"dataPoints": calls, "aggregationTemporality": temporality, "isMonotonic": True},
            }
        ]
        if durations:
            histogram = "histogram" if self.histogram == "explicit" else "exponentialHistogram"
            out.append(
                {
                    "name": DURATION_METRIC,
                    "description": "Span durations, from every span before sampling.",
                    "unit": self.unit,
                    histogram: {"dataPoints": durations, "aggregationTemporality": temporality},
                }
            )
        return out

    def _stats_metrics(self) -> list[dict[str, Any]]:
        """The SDK's counters: since the exporter started (cumulative), or since the last
        request (delta)."""
        now = time.time_ns()
        current = _stats.snapshot()
        out: list[dict[str, Any]] = []
        for counter, value in current.items():
            if not _METRIC_NAME.fullmatch(counter):
                continue
            if self.temporality == "cumulative":
                if value < self._stats_base.get(counter, 0):  # (the counters were reset: from 0)
                    self._stats_base[counter] = 0
                start, amount = self._started_ns, value - self._stats_base.get(counter, 0)
            else:
                start, amount = self._stats_sent_ns, value - self._stats_sent.get(counter, 0)
                amount = value if amount < 0 else amount
            out.append(
                {
                    "name": f"pitchey_trace.{counter}",
                    "unit": "1",
                    "sum": {
                        "dataPoints": [{"startTimeUnixNano": start, "timeUnixNano": now, "asInt": amount}],
                        "aggregationTemporality": _TEMPORALITY[self.temporality],
                        "isMonotonic": True,
                    },
                }
            )
        self._stats_sent = current
        self._stats_sent_ns = now
        return out

    def __repr__(self) -> str:
        return (
            f"OTLPMetricsExporter(endpoint={self.endpoint!r}, protocol={self.protocol!r}, "
            f"temporality={self.temporality!r}, histogram={self.histogram!r})"
        )


def _sub_request(rms: list[dict[str, Any]], leaves: Iterable[_Leaf]) -> dict[str, Any]:
    """The request of ``rms`` (a request's ``resourceMetrics``) holding only ``leaves`` (in
    order): their resources, scopes and metrics, each once."""
    out: list[dict[str, Any]] = []
    nodes: dict[tuple[int, ...], dict[str, Any]] = {}
    for ri, si, mi, kind, point in leaves:
        metric = nodes.get((ri, si, mi))
        if metric is None:
            scope = nodes.get((ri, si))
            if scope is None:
                resource = nodes.get((ri,))
                if resource is None:
                    resource = nodes[(ri,)] = {"resource": rms[ri]["resource"], "scopeMetrics": []}
                    out.append(resource)
                scope = nodes[(ri, si)] = {"scope": rms[ri]["scopeMetrics"][si]["scope"], "metrics": []}
                resource["scopeMetrics"].append(scope)
            m = rms[ri]["scopeMetrics"][si]["metrics"][mi]
            metric = nodes[(ri, si, mi)] = {**m, kind: {**m[kind], "dataPoints": []}}
            scope["metrics"].append(metric)
        metric[kind]["dataPoints"].append(point)
    return {"resourceMetrics": out}
