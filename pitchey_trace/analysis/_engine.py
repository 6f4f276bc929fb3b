"""The analysis engine: answers from archived records (search, trace tree, bottleneck, metrics).

An :class:`Archive` reads a source's objects on first use and keeps an index in memory: spans
by trace (deduplicated by span id, as a record may sit in several datasets or be written twice
by a retried export), audit records, log records and rollups (deduplicated by ``record_id``
where they have one). A time-bounded query reads only the objects that can hold records of its
window, and later queries read more as they need; :meth:`Archive.refresh` picks up objects
written since.
Every answer is a plain JSON-ready dict or list (shapes in docs/analysis.md).
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import heapq
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pitchey_trace._sketch import DurationSketch, merge_sketches
from pitchey_trace.analysis._reader import (
    DATASETS,
    LocalSource,
    MultiSource,
    ObjectInfo,
    Source,
    _concurrency,
    decode_into,
    decode_object,
)
from pitchey_trace.analysis._time import parse_time

__all__ = ["Archive"]

Record = dict[str, Any]

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
# A record id as records.new_record_id() writes it; any other value (a sanitizer rule rewrote it,
# a hand-made record) is no id: such a record is counted, as records of archives before ids.
_RECORD_ID = re.compile(r"[0-9a-f]{16}")
_STATUSES = ("error", "ok", "unset")
_SORTS = ("recent", "duration")
_MAX_LIMIT = 10_000
# A batch's object is opened before its records are exported, and a span is exported after it
# ends: an object closed before a window's start cannot hold a span starting in it. Clocks of
# the writing hosts may differ a little: objects closed up to this long before still count.
_CLOCK_SKEW_NS = 300 * 10**9
# The memory budget that ``max_spans`` alone implies (Archive's ``max_bytes``): room per span for
# more than two ordinary SDK records (about 3.4 KB each by record_weight), and never less than the
# longest line the reader takes (MAX_LINE_BYTES): a record of one huge value can still be held.
_BYTES_PER_SPAN = 8 << 10
_MIN_DERIVED_BYTES = 64 << 20

# Message normalisation for error groups: the parts that differ between occurrences of one error.
_NORMALISE = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),  # addresses in reprs: "<Pool object at 0x7f...>"
    # (with a letter: a run of digits only is a number, however long)
    (re.compile(r"\b(?=[0-9]*[a-fA-F])[0-9a-fA-F]{16,}\b"), "<hex>"),
    # shorter hex ids with digits and letters, also after "_" or "-": "job 7f3e9a1b", "req_8f3a2b1c"
    (
        re.compile(r"(?<![0-9A-Za-z])(?=[a-fA-F]*[0-9])(?=[0-9]*[a-fA-F])[0-9a-fA-F]{8,}(?![0-9A-Za-z])"),
        "<hex>",
    ),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    # other ids mixing letters and digits (a digit after a letter: "250ms" stays a number and a
    # unit): "cus_NffrFeUfNV2Hib", "ord8812345"
    (re.compile(r"(?<![0-9A-Za-z])(?=[0-9]*[A-Za-z]+[0-9])[0-9A-Za-z]{8,}(?![0-9A-Za-z])"), "<id>"),
    # (no word boundary after: a unit may follow, "3.5s", "250ms"; before: a letter or digit
    # only, so "user_12345" is "user_<n>")
    (re.compile(r"(?<![0-9A-Za-z])\d+(?:\.\d+)?(?!\d)"), "<n>"),
]
# A message that starts with an HTTP status keeps it: 401 and 403 are different errors.
_HTTP_STATUS = re.compile(r"HTTP \d{3}\b")
_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\$\d+|%s|\?")
_SQL_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_SPACE = re.compile(r"\s+")


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _is_int(value: Any) -> bool:
    return value.__class__ is int


def _clean_span(rec: Record) -> bool:
    """Make a span record safe for every query (in place); False if it cannot be used.

    Archives are read as found: a field of an unexpected type is replaced by its text (names,
    kind, service, status), by ``None`` (parent, status message) or by an empty container
    (attributes, resource, events, links), so that no query has to doubt a field again; a
    trace id that is not 32 hex characters makes the span unusable.
    """
    trace_id = rec.get("trace_id")
    if not (
        isinstance(trace_id, str)
        and isinstance(rec.get("span_id"), str)
        and _is_int(rec.get("start_time_unix_nano"))
        and _is_int(rec.get("end_time_unix_nano"))
    ):
        return False
    # Trace ids are looked up as 32 lowercase hex (the API and the CLI refuse anything else):
    # another id would be listed by search but could not be opened, and an uppercase one
    # opened as its lowercase twin without its own spans.
    if not _HEX32.fullmatch(trace_id):
        trace_id = trace_id.lower()
        if not _HEX32.fullmatch(trace_id):
            return False
        rec["trace_id"] = trace_id
    # Span ids as the span endpoint takes them (16 hex, compared lowercase), so every span the
    # tree shows can be fetched: hex written in upper case or without its leading zeros (as
    # Zipkin's lenient parsers read it) is normalised; a span whose id is anything else is
    # unusable, as for trace ids. A parent id that is not hex stays as found: no span has it,
    # so it is listed in missing_parents.
    for key in ("span_id", "parent_span_id"):
        value = rec.get(key)
        if isinstance(value, str) and not _HEX16.fullmatch(value):
            fixed = value.lower().zfill(16) if value else ""
            if _HEX16.fullmatch(fixed):
                rec[key] = fixed
            elif key == "span_id":
                return False
    for key in ("name", "service", "kind", "status"):
        value = rec.get(key)
        if not isinstance(value, str):
            rec[key] = "unset" if key == "status" and value is None else _text("" if value is None else value)
    if not isinstance(rec.get("parent_span_id"), (str, type(None))):
        rec["parent_span_id"] = None
    if not isinstance(rec.get("status_message"), (str, type(None))):
        rec["status_message"] = _text(rec["status_message"])
    duration: Any = rec.get("duration_ms")
    if duration.__class__ is not float or not math.isfinite(duration):
        rec["duration_ms"] = (
            float(duration)
            if _is_int(duration) and abs(duration) < 2**53
            else (rec["end_time_unix_nano"] - rec["start_time_unix_nano"]) / 1e6
        )
    if not isinstance(rec.get("attributes"), dict):
        rec["attributes"] = {}
    if "resource" in rec and not isinstance(rec["resource"], dict):
        rec["resource"] = {}
    # Events and links as the page reads them: objects, each with an attribute map (a null
    # link, or a link list that is a number, stopped the page showing the span).
    for key in ("events", "links"):
        if key == "links" and "links" not in rec:
            continue
        items = rec.get(key)
        if not isinstance(items, list) or not all(
            isinstance(e, dict) and isinstance(e.get("attributes", {}), dict) for e in items
        ):
            rec[key] = (
                [
                    e if isinstance(e.get("attributes", {}), dict) else {**e, "attributes": {}}
                    for e in items
                    if isinstance(e, dict)
                ]
                if isinstance(items, list)
                else []
            )
    # "clipped" is the API's own word for values it cut: an archived one would claim cuts.
    rec.pop("clipped", None)
    return True


def _clean_rollup(rec: Record) -> bool:
    """Rollups as :func:`_clean_span` does spans: usable only with an int minute and count."""
    if not (_is_int(rec.get("minute_start_unix_nano")) and _is_int(rec.get("count"))):
        return False
    for key in ("service", "operation", "kind"):
        if not isinstance(rec.get(key), str):
            rec[key] = _text(rec.get(key, ""))
    return True


def _normalise_message(message: str) -> str:
    text = message.splitlines()[0] if message else ""
    status = _HTTP_STATUS.match(text)
    head = status.group() if status else ""
    text = text[len(head) :]
    for pattern, repl in _NORMALISE:
        text = pattern.sub(repl, text)
    return (head + text)[:300]


def _statement(span: Mapping[str, Any]) -> str | None:
    """The normalised statement of a database query span (literals as ?), None for other spans.

    A query is a span with query text, or a client span of a database system without it; a
    transaction span (internal, with db.* attributes but no text) is not a query.
    """
    attrs = span.get("attributes")
    if not isinstance(attrs, Mapping):
        return None
    text = attrs.get("db.query.text") or attrs.get("db.statement")
    if not text:
        if span.get("kind") != "client" or not ("db.system.name" in attrs or "db.system" in attrs):
            return None
        text = span.get("name") or ""
    text = _SQL_LITERAL.sub("?", _text(text))
    text = _SQL_IN_LIST.sub("(?)", text)
    return _SPACE.sub(" ", text).strip()[:1000]


def _exception(span: Mapping[str, Any]) -> tuple[str, str]:
    """``(type, message)`` of the last exception event of a span (``("", "")`` if none)."""
    events = span.get("events")
    if isinstance(events, list):
        for event in reversed(events):
            if isinstance(event, Mapping) and event.get("name") == "exception":
                attrs = event.get("attributes")
                if isinstance(attrs, Mapping):
                    return _text(attrs.get("exception.type") or ""), _text(
                        attrs.get("exception.message") or ""
                    )
    return "", ""


def _error_message(span: Mapping[str, Any]) -> tuple[str, str]:
    """What a failed span says about its failure, as ``(exception type, message)``: the last
    exception's type and message, else the status message, else for a response without
    either its status code (``HTTP 502``). The one description of ``errors()`` (which groups
    by its normalised shape) and ``analyze()`` (``show``)."""
    etype, emsg = _exception(span)
    text = emsg or _text(span.get("status_message") or "")
    if not text:  # a failed response without exception: its status tells errors apart
        attrs = span.get("attributes")
        code = attrs.get("http.response.status_code") if isinstance(attrs, Mapping) else None
        text = f"HTTP {_text(code)}"[:300] if code is not None else ""
    return etype, text


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


_Stats = tuple[int, int, float, list[float | None], float]  # count, errors, total ms, p50/95/99, max


def _operation_key(r: Record) -> tuple[str, str, str]:
    return (r["service"], r["operation"] if r.get("type") == "rollup" else r["name"], r["kind"])


def _rollup_count(rs: list[Record]) -> int:
    return sum(_int(r.get("count")) for r in rs)


def _rollup_stats(rs: list[Record]) -> _Stats:
    """Rollups added up: counts and sums add, sketches merge (ValueError, TypeError, KeyError
    or ArithmeticError if one is malformed)."""
    sketches = [r["sketch"] for r in rs if isinstance(r.get("sketch"), Mapping)]
    sketch = DurationSketch.from_dict(merge_sketches(sketches)) if sketches else None
    lows = [_num(r.get("duration_min_ms"), math.inf) for r in rs]
    highs = [_num(r.get("duration_max_ms"), -math.inf) for r in rs]
    lo, hi = min(lows), max(highs)

    def quantile(q: float) -> float | None:
        if sketch is None:
            return None
        # A bucket's value is within 1% of its durations, so it may lie beyond the extremes
        # the rollups recorded exactly: kept within them, as the rollup writer does.
        return min(hi, max(lo, sketch.quantile(q))) if lo <= hi else sketch.quantile(q)

    return (
        _rollup_count(rs),
        sum(_int(r.get("errors")) for r in rs),
        # (fsum: exact, so the mean does not depend on the order the rollups were read in)
        math.fsum(_num(r.get("duration_sum_ms")) for r in rs),
        [quantile(q) for q in (0.5, 0.95, 0.99)],
        max(_num(r.get("duration_max_ms")) for r in rs),
    )


def _span_stats(ss: list[Record]) -> _Stats:
    """Exact statistics of archived spans (nearest-rank percentiles)."""
    durations = sorted(_num(s.get("duration_ms")) for s in ss)
    errors = sum(1 for s in ss if s.get("status") == "error")
    quantiles: list[float | None] = [_percentile(durations, q) for q in (0.5, 0.95, 0.99)]
    return len(ss), errors, sum(durations), quantiles, durations[-1]


def _stats_fields(st: _Stats) -> dict[str, Any]:
    count, errors, total_ms, (p50, p95, p99), max_ms = st
    return {
        "count": count,
        "errors": errors,
        "error_rate": errors / count,
        "mean_ms": total_ms / count,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": max_ms,
    }


def _stats_row(key: tuple[Any, ...], st: _Stats, source: str) -> dict[str, Any]:
    """One ``performance()`` row."""
    service, operation, kind = key
    return {"service": service, "operation": operation, "kind": kind, **_stats_fields(st), "source": source}


def _call_weights(rollups: list[Record], spans: list[Record]) -> Callable[[Record], float | None]:
    """How many calls each kept span stands for: per (service, operation, kind), the rollups'
    count over the kept spans' count, errors and the rest apart; None where the rollups do not
    say (no rollup of the operation, or fewer calls counted than kept, at a window's edge)."""
    counted: dict[tuple[Any, Any, Any], list[int]] = {}
    for r in rollups:
        c = counted.setdefault((r.get("service"), r.get("operation"), r.get("kind")), [0, 0])
        c[0] += _int(r.get("count"))
        c[1] += _int(r.get("errors"))
    kept: dict[tuple[Any, Any, Any], list[int]] = {}
    for sp in spans:
        k = kept.setdefault((sp.get("service"), sp.get("name"), sp.get("kind")), [0, 0])
        k[0] += 1
        k[1] += sp.get("status") == "error"
    weights: dict[tuple[Any, Any, Any, bool], float | None] = {}
    for key, (n_kept, e_kept) in kept.items():
        n_all, e_all = counted.get(key, (0, 0))
        for error, num, den in ((True, e_all, e_kept), (False, n_all - e_all, n_kept - e_kept)):
            weights[(key[0], key[1], key[2], error)] = num / den if den and num >= den else None

    def weight(sp: Record) -> float | None:
        key = (sp.get("service"), sp.get("name"), sp.get("kind"), sp.get("status") == "error")
        return weights.get(key)

    return weight


_SEVERITIES = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "FATAL": 21,
    "CRITICAL": 21,
}


