"""OpenTelemetry API bridge: code and libraries instrumented with the OpenTelemetry API record
pitchey-trace spans (sanitized, tail-kept, archived like every other span).

    import pitchey_trace as pt
    from pitchey_trace.otel import install

    pt.configure(service="pitch-api", exporters=[...])
    install()          # opentelemetry.trace.set_tracer_provider(TracerProvider())

    tracer = opentelemetry.trace.get_tracer("billing")
    with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT) as span:
        span.set_attribute("amount.cents", 1250)
        with pt.span("ledger.write"):     # a pitchey span: the child of "charge"
            ...

    @tracer.start_as_current_span("refund")   # a decorator too: a span per call
    async def refund(order): ...

Needs ``opentelemetry-api`` (extra ``otel-api``). The parent is the ``context`` argument when
one is given (an empty ``Context()`` starts a new trace); else the current pitchey-trace span;
else OpenTelemetry's current span (e.g. a remote parent attached with the OpenTelemetry API).
So spans nest across both APIs: the first ``TracerProvider()`` wraps OpenTelemetry's runtime
context, so a span made current through it (``start_as_current_span``, ``use_span``,
``context.attach``) is pitchey's current span too, and a span made current by ``pt.span`` is
what ``opentelemetry.trace.get_current_span()`` returns. Baggage is shared the same way:
``opentelemetry.baggage`` entries in an attached context are ``pt.get_baggage`` / ``pt.inject``
baggage, and ``pt.set_baggage`` entries are OpenTelemetry's (``opentelemetry.propagate.inject``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from pitchey_trace import _config, _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, Link, NonRecordingSpan, SpanKind, TraceContext
from pitchey_trace._tracer import get_tracer, use_context
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.propagation import BaggageScope

try:
    from opentelemetry import baggage as otel_baggage
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.context.context import Context
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.status import Status, StatusCode
except ImportError:  # pragma: no cover - exercised by the packaging test's environment
    raise IntegrationUnavailable("pitchey_trace.otel", "otel-api") from None

__all__ = ["TracerProvider", "install"]

#: A parent that makes ``start_span`` begin a new trace (an explicit, empty OpenTelemetry context).
_ROOT = NonRecordingSpan(0, 0, 0, (), ())
_KINDS = {kind: SpanKind[kind.name] for kind in otel_trace.SpanKind}
_OTEL_KINDS = {ours: theirs for theirs, ours in _KINDS.items()}
_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}


def _span_context(span: Any) -> SpanContext:
    try:
        state = TraceState(list(span.trace_state))
    except Exception:  # (OpenTelemetry's own checks of the members: never into the caller)
        state = TraceState()
    return SpanContext(
        trace_id=span.trace_id,
        span_id=span.span_id,
        is_remote=bool(getattr(span, "is_remote", False)),  # (a remote parent made current)
        trace_flags=TraceFlags(span.trace_flags & 0xFF),
        trace_state=state,
    )


def _attrs(attributes: Any) -> dict[str, Any] | None:
    if not attributes:
        return None
    try:
        return dict(attributes)
    except (TypeError, ValueError):  # (not a mapping: ignored, as the API must never raise)
        _safety.warn_once(
            "otel.attributes_invalid",
            "pitchey_trace.otel: attributes must be a mapping, got %s: ignored",
            type(attributes).__name__,
        )
        return None


def _link(link: Any) -> Link | None:
    """A pitchey link for an OpenTelemetry ``Link`` (None for anything else, or an invalid one,
    as the SDK drops those)."""
    context = getattr(link, "context", None)
    if not isinstance(context, SpanContext) or not context.is_valid:
        return None
    return Link(_trace_context(context), _attrs(getattr(link, "attributes", None)))


def _unwrap(span: Any) -> Any:
    """The span a ``pt.set_baggage`` scope stands for (baggage travels in OpenTelemetry's
    context, next to the span, not on it)."""
    return span._span if isinstance(span, BaggageScope) else span


# The key of OpenTelemetry's suppress_instrumentation() (private: None when it is gone)
_SUPPRESS_KEY: Any = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", None)

# Where OpenTelemetry keeps baggage in a context (private: when it is gone, get_all() is asked)
_BAGGAGE_KEY: Any = getattr(otel_baggage, "_BAGGAGE_KEY", None)


def _baggage_of(context: Context) -> tuple[tuple[str, str], ...]:
    """OpenTelemetry's baggage in ``context`` as pitchey-trace baggage (string values only)."""
    if _BAGGAGE_KEY is not None and not context.get(_BAGGAGE_KEY):
        return ()  # (the common case, on every attach: no baggage, no mapping proxy made)
    return tuple((k, v) for k, v in otel_baggage.get_all(context).items() if isinstance(v, str))


