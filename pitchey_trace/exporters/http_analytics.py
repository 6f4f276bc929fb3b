"""HttpAnalyticsExporter: records as Workers Analytics Engine-shaped data points over HTTP.

Each record becomes one point ``{"indexes": [1 string], "blobs": [<=20 strings],
"doubles": [<=20 numbers]}`` (the shape of Cloudflare's ``writeDataPoint``); batches are POSTed
as ``{"points": [...]}`` JSON (gzip by default) with ``Authorization: Bearer <token>`` to a URL
you run - typically a Worker that calls ``env.DATASET.writeDataPoint(p)`` for each point.
The column layout per record type is documented in ``docs/exporters.md`` and in
:func:`to_data_point`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pitchey_trace import _stats
from pitchey_trace._json import dumps, valid_text
from pitchey_trace._validate import callable_or_none, header_map, positive_int, text
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace.exporters._http import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SPOOL_MAX_BYTES,
    HttpSender,
    RetryPolicy,
    SenderExporter,
    checked_max_request_bytes,
)
from pitchey_trace.records import Record

__all__ = ["MAX_BLOBS", "MAX_DOUBLES", "MAX_INDEX_BYTES", "HttpAnalyticsExporter", "to_data_point"]

MAX_INDEX_BYTES = 96
MAX_BLOBS = 20
MAX_DOUBLES = 20
#: Per-blob cap: 20 blobs x 256 bytes stays within Analytics Engine's per-point blob budget.
DEFAULT_MAX_BLOB_BYTES = 256
#: Analytics Engine accepts up to 250 writeDataPoint calls per Worker invocation.
DEFAULT_MAX_POINTS_PER_REQUEST = 250
#: gzip level of a request: 1 costs about a quarter of level 6's CPU time per point (random
#: trace and span ids do not compress further) for bodies about 15% larger; at 6, gzip was most
#: of the export worker's time (bench/bench_analytics_throughput.py).
DEFAULT_COMPRESSLEVEL = 1
#: Requests of one batch sent at once, each on a connection of its own. One at a time (the
#: default: a batch's requests arrive in order, as before), a 20 ms round trip caps the
#: exporter near 7,400 points/s; 4 made it about 19,000 (bench/bench_analytics_throughput.py
#: --latency-ms 20).
DEFAULT_MAX_CONCURRENT_REQUESTS = 1

Point = dict[str, list[Any]]


def _truncate(text: str, limit: int) -> str:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: U+FFFD, as the JSON encoding writes it
        text = valid_text(text)
        raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")  # cut at a character boundary


def _cut(value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` UTF-8 bytes (``_truncate``). An ASCII text
    (nearly every blob: names, ids, statuses) is its own UTF-8: its length is its size, so it
    is not encoded just to be measured (21 strings a point: most of the exporter's time)."""
    if value.__class__ is not str:
        value = _s(value)
    if len(value) <= limit and value.isascii():
        return value  # type: ignore[no-any-return]
    return _truncate(value, limit)


