"""ZipkinExporter: spans to a Zipkin server (or anything that reads Zipkin's v2 JSON: Jaeger's
Zipkin endpoint, Grafana Tempo, ...) over HTTP.

    from pitchey_trace.exporters import ZipkinExporter
    pt.configure(service="pitch-api", exporters=[ZipkinExporter("http://zipkin:9411/api/v2/spans")])

Each span record becomes one Zipkin v2 span (:func:`to_zipkin`); a batch is POSTed as a JSON
list. Audit records and rollups have no Zipkin form and are not sent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import header_map, positive_int, text
from pitchey_trace.exporters._http import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SPOOL_MAX_BYTES,
    HttpSender,
    RetryPolicy,
    SenderExporter,
    checked_max_request_bytes,
)
from pitchey_trace.records import Record

__all__ = ["DEFAULT_URL", "ZipkinExporter", "to_zipkin"]

DEFAULT_URL = "http://localhost:9411/api/v2/spans"
DEFAULT_MAX_SPANS_PER_REQUEST = 1000
_KINDS = {"client": "CLIENT", "server": "SERVER", "producer": "PRODUCER", "consumer": "CONSUMER"}


def _tag(value: Any) -> str:
    """Zipkin tags are strings: lists as JSON, booleans as ``true`` / ``false``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return dumps(list(value)).decode("utf-8")
    return str(value)


def _remote(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The peer of a client / producer span: ``server.address`` (an IP literal as ``ipv4`` /
    ``ipv6``, a host name as ``serviceName``) and ``server.port``."""
    address = attrs.get("server.address")
    if not isinstance(address, str) or not address:
        return None
    endpoint: dict[str, Any] = {}
    try:
        ip = ipaddress.ip_address(address)
        endpoint["ipv4" if ip.version == 4 else "ipv6"] = address
    except ValueError:
        endpoint["serviceName"] = address
    port = attrs.get("server.port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        endpoint["port"] = port
    return endpoint


def to_zipkin(record: Record) -> dict[str, Any] | None:
    """One span record as a Zipkin v2 span (None for audit records and rollups).

    Times in microseconds (a span of under 1 us lasts 1); the record's kind (``internal``
    has none); ``localEndpoint.serviceName`` is the service; attributes become string tags; a
    failed span gets the ``error`` tag (its status message, or ``true``) and
    ``otel.status_code=ERROR``; events become annotations (their attributes as JSON).
    """
    if record.get("type") != "span":
        return None
    start = int(record["start_time_unix_nano"])
    end = int(record["end_time_unix_nano"])
    span: dict[str, Any] = {
        "traceId": record["trace_id"],
        "id": record["span_id"],
        "name": record["name"],
        "timestamp": start // 1000,
        "duration": max(1, (end - start) // 1000),
        "localEndpoint": {"serviceName": record["service"]},
    }
    if record.get("parent_span_id"):
        span["parentId"] = record["parent_span_id"]
    kind = _KINDS.get(record.get("kind", ""))
    attrs = record.get("attributes") or {}
    if kind is not None:
        span["kind"] = kind
        if kind in ("CLIENT", "PRODUCER"):
            remote = _remote(attrs)
            if remote is not None:
                span["remoteEndpoint"] = remote
    tags = {key: _tag(value) for key, value in attrs.items()}
    if record.get("status") == "error":
        tags["otel.status_code"] = "ERROR"
        tags["error"] = record.get("status_message") or "true"
    elif record.get("status") == "ok":
        tags["otel.status_code"] = "OK"
    if tags:
        span["tags"] = tags
    events = record.get("events") or []
    if events:
        span["annotations"] = [
            {
                "timestamp": int(e["time_unix_nano"]) // 1000,
                "value": dumps({e["name"]: e["attributes"]}).decode("utf-8")
                if e.get("attributes")
                else e["name"],
            }
            for e in events
        ]
    return span


class ZipkinExporter(SenderExporter):
    """POST span records to a Zipkin v2 endpoint as JSON.

    Args:
        url: the endpoint (default ``http://localhost:9411/api/v2/spans``).
        max_spans_per_request: spans per POST (default 1,000).
        max_request_bytes: a request body's bytes at most (its JSON, before gzip; default
            4 MiB): a batch whose JSON is larger goes as several requests; a span whose JSON
            alone is larger is dropped (``dropped.request_too_large``, ``zipkin.too_large``).
        timeout_s: per socket operation (default 10).
        compress: gzip the body (``Content-Encoding: gzip``, which Zipkin reads; default True).
        retry: a :class:`~pitchey_trace.exporters.RetryPolicy` (default: 5 attempts, 0.5 s
            doubling backoff with jitter, ``Retry-After`` honoured on 429/503).
        headers: extra request headers (e.g. ``Authorization`` for a proxy in front).
        certificate_file / client_certificate_file / client_key_file: as for
            :class:`~pitchey_trace.exporters.OTLPExporter` (a private CA, mutual TLS).
        spool_dir: a directory of this exporter's own where requests that could not be
            delivered (endpoint down or failing after the retries; not ones it refused) are
            kept and sent again, oldest first, once it answers, also by the next process that
            opens the directory after a crash. None (default): such requests are given up.
        spool_max_bytes: what the spool keeps at most (default 256 MiB; the oldest go first).

    Runs on its own export worker. Counters: ``zipkin.spans``, ``.requests``, ``.retried``,
    ``.failed``, ``.rejected``, ``.too_large``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_spans_per_request: int = DEFAULT_MAX_SPANS_PER_REQUEST,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        timeout_s: float = 10.0,
        compress: bool = True,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        name: str = "zipkin",
        datasets: Iterable[str] | None = ("traces",),
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
    ) -> None:
        positive_int("max_spans_per_request", max_spans_per_request)
        text("name", name)
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.max_spans_per_request = max_spans_per_request
        self.max_request_bytes = self._max_request_bytes = checked_max_request_bytes(max_request_bytes)
        self._sender = HttpSender(
            url,
            counter="zipkin",
            headers=header_map(headers),
            timeout_s=timeout_s,
            compress=compress,
            retry=retry,
            ca_file=certificate_file,
            client_cert_file=client_certificate_file,
            client_key_file=client_key_file,
        )
        self._init_spool(spool_dir, spool_max_bytes, "zipkin.spans")

    def export(self, batch: Sequence[Record]) -> bool | _stats.PartlyRejected:
        """Convert the batch's spans and POST them (in chunks); False if any chunk was given up.
        Spans too large to send (``max_request_bytes``) are dropped: their number, as a
        ``PartlyRejected``, when the rest went out (the export worker counts the rest)."""
        spans = [s for s in map(to_zipkin, batch) if s is not None]
        return self._post_in_chunks(spans, self.max_spans_per_request, dumps, "zipkin.spans")

    def __repr__(self) -> str:
        return f"ZipkinExporter(url={self.url!r})"
