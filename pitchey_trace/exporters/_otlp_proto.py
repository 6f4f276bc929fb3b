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
                               9 attributes, 11 events, 13 links, 15 status
    Span.Event                 1 time_unix_nano (fixed64), 2 name, 3 attributes
    Span.Link                  1 trace_id, 2 span_id, 3 trace_state, 4 attributes
    Status                     2 message, 3 code
    KeyValue                   1 key, 2 value
    AnyValue (oneof)           1 string, 2 bool, 3 int64, 4 double, 5 array, 6 kvlist
    ArrayValue / KeyValueList  1 values
    ExportTraceServiceResponse 1 partial_success { 1 rejected_spans (int64), 2 error_message }
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pitchey_trace._json import loads, valid_text

__all__ = [
    "Schema",
    "any_value_proto",
    "encode_node",
    "encode_otlp_proto",
    "partial_rejected",
    "partial_rejected_proto",
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
    for e in r.get("events") or ():
        ev = bytearray()
        ev.append(1 << 3 | 1)
        ev += _FIXED64(int(e.get("time_unix_nano") or 0) & _U64)
        if e.get("name"):
            _field(2, _text(e["name"]), ev)
        ev += _key_values(e.get("attributes"), 3)
        _field(11, ev, out)
    for lk in r.get("links") or ():
        link = bytearray()
        _field(1, _hex_id(lk.get("trace_id")), link)
        _field(2, _hex_id(lk.get("span_id")), link)
        if lk.get("trace_state"):
            _field(3, _text(lk["trace_state"]), link)
        link += _key_values(lk.get("attributes"), 4)
        _field(13, link, out)
    status = bytearray()
    if r.get("status_message"):
        _field(2, _text(r["status_message"]), status)
    code = _STATUS.get(r.get("status", "unset"), 0)
    if code:
        status.append(3 << 3)
        status.append(code)
    _field(15, status, out)  # present even when empty, as the JSON form always has "status"
    return out


def encode_otlp_proto(
    groups: Iterable[tuple[Mapping[str, Any], list[Mapping[str, Any]]]], scope_name: str, scope_version: str
) -> bytes:
    """The request for span records already grouped by resource (``otlp.resource_groups``)."""
    scope = bytearray()
    _field(1, _text(scope_name), scope)
    _field(2, _text(scope_version), scope)
    out = bytearray()
    for res, records in groups:
        scope_spans = bytearray()
        _field(1, scope, scope_spans)
        for r in records:
            _field(2, _span(r), scope_spans)
        rs = bytearray()
        _field(1, _key_values(res), rs)
        _field(2, scope_spans, rs)
        _field(1, rs, out)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
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


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(number, wire type, value) of each field of one message; ValueError when malformed."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(data):
            raise ValueError("truncated message")
        yield number, wire, value


def partial_rejected_proto(body: bytes) -> int:
    """``partial_success.rejected_spans`` of a binary ``ExportTraceServiceResponse`` (0 when
    absent or not a valid message)."""
    try:
        for number, wire, value in _fields(body):
            if number == 1 and wire == 2:
                for inner, inner_wire, count in _fields(value):
                    if inner == 1 and inner_wire == 0:
                        return int(count - (1 << 64) if count >= 1 << 63 else count)
    except (ValueError, IndexError):
        return 0
    return 0


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


def partial_rejected(body: bytes, json_key: str = "rejectedSpans") -> int:
    """``partialSuccess.rejectedSpans`` (or ``json_key``: metrics say ``rejectedDataPoints``;
    field 1 in both binary forms) of an OTLP response, JSON or binary protobuf (0 when
    absent or unreadable). A JSON object cannot be mistaken for the binary form: "{" would be a
    group start, which the response message does not have."""
    if not body:
        return 0
    if not body.lstrip().startswith(b"{"):
        return partial_rejected_proto(body)
    try:
        doc = loads(body)
        return int(doc.get("partialSuccess", {}).get(json_key, 0) or 0)
    except (ValueError, TypeError, AttributeError):
        return 0
