"""Span types: the hot path. Keep this module small and free of I/O, regex and JSON.

* :class:`TraceContext` - immutable W3C context (ids, flags, tracestate, baggage).
* :class:`Span` - a recorded span (``__slots__``, ends once, misuse warns and is ignored).
* :class:`NonRecordingSpan` - what a dropped span is: carries context so children and
  outgoing requests stay in the trace, records nothing, costs almost nothing.

Ids are ints internally; hex forms are made only when exported or propagated.
"""

from __future__ import annotations

import contextvars
import enum
import traceback
from collections.abc import Iterable, Mapping, Sequence
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from pitchey_trace import _safety, _stats
from pitchey_trace._context import CURRENT
from pitchey_trace._ids import FLAG_SAMPLED, span_hex, trace_hex

if TYPE_CHECKING:
    from pitchey_trace._batch import Pipeline

__all__ = [
    "INVALID_SPAN",
    "AnySpan",
    "AttributeValue",
    "Attributes",
    "Link",
    "NonRecordingSpan",
    "Span",
    "SpanKind",
    "StatusCode",
    "TraceContext",
]

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
Attributes = Mapping[str, AttributeValue]
#: A recorded event: (name, time_unix_nano, attributes), and a fourth item, the number of its
#: attributes the limit dropped, only when that is not 0 (its record's
#: ``dropped_attributes_count``).
Event = (
    tuple[str, int, dict[str, AttributeValue] | None] | tuple[str, int, dict[str, AttributeValue] | None, int]
)
TraceState = tuple[tuple[str, str], ...]
Baggage = tuple[tuple[str, str], ...]

_SCALAR = frozenset((str, int, float, bool))
#: Types accepted without further checks on the hot path (floats go the slow way: NaN/inf).
_FAST = frozenset((str, int, bool))
#: Start and end times are ns since the epoch below this (OTLP's fixed64; 0 is "not ended").
TIME_LIMIT = 1 << 64


def invalid_time(what: str, value: object) -> int:
    """The current time, for a start or end time that is not an int in 0 < t < 2**64 (counted
    and warned about once: a zero end time would leave the span open, one outside 64 bits
    fails the exporters)."""
    _safety.warn_once(
        f"{what}_invalid",
        "%s_ns must be an int of nanoseconds since the epoch (0 < t < 2**64), got %s: now used",
        what,
        value if value.__class__ is int else type(value),
    )
    return time_ns()


class Limits:
    """Per-span bounds, set by ``configure()``; read on the hot path as class attributes."""

    max_attributes = 128
    max_events = 128
    max_links = 128


class SpanKind(str, enum.Enum):
    """The role of a span, as in OpenTelemetry."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


class StatusCode(enum.IntEnum):
    """Span status: unset (default), ok, or error."""

    UNSET = 0
    OK = 1
    ERROR = 2


class TraceContext:
    """An immutable W3C trace context: what crosses a process boundary.

    ``trace_id`` (128-bit int) and ``span_id`` (64-bit int) are never zero in a valid context;
    ``trace_flags`` holds the sampled (0x01) and random (0x02) bits; ``trace_state`` is the
    ordered list of tracestate members; ``baggage`` the W3C baggage entries.
    """

    __slots__ = ("baggage", "is_remote", "span_id", "trace_flags", "trace_id", "trace_state")

    trace_id: int
    span_id: int
    trace_flags: int
    trace_state: TraceState
    baggage: Baggage
    is_remote: bool

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        trace_flags: int = FLAG_SAMPLED,
        trace_state: TraceState = (),
        baggage: Baggage | Mapping[str, str] = (),
        is_remote: bool = True,
    ) -> None:
        if trace_id.__class__ is not int or span_id.__class__ is not int or trace_flags.__class__ is not int:
            trace_id, span_id, trace_flags = _int_fields(trace_id, span_id, trace_flags)
        if not (0 < trace_id < 1 << 128) or not (0 < span_id < 1 << 64):
            raise ValueError("trace_id must be a non-zero 128-bit int and span_id a non-zero 64-bit int")
        if not 0 <= trace_flags <= 0xFF:
            raise ValueError("trace_flags must fit in one byte")
        setattr_ = object.__setattr__
        setattr_(self, "trace_id", trace_id)
        setattr_(self, "span_id", span_id)
        setattr_(self, "trace_flags", trace_flags)
        setattr_(self, "trace_state", _checked_trace_state(trace_state) if trace_state else ())
        setattr_(self, "baggage", _baggage_pairs(baggage) if baggage else ())
        setattr_(self, "is_remote", is_remote)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("TraceContext is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("TraceContext is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceContext):
            return NotImplemented
        return (
            self.trace_id == other.trace_id
            and self.span_id == other.span_id
            and self.trace_flags == other.trace_flags
            and self.trace_state == other.trace_state
            and self.baggage == other.baggage
            and self.is_remote == other.is_remote
        )

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id, self.trace_flags, self.trace_state, self.baggage))

    def __repr__(self) -> str:
        return f"TraceContext(traceparent={self.traceparent!r}, is_remote={self.is_remote})"

    @property
    def sampled(self) -> bool:
        """True when the sampled flag is set."""
        return bool(self.trace_flags & FLAG_SAMPLED)

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 lowercase hex digits."""
        return trace_hex(self.trace_id)

    @property
    def span_id_hex(self) -> str:
        """The span id as 16 lowercase hex digits."""
        return span_hex(self.span_id)

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value (version 00)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.trace_flags:02x}"

    @classmethod
    def from_traceparent(cls, value: str, tracestate: str | None = None) -> TraceContext | None:
        """Parse a ``traceparent`` (and optional ``tracestate``) header; None when invalid."""
        from pitchey_trace import propagation

        result: TraceContext | None = propagation.parse_traceparent(value, tracestate)
        return result

    def with_baggage(self, baggage: Baggage | Mapping[str, str]) -> TraceContext:
        """A copy with other baggage entries (``((key, value), ...)`` or a mapping)."""
        return _context_of(self, _baggage_pairs(baggage) if baggage else (), self.is_remote)

    def with_trace_state(self, trace_state: TraceState) -> TraceContext:
        """A copy with another tracestate."""
        return TraceContext(
            self.trace_id, self.span_id, self.trace_flags, trace_state, self.baggage, self.is_remote
        )


