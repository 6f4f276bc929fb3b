"""Context propagation: W3C Trace Context (Level 2), W3C Baggage and, opt-in, Zipkin B3.

    headers = {}
    pt.inject(headers)                  # traceparent, tracestate (if any), baggage (if any)
    ctx = pt.extract(request_headers)   # TraceContext, or None on absent/malformed input
    with pt.span("GET /x", kind=pt.SpanKind.SERVER, context=ctx): ...

Carriers: plain dicts (read case-insensitively), any mutable mapping, WSGI environs
(``HTTP_TRACEPARENT``), ASGI header lists (``[(b"name", b"value"), ...]``) and scopes,
``email.message.Message`` / ``http.client.HTTPMessage`` (``get_all``), multi-dicts
(``getlist`` / ``get_list`` / ``getall``), or any carrier with your own getter/setter.

Rules (see docs/propagation.md for the full list and the spec sections):

* Malformed input never raises: :func:`extract` returns None (a new trace starts) and only
  the SDK's own bugs are reported through :mod:`pitchey_trace._safety`.
* A duplicated ``traceparent`` with different values, or a comma-joined one, is ambiguous:
  None. Without a valid ``traceparent``, ``tracestate`` and ``baggage`` are not honoured.
* ``tracestate`` is all-or-nothing: one invalid member, or more than 32 members, discards
  the whole header; duplicated keys keep their first occurrence.
* The hot path (traceparent, cached tracestate/baggage) uses str methods only, no regex.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._ids import FLAG_RANDOM, FLAG_SAMPLED
from pitchey_trace._span import INVALID_SPAN, SUPPRESSED, AnySpan, NonRecordingSpan, TraceContext

__all__ = [
    "BAGGAGE_HEADER",
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_MEMBERS",
    "MAX_TRACESTATE_MEMBERS",
    "OWN_TRACESTATE_KEY",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TRACESTATE_MAX_LENGTH",
    "B3Propagator",
    "BaggagePropagator",
    "BaggageScope",
    "CompositePropagator",
    "Propagator",
    "TraceContextPropagator",
    "W3CPropagator",
    "baggage_entries",
    "extract",
    "format_baggage",
    "format_traceparent",
    "format_tracestate",
    "get_baggage",
    "get_propagators",
    "inject",
    "parse_baggage",
    "parse_traceparent",
    "parse_tracestate",
    "propagators_from_names",
    "set_baggage",
    "set_propagators",
    "tracestate_with",
    "tracestate_without",
    "with_baggage",
]

TraceState = tuple[tuple[str, str], ...]
Baggage = tuple[tuple[str, str], ...]
ContextLike = TraceContext | AnySpan
#: ``read(name)``: every value of header ``name`` (lowercase) in the carrier, in order.
Reader = Callable[[str], list[str]]
#: ``write(name, value)``: set header ``name`` (lowercase) in the carrier.
Writer = Callable[[str, str], None]

TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
BAGGAGE_HEADER = "baggage"
#: The tracestate key pitchey-trace writes its own entry under (see :func:`tracestate_with`).
OWN_TRACESTATE_KEY = "pitchey"
#: W3C Trace Context: at most 32 list-members.
MAX_TRACESTATE_MEMBERS = 32
#: Longest combined ``tracestate`` we send. The spec asks for at least 512 characters; a full
#: 32-member list can reach ~16 KB, more than many servers accept in one header line, so
#: longer lists are trimmed by the spec's rule (entries over 128 chars first, then from the end).
TRACESTATE_MAX_LENGTH = 4096
#: W3C Baggage: at most 180 list-members (the grammar's bound; the spec asks for >= 64) ...
MAX_BAGGAGE_MEMBERS = 180
#: ... and at most 8192 bytes in the header. Members past either limit are ignored whole.
MAX_BAGGAGE_BYTES = 8192

_KNOWN_FLAGS = FLAG_SAMPLED | FLAG_RANDOM
# Headers longer than this are never cached (bounds the caches' memory to well under 1 MB).
_CACHE_MAX_INPUT = 1024
# Beyond this a tracestate header is prohibitively large (32 full members are ~16.4 KB).
_TRACESTATE_MAX_INPUT = 32 * 1024

_LOWER_HEX = "0123456789abcdef"
_DEL_HEX = str.maketrans("", "", _LOWER_HEX)
_LCALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_DEL_KEYCHARS = str.maketrans("", "", _LCALNUM + "_-*/@")
# tracestate value: printable ASCII except "," and "=".
_DEL_TS_VALUE = str.maketrans("", "", "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",="))
# RFC 7230 token characters (baggage keys).
_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEL_TCHAR = str.maketrans("", "", _TCHAR)
# baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
_BAGGAGE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
_DEL_BAGGAGE_OCTET = str.maketrans("", "", _BAGGAGE_OCTETS)
# What we leave unencoded when sending a value: every baggage-octet except "%" (kept reversible).
_BAGGAGE_SAFE = _BAGGAGE_OCTETS.replace("%", "")

_cv_get = CURRENT.get

# TraceContext validates in __init__; extract already validated everything, so it fills the
# slots directly (half the cost). test_propagation checks the result equals the constructor's.
_tc_new = object.__new__
_tc_set_trace_id = TraceContext.trace_id.__set__  # type: ignore[attr-defined,misc]
_tc_set_span_id = TraceContext.span_id.__set__  # type: ignore[attr-defined,misc]
_tc_set_flags = TraceContext.trace_flags.__set__  # type: ignore[attr-defined,misc]
_tc_set_state = TraceContext.trace_state.__set__  # type: ignore[attr-defined,misc]
_tc_set_baggage = TraceContext.baggage.__set__  # type: ignore[attr-defined,misc]
_tc_set_remote = TraceContext.is_remote.__set__  # type: ignore[attr-defined,misc]


def _remote_context(
    trace_id: int, span_id: int, flags: int, state: TraceState, baggage: Baggage
) -> TraceContext:
    ctx: TraceContext = _tc_new(TraceContext)
    _tc_set_trace_id(ctx, trace_id)
    _tc_set_span_id(ctx, span_id)
    _tc_set_flags(ctx, flags)
    _tc_set_state(ctx, state)
    _tc_set_baggage(ctx, baggage)
    _tc_set_remote(ctx, True)
    return ctx


# ---------------------------------------------------------------------------------------------
# traceparent
# ---------------------------------------------------------------------------------------------
# "00".."ff" (lowercase only) -> the flags we keep. Level 2 defines sampled (0x01) and random
# (0x02); other bits are reserved and "MUST" be sent as zero, so they are dropped here.
_FLAGS: dict[str, int] = {f"{i:02x}": i & _KNOWN_FLAGS for i in range(256)}
_FLAG_HEX: tuple[str, ...] = tuple(f"{i:02x}" for i in range(256))
_unhex = binascii.unhexlify  # strict: only hex digits, no whitespace, "_", sign or "0x"
_HexError = binascii.Error
_from_bytes = int.from_bytes


def _parse_ids(value: str) -> tuple[int, int, int] | None:
    """(trace_id, span_id, known flags) from a traceparent value, or None. Raises only on
    non-str input (callers guard)."""
    if len(value) == 55 and value[0] == "0" and value[1] == "0" and value[2] == "-":
        return _parse_00(value)
    return _parse_ids_other(value)


def _parse_00(value: str) -> tuple[int, int, int] | None:
    """A 55-character value whose first three characters are "00-"."""
    if value[35] != "-" or value[52] != "-" or not value.isascii() or value.lower() != value:
        return None  # HEXDIGLC: lowercase only (lower() of ASCII is faster than islower())
    flags = _FLAGS.get(value[53:])
    if flags is None:
        return None
    try:
        trace_id = _from_bytes(_unhex(value[3:35]), "big")
        span_id = _from_bytes(_unhex(value[36:52]), "big")
    except _HexError:
        return None
    if not trace_id or not span_id:
        return None  # all-zero ids are invalid
    return trace_id, span_id, flags


def _parse_ids_other(value: str) -> tuple[int, int, int] | None:
    """Everything but a bare 55-character version-00 value: OWS, higher versions, garbage."""
    stripped = value.strip(" \t")  # OWS around a field value is not part of it (RFC 9110)
    if len(stripped) < 55 or stripped[2] != "-":
        return None
    version = stripped[:2]
    if version == "00":
        return _parse_00(stripped) if len(stripped) == 55 else None  # 00: exactly 55 chars
    # Trace Context §"Versioning of traceparent": a higher version is parsed with the 00
    # layout; after the first 55 characters the next one must be "-"; "ff" is invalid.
    if version == "ff" or version.translate(_DEL_HEX):
        return None
    if len(stripped) > 55 and stripped[55] != "-":
        return None
    return _parse_00("00" + stripped[2:55])


def parse_traceparent(value: str, tracestate: str | None = None) -> TraceContext | None:
    """Parse a ``traceparent`` value (and an optional ``tracestate``) into a remote
    :class:`~pitchey_trace.TraceContext`; None when it is invalid. Never raises.

    W3C Trace Context Level 2: lowercase hex only, version ``ff`` invalid, version ``00``
    exactly 55 characters, higher versions parsed by the forward-compatibility rules, all-zero
    ids invalid, unknown flag bits dropped. An invalid ``tracestate`` is dropped (empty), it
    never invalidates the ``traceparent``.
    """
    try:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        if not isinstance(value, str):
            return None
        ids = _parse_ids(value)
        if ids is None:
            return None
        state = parse_tracestate(tracestate) if tracestate else ()
        return _remote_context(ids[0], ids[1], ids[2], state, ())
    except Exception as exc:
        _safety.report("propagation.parse", exc)
        return None


def format_traceparent(context: ContextLike) -> str:
    """The version-00 ``traceparent`` for a context or span (unknown flag bits cleared)."""
    return (
        f"00-{context.trace_id.to_bytes(16, 'big').hex()}-{context.span_id.to_bytes(8, 'big').hex()}"
        f"-{_FLAG_HEX[context.trace_flags & _KNOWN_FLAGS]}"
    )


# ---------------------------------------------------------------------------------------------
# tracestate
# ---------------------------------------------------------------------------------------------
def _valid_ts_key(key: str) -> bool:
    # key = ( lcalpha / DIGIT ) 0*255( keychar ); keychar = lcalpha / DIGIT / _ - * / @
    return 0 < len(key) <= 256 and key[0] in _LCALNUM and not key.translate(_DEL_KEYCHARS)


def _valid_ts_value(value: str) -> bool:
    # value = 0*255(chr) nblk-chr: 1..256 printable ASCII but "," "=", not ending in a space.
    return 0 < len(value) <= 256 and value[-1] != " " and not value.translate(_DEL_TS_VALUE)


def _parse_tracestate(header: str) -> TraceState | None:
    if len(header) > _TRACESTATE_MAX_INPUT:
        return None
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    count = 0
    for raw in header.split(","):
        member = raw.strip(" \t")
        if not member:
            continue  # empty and whitespace-only members are allowed
        key, sep, value = member.partition("=")
        if not sep or not _valid_ts_key(key) or not _valid_ts_value(value):
            return None
        count += 1
        if count > MAX_TRACESTATE_MEMBERS:
            return None
        if key in seen:
            continue  # duplicated key: keep the first (the spec allows keeping or dropping)
        seen.add(key)
        members.append((key, value))
    return tuple(members)


_parse_tracestate_cached = functools.lru_cache(maxsize=512)(_parse_tracestate)


def parse_tracestate(header: str | Iterable[str] | None) -> TraceState:
    """Parse a ``tracestate`` value (or several header lines, combined in order) into
    ``((key, value), ...)``. Invalid input gives ``()``: the whole header is discarded when a
    member is malformed or there are more than 32 members. Never raises."""
    try:
        if header.__class__ is not str:
            header = _header_text(header)
        if not header:
            return ()
        parsed = (
            _parse_tracestate_cached(header) if len(header) <= _CACHE_MAX_INPUT else _parse_tracestate(header)
        )
        return parsed if parsed is not None else ()
    except Exception as exc:
        _safety.report("propagation.parse", exc)
        return ()


def _format_tracestate(state: TraceState) -> str:
    items = [f"{k}={v}" for k, v in state]
    total = sum(len(i) for i in items) + len(items) - 1
    if total <= TRACESTATE_MAX_LENGTH:
        return ",".join(items)
    # Trace Context §"tracestate Limits": drop whole entries, those over 128 chars first
    # (right-most first, and only until it fits: dropping every long one could leave
    # nothing), then from the end.
    kept = list(items)
    for i in range(len(kept) - 1, -1, -1):
        if total <= TRACESTATE_MAX_LENGTH:
            break
        if len(kept[i]) > 128:
            total -= len(kept.pop(i)) + 1
    while kept and total > TRACESTATE_MAX_LENGTH:
        total -= len(kept.pop()) + 1
    return ",".join(kept)


_format_tracestate_cached = functools.lru_cache(maxsize=512)(_format_tracestate)


def _pairs(members: Iterable[Any]) -> tuple[tuple[Any, Any], ...]:
    """The 2-item tuples/lists of ``members`` as tuples (hashable for the caches); anything
    else (a bare string, None, a 3-item tuple) is not a member and is left out."""
    return tuple((m[0], m[1]) for m in members if isinstance(m, (tuple, list)) and len(m) == 2)


def format_tracestate(state: TraceState) -> str:
    """The ``tracestate`` header value for ``((key, value), ...)`` (``""`` when empty).
    Lists longer than :data:`TRACESTATE_MAX_LENGTH` are trimmed by the spec's rule."""
    if not state:
        return ""
    try:
        return _format_tracestate_cached(state)
    except TypeError:  # a list (of lists): unhashable for the cache
        pass
    try:
        return _format_tracestate(_pairs(state))
    except TypeError:  # not a sequence of pairs at all
        _safety.warn_once("tracestate_invalid", "format_tracestate: not (key, value) pairs: %s", type(state))
        return ""


