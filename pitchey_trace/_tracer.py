"""Tracer: starts spans. The module-level functions delegate to the active tracer.

Before :func:`pitchey_trace.configure` runs, the active tracer is a no-op tracer: spans are
:class:`NonRecordingSpan` objects that still carry (and propagate) context, so libraries can
instrument unconditionally.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping, Sequence
from random import getrandbits
from time import time_ns
from typing import Any, TypeVar, overload

from pitchey_trace import _accel, _safety
from pitchey_trace._batch import Pipeline
from pitchey_trace._context import CURRENT
from pitchey_trace._ids import FLAG_RANDOM, FLAG_SAMPLED, new_span_id, new_trace_id
from pitchey_trace._span import (
    _FAST,
    INVALID_SPAN,
    SUPPRESSED,
    TIME_LIMIT,
    AnySpan,
    Limits,
    Link,
    NonRecordingSpan,
    Span,
    SpanKind,
    StatusCode,
    TraceContext,
    TrustedAttributes,
    _LocalScope,
    _safe_str,
    clean_attributes,
    clean_attributes_counted,
    invalid_time,
    span_name,
)
from pitchey_trace.records import audit_record
from pitchey_trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, TraceIdRatio

F = TypeVar("F", bound=Callable[..., Any])

_cv_get = CURRENT.get
_cv_set = CURRENT.set
_cv_reset = CURRENT.reset


def _record_failure(sp: AnySpan, exc: BaseException) -> None:
    """What a ``with`` block does with an escaping exception, for hand-driven spans."""
    if isinstance(sp, Span):
        sp._on_exception(exc)


_DROP = Decision.DROP
_SAMPLE = Decision.RECORD_AND_SAMPLE
_INTERNAL = SpanKind.INTERNAL


# Parents start_span takes as they are; another class is checked first (_checked_arguments).
_PARENT_CLASSES = frozenset(
    {Span, TraceContext, NonRecordingSpan, _LocalScope, type(SUPPRESSED), type(INVALID_SPAN)}
)


def _local_root_of(parent: Any) -> int:
    """The local root (span id) of a span started under ``parent``, a local parent that is
    not a Span: a TraceContext or NonRecordingSpan with ``is_remote`` False, a BaggageScope.

    A TraceContext does not say which local root its span belongs to, so: the one ``parent``
    knows (:func:`use_context` of a span, a BaggageScope over one); else that of the span of
    the same trace current here (a context handed around within its request); else the
    context's own span id, right when it is the local root's context (``pt.current_context()``
    in a request handler, handed to a thread). Spans under the context of a deeper span, where
    none of its trace is current, form a group of their own: kept with their own errors or slow
    spans, otherwise expired after ``max_age_s``."""
    for candidate in (parent, _cv_get()):
        inner: Any = getattr(candidate, "wrapped", candidate)  # a BaggageScope: the span it stands for
        root = getattr(inner, "local_root_id", None)
        if isinstance(root, int) and inner.trace_id == parent.trace_id:
            return root
    span_id: int = parent.span_id
    return span_id


def _usable_context(context: Any) -> bool:
    """A span, a TraceContext, or anything shaped like one (propagation.BaggageScope...)."""
    if context.__class__ in _PARENT_CLASSES:
        return True
    try:
        return all(
            isinstance(getattr(context, f), int) for f in ("trace_id", "span_id", "trace_flags")
        ) and all(hasattr(context, f) for f in ("trace_state", "baggage", "is_remote"))
    except Exception:
        return False


def _checked_arguments(name: Any, kind: Any, context: Any) -> tuple[str, SpanKind, Any]:
    """start_span's arguments when one is of an unusual type, made usable instead of failing
    in the application's code or later in the exporters: a name that is not a str becomes its
    text, a kind given by value (``"server"``) its SpanKind and anything else INTERNAL, and a
    context that is not a span context is ignored (the current span is the parent). Each is
    counted and warned about once (``misuse.*``)."""
    name = span_name(name)
    if kind.__class__ is not SpanKind:
        try:
            # "server", "SERVER", or another library's enum member (OpenTelemetry's SpanKind.SERVER)
            kind = _INTERNAL if kind is None else SpanKind(str(kind).rsplit(".", 1)[-1].lower())
        except Exception:
            _safety.warn_once(
                "kind_invalid", "span kind must be a SpanKind, got %s: INTERNAL used", type(kind)
            )
            kind = _INTERNAL
    if context is not None and not _usable_context(context):
        _safety.warn_once(
            "context_type",
            "context must be a span, a TraceContext or None, got %s: ignored",
            type(context),
        )
        context = None
    return name, kind, context


_UNSET = StatusCode.UNSET
_LOW64 = (1 << 64) - 1
_new_span = object.__new__
_DEFAULT_SAMPLER = ParentBased(ALWAYS_ON)
_AUDIT_CATEGORIES = ("request", "security", "data_access")


class Tracer:
    """Starts spans for one configured pipeline (or none: the no-op tracer)."""

    def __init__(
        self,
        pipeline: Pipeline | None,
        sampler: Sampler = _DEFAULT_SAMPLER,
        record_unsampled: bool = False,
    ) -> None:
        self.install(pipeline, sampler, record_unsampled)

    def install(self, pipeline: Pipeline | None, sampler: Sampler, record_unsampled: bool) -> None:
        """Point this tracer at another pipeline (configure/shutdown). The process keeps one
        tracer object so ``pitchey_trace.span`` can be its bound method (one call less)."""
        self.pipeline = pipeline
        self.sampler = sampler
        self.record_unsampled = record_unsampled and pipeline is not None
        self._sink = pipeline
        # Decided once: with the default ParentBased delegates a child simply follows its
        # parent's sampled flag, so the sampler call is skipped for children.
        self._inline_parent = isinstance(sampler, ParentBased) and sampler.follows_parent_exactly
        self._root_sampler: Sampler = sampler.root if self._inline_parent else sampler  # type: ignore[attr-defined]
        # A plain ratio root sampler is inlined as one comparison (same rule as TraceIdRatio).
        self._root_bound: int | None = (
            self._root_sampler.bound if type(self._root_sampler) is TraceIdRatio else None
        )
        # What the C accelerator's start_span reads (one attribute instead of four).
        self._fast_state = (self._sink, self._root_bound, self._inline_parent, self.record_unsampled)

    @property
    def enabled(self) -> bool:
        """True when spans can be recorded."""
        return self._sink is not None

    def start_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        kind: SpanKind = _INTERNAL,
        context: TraceContext | AnySpan | None = None,
        links: Sequence[Link | TraceContext | AnySpan] | None = None,
        start_time_ns: int | None = None,
    ) -> AnySpan:
        """Start a span; ``with`` makes it current and ends it (see :data:`pitchey_trace.span`).

        The hot path of the SDK: keep it lean.
        """
        if (
            name.__class__ is not str
            or kind.__class__ is not SpanKind
            or (context is not None and context.__class__ not in _PARENT_CLASSES)
        ):
            name, kind, context = _checked_arguments(name, kind, context)
        parent = context if context is not None else _cv_get()
        baggage: tuple[tuple[str, str], ...] = ()
        if parent is not None and not parent.trace_id:
            if parent is SUPPRESSED:
                return SUPPRESSED
            # An id-less parent (INVALID_SPAN, or baggage set outside any span): start a new
            # trace that keeps the baggage.
            baggage = parent.baggage
            parent = None
        sink = self._sink
        if parent is None:
            trace_id = getrandbits(128) or new_trace_id()
            parent_span_id = 0
            trace_state: tuple[tuple[str, str], ...] = ()
            local_root = True
            root_id = 0  # (its own span id)
            if sink is None:
                return NonRecordingSpan(trace_id, getrandbits(64) or new_span_id(), FLAG_RANDOM, (), baggage)
            bound = self._root_bound
            if bound is not None:
                decision = _SAMPLE if trace_id & _LOW64 < bound else _DROP
            else:
                try:
                    decision = self._root_sampler.should_sample(None, trace_id, name, kind, attributes)
                except Exception as exc:
                    _safety.report("sampler", exc)
                    decision = _DROP
            flags = FLAG_RANDOM | FLAG_SAMPLED if decision == _SAMPLE else FLAG_RANDOM
        else:
            trace_id = parent.trace_id
            parent_span_id = parent.span_id
            trace_state = parent.trace_state
            baggage = parent.baggage
            if parent.__class__ is Span:
                local_root = False
                root_id = parent.local_root_id
            elif parent.is_remote:  # (extract()): this span starts a request here
                local_root = True
                root_id = 0
            else:  # a local context (TraceContext, use_context(), BaggageScope): same request
                local_root = False
                root_id = _local_root_of(parent)
            if sink is None:
                return NonRecordingSpan(
                    trace_id, getrandbits(64) or new_span_id(), parent.trace_flags, trace_state, baggage
                )
            if self._inline_parent:
                decision = _SAMPLE if parent.trace_flags & FLAG_SAMPLED else _DROP
            else:
                try:
                    decision = self.sampler.should_sample(parent, trace_id, name, kind, attributes)
                except Exception as exc:
                    _safety.report("sampler", exc)
                    decision = _DROP
            pflags = parent.trace_flags
            flags = pflags | FLAG_SAMPLED if decision == _SAMPLE else pflags & ~FLAG_SAMPLED
        span_id = getrandbits(64) or new_span_id()
        if decision == _DROP and not self.record_unsampled:
            return NonRecordingSpan(trace_id, span_id, flags, trace_state, baggage)
        dropped = None  # (attributes over the limit: the span's dropped_attributes_count)
        try:
            if attributes:
                if attributes.__class__ is TrustedAttributes and len(attributes) <= Limits.max_attributes:
                    attrs = dict(attributes)
                else:
                    try:
                        attrs = dict(attributes)
                    except Exception:  # not pairs; or a mapping that changes or fails while read
                        attrs, over = clean_attributes_counted(attributes)
                        dropped = [over, 0, 0] if over else None
                    else:
                        if len(attrs) > Limits.max_attributes:
                            attrs, over = clean_attributes_counted(attributes)
                            dropped = [over, 0, 0] if over else None
                        else:
                            for k, v in attrs.items():
                                if v.__class__ not in _FAST or k.__class__ is not str or not k:
                                    attrs = clean_attributes(attributes)
                                    break
            else:
                attrs = {}
        except Exception as exc:  # (a mapping whose __bool__ / __len__ fails): no attributes
            _safety.warn_once("attributes_unreadable", "attributes could not be read (%r): ignored", exc)
            attrs = {}
            dropped = None
        if start_time_ns is None:
            start_ns = time_ns()
        elif start_time_ns.__class__ is int and 0 < start_time_ns < TIME_LIMIT:
            start_ns = start_time_ns
        else:
            start_ns = invalid_time("start_time", start_time_ns)
        # Span.__init__ inlined (one Python call less); keep in sync with _speedups.c make_span().
        span = _new_span(Span)
        span.name = name
        span.kind = kind
        span.trace_id = trace_id
        span.span_id = span_id
        span.parent_span_id = parent_span_id
        span.trace_flags = flags
        span.trace_state = trace_state
        span.baggage = baggage
        span.attributes = attrs
        span.start_ns = start_ns
        span.end_ns = 0
        span.local_root = local_root
        span.local_root_id = root_id or span_id
        span.events = None
        span.links = None
        span.status = _UNSET
        span.status_message = None
        span._pipe = sink
        span._token = None
        span._dropped = dropped
        span._prev = None
        if links is not None:
            self._add_links(span, links)
        return span

    @staticmethod
    def _add_links(span: Span, links: Sequence[Link | TraceContext | AnySpan]) -> None:
        if not isinstance(links, Iterable) or isinstance(links, (str, bytes)):
            _safety.warn_once(
                "links_type", "links must be a list of contexts or Links, got %s: ignored", type(links)
            )
            return
        try:
            links = list(links)  # (a list another thread changes, an iterable that fails)
        except Exception as exc:
            _safety.warn_once("links_unreadable", "links could not be read (%r): ignored", exc)
            return
        for link in links:
            if isinstance(link, Link):
                span.add_link(link.context, link.attributes)
            else:
                span.add_link(link)

    def emit_audit(
        self,
        action: str,
        target: str,
        outcome: str,
        *,
        actor: str | None = None,
        category: str = "request",
        attributes: Mapping[str, Any] | None = None,
        span: AnySpan | None = None,
    ) -> None:
        """Queue an audit record tied to ``span`` (default: the current span)."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        if category not in _AUDIT_CATEGORIES:
            _safety.warn_once(
                "audit_category",
                "emit_audit: category must be one of %s, got %r: dropped",
                _AUDIT_CATEGORIES,
                category,
            )
            return
        action, target, outcome = _safe_str(action), _safe_str(target), _safe_str(outcome)
        cur = span if span is not None else _cv_get()
        if actor is None and cur is not None:
            actor = dict(cur.baggage).get("user.id") or dict(cur.baggage).get("actor")
        if actor is not None and actor.__class__ is not str:
            # plain text: a str subclass as its base value (its own __str__ is not called)
            actor = str.__str__(actor) if isinstance(actor, str) else _safe_str(actor)
        pipeline.emit(
            audit_record(
                action=action,
                target=target,
                outcome=outcome,
                time_unix_nano=time_ns(),
                service=pipeline.service,
                environment=pipeline.environment,
                trace_id=cur.trace_id if cur is not None else 0,
                span_id=cur.span_id if cur is not None else 0,
                actor=actor,
                category=category,
                attributes=clean_attributes(attributes) if attributes else None,
            )
        )