def _baggage_pairs(baggage: Baggage | Mapping[str, str]) -> Baggage:
    """``baggage`` as a tuple of ``(key, value)`` tuples: a mapping's items, lists made tuples
    (the context is hashed); anything that is not a pair is a ValueError (``tuple({"k": "v"})``
    was ``("k",)``: the entry was lost without a word)."""
    items = baggage.items() if isinstance(baggage, Mapping) else baggage
    pairs = tuple(m if m.__class__ is tuple and len(m) == 2 else _pair(m) for m in items)
    return pairs


def _pair(member: object) -> tuple[str, str]:
    if isinstance(member, (tuple, list)) and len(member) == 2:
        return (member[0], member[1])
    raise ValueError(f"baggage must be (key, value) pairs or a mapping, not a member {member!r:.40}")


def _context_of(source: TraceContext | _SpanBase, baggage: Baggage, is_remote: bool) -> TraceContext:
    """A TraceContext of ``source``'s ids, flags and tracestate, which were checked when it was
    made: filled in without checking them again (a span's ``context`` is read per request)."""
    ctx: TraceContext = object.__new__(TraceContext)
    setattr_ = object.__setattr__
    setattr_(ctx, "trace_id", source.trace_id)
    setattr_(ctx, "span_id", source.span_id)
    setattr_(ctx, "trace_flags", source.trace_flags)
    setattr_(ctx, "trace_state", source.trace_state)
    setattr_(ctx, "baggage", baggage)
    setattr_(ctx, "is_remote", is_remote)
    return ctx


def _int_fields(*values: object) -> tuple[int, ...]:
    """TraceContext's ids and flags as plain ints; a TypeError for anything else (a float id
    would be dropped with its whole trace at export)."""
    out: list[int] = []
    for name, value in zip(("trace_id", "span_id", "trace_flags"), values, strict=True):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"TraceContext {name} must be an int, got {type(value).__name__}")
        out.append(int(value))
    return tuple(out)


def _checked_trace_state(state: object) -> TraceState:
    """The members of a tracestate given to TraceContext that follow the W3C grammar (the
    first of a repeated key, at most 32); the others are dropped, counted and warned about
    once, as inject() would send them as they are."""
    if isinstance(state, (str, bytes)) or not isinstance(state, Iterable):
        raise TypeError(
            f"trace_state must be a sequence of (key, value) pairs, got {type(state).__name__} "
            "(propagation.parse_tracestate() parses a header)"
        )
    from pitchey_trace.propagation import MAX_TRACESTATE_MEMBERS, _valid_ts_key, _valid_ts_value

    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    dropped = 0
    for member in state:
        if (
            isinstance(member, (tuple, list))
            and len(member) == 2
            and isinstance(member[0], str)
            and isinstance(member[1], str)
            and _valid_ts_key(member[0])
            and _valid_ts_value(member[1])
            and member[0] not in seen
            and len(members) < MAX_TRACESTATE_MEMBERS
        ):
            seen.add(member[0])
            members.append((str(member[0]), str(member[1])))
        else:
            dropped += 1
    if dropped:
        _safety.warn_once(
            "tracestate_invalid", "TraceContext: %d invalid or repeated tracestate member(s) dropped", dropped
        )
    return tuple(members)


def _linkable(context: object) -> bool:
    """True when ``context`` has int ids in range (what a link exports)."""
    try:
        trace_id = context.trace_id  # type: ignore[attr-defined]
        span_id = context.span_id  # type: ignore[attr-defined]
    except Exception:
        return False
    return (
        trace_id.__class__ is int
        and span_id.__class__ is int
        and 0 < trace_id < 1 << 128
        and 0 < span_id < 1 << 64
    )