def tracestate_with(state: TraceState, key: str, value: str) -> TraceState:
    """A new tracestate with ``key=value`` first (a modified key moves to the front, as the
    spec requires) and at most 32 members (the right-most are dropped).

    Raises ``ValueError`` for a key or value outside the W3C grammar (a programming error).
    """
    if not isinstance(key, str) or not _valid_ts_key(key):
        raise ValueError(f"invalid tracestate key {key!r}")
    if not isinstance(value, str) or not _valid_ts_value(value):
        raise ValueError(f"invalid tracestate value {value!r}")
    rest = [m for m in state if m[0] != key]
    return ((key, value), *rest[: MAX_TRACESTATE_MEMBERS - 1])


def tracestate_without(state: TraceState, key: str) -> TraceState:
    """A new tracestate without ``key`` (order of the others preserved)."""
    return tuple(m for m in state if m[0] != key)


# ---------------------------------------------------------------------------------------------
# baggage
# ---------------------------------------------------------------------------------------------
def _valid_baggage_key(key: str) -> bool:
    return bool(key) and not key.translate(_DEL_TCHAR)


def _parse_baggage(header: str) -> Baggage:
    if len(header) > MAX_BAGGAGE_BYTES:
        # Only whole members within the byte limit count; a cut member is ignored.
        cut = header.rfind(",", 0, MAX_BAGGAGE_BYTES + 1)
        header = header[:cut] if cut > 0 else ""
    entries: dict[str, str] = {}
    for raw in header.split(","):
        member = raw.split(";", 1)[0]  # properties after ";" are tolerated and not kept
        key, sep, value = member.partition("=")
        if not sep:
            continue
        key = key.strip(" \t")
        value = value.strip(" \t")
        if not _valid_baggage_key(key) or value.translate(_DEL_BAGGAGE_OCTET):
            continue  # an invalid member is skipped, the others stay
        if "%" in value:
            # W3C Baggage §value: octets that are not UTF-8 MUST become U+FFFD (the member stays).
            value = unquote(value, errors="replace")
        if key not in entries and len(entries) >= MAX_BAGGAGE_MEMBERS:
            break
        entries[key] = value  # a repeated key: the last value wins
    return tuple(entries.items())


