"""The binary protobuf form of an OTLP ``ExportTraceServiceRequest`` (``http/protobuf``), written
directly from the opentelemetry-proto trace schema: no protobuf runtime is needed to export.

It carries what the JSON form (``otlp.encode_otlp_json``) carries, field for field, so a
collector decodes the same message from either. Field numbers, from
``opentelemetry/proto/{collector/trace,trace,resource,common}/v1/*.proto``:

    ExportTraceServiceRequest  1 resource_spans
    ResourceSpans              1 resource, 2 scope_spans
    Resource                   1 attributes
    ScopeSpans                 1 scope, 2 spans
    InstrumentationScope       1 name, 2 version
    Span                       1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name, 6 kind,
                               7 start_time_unix_nano (fixed64), 8 end_time_unix_nano (fixed64),
                               9 attributes, 10 dropped_attributes_count, 11 events,
                               12 dropped_events_count, 13 links, 14 dropped_links_count, 15 status
    Span.Event                 1 time_unix_nano (fixed64), 2 name, 3 attributes,
                               4 dropped_attributes_count
    Span.Link                  1 trace_id, 2 span_id, 3 trace_state, 4 attributes,
                               5 dropped_attributes_count
    Status                     2 message, 3 code
    KeyValue                   1 key, 2 value
    AnyValue (oneof)           1 string, 2 bool, 3 int64, 4 double, 5 array, 6 kvlist
    ArrayValue / KeyValueList  1 values
    ExportTraceServiceResponse 1 partial_success { 1 rejected_spans (int64), 2 error_message }
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pitchey_trace._json import valid_text

__all__ = [
    "MAX_ANSWER_BYTES",
    "PartialSuccess",
    "Schema",
    "any_value_proto",
    "encode_node",
    "encode_otlp_proto",
    "loggable",
    "parse_partial_success",
    "scope_of",
    "span_field_size",
    "varint_size",
]

#: A message table: message -> JSON key -> (field number, kind, nested message). Kinds: string,
#: message, messages (repeated), attributes (a mapping: repeated KeyValue), any (AnyValue),
#: hex_id (bytes written from hex), fixed64, double, bool, varint, sint32, packed_fixed64,
#: packed_double, packed_varint.
Schema = dict[str, dict[str, tuple[int, str, str]]]

_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_U64 = (1 << 64) - 1
_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_STATUS = {"unset": 0, "ok": 1, "error": 2}


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _field(number: int, payload: bytes | bytearray, out: bytearray) -> None:
    """A length-delimited field (strings, bytes, nested messages). Every field number here is
    below 16, so its tag is one byte."""
    out.append(number << 3 | 2)
    _varint(len(payload), out)
    out += payload


def _text(s: Any) -> bytes:
    text = str(s)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # protobuf strings are UTF-8: as the JSON encoding does (U+FFFD)
        return valid_text(text).encode("utf-8")


def _hex_id(value: Any) -> bytes:
    try:
        return bytes.fromhex(value) if value else b""
    except (TypeError, ValueError):
        return b""


def any_value_proto(value: Any) -> bytes:
    """The ``AnyValue`` message for a Python value, as ``otlp.any_value`` maps it in JSON (an int
    outside int64 and anything unknown as its text, bytes decoded as UTF-8, None as empty)."""
    out = bytearray()
    if isinstance(value, str):
        _field(1, _text(value), out)
    elif isinstance(value, bool):
        out += b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, int):
        if -(1 << 63) <= value < 1 << 63:
            out.append(3 << 3)
            _varint(value & _U64, out)
        else:
            _field(1, _text(value), out)
    elif isinstance(value, float):
        out.append(4 << 3 | 1)
        out += _DOUBLE(value)  # NaN and the infinities are doubles too
    elif isinstance(value, (list, tuple)):
        inner = bytearray()
        for v in value:
            _field(1, any_value_proto(v), inner)
        _field(5, inner, out)
    elif isinstance(value, Mapping):
        _field(6, _key_values(value), out)
    elif value is None:
        pass
    elif isinstance(value, bytes):
        _field(1, _text(value.decode("utf-8", "replace")), out)
    else:
        _field(1, _text(value), out)
    return bytes(out)


# Encoded KeyValue messages of scalar attributes: most pairs repeat from span to span (method,
# route, status, server address...), so each is encoded once. Bounded: cleared when full.
_KV_CACHE: dict[tuple[Any, ...], bytes] = {}
_KV_CACHE_MAX = 4096
_KV_CACHE_ITEM_MAX = 256  # bytes: the cache holds at most about 1 MB
_SCALARS = (str, int, bool)  # (not floats: 0.0 and -0.0 are equal keys)


def _key_value(k: Any, v: Any) -> bytes:
    kv = bytearray()
    _field(1, _text(k), kv)
    _field(2, any_value_proto(v), kv)
    return bytes(kv)


def _key_values(attrs: Mapping[str, Any] | None, number: int = 1) -> bytearray:
    """Repeated ``KeyValue`` fields under ``number``."""
    out = bytearray()
    if attrs:
        cache = _KV_CACHE
        for k, v in attrs.items():
            if v.__class__ in _SCALARS and k.__class__ is str:
                ck = (k, v, v.__class__)  # (True and 1 are equal keys: the class tells them apart)
                kv = cache.get(ck)
                if kv is None:
                    kv = _key_value(k, v)
                    if len(kv) <= _KV_CACHE_ITEM_MAX:  # long values rarely repeat: not kept
                        if len(cache) >= _KV_CACHE_MAX:
                            cache.clear()
                        cache[ck] = kv
            else:
                kv = _key_value(k, v)
            _field(number, kv, out)
    return out


def _span(r: Mapping[str, Any]) -> bytearray:
    out = bytearray()
    _field(1, _hex_id(r.get("trace_id")), out)
    _field(2, _hex_id(r.get("span_id")), out)
    state = r.get("trace_state")
    if state:
        _field(3, _text(state), out)
    parent = _hex_id(r.get("parent_span_id"))
    if parent:
        _field(4, parent, out)
    name = r.get("name") or ""
    if name:
        _field(5, _text(name), out)
    kind = _KIND.get(r.get("kind", ""), 0)
    if kind:
        out.append(6 << 3)
        out.append(kind)
    out.append(7 << 3 | 1)
    out += _FIXED64(int(r.get("start_time_unix_nano") or 0) & _U64)
    out.append(8 << 3 | 1)
    out += _FIXED64(int(r.get("end_time_unix_nano") or 0) & _U64)
    out += _key_values(r.get("attributes"), 9)
    dropped = len(r) != _PLAIN_KEYS  # (optional keys, e.g. what the span's limits dropped)
    if dropped:
        _uint32(10, r.get("dropped_attributes_count"), out)
    for e in r.get("events") or ():
        ev = bytearray()
        ev.append(1 << 3 | 1)
        ev += _FIXED64(int(e.get("time_unix_nano") or 0) & _U64)
        if e.get("name"):
            _field(2, _text(e["name"]), ev)
        ev += _key_values(e.get("attributes"), 3)
        if len(e) != 3:  # (an optional key: what a limit dropped of the event's attributes)
            _uint32(4, e.get("dropped_attributes_count"), ev)
        _field(11, ev, out)
    if dropped:
        _uint32(12, r.get("dropped_events_count"), out)
    for lk in r.get("links") or ():
        link = bytearray()
        _field(1, _hex_id(lk.get("trace_id")), link)
        _field(2, _hex_id(lk.get("span_id")), link)
        if lk.get("trace_state"):
            _field(3, _text(lk["trace_state"]), link)
        link += _key_values(lk.get("attributes"), 4)
        _uint32(5, lk.get("dropped_attributes_count"), link)
        _field(13, link, out)
    if dropped:
        _uint32(14, r.get("dropped_links_count"), out)
    status = bytearray()
    if r.get("status_message"):
        _field(2, _text(r["status_message"]), status)
    code = _STATUS.get(r.get("status", "unset"), 0)
    if code:
        status.append(3 << 3)
        status.append(code)
    _field(15, status, out)  # present even when empty, as the JSON form always has "status"
    return out


#: The keys of a span record the pipeline builds without optional keys (trace_state,
#: dropped_*_count, dataset); another count (also a hand-made record) checks them.
_PLAIN_KEYS = 19


def _uint32(number: int, value: Any, out: bytearray) -> None:
    """A ``dropped_*_count`` (uint32 field ``number`` of a span, event or link) from a record's
    count, when it is a positive int (capped at 2**32 - 1)."""
    if value.__class__ is int and value > 0:
        out.append(number << 3)  # (varint wire type; number < 16: a one-byte tag)
        _varint(min(value, 0xFFFFFFFF), out)


#: The span attributes that name the instrumentation scope of a span made through the
#: OpenTelemetry API (``pitchey_trace.otel``: ``get_tracer(name, version)``); OTLP carries it
#: as the span's ``InstrumentationScope``, not as attributes.
SCOPE_NAME = "otel.scope.name"
SCOPE_VERSION = "otel.scope.version"


def scope_groups(
    records: list[Mapping[str, Any]], scope_name: str, scope_version: str
) -> list[tuple[str, str, list[Mapping[str, Any]]]]:
    """``records`` (of one resource) by instrumentation scope: the exporter's own first, then
    the scopes their ``otel.scope.name`` / ``otel.scope.version`` attributes name, in order of
    first appearance (those two attributes left out of the records given back)."""
    mine: list[Mapping[str, Any]] = []
    others: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        attrs = r.get("attributes")
        name = attrs.get(SCOPE_NAME) if attrs else None
        if name.__class__ is not str:  # (the common case: no scope of its own)
            mine.append(r)
            continue
        version = attrs.get(SCOPE_VERSION)  # type: ignore[union-attr]
        key = (name, version if version.__class__ is str else "")
        rest = {k: v for k, v in attrs.items() if k != SCOPE_NAME and k != SCOPE_VERSION}  # type: ignore[union-attr]
        others.setdefault(key, []).append({**r, "attributes": rest})
    out = [(scope_name, scope_version, mine)] if mine else []
    out.extend((name, version, spans) for (name, version), spans in others.items())
    return out


def scope_of(
    record: Mapping[str, Any], scope_name: str, scope_version: str
) -> tuple[str, str, Mapping[str, Any]]:
    """The instrumentation scope of one span record as :func:`scope_groups` finds it, and the
    record as it is encoded under it (without the scope's two attributes)."""
    attrs = record.get("attributes")
    name = attrs.get(SCOPE_NAME) if attrs else None
    if name.__class__ is not str:
        return scope_name, scope_version, record
    version = attrs.get(SCOPE_VERSION)  # type: ignore[union-attr]
    rest = {k: v for k, v in attrs.items() if k != SCOPE_NAME and k != SCOPE_VERSION}  # type: ignore[union-attr]
    return name, version if version.__class__ is str else "", {**record, "attributes": rest}


def varint_size(n: int) -> int:
    """Bytes of ``n`` (>= 0) as a varint."""
    size = 1
    while n > 0x7F:
        n >>= 7
        size += 1
    return size


#: The most bytes the length of a message within a request takes (a request is at most
#: ``MAX_REQUEST_BYTES_LIMIT``, 1 GiB < 2**35, long: five varint bytes).
MAX_LENGTH_BYTES = 5


def field_size(payload_size: int) -> int:
    """Bytes of a length-delimited field (one-byte tag) holding ``payload_size`` bytes."""
    return 1 + varint_size(payload_size) + payload_size


def span_field_size(record: Mapping[str, Any]) -> int:
    """Bytes one span record adds to its ``ScopeSpans`` in the binary form (the span field
    alone: no resource or scope framing)."""
    return field_size(len(_span(record)))


def resource_framing_size(resource: Mapping[str, Any]) -> int:
    """Bytes at most that one ``ResourceSpans`` / ``ResourceLogs`` / ``ResourceMetrics`` adds
    to a request besides its scopes: its field's tag and length, and the resource."""
    return 1 + MAX_LENGTH_BYTES + field_size(len(_key_values(resource)))


def scope_framing_size(name: str, version: str) -> int:
    """Bytes at most that one ``Scope*`` message adds besides its items: its field's tag and
    length, and the ``InstrumentationScope``."""
    return 1 + MAX_LENGTH_BYTES + field_size(field_size(len(_text(name))) + field_size(len(_text(version))))


def encode_otlp_proto(
    groups: Iterable[tuple[Mapping[str, Any], list[Mapping[str, Any]]]], scope_name: str, scope_version: str
) -> bytes:
    """The request for span records already grouped by resource (``otlp.resource_groups``),
    one ``ScopeSpans`` per instrumentation scope (:func:`scope_groups`)."""
    out = bytearray()
    for res, records in groups:
        rs = bytearray()
        _field(1, _key_values(res), rs)
        for name, version, spans in scope_groups(records, scope_name, scope_version):
            scope = bytearray()
            _field(1, _text(name), scope)
            _field(2, _text(version), scope)
            scope_spans = bytearray()
            _field(1, scope, scope_spans)
            for r in spans:
                _field(2, _span(r), scope_spans)
            _field(2, scope_spans, rs)
        _field(1, rs, out)
    return bytes(out)


def _read_varint(data: bytes | memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


#: Fields read at most per message of an answer: the answers have one or two (a hostile or
#: broken one could hold a million, each cheap to skip but not free).
_MAX_FIELDS = 1000


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """(number, wire type, value) of each field of one message, the length-delimited ones as
    memoryviews (no copy); ValueError (or IndexError) when malformed or too long."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    i = count = 0
    end = len(view)
    while i < end:
        count += 1
        if count > _MAX_FIELDS:
            raise ValueError("too many fields")
        key, i = _read_varint(view, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: Any
        if wire == 0:
            value, i = _read_varint(view, i)
        elif wire == 1:
            value, i = view[i : i + 8], i + 8
        elif wire == 2:
            size, i = _read_varint(view, i)
            value, i = view[i : i + size], i + size
        elif wire == 5:
            value, i = view[i : i + 4], i + 4
        else:  # (groups: not in any OTLP message; "{" of a JSON answer is one)
            raise ValueError(f"unsupported wire type {wire}")
        if i > end:
            raise ValueError("truncated message")
        yield number, wire, value


# -- the answer: partial success --------------------------------------------------------------
# A successful answer (HTTP 200, gRPC OK) may say that the collector refused part of the
# request: ``partial_success`` (field 1 of every Export*ServiceResponse), in it the int64
# count (field 1: rejected_spans, rejected_log_records, rejected_data_points) and an
# error_message (field 2). In JSON: {"partialSuccess": {"rejectedSpans": "3", "errorMessage": ...}}
# (int64 as a string or a number; protobuf's JSON parsers accept the fields' own names too).

#: What of an answer is read at most: a partial success is a few bytes; a bigger answer is not read.
MAX_ANSWER_BYTES = 1 << 20
#: What of an error message is kept (characters).
_MAX_MESSAGE = 4096
_INT64_MAX = (1 << 63) - 1
_DECIMAL = re.compile(r"-?[0-9]{1,20}")


@dataclass(frozen=True)
class PartialSuccess:
    """What a successful answer says the collector refused: ``rejected`` items (0 when none, or
    when the count is not a valid int64 >= 0) and its ``message`` (as sent, at most 4096
    characters: see :func:`loggable` before logging it)."""

    rejected: int
    message: str


def _count(value: int) -> int:
    """A count read from an answer: a negative or out-of-range int64 counts nothing."""
    return value if 0 <= value <= _INT64_MAX else 0


def _proto_partial(body: bytes | memoryview) -> PartialSuccess | None:
    """The binary form's; ValueError or IndexError when it is not a valid message."""
    rejected, message, present = 0, "", False
    for number, wire, value in _fields(body):
        if number != 1:
            continue  # (fields this SDK does not know: skipped, as protobuf does)
        if wire != 2:
            raise ValueError("partial_success is not a message")
        present = True  # (repeated occurrences merge: the last value of each field wins)
        for inner, inner_wire, inner_value in _fields(value):
            if inner == 1:
                if inner_wire != 0:
                    raise ValueError("the count is not a varint")
                signed = inner_value - (1 << 64) if inner_value >= 1 << 63 else inner_value
                rejected = _count(signed)
            elif inner == 2:
                if inner_wire != 2:
                    raise ValueError("error_message is not a string")
                raw = bytes(inner_value[: _MAX_MESSAGE * 4])  # (UTF-8: at most 4 bytes each)
                message = raw.decode("utf-8", "replace")[:_MAX_MESSAGE]
    return PartialSuccess(rejected, message) if present else None


def _json_count(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return _count(value)
    if isinstance(value, float):
        return _count(int(value)) if math.isfinite(value) and value.is_integer() else 0
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return _count(int(value))
    return 0


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _json_partial(body: bytes | memoryview, count_key: str) -> PartialSuccess | None:
    """The JSON form's; ValueError (or RecursionError: nested too deep) when it is not a JSON
    object."""
    doc = json.loads(bytes(body))  # (the stdlib's: ints of any size, the same everywhere)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    partial = doc.get("partialSuccess", doc.get("partial_success"))
    if not isinstance(partial, dict):
        return None  # (absent, null, or not an object: nothing said)
    count = partial.get(count_key, partial.get(_snake(count_key)))
    message = partial.get("errorMessage", partial.get("error_message"))
    text = message[:_MAX_MESSAGE] if isinstance(message, str) else ""
    return PartialSuccess(_json_count(count), text)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_partial_success(
    body: bytes, content_type: str | None, count_key: str = "rejectedSpans"
) -> PartialSuccess | None:
    """The ``partial_success`` of a successful OTLP answer (``body`` as the collector sent it,
    ``content_type`` its ``Content-Type``; ``application/grpc`` for a gRPC answer), None when it
    says nothing (absent, or a count of 0 without a message) or cannot be read. ``count_key``:
    the JSON name of the count, ``rejectedSpans``, ``rejectedLogRecords`` or
    ``rejectedDataPoints`` (in protobuf it is field 1 in each).

    The content type says which encoding is read first; an answer in the other one is read too
    (a JSON object can never be read as the binary message: its "{" is a group start, which
    OTLP messages do not have), anything else is ignored. Never raises; the work is bounded
    (at most :data:`MAX_ANSWER_BYTES` read, a bounded number of fields)."""
    try:
        if not body or len(body) > MAX_ANSWER_BYTES:
            return None
        media = _media_type(content_type)
        view = memoryview(body)
        readers: tuple[str, ...]
        if media.startswith("application/grpc"):
            readers = ("proto",)  # (gRPC carries protobuf only)
        elif media == "application/json" or media.endswith("+json"):
            readers = ("json", "proto")
        elif "protobuf" in media:
            readers = ("proto", "json")
        else:  # (none or another: what the body looks like)
            readers = ("json", "proto") if body.lstrip()[:1] == b"{" else ("proto", "json")
        for reader in readers:
            try:
                partial = _json_partial(view, count_key) if reader == "json" else _proto_partial(view)
            except (ValueError, IndexError, RecursionError):
                continue  # (not this encoding)
            if partial is None or (partial.rejected == 0 and not partial.message):
                return None
            return partial
        return None
    except Exception:  # (a bug here must not fail an export that succeeded)
        return None


def loggable(message: str, limit: int = 256) -> str:
    """``message`` (from a collector) made safe for one log line: characters that are not
    printable (line breaks, other control and format characters, lone surrogates) written as
    escapes, at most about ``limit`` characters ("..." marks a cut)."""
    out: list[str] = []
    size = 0
    for ch in message:
        if size >= limit:
            out.append("...")
            break
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def encode_node(schema: Schema, message: str, node: Mapping[str, Any]) -> bytearray:
    """The binary form of ``node``, a message of ``schema`` in the OTLP JSON form's shape
    (``{json key: value}``; attributes as mappings, ids as hex, times and counts as ints)."""
    out = bytearray()
    fields = schema[message]
    for key, value in node.items():
        number, kind, nested = fields[key]
        if kind == "string":
            _field(number, _text(value), out)
        elif kind == "message":
            _field(number, encode_node(schema, nested, value), out)
        elif kind == "messages":
            for item in value:
                _field(number, encode_node(schema, nested, item), out)
        elif kind == "attributes":
            out += _key_values(value, number)
        elif kind == "any":
            _field(number, any_value_proto(value), out)
        elif kind == "hex_id":  # (the JSON form keeps the hex text, as OTLP JSON says)
            _field(number, _hex_id(value), out)
        elif kind == "fixed64":
            out.append(number << 3 | 1)
            out += _FIXED64(int(value) & _U64)
        elif kind == "fixed32":
            out.append(number << 3 | 5)
            out += _FIXED32(int(value) & 0xFFFFFFFF)
        elif kind == "double":
            out.append(number << 3 | 1)
            out += _DOUBLE(float(value))
        elif kind == "bool":
            out += bytes((number << 3, 1 if value else 0))
        elif kind in ("varint", "sint32"):
            out.append(number << 3)
            _varint(_zigzag(value) if kind == "sint32" else value, out)
        elif kind == "packed_fixed64":
            _field(number, b"".join(_FIXED64(int(v) & _U64) for v in value), out)
        elif kind == "packed_double":
            _field(number, b"".join(_DOUBLE(float(v)) for v in value), out)
        else:  # packed_varint
            packed = bytearray()
            for v in value:
                if 0 <= v < 0x80:  # (most bucket counts: one byte)
                    packed.append(v)
                else:
                    _varint(int(v), packed)
            _field(number, packed, out)
    return out