if _accel.install_tracer is not None:
    # Tracer.start_span becomes a C method for the common case; the Python one stays the
    # reference and the fallback (before `span` below binds it).
    Tracer._py_start_span = Tracer.start_span  # type: ignore[attr-defined]
    _accel.install_tracer(Tracer, _INTERNAL, TraceContext)

#: The process-wide tracer. ``configure()`` re-points it with ``install()``; it is never
#: replaced, so ``span``/``start_span`` below can be its bound method.
_TRACER = Tracer(None)


def get_tracer() -> Tracer:
    """The process-wide tracer (a no-op tracer until ``configure()``)."""
    return _TRACER


#: ``span(name, attributes=None, kind=SpanKind.INTERNAL, context=None, links=None,
#: start_time_ns=None)``: start a span. Use it as a context manager
#: (``with pt.span("load_pitch") as s:``): the span is current inside the block, ended on exit,
#: and an ``Exception`` escaping the block is recorded (status error) and re-raised unchanged.
#: ``context`` sets an explicit parent (e.g. the result of :func:`pitchey_trace.extract`).
#: Without ``with`` (manual lifetime) call ``.end()`` yourself; it is then not made current.
span = _TRACER.start_span
#: Same as :data:`span`; the name reads better for manual lifetimes (``s = pt.start_span(...)``).
start_span = _TRACER.start_span