_parse_baggage_cached = functools.lru_cache(maxsize=256)(_parse_baggage)


def parse_baggage(header: str | Iterable[str] | None) -> Baggage:
    """Parse a W3C ``baggage`` value (or several header lines) into ``((key, value), ...)``
    with values percent-decoded. Invalid members are skipped; members past 180 or past
    8192 bytes are ignored. Never raises."""
    try:
        if header.__class__ is not str:
            header = _header_text(header)
        if not header:
            return ()
        return _parse_baggage_cached(header) if len(header) <= _CACHE_MAX_INPUT else _parse_baggage(header)
    except Exception as exc:
        _safety.report("propagation.parse", exc)
        return ()


def _format_baggage(baggage: Baggage) -> str:
    parts: list[str] = []
    size = -1
    for member in baggage:
        if not isinstance(member, (tuple, list)) or len(member) != 2:
            continue  # not a (key, value) pair: a bare "ab" would otherwise send a=b
        key, value = member
        if not isinstance(key, str) or not _valid_baggage_key(key):
            continue
        if value is None or isinstance(value, (bytes, bytearray, list, tuple, dict, set)):
            # not text: its repr would be sent
            _safety.warn_once("baggage_invalid", "baggage value for %r is not text: not sent", key)
            continue
        try:
            text = str.__str__(value) if isinstance(value, str) else str(value)  # no subclass __str__
            item = f"{key}={quote(text, safe=_BAGGAGE_SAFE)}"
        except Exception:  # not UTF-8 encodable (a lone surrogate), or str() failed: skip it alone
            _safety.warn_once("baggage_invalid", "baggage value for %r cannot be encoded: not sent", key)
            continue
        if size + 1 + len(item) > MAX_BAGGAGE_BYTES:
            continue  # too big to fit: skip it whole, smaller ones may still fit
        size += 1 + len(item)
        parts.append(item)
        if len(parts) >= MAX_BAGGAGE_MEMBERS:
            break
    return ",".join(parts)


_format_baggage_cached = functools.lru_cache(maxsize=256)(_format_baggage)


def format_baggage(baggage: Baggage | Mapping[str, str]) -> str:
    """The ``baggage`` header value (values percent-encoded, limits applied; ``""`` if empty)."""
    try:
        if isinstance(baggage, Mapping):
            baggage = tuple(baggage.items())
        if not baggage:
            return ""
        return _baggage_header(tuple(baggage))
    except TypeError:  # not iterable: a public helper never raises
        _safety.warn_once("baggage_invalid", "format_baggage: not (key, value) pairs: %s", type(baggage))
        return ""


