"""ASGI middleware: one server span per HTTP request or WebSocket connection.

    from pitchey_trace.web import ASGITracingMiddleware
    app = ASGITracingMiddleware(app)                 # any ASGI 3 app
    app.add_middleware(ASGITracingMiddleware)        # Starlette / FastAPI

The span starts before the app runs (continuing the caller's trace when a valid
``traceparent`` arrives) and ends when the last byte of the response was handed to the server,
so streaming responses are timed to their end. Starlette and FastAPI store the matched route in
``scope["route"]``; the span is renamed ``"{METHOD} {route template}"`` once it is known
(mount prefixes included). Apps on other frameworks call :func:`pitchey_trace.web.set_route`.

A client that goes away (the server's ``send`` or ``receive`` raised an ``OSError``, Starlette's
``ClientDisconnect`` / ``WebSocketDisconnect`` after the server reported the disconnect) is not
an error of the server: the span keeps the status and the body bytes that went out and gets a
``client.disconnected`` event, as in the aiohttp integration; the exception still goes on.
So does an app that returns with its response unfinished once the server reports the client
gone (Starlette's streams stop that way on uvicorn). A request body of unknown length (chunked)
is counted as the app receives it; other requests get the server's ``receive`` as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from time import time_ns
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.propagation import extract
from pitchey_trace.web._common import (
    CLIENT_ADDRESS,
    DEFAULT_EXCLUDED_PATHS,
    HTTP_METHOD,
    HTTP_REQUEST_BODY_SIZE,
    NETWORK_PROTOCOL_VERSION,
    REQUEST,
    URL_PATH,
    URL_QUERY,
    URL_SCHEME,
    USER_AGENT,
    Options,
    RequestState,
    exception_chain,
    fast_begin,
    fast_finish,
    finish_request,
    mark_client_left,
    method_attributes,
    protocol_version,
    stamp_exception,
    text_path,
)

__all__ = ["ASGITracingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SERVER = SpanKind.SERVER
# The process-wide tracer object is never replaced (configure() re-points it).
_start_span = get_tracer().start_span
_ERROR_BODY = b"Internal Server Error"
_ERROR_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_ERROR_BODY)).encode("ascii")),
    ],
}
_ERROR_BODY_MSG = {"type": "http.response.body", "body": _ERROR_BODY, "more_body": False}


def _with_headers(message: Message, extra: list[tuple[bytes, bytes]]) -> Message:
    """A copy of a response-start / accept message with our headers appended, those the app
    set itself left out (its ``X-Trace-Id``, a gateway's id it passes on, is kept, not sent
    twice: as on WSGI and aiohttp). The app's message is never modified; on any surprise the
    original goes out unchanged. (The C accelerator's ``with_headers`` does the same.)"""
    try:
        headers = message.get("headers", ())
        if headers:
            extra = [pair for pair in extra if not _carries(headers, pair[0])]
        return {**message, "headers": [*headers, *extra]}
    except Exception as exc:
        _safety.report("web.asgi.headers", exc)
        return message


def _carries(headers: Iterable[Any], name: bytes) -> bool:
    """Whether the app's ``headers`` have one named ``name`` (lowercase), in any case."""
    n = len(name)
    for pair in headers:
        if isinstance(pair, (tuple, list)) and pair:
            key = pair[0]
            if isinstance(key, bytes) and len(key) == n and key.lower() == name:
                return True
    return False


def _warn_if_inside_fastapi(app: Any) -> None:
    """At construction: the middleware added with ``app.add_middleware()`` to a FastAPI app
    whose native OpenTelemetry spans record into pitchey-trace (``pitchey_trace.otel.install()``).
    FastAPI starts its server span before its middleware stack runs, so each request would be
    two server spans, ours inside FastAPI's. (Wrapping the app, FastAPI's span gives way to
    ours: ``pitchey_trace.otel``.) FastAPI's stack ends in its router: that is how it shows."""
    try:
        otel = sys.modules.get("pitchey_trace.otel")  # (not imported: nothing records FastAPI's)
        routing = sys.modules.get("fastapi.routing")
        if otel is None or routing is None:
            return
        seen: set[int] = set()
        while app is not None and id(app) not in seen:
            seen.add(id(app))
            if isinstance(app, routing.APIRouter):
                # (FastAPI makes its router with itself as the dependency_overrides_provider)
                owner = getattr(app, "dependency_overrides_provider", None)
                if owner is None or not otel._records_fastapi(owner):
                    return
                _safety.warn_once(
                    "otel.duplicate_instrumentation.fastapi",
                    "pitchey_trace: ASGITracingMiddleware sits inside a FastAPI app (add_middleware(), "
                    "or pitchey-trace run) whose native OpenTelemetry telemetry records into pitchey_trace: "
                    "each request is two server spans, ours inside FastAPI's; wrap the app "
                    "instead (app = ASGITracingMiddleware(app)) or pass "
                    "FastAPI(telemetry={'tracing': False})",
                )
                return
            app = getattr(app, "app", None)
    except Exception as exc:  # (a check only: never into the app's setup)
        _safety.report("web.asgi.fastapi_check", exc)


def _excluded_below_root(options: Options, scope: Scope, path: str) -> bool:
    """Behind a root path (``uvicorn --root-path``, ``FastAPI(root_path=...)``) the scope's
    path carries it, while excluded paths, like route names, are the app's own (the WSGI
    middleware matches ``PATH_INFO``, without ``SCRIPT_NAME``): match what follows it."""
    root = scope.get("root_path")
    if not root or root.__class__ is not str or not path.startswith(root):
        return False
    return options.excluded(path[len(root) :] or "/")


class ASGITracingMiddleware:
    """Trace every HTTP request and WebSocket connection of an ASGI 3 application.

    Args:
        app: the ASGI application.
        excluded_paths: paths served untraced (exact; an entry ending in ``*`` is a prefix).
            Default: ``/health``, ``/healthz``, ``/livez``, ``/readyz``.
        trace_id_header: response header carrying the trace id (default ``X-Trace-Id``;
            None to omit).
        traceresponse: also send the draft W3C ``traceresponse`` header.
        audit: emit one ``request`` audit record per request, and ``security`` records for
            401/403/429 responses (default True).
        error_response: when the app raises before starting a response, send a plain 500
            carrying the correlation headers (then the exception is re-raised unchanged, as
            Starlette's ``ServerErrorMiddleware`` does). Default True.

    Lifespan and other scope types pass through untouched. Exceptions from the app are
    recorded on the span and re-raised unchanged; the middleware's own errors are swallowed
    and counted, never raised into the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        excluded_paths: Iterable[str] | None = DEFAULT_EXCLUDED_PATHS,
        trace_id_header: str | None = "X-Trace-Id",
        traceresponse: bool = False,
        audit: bool = True,
        error_response: bool = True,
    ) -> None:
        self.app = app
        self.options = Options(
            excluded_paths=excluded_paths,
            trace_id_header=trace_id_header,
            traceresponse=traceresponse,
            audit=audit,
        )
        self.error_response = bool(error_response)
        _warn_if_inside_fastapi(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        options = self.options
        path = scope.get("path") or "/"
        if path.__class__ is not str:  # (a server always gives a str; a broken caller may not)
            path = text_path(path)
        if path in options.excluded_exact or (
            options.excluded_prefixes and path.startswith(options.excluded_prefixes)
        ):
            await self._untraced(scope, receive, send)
            return
        if scope.get("root_path") and _excluded_below_root(options, scope, path):
            await self._untraced(scope, receive, send)
            return
        try:
            start_ns = time_ns()
            got = (
                fast_begin(scope, path, start_ns, options.header_name_b, send)
                if fast_begin is not None and not options.traceresponse
                else NotImplemented
            )
            traced_send: Send
            if got is NotImplemented:
                state, client, unsized = self._start(scope, path, "http", None, start_ns)
                traced_send = _sender(state, options.response_headers_b(state.span), send)
            else:
                state, traced_send, client = got
                # (the C start reads no Transfer-Encoding: a body without Content-Length is
                # looked for here, in methods that usually have one; a GET is not wrapped)
                unsized = (
                    state.method not in _BODYLESS and HTTP_REQUEST_BODY_SIZE not in state.span.attributes
                )
            span = state.span
            # A body of unknown length (chunked): count what the app receives of it. Requests
            # with a Content-Length or no body at all get the server's receive as it is.
            app_receive = _counting_receive(receive, span) if unsized else receive
        except Exception as exc:
            _safety.report("web.asgi.start", exc)
            await self.app(scope, receive, send)
            return

        token = CURRENT.set(span)
        rtoken = REQUEST.set(state)
        error: BaseException | None = None
        try:
            await self.app(scope, app_receive, traced_send)
            if not state.last_byte_ns and state.status:
                # The app returned with its response started but not complete: a stream it
                # stopped as the server reported http.disconnect (Starlette's StreamingResponse
                # and FileResponse listen for it in a task, on servers before ASGI 2.4)
                _returned_unfinished(state, scope, receive, send)
        except Exception as exc:
            error = exc
            stamp_exception(exc, span)
            if _client_left(exc, state, send, receive):
                # the client went away (the server's send or receive failed, or reported the
                # disconnect): not an error of the server; nothing to answer it with
                error = None
            elif self.error_response and not state.status:
                await _send_error(traced_send)
            raise
        except BaseException as exc:  # cancellation, exit: recorded as aborted, not as error
            error = exc
            raise
        finally:
            try:
                if (
                    error is not None
                    or fast_finish is None
                    or fast_finish(state, start_ns, client, options.audit) is NotImplemented
                ):
                    end_ns = state.last_byte_ns or time_ns()
                    finish_request(state, options, state.resolve_route(), start_ns, end_ns, client, error)
            except Exception as exc:
                _safety.report("web.asgi.finish", exc)
            # The scope (headers, the app's objects) is not needed once the request is
            # finished, and the state outlives the request: the server's keep-alive timer,
            # scheduled during the last send, keeps a copy of this context for seconds.
            state.scope = None
            try:  # _reset(), inline: this runs for every request
                REQUEST.reset(rtoken)
                CURRENT.reset(token)
            except ValueError:  # reset from another context (see _reset)
                CURRENT.set(None)
                REQUEST.set(None)

    def _start(
        self, scope: Scope, path: str, scheme_default: str, method: str | None, start_ns: int
    ) -> tuple[RequestState, str | None, bool]:
        """Extract the caller's context and start the server span (not yet current). Also says
        whether the request's body size is unknown (no ``Content-Length``, but a chunked body,
        or a method that usually has one): then the app's ``receive`` counts it."""
        headers = scope.get("headers") or []
        chunked = False
        attrs: dict[str, Any] = {URL_SCHEME: scope.get("scheme") or scheme_default, URL_PATH: path}
        version = protocol_version(scope.get("http_version"))
        if version is not None:
            attrs[NETWORK_PROTOCOL_VERSION] = version
        if method is None:
            label = method_attributes(scope.get("method") or "GET", attrs)
        else:
            attrs[HTTP_METHOD] = method
            label = "WEBSOCKET"
        query = scope.get("query_string")
        if query:
            # (bytes per the ASGI spec; some test clients pass text)
            attrs[URL_QUERY] = query.decode("latin-1") if query.__class__ is bytes else str(query)
        propagated = False
        try:
            for name, value in headers:
                if name == b"user-agent":
                    attrs[USER_AGENT] = value.decode("latin-1")
                elif name == b"traceparent" or name.__class__ is not bytes:
                    propagated = True  # (names that are not bytes: extract() decides)
                elif name == b"content-length" and method is None:
                    try:
                        attrs[HTTP_REQUEST_BODY_SIZE] = int(value)
                    except ValueError:
                        pass
                elif name == b"transfer-encoding":
                    chunked = True
        except (TypeError, ValueError, AttributeError):
            # A server (or test client) broke the ASGI contract: the request is still traced,
            # as a new trace, and the caller's headers are ignored.
            _safety.warn_once(
                "asgi_headers",
                "ASGI scope['headers'] is not a list of (name, value) byte pairs (%s): headers ignored",
                type(headers).__name__,
            )
            headers, propagated, chunked = [], False, False
            attrs.pop(USER_AGENT, None)
            attrs.pop(HTTP_REQUEST_BODY_SIZE, None)
        # No traceparent: a new trace (tracestate and baggage alone are ignored, as extract does).
        parent = extract(headers) if propagated else None
        client = scope.get("client")
        address = client[0] if client else None
        if address:
            attrs[CLIENT_ADDRESS] = address
        span = _start_span(label, attrs, _SERVER, parent, None, start_ns)
        method_value = attrs[HTTP_METHOD]
        unsized = (
            method is None
            and HTTP_REQUEST_BODY_SIZE not in attrs
            and (chunked or method_value not in _BODYLESS)
        )
        return RequestState(span, method_value, label, scope), address, unsized

    async def _untraced(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Excluded paths (health checks): nothing is recorded below, not even DB spans.
        token = CURRENT.set(SUPPRESSED)
        try:
            await self.app(scope, receive, send)
        finally:
            _reset(None, token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        options = self.options
        path = text_path(scope.get("path") or "/")
        if options.excluded(path) or _excluded_below_root(options, scope, path):
            await self._untraced(scope, receive, send)
            return
        try:
            start_ns = time_ns()
            state, client, _ = self._start(scope, path, "ws", "GET", start_ns)
            span = state.span
            extra = options.response_headers_b(span)
        except Exception as exc:
            _safety.report("web.asgi.start", exc)
            await self.app(scope, receive, send)
            return
        received = 0
        close_code = 0
        # The client left: the server reported websocket.disconnect (before the app closed), or
        # what its send / receive raised (an OSError: uvicorn's ClientDisconnected).
        gone: list[Any] = [False, None]
        closed = False  # the app sent websocket.close

        async def traced_receive() -> Message:
            nonlocal received, close_code
            try:
                message = await receive()
            except OSError as exc:
                gone[1] = exc
                raise
            mtype = message.get("type")
            if mtype == "websocket.receive":
                received += 1
            elif mtype == "websocket.disconnect":
                if not close_code:
                    close_code = message.get("code", 1005)
                if not closed:
                    gone[0] = True
            return message

        async def traced_send(message: Message) -> None:
            nonlocal close_code, closed
            mtype = message["type"]
            if mtype == "websocket.accept":
                state.status = 101
                if extra:
                    message = _with_headers(message, extra)
            elif mtype == "websocket.close":
                if not state.status:
                    state.status = 403  # closed before accept: the server answers 403
                if not close_code:
                    close_code = message.get("code", 1000)
            elif mtype == "websocket.http.response.start":  # denial-response extension
                state.status = message.get("status", 0)
            try:
                await send(message)
            except OSError as exc:
                if not closed:  # (sending after its own close is the app's mistake)
                    gone[1] = exc
                raise
            if mtype == "websocket.send":
                state.sent += 1  # (a message the server refused was not sent)
            elif mtype == "websocket.close":
                closed = True

        token = CURRENT.set(span)
        rtoken = REQUEST.set(state)
        error: BaseException | None = None
        try:
            await self.app(scope, traced_receive, traced_send)
        except Exception as exc:
            stamp_exception(exc, span)
            if not _websocket_client_left(exc, span, gone):
                error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                span.set_attribute("websocket.messages.received", received)
                span.set_attribute("websocket.messages.sent", state.sent)
                if close_code:
                    span.set_attribute("websocket.close.code", close_code)
                finish_request(
                    state,
                    options,
                    state.resolve_route(),
                    start_ns,
                    time_ns(),
                    client,
                    error,
                    http=False,
                )
            except Exception as exc:
                _safety.report("web.asgi.finish", exc)
            state.scope = None  # (see __call__)
            _reset(rtoken, token)


def _sender(state: RequestState, extra: list[tuple[bytes, bytes]], send: Send) -> Send:
    """The send callable handed to the app (the C accelerator's ``Sender`` does the same).

    A plain function handing back the server's awaitable: no coroutine of our own per
    message. The last byte is timed as it is handed to the server."""

    def traced_send(message: Message) -> Awaitable[None]:
        mtype = message["type"]
        if mtype == "http.response.body":
            body = message.get("body")
            if body:
                state.sent += len(body)
            if not message.get("more_body", False):
                state.last_byte_ns = time_ns()
        elif mtype == "http.response.start":
            state.status = message.get("status", 0)
            if extra:
                message = _with_headers(message, extra)
        elif mtype == "http.response.pathsend":  # (a file the server sends: see RequestState)
            return state.response_pathsend(message, send)
        return send(message)

    return traced_send


#: Methods whose requests practically never have a body: without a Content-Length their body
#: is not counted unless a Transfer-Encoding says there is one (see _counting_receive).
_BODYLESS = frozenset(("GET", "HEAD"))


def _counting_receive(receive: Receive, span: AnySpan) -> Receive:
    """The ``receive`` handed to the app of a request whose body size is unknown (chunked, or
    HTTP/2 without ``Content-Length``): ``http.request.body.size`` is the body bytes the app
    received (0 until it reads any)."""
    received = 0
    if span.is_recording:
        span.set_attribute(HTTP_REQUEST_BODY_SIZE, 0)
    else:
        return receive

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        try:
            if message.get("type") == "http.request":
                body = message.get("body")
                if body and not span.is_ended:
                    received += len(body)
                    span.set_attribute(HTTP_REQUEST_BODY_SIZE, received)
        except Exception as exc:
            _safety.report("web.asgi.receive", exc)
        return message

    return counted


#: Extensions whose messages complete a response without a message the middleware counts
#: as the last one (a file the server sends by itself from a descriptor; ``pathsend`` is
#: counted: see ``RequestState.response_pathsend``).
_SENDFILE_EXTENSIONS = ("http.response.zerocopysend",)


def _returned_unfinished(state: RequestState, scope: Scope, receive: Receive, send: Send) -> None:
    """The app returned (no exception) after starting a response it did not complete: when the
    server says its client has gone, the span gets the ``client.disconnected`` event, as when
    a disconnect is raised. Asked of the server's own ``receive``, without waiting: a server
    reports ``http.disconnect`` at once for a connection that is gone (uvicorn does, as often
    as asked); when it would wait, a server that reports it only once (hypercorn: the app's
    disconnect listener took it) is asked through its ``send`` (:func:`_stream_closed`); when
    neither says so (the client is still there: the app's own mistake), nothing is recorded.
    Runs only for responses left unfinished. Never raises."""
    try:
        if not state.sent:
            extensions = scope.get("extensions")
            if isinstance(extensions, Mapping) and any(e in extensions for e in _SENDFILE_EXTENSIONS):
                return  # (the server sent a file: complete without a body message we saw)
        if _disconnected_now(receive) or _stream_closed(send):
            mark_client_left(state.span, None)
    except Exception as exc:
        _safety.report("web.asgi.disconnect", exc)


def _disconnected_now(receive: Receive) -> bool:
    """Whether the server's ``receive`` gives ``http.disconnect`` without suspending; the call
    is abandoned (closed) where it would wait."""
    awaitable = receive()
    step = awaitable.__await__()
    try:
        step.send(None)
    except OSError:  # (what a server raises for a connection that is gone: uvicorn's ClientDisconnected)
        return True
    except StopIteration as done:
        message = done.value
        return isinstance(message, Mapping) and message.get("type") == "http.disconnect"
    close = getattr(step, "close", None)
    if close is not None:
        close()
    return False


def _stream_closed(send: Send) -> bool:
    """Whether the server's ``send`` belongs to a request stream its server has closed: a
    method of an object whose ``closed`` is True. hypercorn's (``HTTPStream.app_send``, HTTP/1.1
    and HTTP/2 alike) is: its ``closed`` turns True when the connection reports the stream gone
    (the client closed the connection, or reset the HTTP/2 stream), never as the app's own
    response completes. Its ``receive`` gives ``http.disconnect`` once, and its ``send`` raises
    nothing after it, so this is how an unfinished response there is told from the app's own
    mistake."""
    owner = getattr(send, "__self__", None)
    return owner is not None and getattr(owner, "closed", None) is True


def _loaded(module: str, name: str) -> Any:
    """A class of a framework the app has imported (None when it has not: then no exception
    of that class can have been raised)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _raised_in(exc: BaseException, codes: tuple[Any, ...]) -> Any:
    """The frame of ``exc``'s traceback that runs one of ``codes`` (the server's send or
    receive), None when the exception did not go through them."""
    tb = exc.__traceback__
    depth = 0
    while tb is not None and depth < 256:
        if tb.tb_frame.f_code in codes:
            return tb.tb_frame
        tb = tb.tb_next
        depth += 1
    return None


def _client_left(exc: BaseException, state: RequestState, send: Send, receive: Receive) -> bool:
    """Whether ``exc``, escaping the app of an HTTP request, is its client going away; if so
    the span gets the ``client.disconnected`` event and keeps the status and the body bytes
    that went out. Only what this request's own connection reported counts: an ``OSError``
    raised by the server's ``send`` or ``receive`` (uvicorn's ``ClientDisconnected``), or
    Starlette's ``ClientDisconnect`` (raised as the request's body is read after the server
    gave ``http.disconnect``, or for such an ``OSError`` of the server's ``send``). Anything
    else, a ``ConnectionError`` of the app's own (a backend's) included, is an error. Never
    raises."""
    try:
        codes = tuple(
            code
            for code in (getattr(getattr(fn, "__func__", fn), "__code__", None) for fn in (send, receive))
            if code is not None
        )
        raised: BaseException = exc
        disconnect = _loaded("starlette.requests", "ClientDisconnect")
        if disconnect is not None and isinstance(exc, disconnect):
            # Starlette raises it as a body read gets http.disconnect, and (ASGI 2.4 servers)
            # for the OSError a streamed response's send raised: then that one decides
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raised = cause
        frame = None
        if isinstance(raised, OSError):
            frame = _raised_in(raised, codes) if codes else None
            if frame is None:
                return False  # (an OSError of the app's own: a backend's, its body's)
        elif disconnect is None or not isinstance(exc, disconnect):
            return False
        if frame is not None:
            _unsent(state, frame)
        elif state.last_byte_ns and state.status == 500:
            # A complete 500 after the body's read found the client gone: the error page the
            # app's error middleware (Starlette's) answered the disconnect with, to no one.
            state.status = state.sent = state.last_byte_ns = 0
        elif state.last_byte_ns:
            # A complete response, then a read after it (a server gives http.disconnect once
            # the response is complete): not the client leaving, the app's own error.
            return False
        mark_client_left(state.span, exc)
        return True
    except Exception as internal:
        _safety.report("web.asgi.disconnect", internal)
        return False


def _unsent(state: RequestState, frame: Any) -> None:
    """The message the server's ``send`` (run by ``frame``) failed to send was counted as it
    was handed over: take its body bytes back (and its end: the response did not complete)."""
    code = frame.f_code
    if not code.co_argcount:
        return
    message = frame.f_locals.get(code.co_varnames[code.co_argcount - 1])
    if isinstance(message, Mapping) and message.get("type") == "http.response.body":
        body = message.get("body")
        if body and state.sent >= len(body):
            state.sent -= len(body)
        if not message.get("more_body", False):
            state.last_byte_ns = 0


def _websocket_client_left(exc: BaseException, span: AnySpan, gone: list[Any]) -> bool:
    """Whether ``exc``, escaping the app of a WebSocket, is its client going away: what the
    server's send or receive raised, or Starlette's ``WebSocketDisconnect`` for it (raised
    while handling it) or after the server reported the client's disconnect. Anything else
    (one the app raised anew after catching those) is an error. If the client left, the span
    gets the ``client.disconnected`` event. Never raises."""
    try:
        failed = gone[1]
        left = failed is not None and exc is failed
        if not left:
            disconnect = _loaded("starlette.websockets", "WebSocketDisconnect")
            if disconnect is not None and isinstance(exc, disconnect):
                left = gone[0] or any(link is failed for link in exception_chain(exc) if failed is not None)
        if left:
            mark_client_left(span, exc)
        return left
    except Exception as internal:
        _safety.report("web.asgi.disconnect", internal)
        return False


async def _send_error(send: Send) -> None:
    """Answer 500 for an app that raised before responding (headers added by ``send``)."""
    try:
        await send(dict(_ERROR_START))
        await send(dict(_ERROR_BODY_MSG))
    except Exception:  # noqa: S110  (the client is gone or the server refused: nothing to answer)
        pass


def _reset(rtoken: Any, token: Any) -> None:
    try:
        if rtoken is not None:
            REQUEST.reset(rtoken)
        CURRENT.reset(token)
    except ValueError:
        # Reset from another context (an app that moved us to another task): clear instead.
        CURRENT.set(None)
        REQUEST.set(None)


class _AutoTracingMiddleware(ASGITracingMiddleware):
    """:class:`ASGITracingMiddleware` as ``pitchey-trace run`` adds it to every Starlette and
    FastAPI app: it steps aside for a request that another pitchey middleware already traces
    (an app the program wrapped itself, an app mounted in a traced one: Starlette hands the
    mounted app the same scope) or serves untraced (an excluded path). Otherwise each such
    request was two server spans, and the program's own options (header, excluded paths) were
    not the only ones applied. Only ``run``'s middleware pays for the check."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = CURRENT.get()
        if current is not None:
            state = REQUEST.get()
            if current is SUPPRESSED or (state is not None and state.scope is scope):
                await self.app(scope, receive, send)
                return
        await ASGITracingMiddleware.__call__(self, scope, receive, send)