def _least_severity(level: Any) -> int | None:
    """A ``level`` filter as an OpenTelemetry severity number (1-24)."""
    if level is None:
        return None
    if isinstance(level, str) and level.strip().isascii() and level.strip().isdigit():  # (not "²")
        level = int(level.strip())
    if isinstance(level, int) and not isinstance(level, bool):
        if 1 <= level <= 24:
            return level
        raise ValueError(f"level must be a severity number 1-24 or a name, got {level!r}")
    if isinstance(level, str) and level.strip().upper() in _SEVERITIES:
        return _SEVERITIES[level.strip().upper()]
    raise ValueError(f"level must be one of {', '.join(_SEVERITIES)} or a number 1-24, got {level!r}")


_CALLING = frozenset(("client", "producer"))
_CALLED = frozenset(("server", "consumer"))


def _protocol(attrs: Mapping[str, Any]) -> str:
    """What kind of call a client or producer span made, from its attributes."""
    if attrs.get("db.system.name") or attrs.get("db.system"):
        return "database"
    if attrs.get("messaging.system"):
        return "messaging"
    if attrs.get("rpc.system"):
        return "rpc"
    if attrs.get("http.request.method") or attrs.get("url.full") or attrs.get("http.method"):
        return "http"
    return "other"


def _attrs_of(span: Record) -> Mapping[str, Any]:
    attrs = span.get("attributes")
    return attrs if isinstance(attrs, Mapping) else {}


def _peer(span: Record, protocol: str) -> str:
    """A name for what an untraced callee is: ``postgresql db.internal:5432``, ``aws S3``,
    ``rabbitmq orders``, ``api.stripe.com:443``; the span's name when nothing says."""
    attrs = _attrs_of(span)
    address = _text(attrs.get("server.address") or "")
    port = attrs.get("server.port")
    where = f"{address}:{port}" if address and _is_int(port) else address
    if protocol == "database":
        system = _text(attrs.get("db.system.name") or attrs.get("db.system"))
        return f"{system} {where}".strip()
    if protocol == "messaging":
        destination = _text(
            attrs.get("messaging.destination.name")
            or attrs.get("messaging.rabbitmq.destination.routing_key")
            or ""
        )
        return f"{_text(attrs.get('messaging.system'))} {destination}".strip()
    if protocol == "rpc":
        service = _text(attrs.get("rpc.service") or "")
        if attrs.get("rpc.system") == "aws-api":  # the AWS service, not the regional host
            return f"aws {service}".strip()
        return f"{service} {where}".strip() if service else where or _text(span.get("name", ""))
    return where or _text(span.get("name", ""))


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {_MAX_LIMIT}, got {limit!r}")
    return limit