def _baggage_header(baggage: Baggage) -> str:
    try:
        return _format_baggage_cached(baggage)
    except TypeError:  # members given as lists, or a list value: unhashable for the cache
        return _format_baggage(_pairs(baggage))


def _context_or_current(context: ContextLike | None) -> ContextLike | None:
    if context is not None:
        return context
    cur = _cv_get()
    return None if cur is SUPPRESSED else cur


def get_baggage(key: str, context: ContextLike | None = None) -> str | None:
    """The baggage value for ``key`` in ``context`` (default: the current span), or None."""
    ctx = _context_or_current(context)
    if ctx is None:
        return None
    for k, v in ctx.baggage:
        if k == key:
            return v
    return None


def baggage_entries(context: ContextLike | None = None) -> dict[str, str]:
    """Every baggage entry of ``context`` (default: the current span) as a new dict."""
    ctx = _context_or_current(context)
    return dict(ctx.baggage) if ctx is not None else {}


def _forward(field: str) -> Any:
    return property(lambda self: getattr(self._span, field), doc=f"The underlying span's ``{field}``.")


class BaggageScope(NonRecordingSpan):
    """The current span, seen with other baggage; returned by :func:`set_baggage`.

    Use it as a context manager: inside the block it is the current span, so spans started
    there and :func:`inject` carry the new baggage. Recording calls (``set_attribute``,
    ``add_event``, ``end``, ...) and any other attribute go to the span it stands for, so
    ``pt.current_span()`` keeps working as before.
    """

    __slots__ = ("_inert", "_span")

    def __init__(self, span: AnySpan, baggage: Baggage, inert: bool = False) -> None:
        if isinstance(span, BaggageScope):
            span = span._span
        super().__init__(
            span.trace_id, span.span_id, span.trace_flags, span.trace_state, baggage, span.is_remote
        )
        self._span: AnySpan = span
        self._inert = inert

    # Read-only span fields come from the underlying span (NonRecordingSpan has inert ones).
    name = _forward("name")
    kind = _forward("kind")
    status = _forward("status")
    status_message = _forward("status_message")
    parent_span_id = _forward("parent_span_id")
    start_ns = _forward("start_ns")
    end_ns = _forward("end_ns")
    duration_ns = _forward("duration_ns")
    attributes = _forward("attributes")

    @property
    def wrapped(self) -> AnySpan:
        """The span this scope stands for."""
        return self._span

    @property
    def is_recording(self) -> bool:  # type: ignore[override]
        """Whether the underlying span records."""
        return bool(self._span.is_recording)

    def __enter__(self) -> BaggageScope:
        if not self._inert:
            super().__enter__()
        return self

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the scope itself lacks (name, attributes, kind, ...).
        if name == "_span":
            raise AttributeError(name)
        return getattr(self._span, name)

    def __repr__(self) -> str:
        return f"BaggageScope({self._span!r}, baggage={dict(self.baggage)!r})"

    def set_attribute(self, key: str, value: Any) -> None:
        """Forwarded to the underlying span."""
        self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Any) -> None:
        """Forwarded to the underlying span."""
        self._span.set_attributes(attributes)

    def add_event(self, name: str, attributes: Any = None, timestamp_ns: int | None = None) -> None:
        """Forwarded to the underlying span."""
        self._span.add_event(name, attributes, timestamp_ns)

    def add_link(self, context: Any, attributes: Any = None) -> None:
        """Forwarded to the underlying span."""
        self._span.add_link(context, attributes)

    def set_status(self, status: Any, message: str | None = None) -> None:
        """Forwarded to the underlying span."""
        self._span.set_status(status, message)

    def record_exception(
        self, exc: BaseException, attributes: Any = None, timestamp: int | None = None
    ) -> None:
        """Forwarded to the underlying span."""
        self._span.record_exception(exc, attributes, timestamp)

    def update_name(self, name: str) -> None:
        """Forwarded to the underlying span."""
        self._span.update_name(name)

    def end(self, end_time_ns: int | None = None) -> None:
        """Forwarded to the underlying span."""
        self._span.end(end_time_ns)

    @property
    def is_ended(self) -> bool:
        """Whether the underlying span ended."""
        return bool(self._span.is_ended)


def set_baggage(entries: Mapping[str, str | None] | None = None, /, **kwargs: str | None) -> BaggageScope:
    """Baggage entries added to (or, with value None, removed from) the current context:

        with pt.set_baggage({"user.id": "u-17"}, tenant="acme"):
            ...  # children and pt.inject() carry user.id and tenant

    Keys must be RFC 7230 tokens and values strings; invalid entries are skipped with a
    one-time warning (never an exception). Baggage rides on the current trace: outside any
    span the entries are visible to :func:`get_baggage` only. While tracing is suppressed the
    block changes nothing.
    """
    cur = _cv_get()
    if cur is SUPPRESSED:
        return BaggageScope(SUPPRESSED, (), inert=True)
    span: AnySpan = cur if cur is not None else INVALID_SPAN
    merged = dict(span.baggage)
    updates: dict[Any, Any] = {}
    if entries is not None:
        try:
            if isinstance(entries, (str, bytes, bytearray)):
                raise TypeError(type(entries).__name__)
            updates = dict(entries)
        except Exception:
            _safety.warn_once(
                "baggage_invalid", "set_baggage: entries must be a mapping, got %s: ignored", type(entries)
            )
    updates.update(kwargs)
    for key, value in updates.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(key, str) and isinstance(value, str) and _valid_baggage_entry(key, value):
            # baggage values (and keys) are plain str: a subclass is stored as its base value
            merged[str.__str__(key)] = value if value.__class__ is str else str.__str__(value)
        else:
            _safety.warn_once("baggage_invalid", "invalid baggage entry %r=%r ignored", key, value)
    return BaggageScope(span, tuple(merged.items()))


def _valid_baggage_entry(key: str, value: str) -> bool:
    """A token key and a value inject can send (UTF-8 encodable: no lone surrogate)."""
    if not _valid_baggage_key(str.__str__(key)):
        return False
    if str.isascii(value):
        return True
    try:
        str.encode(value)
    except UnicodeEncodeError:
        return False
    return True


