"""OTLPExporter: span records over OTLP/HTTP or OTLP/gRPC to any OpenTelemetry collector,
Jaeger or Tempo.

The payload is an ``ExportTraceServiceRequest``, binary protobuf by default (``http/protobuf``,
see ``_otlp_proto``; the same bytes over gRPC with ``grpc``, see ``_grpc``) or in the OTLP JSON
encoding (``http/json``): there, ``traceId`` and
``spanId`` as lowercase hex (not base64), span kind and status code as the integer values of
the proto enums, 64-bit integers as decimal strings, attributes as ``AnyValue`` objects.
Spans are grouped by their resource, then by instrumentation scope: ``pitchey_trace`` with the
SDK version, or for spans made through the OpenTelemetry API (``pitchey_trace.otel``) the
tracer's own name and version (their ``otel.scope.name`` / ``otel.scope.version`` attributes,
which are not sent as attributes then). Only ``span`` records are sent (the default
``datasets`` is ``{"traces"}``).
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pitchey_trace import _safety, _stats
from pitchey_trace._json import dumps
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import positive_int, text
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters._grpc import EXPORT_METHOD, GrpcSender
from pitchey_trace.exporters._http import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SPOOL_MAX_BYTES,
    HttpSender,
    RetryPolicy,
    SenderExporter,
    checked_max_request_bytes,
)
from pitchey_trace.exporters._otlp_proto import (
    Schema,
    encode_otlp_proto,
    resource_framing_size,
    scope_framing_size,
    scope_groups,
    scope_of,
    span_field_size,
)
from pitchey_trace.records import Record

__all__ = ["OTLPExporter", "any_value", "encode_otlp_json", "encode_otlp_protobuf", "resource_groups"]

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
PROTOCOLS = ("http/protobuf", "http/json", "grpc")
_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_STATUS = {"unset": 0, "ok": 1, "error": 2}


def any_value(value: Any) -> dict[str, Any]:
    """An OTLP JSON ``AnyValue`` for a Python value (ints as strings, as the JSON mapping says)."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        if -(1 << 63) <= value < 1 << 63:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _kv(value)}}
    if value is None:
        return {}
    if isinstance(value, bytes):
        return {"stringValue": value.decode("utf-8", "replace")}
    return {"stringValue": str(value)}


