"""gRPC: a SERVER span per call a server handles, a CLIENT span per call a channel makes (extra ``grpc``).

    from pitchey_trace.grpc import instrument_grpc
    instrument_grpc()     # every server and channel, however grpc was imported (see instrument_grpc)

or, per server and channel::

    server = grpc.server(pool, interceptors=[server_interceptor()])
    channel = grpc.intercept_channel(grpc.insecure_channel(target), client_interceptor(target))
    server = grpc.aio.server(interceptors=[aio_server_interceptor()])
    channel = grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(target))

A call is a span named ``"{package.Service}/{Method}"`` with the OpenTelemetry RPC attributes:
``rpc.system`` (``grpc``), ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``; a
server span also has the caller's address (``client.address``, ``network.peer.address`` /
``network.peer.port``), a client span the target's (``server.address`` / ``server.port``). The
client sends its span's ``traceparent`` (and ``tracestate`` / ``baggage``) in the call's
metadata; the server continues it, and its span is current while the handler runs, so the
handler's own spans and queries nest under it. All four call shapes are covered (unary and
streaming requests and responses); a streamed response is timed to its last message.

Status: the call's gRPC status code is recorded. A client span is an error for every code but
``OK``; a server span, as OpenTelemetry's conventions say, only for ``UNKNOWN``,
``DEADLINE_EXCEEDED``, ``UNIMPLEMENTED``, ``INTERNAL``, ``UNAVAILABLE`` and ``DATA_LOSS`` (a
``NOT_FOUND`` is the handler's answer, not its failure). ``error.type`` is the code's name; an
exception a handler raises (not ``context.abort``) is recorded with its stack trace and
re-raised unchanged. Messages and metadata values are never recorded. Nothing is recorded
inside :func:`pitchey_trace.suppress_tracing` or on the SDK's own threads (the OTLP/gRPC
exporter's calls stay untraced).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import re
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

from pitchey_trace import _safety, propagation
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import ConfigurationError, IntegrationUnavailable
from pitchey_trace.propagation import extract, inject

try:
    import grpc
    import grpc.aio
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationUnavailable("pitchey_trace.grpc", "grpc") from _exc

__all__ = [
    "aio_client_interceptors",
    "aio_server_interceptor",
    "client_interceptor",
    "instrument_grpc",
    "server_interceptor",
    "uninstrument_grpc",
]

_SERVER = SpanKind.SERVER
_CLIENT = SpanKind.CLIENT
_start_span = get_tracer().start_span
_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# What a server span counts as its own failure (OpenTelemetry's RPC conventions).
_SERVER_ERRORS = frozenset(
    (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)
_MAX_DETAILS = 512

# "/pkg.Service/Method" -> (span name, attributes); bounded: a client may send any method name
# (a server only sees the ones it has handlers for, a client the ones its code calls).
_methods: dict[Any, tuple[str, dict[str, Any]]] = {}
_MAX_METHODS = 1024


def _method(method: Any) -> tuple[str, dict[str, Any]]:
    known = _methods.get(method)
    if known is not None:
        return known
    text = method.decode("utf-8", "replace") if isinstance(method, bytes) else str(method)
    service, _, name = text.lstrip("/").partition("/")
    attrs: dict[str, Any] = {"rpc.system": "grpc"}
    if service and name:
        attrs["rpc.service"] = service
        attrs["rpc.method"] = name
        label = f"{service}/{name}"
    else:  # not a gRPC path: named after the system, never after an arbitrary string
        label = "grpc"
    if len(_methods) >= _MAX_METHODS:
        _methods.clear()
    known = _methods[method] = (label, attrs)
    return known


def _split_host_port(text: str) -> tuple[str | None, int | None]:
    """``host:port``, ``[v6]:port``, ``host`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text.isdigit() else None
    return (host or None), port


def _peer_attributes(peer: Any) -> dict[str, Any]:
    """``context.peer()`` (``ipv4:127.0.0.1:50412``, ``ipv6:%5B::1%5D:50412``, ``unix:/path``)."""
    if not isinstance(peer, str):
        return {}
    scheme, _, rest = peer.partition(":")
    if scheme == "unix":
        return {"network.peer.address": rest, "network.transport": "unix"} if rest else {}
    if scheme not in ("ipv4", "ipv6"):
        return {}
    host, port = _split_host_port(unquote(rest))
    attrs: dict[str, Any] = {}
    if host:
        attrs["client.address"] = attrs["network.peer.address"] = host
    if port is not None:
        attrs["network.peer.port"] = port
    return attrs


def _target_attributes(target: Any) -> dict[str, Any]:
    """A channel target (``localhost:50051``, ``dns:///host:443``, ``ipv4:10.0.0.1:80``,
    ``unix:/path``) -> ``server.address`` / ``server.port``."""
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    if not isinstance(target, str) or not target:
        return {}
    text = target
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("dns", "ipv4", "ipv6", "unix", "unix-abstract"):
        if scheme.startswith("unix"):
            return {"server.address": rest} if rest.strip("/") else {}
        text = rest[2:].partition("/")[2] if rest.startswith("//") else rest
        text = text.split(",")[0]  # ipv4:a:1,b:2 lists several addresses: the first one
    host, port = _split_host_port(text)
    attrs: dict[str, Any] = {}
    if host:
        attrs["server.address"] = host
    if port is not None:
        attrs["server.port"] = port
    return attrs


def _code(value: Any) -> grpc.StatusCode | None:
    return value if isinstance(value, grpc.StatusCode) else None


def _details(text: Any) -> str | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[:_MAX_DETAILS] if isinstance(text, str) and text else None


def _finish(span: AnySpan, code: grpc.StatusCode, details: str | None, is_error: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if is_error:
        span.set_attribute("error.type", code.name)
        span.set_status("error", f"{code.name}: {details}" if details else code.name)
    span.end()


# -- server --------------------------------------------------------------------------------------
_W3C_KEYS = frozenset(("traceparent", "tracestate", "baggage"))
# context.peer() -> its attributes; bounded (a peer is a client's address and port)
_peers: dict[Any, dict[str, Any]] = {}


def _parent(metadata: Any) -> Any:
    """The caller's context from the call's metadata. gRPC keys are lowercase, so with the
    default propagators a dict of the three W3C entries takes extract()'s fast path; a
    repeated entry or other propagators take the general one (which judges duplicates)."""
    if propagation._custom is not None:
        return extract(metadata)
    carrier: dict[str, Any] = {}
    for key, value in metadata:
        if key in _W3C_KEYS:
            if key in carrier:
                return extract(metadata)
            carrier[key] = value
    return extract(carrier) if carrier else None


def _server_start(method: Any, context: Any) -> AnySpan | None:
    if CURRENT.get() is SUPPRESSED:
        return None
    try:
        label, template = _method(method)
        peer = context.peer()
        address = _peers.get(peer)
        if address is None:
            if len(_peers) >= _MAX_METHODS:
                _peers.clear()
            address = _peers[peer] = _peer_attributes(peer)
        parent = _parent(context.invocation_metadata() or ())
        return _start_span(label, {**template, **address}, _SERVER, parent)
    except Exception as exc:
        _safety.report("grpc.server.start", exc)
        return None


def _server_end(span: AnySpan, context: Any, exc: BaseException | None, header: str | None) -> None:
    """End a server span with the call's status: the code the handler set (``set_code``,
    ``abort``), else UNKNOWN for an exception (what gRPC answers), CANCELLED when the call was
    abandoned (the client cancelled or went away, the task was cancelled; also when the handler
    returned after that), DEADLINE_EXCEEDED when that was the call's deadline passing, OK
    otherwise."""
    try:
        code = set_code = _code(context.code())
        if code is None:
            if exc is None:
                code = _OK if _active(context) else _abandoned(context)
            elif isinstance(exc, Exception):
                # Raised once the call was over (the request iterator raises when the client
                # cancels): the client got CANCELLED / DEADLINE_EXCEEDED, not the handler's UNKNOWN.
                code = _UNKNOWN if _active(context) else _abandoned(context)
            else:
                code = _abandoned(context)
        details = _details(context.details()) if code is not _OK else None
        if isinstance(exc, Exception) and set_code is None:
            # raised by the handler itself (context.abort() sets the code before it raises)
            span.record_exception(exc)
            details = details or _details(f"{type(exc).__name__}: {exc}")
        if header is not None:
            _send_trace_id(context, header, span)
        _finish(span, code, details, code in _SERVER_ERRORS)
    except Exception as internal:
        _safety.report("grpc.server.end", internal)


def _active(context: Any) -> bool:
    """Whether a sync call is still on (no status sent yet: so False means the client cancelled
    it or its deadline passed while the handler ran). A ``grpc.aio`` handler's task is
    cancelled instead, which ends it with a CancelledError."""
    is_active = getattr(context, "is_active", None)
    return is_active is None or bool(is_active())


def _abandoned(context: Any) -> grpc.StatusCode:
    """CANCELLED, or DEADLINE_EXCEEDED when the call's deadline has passed (gRPC's server API
    does not say which of the two ended a call: its deadline does)."""
    try:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return _DEADLINE_EXCEEDED
    except Exception as exc:
        _safety.report("grpc.server.end", exc)
    return _CANCELLED


def _send_trace_id(context: Any, header: str, span: AnySpan) -> None:
    """Add the trace id to the trailing metadata the call ends with (after the handler's own
    entries; a value it set for the key itself wins)."""
    try:
        existing = tuple(context.trailing_metadata() or ())
        if not any(pair[0] == header for pair in existing):
            context.set_trailing_metadata((*existing, (header, f"{span.trace_id:032x}")))
    except Exception as exc:
        _safety.report("grpc.server.metadata", exc)


def _reset(token: Any) -> None:
    try:
        CURRENT.reset(token)
    except ValueError:  # (a generator closed from another context)
        pass


def _sync_unary(original: Callable[..., Any], method: Any, header: str | None) -> Callable[..., Any]:
    """A handler answering one message (unary or request-streaming)."""

    @functools.wraps(original)
    def behaviour(request: Any, context: Any) -> Any:
        span = _server_start(method, context)
        if span is None:
            return original(request, context)
        token = CURRENT.set(span)
        try:
            response = original(request, context)
        except BaseException as exc:
            _reset(token)
            _server_end(span, context, exc, header)
            raise
        _reset(token)
        _server_end(span, context, None, header)
        return response

    return behaviour


def _sync_stream(original: Callable[..., Any], method: Any, header: str | None) -> Callable[..., Any]:
    """A handler answering a stream: its span is current while each message is produced and
    ends after the last one."""

    @functools.wraps(original)
    def behaviour(request: Any, context: Any) -> Any:
        span = _server_start(method, context)
        if span is None:
            return original(request, context)
        token = CURRENT.set(span)
        try:
            iterator = iter(original(request, context))
        except BaseException as exc:
            _reset(token)
            _server_end(span, context, exc, header)
            raise
        _reset(token)
        return _traced_messages(iterator, span, context, header)

    return behaviour


def _traced_messages(
    iterator: Iterator[Any], span: AnySpan, context: Any, header: str | None
) -> Iterator[Any]:
    error: BaseException | None = None
    try:
        while True:
            token = CURRENT.set(span)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                _reset(token)
            yield item
    except BaseException as exc:  # (GeneratorExit: the call was cancelled)
        error = exc
        raise
    finally:
        _server_end(span, context, error, header)


class _KeepTraceId:
    """The context a ``grpc.aio`` handler sees when callers get the trace id: trailing metadata
    it sets (``set_trailing_metadata``, ``abort(..., trailing_metadata=)``) replaces what was
    there, and ``abort()`` sends it at once, so the trace id is added to whatever it sets (a
    value it gives for the key itself wins). Everything else is the call's own context."""

    __slots__ = ("_context", "_pair")

    def __init__(self, context: Any, pair: tuple[str, str]) -> None:
        self._context = context
        self._pair = pair

    def _with_id(self, metadata: Any) -> tuple[Any, ...]:
        pairs = tuple(metadata or ())
        try:
            if not any(pair[0] == self._pair[0] for pair in pairs):
                return (*pairs, self._pair)
        except Exception as exc:  # (odd metadata: passed on as it is, gRPC says what is wrong)
            _safety.report("grpc.server.metadata", exc)
        return pairs

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(self._with_id(trailing_metadata))

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> Any:
        if trailing_metadata:
            trailing_metadata = self._with_id(trailing_metadata)
        return await self._context.abort(code, details, trailing_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


grpc.aio.ServicerContext.register(_KeepTraceId)  # (isinstance checks in handlers still hold)


def _aio_context(context: Any, header: str | None, span: AnySpan) -> Any:
    if header is None:
        return context
    _send_trace_id(context, header, span)  # now: grpc.aio's abort() sends the status at once
    return _KeepTraceId(context, (header, f"{span.trace_id:032x}"))


def _aio_unary(original: Callable[..., Any], method: Any, header: str | None) -> Callable[..., Any]:
    @functools.wraps(original)
    async def behaviour(request: Any, context: Any) -> Any:
        span = _server_start(method, context)
        if span is None:
            return await original(request, context)
        seen = _aio_context(context, header, span)
        token = CURRENT.set(span)
        try:
            response = await original(request, seen)
        except BaseException as exc:
            _reset(token)
            _server_end(span, context, exc, header)
            raise
        _reset(token)
        _server_end(span, context, None, header)
        return response

    return behaviour


def _aio_stream(original: Callable[..., Any], method: Any, header: str | None) -> Callable[..., Any]:
    """An async-generator handler; a coroutine handler that streams with ``context.write`` is
    timed by :func:`_aio_unary` (its messages are written before it returns)."""

    @functools.wraps(original)
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        span = _server_start(method, context)
        if span is None:
            async for item in original(request, context):
                yield item
            return
        error: BaseException | None = None
        seen = _aio_context(context, header, span)
        token = CURRENT.set(span)  # (the call runs in its own task)
        try:
            async for item in original(request, seen):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            _reset(token)
            _server_end(span, context, error, header)

    return behaviour


_FACTORIES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def _wrap_handler(handler: Any, method: Any, header: str | None) -> Any:
    for attribute, factory, streams in _FACTORIES:
        original = getattr(handler, attribute, None)
        if original is None:
            continue
        if inspect.isasyncgenfunction(original):
            wrapped = _aio_stream(original, method, header)
        elif inspect.iscoroutinefunction(original):
            wrapped = _aio_unary(original, method, header)
        else:
            wrapped = (_sync_stream if streams else _sync_unary)(original, method, header)
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


# (method, id(handler), header) -> (handler, its traced twin): a server's handlers are
# long-lived objects, so each is wrapped once (the handler is held, so its id is not reused)
_handlers: dict[tuple[Any, int, str | None], tuple[Any, Any]] = {}


def _intercepted(handler: Any, details: Any, header: str | None) -> Any:
    if handler is None:  # no such method: gRPC answers UNIMPLEMENTED, untraced
        return None
    try:
        method = details.method
        key = (method, id(handler), header)
        known = _handlers.get(key)
        if known is not None and known[0] is handler:
            return known[1]
        traced = _wrap_handler(handler, method, header)
        if len(_handlers) >= _MAX_METHODS:
            _handlers.clear()
        _handlers[key] = (handler, traced)
        return traced
    except Exception as exc:
        _safety.report("grpc.server.wrap", exc)
        return handler


_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")


def _header(name: str | None) -> str | None:
    if name is None:
        return None
    key = str(name).lower()
    if not _METADATA_KEY.fullmatch(key) or key.endswith("-bin") or key.startswith("grpc-"):
        raise ConfigurationError(
            f"trace_id_metadata must be a metadata key of letters, digits, '-', '_' or '.', "
            f"not ending in -bin nor starting with grpc-: {name!r}"
        )
    return key


class _ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, trace_id_metadata: str | None = "x-trace-id") -> None:
        self._header = _header(trace_id_metadata)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        return _intercepted(continuation(handler_call_details), handler_call_details, self._header)


class _AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, trace_id_metadata: str | None = "x-trace-id") -> None:
        self._header = _header(trace_id_metadata)

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        return _intercepted(await continuation(handler_call_details), handler_call_details, self._header)


def server_interceptor(*, trace_id_metadata: str | None = "x-trace-id") -> grpc.ServerInterceptor:
    """The interceptor tracing a ``grpc.server`` (pass it first in ``interceptors=[...]``).

    ``trace_id_metadata``: the trailing-metadata key that gives each caller the call's trace id
    (gRPC's counterpart of the HTTP ``X-Trace-Id`` header; None to send none). A value the
    handler set itself is kept."""
    return _ServerInterceptor(trace_id_metadata)


def aio_server_interceptor(*, trace_id_metadata: str | None = "x-trace-id") -> grpc.aio.ServerInterceptor:
    """The interceptor tracing a ``grpc.aio.server``; arguments as for :func:`server_interceptor`."""
    return _AioServerInterceptor(trace_id_metadata)


# -- client --------------------------------------------------------------------------------------
class _CallDetails(
    namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


_Injected = tuple[tuple[str, str], ...]


def _client_start(
    details: Any, address: dict[str, Any]
) -> tuple[AnySpan, list[tuple[str, Any]], _Injected] | None:
    """The call's span, its metadata with our propagation entries, and those entries (None:
    untraced)."""
    if CURRENT.get() is SUPPRESSED:
        return None
    span: AnySpan | None = None
    try:
        label, template = _method(details.method)
        span = _start_span(label, {**template, **address}, _CLIENT)
        carrier: dict[str, str] = {}
        inject(carrier, span)
        metadata = [pair for pair in (details.metadata or ()) if pair[0] not in carrier]
        injected = tuple(carrier.items())
        metadata.extend(injected)
        return span, metadata, injected
    except Exception as exc:
        _safety.report("grpc.client.start", exc)
        if span is not None:
            span.end()
        return None


def _client_done(span: AnySpan, call: Any) -> None:
    try:
        code = _code(call.code()) or _UNKNOWN
        details = _details(call.details()) if code is not _OK else None
        _finish(span, code, details, code is not _OK)
    except Exception as exc:
        _safety.report("grpc.client.end", exc)


def _client_failed(span: AnySpan, exc: BaseException) -> None:
    with _safety.guard("grpc.client.end"):
        if isinstance(exc, Exception):
            span.record_exception(exc)
        code = _code(getattr(exc, "code", lambda: None)()) if isinstance(exc, grpc.RpcError) else None
        _finish(span, code or (_UNKNOWN if isinstance(exc, Exception) else _CANCELLED), None, True)


# The entries our client interceptor added to the call it is passing on (set while its
# continuation runs; gRPC calls the interceptors inside synchronously): another of ours further
# in, on the same call, passes it through instead of making a second span.
_IN_CALL: ContextVar[_Injected | None] = ContextVar("pitchey_trace_grpc_call", default=None)


def _same_call(details: Any, injected: _Injected) -> bool:
    """Whether ``details`` carry the entries an outer interceptor of ours added (not a call an
    application interceptor in between makes of its own)."""
    if not injected:  # (no propagator wrote anything: nothing to tell the calls apart by)
        return True
    try:
        return injected[0] in (details.metadata or ())
    except Exception:
        return False


class _ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, target: Any) -> None:
        self._address = _target_attributes(target)

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        outer = _IN_CALL.get()
        if outer is not None and _same_call(details, outer):
            return continuation(details, request)
        started = _client_start(details, self._address)
        if started is None:
            return continuation(details, request)
        span, metadata, injected = started
        try:
            details = _CallDetails(
                details.method,
                details.timeout,
                metadata,
                details.credentials,
                getattr(details, "wait_for_ready", None),
                getattr(details, "compression", None),
            )
        except Exception as exc:
            _safety.report("grpc.client.start", exc)
        token = _IN_CALL.set(injected)
        try:
            call = continuation(details, request)
        except BaseException as exc:
            _client_failed(span, exc)
            raise
        finally:
            _IN_CALL.reset(token)
        try:
            # (called at once when the call is already over, else on gRPC's thread as it ends)
            call.add_done_callback(functools.partial(_client_done, span))
        except Exception as exc:
            _safety.report("grpc.client.end", exc)
            span.end()
        return call

    intercept_unary_unary = intercept_unary_stream = _intercept
    intercept_stream_unary = intercept_stream_stream = _intercept


class _AioClientInterceptor:
    def __init__(self, target: Any) -> None:
        self._address = _target_attributes(target)

    async def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        started = _client_start(details, self._address)
        if started is None:
            return await continuation(details, request)
        span, metadata, _ = started
        try:
            details = details._replace(metadata=grpc.aio.Metadata(*metadata))
        except Exception as exc:
            _safety.report("grpc.client.start", exc)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            _client_failed(span, exc)
            raise
        try:
            call.add_done_callback(functools.partial(_aio_client_done, span))
        except Exception as exc:
            _safety.report("grpc.client.end", exc)
            span.end()
        return call


_pending: set[Any] = set()  # (asyncio keeps only weak references to tasks)


def _aio_client_done(span: AnySpan, call: Any) -> None:
    # grpc.aio's status accessors are coroutines; they answer at once for a finished call
    async def finish() -> None:
        try:
            code = _code(await call.code()) or _UNKNOWN
            details = _details(await call.details()) if code is not _OK else None
            _finish(span, code, details, code is not _OK)
        except BaseException as exc:
            _safety.report("grpc.client.end", exc)
            span.end()

    try:
        task = asyncio.get_running_loop().create_task(finish())
        _pending.add(task)
        task.add_done_callback(_pending.discard)
    except Exception as exc:
        _safety.report("grpc.client.end", exc)
        span.end()


class _AioUnaryUnary(_AioClientInterceptor, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _AioClientInterceptor._intercept


class _AioUnaryStream(_AioClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _AioClientInterceptor._intercept


class _AioStreamUnary(_AioClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _AioClientInterceptor._intercept


class _AioStreamStream(_AioClientInterceptor, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _AioClientInterceptor._intercept


def client_interceptor(target: str | None = None) -> Any:
    """The interceptor tracing a channel's calls:
    ``grpc.intercept_channel(channel, client_interceptor(target))``. ``target`` (the channel's
    address) gives the spans ``server.address`` / ``server.port``."""
    return _ClientInterceptor(target)


def aio_client_interceptors(target: str | None = None) -> list[Any]:
    """The interceptors tracing a ``grpc.aio`` channel's calls, one per call shape (gRPC asyncio
    takes one class per shape): ``grpc.aio.insecure_channel(target,
    interceptors=aio_client_interceptors(target))``."""
    return [cls(target) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]


# -- instrument_grpc -----------------------------------------------------------------------------
_WRAPPED = "__pitchey_trace_wrapped__"
_patched: list[tuple[Any, str, Any]] = []


def _is_ours(interceptor: Any) -> bool:
    return isinstance(
        interceptor, (_ServerInterceptor, _AioServerInterceptor, _ClientInterceptor, _AioClientInterceptor)
    )


def _with_ours(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, ours: Callable[[], list[Any]]
) -> tuple[Any, ...]:
    """Put our interceptors first in a factory's ``interceptors`` argument (positional at
    ``index`` or keyword), unless the caller already gave one of ours."""
    try:
        positional = len(args) > index
        given = args[index] if positional else kwargs.get("interceptors")
        interceptors = list(given or ())
        if not any(_is_ours(i) for i in interceptors):
            interceptors[:0] = ours()
            if positional:
                return (*args[:index], interceptors, *args[index + 1 :])
            kwargs["interceptors"] = interceptors
    except Exception as exc:
        _safety.report("grpc.instrument", exc)
    return args


def _server_factory(original: Callable[..., Any], make: Callable[[], Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def server(*args: Any, **kwargs: Any) -> Any:
        # grpc.server / grpc.aio.server(pool, handlers, interceptors, ...)
        return original(*_with_ours(args, kwargs, 2, lambda: [make()]), **kwargs)

    setattr(server, _WRAPPED, original)
    return server


# On a channel the factories made (and on what grpc.intercept_channel made of one): the raw
# channel, the interceptor of ours it was given, the application's interceptors in run order.
_CHAIN = "_pitchey_trace_chain"


# The service paths of OTLP exports: never traced, whichever thread sends them (the SDK's own
# exporters send from its workers, where tracing is off, but an exporter can be called directly).
_TELEMETRY = "/opentelemetry.proto.collector."


def _is_telemetry(path: Any) -> bool:
    if isinstance(path, bytes):
        return path.startswith(_TELEMETRY.encode())
    return isinstance(path, str) and path.startswith(_TELEMETRY)


# On a sync channel: the interceptor of ours tracing its calls (made on first use).
_OURS = "_pitchey_trace_client"


def _ours_for(channel: Any) -> _ClientInterceptor:
    """The interceptor of ours for a raw sync channel: the one its ``_CHAIN`` mark names (made
    while instrumented), else one made now from its target and kept on it."""
    own = object.__getattribute__(channel, "__dict__")
    chain = own.get(_CHAIN)
    if chain is not None:
        return chain[1]  # type: ignore[no-any-return]
    ours = own.get(_OURS)
    if ours is None:
        ours = own[_OURS] = _ClientInterceptor(own.get("_target"))
    return ours  # type: ignore[no-any-return]


def _channel_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """``grpc._channel.Channel.__init__``: what every sync channel is made by (``insecure_channel``
    and ``secure_channel`` look the class up at each call, so a factory bound by name before
    :func:`instrument_grpc` reaches this too). Marks the channel as made while instrumented, so
    that ``intercept_channel`` puts ours before the application's interceptors."""

    @functools.wraps(original)
    def __init__(self: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        original(self, target, *args, **kwargs)
        try:
            # (None: the raw channel is the channel itself; no reference cycle)
            object.__getattribute__(self, "__dict__")[_CHAIN] = (None, _ClientInterceptor(target), ())
        except Exception as exc:
            _safety.report("grpc.instrument", exc)

    setattr(__init__, _WRAPPED, original)
    return __init__


def _channel_method(original: Callable[..., Any], multicallable: Any) -> Callable[..., Any]:
    """``grpc._channel.Channel.unary_unary`` (and the three other shapes): the raw multicallable,
    behind our interceptor (gRPC's own interceptor multicallable over it). Patched on the class,
    so every sync channel is covered, whoever made it and however ``insecure_channel`` /
    ``secure_channel`` was imported. When an interceptor of ours further out already traces the
    call (``intercept_channel`` under instrumentation, or one given by hand), this one passes it
    through (see ``_IN_CALL``)."""

    @functools.wraps(original)
    def method(self: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, path, *args, **kwargs)
        try:
            if _is_telemetry(path):
                return made

            def thunk(new_path: Any) -> Any:
                # (our interceptor keeps the path: a call of gRPC's own machinery otherwise)
                return made if new_path == path else original(self, new_path, *args, **kwargs)

            return multicallable(thunk, path, _ours_for(self))
        except Exception as exc:
            _safety.report("grpc.instrument", exc)
            return made

    setattr(method, _WRAPPED, original)
    return method


def _intercept_channel(original: Callable[..., Any]) -> Callable[..., Any]:
    """``grpc.intercept_channel`` for channels made while instrumented: rebuilt on the raw channel as
    ``original(raw, ours, *interceptors)`` (gRPC runs them in that order), so the application's
    interceptors see the call's traceparent, and without ours when they include one of ours
    already (a channel wrapped by hand as the docs show). Wrapping again puts the new
    interceptors before the earlier ones, as wrapping a wrapped channel does.

    Used for ``grpc.intercept_channel`` and for ``grpc._interceptor.intercept_channel``, which
    the public function looks up and calls on every call: so a public function bound before
    :func:`instrument_grpc` (``from grpc import intercept_channel``) reaches this too. (Both
    wrappers in a row, as a patched public one calling the patched private one, rebuild once:
    the inner one finds the outer one's arrangement, ours first on the raw channel.)

    A channel made before instrumenting carries no mark and is wrapped as gRPC does: its calls
    are still traced (by the class-level patch, inside the application's interceptors)."""

    @functools.wraps(original)
    def intercept_channel(channel: Any, *interceptors: Any) -> Any:
        try:
            # its own mark only: not one a wrapper class of the application's delegates to
            chain = object.__getattribute__(channel, "__dict__").get(_CHAIN)
        except Exception:  # (no __dict__)
            chain = None
        if chain is None:
            return original(channel, *interceptors)
        if chain[0] is None and interceptors and interceptors[0] is chain[1]:
            # a raw channel made while instrumented, ours first: the public wrapper's arrangement
            return original(channel, *interceptors)
        try:
            raw, ours, earlier = chain
            if raw is None:  # a raw channel made while instrumented
                raw = channel
            apps = (*interceptors, *earlier)
            chained = apps if any(_is_ours(i) for i in apps) else (ours, *apps)
        except Exception as exc:
            _safety.report("grpc.instrument", exc)
            return original(channel, *interceptors)
        made = original(raw, *chained)  # (a TypeError for a bad interceptor, as without us)
        try:
            setattr(made, _CHAIN, (raw, ours, apps))
        except Exception as exc:
            _safety.report("grpc.instrument", exc)
        return made

    setattr(intercept_channel, _WRAPPED, original)
    return intercept_channel


def _aio_channel_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """``grpc.aio._channel.Channel.__init__``, what ``grpc.aio.insecure_channel`` and
    ``secure_channel`` make every channel with (however they were imported): ours go first in
    its interceptors."""

    @functools.wraps(original)
    def __init__(self: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        # Channel(target, options, credentials, compression, interceptors)
        args = _with_ours(args, kwargs, 3, lambda: aio_client_interceptors(target))
        original(self, target, *args, **kwargs)

    setattr(__init__, _WRAPPED, original)
    return __init__


def _aio_server_init(original: Callable[..., Any], make: Callable[[], Any]) -> Callable[..., Any]:
    """``grpc.aio._server.Server.__init__`` (what ``grpc.aio.server`` makes every server with)."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Server(thread_pool, generic_handlers, interceptors, ...)
        original(self, *_with_ours(args, kwargs, 2, lambda: [make()]), **kwargs)

    setattr(__init__, _WRAPPED, original)
    return __init__


_Target = tuple[Any, str, Callable[[Any], Callable[..., Any]]]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - every supported grpcio has them
        return None


def _private_targets(header: str | None) -> list[_Target]:
    """What gRPC's public functions hand each call to, looked up at call time, so that a public
    function bound by name before :func:`instrument_grpc` reaches our code too: the sync
    channel class (its four call shapes and its constructor), ``grpc._interceptor.
    intercept_channel``, ``grpc._server.create_server``, and the ``grpc.aio`` channel and server
    constructors. (Anything a grpcio lacks is left out.)"""
    targets: list[_Target] = []
    interceptor = _module("grpc._interceptor")
    channel = getattr(_module("grpc._channel"), "Channel", None)
    if interceptor is not None and isinstance(channel, type):
        for shape, cls in (
            ("unary_unary", "_UnaryUnaryMultiCallable"),
            ("unary_stream", "_UnaryStreamMultiCallable"),
            ("stream_unary", "_StreamUnaryMultiCallable"),
            ("stream_stream", "_StreamStreamMultiCallable"),
        ):
            multicallable = getattr(interceptor, cls, None)
            if multicallable is not None:
                targets.append(
                    (channel, shape, functools.partial(_channel_method, multicallable=multicallable))
                )
        targets.append((channel, "__init__", _channel_init))
    if callable(getattr(interceptor, "intercept_channel", None)):
        targets.append((interceptor, "intercept_channel", _intercept_channel))
    server = _module("grpc._server")
    if callable(getattr(server, "create_server", None)):
        targets.append(
            (server, "create_server", lambda f: _server_factory(f, lambda: _ServerInterceptor(header)))
        )
    aio_channel = getattr(_module("grpc.aio._channel"), "Channel", None)
    if isinstance(aio_channel, type):
        targets.append((aio_channel, "__init__", _aio_channel_init))
    aio_server = getattr(_module("grpc.aio._server"), "Server", None)
    if isinstance(aio_server, type):
        targets.append(
            (aio_server, "__init__", lambda f: _aio_server_init(f, lambda: _AioServerInterceptor(header)))
        )
    return targets


def instrument_grpc(*, trace_id_metadata: str | None = "x-trace-id") -> None:
    """Trace every gRPC server and channel, sync and ``grpc.aio``: our interceptor goes first,
    before the application's. Covered however the application imported gRPC's functions
    (``from grpc import insecure_channel, server`` done before this call included): the
    patches are where those functions lead to, the channel and server classes.

    - sync channels: every call made through a multicallable (a stub's methods) taken from
      now on, channels made earlier included; a channel made from now on and wrapped with
      ``grpc.intercept_channel`` runs ours before the application's interceptors (so they see
      the call's ``traceparent``);
    - ``grpc.aio`` channels and all servers: those made from now on.

    A server or channel given one of this module's interceptors by hand is traced once. The
    OTLP export calls (``/opentelemetry.proto.collector.*``) are never traced. Idempotent (the
    first call's ``trace_id_metadata``, see :func:`server_interceptor`, stays)."""
    header = _header(trace_id_metadata)
    if _patched:
        return
    targets: list[_Target] = [
        (grpc, "server", lambda f: _server_factory(f, lambda: _ServerInterceptor(header))),
        (grpc.aio, "server", lambda f: _server_factory(f, lambda: _AioServerInterceptor(header))),
        (grpc, "intercept_channel", _intercept_channel),
        *_private_targets(header),
    ]
    for owner, name, wrap in targets:
        original = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if original is None:  # pragma: no cover - (a grpcio that lacks it)
            continue
        setattr(owner, name, wrap(original))
        _patched.append((owner, name, original))


def uninstrument_grpc() -> None:
    """Undo :func:`instrument_grpc`: channels and servers made from then on are untraced, as
    are calls through multicallables (stubs) taken from then on. Servers and ``grpc.aio``
    channels already made, and stubs already made, stay traced."""
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