def with_baggage(key: str, value: str | None) -> BaggageScope:
    """One baggage entry: ``with pt.with_baggage("user.id", "u-17"): ...``."""
    return set_baggage({key: value})


# ---------------------------------------------------------------------------------------------
# carriers
# ---------------------------------------------------------------------------------------------
def _as_str(value: object) -> str:
    if value.__class__ is str:
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def _header_text(header: object) -> str:
    """One header value from what a caller or carrier gave: a str, bytes (latin-1, as HTTP
    headers are), or several lines (str or bytes) joined with commas, as repeated headers
    combine; anything else (None, numbers...) is no value."""
    if isinstance(header, (str, bytes, bytearray)):
        return _as_str(header)
    if isinstance(header, Iterable):
        return ",".join(_as_str(h) for h in header if isinstance(h, (str, bytes, bytearray)))
    return ""


def _values(value: object) -> list[str]:
    """Normalise what a carrier returned for one name into a list of strings."""
    if value is None:
        return []
    if value.__class__ is str:
        return [value]
    if isinstance(value, (str, bytes, bytearray)):
        return [_as_str(value)]
    if isinstance(value, (list, tuple)):
        return [_as_str(v) for v in value if isinstance(v, (str, bytes, bytearray))]
    return []


def _pairs_index(headers: Iterable[Any]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for item in headers:
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, (str, bytes, bytearray)) or not isinstance(value, (str, bytes, bytearray)):
            continue
        index.setdefault(_as_str(name).lower(), []).append(_as_str(value))
    return index


def _is_wsgi_environ(carrier: Mapping[Any, Any]) -> bool:
    return "wsgi.version" in carrier or "REQUEST_METHOD" in carrier or "HTTP_TRACEPARENT" in carrier


def _reader(carrier: Any, getter: Callable[[Any, str], Any] | None) -> Reader:
    """A uniform ``read(name) -> [values]`` over any supported carrier."""
    if getter is not None:
        return lambda name: _values(getter(carrier, name))
    if isinstance(carrier, (list, tuple)):
        index = _pairs_index(carrier)
        return lambda name: index.get(name, [])
    if not isinstance(carrier, dict):
        # Multi-valued, case-insensitive header objects: email/http.client messages (get_all),
        # starlette/werkzeug (getlist), httpx (get_list), multidict (getall).
        multi = getattr(carrier, "get_all", None) or getattr(carrier, "getlist", None)
        multi = multi or getattr(carrier, "get_list", None)
        if multi is not None:
            return lambda name: _values(multi(name))
        getall = getattr(carrier, "getall", None)
        if getall is not None:
            return lambda name: _values(getall(name, None))
    if isinstance(carrier, Mapping):
        headers = carrier.get("headers")
        if isinstance(headers, (list, tuple)) and isinstance(carrier.get("type"), str):
            index = _pairs_index(headers)  # an ASGI scope
            return lambda name: index.get(name, [])
        if _is_wsgi_environ(carrier):
            return lambda name: _values(carrier.get("HTTP_" + name.upper().replace("-", "_")))
        if not isinstance(carrier, dict):
            # Case-insensitive mappings (requests, multidict) answer get() themselves.
            def read(name: str) -> list[str]:
                found = _values(carrier.get(name))
                return found if found else _ci_scan(carrier, name)

            return read
        lowered: dict[str, list[str]] = {}
        for key, value in carrier.items():
            if isinstance(key, (str, bytes, bytearray)):
                lowered.setdefault(_as_str(key).lower(), []).extend(_values(value))
        return lambda name: lowered.get(name, [])
    get = getattr(carrier, "get", None)
    if get is not None:
        return lambda name: _values(get(name))
    return lambda name: []


def _ci_scan(carrier: Mapping[Any, Any], name: str) -> list[str]:
    found: list[str] = []
    for key, value in carrier.items():
        if isinstance(key, (str, bytes, bytearray)) and _as_str(key).lower() == name:
            found.extend(_values(value))
    return found


def _header_name(item: object) -> str | bytes | bytearray | None:
    """The name of a ``(name, value)`` entry of a header list; None for anything else."""
    if isinstance(item, (tuple, list)) and item:
        name = item[0]
        if isinstance(name, (str, bytes, bytearray)):
            return name
    return None


def _list_writer(headers: list[Any]) -> Writer:
    def write(name: str, value: str) -> None:
        # str or bytes as the list's first real pair has it (an empty list gets ASGI bytes);
        # stray entries that are not pairs are left alone, never an error.
        use_str = False
        for item in headers:
            first = _header_name(item)
            if first is not None:
                use_str = isinstance(first, str)
                break
        # Replace, never duplicate (in any case): a second traceparent would make the request
        # ambiguous.
        if any((n := _header_name(h)) is not None and _as_str(n).lower() == name for h in headers):
            headers[:] = [h for h in headers if (n := _header_name(h)) is None or _as_str(n).lower() != name]
        headers.append((name, value) if use_str else (name.encode("latin-1"), value.encode("latin-1")))

    return write


def _dict_writer(headers: dict[Any, Any]) -> Writer:
    def write(name: str, value: str) -> None:
        # Replace, never duplicate: a caller's "Traceparent" next to our "traceparent" would
        # reach the receiver as two traceparents (ambiguous: a new trace).
        key = name.lower()
        stale = [
            k for k in headers if k != name and isinstance(k, (str, bytes)) and _as_str(k).lower() == key
        ]
        for k in stale:
            del headers[k]
        headers[name] = value

    return write


def _writer(carrier: Any, setter: Callable[[Any, str, str], Any] | None) -> Writer | None:
    """A uniform ``write(name, value)`` over any supported carrier, or None."""
    if setter is not None:
        return lambda name, value: setter(carrier, name, value)
    if isinstance(carrier, dict):
        return _dict_writer(carrier)
    if isinstance(carrier, list):
        return _list_writer(carrier)
    if hasattr(carrier, "get_all") and hasattr(carrier, "__delitem__"):
        # email.message.Message appends on assignment: delete first so the header is replaced.
        # (urllib3's HTTPHeaderDict has get_all too, and raises KeyError for a missing name)
        def write_message(name: str, value: str) -> None:
            try:
                del carrier[name]
            except KeyError:
                pass
            carrier[name] = value

        return write_message
    if isinstance(carrier, MutableMapping) or hasattr(carrier, "__setitem__"):
        return carrier.__setitem__  # type: ignore[no-any-return]
    add_header = getattr(carrier, "add_header", None)  # urllib.request.Request
    if add_header is not None:
        return add_header  # type: ignore[no-any-return]
    return None