class Link:
    """A link from a span to another span's context, with attributes.

    ``dropped_attributes_count``: how many of its attributes the span's attribute limit
    dropped when the link was added to a span (0 otherwise; its record's
    ``dropped_attributes_count`` when not 0).
    """

    __slots__ = ("attributes", "context", "dropped_attributes_count")

    def __init__(self, context: TraceContext | AnySpan, attributes: Attributes | None = None) -> None:
        self.context = context
        self.dropped_attributes_count = 0
        if isinstance(attributes, Mapping):
            self.attributes = dict(readable_items(attributes) or ())
        else:  # (dict() of a str or a list would raise, or make pairs of its items)
            if attributes is not None:
                _safety.warn_once(
                    "attributes_type", "attributes must be a mapping, got %s: ignored", type(attributes)
                )
            self.attributes = {}


class _Entries(list[Any]):
    """The context tokens of a span entered again before its block exited (``with s: with s:``,
    ``with pt.current_span():``), innermost last, so each exit restores what its own ``with``
    found; and the exception an inner exit recorded, not to record it twice. Only made on
    re-entry: the common single ``with`` keeps one token in the span's ``_token``."""

    __slots__ = ("recorded",)

    def __init__(self, tokens: Iterable[Any]) -> None:
        super().__init__(tokens)
        self.recorded: BaseException | None = None


class _SpanBase:
    """Methods shared by recorded and non-recording spans: context-manager and context access."""

    __slots__ = ()
    _token: Any
    trace_id: int
    span_id: int
    trace_flags: int
    trace_state: TraceState
    baggage: Baggage
    is_remote: bool

    @property
    def context(self) -> TraceContext:
        """This span's :class:`TraceContext` (what a child or an outgoing request inherits)."""
        return _context_of(self, self.baggage, self.is_remote)

    @property
    def trace_id_hex(self) -> str:
        """32 lowercase hex digits."""
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        """16 lowercase hex digits."""
        return f"{self.span_id:016x}"

    @property
    def sampled(self) -> bool:
        """True when this span's trace is head-sampled."""
        return bool(self.trace_flags & FLAG_SAMPLED)

    def _reenter(self, token: Any) -> None:
        """__enter__ of a span already entered (rare): keep both tokens."""
        held = self._token
        if held.__class__ is _Entries:
            held.append(token)
        else:
            self._token = _Entries((held, token))

    def _reset_entry(self, entries: _Entries) -> Any:
        """Undo one entry of a span entered several times: the newest token made in this
        context (the same span may be entered by several tasks or threads at once). Returns
        what that entry found current (``Token.MISSING`` for nothing)."""
        for i in range(len(entries) - 1, -1, -1):
            token = entries[i]
            try:
                CURRENT.reset(token)
            except ValueError:  # made in another context
                continue
            del entries[i]
            prev = token.old_value
            if prev.__class__ is Span and prev is not self and prev.end_ns:
                self._restore_live(prev)
            break
        else:
            prev = entries.pop().old_value
            self._reset_failed(prev)
        if not entries:
            self._token = None
        return prev

    def _restore_live(self, prev: Any) -> None:
        """A context reset just made ``prev`` current again, and ``prev`` looks ended (out of
        order exits: ``a`` entered, ``b`` entered, ``a`` exited, ``b`` exited): make the
        nearest value before it that is not an ended span current instead, so that new spans
        are not parented to an ended one."""
        if getattr(prev, "end_ns", 0):
            live = live_value(prev)
            CURRENT.set(live)
            if isinstance(self, Span) and self._token is None:
                # Remember the live value, not the ended one: spans exited in the order they
                # were entered would otherwise form a chain of ended spans that each later exit
                # walks again (quadratic), and beyond _MAX_WALK of them nothing is current.
                self._prev = _MISSING if live is None else live

    def _reset_failed(self, prev: Any) -> None:
        """Exited in another context than the one that entered it (a generator resumed
        elsewhere, a span handed to another thread or task): its token cannot be used here.
        Do not leave this span current here (nor an ended span): what it found current where
        it was entered (``prev``) replaces it. Where it was entered cannot be changed from
        here: there, the first exit of a span entered after it restores what was current before
        it (``Span._prev``)."""
        cur = CURRENT.get()
        if cur is self:
            CURRENT.set(live_value(prev))
        elif isinstance(cur, Span) and cur.end_ns:
            CURRENT.set(live_value(cur))


