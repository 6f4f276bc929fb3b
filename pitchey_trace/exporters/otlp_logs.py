"""OTLPLogExporter: the audit records and the application's logs as OpenTelemetry log
records, to any OTLP backend.

The audit dataset (one record per request, security events, sensitive-table access) is what
a security team searches: this exporter sends it to wherever the organisation keeps its logs
through an OpenTelemetry Collector, Loki, Elastic, Datadog, ... Each audit record becomes one
``LogRecord``:

- ``timeUnixNano``: when it was recorded; ``observedTimeUnixNano``: when it was sent;
- severity: ``WARN`` for security events and 4xx outcomes, ``ERROR`` for 5xx and ``error``
  outcomes, ``INFO`` otherwise;
- ``body``: ``"<action> -> <outcome>"``; ``eventName``: ``pitchey_trace.audit.<category>``;
- attributes: ``audit.category``, ``audit.action``, ``audit.target``, ``audit.outcome``,
  ``enduser.id`` (the actor) and the record's own attributes;
- ``traceId`` / ``spanId``: the trace the event belongs to, so a backend links the two.

The application's log records (dataset ``logs``, :func:`pitchey_trace.web.export_logs`) become
``LogRecord`` s as OpenTelemetry's logging handler makes them: their time, severity number and
text, the message as ``body``, the trace and span ids and flags, the logger's name as
``logger.name`` (the instrumentation scope of OpenTelemetry's handler), and their attributes.

The records are the sanitized ones, as every exporter's. The payload is an
``ExportLogsServiceRequest`` (binary protobuf, JSON, or gRPC ``LogsService/Export``); field
numbers from ``opentelemetry/proto/{collector/logs,logs}/v1/*.proto``:

    ExportLogsServiceRequest  1 resource_logs
    ResourceLogs              1 resource, 2 scope_logs
    ScopeLogs                 1 scope, 2 log_records
    LogRecord                 1 time_unix_nano, 11 observed_time_unix_nano (fixed64),
                              2 severity_number, 3 severity_text, 5 body (AnyValue),
                              6 attributes, 8 flags (fixed32), 9 trace_id, 10 span_id,
                              12 event_name
    ExportLogsServiceResponse 1 partial_success { 1 rejected_log_records, 2 error_message }
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from pitchey_trace import _stats
from pitchey_trace._json import dumps
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import positive_int, text
from pitchey_trace.exporters._http import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SPOOL_MAX_BYTES,
    RetryPolicy,
    checked_max_request_bytes,
)
from pitchey_trace.exporters._otlp_proto import (
    Schema,
    encode_node,
    field_size,
    resource_framing_size,
    scope_framing_size,
)
from pitchey_trace.exporters.otlp import (
    ItemSize,
    PackedOTLP,
    ResourceBound,
    _kv,
    _scope_version,
    json_node,
    otlp_sender,
)
from pitchey_trace.records import Record

__all__ = ["EXPORT_METHOD", "OTLPLogExporter", "log_record"]

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
_INFO, _WARN, _ERROR = (9, "INFO"), (13, "WARN"), (17, "ERROR")

_SCHEMA: Schema = {
    "request": {"resourceLogs": (1, "messages", "resource_logs")},
    "resource_logs": {"resource": (1, "message", "resource"), "scopeLogs": (2, "messages", "scope_logs")},
    "resource": {"attributes": (1, "attributes", "")},
    "scope_logs": {"scope": (1, "message", "scope"), "logRecords": (2, "messages", "log_record")},
    "scope": {"name": (1, "string", ""), "version": (2, "string", "")},
    "log_record": {
        "timeUnixNano": (1, "fixed64", ""),
        "observedTimeUnixNano": (11, "fixed64", ""),
        "severityNumber": (2, "varint", ""),
        "severityText": (3, "string", ""),
        "body": (5, "any", ""),
        "attributes": (6, "attributes", ""),
        "flags": (8, "fixed32", ""),
        "traceId": (9, "hex_id", ""),
        "spanId": (10, "hex_id", ""),
        "eventName": (12, "string", ""),
    },
}


def _severity(category: str, outcome: str) -> tuple[int, str]:
    if outcome == "error":
        return _ERROR
    if outcome.isdigit():
        status = int(outcome)
        if status >= 500:
            return _ERROR
        if status >= 400:
            return _WARN
    return _WARN if category == "security" else _INFO


def _app_log(record: Mapping[str, Any], observed_ns: int) -> dict[str, Any] | None:
    try:
        when = int(record["time_unix_nano"])
        number = int(record["severity_number"])
        out: dict[str, Any] = {
            "timeUnixNano": when,
            "observedTimeUnixNano": observed_ns,
            "severityNumber": number if 1 <= number <= 24 else 0,
            "severityText": str(record["severity_text"]),
            "body": str(record["body"]),
        }
    except (KeyError, TypeError, ValueError):
        _stats.incr("otlp_logs.bad_record")
        return None
    attributes: dict[str, Any] = {"logger.name": str(record.get("logger", ""))}
    extra = record.get("attributes")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            attributes.setdefault(str(key), value)
    out["attributes"] = attributes
    if record.get("trace_id"):
        out["traceId"] = record["trace_id"]
        flags = record.get("trace_flags")
        if isinstance(flags, int) and not isinstance(flags, bool) and 0 < flags < 256:
            out["flags"] = flags
    if record.get("span_id"):
        out["spanId"] = record["span_id"]
    return out


_TYPES = frozenset(("audit", "log"))


def log_record(record: Mapping[str, Any], observed_ns: int) -> dict[str, Any] | None:
    """One audit or application log record as an OTLP ``LogRecord`` (the JSON form's shape;
    None for other records, or a record without its fields)."""
    if record.get("type") == "log":
        return _app_log(record, observed_ns)
    if record.get("type") != "audit":
        return None
    try:
        category = str(record["category"])
        action, target, outcome = str(record["action"]), str(record["target"]), str(record["outcome"])
        when = int(record["time_unix_nano"])
    except (KeyError, TypeError, ValueError):
        _stats.incr("otlp_logs.bad_record")
        return None
    number, name = _severity(category, outcome)
    attributes: dict[str, Any] = {
        "audit.category": category,
        "audit.action": action,
        "audit.target": target,
        "audit.outcome": outcome,
    }
    actor = record.get("actor")
    if actor:
        attributes["enduser.id"] = str(actor)
    extra = record.get("attributes")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            attributes.setdefault(str(key), value)
    out: dict[str, Any] = {
        "timeUnixNano": when,
        "observedTimeUnixNano": observed_ns,
        "severityNumber": number,
        "severityText": name,
        "body": f"{action} -> {outcome}",
        "attributes": attributes,
        "eventName": f"pitchey_trace.audit.{category}",
    }
    if record.get("trace_id"):
        out["traceId"] = record["trace_id"]
    if record.get("span_id"):
        out["spanId"] = record["span_id"]
    return out


#: A record and its ``LogRecord`` (None: not one, counted ``otlp_logs.bad_record`` once).
_Item = tuple[Record, "dict[str, Any] | None"]


class OTLPLogExporter(PackedOTLP, ResourceBound):
    """Send the audit records and the application's logs as OpenTelemetry log records to an
    OTLP endpoint: HTTP with binary protobuf (default) or JSON, or gRPC.

    Args:
        endpoint: full URL (``http://collector:4318/v1/logs``); a URL without a path gets
            ``/v1/logs``. Default: ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``, else
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/logs``, else ``http://localhost:4318/v1/logs``.
            For gRPC ``http(s)://host:port``.
        max_records_per_request: log records per request (default 512).
        datasets: the datasets taken (default ``audit`` and ``logs``).
        headers, compression, timeout_s, retry, protocol, certificate_file,
        client_certificate_file, client_key_file, spool_dir, spool_max_bytes: as
            :class:`OTLPExporter`, read from the ``OTEL_EXPORTER_OTLP_LOGS_*`` variables first,
            then ``OTEL_EXPORTER_OTLP_*``.
        max_request_bytes: a request's bytes at most (before gzip; default 4 MiB): as
            :class:`OTLPExporter` (a record too large alone: ``otlp_logs.too_large``).

    Counters: ``otlp_logs.records``, ``.requests``, ``.retried``, ``.failed``, ``.too_large``,
    ``.rejected``,
    ``.partial_rejected`` and ``.partial_warning`` (a partial success: as :class:`OTLPExporter`,
    the refused records counted in ``dropped.rejected[.<name>]``), ``.skipped`` (records that
    are neither audit nor log records), ``.bad_record``.
    """

    _partial = ("rejectedLogRecords", "log records")

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        max_records_per_request: int = 512,
        headers: Mapping[str, str] | None = None,
        compression: str | None = "default",
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        datasets: Iterable[str] | None = ("audit", "logs"),
        scope_name: str = "pitchey_trace",
        name: str = "otlp_logs",
        protocol: str | None = None,
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        positive_int("max_records_per_request", max_records_per_request)
        text("scope_name", scope_name)
        text("name", name)
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.max_records_per_request = self._items_per_request = max_records_per_request
        self.max_request_bytes = self._max_request_bytes = checked_max_request_bytes(max_request_bytes)
        self.scope_name = scope_name
        self._sender, self.protocol = otlp_sender(
            "LOGS",
            "otlp_logs",
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
        self._init_spool(spool_dir, spool_max_bytes, "otlp_logs.records")

    @property
    def endpoint(self) -> str:
        """The resolved endpoint: the ``/v1/logs`` URL, or the gRPC target's URL."""
        return self._sender.url

    def request(self, records: Iterable[Record]) -> dict[str, Any]:
        """The ``ExportLogsServiceRequest`` for the audit and log records among ``records`` (the
        JSON form's shape), grouped by service and environment."""
        observed = time.time_ns()
        return self._request([(record, log_record(record, observed)) for record in records])

    def _request(self, items: Iterable[_Item]) -> dict[str, Any]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record, log in items:
            if log is not None:
                key = (str(record.get("service", "")), str(record.get("environment", "")))
                groups.setdefault(key, []).append(log)
        scope = {"name": self.scope_name, "version": _scope_version(None)}
        return {
            "resourceLogs": [
                {
                    "resource": {"attributes": self.resource_for(service, environment)},
                    "scopeLogs": [{"scope": scope, "logRecords": logs}],
                }
                for (service, environment), logs in groups.items()
            ]
        }

    def export(self, batch: Sequence[Record]) -> bool | _stats.PartlyRejected:
        """POST the audit and log records of ``batch`` (in chunks); False if a chunk was given
        up. When the collector refused some records of an accepted request (partial success),
        or some were too large to send (``max_request_bytes``): their number, as a
        ``PartlyRejected`` (the export worker counts the rest as exported)."""
        logs = [r for r in batch if r.get("type") in _TYPES]
        if len(logs) != len(batch):
            _stats.incr("otlp_logs.skipped", len(batch) - len(logs))
        observed = time.time_ns()  # (each LogRecord made once: a split request measures them)
        items = [(r, log_record(r, observed)) for r in logs]
        return self._post_in_chunks(items, self.max_records_per_request, self._payload, "otlp_logs.records")

    def _payload(self, chunk: Sequence[_Item]) -> bytes:
        request = self._request(chunk)
        if self.protocol == "http/json":
            return dumps(json_node(_SCHEMA, "request", request))
        return bytes(encode_node(_SCHEMA, "request", request))

    def _sizes(self, chunk: Sequence[_Item]) -> tuple[int, list[ItemSize]]:
        """Each ``LogRecord`` alone, and the framing of its resource (``ResourceLogs`` with its
        one ``ScopeLogs``, without records)."""
        as_json = self.protocol == "http/json"
        version = _scope_version(None)
        framing: dict[Hashable, int] = {}
        out: list[ItemSize] = []
        for record, log in chunk:
            if log is None:
                out.append(((), 0))  # (left out of the request)
                continue
            key = (str(record.get("service", "")), str(record.get("environment", "")))
            cost = framing.get(key)
            if cost is None:
                resource = self.resource_for(*key)
                scope = {"name": self.scope_name, "version": version}
                cost = framing[key] = (
                    len(
                        dumps(
                            {
                                "resource": {"attributes": _kv(resource)},
                                "scopeLogs": [{"scope": scope, "logRecords": []}],
                            }
                        )
                    )
                    + 1
                    if as_json
                    else resource_framing_size(resource) + scope_framing_size(self.scope_name, version)
                )
            size = (
                len(dumps(json_node(_SCHEMA, "log_record", log))) + 1
                if as_json
                else field_size(len(encode_node(_SCHEMA, "log_record", log)))
            )
            out.append((((key, cost),), size))
        return (len(b'{"resourceLogs":[]}') if as_json else 0), out

    def __repr__(self) -> str:
        return f"OTLPLogExporter(endpoint={self.endpoint!r}, protocol={self.protocol!r})"