def current_span() -> AnySpan:
    """The current span, or a non-recording invalid span when none is active (never None)."""
    cur = _cv_get()
    if cur is None or cur is SUPPRESSED:
        return INVALID_SPAN
    return cur


def current_context() -> TraceContext | None:
    """The current span's :class:`TraceContext`, or None when no span is active."""
    cur = _cv_get()
    if cur is None or not cur.trace_id:
        return None
    return cur.context


def use_context(context: TraceContext | AnySpan | None) -> NonRecordingSpan:
    """Make a (remote) context current without starting a span: ``with pt.use_context(ctx):``.

    None (what :func:`~pitchey_trace.extract` returns when a message carried no context) makes
    the spans inside start a new trace. Anything else than a context or a span is a TypeError.
    """
    if context is None:
        return NonRecordingSpan(0, 0, 0, (), ())
    if not _usable_context(context):
        raise TypeError(f"use_context() takes a TraceContext, a span or None, got {type(context).__name__}")
    fields = (
        context.trace_id,
        context.span_id,
        context.trace_flags,
        context.trace_state,
        context.baggage,
        context.is_remote,
    )
    inner = getattr(context, "wrapped", context)  # a BaggageScope: the span it stands for
    if inner.__class__ is Span:
        scope = _LocalScope(*fields)
        scope.local_root_id = inner.local_root_id
        return scope
    return NonRecordingSpan(*fields)