class NonRecordingSpan(_SpanBase):
    """A span that records nothing: dropped by sampling, a remote parent, or the no-op default.

    Every recording method is accepted and ignored, so user code never needs to check.
    """

    __slots__ = ("_token", "baggage", "is_remote", "span_id", "trace_flags", "trace_id", "trace_state")

    is_recording = False
    # What a recorded span exposes, as inert constants, so code can read them on either kind.
    name = ""
    kind = SpanKind.INTERNAL
    status = StatusCode.UNSET
    status_message: str | None = None
    parent_span_id = 0
    start_ns = 0
    end_ns = 0
    duration_ns = 0
    attributes: Mapping[str, AttributeValue] = MappingProxyType({})

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        trace_flags: int,
        trace_state: TraceState = (),
        baggage: Baggage = (),
        is_remote: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags
        self.trace_state = trace_state
        self.baggage = baggage
        self.is_remote = is_remote
        self._token: Any = None

    def __enter__(self) -> NonRecordingSpan:
        if self._token is None:
            self._token = CURRENT.set(self)
        else:
            self._reenter(CURRENT.set(self))
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                CURRENT.reset(token)
            except ValueError:
                self._token = token  # (for the entering context's own exit, as Span's)
                self._reset_failed(token.old_value)
            except TypeError:  # not a Token but _Entries: entered several times (no cost here)
                self._token = token
                self._reset_entry(token)
            else:
                prev = token.old_value
                if prev.__class__ is Span and prev.end_ns:  # (an out of order exit)
                    self._restore_live(prev)

    def __repr__(self) -> str:
        return f"NonRecordingSpan(trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Ignored."""

    def set_attributes(self, attributes: Attributes) -> None:
        """Ignored."""

    def add_event(
        self, name: str, attributes: Attributes | None = None, timestamp_ns: int | None = None
    ) -> None:
        """Ignored."""

    def add_link(self, context: TraceContext | AnySpan, attributes: Attributes | None = None) -> None:
        """Ignored."""

    def set_status(self, status: StatusCode | str, message: str | None = None) -> None:
        """Ignored."""

    def record_exception(
        self, exc: BaseException, attributes: Attributes | None = None, timestamp: int | None = None
    ) -> None:
        """Ignored."""

    def update_name(self, name: str) -> None:
        """Ignored."""

    def end(self, end_time_ns: int | None = None) -> None:
        """Ignored."""

    @property
    def is_ended(self) -> bool:
        """Non-recording spans have no lifetime; always False."""
        return False


class _Shared(NonRecordingSpan):
    """A process-wide singleton span: entering it changes nothing (it has no per-use state,
    so two contexts entering it at once cannot corrupt each other)."""

    __slots__ = ()

    def __enter__(self) -> NonRecordingSpan:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class _Suppressed(_Shared):
    """Marker in the context var: tracing is suppressed below this point."""

    __slots__ = ()


SUPPRESSED: NonRecordingSpan = _Suppressed(0, 0, 0)
#: Placeholder "current span" when none is active; all operations are no-ops.
INVALID_SPAN: NonRecordingSpan = _Shared(0, 0, 0)


def _clean_value(value: object) -> AttributeValue | None:
    """Accept a valid attribute value (copying sequences), or None for an invalid one."""
    cls = value.__class__
    if cls is float:
        return value if value - value == 0 else None  # type: ignore[operator,return-value]  # NaN/inf: not JSON
    if cls in _SCALAR:
        return value  # type: ignore[return-value]
    if cls is list or cls is tuple:
        return _clean_sequence(value)  # type: ignore[arg-type]
    try:
        return _clean_other(value)
    except Exception:  # a subclass's own methods failed: the value is invalid, never raised
        return None


def _clean_sequence(value: list[object] | tuple[object, ...]) -> AttributeValue | None:
    if not value:
        return []
    first = value[0].__class__
    if first in _SCALAR and all(v.__class__ is first for v in value):
        if first is float and not all(v - v == 0 for v in value):  # type: ignore[operator]
            return None
        return list(value)  # type: ignore[return-value]  # our own copy: the caller may mutate theirs
    return None


def _clean_other(value: object) -> AttributeValue | None:
    """Enums (their value) and subclasses of the valid types (their plain base value, taken
    without calling the subclass's own ``__str__`` / ``__int__`` / ``__float__`` / ...)."""
    if isinstance(value, enum.Enum):
        return _clean_value(value.value)
    if isinstance(value, (list, tuple)):
        return _clean_sequence(list(value))
    if isinstance(value, int):  # (bool cannot be subclassed)
        return int.__int__(value)
    if isinstance(value, float):
        return _clean_value(float.__float__(value))
    if isinstance(value, str):
        return str.__str__(value)
    return None


class TrustedAttributes(dict[str, AttributeValue]):
    """An attribute map built and validated by the SDK itself (non-empty str keys, str/int/
    bool/float values): ``start_span`` copies it without checking each entry again. Used for
    the maps instrumentation reuses on every call (a statement's database attributes)."""

    __slots__ = ()


def readable_items(attributes: Mapping[str, Any]) -> list[tuple[str, Any]] | None:
    """A snapshot of ``attributes``' items, or None (counted and warned about once) when the
    mapping cannot be read: a dict another thread changes meanwhile ("dictionary changed size
    during iteration"), a custom mapping whose own methods fail. The caller's mistake or race,
    never raised into its code (nor counted as an SDK error)."""
    try:
        return list(attributes.items())
    except Exception as exc:
        _safety.warn_once("attributes_unreadable", "attributes could not be read (%r): ignored", exc)
        return None