def _check_ms(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number >= 0 (milliseconds), got {value!r}")
    return float(value)


def _check_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _trace_id(trace_id: Any) -> str:
    if not isinstance(trace_id, str) or not _HEX32.fullmatch(trace_id.strip().lower()):
        raise ValueError(f"trace id must be 32 hex characters, got {trace_id!r}")
    return trace_id.strip().lower()


class _Tree:
    """One trace's spans arranged as a tree (cycles and missing parents tolerated)."""

    def __init__(self, spans: list[Record]) -> None:
        # (span id last: spans with the same times come in one order, whatever the reading order)
        self.spans = sorted(
            spans, key=lambda s: (s["start_time_unix_nano"], -s["end_time_unix_nano"], s["span_id"])
        )
        self.by_id: dict[str, Record] = {}
        for s in self.spans:
            self.by_id.setdefault(s["span_id"], s)
        self.children: dict[str, list[Record]] = {}
        roots: list[Record] = []
        missing: set[str] = set()
        for s in self.by_id.values():
            parent = s.get("parent_span_id")
            if isinstance(parent, str) and parent in self.by_id and parent != s["span_id"]:
                self.children.setdefault(parent, []).append(s)
            else:
                if isinstance(parent, str) and parent not in self.by_id:
                    missing.add(parent)
                roots.append(s)
        self.missing_parents = sorted(missing)
        # Depth-first order; spans caught in a parent cycle are reached from no root: each such
        # span then starts a tree of its own, so every span appears exactly once.
        self.order: list[tuple[Record, int]] = []
        seen: set[str] = set()
        pending = list(roots) + list(self.by_id.values())
        for start in pending:
            if start["span_id"] in seen:
                continue
            stack = [(start, 0)]
            while stack:
                s, depth = stack.pop()
                if s["span_id"] in seen:
                    continue
                seen.add(s["span_id"])
                self.order.append((s, depth))
                kids = self.children.get(s["span_id"], [])
                stack.extend((k, depth + 1) for k in reversed(kids) if k["span_id"] not in seen)
        self.roots = [s for s, d in self.order if d == 0]
        self.start = min(s["start_time_unix_nano"] for s in self.spans)
        self.end = max(s["end_time_unix_nano"] for s in self.spans)

    def main_root(self) -> Record:
        """The root the trace is about: a true root (no parent) first, then the longest."""
        return max(
            self.roots,
            key=lambda s: (
                s.get("parent_span_id") is None,
                s["end_time_unix_nano"] - s["start_time_unix_nano"],
            ),
        )

    def self_time_ns(self, span: Record) -> int:
        """The span's duration minus the time covered by at least one of its children."""
        start: int = span["start_time_unix_nano"]
        end: int = span["end_time_unix_nano"]
        covered = 0
        cur_s = cur_e = None
        for k in sorted(self.children.get(span["span_id"], []), key=lambda k: k["start_time_unix_nano"]):
            ks, ke = max(k["start_time_unix_nano"], start), min(k["end_time_unix_nano"], end)
            if ke <= ks:
                continue
            if cur_e is None or ks > cur_e:
                if cur_e is not None and cur_s is not None:
                    covered += cur_e - cur_s
                cur_s, cur_e = ks, ke
            else:
                cur_e = max(cur_e, ke)
        if cur_e is not None and cur_s is not None:
            covered += cur_e - cur_s
        return max(0, end - start - covered)

    def critical_path(self) -> list[Record]:
        """The spans the trace waited on: from the root, the last child to finish, then the
        child that finished before that one started, and so on, recursively."""
        root = self.main_root()
        out: list[Record] = []
        seen: set[str] = set()
        stack: list[tuple[Record, int]] = [(root, root["end_time_unix_nano"])]
        while stack:
            s, limit = stack.pop()
            if s["span_id"] in seen:
                continue
            seen.add(s["span_id"])
            out.append(s)
            s_start = s["start_time_unix_nano"]
            cursor = min(s["end_time_unix_nano"], limit)
            chosen: list[tuple[Record, int]] = []
            kids = sorted(self.children.get(s["span_id"], []), key=lambda k: -k["end_time_unix_nano"])
            for k in kids:
                if cursor <= s_start:
                    break
                if k["start_time_unix_nano"] >= cursor or (k["end_time_unix_nano"] > cursor and chosen):
                    continue  # after the cursor, or ran alongside a child already on the path
                chosen.append((k, cursor))
                cursor = k["start_time_unix_nano"]
            stack.extend(chosen)
        return out


class _Index:
    """Everything read so far, indexed for queries."""

    def __init__(self) -> None:
        self.spans: dict[tuple[str, str], Record] = {}
        self.by_trace: dict[str, list[Record]] = {}
        # trace id -> [first start, last end]: sorting traces needs no tree
        self.extent: dict[str, list[int]] = {}
        self._resources: dict[tuple[Any, ...], Any] = {}
        self.audits: list[Record] = []
        self.rollups: list[Record] = []
        # the application's log records (shipped by export_logs), and by trace id
        self.log_lines: list[Record] = []
        self.logs: dict[str, list[Record]] = {}
        # (type, record_id, time) of the audit, log and rollup records kept: a copy read again
        # (another dataset, a retried export) is left out. The time makes a clash of two
        # random 64-bit ids harmless: both would also need the same nanosecond (or minute).
        self._record_ids: set[tuple[str, str, int]] = set()
        self._starts: list[int] | None = None
        self._sorted: list[Record] = []
        # estimated memory of the spans held (reader.record_weight), in all and per trace
        self.weight = 0
        self.trace_weight: dict[str, int] = {}

    def add(self, records: Iterable[Record], weights: Sequence[int] | None = None) -> int:
        """Add records (``weights``: each one's estimated memory, for the spans' budget);
        returns how many were not usable (unknown type or missing fields)."""
        unusable = 0
        for i, rec in enumerate(records):
            kind = rec.get("type")
            if kind == "span":
                if not _clean_span(rec):
                    unusable += 1
                    continue
                key = (rec["trace_id"], rec["span_id"])
                if key in self.spans:
                    continue
                res = rec.get("resource")
                if res.__class__ is dict:  # one process's spans share one resource: keep one copy
                    try:
                        rec["resource"] = self._resources.setdefault(tuple(res.items()), res)
                    except TypeError:  # (an unhashable value: kept as it is)
                        pass
                self.spans[key] = rec
                self.by_trace.setdefault(rec["trace_id"], []).append(rec)
                start, end = rec["start_time_unix_nano"], rec["end_time_unix_nano"]
                ext = self.extent.get(rec["trace_id"])
                if ext is None:
                    self.extent[rec["trace_id"]] = [start, max(start, end)]
                else:
                    ext[0] = min(ext[0], start)
                    ext[1] = max(ext[1], end)
                if weights is not None:
                    self.weight += weights[i]
                    tid = rec["trace_id"]
                    self.trace_weight[tid] = self.trace_weight.get(tid, 0) + weights[i]
                self._starts = None
            elif kind == "audit" and _is_int(rec.get("time_unix_nano")):
                if self._seen("audit", rec, rec["time_unix_nano"]):
                    continue
                self.audits.append(rec)
            elif kind == "rollup" and _clean_rollup(rec):
                if self._seen("rollup", rec, rec["minute_start_unix_nano"]):
                    continue
                self.rollups.append(rec)
            elif kind == "log" and _is_int(rec.get("time_unix_nano")):
                if self._seen("log", rec, rec["time_unix_nano"]):
                    continue
                self.log_lines.append(rec)
                trace = rec.get("trace_id")
                if isinstance(trace, str) and trace:
                    self.logs.setdefault(trace.lower(), []).append(rec)
            else:
                unusable += 1
        return unusable

    def _seen(self, kind: str, rec: Record, when: int) -> bool:
        """Whether a copy of ``rec`` (same type, ``record_id`` and time) was added already;
        remembers it otherwise. Records without a valid ``record_id`` are never copies: two
        equal rollups, or two equal log lines of one nanosecond, may be two real ones."""
        rid = rec.get("record_id")
        if rid.__class__ is not str or not _RECORD_ID.fullmatch(rid):
            return False
        key = (kind, rid, when)
        if key in self._record_ids:
            return True
        self._record_ids.add(key)
        return False

    def evict(self, keep: int | None, keep_bytes: int | None = None, gone: set[str] | None = None) -> int:
        """Drop whole traces, the earliest started first, until at most ``keep`` spans of at
        most ``keep_bytes`` estimated memory are left (None: no bound); returns how many spans
        were dropped (a trace is kept or dropped whole, so no view of it lacks spans that were read)."""
        excess = 0 if keep is None else len(self.spans) - keep
        over = 0 if keep_bytes is None else self.weight - keep_bytes
        if excess <= 0 and over <= 0:
            return 0
        dropped = 0
        oldest = [(ext[0], tid) for tid, ext in self.extent.items()]
        heapq.heapify(oldest)
        while (excess > 0 or over > 0) and oldest:
            _, tid = heapq.heappop(oldest)
            if gone is not None:  # (the caller skips the trace's spans still to come)
                gone.add(tid)
            for span in self.by_trace.pop(tid, ()):
                del self.spans[(tid, span["span_id"])]
                excess -= 1
                dropped += 1
            del self.extent[tid]
            weight = self.trace_weight.pop(tid, 0)
            self.weight -= weight
            over -= weight
        self._starts = None
        self._sorted = []
        return dropped

    def window(self, since: int | None, until: int | None) -> list[Record]:
        """Spans starting in ``[since, until]``, by start time."""
        if self._starts is None:
            # (ties by ids: answers that list spans do not depend on the order they were read in)
            self._sorted = sorted(self.spans.values(), key=_start_order)
            self._starts = [s["start_time_unix_nano"] for s in self._sorted]
        lo = 0 if since is None else bisect.bisect_left(self._starts, since)
        hi = len(self._sorted) if until is None else bisect.bisect_right(self._starts, until)
        return self._sorted[lo:hi]


# What the read loop does with a listed object (Archive._decide).
_READ, _LOADED, _OLD, _REWRITTEN = "read", "loaded", "old", "rewritten"


class _Ahead:
    """Reads ahead of a read loop: the next objects it will read (``decide`` says which), at
    most ``window`` at a time on worker threads, their bytes handed over in the loop's order.

    Only ``window`` objects' bytes are held at once (read or in flight), and the loop never
    waits for more than the object it needs. What a worker raises comes back from
    :meth:`take` for that object, as the read itself would have raised it."""

    def __init__(
        self, source: Source, infos: list[ObjectInfo], decide: Callable[[ObjectInfo], str], window: int
    ) -> None:
        self._source = source
        self._infos = infos
        self._decide = decide
        self._window = window
        self._next = 0  # the next position to consider
        self._pending: dict[int, Future[bytes]] = {}
        # key -> version of what was sent to a worker: an object listed twice (two datasets'
        # prefixes that overlap) is read once, as the loop passes over the second listing
        self._sent: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(window, thread_name_prefix="pitchey-trace-archive-read")
            if window > 1
            else None
        )

    def take(self, pos: int, info: ObjectInfo) -> bytes:
        """The bytes of ``info``, at ``pos`` in the loop's list (FileNotFoundError and any
        other error of the read as the source raised them)."""
        if self._pool is None:
            return self._source.read(info)
        for p in [p for p in self._pending if p < pos]:  # passed over by the loop (no longer needed)
            self._pending.pop(p).cancel()
        self._fill(pos)
        future = self._pending.pop(pos, None)
        self._fill(pos + 1)  # (keeps the window full while this one is used)
        if future is None:  # (not foreseen: read here, as without workers)
            return self._source.read(info)
        return future.result()

    def _fill(self, pos: int) -> None:
        if self._pool is None:
            return
        self._next = max(self._next, pos)
        while self._next < len(self._infos) and len(self._pending) < self._window:
            i = self._next
            info = self._infos[i]
            decision = self._decide(info)
            if decision == _REWRITTEN:  # the loop starts over there: nothing after it is needed
                self._next = len(self._infos)
                return
            sent = self._sent.get(info.key)
            if sent is not None and sent != info.version:  # (as _REWRITTEN, once the first is read)
                self._next = len(self._infos)
                return
            self._next += 1
            if decision != _READ or sent is not None:
                continue
            self._sent[info.key] = info.version
            try:
                self._pending[i] = self._pool.submit(self._source.read, info)
            except RuntimeError:  # no thread could start (interpreter shutdown): read in the loop
                self.close()
                return

    def close(self, wait: bool = True) -> None:
        """Cancel the reads not started; with ``wait``, wait for those in flight (never left
        writing to a cache directory after the loop returns)."""
        pool, self._pool = self._pool, None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)


