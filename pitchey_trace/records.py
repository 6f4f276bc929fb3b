"""Exported records (schema version 1) and their stable dict form.

Every exporter receives plain dicts that are JSON-ready (str, int, float, bool, None, lists,
dicts) and already sanitized. Three record types share the ``schema``/``type`` header:

* ``span``   - one finished span (see :func:`span_record`);
* ``audit``  - one HTTP request, security event or sensitive-table access (:func:`audit_record`);
* ``rollup`` - per-minute RED metrics per service and operation (built by
  :class:`pitchey_trace.processors.Rollups`).

The JSON Schema lives in ``pitchey_trace/schema/record-v1.json`` (:func:`json_schema`) and is
documented in ``docs/schema.md``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Mapping
from importlib import resources
from random import getrandbits
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex

from pitchey_trace import _resource, _safety
from pitchey_trace._span import SpanKind
from pitchey_trace._validate import finite
from pitchey_trace.propagation import format_tracestate

if TYPE_CHECKING:
    from pitchey_trace._span import Event, Link, Span

__all__ = [
    "AUDIT_RECORD_KEYS",
    "DATASET_OF_TYPE",
    "DROPPED_KEYS",
    "NO_ITEMS",
    "RECORD_ID",
    "SCHEMA_VERSION",
    "SPAN_RECORD_KEYS",
    "CategoryThresholds",
    "Record",
    "app_log_record",
    "audit_record",
    "category_of",
    "dataset_of",
    "json_schema",
    "make_resource",
    "new_record_id",
    "span_events",
    "span_links",
    "span_record",
    "span_structure",
    "span_template",
]

SCHEMA_VERSION = 1
Record = dict[str, Any]

#: The dataset each record type goes to unless a Router says otherwise.
DATASET_OF_TYPE = {"span": "traces", "audit": "audit", "rollup": "performance", "log": "logs"}

_KIND = ("internal", "server", "client", "producer", "consumer")
_STATUS = ("unset", "ok", "error")


#: The optional key of an audit, log or rollup record's unique id (see :func:`new_record_id`).
RECORD_ID = "record_id"


def new_record_id() -> str:
    """A record's ``record_id``: 64 random bits as 16 lowercase hex digits (as a span id).

    Spans have their span id; audit, log and rollup records have no natural key, so a copy of
    one (the same record in two datasets, a batch written twice by a retried upload or a
    replayed spool) cannot be told from a second event. Given at creation, the id travels with
    every copy and the analysis engine keeps one (keyed with the record's time, so two random
    ids that clash do not merge records of different times). ``getrandbits`` is the cheapest
    uniform source and the random module reseeds it in a forked child, as for span ids
    (about 0.2 us a call)."""
    return getrandbits(64).to_bytes(8, "big").hex()


def dataset_of(record: Mapping[str, Any]) -> str:
    """The dataset a record belongs to: its ``dataset`` key if set, else by type."""
    ds = record.get("dataset")
    if isinstance(ds, str):
        return ds
    return DATASET_OF_TYPE.get(record.get("type", ""), "traces")


class CategoryThresholds:
    """Duration thresholds (ms) that split spans into fast / normal / slow / very_slow.

    ``fast`` below ``fast_ms``; ``normal`` below ``slow_ms``; ``slow`` below ``very_slow_ms``;
    else ``very_slow``. Defaults: 100 / 1000 / 5000 ms for every kind, except client spans
    (database queries, outbound HTTP) which are ``fast`` below 10 ms. ``per_kind`` overrides
    them, e.g. ``{"client": (5, 500, 2000)}``.
    """

    def __init__(
        self,
        fast_ms: float = 100.0,
        slow_ms: float = 1000.0,
        very_slow_ms: float | None = None,
        per_kind: Mapping[str, tuple[float, float, float]] | None = None,
    ) -> None:
        fast_ms = finite("fast_ms", fast_ms, 0.0, 1e12)  # type: ignore[assignment]
        slow_ms = finite("slow_ms", slow_ms, 0.0, 1e12)  # type: ignore[assignment]
        very = finite("very_slow_ms", very_slow_ms, 0.0, 1e12, none_ok=True)
        if very is None:
            very = max(5000.0, slow_ms * 5)
        if per_kind is not None and not isinstance(per_kind, Mapping):
            raise TypeError(
                f"per_kind must map span kinds to (fast, slow, very_slow), got {type(per_kind).__name__}"
            )
        if not 0 <= fast_ms <= slow_ms <= very:
            raise ValueError("category thresholds must satisfy 0 <= fast <= slow <= very_slow")
        default = (fast_ms, slow_ms, very)
        self.table: dict[str, tuple[float, float, float]] = {k: default for k in _KIND}
        self.table["client"] = (min(10.0, fast_ms), slow_ms, very)
        for kind, triple in (per_kind or {}).items():
            try:
                ok = kind in self.table and len(triple) == 3 and 0 <= triple[0] <= triple[1] <= triple[2]
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"invalid category thresholds for kind {kind!r}: {triple!r}")
            self.table[kind] = (float(triple[0]), float(triple[1]), float(triple[2]))

    def slow_ms(self, kind: str) -> float:
        """The slow threshold of a kind."""
        return self.table.get(kind, self.table["internal"])[1]


_DEFAULT_THRESHOLDS = CategoryThresholds()


def category_of(duration_ms: float, kind: str, thresholds: CategoryThresholds | None = None) -> str:
    """fast / normal / slow / very_slow for a duration and span kind."""
    fast, slow, very = (thresholds or _DEFAULT_THRESHOLDS).table.get(kind, (100.0, 1000.0, 5000.0))
    if duration_ms < fast:
        return "fast"
    if duration_ms < slow:
        return "normal"
    if duration_ms < very:
        return "slow"
    return "very_slow"


def make_resource(service: str, environment: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resource attributes attached to every record of this process: the SDK's own, then
    what :mod:`pitchey_trace._resource` detects, then ``extra`` (the user's, which win)."""
    from pitchey_trace import __version__

    res: dict[str, Any] = {
        "service.name": service,
        "deployment.environment.name": environment,
        "telemetry.sdk.name": "pitchey-trace",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": ".".join(map(str, sys.version_info[:3])),
    }
    try:
        res["host.name"] = socket.gethostname()
    except OSError:
        pass
    if _resource.enabled():
        try:
            res.update(_resource.detect())
        except Exception as exc:  # detection is a bonus: never a reason not to trace
            _safety.report("resource.detect", exc)
    if extra:
        res.update(extra)
    return res