def clean_attributes(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    """Validate a mapping of attributes: keep valid pairs, count and drop the rest."""
    return clean_attributes_counted(attributes)[0]


def clean_attributes_counted(attributes: Mapping[str, object]) -> tuple[dict[str, AttributeValue], int]:
    """:func:`clean_attributes`, and how many valid attributes the limit dropped (a span's
    ``dropped_attributes_count``; invalid ones are only counted in ``stats()``)."""
    out: dict[str, AttributeValue] = {}
    limit = Limits.max_attributes
    over = 0
    if not isinstance(attributes, Mapping):
        _safety.warn_once(
            "attributes_type", "attributes must be a mapping, got %s: ignored", type(attributes)
        )
        return out, 0
    items = readable_items(attributes)
    if items is None:
        return out, 0
    for key, value in items:
        if key.__class__ is not str or not key:
            _stats.incr("dropped.attribute_invalid")
            continue
        cleaned = _clean_value(value)
        if cleaned is None:
            _stats.incr("dropped.attribute_invalid")
            continue
        if len(out) >= limit and key not in out:
            _stats.incr("dropped.attribute_limit")
            over += 1
            continue
        out[key] = cleaned
    return out, over


_MAX_STACKTRACE = 8192
_MAX_FRAME = 1024  # (a frame showing one huge line of source)
_MIN_MESSAGE = 256
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _format_tb(exc: BaseException) -> str:
    """The standard traceback text, at most 8192 characters: the innermost 32 frames of each
    exception (where it was raised matters most). Longer, the messages are cut first (a long
    message must not push the frames out), then the middle frames of each exception: its
    outermost and innermost frames stay."""
    try:
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__, limit=-32, compact=True)
        text = "".join(te.format())
        return text if len(text) <= _MAX_STACKTRACE else _fit_tb(te)
    except Exception:
        return f"{type(exc).__qualname__}: <traceback unavailable>"


def _fit_tb(te: traceback.TracebackException) -> str:
    # Per exception, outermost first: (chain line + "Traceback" line, frames, message lines).
    chain: list[tuple[str, traceback.TracebackException]] = []
    current: traceback.TracebackException | None = te
    while current is not None:  # as TracebackException.format walks it (cycles already cut)
        if current.__cause__ is not None:
            chain.append((_CAUSE, current))
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append((_CONTEXT, current))
            current = current.__context__
        else:
            chain.append(("", current))
            current = None
    sections: list[tuple[str, list[str], str]] = []
    for link, current in reversed(chain):  # (the link line comes before the later exception)
        if getattr(current, "exceptions", None) is not None:  # a group: whole, cut as a message
            sections.append((link, [], "".join(current.format(chain=False))))
        else:
            head = link + ("Traceback (most recent call last):\n" if current.stack else "")
            frames: list[str] = []
            for frame in current.stack.format():
                if frames and frame.startswith("  [Previous line repeated"):
                    frames[-1] += frame  # (kept or dropped with the frame it repeats)
                else:
                    frames.append(_cut(frame, _MAX_FRAME))
            sections.append((head, frames, "".join(current.format_exception_only())))
    heads = sum(len(head) for head, _, _ in sections)
    dropped = 0
    while len(sections) > 1 and heads + _MIN_MESSAGE * len(sections) > _MAX_STACKTRACE * 3 // 4:
        heads -= len(sections.pop(0)[0])  # (a long chain: its oldest exceptions go)
        dropped += 1
    if dropped:
        head, frames, message = sections[0]
        sections[0] = (f"[{dropped} earlier exceptions omitted]\n{head}", frames, message)
        heads += len(sections[0][0]) - len(head)
    room = _MAX_STACKTRACE - heads
    frame_sizes = [sum(map(len, frames)) for _, frames, _ in sections]
    floor = min(_MIN_MESSAGE * len(sections), room // 2)
    allowed = _share([len(m) for _, _, m in sections], max(room - sum(frame_sizes), floor))
    messages = [_cut(message, size) for (_, _, message), size in zip(sections, allowed, strict=True)]
    budgets = _share(frame_sizes, room - sum(map(len, messages)))
    parts: list[str] = []
    for (head, frames, _), message, budget in zip(sections, messages, budgets, strict=True):
        parts.append(head)
        parts.extend(_keep_frames(frames, budget))
        parts.append(message)
    text = "".join(parts)
    if len(text) > _MAX_STACKTRACE:  # (hundreds of chained exceptions) the start, and the end
        marker = "\n[\u2026]\n"
        start = _MAX_STACKTRACE // 4
        text = text[:start] + marker + text[len(text) - (_MAX_STACKTRACE - start - len(marker)) :]
    return text


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(size - 2, 0)] + "\u2026\n"