def _start_order(s: Record) -> tuple[int, str, str]:
    return (s["start_time_unix_nano"], s["trace_id"], s["span_id"])


def _log_order(r: Record) -> tuple[int, str, str, str, str, str]:
    """Log lines by time; of one time in one order, whatever the order they were read in (a
    ``limit`` then cuts the same ones)."""
    return (
        r["time_unix_nano"],
        _text(r.get("trace_id") or ""),
        _text(r.get("span_id") or ""),
        _text(r.get("service", "")),
        _text(r.get("logger", "")),
        _text(r.get("body", "")),
    )


def _audit_order(a: Record) -> tuple[int, str, str, str, str, str, str]:
    """Audit records by time, as :func:`_log_order` log lines."""
    return (
        a["time_unix_nano"],
        _text(a.get("trace_id") or ""),
        _text(a.get("span_id") or ""),
        _text(a.get("category", "")),
        _text(a.get("action", "")),
        _text(a.get("outcome", "")),
        _text(a.get("actor") or ""),
    )


def _keep_recent(recent: list[tuple[int, str]], when: int, trace_id: str, keep: int = 5) -> None:
    """Keep in ``recent`` the ``keep`` traces with the latest ``when`` (each trace once, at its
    latest; of equal times the smallest ids): bounded whatever the group's size."""
    for i, (seen, tid) in enumerate(recent):
        if tid == trace_id:
            if when > seen:
                recent[i] = (when, tid)
            return
    if len(recent) < keep:
        recent.append((when, trace_id))
        return
    # the one to drop: the oldest, of equal ones the greatest id (as the answer is sorted)
    worst = max(range(len(recent)), key=lambda i: (-recent[i][0], recent[i][1]))
    if (-when, trace_id) < (-recent[worst][0], recent[worst][1]):
        recent[worst] = (when, trace_id)