# ---------------------------------------------------------------------------------------------
# propagators
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class Propagator(Protocol):
    """Reads and writes one propagation format. ``fields`` names the headers it uses.

    ``extract(read, context)`` gets the context found so far by earlier propagators (None
    at first) and returns the context to continue with; it must not raise on bad input.
    """

    @property
    def fields(self) -> tuple[str, ...]:
        """The (lowercase) header names this format reads and writes."""
        ...

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Write this format's headers for ``context``."""
        ...

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Return ``context`` updated from the carrier (or unchanged)."""
        ...


def _single_value(values: list[str]) -> str | None:
    if not values:
        return None
    first = values[0]
    for other in values[1:]:
        if other != first:
            return None  # several different values: ambiguous, start a new trace
    return first


class TraceContextPropagator:
    """W3C ``traceparent`` + ``tracestate`` (Trace Context Level 2)."""

    fields: tuple[str, ...] = (TRACEPARENT_HEADER, TRACESTATE_HEADER)

    def __repr__(self) -> str:
        return "TraceContextPropagator()"

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Write ``traceparent`` and, when non-empty, ``tracestate``."""
        write(TRACEPARENT_HEADER, format_traceparent(context))
        if context.trace_state:
            state = format_tracestate(context.trace_state)
            if state:
                write(TRACESTATE_HEADER, state)

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Keep an earlier propagator's context; else parse ``traceparent``/``tracestate``."""
        if context is not None:
            return context
        value = _single_value(read(TRACEPARENT_HEADER))
        if value is None:
            return None
        ids = _parse_ids(value)
        if ids is None:
            return None  # and tracestate is not even looked at (Trace Context §tracestate)
        state_lines = read(TRACESTATE_HEADER)
        state = (
            parse_tracestate(state_lines[0] if len(state_lines) == 1 else state_lines) if state_lines else ()
        )
        return _remote_context(ids[0], ids[1], ids[2], state, ())


class BaggagePropagator:
    """W3C ``baggage``. Baggage rides on a trace: it is added to the context found by the
    propagators before it and ignored when there is none."""

    fields: tuple[str, ...] = (BAGGAGE_HEADER,)

    def __repr__(self) -> str:
        return "BaggagePropagator()"

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Write ``baggage`` when the context has entries."""
        if context.baggage:
            value = format_baggage(context.baggage)
            if value:
                write(BAGGAGE_HEADER, value)

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Add the carrier's baggage to ``context``."""
        if context is None:
            return None
        lines = read(BAGGAGE_HEADER)
        if not lines:
            return context
        baggage = parse_baggage(lines[0] if len(lines) == 1 else lines)
        if not baggage:
            return context
        if context.baggage:
            baggage = tuple({**dict(context.baggage), **dict(baggage)}.items())
        return context.with_baggage(baggage)


class W3CPropagator:
    """The default: W3C Trace Context (``traceparent``, ``tracestate``) plus, unless
    ``baggage=False``, W3C ``baggage``."""

    def __init__(self, baggage: bool = True) -> None:
        self.baggage = baggage
        parts: list[Propagator] = [TraceContextPropagator()]
        if baggage:
            parts.append(BaggagePropagator())
        self._parts = tuple(parts)
        self.fields: tuple[str, ...] = tuple(f for p in self._parts for f in p.fields)

    def __repr__(self) -> str:
        return f"W3CPropagator(baggage={self.baggage})"

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Write ``traceparent``, ``tracestate`` and ``baggage``."""
        for part in self._parts:
            part.inject(context, write)

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Parse the W3C headers (an earlier propagator's ids win; baggage is still added)."""
        for part in self._parts:
            context = part.extract(read, context)
        return context


class B3Propagator:
    """Zipkin B3, opt-in: ``B3Propagator()`` uses the single ``b3`` header,
    ``B3Propagator(single_header=False)`` the ``X-B3-*`` headers. Both forms are read on
    extract; 64-bit trace ids are left-padded to 128 bits. The debug flag (``d`` /
    ``X-B3-Flags: 1``) counts as sampled; a missing sampling state as not sampled."""

    def __init__(self, single_header: bool = True) -> None:
        self.single_header = single_header
        self.fields: tuple[str, ...] = (
            ("b3",) if single_header else ("x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags")
        )

    def __repr__(self) -> str:
        return f"B3Propagator(single_header={self.single_header})"

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Write ``b3`` or ``x-b3-traceid``/``x-b3-spanid``/``x-b3-sampled``."""
        sampled = "1" if context.trace_flags & FLAG_SAMPLED else "0"
        trace_id = f"{context.trace_id:032x}"
        span_id = f"{context.span_id:016x}"
        if self.single_header:
            write("b3", f"{trace_id}-{span_id}-{sampled}")
        else:
            write("x-b3-traceid", trace_id)
            write("x-b3-spanid", span_id)
            write("x-b3-sampled", sampled)

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Keep an earlier propagator's context; else parse ``b3``, then ``X-B3-*``."""
        if context is not None:
            return context
        single = _single_value(read("b3"))
        if single is not None:
            parts = single.strip(" \t").split("-")
            if len(parts) >= 2:
                sampled = parts[2] if len(parts) >= 3 else ""
                return _b3_context(parts[0], parts[1], sampled in ("1", "d"))
            return None  # a lone sampling decision carries no ids to continue
        trace_id = _single_value(read("x-b3-traceid"))
        span_id = _single_value(read("x-b3-spanid"))
        if trace_id is None or span_id is None:
            return None
        sampled_value = (_single_value(read("x-b3-sampled")) or "").strip().lower()
        debug = (_single_value(read("x-b3-flags")) or "").strip() == "1"
        return _b3_context(trace_id.strip(), span_id.strip(), debug or sampled_value in ("1", "true", "d"))