def _share(sizes: list[int], budget: int) -> list[int]:
    """``budget`` split among ``sizes``: the small ones whole, the rest an equal share each."""
    shares = [0] * len(sizes)
    left = max(budget, 0)
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for done, i in enumerate(order):
        shares[i] = min(sizes[i], left // (len(order) - done))
        left -= shares[i]
    return shares


def _keep_frames(frames: list[str], budget: int) -> list[str]:
    """The frames that fit in ``budget``: the innermost (where it failed), the outermost, then
    inwards from the innermost; the others make one "frames omitted" line."""
    if sum(map(len, frames)) <= budget:
        return frames
    room = budget - 32  # (the omission line)
    keep: set[int] = set()
    for i in (len(frames) - 1, 0, *range(len(frames) - 2, 0, -1)):
        if len(frames[i]) <= room:
            keep.add(i)
            room -= len(frames[i])
        elif i:  # (too big an outermost frame is only skipped)
            break
    kept: list[str] = []
    omitted = 0
    for i, frame in enumerate(frames):
        if i not in keep:
            omitted += 1
            continue
        if omitted:
            kept.append(_omitted(omitted))
            omitted = 0
        kept.append(frame)
    if omitted:
        kept.append(_omitted(omitted))
    return kept


def _omitted(count: int) -> str:
    return f"  [{count} frame{'s' if count > 1 else ''} omitted]\n"


def _safe_str(value: object) -> str:
    """``str(value)``, even for objects whose ``__str__`` itself fails."""
    if value.__class__ is str:
        return value
    try:
        return str(value)
    except Exception:
        if isinstance(value, BaseException):  # (the text tracebacks show: "Error: <exception ...>")
            return "<exception str() failed>"
        return f"<unprintable {type(value).__name__}>"


def span_name(name: object) -> str:
    """A span or event name: a str as it is; anything else its text (counted and warned about
    once: names are for people and dashboards, and the exporters need text)."""
    if name.__class__ is str:
        return name
    _safety.warn_once(
        "name_type", "a span or event name must be a str, got %s: its str() is used", type(name)
    )
    return _safe_str(name)


class Span(_SpanBase):
    """A recorded span. Created by :func:`pitchey_trace.span` / :func:`pitchey_trace.start_span`.

    Usable as a context manager (makes it current, ends it on exit, records an escaping
    ``Exception`` and re-raises it unchanged). After :meth:`end` every mutation is ignored
    with a one-time warning.
    """

    __slots__ = (
        "_dropped",
        "_pipe",
        "_prev",
        "_token",
        "attributes",
        "baggage",
        "end_ns",
        "events",
        "kind",
        "links",
        "local_root",
        "local_root_id",
        "name",
        "parent_span_id",
        "span_id",
        "start_ns",
        "status",
        "status_message",
        "trace_flags",
        "trace_id",
        "trace_state",
    )

    is_recording = True
    is_remote = False

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        parent_span_id: int,
        trace_flags: int,
        trace_state: TraceState,
        baggage: Baggage,
        attributes: dict[str, AttributeValue],
        start_ns: int,
        local_root: bool,
        pipe: Pipeline,
        local_root_id: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.trace_flags = trace_flags
        self.trace_state = trace_state
        self.baggage = baggage
        self.attributes = attributes
        self.start_ns = start_ns
        self.end_ns = 0
        self.local_root = local_root
        # The span id of this span's local root (its own for a local root): tail keeping
        # decides per request, and one trace can have several local roots in a process.
        self.local_root_id = local_root_id or span_id
        self.events: list[Event] | None = None
        self.links: list[Link] | None = None
        self.status = StatusCode.UNSET
        self.status_message: str | None = None
        self._pipe = pipe
        self._token: Any = None
        # [attributes, events, links] dropped by the limits (None: nothing dropped), for the
        # record's dropped_*_count keys.
        self._dropped: list[int] | None = None
        # What was current when it was entered (Token.MISSING for nothing), set when it exits
        # a ``with``: what replaces it if a later exit would make it current once ended.
        self._prev: Any = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Span:
        if self._token is None:
            self._token = CURRENT.set(self)
        else:
            self._reenter(CURRENT.set(self))
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if ev is not None:
            if token.__class__ is _Entries:
                self._exit_entry(token, ev)
                return
            self._on_exception(ev)
        if token is not None:
            self._token = None
            try:
                CURRENT.reset(token)
            except ValueError:
                self._prev = token.old_value
                # (kept: the context that entered the span can still reset it by its own exit,
                # else the ended span stayed current there)
                self._token = token
                self._reset_failed(token.old_value)
            except TypeError:  # not a Token but _Entries: entered several times (no cost here)
                self._token = token
                self._exit_entry(token, None)
                return
            else:
                # What it found current, for a span entered after it and exited after it (out
                # of order) not to make it current again once it has ended (_restore_live).
                prev = self._prev = token.old_value
                if prev.__class__ is Span and prev.end_ns:  # (an out of order exit)
                    self._restore_live(prev)
        if not self.end_ns:
            self.end_ns = time_ns()
            self._pipe.enqueue(self)

    def _exit_entry(self, entries: _Entries, ev: BaseException | None) -> None:
        """__exit__ of a span entered several times: restore what this ``with`` found; the
        last one to exit ends the span. An exception leaving several blocks is recorded once."""
        if ev is not None and ev is not entries.recorded:
            entries.recorded = ev
            self._on_exception(ev)
        prev = self._reset_entry(entries)
        if prev is not self:  # (an inner entry found the span itself current)
            self._prev = prev
        if not entries and not self.end_ns:
            self.end_ns = time_ns()
            self._pipe.enqueue(self)

    def _reset_failed(self, prev: Any) -> None:
        _safety.warn_once("context_reset", "span %r exited in a different context", self.name)
        super()._reset_failed(prev)

    def __repr__(self) -> str:
        return (
            f"Span(name={self.name!r}, trace_id={self.trace_id:032x}, span_id={self.span_id:016x}, "
            f"ended={bool(self.end_ns)})"
        )

    def _on_exception(self, exc: BaseException) -> None:
        # Only Exception marks an error; KeyboardInterrupt, SystemExit, CancelledError and
        # GeneratorExit are control flow, not failures of the work.
        if isinstance(exc, Exception) and not self.end_ns:
            try:
                self.record_exception(exc)
                # "ok" set by the code is final (OpenTelemetry semantics); a first error wins.
                if self.status == StatusCode.UNSET:
                    self.status = StatusCode.ERROR
                    self.status_message = f"{type(exc).__name__}: {_safe_str(exc)}"[:1024]
            except Exception as internal:
                _safety.report("record_exception", internal)

    def _ended(self, what: str) -> bool:
        if self.end_ns:
            _safety.warn_once(f"after_end.{what}", "%s on span %r after it ended: ignored", what, self.name)
            return True
        return False

    # -- recording -------------------------------------------------------------------------
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute (str, bool, int, float or a homogeneous sequence of them).

        Invalid keys or values are dropped and counted; beyond the attribute limit new keys
        are dropped and counted.
        """
        attrs = self.attributes
        if (
            value.__class__ in _FAST
            and key.__class__ is str
            and key
            and not self.end_ns
            and (len(attrs) < Limits.max_attributes or key in attrs)
        ):
            attrs[key] = value
        else:
            self._set_attribute_slow(key, value)

    def _set_attribute_slow(self, key: object, value: object) -> None:
        if self._ended("set_attribute"):
            return
        if key.__class__ is not str or not key:
            _stats.incr("dropped.attribute_invalid")
            return
        cleaned = _clean_value(value)
        if cleaned is None:
            _stats.incr("dropped.attribute_invalid")
            return
        attrs = self.attributes
        if len(attrs) >= Limits.max_attributes and key not in attrs:
            self._count_dropped(0, "dropped.attribute_limit")
            return
        attrs[key] = cleaned

    def _count_dropped(self, which: int, counter: str) -> None:
        """An attribute (0), event (1) or link (2) dropped by the limits: counted in
        ``stats()`` and on the span (its record's ``dropped_*_count``)."""
        _stats.incr(counter)
        counts = getattr(self, "_dropped", None)
        if counts is None:
            self._dropped = counts = [0, 0, 0]
        counts[which] += 1

    def set_attributes(self, attributes: Attributes) -> None:
        """Set several attributes at once."""
        if not isinstance(attributes, Mapping):
            if attributes is not None:
                _safety.warn_once("attributes_type", "attributes must be a mapping, got %s", type(attributes))
            return
        items = readable_items(attributes)
        if items is not None:
            for key, value in items:
                self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes | None = None, timestamp_ns: int | None = None
    ) -> None:
        """Record a point-in-time event with optional attributes."""
        if self.end_ns:
            self._ended("add_event")
            return
        events = self.events
        if events is None:
            events = self.events = []
        elif len(events) >= Limits.max_events:
            self._count_dropped(1, "dropped.event_limit")
            return
        if timestamp_ns is None:
            timestamp_ns = time_ns()
        elif timestamp_ns.__class__ is not int or not 0 < timestamp_ns < TIME_LIMIT:
            timestamp_ns = invalid_time("timestamp", timestamp_ns)
        if not attributes:
            events.append((span_name(name), timestamp_ns, None))
            return
        attrs, over = clean_attributes_counted(attributes)
        if over:  # (rare: the event's dropped_attributes_count)
            events.append((span_name(name), timestamp_ns, attrs, over))
        else:
            events.append((span_name(name), timestamp_ns, attrs))

    def add_link(self, context: TraceContext | AnySpan, attributes: Attributes | None = None) -> None:
        """Link this span to another span's context (e.g. the message that triggered it).

        A context without int ids in range is ignored and counted (``dropped.link_invalid``).
        """
        if self._ended("add_link"):
            return
        if not _linkable(context):
            _stats.incr("dropped.link_invalid")
            return
        links = self.links
        if links is None:
            links = self.links = []
        elif len(links) >= Limits.max_links:
            self._count_dropped(2, "dropped.link_limit")
            return
        if not attributes:
            links.append(Link(context))
            return
        attrs, over = clean_attributes_counted(attributes)
        link = Link(context, attrs)
        if over:  # (rare: the link's dropped_attributes_count)
            link.dropped_attributes_count = over
        links.append(link)

    def set_status(self, status: StatusCode | str, message: str | None = None) -> None:
        """Set the status: ``"ok"``, ``"error"`` (with an optional message) or ``"unset"``.

        Once ``ok`` is set it is final, as in OpenTelemetry.
        """
        if self._ended("set_status"):
            return
        try:
            if isinstance(status, str):
                code = StatusCode[status.upper()]
            elif isinstance(status, int) and not isinstance(status, bool):  # (StatusCode too)
                code = StatusCode(status)
            else:  # True, 1.0...: StatusCode() would read them as OK
                raise TypeError(type(status).__name__)
        except Exception:  # unknown, or an object whose comparison or hash fails
            _safety.warn_once("status_invalid", "invalid span status of type %s ignored", type(status))
            return
        if self.status == StatusCode.OK:
            return
        self.status = code
        self.status_message = (
            _safe_str(message)[:1024] if (message is not None and code == StatusCode.ERROR) else None
        )

    def record_exception(
        self, exc: BaseException, attributes: Attributes | None = None, timestamp: int | None = None
    ) -> None:
        """Add an ``exception`` event (type, message, stack trace). Does not change the status.

        ``timestamp``: when it happened, ns since the epoch (as OpenTelemetry's); now when
        None. One that is not an int in 0 < t < 2**64 is ignored (now is used) and counted as
        ``misuse.timestamp_invalid``.
        """
        if self._ended("record_exception"):
            return
        if not isinstance(exc, BaseException):
            _safety.warn_once("record_exception_type", "record_exception() takes an exception, got %r", exc)
            return
        if timestamp is None:
            timestamp = time_ns()
        elif timestamp.__class__ is not int or not 0 < timestamp < TIME_LIMIT:
            timestamp = invalid_time("timestamp", timestamp)
        events = self.events
        if events is None:
            events = self.events = []
        if len(events) >= Limits.max_events:  # (before the traceback is formatted for nothing)
            self._count_dropped(1, "dropped.event_limit")
            return
        attrs: dict[str, AttributeValue] = {
            "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}"
            if type(exc).__module__ not in ("builtins", "__main__")
            else type(exc).__qualname__,
            "exception.message": _safe_str(exc)[:4096],
            "exception.stacktrace": _format_tb(exc),
        }
        over = 0
        if attributes:
            extra, over = clean_attributes_counted(attributes)
            attrs.update(extra)
        limit = Limits.max_attributes
        if len(attrs) > limit:  # (the exception's own three and the given ones: one limit)
            cut = len(attrs) - limit
            _stats.incr("dropped.attribute_limit", cut)
            over += cut
            attrs = dict(list(attrs.items())[:limit])
        if over:  # (rare: the event's dropped_attributes_count)
            events.append(("exception", timestamp, attrs, over))
        else:
            events.append(("exception", timestamp, attrs))

    def update_name(self, name: str) -> None:
        """Rename the span (e.g. once a route template is known)."""
        if not self._ended("update_name"):
            self.name = span_name(name)

    def end(self, end_time_ns: int | None = None) -> None:
        """End the span (once; later calls warn and are ignored) and hand it to the pipeline.

        ``end_time_ns``: ns since the epoch; one that is not an int in 0 < t < 2**64 is
        replaced by now (counted as ``misuse.end_time_invalid``).
        """
        if self.end_ns:
            _safety.warn_once("end_twice", "span %r ended twice: ignored", self.name)
            return
        if end_time_ns is None:
            self.end_ns = time_ns()
        elif end_time_ns.__class__ is int and 0 < end_time_ns < TIME_LIMIT:
            self.end_ns = end_time_ns
        else:  # (0 would leave the span open: end_ns is also the "ended" flag)
            self.end_ns = invalid_time("end_time", end_time_ns)
        self._pipe.enqueue(self)

    @property
    def is_ended(self) -> bool:
        """True once :meth:`end` ran."""
        return bool(self.end_ns)

    @property
    def duration_ns(self) -> int:
        """End minus start in nanoseconds (0 while running; never negative)."""
        return max(0, self.end_ns - self.start_ns) if self.end_ns else 0


AnySpan = Span | NonRecordingSpan


class _LocalScope(NonRecordingSpan):
    """What :func:`~pitchey_trace.use_context` makes current for a recorded local span: it
    also carries that span's local root (a TraceContext cannot), so the spans started under it
    stay part of the same request for tail keeping."""

    __slots__ = ("local_root_id",)
    local_root_id: int


_MISSING = contextvars.Token.MISSING
#: Ended spans walked back at most (a chain of ended spans each entered under the previous).
_MAX_WALK = 256


def live_value(value: Any) -> Any:
    """``value`` (a context var value: a span, None or ``Token.MISSING``) or, when it is an
    ended span, what was current when it was entered, and so on: the nearest value that is not
    an ended span (None for nothing). What is made current instead of an ended span by an exit
    out of order or in another context (the value a context reset would restore).

    A span's ``_prev`` is None until it exits a ``with`` (a reset finding None there, rather
    than ``Token.MISSING``, is rare: then too its parent stands for what was before it)."""
    for _ in range(_MAX_WALK):
        if value is _MISSING:
            return None
        if not isinstance(value, Span) or not getattr(value, "end_ns", 0):
            return value
        token = getattr(value, "_token", None)
        if token is not None:  # still entered (ended inside its block): what its first entry found
            first = token[0] if token.__class__ is _Entries else token
            value = first.old_value if first.__class__ is contextvars.Token else _MISSING
            continue
        before = getattr(value, "_prev", None)
        if before is None:  # (made current without __enter__: its parent as a context)
            return _scope_above(value)
        value = before
    return None


def _scope_above(span: Span) -> NonRecordingSpan | None:
    """A context scope for the parent of ``span`` (an ended span made current some other way
    than ``with``, whose entry left no trace of what was current before it)."""
    parent = getattr(span, "parent_span_id", 0)
    if not parent:
        return None
    fields = (span.trace_id, parent, span.trace_flags, span.trace_state, span.baggage)
    if span.local_root:  # its parent was remote (or a context without its local root)
        return NonRecordingSpan(*fields, is_remote=True)
    scope = _LocalScope(*fields)
    scope.local_root_id = span.local_root_id
    return scope