def emit_audit(
    action: str,
    target: str,
    outcome: str,
    *,
    actor: str | None = None,
    category: str = "request",
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Record an audit event (dataset ``audit``) tied to the current trace. Never raises.

    ``actor`` defaults to the ``user.id`` baggage entry when present. Pass identifiers and
    outcomes only, never values.
    """
    try:
        _TRACER.emit_audit(action, target, outcome, actor=actor, category=category, attributes=attributes)
    except Exception as exc:
        _safety.report("emit_audit", exc)


# -- @traced ------------------------------------------------------------------------------------
@overload
def traced(fn: F, /) -> F: ...
@overload
def traced(
    *, name: str | None = None, kind: SpanKind = _INTERNAL, attributes: Mapping[str, Any] | None = None
) -> Callable[[F], F]: ...
def traced(
    fn: Any = None,
    /,
    *,
    name: str | None = None,
    kind: SpanKind = _INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """Decorate a function so each call runs in a span named after it.

    Works on plain, ``async``, generator and async-generator functions (a generator's span
    covers its whole iteration). ``@pt.traced`` or ``@pt.traced(name=..., kind=...)``.
    """

    if attributes is not None and not isinstance(attributes, Mapping):
        raise TypeError(f"@traced(attributes=...) takes a mapping, got {type(attributes).__name__}")

    def decorate(func: F) -> F:
        if isinstance(func, (classmethod, staticmethod)):  # @traced above @classmethod
            return type(func)(decorate(func.__func__))
        if isinstance(func, property):  # above @property: its accessors (it is not callable)
            prop: Any = func
            for accessor, replace in ((func.fget, "getter"), (func.fset, "setter"), (func.fdel, "deleter")):
                if accessor is not None:
                    prop = getattr(prop, replace)(decorate(accessor))
            return prop
        if inspect.isclass(func):  # it would become a function: isinstance() would break
            raise TypeError("@traced decorates functions and methods, not classes: decorate its methods")
        if not callable(func):
            raise TypeError(
                "@traced takes a function, a method, a classmethod, a staticmethod or a property, "
                f"got {type(func).__name__}; use @traced(name=...) for options"
            )
        span_name = name or _default_name(func)
        attrs = dict(attributes) if attributes else None
        kind_of = _kind_source(func)

        if inspect.isasyncgenfunction(kind_of):

            @functools.wraps(func)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
                # The generator body sees its own current span across yields (``inner``) and
                # the consumer never sees it between items; asend/athrow/aclose are forwarded.
                sp = _TRACER.start_span(span_name, attrs, kind)
                agen = func(*args, **kwargs)
                inner: Any = sp
                try:
                    token = _cv_set(inner)
                    try:
                        value = await agen.__anext__()
                    finally:
                        inner = _cv_get()
                        _cv_reset(token)
                    while True:
                        try:
                            sent = yield value
                        except GeneratorExit:
                            token = _cv_set(inner)
                            try:
                                await agen.aclose()
                            finally:
                                _cv_reset(token)
                            raise
                        except BaseException as exc:  # forwarded into the generator
                            token = _cv_set(inner)
                            try:
                                value = await agen.athrow(exc)
                            finally:
                                inner = _cv_get()
                                _cv_reset(token)
                        else:
                            token = _cv_set(inner)
                            try:
                                value = await agen.asend(sent)
                            finally:
                                inner = _cv_get()
                                _cv_reset(token)
                except StopAsyncIteration:
                    return
                except BaseException as exc:
                    _record_failure(sp, exc)
                    raise
                finally:
                    sp.end()

            return agen_wrapper  # type: ignore[return-value]
        if inspect.iscoroutinefunction(kind_of):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _TRACER.start_span(span_name, attrs, kind):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]
        if inspect.isgeneratorfunction(kind_of):

            @functools.wraps(func)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                # Same contract as the async version.
                sp = _TRACER.start_span(span_name, attrs, kind)
                gen = func(*args, **kwargs)
                inner: Any = sp
                try:
                    token = _cv_set(inner)
                    try:
                        value = next(gen)
                    finally:
                        inner = _cv_get()
                        _cv_reset(token)
                    while True:
                        try:
                            sent = yield value
                        except GeneratorExit:
                            token = _cv_set(inner)
                            try:
                                gen.close()
                            finally:
                                _cv_reset(token)
                            raise
                        except BaseException as exc:  # forwarded into the generator
                            token = _cv_set(inner)
                            try:
                                value = gen.throw(exc)
                            finally:
                                inner = _cv_get()
                                _cv_reset(token)
                        else:
                            token = _cv_set(inner)
                            try:
                                value = gen.send(sent)
                            finally:
                                inner = _cv_get()
                                _cv_reset(token)
                except StopIteration as stop:
                    return stop.value
                except BaseException as exc:
                    _record_failure(sp, exc)
                    raise
                finally:
                    sp.end()

            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _TRACER.start_span(span_name, attrs, kind):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate


def _default_name(func: Any) -> str:
    """``module.qualname`` of what ``func`` calls: a partial's function, a callable object's
    class (neither has a ``__qualname__`` of its own)."""
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    try:
        qualname = getattr(target, "__qualname__", None)
        if not isinstance(qualname, str):
            qualname = getattr(target, "__name__", None)
        if not isinstance(qualname, str):
            qualname = type(target).__qualname__
        module = getattr(target, "__module__", None)
        if not isinstance(module, str):
            module = type(target).__module__
    except Exception:  # (an object whose __getattr__ fails)
        return type(target).__qualname__
    return f"{module}.{qualname}"


def _kind_source(func: Any) -> Any:
    """What tells whether ``func`` is async or a generator: itself (inspect sees through
    partials and methods), or for a callable object its class's ``__call__``."""
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isroutine(target) or not callable(target):
        return func
    call = type(target).__call__  # (callable: its class has one)
    return call if inspect.isfunction(call) else func