class Archive:
    """Search and analyse archived traces, audit records and rollups.

    Args:
        source: a local archive directory (what ``LocalArchiveExporter`` writes), a source
            object such as :class:`~pitchey_trace.analysis.S3Source`, or a list of these read
            as one archive (e.g. each service's directory: their traces join up).
        prefixes: for a directory: folder per dataset when the exporter used other prefixes.
        datasets: for a directory: the datasets to read (default: traces, audit, performance).
        max_spans: hold at most this many spans (about 2 KB of memory each). The ``traces``
            objects are then read newest first; once the bound is reached, the older ones are
            left unread (``read_stats["skipped_objects"]`` counts them) and a newer one found
            by :meth:`refresh` is read with the oldest traces making room for it, so answers
            cover the most recent spans. The other datasets (audit, rollups, logs) are always
            read whole. None: no bound.
        max_bytes: hold spans of at most about this much memory (each span weighed by its
            archived line, see ``_reader.record_weight``), with the same effect as
            ``max_spans`` when reached; a span heavier than the whole budget is not held.
            Counted in ``read_stats["dropped_spans"]`` with the spans either bound made room
            by. Default: with ``max_spans``, ``max_spans`` x 8 KiB (at least 64 MiB), room for
            ordinary records, so large records (1 MB values a foreign tool wrote) cannot make
            memory grow with the archive; without it, no bound.

    ``Archive.from_records(records)`` analyses records already in memory, e.g. an
    ``InMemoryExporter``'s. Queries are safe to run from several threads.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Source | Sequence[str | os.PathLike[str] | Source],
        *,
        prefixes: Mapping[str, str] | None = None,
        datasets: Iterable[str] | None = None,
        max_spans: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        for option, value in (("max_spans", max_spans), ("max_bytes", max_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{option} must be an int >= 1 or None, got {value!r}")
        src: Any = source
        if isinstance(src, (list, tuple)):  # several archives read as one
            src = MultiSource(
                LocalSource(s, prefixes=prefixes, datasets=datasets)
                if isinstance(s, (str, os.PathLike))
                else s
                for s in src
            )
        elif isinstance(src, (str, os.PathLike)):
            src = LocalSource(src, prefixes=prefixes, datasets=datasets)
        elif prefixes is not None or datasets is not None:
            raise TypeError("prefixes and datasets are options of a directory; give them to the source")
        if not (hasattr(src, "objects") and hasattr(src, "read") and hasattr(src, "describe")):
            raise TypeError(f"source must be a directory or a source object, not {type(src).__name__}")
        self._setup(src)
        self._max_spans = max_spans
        if max_bytes is None and max_spans is not None:
            max_bytes = max(max_spans * _BYTES_PER_SPAN, _MIN_DERIVED_BYTES)
        self._max_bytes = max_bytes

    _max_spans: int | None
    _max_bytes: int | None

    def _setup(self, source: Source | None) -> None:
        self._source = source
        self._max_spans = None
        self._max_bytes = None
        self._lock = threading.RLock()
        self._index = _Index()
        self._loaded: dict[str, str] = {}  # object key -> version read
        self._listed_since: int | None = -1  # -1: nothing listed yet; None: everything
        self._trees: dict[str, tuple[int, _Tree]] = {}
        # With max_spans: whether the bound was reached, the (opened, key) order of the oldest
        # traces object read (older ones are then skipped) and the keys of those skipped.
        self._full = False
        self._floor: tuple[int, str] | None = None
        self._skipped: set[str] = set()
        #: What reading cost and found: objects read, bytes read, bad lines, unusable records,
        #: objects left unread and spans read but not held (``max_spans`` / ``max_bytes``).
        self.read_stats = {
            "objects": 0,
            "bytes": 0,
            "bad_lines": 0,
            "unusable_records": 0,
            "unreadable_objects": 0,
            "skipped_objects": 0,
            "dropped_spans": 0,
        }

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Archive:
        """An archive of records already in memory (schema-v1 span, audit and rollup dicts)."""
        if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):
            raise TypeError("records must be an iterable of record dicts")
        archive = cls.__new__(cls)
        archive._setup(None)
        archive._listed_since = None
        archive.read_stats["unusable_records"] += archive._index.add(
            dict(r) if isinstance(r, Mapping) else {} for r in records
        )
        return archive

    def __repr__(self) -> str:
        where = self._source.describe() if self._source is not None else "in memory"
        return f"<Archive {where}: {len(self._index.spans)} spans read>"

    def _lists_nothing(self) -> bool:
        """True when the source lists no object in any dataset, whatever the window: a wrong
        folder (``archive/traces`` for ``archive``) or an empty bucket. Lists, reads nothing."""
        if self.read_stats["objects"] or self.read_stats["unreadable_objects"] or self._loaded:
            return False
        if self._source is None:
            return not self._index.spans and not self._index.audits
        return not any(self._source.objects(d, None) for d in getattr(self._source, "datasets", DATASETS))

    # -- reading --------------------------------------------------------------------------------
    def _decide(self, info: ObjectInfo) -> str:
        """What the read loop does with ``info`` now: read it, pass over it (read already, or
        too old for a full span bound) or start over (rewritten in place)."""
        if self._loaded.get(info.key) == info.version:
            return _LOADED
        if (
            self._bounded
            and info.dataset == "traces"
            and self._full
            and self._floor is not None
            and (info.opened_ns or 0, info.key) < self._floor
        ):
            return _OLD
        if info.key in self._loaded:
            return _REWRITTEN
        return _READ

    def _read(self, infos: list[ObjectInfo]) -> bool:
        """Read the objects not read yet; True if a rewritten object made it start over.

        With ``max_spans`` (``infos`` newest first), a ``traces`` object older than every one
        read is skipped once the bound was reached; any other is read, and the oldest traces
        then make room for its spans.

        A source with ``concurrency`` has that many reads in flight (:class:`_Ahead`); the
        objects are still used one at a time in ``infos``' order, so what is kept, skipped and
        counted is what reading one at a time gives."""
        assert self._source is not None
        bounded = self._bounded
        ahead = _Ahead(self._source, infos, self._decide, _concurrency(self._source))
        try:
            for pos, info in enumerate(infos):
                decision = self._decide(info)
                if decision == _LOADED:
                    continue
                if decision == _OLD:
                    if info.key not in self._skipped:  # (listed again by each refresh: counted once)
                        self._skipped.add(info.key)
                        self.read_stats["skipped_objects"] = len(self._skipped)
                    continue
                if decision == _REWRITTEN:  # rebuild from scratch to drop its old records
                    ahead.close()
                    self._rebuild()
                    return True
                try:
                    data = ahead.take(pos, info)
                except FileNotFoundError:  # deleted since it was listed: not in the archive now
                    continue
                except Exception:  # a missing or unreadable object must not hide the others
                    self.read_stats["unreadable_objects"] += 1
                    continue
                if bounded and info.dataset == "traces":
                    order = (info.opened_ns or 0, info.key)
                    self._floor = order if self._floor is None else min(self._floor, order)
                bad = self._add_object(data)
                self.read_stats["objects"] += 1
                self.read_stats["bytes"] += len(data)
                self.read_stats["bad_lines"] += bad
                self._loaded[info.key] = info.version
                self._trees.clear()
        except BaseException:
            ahead.close(wait=False)  # (an interrupt: never wait for reads in flight)
            raise
        ahead.close()
        return False

    @property
    def _bounded(self) -> bool:
        return self._max_spans is not None or self._max_bytes is not None

    def _add_object(self, data: bytes) -> int:
        """Decode an object into the index, within the bounds; returns its bad lines.

        Records are added when the object is decoded, or sooner once they weigh half of
        ``max_bytes``: an object's records are never all held beside the index before the
        bound applies (one gzip-compressed object may decode to gigabytes), so the held
        weight stays below about 1.5 x ``max_bytes``. (Half, not what is left of the budget:
        the bound is applied, at the cost of a pass over the traces, once per half budget
        read, not once per record.)"""
        max_bytes = self._max_bytes
        if max_bytes is None:  # (no bound: nothing to weigh)
            records, bad = decode_object(data)
            self.read_stats["unusable_records"] += self._index.add(records)
            return bad
        pending: list[Record] = []
        weights: list[int] = []
        held = 0  # weight of pending
        # Traces evicted while this object is read: their spans still to come in it are left
        # out too (a trace is held whole or not at all; re-added, it would lack its first spans).
        gone: set[str] = set()

        def flush() -> None:
            nonlocal held
            self.read_stats["unusable_records"] += self._index.add(pending, weights)
            pending.clear()
            weights.clear()
            held = 0
            self._hold(gone)

        def emit(rec: Record, weight: int) -> None:
            nonlocal held
            if rec.get("type") == "span":
                tid = rec.get("trace_id")
                if weight > max_bytes or (gone and isinstance(tid, str) and tid.lower() in gone):
                    self.read_stats["dropped_spans"] += 1  # (too heavy alone, or its trace went)
                    return
            if held + weight > max_bytes // 2:
                flush()
            pending.append(rec)
            weights.append(weight)
            held += weight

        bad = decode_into(data, emit, weigh=True)
        flush()
        return bad

    def _hold(self, gone: set[str] | None = None) -> None:
        """Apply ``max_spans`` and ``max_bytes``: once one is reached, the bound is full (older
        ``traces`` objects are skipped) and the oldest traces make room (their ids added to
        ``gone``)."""
        index = self._index
        if (self._max_spans is not None and len(index.spans) >= self._max_spans) or (
            self._max_bytes is not None and index.weight >= self._max_bytes
        ):
            self._full = True
            self.read_stats["dropped_spans"] += index.evict(self._max_spans, self._max_bytes, gone)

    def _rebuild(self) -> None:
        since = self._listed_since
        self._index = _Index()
        self._loaded.clear()
        self._trees.clear()
        self._full, self._floor = False, None
        self._skipped.clear()
        for stat in self.read_stats:  # (what is read again is counted again, the old damage not)
            self.read_stats[stat] = 0
        self._listed_since = -1
        self._ensure(None if since == -1 else since)

    def _ensure(self, since: int | None, _again: bool = True) -> None:
        """Read every object that may hold records starting at or after ``since``."""
        if self._source is None:
            return
        listed = self._listed_since
        if listed is None or (listed != -1 and since is not None and since >= listed):
            return
        infos: list[ObjectInfo] = []
        for dataset in getattr(self._source, "datasets", DATASETS):
            for info in self._source.objects(dataset, since):
                if (
                    since is not None
                    and info.closed_ns is not None
                    and info.closed_ns < since - _CLOCK_SKEW_NS
                ):
                    continue
                infos.append(info)
        # With a span bound, newest first: what does not fit is the oldest (see _read).
        infos.sort(key=lambda i: (i.opened_ns or 0, i.key), reverse=self._bounded)
        if not self._read(infos):
            self._listed_since = since
        elif _again:  # a rewritten object made it start over, with the previous window: now this one
            self._ensure(since, _again=False)

    def refresh(self) -> None:
        """Read the objects written since the last read (the next query also lists again)."""
        with self._lock:
            if self._source is None:
                return
            since = self._listed_since
            if since == -1:
                return
            self._listed_since = -1
            self._ensure(since)

    def _window(self, since: Any, until: Any) -> tuple[int | None, int | None]:
        s = None if since is None else parse_time(since)
        u = None if until is None else parse_time(until)
        if s is not None and u is not None and u < s:
            raise ValueError("until is before since")
        return s, u

    def _tree(self, trace_id: str) -> _Tree | None:
        spans = self._index.by_trace.get(trace_id)
        if not spans:
            return None
        cached = self._trees.get(trace_id)
        if cached is not None and cached[0] == len(spans):
            return cached[1]
        tree = _Tree(spans)
        if len(self._trees) > 4096:  # bounded: a long-running API server sees many traces
            self._trees.clear()
        self._trees[trace_id] = (len(spans), tree)
        return tree

    # -- answers --------------------------------------------------------------------------------
    def _summary(self, trace_id: str) -> dict[str, Any]:
        tree = self._tree(trace_id)
        assert tree is not None
        root = tree.main_root()
        errors = sum(1 for s in tree.spans if s.get("status") == "error")
        statuses = {s.get("status") for s in tree.spans}
        return {
            "trace_id": trace_id,
            "name": _text(root.get("name", "")),
            "service": _text(root.get("service", "")),
            "start_time_unix_nano": tree.start,
            "duration_ms": (tree.end - tree.start) / 1e6,
            "span_count": len(tree.by_id),
            "error_count": errors,
            "services": sorted({_text(s.get("service", "")) for s in tree.spans}),
            "status": "error" if errors else ("ok" if "ok" in statuses else "unset"),
            "complete": any(s.get("parent_span_id") is None for s in tree.spans),
        }

    def search(
        self,
        *,
        service: str | None = None,
        name: str | None = None,
        min_duration_ms: float | None = None,
        max_duration_ms: float | None = None,
        status: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        log: str | None = None,
        since: Any = None,
        until: Any = None,
        sort: str = "recent",
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Traces with a span matching every given filter (as Jaeger searches).

        ``name`` is an exact span name or a glob (``SELECT *``); ``attributes`` maps attribute
        names to the text of their value; ``min/max_duration_ms`` bound that span's duration;
        ``since``/``until`` bound its start. ``log``: the trace also has a log line (shipped by
        ``export_logs``) whose message contains this text, in any case. ``sort`` is ``recent``
        (newest trace first) or ``duration`` (longest first). Returns trace summaries
        (docs/analysis.md).
        """
        service = _check_text("service", service)
        name = _check_text("name", name)
        log = _check_text("log", log)
        lo = _check_ms("min_duration_ms", min_duration_ms)
        hi = _check_ms("max_duration_ms", max_duration_ms)
        if status is not None and status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        if sort not in _SORTS:
            raise ValueError(f"sort must be one of {', '.join(_SORTS)}, got {sort!r}")
        limit = _check_limit(limit)
        wanted: list[tuple[str, str]] = []
        if attributes is not None:
            if not isinstance(attributes, Mapping):
                raise ValueError("attributes must be a mapping of attribute name to value")
            wanted = [(_text(k), _text(v)) for k, v in attributes.items()]
        glob = name is not None and any(c in name for c in "*?[")
        s_ns, u_ns = self._window(since, until)
        with self._lock:
            self._ensure(s_ns)
            logged: set[str] | None = None
            if log is not None:
                needle = log.casefold()
                logged = {
                    tid
                    for tid, lines in self._index.logs.items()
                    if any(needle in _text(line.get("body", "")).casefold() for line in lines)
                }
            matched: set[str] = set()
            for span in self._index.window(s_ns, u_ns):
                tid = span["trace_id"]
                if tid in matched or (logged is not None and tid not in logged):
                    continue
                if service is not None and span.get("service") != service:
                    continue
                if name is not None:
                    span_name = _text(span.get("name", ""))
                    if not (fnmatch.fnmatchcase(span_name, name) if glob else span_name == name):
                        continue
                if status is not None and span.get("status") != status:
                    continue
                if lo is not None or hi is not None:
                    d = _num(span.get("duration_ms"))
                    if (lo is not None and d < lo) or (hi is not None and d > hi):
                        continue
                if wanted:
                    attrs = span.get("attributes")
                    if not isinstance(attrs, Mapping) or any(
                        k not in attrs or _text(attrs[k]) != v for k, v in wanted
                    ):
                        continue
                matched.add(tid)
            return [self._summary(t) for t in self._top(matched, sort, limit)]

    def _top(self, trace_ids: Iterable[str], sort: str, limit: int) -> list[str]:
        """The first ``limit`` traces by start (newest first) or by duration (longest first)."""
        extent = self._index.extent
        if sort == "duration":
            return heapq.nsmallest(limit, trace_ids, key=lambda t: (extent[t][0] - extent[t][1], t))
        return heapq.nsmallest(limit, trace_ids, key=lambda t: (-extent[t][0], t))

    def resolve(self, prefix: str, *, since: Any = None, limit: int = 10) -> list[str]:
        """The archived trace ids that start with ``prefix`` (at least 8 hex characters, as
        pages and logs often show a shortened id), sorted; at most ``limit``."""
        if not isinstance(prefix, str) or not re.fullmatch(r"[0-9a-fA-F]{8,32}", prefix.strip()):
            raise ValueError(f"a trace id prefix must be 8 to 32 hex characters, got {prefix!r}")
        want = prefix.strip().lower()
        limit = _check_limit(limit)
        s_ns, _ = self._window(since, None)
        with self._lock:
            self._ensure(s_ns)
            if len(want) == 32:
                return [want] if want in self._index.by_trace else []
            found = sorted(t for t in self._index.by_trace if t.startswith(want))
        return found[:limit]

    def trace(self, trace_id: str, *, since: Any = None, limit: int | None = None) -> dict[str, Any] | None:
        """One trace as a tree: its spans depth-first with depth, offset, self time and
        critical-path flag, and the application's log records logged in it, by time
        (docs/analysis.md); None if no span of it is archived.

        ``since``: read only the objects that can hold spans started since then (a trace
        found from a recent log line need not read a whole bucket); default: everything.
        ``limit``: build only the first this many spans (depth-first, so each one's archived
        parent is among them) and log records; ``span_count`` and ``log_count`` still count
        all of them. Default: every one."""
        tid = _trace_id(trace_id)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
        s_ns, _ = self._window(since, None)
        with self._lock:
            self._ensure(s_ns)
            tree = self._tree(tid)
            if tree is None:
                return None
            summary = self._summary(tid)
            critical = {s["span_id"] for s in tree.critical_path()}
            spans = []
            # (only what is shown is built: a view and self time per span of a huge trace
            # cost more than the tree)
            for s, depth in tree.order if limit is None else tree.order[:limit]:
                view = dict(s)
                view["depth"] = depth
                view["offset_ms"] = (s["start_time_unix_nano"] - tree.start) / 1e6
                view["self_time_ms"] = tree.self_time_ns(s) / 1e6
                view["child_count"] = len(tree.children.get(s["span_id"], ()))
                view["on_critical_path"] = s["span_id"] in critical
                spans.append(view)
            found = self._index.logs.get(tid, [])
            logs = [
                {
                    "time_unix_nano": rec["time_unix_nano"],
                    "offset_ms": (rec["time_unix_nano"] - tree.start) / 1e6,
                    "span_id": rec.get("span_id"),
                    "severity_text": _text(rec.get("severity_text", "")),
                    "severity_number": _int(rec.get("severity_number")),
                    "logger": _text(rec.get("logger", "")),
                    "body": _text(rec.get("body", "")),
                    "service": _text(rec.get("service", "")),
                    "attributes": rec.get("attributes") if isinstance(rec.get("attributes"), Mapping) else {},
                }
                for rec in (
                    sorted(found, key=_log_order)
                    if limit is None
                    else heapq.nsmallest(limit, found, key=_log_order)
                )
            ]
        return {
            "trace_id": tid,
            "start_time_unix_nano": tree.start,
            "end_time_unix_nano": tree.end,
            "duration_ms": summary["duration_ms"],
            "span_count": summary["span_count"],
            "error_count": summary["error_count"],
            "services": summary["services"],
            "missing_parents": tree.missing_parents,
            "log_count": len(found),
            "spans": spans,
            "logs": logs,
        }

    def analyze(self, trace_id: str, *, n_plus_one_min: int = 5, since: Any = None) -> dict[str, Any] | None:
        """Why a trace was slow or failed: critical path, bottleneck, time by operation,
        N+1 queries (at least ``n_plus_one_min`` equal statements under one parent), errors
        and database time (docs/analysis.md); None if no span of it is archived."""
        tid = _trace_id(trace_id)
        if isinstance(n_plus_one_min, bool) or not isinstance(n_plus_one_min, int) or n_plus_one_min < 2:
            raise ValueError(f"n_plus_one_min must be an int >= 2, got {n_plus_one_min!r}")
        s_ns, _ = self._window(since, None)
        with self._lock:
            self._ensure(s_ns)
            tree = self._tree(tid)
            if tree is None:
                return None
            duration_ns = max(1, tree.end - tree.start)
            self_ns = {s["span_id"]: tree.self_time_ns(s) for s in tree.by_id.values()}
            path = tree.critical_path()
            order = {s["span_id"]: i for i, (s, _) in enumerate(tree.order)}
            path.sort(key=lambda s: order[s["span_id"]])
            critical = [
                {
                    "span_id": s["span_id"],
                    "name": _text(s.get("name", "")),
                    "service": _text(s.get("service", "")),
                    "kind": _text(s.get("kind", "")),
                    "duration_ms": _num(s.get("duration_ms")),
                    "self_time_ms": self_ns[s["span_id"]] / 1e6,
                }
                for s in path
            ]
            top = max(critical, key=lambda c: c["self_time_ms"], default=None)
            bottleneck = (
                None
                if top is None
                else {
                    "span_id": top["span_id"],
                    "name": top["name"],
                    "service": top["service"],
                    "self_time_ms": top["self_time_ms"],
                    "share": min(1.0, top["self_time_ms"] * 1e6 / duration_ns),
                }
            )
            ops: dict[tuple[str, str], dict[str, Any]] = {}
            db_queries = 0
            db_ms = 0.0
            repeats: dict[tuple[str, str], list[Record]] = {}
            errors = []
            for s in tree.by_id.values():
                key = (_text(s.get("service", "")), _text(s.get("name", "")))
                op = ops.setdefault(
                    key, {"service": key[0], "name": key[1], "count": 0, "total_ms": 0.0, "self_time_ms": 0.0}
                )
                op["count"] += 1
                op["total_ms"] += _num(s.get("duration_ms"))
                op["self_time_ms"] += self_ns[s["span_id"]] / 1e6
                statement = _statement(s)
                if statement is not None:
                    db_queries += 1
                    db_ms += _num(s.get("duration_ms"))
                    parent = s.get("parent_span_id")
                    if isinstance(parent, str):
                        repeats.setdefault((parent, statement), []).append(s)
                if s.get("status") == "error":
                    etype, emsg = _exception(s)
                    errors.append(
                        {
                            "span_id": s["span_id"],
                            "name": _text(s.get("name", "")),
                            "service": _text(s.get("service", "")),
                            "status_message": s.get("status_message"),
                            "exception_type": etype or None,
                            "exception_message": emsg or None,
                            # (as errors() describes it, before numbers and ids are masked)
                            "message": _error_message(s)[1] or None,
                        }
                    )
            n_plus_one: list[dict[str, Any]] = []
            for (parent, statement), group in repeats.items():
                if len(group) >= n_plus_one_min:
                    p = tree.by_id.get(parent)
                    n_plus_one.append(
                        {
                            "parent_span_id": parent,
                            "parent_name": _text(p.get("name", "")) if p else None,
                            "statement": statement,
                            "count": len(group),
                            "total_ms": sum(_num(s.get("duration_ms")) for s in group),
                            "span_ids": [s["span_id"] for s in group],
                        }
                    )
        n_plus_one.sort(key=lambda g: (-g["count"], -g["total_ms"]))
        errors.sort(key=lambda e: order.get(e["span_id"], 0))
        return {
            "trace_id": tid,
            "duration_ms": (tree.end - tree.start) / 1e6,
            "critical_path": critical,
            "bottleneck": bottleneck,
            "by_operation": sorted(ops.values(), key=lambda o: (-o["self_time_ms"], o["name"])),
            "n_plus_one": n_plus_one,
            "errors": errors,
            "db": {"queries": db_queries, "total_ms": db_ms},
        }

    def performance(
        self, *, service: str | None = None, since: Any = None, until: Any = None
    ) -> list[dict[str, Any]]:
        """Latency and errors per operation: count, error rate, mean, p50/p95/p99, max.

        From the rollups when the archive has any in the window (they count every span,
        sampled or not; quantiles within 1% from their merged sketches), otherwise from the
        archived spans (exact, but only over what was kept). Ordered by total time.
        """
        service = _check_text("service", service)
        rows, source = self._stats(service, None, since, until, _operation_key)
        out = [_stats_row(key, st, source) for key, st in rows.items()]
        out.sort(key=lambda r: (-r["count"] * r["mean_ms"], r["service"], r["operation"], r["kind"]))
        return out

    def series(
        self,
        *,
        service: str | None = None,
        operation: str | None = None,
        since: Any = None,
        until: Any = None,
        step_s: int = 60,
    ) -> dict[str, Any]:
        """Latency over time: per ``step_s`` seconds, the count, errors, mean, p50/p95/p99
        and max of one operation (or of all), oldest first. Same sources as
        :meth:`performance`.

        ``point_s`` is what each point covers: ``step_s`` from spans; from rollups, which are
        per minute, ``step_s`` rounded up to whole minutes (``step_s=10`` gives a point per
        minute, ``90`` per 2 minutes). ``operations`` lists the ``service`` / ``operation`` /
        ``kind`` the points add up (several without ``operation``, or when services or kinds
        share its name)."""
        service = _check_text("service", service)
        operation = _check_text("operation", operation)
        if isinstance(step_s, bool) or not isinstance(step_s, int) or not 1 <= step_s <= 86400 * 31:
            raise ValueError(f"step_s must be an int of seconds from 1 to 31 days, got {step_s!r}")
        per_minute = -(-step_s // 60) * 60  # (rollups are per minute: whole minutes)

        def bucket(r: Record) -> tuple[int]:
            if r.get("type") == "rollup":
                width = per_minute * 10**9
                t = r["minute_start_unix_nano"]
            else:
                width = step_s * 10**9
                t = r["start_time_unix_nano"]
            return (t // width * width,)

        seen: set[tuple[str, str, str]] = set()
        rows, source = self._stats(service, operation, since, until, bucket, seen=seen)
        points = [{"start_unix_nano": key[0], **_stats_fields(st)} for key, st in sorted(rows.items())]
        return {
            "step_s": step_s,
            "point_s": per_minute if source == "rollups" else step_s,
            "source": source,
            "points": points,
            "operations": [{"service": s, "operation": o, "kind": k} for s, o, k in sorted(seen)],
        }

    def _stats(
        self,
        service: str | None,
        operation: str | None,
        since: Any,
        until: Any,
        key: Any,
        whole_minutes: bool = False,
        seen: set[tuple[str, str, str]] | None = None,
    ) -> tuple[dict[tuple[Any, ...], _Stats], str]:
        """Statistics grouped by ``key(record)``, from the rollups of the window when there
        are any (and none is malformed), else from its archived spans; and which it was.
        A rollup counts when its minute overlaps the window, or with ``whole_minutes`` when its
        minute starts in ``[since, until)`` (two windows side by side then share none).
        ``seen`` gets the ``_operation_key`` of each operation counted."""
        s_ns, u_ns = self._window(since, until)
        with self._lock:
            self._ensure(s_ns)
            rollups = self._rollups_in(s_ns, u_ns, service, operation, whole_minutes)
            if rollups:
                groups: dict[tuple[Any, ...], list[Record]] = {}
                for r in rollups:
                    groups.setdefault(key(r), []).append(r)
                try:
                    stats = {k: _rollup_stats(rs) for k, rs in groups.items() if _rollup_count(rs) > 0}
                except (ValueError, TypeError, KeyError, ArithmeticError):
                    pass  # a malformed rollup (an index whose value overflows too): the spans answer
                else:
                    if seen is not None:
                        seen.update(_operation_key(r) for r in rollups if _int(r.get("count")) > 0)
                    return stats, "rollups"
            groups = {}
            for sp in self._index.window(s_ns, u_ns):
                if (service is None or sp["service"] == service) and (
                    operation is None or sp["name"] == operation
                ):
                    groups.setdefault(key(sp), []).append(sp)
                    if seen is not None:
                        seen.add(_operation_key(sp))
        return {k: _span_stats(ss) for k, ss in groups.items()}, "spans"

    def _rollups_in(
        self,
        s_ns: int | None,
        u_ns: int | None,
        service: str | None = None,
        operation: str | None = None,
        whole_minutes: bool = False,
    ) -> list[Record]:
        """The rollups of a window (see ``_stats``); the caller holds the lock."""
        slack = 0 if whole_minutes else 60 * 10**9  # (the length of a rollup's minute)
        return [
            r
            for r in self._index.rollups
            if (service is None or r["service"] == service)
            and (operation is None or r["operation"] == operation)
            and (
                s_ns is None
                # (overlapping: a minute that ends when the window starts is not in it)
                or (
                    r["minute_start_unix_nano"] >= s_ns
                    if whole_minutes
                    else r["minute_start_unix_nano"] + slack > s_ns
                )
            )
            and (
                u_ns is None
                or r["minute_start_unix_nano"] < u_ns
                or (not whole_minutes and r["minute_start_unix_nano"] == u_ns)
            )
        ]

    def compare(
        self, *, since: Any = None, until: Any = None, service: str | None = None
    ) -> list[dict[str, Any]]:
        """Each operation in the window ``[since, until]`` (``until`` default: now) beside the
        window of the same length just before it: what a deploy or an incident changed.

        Rows have the window's ``count``, ``error_rate`` and ``p50_ms`` / ``p95_ms`` /
        ``p99_ms``, the same with a ``baseline_`` prefix (None where the operation did not run),
        ``p95_change`` (``+0.5`` is 50% slower; None without both) and ``source`` (as in
        :meth:`performance`, of the window). The biggest p95 rise comes first, then new
        operations, then the rest by count. From rollups, a window holds the minutes that start
        in it: align it to whole minutes (``--last 1h`` is close enough).
        """
        service = _check_text("service", service)
        if since is None:
            raise ValueError("since is required: the start of the window to compare")
        s_ns, u_ns = self._window(since, until)
        assert s_ns is not None
        end = u_ns if u_ns is not None else time.time_ns()
        if end <= s_ns:
            raise ValueError("the window is empty: until must be after since")
        # Spans count in [s_ns, end], both ends in: end - s_ns + 1 ns. The baseline is as long,
        # [start, s_ns - 1], ending just before the window. (Rollups count by minute start in
        # [since, until): end - s_ns in both, minute-aligned windows give whole minutes alike.)
        start = s_ns - (end - s_ns + 1)
        # (rollups are per minute: a window's are those whose minute starts in it)
        now, source = self._stats(service, None, s_ns, end, _operation_key, whole_minutes=True)
        before, _ = self._stats(service, None, max(start, 0), s_ns - 1, _operation_key, whole_minutes=True)
        rows = []
        for key in now.keys() | before.keys():
            row: dict[str, Any] = {"service": key[0], "operation": key[1], "kind": key[2]}
            for prefix, stats in (("", now.get(key)), ("baseline_", before.get(key))):
                fields = _stats_fields(stats) if stats is not None else {}
                row[prefix + "count"] = fields.get("count", 0)
                for name in ("error_rate", "p50_ms", "p95_ms", "p99_ms"):
                    row[prefix + name] = fields.get(name)
            p95, base = row["p95_ms"], row["baseline_p95_ms"]
            row["p95_change"] = (p95 - base) / base if p95 is not None and base else None
            row["source"] = source
            rows.append(row)

        def rank(r: dict[str, Any]) -> tuple[int, float, int]:
            if r["p95_change"] is not None:
                return (0, -r["p95_change"], -r["count"])
            return (1 if r["count"] else 2, 0.0, -(r["count"] or r["baseline_count"]))

        rows.sort(key=lambda r: (*rank(r), r["service"], r["operation"], r["kind"]))
        return rows

    def errors(
        self, *, service: str | None = None, since: Any = None, until: Any = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Error spans grouped by service, span name, exception type and message shape (ids,
        numbers and quoted text normalised), most frequent first, with sample trace ids."""
        service = _check_text("service", service)
        limit = _check_limit(limit)
        s_ns, u_ns = self._window(since, until)
        groups: dict[str, dict[str, Any]] = {}
        with self._lock:
            self._ensure(s_ns)
            for s in self._index.window(s_ns, u_ns):
                if s.get("status") != "error" or (service is not None and s.get("service") != service):
                    continue
                etype, text = _error_message(s)
                message = _normalise_message(text)
                svc, name = _text(s.get("service", "")), _text(s.get("name", ""))
                fp = hashlib.blake2b(
                    "\x1f".join((svc, name, etype, message)).encode("utf-8", "replace"), digest_size=8
                ).hexdigest()
                g = groups.get(fp)
                when = s["start_time_unix_nano"]
                if g is None:
                    g = groups[fp] = {
                        "fingerprint": fp,
                        "service": svc,
                        "name": name,
                        "exception_type": etype or None,
                        "message": message,
                        "count": 0,
                        "first_seen_unix_nano": when,
                        "last_seen_unix_nano": when,
                        "trace_ids": [],
                    }
                g["count"] += 1
                g["first_seen_unix_nano"] = min(g["first_seen_unix_nano"], when)
                g["last_seen_unix_nano"] = max(g["last_seen_unix_nano"], when)
                _keep_recent(g["trace_ids"], when, s["trace_id"])
        out = sorted(
            groups.values(), key=lambda g: (-g["count"], -g["last_seen_unix_nano"], g["fingerprint"])
        )[:limit]
        for g in out:  # the most recent failures' traces, newest first (what one looks at)
            g["trace_ids"] = [tid for _, tid in sorted(g["trace_ids"], key=lambda e: (-e[0], e[1]))]
        return out

    def dependencies(
        self, *, service: str | None = None, since: Any = None, until: Any = None
    ) -> list[dict[str, Any]]:
        """Who calls whom: one row per edge of the service map, busiest first.

        A CLIENT (or PRODUCER) span whose SERVER (or CONSUMER) child is archived is a call
        between two traced services (``traced`` True); one without is a call to something
        untraced, named from its attributes (a database, an AWS service, a queue, a host). A
        SERVER span with no archived parent is a call into the system (``caller`` None).
        Each row has the calls, error rate and latency percentiles as the caller saw them
        (the client span's duration; the server span's for calls into the system), and up to
        three sample trace ids. ``service`` keeps the edges it is on, either end. These count
        what was kept in the archive (a sampled-out or dropped span is not there).

        ``estimated_calls`` and ``estimated_errors`` are every call, kept or not, when the
        window's rollups count the operations of the edge's spans (else None): each kept span
        stands for its operation's calls in the rollups divided by the kept ones, errors and
        the rest apart (tail keeping keeps more of the errors than of the rest). An operation's
        calls are thus shared among its edges as the kept spans are; their total is exact.
        """
        service = _check_text("service", service)
        s_ns, u_ns = self._window(since, until)
        Edge = tuple[str | None, str, str, bool]  # caller, callee, protocol, callee traced
        edges: dict[Edge, list[Record]] = {}
        key: Edge
        with self._lock:
            self._ensure(s_ns)
            spans = self._index.window(s_ns, u_ns)
            weight = _call_weights(self._rollups_in(s_ns, u_ns), spans)
            by_key = self._index.spans
            answered: set[tuple[str, str]] = set()  # calling spans whose callee is archived
            for s in spans:
                if s.get("kind") not in _CALLED:
                    continue
                parent_id = s.get("parent_span_id")
                parent = by_key.get((s["trace_id"], parent_id)) if parent_id else None
                callee = _text(s.get("service", ""))
                if parent is not None and parent.get("kind") in _CALLING:
                    # the usual call: timed by the caller's span, counted once per call
                    ident = (parent["trace_id"], parent["span_id"])
                    if ident not in answered:
                        answered.add(ident)
                        key = (_text(parent.get("service", "")), callee, _protocol(_attrs_of(parent)), True)
                        edges.setdefault(key, []).append(parent)
                elif parent is None or _text(parent.get("service", "")) != callee:
                    # the entry of a trace (or a caller that was not kept: None), or a caller
                    # that propagated its context without a client span: timed by the server
                    caller = None if parent is None else _text(parent.get("service", ""))
                    key = (caller, callee, _protocol(_attrs_of(s)), True)
                    edges.setdefault(key, []).append(s)
            for s in spans:
                if s.get("kind") in _CALLING and (s["trace_id"], s["span_id"]) not in answered:
                    protocol = _protocol(_attrs_of(s))
                    key = (_text(s.get("service", "")), _peer(s, protocol), protocol, False)
                    edges.setdefault(key, []).append(s)
        rows = []
        for (caller, callee, protocol, traced), calls in edges.items():
            if service is not None and service not in (caller, callee):
                continue
            samples: list[str] = []
            for c in calls:
                if c["trace_id"] not in samples:
                    samples.append(c["trace_id"])
                    if len(samples) == 3:
                        break
            estimated: list[float | None] = [weight(c) for c in calls]
            calls_est = errors_est = None
            if all(w is not None for w in estimated):
                calls_est = round(sum(w for w in estimated if w is not None))
                failed = [w for c, w in zip(calls, estimated, strict=True) if c.get("status") == "error"]
                errors_est = round(sum(w for w in failed if w is not None))
            rows.append(
                {
                    "caller": caller,
                    "callee": callee,
                    "protocol": protocol,
                    "traced": traced,
                    **_stats_fields(_span_stats(calls)),
                    "estimated_calls": calls_est,
                    "estimated_errors": errors_est,
                    "trace_ids": samples,
                }
            )
        rows.sort(
            key=lambda r: (
                -(r["estimated_calls"] or r["count"]),
                -r["count"],
                r["caller"] or "",
                r["callee"],
                r["protocol"],
                r["traced"],
            )
        )
        return rows

    def audit(
        self,
        *,
        category: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        trace_id: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Audit records, newest first: who did what to which target, with which outcome.

        ``category`` is ``request``, ``security`` (401/403/429, auth failures) or
        ``data_access``; ``action`` is exact or a glob (``POST *``); every filter must match.
        """
        category = _check_text("category", category)
        actor = _check_text("actor", actor)
        action = _check_text("action", action)
        outcome = _check_text("outcome", outcome)
        tid = None if trace_id is None else _trace_id(trace_id)
        limit = _check_limit(limit)
        glob = action is not None and any(c in action for c in "*?[")
        s_ns, u_ns = self._window(since, until)
        with self._lock:
            self._ensure(s_ns)
            found = [
                a
                for a in self._index.audits
                if (s_ns is None or a["time_unix_nano"] >= s_ns)
                and (u_ns is None or a["time_unix_nano"] <= u_ns)
                and (category is None or a.get("category") == category)
                and (actor is None or a.get("actor") == actor)
                and (outcome is None or _text(a.get("outcome", "")) == outcome)
                and (tid is None or a.get("trace_id") == tid)
                and (
                    action is None
                    or (
                        fnmatch.fnmatchcase(_text(a.get("action", "")), action)
                        if glob
                        else a.get("action") == action
                    )
                )
            ]
        return heapq.nlargest(limit, found, key=_audit_order)

    def logs(
        self,
        *,
        service: str | None = None,
        level: str | int | None = None,
        text: str | None = None,
        trace_id: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The application's log lines (shipped by ``export_logs``), newest first: ``service``;
        ``level`` the least severity (a name, ``WARNING``, or an OpenTelemetry severity number);
        ``text`` in the message, in any case; ``trace_id`` the trace they were logged in. Each
        is the archived ``log`` record (docs/schema.md)."""
        service = _check_text("service", service)
        text = _check_text("text", text)
        least = _least_severity(level)
        tid = None if trace_id is None else _trace_id(trace_id)
        limit = _check_limit(limit)
        needle = None if text is None else text.casefold()
        s_ns, u_ns = self._window(since, until)
        with self._lock:
            self._ensure(s_ns)
            lines = self._index.log_lines if tid is None else self._index.logs.get(tid, [])
            found = [
                r
                for r in lines
                if (s_ns is None or r["time_unix_nano"] >= s_ns)
                and (u_ns is None or r["time_unix_nano"] <= u_ns)
                and (service is None or r.get("service") == service)
                and (least is None or _int(r.get("severity_number")) >= least)
                and (needle is None or needle in _text(r.get("body", "")).casefold())
            ]
        return heapq.nlargest(limit, found, key=_log_order)

    def overview(self, *, since: Any = None, until: Any = None) -> dict[str, Any]:
        """Totals for a window: spans, traces, errors, services (with how many processes, by
        ``service.instance.id``, sent spans), time range, the slowest and the latest failed
        traces, audit outcomes and security events; ``partial``: whether ``max_spans`` or
        ``max_bytes`` left spans out (objects unread, or spans read but not held)."""
        s_ns, u_ns = self._window(since, until)
        with self._lock:
            self._ensure(s_ns)
            spans = self._index.window(s_ns, u_ns)
            services: dict[str, list[int]] = {}
            instances: dict[str, set[Any]] = {}  # service -> its processes' service.instance.id
            traces: set[str] = set()
            failed_ids: set[str] = set()
            errors = 0
            for s in spans:
                name = _text(s.get("service", ""))
                row = services.setdefault(name, [0, 0])
                row[0] += 1
                res = s.get("resource")
                instance = res.get("service.instance.id") if isinstance(res, Mapping) else None
                if isinstance(instance, str):
                    instances.setdefault(name, set()).add(instance)
                traces.add(s["trace_id"])
                if s.get("status") == "error":
                    row[1] += 1
                    errors += 1
                    failed_ids.add(s["trace_id"])
            audits = [
                a
                for a in self._index.audits
                if isinstance(a.get("time_unix_nano"), int)
                and (s_ns is None or a["time_unix_nano"] >= s_ns)
                and (u_ns is None or a["time_unix_nano"] <= u_ns)
            ]
            outcomes: dict[str, int] = {}
            for a in audits:
                outcome = _text(a.get("outcome", ""))
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            slowest = [self._summary(t) for t in self._top(traces, "duration", 5)]
            failed = [self._summary(t) for t in self._top(failed_ids, "recent", 5)]
            partial = bool(self.read_stats["skipped_objects"] or self.read_stats["dropped_spans"])
        return {
            "spans": len(spans),
            "traces": len(traces),
            "errors": errors,
            "error_rate": errors / len(spans) if spans else 0.0,
            "start_time_unix_nano": spans[0]["start_time_unix_nano"] if spans else None,
            "end_time_unix_nano": max((s["end_time_unix_nano"] for s in spans), default=None),
            "services": [
                {"service": k, "spans": v[0], "errors": v[1], "instances": len(instances.get(k, ()))}
                for k, v in sorted(services.items(), key=lambda kv: (-kv[1][0], kv[0]))
            ],
            "slowest": slowest,
            "recent_errors": failed,
            "audit": {
                "records": len(audits),
                "security_events": sum(1 for a in audits if a.get("category") == "security"),
                "by_outcome": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
            },
            "partial": partial,
        }