def _num(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        try:
            f = float(value)
        except OverflowError:  # an int beyond a double (an attribute may hold any int): as inf
            return 0.0
        return f if math.isfinite(f) else 0.0
    return 0.0


#: Ints beyond this are not converted to float inline (float() would raise): _num makes them 0.
_BIG = 1 << 1000


def _s(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _span_point(r: Mapping[str, Any]) -> tuple[str, list[Any], list[float]]:
    a = r.get("attributes") or {}
    res = r.get("resource") or {}
    category = r.get("category")
    status = r.get("status")
    blobs = [
        "span",
        r.get("service"),
        r.get("environment"),
        r.get("name"),
        r.get("kind"),
        status,
        category,
        r.get("trace_id"),
        r.get("span_id"),
        r.get("parent_span_id"),
        a.get("http.request.method"),
        a.get("http.route"),
        a.get("db.system.name"),
        a.get("db.operation.name"),
        a.get("db.collection.name"),
        a.get("server.address"),
        a.get("error.type"),
        r.get("status_message"),
        res.get("service.version"),
        res.get("host.name"),
    ]
    # (inline fast paths of _num for the usual float duration and int start time: the
    # function calls were a good part of a point's cost)
    duration = r.get("duration_ms")
    if duration.__class__ is not float or duration - duration != 0.0:  # (not finite: nan, inf)
        duration = _num(duration)
    start = r.get("start_time_unix_nano", 0)
    start_ms = start / 1e6 if start.__class__ is int and -_BIG < start < _BIG else _num(start) / 1e6
    code = a.get("http.response.status_code")
    rows = a.get("db.response.returned_rows")
    doubles = [
        duration,
        start_ms,
        1.0 if status == "error" else 0.0,
        0.0 if code is None else _num(code),
        0.0 if rows is None else _num(rows),
        1.0,
        1.0 if category in ("slow", "very_slow") else 0.0,
        float(len(r.get("events") or ())),
    ]
    return f"{_s(r.get('service'))}:{_s(r.get('name'))}", blobs, doubles


def _rollup_point(r: Mapping[str, Any]) -> tuple[str, list[Any], list[float]]:
    blobs = ["rollup", r.get("service"), r.get("environment"), r.get("operation"), r.get("kind")]
    doubles = [
        _num(r.get("duration_sum_ms")),
        _num(r.get("minute_start_unix_nano", 0)) / 1e6,
        _num(r.get("errors")),
        0.0,
        0.0,
        _num(r.get("count")),
        0.0,
        0.0,
        _num(r.get("duration_min_ms")),
        _num(r.get("duration_max_ms")),
        _num(r.get("p50_ms")),
        _num(r.get("p95_ms")),
        _num(r.get("p99_ms")),
        _num(r.get("interval_s")),
    ]
    return f"{_s(r.get('service'))}:{_s(r.get('operation'))}", blobs, doubles


def _audit_point(r: Mapping[str, Any]) -> tuple[str, list[Any], list[float]]:
    blobs = [
        "audit",
        r.get("service"),
        r.get("environment"),
        r.get("action"),
        r.get("category"),
        r.get("outcome"),
        r.get("target"),
        r.get("trace_id"),
        r.get("span_id"),
        r.get("actor"),
    ]
    doubles = [0.0, _num(r.get("time_unix_nano", 0)) / 1e6, 0.0, 0.0, 0.0, 1.0]
    return f"{_s(r.get('service'))}:{_s(r.get('action'))}", blobs, doubles


def _log_point(r: Mapping[str, Any]) -> tuple[str, list[Any], list[float]]:
    a = r.get("attributes") or {}
    blobs = [
        "log",
        r.get("service"),
        r.get("environment"),
        r.get("logger"),
        r.get("severity_text"),
        r.get("body"),
        a.get("exception.type"),
        r.get("trace_id"),
        r.get("span_id"),
    ]
    number = _num(r.get("severity_number"))
    doubles = [0.0, _num(r.get("time_unix_nano", 0)) / 1e6, 1.0 if number >= 17 else 0.0, number, 0.0, 1.0]
    return f"{_s(r.get('service'))}:{_s(r.get('logger'))}", blobs, doubles


_LAYOUTS: dict[str, Callable[[Mapping[str, Any]], tuple[str, list[Any], list[float]]]] = {
    "span": _span_point,
    "rollup": _rollup_point,
    "audit": _audit_point,
    "log": _log_point,
}


def to_data_point(record: Mapping[str, Any], max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> Point | None:
    """The Analytics Engine point of a record (None for unknown record types).

    Column positions are fixed per record type (``blob1`` is always the type) so that SQL
    over the dataset can name them; see ``docs/exporters.md`` for the full table. The index is
    ``"<service>:<operation>"`` cut to 96 UTF-8 bytes; each blob is cut to ``max_blob_bytes``;
    missing values are ``""`` / ``0``.
    """
    layout = _LAYOUTS.get(record.get("type", ""))
    if layout is None:
        return None
    index, blobs, doubles = layout(record)
    # (the layouts stay within MAX_BLOBS / MAX_DOUBLES; _cut's fast path inline: a short
    # ASCII string, nearly every blob, is kept without a call; None is "")
    lim = max_blob_bytes
    return {
        "indexes": [_cut(index, MAX_INDEX_BYTES)],
        "blobs": [
            b if b.__class__ is str and len(b) <= lim and b.isascii() else ("" if b is None else _cut(b, lim))
            for b in blobs
        ],
        "doubles": doubles,
    }


def _points_body(chunk: Sequence[Point]) -> bytes:
    return dumps({"points": chunk})


class HttpAnalyticsExporter(SenderExporter):
    """POST records as Analytics Engine data points to ``url``.

    Args:
        url: the receiving endpoint (e.g. your Worker), ``http(s)://host/path``.
        token: bearer token (default: env ``PITCHEY_TRACE_ANALYTICS_TOKEN``; none = no header).
        datasets: datasets to receive (default all: spans, audit records, rollups and shipped
            logs).
        to_point: custom ``record -> point | None`` mapping (None skips the record).
        max_points_per_request: points per POST (default 250).
        max_concurrent_requests: how many of a batch's requests go out at once, each on a
            keep-alive connection of its own, from short-lived threads alongside the export
            worker (default 1: one after another on one connection, in order; at most 32; 4
            for a remote endpoint). A batch of ``export_batch_size`` records makes
            ``export_batch_size / max_points_per_request`` requests (rounded up): the default
            512 makes 3.
        max_request_bytes: a request body's bytes at most (its JSON, before gzip; default
            4 MiB): a batch whose JSON is larger goes as several requests; a point whose JSON
            alone is larger (a custom ``to_point``, a large ``max_blob_bytes``) is dropped
            (``dropped.request_too_large``, ``http_analytics.too_large``).
        max_blob_bytes: each blob cut to this many UTF-8 bytes (default 256).
        timeout_s: per socket operation (default 10).
        compress: gzip the body (``Content-Encoding: gzip``; default True).
        compresslevel: its gzip level, 0-9 (default 1: the cheapest; 6 makes bodies about
            15% smaller for about four times the CPU time).
        retry: a :class:`~pitchey_trace.exporters.RetryPolicy` (default: 5 attempts,
            0.5 s doubling backoff with jitter, ``Retry-After`` honoured on 429/503).
        headers: extra request headers.
        certificate_file: PEM certificates to trust for ``https`` instead of the system's roots
            (an endpoint behind a private CA).
        client_certificate_file / client_key_file: the PEM certificate (chain) and unencrypted
            key to present to an endpoint that requires mutual TLS; both or neither.
        spool_dir: a directory of this exporter's own where requests that could not be
            delivered (endpoint down or failing after the retries; not ones it refused) are
            kept and sent again, oldest first, once it answers, also by the next process that
            opens the directory after a crash. None (default): such requests are given up.
        spool_max_bytes: what the spool keeps at most (default 256 MiB; the oldest go first).

    Runs on its own export worker: retries and a hanging endpoint never block the
    application. Counters: ``http_analytics.points``, ``.requests``, ``.retried``,
    ``.failed``, ``.rejected``, ``.skipped``, ``.too_large``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        datasets: Iterable[str] | None = None,
        to_point: Callable[[Record], Point | None] | None = None,
        max_points_per_request: int = DEFAULT_MAX_POINTS_PER_REQUEST,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        timeout_s: float = 10.0,
        compress: bool = True,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        name: str = "http_analytics",
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
    ) -> None:
        positive_int("max_points_per_request", max_points_per_request)
        positive_int("max_blob_bytes", max_blob_bytes, 1 << 20)
        callable_or_none("to_point", to_point)
        text("name", name)
        if token is not None and not isinstance(token, str):
            raise TypeError("token must be a str or None")
        token = token if token is not None else os.environ.get("PITCHEY_TRACE_ANALYTICS_TOKEN")
        hdrs = header_map(headers)  # (a dict to add to; HttpSender checks the result)
        if token:
            # (a token read from a file or an env var often ends with a newline)
            hdrs["Authorization"] = f"Bearer {token.strip()}"
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.max_points_per_request = max_points_per_request
        self.max_request_bytes = self._max_request_bytes = checked_max_request_bytes(max_request_bytes)
        self.max_blob_bytes = max_blob_bytes
        self._to_point = to_point
        self._sender = HttpSender(
            url,
            counter="http_analytics",
            headers=hdrs,
            timeout_s=timeout_s,
            compress=compress,
            compresslevel=compresslevel,
            retry=retry,
            ca_file=certificate_file,
            client_cert_file=client_certificate_file,
            client_key_file=client_key_file,
        )
        self.max_concurrent_requests = self._init_concurrency(max_concurrent_requests)
        self._init_spool(spool_dir, spool_max_bytes, "http_analytics.points")

    def _point(self, record: Record) -> Point | None:
        if self._to_point is not None:
            return self._to_point(record)
        return to_data_point(record, self.max_blob_bytes)

    def export(self, batch: Sequence[Record]) -> bool | _stats.PartlyRejected:
        """Convert and POST the batch (in chunks); False if any chunk was given up. Points too
        large to send (``max_request_bytes``) are dropped: their number, as a
        ``PartlyRejected``, when the rest went out (the export worker counts the rest)."""
        points: list[Point] = []
        skipped = 0
        for rec in batch:
            p = self._point(rec)
            if p is None:
                skipped += 1
            else:
                points.append(p)
        if skipped:
            _stats.incr("http_analytics.skipped", skipped)
        return self._post_in_chunks(
            points,
            self.max_points_per_request,
            _points_body,
            "http_analytics.points",
        )

    def __repr__(self) -> str:
        return f"HttpAnalyticsExporter(url={self.url!r}, datasets={self.datasets!r})"