def _b3_context(trace_hex: str, span_hex: str, sampled: bool) -> TraceContext | None:
    trace_hex = trace_hex.lower()
    span_hex = span_hex.lower()
    if len(trace_hex) not in (16, 32) or len(span_hex) != 16:
        return None
    if trace_hex.translate(_DEL_HEX) or span_hex.translate(_DEL_HEX):
        return None
    trace_id = int(trace_hex, 16)  # a 64-bit id is the low half of the 128-bit id
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return _remote_context(trace_id, span_id, FLAG_SAMPLED if sampled else 0, (), ())


class CompositePropagator:
    """Several formats at once: ``CompositePropagator([W3CPropagator(), B3Propagator()])``.

    ``inject`` writes every format. ``extract`` asks them in order: the first one that finds
    valid ids wins; later ones may still add baggage.
    """

    def __init__(self, propagators: Sequence[Propagator]) -> None:
        props: list[Propagator] = []
        for p in propagators:
            if not (callable(getattr(p, "inject", None)) and callable(getattr(p, "extract", None))):
                raise TypeError(f"not a propagator (needs inject() and extract()): {p!r}")
            props.extend(p.propagators if isinstance(p, CompositePropagator) else [p])
        self.propagators: tuple[Propagator, ...] = tuple(props)
        self.fields: tuple[str, ...] = tuple(
            dict.fromkeys(f for p in self.propagators for f in getattr(p, "fields", ()))
        )

    def __repr__(self) -> str:
        return f"CompositePropagator({list(self.propagators)!r})"

    def __iter__(self) -> Iterator[Propagator]:
        return iter(self.propagators)

    def inject(self, context: ContextLike, write: Writer) -> None:
        """Every propagator writes its headers."""
        for p in self.propagators:
            p.inject(context, write)

    def extract(self, read: Reader, context: TraceContext | None) -> TraceContext | None:
        """Each propagator in order refines the context."""
        for p in self.propagators:
            context = p.extract(read, context)
        return context


# None = the default W3C trace context + baggage, served by the inlined fast paths below.
_custom: CompositePropagator | None = None
# True once the code chose its propagators with set_propagators(a list): OTEL_PROPAGATORS no
# longer applies. Its own flag, since a choice equal to the default leaves _custom None.
_chosen_by_code = False

_NAMED: dict[str, Callable[[], Propagator]] = {
    "tracecontext": lambda: TraceContextPropagator(),
    "baggage": lambda: BaggagePropagator(),
    "b3": lambda: B3Propagator(),
    "b3multi": lambda: B3Propagator(single_header=False),
}


def propagators_from_names(names: str | Iterable[str]) -> list[Propagator]:
    """Propagators from OpenTelemetry-style names (``OTEL_PROPAGATORS``):
    ``"tracecontext,baggage,b3,b3multi"``; ``"none"`` gives ``[]``. Unknown names raise
    ``ValueError``."""
    if isinstance(names, str):
        names = names.split(",")
    out: list[Propagator] = []
    for raw in names:
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        factory = _NAMED.get(name)
        if factory is None:
            raise ValueError(f"unknown propagator {raw!r}; known: {', '.join(sorted(_NAMED))}, none")
        out.append(factory())
    return out


def _is_default(propagators: Sequence[Propagator]) -> bool:
    kinds = [type(p) for p in propagators]
    if kinds == [W3CPropagator]:
        return bool(propagators[0].baggage)  # type: ignore[attr-defined]
    return kinds == [TraceContextPropagator, BaggagePropagator]


def set_propagators(propagators: Sequence[Propagator] | None) -> None:
    """Choose the formats :func:`inject`/:func:`extract` use, in priority order; None restores
    the default (W3C traceparent + tracestate + baggage); ``[]`` disables propagation.

    A list (even the default's) is the code's choice: ``OTEL_PROPAGATORS`` no longer applies.
    None undoes the choice: the default, until a later :func:`configure` applies
    ``OTEL_PROPAGATORS`` (when set).

        pt.set_propagators([pt.W3CPropagator(), pt.B3Propagator()])
    """
    global _chosen_by_code
    _install(propagators)  # (raises TypeError on a bad propagator: the choice is then unchanged)
    _chosen_by_code = propagators is not None


def _install(propagators: Sequence[Propagator] | None) -> None:
    """Make ``propagators`` the active ones (``configure()`` applies ``OTEL_PROPAGATORS`` so,
    without making it the code's choice)."""
    global _custom
    if propagators is None or (propagators and _is_default(list(propagators))):
        _custom = None
        return
    _custom = CompositePropagator(list(propagators))


def get_propagators() -> list[Propagator]:
    """The configured propagators (the default is ``[W3CPropagator()]``)."""
    custom = _custom
    return [W3CPropagator()] if custom is None else list(custom.propagators)


# ---------------------------------------------------------------------------------------------
# inject / extract
# ---------------------------------------------------------------------------------------------
# (tracestate tuple, its header value) last formatted by inject(); replaced as one object so
# threads never see a mismatched pair, and holding the tuple keeps its identity unique.
_ts_memo: tuple[TraceState, str] = ((), "")


_DEFAULT_HEADERS = frozenset((TRACEPARENT_HEADER, TRACESTATE_HEADER, BAGGAGE_HEADER))


def _has_default_header(carrier: dict[Any, Any]) -> bool:
    """Whether a key of ``carrier`` is a default header's name in any case: then the writer
    that replaces keys case-insensitively is used (one pass in C over the usual few keys)."""
    try:
        return not _DEFAULT_HEADERS.isdisjoint(map(str.lower, carrier))
    except TypeError:  # a key that is not a str (bytes...): the writer sorts it out
        return True


