"""Stateful worker-side stages: dataset routing and exact per-minute rollups.

* :class:`Router` - decides which datasets (``traces``, ``audit``, ``performance`` or your own)
  a record joins; exporters subscribe to datasets with their ``datasets`` attribute.
* :class:`Rollups` - per-minute RED metrics (count, errors, duration sum/min/max, p50/p95/p99
  from a mergeable sketch) per service, operation and span kind, computed from *every*
  recorded span before sampling, so the numbers stay exact at any sample rate.
* :func:`merge_rollups` - combine rollup records that share a key (what a reader does).

Both run on the pipeline worker thread, never on the request thread.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pitchey_trace import _accel, _safety, _stats
from pitchey_trace._sketch import MIN_INDEXABLE, DurationSketch, merge_sketches
from pitchey_trace._span import Span, SpanKind, StatusCode
from pitchey_trace._validate import finite, positive_int
from pitchey_trace.records import SCHEMA_VERSION, Record, dataset_of, new_record_id

__all__ = [
    "DEFAULT_DATASETS",
    "OTHER_OPERATION",
    "Predicate",
    "Rollups",
    "Router",
    "audit_category",
    "in_dataset",
    "merge_rollups",
    "record_type",
]


class Predicate(Protocol):
    """A rule on a record (a plain function or lambda does): True when the record belongs, to a
    dataset for :class:`Router`. Built ones: :func:`in_dataset`, :func:`record_type`,
    :func:`audit_category`."""

    def __call__(self, record: Record, /) -> bool: ...


#: Operation name that collects spans beyond ``max_operations`` in one interval.
OTHER_OPERATION = "_other"


class _Named:
    """A predicate with a readable repr (attrs-style small rule objects)."""

    __slots__ = ("_fn", "_label")

    def __init__(self, label: str, fn: Predicate) -> None:
        self._label = label
        self._fn = fn

    def __call__(self, record: Record) -> bool:
        return self._fn(record)

    def __repr__(self) -> str:
        return self._label


def in_dataset(name: str) -> Predicate:
    """Records whose default dataset is ``name``: their ``dataset`` key when set, else by type
    (span -> ``traces``, audit -> ``audit``, rollup -> ``performance``)."""
    return _Named(f"in_dataset({name!r})", lambda r: dataset_of(r) == name)


def record_type(*types: str) -> Predicate:
    """Records whose ``type`` is one of ``types`` (``span``, ``audit``, ``rollup``)."""
    wanted = frozenset(types)
    return _Named(f"record_type({', '.join(map(repr, types))})", lambda r: r.get("type") in wanted)


def audit_category(*categories: str) -> Predicate:
    """Audit records of the given categories (``request``, ``security``, ``data_access``)."""
    wanted = frozenset(categories)
    return _Named(
        f"audit_category({', '.join(map(repr, categories))})",
        lambda r: r.get("type") == "audit" and r.get("category") in wanted,
    )


#: The standard datasets and their filters (``logs``: the application's logs, when shipped).
DEFAULT_DATASETS: Mapping[str, Predicate] = {
    "traces": in_dataset("traces"),
    "audit": in_dataset("audit"),
    "performance": in_dataset("performance"),
    "logs": in_dataset("logs"),
}


class Router:
    """Sends each record to every dataset whose filter it passes.

    ``Router()`` is the default routing (by record type, see :func:`in_dataset`). Extra
    datasets are added on top of the defaults (a name that exists replaces its filter)::

        pt.configure(router=pt.Router({"security": audit_category("security")}), exporters=[
            LogpushExporter(bucket="logs", datasets={"traces", "audit", "performance", "security"}),
        ])

    ``defaults=False`` keeps only the datasets you pass. A filter that raises is reported as an
    internal error and treated as "no match" for that dataset only. A record that matches no
    dataset goes nowhere (counted as ``filtered.unrouted``), except to exporters without a
    ``datasets`` restriction.
    """

    __slots__ = ("_items", "datasets")

    def __init__(self, datasets: Mapping[str, Predicate] | None = None, *, defaults: bool = True) -> None:
        merged: dict[str, Predicate] = dict(DEFAULT_DATASETS) if defaults else {}
        if datasets is not None and not isinstance(datasets, Mapping):
            raise TypeError(f"datasets must map dataset names to filters, got {type(datasets).__name__}")
        for name, pred in (datasets or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"dataset names must be non-empty strings, got {name!r}")
            if not callable(pred):
                raise TypeError(f"filter of dataset {name!r} is not callable: {pred!r}")
            merged[name] = pred
        self.datasets: dict[str, Predicate] = merged
        self._items = tuple(merged.items())

    def __call__(self, record: Record) -> list[str]:
        """The names of the datasets ``record`` joins."""
        out: list[str] = []
        for name, pred in self._items:
            try:
                if pred(record):
                    out.append(name)
            except Exception as exc:
                _safety.report(f"router.{name}", exc)
        if not out:
            _stats.incr("filtered.unrouted")
        return out

    def __repr__(self) -> str:
        return f"Router({self.datasets!r})"


class _Agg:
    __slots__ = ("count", "err_max", "err_min", "err_sketch", "err_sum", "errors", "max", "min", "ok_max",
                 "ok_min", "sketch", "sum")  # fmt: skip

    def __init__(self, accuracy: float) -> None:
        self.count = 0
        self.errors = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0
        self.sketch = DurationSketch(accuracy)
        # the error spans' durations apart (metrics by status.code); a sketch once there is one
        self.err_sum = 0.0
        self.err_min = self.ok_min = math.inf
        self.err_max = self.ok_max = -math.inf
        self.err_sketch: DurationSketch | None = None


_ERROR = StatusCode.ERROR
#: The error spans of a group (None when it has none): their sum/min/max ms, the other spans'
#: min/max ms (inf/-inf when there are none), the errors' zero count and sketch buckets.
_ErrorSummary = tuple[float, float, float, float, float, int, Mapping[int, int]] | None
#: One group of a chunk: count, errors, sum/min/max ms, zero count, sketch buckets, errors apart.
_Summary = tuple[int, int, float, float, float, int, Mapping[int, int], _ErrorSummary]


class Rollups:
    """Exact per-interval RED metrics per (service, environment, operation, kind).

    The pipeline calls :meth:`observe` for every recorded span (sampled or not) and
    :meth:`collect` periodically. A span counts in the interval that contains its end time.
    An interval is emitted once it ended more than ``grace_s`` ago, or at once on flush and
    shutdown (``force``) - then spans that end later in the same interval produce a second
    record with the same key. Records are therefore *additive*: readers merge records with
    the same (service, environment, operation, kind, minute_start_unix_nano, interval_s) with
    :func:`merge_rollups` (counts, errors and sums add; min/max combine; sketches merge).

    Memory is bounded: at most ``max_operations`` distinct (operation, kind) pairs per interval
    (further spans are folded into operation ``"_other"``, counted as ``rollups.overflow``) and
    at most ``max_open_intervals`` intervals waiting (a span for another interval is not
    counted; ``dropped.rollups_interval_cap``).
    """

    def __init__(
        self,
        *,
        interval_s: int = 60,
        grace_s: float = 5.0,
        max_operations: int = 1000,
        max_open_intervals: int = 10,
        relative_accuracy: float = 0.01,
    ) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, int) or interval_s < 1:
            raise ValueError("interval_s must be an int >= 1")
        positive_int("max_operations", max_operations)
        positive_int("max_open_intervals", max_open_intervals)
        finite("grace_s", grace_s, 0.0, 86_400.0)
        finite("relative_accuracy", relative_accuracy, 1e-6, 0.5)
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.max_operations = max_operations
        self.max_open_intervals = max_open_intervals
        self.relative_accuracy = relative_accuracy
        self.service = "unknown_service"
        self.environment = "development"
        self._interval_ns = interval_s * 1_000_000_000
        self._inv_log_gamma = DurationSketch(relative_accuracy)._inv_log_gamma
        self._lock = threading.Lock()
        self._windows: dict[int, dict[tuple[str, str], _Agg]] = {}

    def bind(self, *, service: str, environment: str) -> None:
        """Set the service and environment written in every record (called by configure)."""
        self.service = service
        self.environment = environment

    def observe(self, span: Span) -> None:
        """Count one finished span (pipeline worker thread)."""
        self.observe_many((span,))

    def observe_many(self, spans: Iterable[Span]) -> None:
        """Count a chunk of finished spans (what the pipeline worker calls): the chunk is
        summarised per interval and operation first (in C when the accelerator is built), then
        each summary is added under the lock."""
        summary = None
        chunk = spans if isinstance(spans, list) else list(spans)
        if _accel.rollup_chunk is not None:
            try:
                summary = _accel.rollup_chunk(
                    chunk, self._interval_ns, _ERROR, self._inv_log_gamma, MIN_INDEXABLE
                )
            except (TypeError, OverflowError):
                summary = None  # an unusual span: the Python code below handles every case
        if summary is None:
            summary = self._summarize(chunk)
        windows = self._windows
        with self._lock:
            for (window, name, kind), (
                count,
                errors,
                total,
                low,
                high,
                zeros,
                buckets,
                errs,
            ) in summary.items():
                win = windows.get(window)
                if win is None:
                    if len(windows) >= self.max_open_intervals:
                        _stats.incr("dropped.rollups_interval_cap", count)
                        continue
                    win = windows[window] = {}
                key = (name, kind.value)
                agg = win.get(key)
                if agg is None:
                    if len(win) >= self.max_operations:
                        _stats.incr("rollups.overflow", count)
                        key = (OTHER_OPERATION, key[1])
                        agg = win.get(key)
                    if agg is None:
                        agg = win[key] = _Agg(self.relative_accuracy)
                agg.count += count
                agg.errors += errors
                agg.sum += total
                if low < agg.min:
                    agg.min = low
                if high > agg.max:
                    agg.max = high
                agg.sketch.add_counts(buckets, zeros)
                if errs is not None:
                    e_total, e_low, e_high, ok_low, ok_high, e_zeros, e_buckets = errs
                    agg.err_sum += e_total
                    agg.err_min = min(agg.err_min, e_low)
                    agg.err_max = max(agg.err_max, e_high)
                    agg.ok_min = min(agg.ok_min, ok_low)
                    agg.ok_max = max(agg.ok_max, ok_high)
                    if agg.err_sketch is None:
                        agg.err_sketch = DurationSketch(self.relative_accuracy)
                    agg.err_sketch.add_counts(e_buckets, e_zeros)
                elif count:
                    agg.ok_min = min(agg.ok_min, low)
                    agg.ok_max = max(agg.ok_max, high)

    def _summarize(self, spans: list[Span]) -> dict[tuple[int, str, SpanKind], _Summary]:
        """Per (interval, name, kind): count, errors, duration sum/min/max (ms), values too
        small for the sketch, sketch bucket counts, and the same for the error spans apart
        (see ``_Summary``). The reference for ``_speedups.rollup_chunk``."""
        interval = self._interval_ns
        groups: dict[tuple[int, str, SpanKind], tuple[list[float], list[float]]] = {}
        for span in spans:
            start = span.start_ns
            end = span.end_ns
            if end < start:
                end = start
            group = (end - end % interval, span.name, span.kind)
            parts = groups.get(group)
            if parts is None:
                parts = groups[group] = ([], [])
            parts[span.status == _ERROR].append((end - start) / 1e6)
        out: dict[tuple[int, str, SpanKind], _Summary] = {}
        for group, (ok, err) in groups.items():
            ms = ok + err
            zeros, buckets = self._buckets(ms)
            errs: _ErrorSummary = None
            if err:
                e_zeros, e_buckets = self._buckets(err)
                ok_low, ok_high = (min(ok), max(ok)) if ok else (math.inf, -math.inf)
                errs = (math.fsum(err), min(err), max(err), ok_low, ok_high, e_zeros, e_buckets)
            out[group] = (len(ms), len(err), math.fsum(ms), min(ms), max(ms), zeros, buckets, errs)
        return out

    def _buckets(self, ms: list[float]) -> tuple[int, Counter[int]]:
        """The durations too small to index, and the sketch bucket counts of the others."""
        inv, log, ceil = self._inv_log_gamma, math.log, math.ceil
        indexes = [ceil(log(v) * inv) for v in ms if v > MIN_INDEXABLE]
        return len(ms) - len(indexes), Counter(indexes)

    def collect(self, now_ns: int, force: bool = False) -> list[Record]:
        """Rollup records of the intervals that are due (all of them when ``force``); their
        counts are forgotten, so they are never emitted twice."""
        horizon = now_ns - self._interval_ns - int(self.grace_s * 1e9)
        with self._lock:
            due = [w for w in self._windows if force or w <= horizon]
            taken = [(w, self._windows.pop(w)) for w in sorted(due)]
        out: list[Record] = []
        for window, aggs in taken:
            for (operation, kind), agg in aggs.items():
                out.append(self._record(window, operation, kind, agg))
        if out:
            _stats.incr("rollups.records", len(out))
        return out

    def _record(self, window: int, operation: str, kind: str, agg: _Agg) -> Record:
        sk = agg.sketch
        lo, hi = agg.min, agg.max

        def q(p: float) -> float:
            return round(min(hi, max(lo, sk.quantile(p))), 6)

        record: Record = {
            "schema": SCHEMA_VERSION,
            "type": "rollup",
            "record_id": new_record_id(),  # (a copy read twice is counted once; see records)
            "service": self.service,
            "environment": self.environment,
            "operation": operation,
            "kind": kind,
            "minute_start_unix_nano": window,
            "interval_s": self.interval_s,
            "count": agg.count,
            "errors": agg.errors,
            "duration_sum_ms": round(agg.sum, 6),
            "duration_min_ms": round(lo, 6),
            "duration_max_ms": round(hi, 6),
            "p50_ms": q(0.5),
            "p95_ms": q(0.95),
            "p99_ms": q(0.99),
            "sketch": sk.to_dict(),
        }
        if agg.errors and agg.err_sketch is not None:
            record["error_durations"] = _error_durations(
                agg.err_sum, agg.err_min, agg.err_max, agg.ok_min, agg.ok_max, agg.err_sketch.to_dict()
            )
        return record

    def pending(self) -> int:
        """Number of (interval, operation, kind) aggregates not yet collected."""
        with self._lock:
            return sum(len(w) for w in self._windows.values())

    def clear(self) -> None:
        """Forget everything (in a forked child: the parent reports its own counts)."""
        self._lock = threading.Lock()
        self._windows = {}

    def shutdown(self) -> None:
        """Release memory; the pipeline has already collected with ``force`` on its last flush."""
        with self._lock:
            self._windows.clear()

    def __repr__(self) -> str:
        return (
            f"Rollups(interval_s={self.interval_s}, max_operations={self.max_operations}, "
            f"relative_accuracy={self.relative_accuracy})"
        )


_ROLLUP_KEY = ("service", "environment", "operation", "kind", "minute_start_unix_nano", "interval_s")


def _error_durations(
    total: float, low: float, high: float, ok_low: float, ok_high: float, sketch: dict[str, Any]
) -> dict[str, Any]:
    """A rollup's ``error_durations``: the error spans' durations apart, and the extremes of
    the others (null when every span was an error)."""
    others = ok_low <= ok_high
    return {
        "sum_ms": round(total, 6),
        "min_ms": round(low, 6),
        "max_ms": round(high, 6),
        "ok_min_ms": round(ok_low, 6) if others else None,
        "ok_max_ms": round(ok_high, 6) if others else None,
        "sketch": sketch,
    }


def _merge_error_durations(recs: list[Record]) -> dict[str, Any] | None:
    """``error_durations`` of merged records; a record with errors but without the field (a
    writer before it existed) leaves the merged record without it, since its part is unknown."""
    parts = [r.get("error_durations") for r in recs if r.get("errors")]
    if not parts or not all(isinstance(p, Mapping) for p in parts):
        return None
    done = [p for p in parts if isinstance(p, Mapping)]  # (for the type checker)
    ok_lows = [float(p["ok_min_ms"]) for p in done if p.get("ok_min_ms") is not None]
    ok_highs = [float(p["ok_max_ms"]) for p in done if p.get("ok_max_ms") is not None]
    # records without errors count among the others
    ok_lows += [float(r["duration_min_ms"]) for r in recs if not r.get("errors")]
    ok_highs += [float(r["duration_max_ms"]) for r in recs if not r.get("errors")]
    return _error_durations(
        math.fsum(float(p["sum_ms"]) for p in done),
        min(float(p["min_ms"]) for p in done),
        max(float(p["max_ms"]) for p in done),
        min(ok_lows, default=math.inf),
        max(ok_highs, default=-math.inf),
        merge_sketches(p["sketch"] for p in done),
    )


def merge_rollups(records: Iterable[Record]) -> list[Record]:
    """Merge rollup records that share (service, environment, operation, kind,
    minute_start_unix_nano, interval_s): counts, errors and sums add, min/max combine, the
    sketches merge and the quantiles are recomputed from the merged sketch. Non-rollup
    records are ignored. Output order follows the first appearance of each key. Copies of one
    record (the same ``record_id`` under one key: read from two datasets, written twice) count
    once; a merged record is a new one, without a ``record_id``."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    ids: set[tuple[tuple[Any, ...], str]] = set()
    for rec in records:
        if rec.get("type") == "rollup":
            key = tuple(rec[k] for k in _ROLLUP_KEY)
            rid = rec.get("record_id")
            if isinstance(rid, str):
                if (key, rid) in ids:
                    continue
                ids.add((key, rid))
            groups.setdefault(key, []).append(rec)
    out: list[Record] = []
    for recs in groups.values():
        if len(recs) == 1:
            out.append(dict(recs[0]))
            continue
        merged = dict(recs[0])
        merged.pop("record_id", None)
        merged["count"] = sum(r["count"] for r in recs)
        merged["errors"] = sum(r["errors"] for r in recs)
        merged["duration_sum_ms"] = round(sum(r["duration_sum_ms"] for r in recs), 6)
        lo = merged["duration_min_ms"] = min(r["duration_min_ms"] for r in recs)
        hi = merged["duration_max_ms"] = max(r["duration_max_ms"] for r in recs)
        sketch_dict = merge_sketches(r["sketch"] for r in recs)
        sketch = DurationSketch.from_dict(sketch_dict)
        for field, p in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            merged[field] = round(min(hi, max(lo, sketch.quantile(p))), 6)
        merged["sketch"] = sketch_dict
        merged.pop("error_durations", None)
        errs = _merge_error_durations(recs)
        if errs is not None:
            merged["error_durations"] = errs
        out.append(merged)
    return out