def _with_baggage(context: Context, baggage: tuple[tuple[str, str], ...]) -> Context:
    """``context`` with exactly ``baggage`` as its OpenTelemetry baggage (itself if it has it)."""
    if not baggage and _BAGGAGE_KEY is not None and not context.get(_BAGGAGE_KEY):
        return context
    if _baggage_of(context) == baggage:
        return context
    context = otel_baggage.clear(context)
    for key, value in baggage:
        context = otel_baggage.set_baggage(key, value, context)
    return context


def _trace_context(ctx: SpanContext, baggage: tuple[tuple[str, str], ...] = ()) -> TraceContext:
    return TraceContext(
        ctx.trace_id,
        ctx.span_id,
        int(ctx.trace_flags),
        tuple(ctx.trace_state.items()),
        baggage,
        ctx.is_remote,
    )


class _Span(otel_trace.Span):
    """An OpenTelemetry span backed by a pitchey-trace span (or a non-recording one)."""

    def __init__(
        self, span: Any, record_exception: bool = True, set_status_on_exception: bool = True
    ) -> None:
        self._span = span
        self._context: SpanContext | None = None
        self._record = record_exception
        self._set_status = set_status_on_exception

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """``with tracer.start_span(...) as span:`` ends the span (it does not make it current),
        and, as the SDK's span does, records an escaping ``Exception`` and sets the error status
        unless ``start_span`` was told not to (``record_exception``, ``set_status_on_exception``)."""
        try:
            if isinstance(exc, Exception) and self.is_recording():
                if self._record:
                    self.record_exception(exc, escaped=True)
                if self._set_status:
                    self.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            self.end()

    # Read by instrumentation libraries that expect the SDK's span (ReadableSpan), not only the
    # API: opentelemetry-instrumentation-asgi checks ``current_span.kind``.
    @property
    def kind(self) -> otel_trace.SpanKind:
        kind = getattr(self._span, "kind", None)
        return (
            _OTEL_KINDS.get(kind, otel_trace.SpanKind.INTERNAL)
            if isinstance(kind, SpanKind)
            else otel_trace.SpanKind.INTERNAL
        )

    @property
    def name(self) -> str:
        return str(getattr(self._span, "name", ""))

    @property
    def attributes(self) -> Mapping[str, Any]:
        return dict(getattr(self._span, "attributes", None) or {})

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = _span_context(self._span)
        return self._context

    def is_recording(self) -> bool:
        return bool(self._span.is_recording) and not self._span.is_ended

    def set_attribute(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(attributes)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self._span.add_event(name, _attrs(attributes), timestamp)

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        # (None or an invalid context is a no-op, as in the SDK; anything else is ignored too)
        if isinstance(context, SpanContext) and context.is_valid:
            self._span.add_link(_trace_context(context), _attrs(attributes))

    def update_name(self, name: str) -> None:
        self._span.update_name(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: UNSET is ignored (it never clears an error); OK is final (the core's rule);
        # a Status object's own description wins over the argument.
        if isinstance(status, Status):
            code, text = status.status_code, status.description
        else:
            code, text = status, description
        if code is StatusCode.UNSET or code not in _STATUS:
            return
        self._span.set_status(_STATUS[code], text)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # (the time given, ns since the epoch, is the core's to check: anything else is
        # ignored and counted as misuse.timestamp_invalid)
        _unwrap(self._span).record_exception(exception, _attrs(attributes), timestamp)

    def end(self, end_time: int | None = None) -> None:
        self._span.end(end_time)

    def __repr__(self) -> str:
        return f"pitchey_trace.otel span {self._span!r}"


# OpenTelemetry's HTTP client instrumentations -> the library pitchey_trace.web instruments too
_HTTP_SCOPES = {
    f"opentelemetry.instrumentation.{lib}": lib for lib in ("httpx", "requests", "urllib", "urllib3")
}


def _warn_if_doubled(library: str) -> None:
    """Both OpenTelemetry's and pitchey's instrumentation of one HTTP library are on: each
    request is two nested client spans (pitchey's inside). Not an error: said once, counted."""
    outbound = sys.modules.get("pitchey_trace.web.outbound")  # (not imported: not instrumented)
    if outbound is not None and library in getattr(outbound, "_patched", ()):
        _safety.warn_once(
            f"otel.duplicate_instrumentation.{library}",
            "pitchey_trace: both OpenTelemetry's %s instrumentation and pitchey_trace.web's "
            "instrument_%s() are on: each request is recorded as two nested client spans; "
            "turn one of them off",
            library,
            library,
        )


class _RequestServerSpan(_Span):
    """FastAPI's native server span for a request that pitchey's ASGI middleware traces
    already: it stands for the middleware's server span, so FastAPI's operation spans and the
    handler's spans nest under that one, and records nothing itself. The middleware names,
    annotates, times and ends its span; FastAPI's copies of those facts (and its error status
    for a client that went away, which pitchey does not count as a server error) would only
    overwrite them."""

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        pass

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        pass

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        pass

    def end(self, end_time: int | None = None) -> None:
        pass


def _request_server_span(attributes: Any) -> _RequestServerSpan | None:
    """The stand-in for FastAPI's native server span when pitchey's ASGI middleware is tracing
    this very request (the middleware wraps the FastAPI app), else None."""
    web = sys.modules.get("pitchey_trace.web._common")  # (not imported: no middleware)
    state = web.REQUEST.get() if web is not None else None
    if state is None:
        return None
    # An app called in-process from a traced handler (httpx's ASGITransport) is a request of
    # its own: its path tells it apart, and at the same path, that the request's one stand-in
    # is given already. A request that ended (no scope) may live on in a task it started.
    scope = getattr(state, "scope", None)
    if not isinstance(scope, Mapping) or getattr(state, "native_claimed", False):
        return None
    path = attributes.get("url.path") if isinstance(attributes, Mapping) else None
    if path is not None and scope.get("path") != path:
        return None
    state.native_claimed = True
    _safety.warn_once(
        "otel.duplicate_instrumentation.fastapi",
        "pitchey_trace: FastAPI's native OpenTelemetry telemetry and ASGITracingMiddleware both "
        "trace this request: FastAPI's server span is left out (the middleware's is the "
        "request's server span, FastAPI's operation spans nest under it); pass "
        "FastAPI(telemetry={'tracing': False}) to turn FastAPI's spans off",
    )
    return _RequestServerSpan(state.span)


class _Tracer(otel_trace.Tracer):
    def __init__(self, scope: dict[str, str]) -> None:
        self._scope = scope
        self._http = _HTTP_SCOPES.get(scope["otel.scope.name"])
        # FastAPI's native telemetry (FastAPI(telemetry=...)) starts its spans with this tracer
        self._fastapi = scope["otel.scope.name"] == "fastapi"

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: otel_trace.SpanKind = otel_trace.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Sequence[otel_trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> otel_trace.Span:
        try:
            if self._fastapi and kind is otel_trace.SpanKind.SERVER:
                server = _request_server_span(attributes)
                if server is not None:
                    return server
            parent = _parent(context)
            # (bad attributes or links are dropped, not the whole span)
            attrs = {**self._scope, **(_attrs(attributes) or {})}
            span_links = [link for link in map(_link, links or ()) if link is not None]
            span = get_tracer().start_span(
                name, attrs, _KINDS.get(kind, SpanKind.INTERNAL), parent, span_links or None, start_time
            )
        except Exception as exc:  # never into the instrumented code
            _safety.report("otel.start_span", exc)
            return otel_trace.INVALID_SPAN
        if self._http is not None:
            _warn_if_doubled(self._http)
        return _Span(span, record_exception, set_status_on_exception)

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Any = None,
        kind: otel_trace.SpanKind = otel_trace.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Sequence[otel_trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _CurrentSpan:
        return _CurrentSpan(
            self,
            (name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception),
            end_on_exit,
        )


_F = TypeVar("_F", bound=Callable[..., Any])


class _CurrentSpan:
    """``start_as_current_span``'s context manager: what ``opentelemetry.trace.use_span`` does
    (attach, record an ``Exception`` and set the error status, detach, end), as one object
    instead of two generators. Attaching through the wrapped runtime context makes the span
    pitchey's current span too.

    As the API's own (a generator context manager) it starts its span when entered, not when
    made, and is a decorator too: each call of the decorated function is a span of its own (a
    coroutine function's is timed to the coroutine's end)."""

    __slots__ = ("_args", "_end", "_span", "_token", "_tracer")

    def __init__(self, tracer: _Tracer, args: tuple[Any, ...], end: bool) -> None:
        self._tracer = tracer
        self._args = args  # start_span's arguments
        self._end = end
        self._span: otel_trace.Span = otel_trace.INVALID_SPAN
        self._token: Any = None

    def _fresh(self) -> _CurrentSpan:
        return _CurrentSpan(self._tracer, self._args, self._end)

    def __enter__(self) -> otel_trace.Span:
        self._span = span = self._tracer.start_span(*self._args)
        self._token = otel_context.attach(otel_trace.set_span_in_context(span))
        return span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        try:
            otel_context.detach(self._token)
            # (Exception only, as use_span: GeneratorExit and the like are not errors)
            if isinstance(exc, Exception) and span.is_recording():
                if self._args[6]:  # record_exception
                    span.record_exception(exc)
                if self._args[7]:  # set_status_on_exception
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._end:
                span.end()

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def traced_coroutine(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)

            return cast(_F, traced_coroutine)

        @functools.wraps(func)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return cast(_F, traced)


def _parent(context: Any) -> Any:
    """The pitchey parent for an OpenTelemetry ``context`` argument (see the module docstring).

    Without one, the current pitchey span comes first: ``start_as_current_span`` makes its span
    current for both APIs and ``pt.span`` only for pitchey, so pitchey's current span is the
    innermost of the two whenever it is set."""
    if context is None:
        if CURRENT.get() is not None:
            return None  # start_span's own default: the current pitchey span
        context = otel_context.get_current()
        explicit = False
    elif CURRENT.get() is SUPPRESSED:
        # (pt.suppress_tracing(), excluded paths, the SDK's threads: an explicit context, such
        # as the parent FastAPI extracts for a health check, records nothing there either)
        return SUPPRESSED
    else:
        explicit = True
    current = otel_trace.get_current_span(context)
    # (OpenTelemetry keeps baggage in the context, not the span; inline: usually none)
    baggage = _baggage_of(context) if _BAGGAGE_KEY is None or context.get(_BAGGAGE_KEY) else ()
    if isinstance(current, _Span):
        span = _unwrap(current._span)
        return BaggageScope(span, baggage) if baggage != span.baggage else span
    ctx = current.get_span_context()
    if ctx.is_valid:
        return _trace_context(ctx, baggage)
    if not explicit:
        return None
    # an explicit context without a span: a new trace (with the context's baggage)
    return NonRecordingSpan(0, 0, 0, (), baggage) if baggage else _ROOT


class _SyncedRuntimeContext:
    """OpenTelemetry's runtime context, wrapped so that attaching a context makes its span the
    current pitchey span too. Instrumentation often makes a span current with
    ``opentelemetry.trace.use_span`` or ``context.attach`` rather than through the tracer (the
    ASGI middleware does): without this, ``pt.span`` inside would start a new trace. A remote
    span (an extracted ``traceparent``) becomes pitchey's current context as with
    ``pt.use_context``; a context without a valid span leaves pitchey's current span alone."""

    # (the same three methods as OpenTelemetry's runtime contexts, which is all it calls; its
    # base class is private)
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def attach(self, context: Context) -> Any:
        token = self._inner.attach(context)
        try:
            ours = CURRENT.get()
            if ours is SUPPRESSED:  # (the SDK's own threads, excluded paths: stay silent)
                return (token, None)
            if _SUPPRESS_KEY is not None and context.get(_SUPPRESS_KEY):
                # opentelemetry.instrumentation.utils.suppress_instrumentation() (OpenTelemetry's
                # exporters, instrumentations nesting): pitchey records and injects nothing
                # inside either, as in pt.suppress_tracing()
                return (token, CURRENT.set(SUPPRESSED))
            span = otel_trace.get_current_span(context)
            # (inline: the common context has no baggage; see _baggage_of)
            baggage = _baggage_of(context) if _BAGGAGE_KEY is None or context.get(_BAGGAGE_KEY) else ()
            if isinstance(span, _Span):
                target = span._span
                if target.__class__ is BaggageScope:
                    target = target._span
            else:
                ctx = span.get_span_context()
                if ctx.is_valid:
                    return (token, CURRENT.set(use_context(_trace_context(ctx, baggage))))
                if not baggage:
                    return (token, None)
                # baggage without a span (opentelemetry.baggage.set_baggage + attach): on
                # pitchey's current span, or on none, as pt.set_baggage does
                target = _unwrap(ours) if ours is not None else NonRecordingSpan(0, 0, 0, (), baggage)
            if baggage != target.baggage:  # the context's baggage is the baggage from now on
                target = BaggageScope(target, baggage)
            return (token, CURRENT.set(target))
        except Exception as exc:
            _safety.report("otel.attach", exc)
        return (token, None)

    def get_current(self) -> Context:
        current: Context = self._inner.get_current()
        # A span that only pt.span made current is OpenTelemetry's current span too, so that
        # opentelemetry.trace.get_current_span() and any tracer see it; baggage set with
        # pt.set_baggage is OpenTelemetry's baggage too (opentelemetry.baggage, propagate.inject).
        ours = CURRENT.get()
        if ours is None or ours is SUPPRESSED:
            return current
        if not ours.trace_id:  # baggage outside any span
            return _with_baggage(current, ours.baggage) if ours.baggage else current
        mine = ours._span if ours.__class__ is BaggageScope else ours
        span = otel_trace.get_current_span(current)
        if isinstance(span, _Span):
            theirs = span._span
            # (FastAPI's stand-in records nothing: get_current_span() gets a span that does)
            same = (
                span.__class__ is not _RequestServerSpan
                and (theirs._span if theirs.__class__ is BaggageScope else theirs) is mine
            )
        else:
            # the span attach() made pitchey's current (another provider's, a remote parent):
            # OpenTelemetry's own object, which may be recording, not a non-recording copy
            same = isinstance(mine, NonRecordingSpan) and span.get_span_context().span_id == mine.span_id
        if not same:
            current = otel_trace.set_span_in_context(_Span(mine), current)
        if ours.baggage or _BAGGAGE_KEY is None or current.get(_BAGGAGE_KEY):
            return _with_baggage(current, ours.baggage)
        return current

    def detach(self, token: Any) -> None:
        inner, ours = token if isinstance(token, tuple) and len(token) == 2 else (token, None)
        try:
            if ours is not None:
                CURRENT.reset(ours)
        except ValueError:
            # A token from another context (another thread or task): OpenTelemetry's own detach
            # fails there too (it logs "Failed to detach context") and changes nothing, so
            # pitchey's current span stays as it is, in step with OpenTelemetry's: clearing it
            # would start a new trace under a span still open here.
            pass
        self._inner.detach(inner)


_sync_lock = threading.Lock()


def _sync_contexts() -> None:
    """Wrap OpenTelemetry's runtime context once per process (idempotent)."""
    with _sync_lock:
        current = otel_context._RUNTIME_CONTEXT
        if not isinstance(current, _SyncedRuntimeContext):
            # (duck-typed: OpenTelemetry's context functions call only these three methods)
            otel_context._RUNTIME_CONTEXT = _SyncedRuntimeContext(current)  # type: ignore[assignment]


class TracerProvider(otel_trace.TracerProvider):
    """An OpenTelemetry ``TracerProvider`` whose spans are pitchey-trace spans, recorded by the
    pipeline ``pitchey_trace.configure()`` set up. Each span carries ``otel.scope.name`` (and
    ``otel.scope.version``) from ``get_tracer()``.

    Making one also keeps OpenTelemetry's current span and pitchey-trace's in step (OpenTelemetry's
    runtime context is wrapped once per process): a span made current with either API is the
    parent of spans started with the other."""

    def __init__(self) -> None:
        _sync_contexts()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> otel_trace.Tracer:
        scope = {"otel.scope.name": str(instrumenting_module_name or "")}
        if instrumenting_library_version:
            scope["otel.scope.version"] = str(instrumenting_library_version)
        return _Tracer(scope)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export everything recorded so far (``pitchey_trace.force_flush``), as the
        OpenTelemetry SDK's provider offers; True when every exporter confirmed in time."""
        return bool(_config.force_flush(max(0.0, timeout_millis / 1000.0)))

    def shutdown(self) -> None:
        """Flush and stop the pipeline ``configure()`` set up (``pitchey_trace.shutdown``)."""
        _config.shutdown()


def _records_fastapi(app: Any) -> bool:
    """Whether the native OpenTelemetry server spans of FastAPI app ``app`` are recorded here:
    its tracing is on and its provider (``telemetry={"tracer_provider": ...}``, else the
    global one, as ``install()`` sets it) is ours."""
    config = getattr(app, "_telemetry", None)  # (FastAPI's, private: unreadable, its defaults)
    if not isinstance(config, Mapping):
        config = {}
    if not config.get("tracing", True):
        return False
    provider = config.get("tracer_provider") or getattr(otel_trace, "_TRACER_PROVIDER", None)
    return isinstance(provider, TracerProvider)


_install_lock = threading.Lock()


def install() -> TracerProvider:
    """Make a :class:`TracerProvider` OpenTelemetry's global provider and return it.

    Idempotent: when one already is, that one is returned. OpenTelemetry lets the global
    provider be set once per process: when the application set another one first (the
    OpenTelemetry SDK's), that one stays global, a warning on the ``pitchey_trace`` logger says
    so, and the provider returned records pitchey-trace spans only for what is handed it
    (``tracer_provider=`` of an instrumentation)."""
    with _install_lock:
        # (read directly: get_tracer_provider() would load OTEL_PYTHON_TRACER_PROVIDER as a
        # side effect)
        current = getattr(otel_trace, "_TRACER_PROVIDER", None)
        if isinstance(current, TracerProvider):
            return current
        provider = TracerProvider()
        if current is not None:
            _safety.warn_once(
                "otel.install",
                "pitchey_trace.otel.install(): OpenTelemetry's global TracerProvider is already "
                "set (%s) and cannot be replaced: spans started with "
                "opentelemetry.trace.get_tracer() go there, not to pitchey-trace",
                f"{type(current).__module__}.{type(current).__qualname__}",
            )
            return provider
        otel_trace.set_tracer_provider(provider)
        return provider