def inject(
    carrier: Any,
    context: ContextLike | None = None,
    setter: Callable[[Any, str, str], Any] | None = None,
) -> None:
    """Write propagation headers for ``context`` (default: the current span) into ``carrier``.

    Default headers: ``traceparent``, ``tracestate`` (when non-empty) and ``baggage`` (when
    non-empty). Carriers: dicts (a key of another case, ``Traceparent``, is replaced) and other
    mutable mappings (set), lists of ``(name, value)`` pairs (ASGI: bytes; replaced, never
    duplicated), ``email.message.Message``, objects with ``add_header``, or anything with
    ``setter(carrier, name, value)``. Does nothing when there is no valid context or tracing
    is suppressed. Never raises.
    """
    global _ts_memo
    try:
        cur: ContextLike | None = _cv_get()
        if cur is SUPPRESSED:
            return
        if context is not None:
            cur = context
        if cur is None:
            return
        trace_id = cur.trace_id
        span_id = cur.span_id
        if not trace_id or not span_id:
            return
        custom = _custom
        if (
            custom is None
            and setter is None
            and carrier.__class__ is dict
            and not (carrier and _has_default_header(carrier))
        ):
            # int.to_bytes().hex() is about twice as fast as f"{trace_id:032x}".
            carrier[TRACEPARENT_HEADER] = (
                f"00-{trace_id.to_bytes(16, 'big').hex()}-{span_id.to_bytes(8, 'big').hex()}"
                f"-{_FLAG_HEX[cur.trace_flags & 3]}"
            )
            state = cur.trace_state
            if state:
                # Spans share their parent's tracestate tuple, so the last one formatted is
                # almost always the one asked for: an identity check beats hashing the tuple.
                memo = _ts_memo
                if memo[0] is state:
                    value = memo[1]
                else:
                    value = _format_tracestate_cached(state)
                    _ts_memo = (state, value)
                if value:
                    carrier[TRACESTATE_HEADER] = value
            baggage = cur.baggage
            if baggage:
                try:
                    value = _format_baggage_cached(baggage)
                except TypeError:  # members given as lists: unhashable for the cache
                    value = _format_baggage(_pairs(baggage))
                if value:
                    carrier[BAGGAGE_HEADER] = value
            return
        write = _writer(carrier, setter)
        if write is None:
            _safety.warn_once(
                "inject_carrier", "pitchey_trace.inject: unsupported carrier %s", type(carrier).__name__
            )
            return
        (_DEFAULT if custom is None else custom).inject(cur, write)
    except Exception as exc:
        _safety.report("propagation.inject", exc)


_DEFAULT = W3CPropagator()
_TRACEPARENT_B = b"traceparent"
_TRACESTATE_B = b"tracestate"
_BAGGAGE_B = b"baggage"


_NOT_ASGI: Any = object()


def _extract_asgi(headers: Sequence[Any]) -> Any:
    """Default-format extract over an ASGI header list (names are lowercase bytes); returns
    ``_NOT_ASGI`` when the list is not shaped like one, for the generic path to take over."""
    traceparent: list[bytes] = []
    state: list[bytes] = []
    baggage: list[bytes] = []
    try:
        for name, value in headers:
            if name == _TRACEPARENT_B:
                traceparent.append(value)
            elif name == _TRACESTATE_B:
                state.append(value)
            elif name == _BAGGAGE_B:
                baggage.append(value)
            elif name.__class__ is not bytes:
                return _NOT_ASGI
        if not traceparent:
            # A list with a "Traceparent" in another case (raw headers of an HTTP client, not
            # ASGI): the generic path matches every name case-insensitively. Checked only here
            # so that a lowercase one (ASGI, the hot path) costs nothing more, as for dicts.
            if any(name.lower() == _TRACEPARENT_B for name, _ in headers):
                return _NOT_ASGI
            return None
        if len(traceparent) > 1 and any(v != traceparent[0] for v in traceparent):
            return None  # different traceparents: ambiguous
        ids = _parse_ids(traceparent[0].decode("latin-1"))
        if ids is None:
            return None
        state_value = b",".join(state).decode("latin-1") if state else ""
        baggage_value = b",".join(baggage).decode("latin-1") if baggage else ""
    except (TypeError, ValueError, AttributeError):
        return _NOT_ASGI
    return _remote_context(
        ids[0],
        ids[1],
        ids[2],
        parse_tracestate(state_value) if state_value else (),
        parse_baggage(baggage_value) if baggage_value else (),
    )


def extract(carrier: Any, getter: Callable[[Any, str], Any] | None = None) -> TraceContext | None:
    """The remote :class:`~pitchey_trace.TraceContext` in ``carrier``, or None.

    Reads plain dicts case-insensitively, WSGI environs (``HTTP_TRACEPARENT``), ASGI header
    lists and scopes, ``Message``-like objects (``get_all``), multi-dicts, or anything through
    ``getter(carrier, name)`` (returning a value, a list of values, or None). None when the
    ``traceparent`` is absent, malformed, or ambiguous (several different values); then
    ``tracestate`` and ``baggage`` are ignored too. Never raises.
    """
    try:
        if _custom is None and getter is None:
            cls = carrier.__class__
            if cls is dict:
                value = carrier.get(TRACEPARENT_HEADER)
                if value.__class__ is str:
                    # Fast path: a lowercase-keyed dict (what HTTP clients and frameworks give).
                    if len(value) == 55 and value[0] == "0" and value[1] == "0" and value[2] == "-":
                        ids = _parse_00(value)
                    else:
                        ids = _parse_ids_other(value)
                    if ids is None:
                        return None
                    state = carrier.get(TRACESTATE_HEADER)
                    baggage = carrier.get(BAGGAGE_HEADER)
                    return _remote_context(
                        ids[0],
                        ids[1],
                        ids[2],
                        (
                            (_parse_tracestate_cached(state) or ())
                            if state.__class__ is str and len(state) <= _CACHE_MAX_INPUT
                            else parse_tracestate(state)
                        )
                        if state
                        else (),
                        (
                            _parse_baggage_cached(baggage)
                            if baggage.__class__ is str and len(baggage) <= _CACHE_MAX_INPUT
                            else parse_baggage(baggage)
                        )
                        if baggage
                        else (),
                    )
                headers = carrier.get("headers")
                if headers.__class__ is list and carrier.get("type").__class__ is str:
                    ctx = _extract_asgi(headers)  # an ASGI scope
                    if ctx is not _NOT_ASGI:
                        return ctx  # type: ignore[no-any-return]
            elif cls is list:
                ctx = _extract_asgi(carrier)
                if ctx is not _NOT_ASGI:
                    return ctx  # type: ignore[no-any-return]
        read = _reader(carrier, getter)
        return (_DEFAULT if _custom is None else _custom).extract(read, None)
    except Exception as exc:
        _safety.report("propagation.extract", exc)
        return None