def _attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    # Sequence values are stored as private lists at set time and a span is frozen once ended,
    # so the record can share the span's dict; consumers never mutate records.
    return attrs if attrs else {}  # type: ignore[return-value]


#: The keys of every span record and audit record (schema v1), in the order they are built.
SPAN_RECORD_KEYS = frozenset(
    (
        "schema", "type", "trace_id", "span_id", "parent_span_id", "name", "kind", "service",
        "environment", "start_time_unix_nano", "end_time_unix_nano", "duration_ms", "status",
        "status_message", "category", "attributes", "events", "links", "resource",
    )
)  # fmt: skip
AUDIT_RECORD_KEYS = frozenset(
    (
        "schema", "type", "record_id", "category", "time_unix_nano", "trace_id", "span_id", "service",
        "environment", "actor", "action", "target", "outcome", "attributes",
    )
)  # fmt: skip

_KIND_STR = {k: k.value for k in SpanKind}
_STATUS_STR = {0: "unset", 1: "ok", 2: "error"}


def _shared_list_error() -> TypeError:
    return TypeError(
        "a record's empty events/links list is shared by the records and read-only: "
        'assign a new list instead (rec["events"] = [*rec["events"], event])'
    )


class _SharedEmptyList(list[Any]):
    """The ``events`` / ``links`` value of every span record without events or links: one
    shared object instead of two new lists per record (two allocations less per span, and
    fewer cycle collections triggered by the export worker). An empty ``list`` in every way
    but one: it cannot be changed in place, because it is shared. Copies are plain lists."""

    __slots__ = ()

    def __init__(self) -> None:  # (never any items)
        super().__init__()

    def append(self, item: Any, /) -> NoReturn:
        raise _shared_list_error()

    def extend(self, items: Any, /) -> NoReturn:
        raise _shared_list_error()

    def insert(self, index: SupportsIndex, item: Any, /) -> NoReturn:
        raise _shared_list_error()

    def remove(self, item: Any, /) -> NoReturn:
        raise _shared_list_error()

    def pop(self, index: SupportsIndex = -1, /) -> NoReturn:
        raise _shared_list_error()

    def clear(self) -> NoReturn:
        raise _shared_list_error()

    def sort(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _shared_list_error()

    def reverse(self) -> NoReturn:
        raise _shared_list_error()

    def __setitem__(self, index: Any, value: Any, /) -> NoReturn:
        raise _shared_list_error()

    def __delitem__(self, index: Any, /) -> NoReturn:
        raise _shared_list_error()

    def __iadd__(self, items: Any, /) -> NoReturn:  # type: ignore[misc]
        raise _shared_list_error()

    def __imul__(self, n: Any, /) -> NoReturn:  # type: ignore[misc]
        raise _shared_list_error()

    def __copy__(self) -> list[Any]:
        return []

    def __deepcopy__(self, memo: Any) -> list[Any]:
        return []

    def __reduce__(self) -> tuple[Any, ...]:  # pickles as a plain empty list
        return (list, ())


#: The shared empty ``events`` / ``links`` list of span records (see _SharedEmptyList).
NO_ITEMS: list[Any] = _SharedEmptyList()


def span_events(events: list[Event]) -> list[dict[str, Any]]:
    """The ``events`` field of a span record (``dropped_attributes_count`` last, only in the
    events whose attributes the limit cut: their tuple has a fourth item)."""
    try:  # (the common case: 3-tuples only; a 4-tuple raises ValueError here)
        return [{"name": name, "time_unix_nano": ts, "attributes": attrs or {}} for name, ts, attrs in events]  # type: ignore[misc]
    except ValueError:  # (rare: an event with a dropped count)
        out = []
        for event in events:
            item = {"name": event[0], "time_unix_nano": event[1], "attributes": event[2] or {}}
            if len(event) > 3:
                _add_dropped_attributes(item, event[3])
            out.append(item)
        return out


def _add_dropped_attributes(item: dict[str, Any], count: Any) -> None:
    """An event's or link's ``dropped_attributes_count``, only when an int above 0."""
    if count.__class__ is int and count > 0:
        item["dropped_attributes_count"] = count


def span_links(links: list[Link]) -> list[dict[str, Any]]:
    """The ``links`` field of a span record (``trace_state`` only when the linked context has
    one)."""
    out = []
    for link in links:
        ctx = link.context
        item = {
            "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "attributes": link.attributes,
        }
        state = getattr(ctx, "trace_state", None)  # (any object with the ids can be linked)
        if state and state.__class__ is tuple:
            text = _link_state(state)
            if text:
                item["trace_state"] = text
        dropped = getattr(link, "dropped_attributes_count", 0)  # (a Link made before it had one)
        if dropped:  # (rare: the span's attribute limit cut the link's attributes)
            _add_dropped_attributes(item, dropped)
        out.append(item)
    return out


def _link_state(state: tuple[Any, ...]) -> str:
    """A linked context's tracestate in the header's form; "" when it is not pairs of strs
    (a duck-typed context's own attribute, not one TraceContext checked)."""
    for pair in state:
        if not (pair.__class__ is tuple and len(pair) == 2 and all(p.__class__ is str for p in pair)):
            return ""
    return format_tracestate(state)


def span_record(
    span: Span,
    service: str,
    environment: str,
    resource: dict[str, Any],
    thresholds: CategoryThresholds | None = None,
) -> Record:
    """The schema-v1 dict of a finished span (built on the export worker, never on the hot path).

    Written for speed: this runs once per exported span.
    """
    rec = span_structure(span, last_span_template(service, environment, resource), thresholds)
    rec["name"] = span.name if span.name.__class__ is str else str(span.name)
    rec["status_message"] = span.status_message
    rec["attributes"] = span.attributes
    events = span.events
    links = span.links
    rec["events"] = span_events(events) if events else NO_ITEMS
    rec["links"] = span_links(links) if links else NO_ITEMS
    return rec


def last_span_template(service: str, environment: str, resource: dict[str, Any]) -> Record:
    """``span_template`` of these fields, reused while they are the same objects (one pipeline
    worker asks, always with its own service, environment and resource)."""
    global _last_template
    cached = _last_template
    if cached[0] is service and cached[1] is environment and cached[2] is resource:
        return cached[3]
    template = span_template(service, environment, resource)
    _last_template = (service, environment, resource, template)
    return template


def span_structure(span: Span, template: Record, thresholds: CategoryThresholds | None) -> Record:
    """A copy of ``template`` with the span's structural fields set (ids, kind, times,
    duration, status, category, and ``trace_state`` when the span has one): everything but the
    text-bearing fields (name, status message, attributes, events, links), which the caller
    sets, sanitized or not."""
    start = span.start_ns
    end = span.end_ns if span.end_ns >= start else start
    duration_ms = (end - start) / 1e6
    kind = _KIND_STR[span.kind]
    fast, slow, very = (thresholds or _DEFAULT_THRESHOLDS).table[kind]
    parent = span.parent_span_id
    rec = template.copy()
    # to_bytes().hex() is twice as fast as f"{x:032x}" and gives the same lowercase digits.
    rec["trace_id"] = span.trace_id.to_bytes(16, "big").hex()
    rec["span_id"] = span.span_id.to_bytes(8, "big").hex()
    if parent:
        rec["parent_span_id"] = parent.to_bytes(8, "big").hex()
    rec["kind"] = kind
    rec["start_time_unix_nano"] = start
    rec["end_time_unix_nano"] = end
    rec["duration_ms"] = duration_ms
    rec["status"] = _STATUS_STR[span.status]
    rec["category"] = (
        "fast"
        if duration_ms < fast
        else "normal"
        if duration_ms < slow
        else "slow"
        if duration_ms < very
        else "very_slow"
    )
    state = span.trace_state
    if state:  # (rare: only traces whose vendors use tracestate; opaque, not sanitized)
        rec["trace_state"] = format_tracestate(state)
    dropped = span._dropped
    if dropped is not None:  # (rare: the span hit a limit)
        _add_dropped(rec, dropped)
    return rec


#: The optional span record keys of what a span's limits dropped (present only when not 0).
DROPPED_KEYS = ("dropped_attributes_count", "dropped_events_count", "dropped_links_count")


def _add_dropped(rec: Record, dropped: Any) -> None:
    """The ``dropped_*_count`` keys of a span that hit its attribute, event or link limit
    (``Span._dropped``: [attributes, events, links]), each only when not 0."""
    for key, count in zip(DROPPED_KEYS, dropped, strict=False):
        if count.__class__ is int and count > 0:
            rec[key] = count


def span_template(service: Any, environment: Any, resource: Any) -> Record:
    """A span record with its per-process fields set and the rest empty, in schema order.

    Copying it and setting the per-span fields is about twice as fast as building the
    19-key dict from a literal (the copy is sized once; a literal grows the table twice).
    """
    return {
        "schema": SCHEMA_VERSION,
        "type": "span",
        "trace_id": "",
        "span_id": "",
        "parent_span_id": None,
        "name": "",
        "kind": "internal",
        "service": service,
        "environment": environment,
        "start_time_unix_nano": 0,
        "end_time_unix_nano": 0,
        "duration_ms": 0.0,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": {},
        "events": NO_ITEMS,
        "links": NO_ITEMS,
        "resource": resource,
    }


#: (service, environment, resource, template) of the last span_record call (one pipeline
#: worker calls it; an identity check decides reuse).
_last_template: tuple[Any, Any, Any, Record] = (None, None, None, {})


def audit_record(
    *,
    action: str,
    target: str,
    outcome: str,
    time_unix_nano: int,
    service: str,
    environment: str,
    trace_id: int = 0,
    span_id: int = 0,
    actor: str | None = None,
    category: str = "request",
    attributes: Mapping[str, Any] | None = None,
) -> Record:
    """A schema-v1 audit record: who did what to which target, with which outcome; never values.

    ``category`` is ``request`` (one per HTTP request), ``security`` (401/403/429, auth
    failures) or ``data_access`` (sensitive-table access). Each record gets a new
    ``record_id`` (:func:`new_record_id`; the C request-audit builder makes the same).
    """
    return {
        "schema": SCHEMA_VERSION,
        "type": "audit",
        "record_id": new_record_id(),
        "category": category,
        "time_unix_nano": time_unix_nano,
        "trace_id": f"{trace_id:032x}" if trace_id else None,
        "span_id": f"{span_id:016x}" if span_id else None,
        "service": service,
        "environment": environment,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "attributes": _attrs(attributes),
    }


def app_log_record(
    *,
    time_unix_nano: int,
    severity_number: int,
    severity_text: str,
    logger: str,
    body: str,
    service: str,
    environment: str,
    trace_id: int = 0,
    span_id: int = 0,
    trace_flags: int = 0,
    attributes: Mapping[str, Any] | None = None,
) -> Record:
    """A schema-v1 ``log`` record: one application log record (``pitchey_trace.web.export_logs``),
    with the trace and span current when it was logged. ``severity_number`` is OpenTelemetry's
    (1-24: DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21). Each record gets a new ``record_id``."""
    return {
        "schema": SCHEMA_VERSION,
        "type": "log",
        "record_id": new_record_id(),
        "time_unix_nano": time_unix_nano,
        "trace_id": f"{trace_id:032x}" if trace_id else None,
        "span_id": f"{span_id:016x}" if span_id else None,
        "trace_flags": trace_flags,
        "service": service,
        "environment": environment,
        "severity_number": severity_number,
        "severity_text": severity_text,
        "logger": logger,
        "body": body,
        "attributes": _finite_attrs(attributes),
    }


def _finite_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``attrs`` without NaN or infinite floats (a log's ``extra=`` fields are taken as they
    come): JSON has no such numbers, and the null they would be written as is not a valid
    attribute value. Left out, as a span leaves out an invalid attribute value."""
    if attrs and any(v.__class__ is float and not math.isfinite(v) for v in attrs.values()):
        return {k: v for k, v in attrs.items() if not (v.__class__ is float and not math.isfinite(v))}
    return _attrs(attrs)


#: First item of a deferred request audit (see :func:`request_audit`).
PENDING_AUDIT = "pitchey_trace.pending_request_audit"

# Attribute names of a request audit record (OpenTelemetry HTTP names, as on the span).
_HTTP_METHOD = "http.request.method"
_HTTP_STATUS = "http.response.status_code"
_CLIENT_ADDRESS = "client.address"


def request_audit(pending: tuple[Any, ...], service: str, environment: str) -> Record:
    """The audit record of one HTTP request from what the middleware queued.

    The middleware queues a plain tuple ``(PENDING_AUDIT, category, time_unix_nano, trace_id,
    span_id, actor, action, target, outcome, method, status, duration_ns, client_address)``
    and the pipeline worker builds the record: the request thread then pays for one tuple
    instead of two dicts, two hex ids and a rounding.
    """
    (_, category, when, trace_id, span_id, actor, action, target, outcome) = pending[:9]
    method, status, duration_ns, client = pending[9:]
    attrs: dict[str, Any] = {
        _HTTP_METHOD: method,
        _HTTP_STATUS: status,
        "duration_ms": round(duration_ns / 1e6, 3),
    }
    if client:
        attrs[_CLIENT_ADDRESS] = client
    return audit_record(
        action=action,
        target=target,
        outcome=outcome,
        time_unix_nano=when,
        service=service,
        environment=environment,
        trace_id=trace_id,
        span_id=span_id,
        actor=actor,
        category=category,
        attributes=attrs,
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every exported record validates against."""
    text = resources.files("pitchey_trace").joinpath("schema/record-v1.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