def _kv(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not attrs:
        return []
    return [{"key": str(k), "value": any_value(v)} for k, v in attrs.items()]


def _link(lk: Mapping[str, Any]) -> dict[str, Any]:
    out = {"traceId": lk["trace_id"], "spanId": lk["span_id"], "attributes": _kv(lk.get("attributes"))}
    if lk.get("trace_state"):
        out["traceState"] = str(lk["trace_state"])
    count = dropped_count(lk.get("dropped_attributes_count"))
    if count:  # (rare: a limit dropped some of the link's attributes)
        out["droppedAttributesCount"] = count
    return out


def _event(e: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        "timeUnixNano": str(e.get("time_unix_nano", 0)),
        "name": e.get("name", ""),
        "attributes": _kv(e.get("attributes")),
    }
    if len(e) != 3:  # (an optional key: what a limit dropped of the event's attributes)
        count = dropped_count(e.get("dropped_attributes_count"))
        if count:
            out["droppedAttributesCount"] = count
    return out


def _span(r: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": r["trace_id"],
        "spanId": r["span_id"],
        "name": r.get("name", ""),
        "kind": _KIND.get(r.get("kind", ""), 0),
        "startTimeUnixNano": str(r.get("start_time_unix_nano", 0)),
        "endTimeUnixNano": str(r.get("end_time_unix_nano", 0)),
        "attributes": _kv(r.get("attributes")),
    }
    state = r.get("trace_state")
    if state:
        out["traceState"] = str(state)
    parent = r.get("parent_span_id")
    if parent:
        out["parentSpanId"] = parent
    events = r.get("events")
    if events:
        out["events"] = [_event(e) for e in events]
    links = r.get("links")
    if links:
        out["links"] = [_link(lk) for lk in links]
    status: dict[str, Any] = {"code": _STATUS.get(r.get("status", "unset"), 0)}
    if r.get("status_message"):
        status["message"] = r["status_message"]
    out["status"] = status
    if len(r) != _PLAIN_KEYS:  # (optional keys, e.g. what the span's limits dropped)
        for key, name in _DROPPED:
            count = dropped_count(r.get(key))
            if count:
                out[name] = count
    return out


#: The keys of a span record the pipeline builds without optional keys (trace_state,
#: dropped_*_count, dataset); another count (also a hand-made record) checks them.
_PLAIN_KEYS = 19
_DROPPED = (
    ("dropped_attributes_count", "droppedAttributesCount"),
    ("dropped_events_count", "droppedEventsCount"),
    ("dropped_links_count", "droppedLinksCount"),
)


def dropped_count(value: Any) -> int:
    """A record's ``dropped_*_count`` as OTLP's uint32 (0 when absent or not a count)."""
    if value.__class__ is not int or value <= 0:
        return 0
    return min(value, 0xFFFFFFFF)


def json_node(schema: Schema, message: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` (a message of ``schema``, see ``_otlp_proto.encode_node``) in the OTLP JSON
    form: 64-bit integers as decimal strings, enums as their numbers, ids in hex."""
    out: dict[str, Any] = {}
    fields = schema[message]
    for key, value in node.items():
        _, kind, nested = fields[key]
        if kind == "message":
            out[key] = json_node(schema, nested, value)
        elif kind == "messages":
            out[key] = [json_node(schema, nested, item) for item in value]
        elif kind == "attributes":
            out[key] = _kv(value)
        elif kind == "any":
            out[key] = any_value(value)
        elif kind == "fixed64":
            out[key] = str(int(value))
        elif kind in ("packed_fixed64", "packed_varint"):
            out[key] = [str(int(v)) for v in value]
        else:
            out[key] = value
    return out


def _resource_of(r: Mapping[str, Any]) -> Mapping[str, Any]:
    return r.get("resource") or {"service.name": r.get("service", "unknown_service")}


def _resource_key(res: Mapping[str, Any], keys_by_id: dict[int, Any]) -> Any:
    """What tells equal resources apart (``keys_by_id``: per call, by identity)."""
    key = keys_by_id.get(id(res))
    if key is None:
        key = keys_by_id[id(res)] = tuple(sorted((k, repr(v)) for k, v in res.items()))
    return key


def resource_groups(
    records: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """The span records among ``records`` grouped by resource (equal resources together, in
    order of first appearance): one ``ResourceSpans`` each."""
    groups: dict[Any, tuple[Mapping[str, Any], list[Mapping[str, Any]]]] = {}
    keys_by_id: dict[int, Any] = {}
    for r in records:
        if r.get("type") != "span":
            continue
        res = r.get("resource") or {"service.name": r.get("service", "unknown_service")}
        key = keys_by_id.get(id(res))
        if key is None:  # (inline: the hot path; _resource_key says the same)
            key = keys_by_id[id(res)] = tuple(sorted((k, repr(v)) for k, v in res.items()))
        group = groups.get(key)
        if group is None:
            group = groups[key] = (res, [])
        group[1].append(r)
    return list(groups.values())


def _scope_version(version: str | None) -> str:
    if version is None:
        from pitchey_trace import __version__

        return __version__
    return version


def encode_otlp_json(
    records: Iterable[Mapping[str, Any]], scope_name: str = "pitchey_trace", scope_version: str | None = None
) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` (OTLP JSON) for the span records among ``records``."""
    version = _scope_version(scope_version)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _kv(res)},
                "scopeSpans": [
                    {"scope": {"name": name, "version": ver}, "spans": [_span(r) for r in group]}
                    for name, ver, group in scope_groups(spans, scope_name, version)
                ],
            }
            for res, spans in resource_groups(records)
        ]
    }


def encode_otlp_protobuf(
    records: Iterable[Mapping[str, Any]], scope_name: str = "pitchey_trace", scope_version: str | None = None
) -> bytes:
    """The same request in the binary protobuf encoding (``http/protobuf``): the message a
    collector decodes from :func:`encode_otlp_json`'s output, field for field."""
    return encode_otlp_proto(resource_groups(records), scope_name, _scope_version(scope_version))


def _otlp_env(setting: str, signal: str = "TRACES") -> str | None:
    """``OTEL_EXPORTER_OTLP_<signal>_<setting>``, else ``OTEL_EXPORTER_OTLP_<setting>`` (the
    signal-specific variable wins, as the OTLP exporter specification says); None when neither
    is set to something."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"):
        value = os.environ.get(name)
        if value and value.strip():
            return value
    return None


def _env_headers(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def _resolve_grpc_endpoint(endpoint: str | None, signal: str = "TRACES") -> str:
    """gRPC: the endpoint as given (a path means nothing to gRPC); without a scheme,
    ``OTEL_EXPORTER_OTLP_[<signal>_]INSECURE`` chooses plaintext over TLS, as the spec says."""
    if endpoint is None:
        endpoint = _otlp_env("ENDPOINT", signal) or DEFAULT_GRPC_ENDPOINT
    if "://" not in endpoint:
        insecure = (_otlp_env("INSECURE", signal) or "").strip().lower()
        if insecure not in ("", "true", "false"):  # (false, as the spec says; a typo is said once)
            _safety.warn_once(
                "env.OTEL_EXPORTER_OTLP_INSECURE",
                "pitchey_trace: OTEL_EXPORTER_OTLP_[%s_]INSECURE=%r is not true or false; TLS is used",
                signal,
                insecure,
            )
        endpoint = ("http://" if insecure == "true" else "https://") + endpoint
    return endpoint


def _resolve_endpoint(endpoint: str | None, signal: str = "TRACES") -> str:
    path = f"/v1/{signal.lower()}"
    if endpoint is None:
        endpoint = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        if endpoint:
            return endpoint
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return _with_path(base, path) if base else f"http://localhost:4318{path}"
    if urlsplit(endpoint).path in ("", "/"):
        return _with_path(endpoint, path)
    return endpoint


def _with_path(base: str, path: str) -> str:
    """``base`` with the signal's path appended to its own path, before any query or fragment
    (``https://h:4318?token=x`` is ``https://h:4318/v1/traces?token=x``)."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def otlp_sender(
    signal: str,
    counter: str,
    grpc_method: str,
    endpoint: str | None,
    *,
    headers: Mapping[str, str] | None,
    compression: str | None,
    timeout_s: float | None,
    retry: RetryPolicy | None,
    protocol: str | None,
    certificate_file: str | None,
    client_certificate_file: str | None,
    client_key_file: str | None,
) -> tuple[HttpSender | GrpcSender, str]:
    """The sender and protocol of an OTLP exporter for ``signal`` (``TRACES``, ``METRICS``):
    each setting from its argument, else ``OTEL_EXPORTER_OTLP_<signal>_*``, else
    ``OTEL_EXPORTER_OTLP_*``, else the specification's default. Raises ConfigurationError."""
    if protocol is None:
        protocol = _otlp_env("PROTOCOL", signal) or "http/protobuf"
    protocol = str(protocol).strip().lower()
    if protocol not in PROTOCOLS:
        raise ConfigurationError(f"protocol must be 'http/protobuf', 'http/json' or 'grpc', got {protocol!r}")
    if compression == "default":
        compression = (_otlp_env("COMPRESSION", signal) or "gzip").strip().lower()
    if compression not in ("gzip", "none", None):
        raise ConfigurationError(f"compression must be 'gzip' or None, got {compression!r}")
    if timeout_s is None:
        env_timeout = _otlp_env("TIMEOUT", signal)
        try:
            timeout_s = float(env_timeout) / 1000.0 if env_timeout else 10.0
        except ValueError:
            raise ConfigurationError(
                f"OTEL_EXPORTER_OTLP_[{signal}_]TIMEOUT must be milliseconds, got {env_timeout!r}"
            ) from None
    if headers is None:
        headers = _env_headers(_otlp_env("HEADERS", signal))
    if certificate_file is None:
        certificate_file = _otlp_env("CERTIFICATE", signal)
    if client_certificate_file is None and client_key_file is None:
        client_certificate_file = _otlp_env("CLIENT_CERTIFICATE", signal)
        client_key_file = _otlp_env("CLIENT_KEY", signal)
    if retry is None:
        retry = RetryPolicy(retry_statuses=frozenset({429, 502, 503, 504}))
    if protocol == "grpc":
        if endpoint is not None and not isinstance(endpoint, str):
            raise TypeError(f"endpoint must be a URL (str) or None, got {endpoint!r}")
        grpc_sender = GrpcSender(
            _resolve_grpc_endpoint(endpoint, signal),
            counter=counter,
            method=grpc_method,
            headers=headers,
            timeout_s=timeout_s,
            compress=compression == "gzip",
            retry=retry,
            ca_file=certificate_file,
            client_cert_file=client_certificate_file,
            client_key_file=client_key_file,
        )
        return grpc_sender, protocol
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a URL (str) or None, got {endpoint!r}")
    http_sender = HttpSender(
        _resolve_endpoint(endpoint, signal),
        counter=counter,
        headers=headers,  # checked there (header_map)
        timeout_s=timeout_s,
        compress=compression == "gzip",
        retry=retry,
        content_type="application/x-protobuf" if protocol == "http/protobuf" else "application/json",
        ca_file=certificate_file,
        client_cert_file=client_certificate_file,
        client_key_file=client_key_file,
    )
    return http_sender, protocol


class ResourceBound:
    """For exporters of records that name only their service and environment (rollups, audit
    records): the process's resource, which the pipeline tells them as it starts."""

    _resource: Mapping[str, Any] = MappingProxyType({})

    def bind_resource(self, resource: Mapping[str, Any]) -> None:
        """Called by the pipeline as it starts: the process's resource (``service.instance.id``
        tells the processes of one service apart)."""
        self._resource = dict(resource)

    def resource_for(self, service: str, environment: str) -> dict[str, Any]:
        """The resource of records of ``service`` / ``environment`` from this process."""
        return {**self._resource, "service.name": service, "deployment.environment.name": environment}


#: What one item of a request costs, as :meth:`PackedOTLP._sizes` measures it: the framing
#: groups it belongs to (resource, scope: a key and the bytes the group adds to a request at
#: most, once per request), and its own bytes.
ItemSize = tuple[tuple[tuple[Hashable, int], ...], int]


class PackedOTLP(SenderExporter, abc.ABC):
    """The byte cap (``max_request_bytes``) of the OTLP exporters, whose requests group their
    items (spans, log records) by resource and scope: each item is measured alone, without
    that framing, and the framing of each group is added once per request that holds some of
    its items, so packs come out close to the cap (``SenderExporter._fit`` measures each item
    as a whole request, framing included, which leaves packs far under it)."""

    @abc.abstractmethod
    def _sizes(self, chunk: Sequence[Any]) -> tuple[int, list[ItemSize]]:
        """The bytes of an empty request, and what each item of ``chunk`` costs (upper bounds:
        a pack within the cap by these sizes is within it encoded). Each exporter defines it."""

    def _fit(
        self, chunk: Sequence[Any], payload: bytes, cap: int, body: Callable[[Sequence[Any]], bytes]
    ) -> tuple[list[tuple[Sequence[Any], bytes]], int]:
        """``chunk`` (whose ``payload`` is over ``cap`` bytes) as requests of at most ``cap``
        bytes each, in order, and the number of items left out: those whose request alone is
        over the cap (counted in ``<counter>.too_large``, warned about). Items are packed
        greedily by :meth:`_sizes`; a pack whose encoding is over the cap all the same (an
        estimate that missed) is halved until it fits, as ``SenderExporter._fit`` does."""
        base, sizes = self._sizes(chunk)
        out: list[tuple[Sequence[Any], bytes]] = []
        lost = 0
        pack: list[Any] = []
        seen: set[Hashable] = set()
        total = base
        for item, (groups, size) in zip(chunk, sizes, strict=True):
            alone = size + sum(cost for _, cost in groups)
            if base + alone > cap and len(body([item])) > cap:  # (over by the bounds: measured)
                lost += 1
                continue
            extra = size + sum(cost for key, cost in groups if key not in seen)
            if pack and total + extra > cap:
                self._halve_into(out, pack, cap, body)
                pack, total = [], base
                seen.clear()
                extra = alone
            pack.append(item)
            total += extra
            seen.update(key for key, _ in groups)
        if pack:
            self._halve_into(out, pack, cap, body)
        self._note_too_large(lost, cap, len(payload))
        return out, lost


class OTLPExporter(PackedOTLP):
    """Send span records to an OTLP endpoint: HTTP with binary protobuf (default) or JSON, or gRPC.

    Args:
        endpoint: full URL (``http://collector:4318/v1/traces``); a URL without a path gets
            ``/v1/traces``. Default: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``, else ``http://localhost:4318/v1/traces``.
        headers: extra headers (default: ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``, ``k=v,k2=v2``).
        compression: ``"gzip"`` or ``None`` (default: ``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``,
            else gzip).
        timeout_s: per socket operation (default: ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`` ms, else
            10 s). For every setting the ``TRACES_`` variable wins over the general one.
        retry: retry policy (429/502/503/504 and connection errors are retried; ``Retry-After``
            honoured).
        max_spans_per_request: spans per POST (default 512).
        protocol: ``"http/protobuf"``, ``"http/json"`` or ``"grpc"`` (default:
            ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
            ``http/protobuf``, the OTLP default, which every OTLP/HTTP receiver accepts; JSON is
            optional for them). ``grpc`` needs the ``otlp-grpc`` extra (grpcio); its endpoint
            is ``http(s)://host:port`` (default ``http://localhost:4317``).
        certificate_file: PEM certificates to trust for ``https`` instead of the system's roots
            (a private CA; default: ``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE``, else
            ``OTEL_EXPORTER_OTLP_CERTIFICATE``).
        client_certificate_file / client_key_file: the PEM certificate (chain) and unencrypted
            key this client presents when the collector requires mutual TLS; both or neither,
            checked to belong together (default: ``OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE``
            and ``..._CLIENT_KEY``).
        spool_dir: a directory of this exporter's own where requests that could not be
            delivered (endpoint down or failing after the retries; not ones it refused) are
            kept and sent again, oldest first, once it answers, also by the next process that
            opens the directory after a crash. None (default): such requests are given up.
        spool_max_bytes: what the spool keeps at most (default 256 MiB; the oldest go first).
        max_request_bytes: a request's bytes at most (its protobuf or JSON, before gzip;
            default 4 MiB, gRPC's default message limit): a batch whose encoding is larger goes
            as several requests; a span whose request alone is larger is dropped
            (``dropped.request_too_large[.<name>]``, ``otlp.too_large``).

    Counters: ``otlp.spans``, ``otlp.requests``, ``otlp.retried``, ``otlp.failed``,
    ``otlp.too_large``, ``otlp.rejected`` (whole batches), ``otlp.partial_rejected`` (spans the
    collector refused), ``otlp.partial_warning``. A successful answer may say the collector
    refused some spans (OTLP partial success): the request is not sent again; those spans are counted in
    ``dropped.rejected`` and ``dropped.rejected.<name>`` instead of ``exported``, and the
    collector's message is logged (at most once a minute). A message alone is a warning,
    logged the same way.
    """

    _partial = ("rejectedSpans", "spans")

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        compression: str | None = "default",
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        datasets: Iterable[str] | None = ("traces",),
        max_spans_per_request: int = 512,
        scope_name: str = "pitchey_trace",
        name: str = "otlp",
        protocol: str | None = None,
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        positive_int("max_spans_per_request", max_spans_per_request)
        text("scope_name", scope_name)
        text("name", name)
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.max_spans_per_request = self._items_per_request = max_spans_per_request
        self.max_request_bytes = self._max_request_bytes = checked_max_request_bytes(max_request_bytes)
        self.scope_name = scope_name
        self._sender, self.protocol = otlp_sender(
            "TRACES",
            "otlp",
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
        self._init_spool(spool_dir, spool_max_bytes, "otlp.spans")

    @property
    def endpoint(self) -> str:
        """The resolved endpoint: the ``/v1/traces`` URL, or the gRPC target's URL."""
        return self._sender.url

    def export(self, batch: Sequence[Record]) -> bool | _stats.PartlyRejected:
        """POST the span records of ``batch``; False if a chunk was given up. When the collector
        refused some spans of an accepted request (partial success): their number, as a
        ``PartlyRejected`` (the export worker counts the rest as exported)."""
        spans = [r for r in batch if r.get("type") == "span"]
        if len(spans) != len(batch):
            _stats.incr("otlp.skipped", len(batch) - len(spans))
        return self._post_in_chunks(spans, self.max_spans_per_request, self._payload, "otlp.spans")

    def _payload(self, chunk: Sequence[Record]) -> bytes:
        if self.protocol == "http/json":
            return dumps(encode_otlp_json(chunk, self.scope_name))
        return encode_otlp_protobuf(chunk, self.scope_name)

    def _sizes(self, chunk: Sequence[Record]) -> tuple[int, list[ItemSize]]:
        """Each span alone (its ``Span`` message, or its JSON object and a comma), and the
        framing of its resource and scope (``ResourceSpans`` / ``ScopeSpans`` without spans)."""
        version = _scope_version(None)
        as_json = self.protocol == "http/json"
        keys_by_id: dict[int, Any] = {}
        framing: dict[Hashable, int] = {}
        out: list[ItemSize] = []
        for r in chunk:
            res = _resource_of(r)
            res_key = _resource_key(res, keys_by_id)
            name, ver, encoded = scope_of(r, self.scope_name, version)
            scope_key = (res_key, name, ver)
            if res_key not in framing:
                framing[res_key] = (
                    len(dumps({"resource": {"attributes": _kv(res)}, "scopeSpans": []})) + 1
                    if as_json
                    else resource_framing_size(res)
                )
            if scope_key not in framing:
                framing[scope_key] = (
                    len(dumps({"scope": {"name": name, "version": ver}, "spans": []})) + 1
                    if as_json
                    else scope_framing_size(name, ver)
                )
            size = len(dumps(_span(encoded))) + 1 if as_json else span_field_size(encoded)
            out.append((((res_key, framing[res_key]), (scope_key, framing[scope_key])), size))
        return (len(b'{"resourceSpans":[]}') if as_json else 0), out

    def __repr__(self) -> str:
        return f"OTLPExporter(endpoint={self.endpoint!r}, protocol={self.protocol!r})"
