"""aiohttp: server spans for ``aiohttp.web`` applications, client spans for ``ClientSession``.

    from pitchey_trace.web import init_aiohttp, instrument_aiohttp_client
    init_aiohttp(app)                 # before the app starts: one server span per request
    instrument_aiohttp_client()       # every ClientSession created afterwards

aiohttp is neither ASGI nor WSGI, so it has its own integration, with the same behaviour as the
other middleware: the caller's ``traceparent`` is continued, the span is named
``"{METHOD} {route template}"`` (``resource.canonical``, sub-application prefixes included;
``{prefix}/{filename}`` for a static route), carries the OpenTelemetry HTTP server attributes,
is current while the handler runs, and the response (error pages included) carries the
``X-Trace-Id`` header. A handler that streams (``StreamResponse``, WebSockets) is timed to its
end; a returned ``Response`` is timed until the handler returns it (aiohttp writes its
already-built body afterwards); a ``FileResponse`` (or a ``Response`` with a streamed payload
or compression) is timed until aiohttp has sent it, with the status it settled on (404 for a
missing file, 304, 206...); a client that goes away mid-file, mid-stream or mid-upload, or
before a stream's headers or a WebSocket's handshake went out, or from a WebSocket (the
``ConnectionError`` this request's own writer, WebSocket or body stream raised escaping the
handler), is not an error of the
server: a ``client.disconnected`` event says so. The status that went out is known whoever set
the correlation header. An unhandled exception's span ends once aiohttp has sent its own error
page (500, 504 for a ``TimeoutError``), or has dropped the connection of a response that had
started: then with the status that response went out with (a handler cancelled as its client
goes away, ``handler_cancellation=True``, keeps it too: aborted, with the status and the bytes
that went out). So does an ``HTTPException`` raised after the response started (aiohttp writes
the exception's response into that one's body): the status that went out, an error.
``http.response.body.size`` is the body bytes sent: compressed ones when aiohttp compresses,
and the bytes a file cut short by the client had handed to the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from time import time_ns
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.propagation import extract, inject
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
    body_size,
    fast_finish,
    finish_request,
    mark_client_left,
    method_attributes,
    stamp_exception,
)
from pitchey_trace.web.outbound import _end, _start, _strip_credentials

__all__ = [
    "aiohttp_middleware",
    "aiohttp_trace_config",
    "init_aiohttp",
    "instrument_aiohttp_client",
    "uninstrument_aiohttp_client",
]

_SERVER = SpanKind.SERVER
_start_span = get_tracer().start_span
# Typed storage keys (plain strings before aiohttp 3.9 / 3.12; a warning after), made once:
# "app" marks an instrumented app, "request" holds the request's state for the prepare signal.
_keys: dict[str, Any] = {}


def _key(kind: str) -> Any:
    key = _keys.get(kind)
    if key is None:
        from aiohttp import web

        factory = getattr(web, "AppKey" if kind == "app" else "RequestKey", None)
        key = _keys[kind] = factory(f"pitchey_trace.{kind}", object) if factory else f"pitchey_trace.{kind}"
    return key


_CLIENT_CTX = "pitchey_trace_span"

Handler = Callable[[Any], Awaitable[Any]]


def aiohttp_middleware(
    *,
    excluded_paths: Iterable[str] | None = DEFAULT_EXCLUDED_PATHS,
    trace_id_header: str | None = "X-Trace-Id",
    traceresponse: bool = False,
    audit: bool = True,
) -> tuple[Callable[[Any, Handler], Awaitable[Any]], Callable[[Any, Any], Awaitable[None]] | None]:
    """The middleware and the ``on_response_prepare`` handler :func:`init_aiohttp` installs
    (None when no correlation header is configured), for apps that assemble their middleware
    list themselves (the middleware first, so it is the outermost). Arguments as for
    :class:`~pitchey_trace.web.ASGITracingMiddleware`."""
    from aiohttp import web

    options = Options(
        excluded_paths=excluded_paths,
        trace_id_header=trace_id_header,
        traceresponse=traceresponse,
        audit=audit,
    )
    http_exception = web.HTTPException
    plain_response = web.Response
    static_resource = web.StaticResource
    state_key = _key("request")
    # The first correlation header: present on a response once ours were added (None: none).
    marker = options.header_name or ("traceresponse" if options.traceresponse else None)
    # Until the prepare handler has run once (never when there is none: no correlation header,
    # or an app that did not register it), the writer's write_headers tells which response
    # went out (see _Written.started).
    status_lines = True

    @web.middleware
    async def pitchey_trace_middleware(request: Any, handler: Handler) -> Any:
        path = request.path
        if options.excluded(path):
            token = CURRENT.set(SUPPRESSED)
            try:
                return await handler(request)
            finally:
                CURRENT.reset(token)
        if request.get(state_key) is not None:  # an enclosing application traces it already
            return await handler(request)
        try:
            start_ns = time_ns()
            state, client = _begin(request, path, start_ns, static_resource)
            if state.route is None:  # no route matched (a 404), or not for this method (a 405)
                await _route_not_allowed(request, state, static_resource)
            written = _count_body(request, status_lines)
            # (options: whose prepare signal adds headers; written: keeps the status it sees)
            request[state_key] = (state, options, written)
            messages = _count_messages(request) if state.label == "WEBSOCKET" else None
        except Exception as exc:
            _safety.report("web.aiohttp.start", exc)
            return await handler(request)
        span = state.span
        token = CURRENT.set(span)
        rtoken = REQUEST.set(state)
        error: BaseException | None = None
        deferred = False
        try:
            response = await handler(request)
            try:
                state.status = status = response.status
                if response.prepared:  # a stream: its bytes are out by now
                    state.sent = body_size(
                        status, state.method, written.sent if written is not None else response.body_length
                    )
                    if written is not None and written.compressed and not written.done:
                        # compressed, its end not written: aiohttp flushes the compressor
                        # (more bytes) as it writes the end, after we return
                        deferred = _finish_when_sent(response, state, options, start_ns, client, written)
                else:  # a Response: its body is about to be written
                    state.sent = body_size(status, state.method, response.content_length)
                    if marker is not None:
                        _put_headers(response.headers, options.response_headers(span))
                    if (
                        response.__class__ is not plain_response
                        or not isinstance(response.body, _BYTES)
                        or response.compression
                    ):
                        # A FileResponse (or a streamed payload) decides its status and sends
                        # its body as aiohttp prepares it, after we return; a compressed body
                        # gets its size then: end there.
                        deferred = _finish_when_sent(response, state, options, start_ns, client, written)
                    elif written is not None:
                        written.deflated = None  # (ends now: no compressor to look for)
            except Exception as exc:
                _safety.report("web.aiohttp.response", exc)
            return response
        except Exception as exc:
            started = written.started() if written is not None else None
            if started is None and isinstance(exc, http_exception):
                # aiohttp answers with the exception itself (404, redirects, 401...): a
                # response, an error of the request only when it is a 5xx.
                state.status = exc.status
                try:  # (aiohttp sends the exception's own body: "404: Not Found")
                    state.sent = body_size(exc.status, state.method, exc.content_length)
                except Exception as internal:
                    _safety.report("web.aiohttp.response", internal)
                if exc.status >= 500:
                    error = exc
                    stamp_exception(exc, span)
                raise
            stamp_exception(exc, span)
            if isinstance(exc, ConnectionError) and _client_left(exc, request, written, messages):
                # the request's own connection failed (the response's writer, the WebSocket's,
                # the request body's stream): the client went away (aiohttp drops the
                # connection). As for a file cut short: not an error of the server, the status
                # that went out (none when nothing had), the bytes sent.
                try:
                    if started:
                        state.status = started
                    state.sent = body_size(state.status, state.method, written.sent if written else 0)
                    mark_client_left(span, exc)
                except Exception as internal:
                    _safety.report("web.aiohttp.response", internal)
                raise
            error = exc
            # what aiohttp answers for it, with its own error page once we have returned; a
            # response already under way keeps the status it went out with (aiohttp then
            # drops the connection, or writes an HTTPException's response into that one's
            # body: the client got that status and a cut or corrupted body), an error
            state.status = started or (504 if isinstance(exc, asyncio.TimeoutError) else 500)
            deferred = _finish_after_error_page(state, options, start_ns, client, exc, written)
            raise
        except BaseException as exc:  # cancelled (the client went away): aborted, not an error
            error = exc
            try:  # (a stream under way: the status it went out with, the bytes it had sent)
                started = written.started() if written is not None else None
                if started and written is not None:
                    state.status = started
                    state.sent = body_size(started, state.method, written.sent)
            except Exception as internal:
                _safety.report("web.aiohttp.response", internal)
            raise
        finally:
            if messages is not None:
                messages.record(span)
            if not deferred:
                _finish(state, options, start_ns, client, error)
            try:
                REQUEST.reset(rtoken)
                CURRENT.reset(token)
            except ValueError:  # reset from another context
                CURRENT.set(None)
                REQUEST.set(None)

    async def add_headers(request: Any, response: Any) -> None:
        # Runs as every response is prepared: streams, WebSockets, HTTP exceptions and
        # aiohttp's own error pages (a returned Response already has them).
        nonlocal status_lines
        status_lines = False  # (registered: from now on the status comes from here)
        try:
            headers = response.headers
            if marker in headers and REQUEST.get() is None:
                # prepared after the middleware returned (its headers are there, or the app's
                # own): a Response the handler returned, no status to keep
                return
            got = request.get(state_key)
            if got is not None and got[1] is options:  # (not a request an outer app traces)
                written = got[2]
                if written is not None and written.status is None:
                    # (a stream or WebSocket the handler prepares, also one carrying the app's
                    # own correlation header: its status is final now)
                    written.status = response.status
                _put_headers(headers, options.response_headers(got[0].span))
        except Exception as exc:
            _safety.report("web.aiohttp.headers", exc)

    return pitchey_trace_middleware, (add_headers if marker is not None else None)


_BYTES = (bytes, bytearray, type(None))


def _client_left(
    exc: BaseException, request: Any, written: _Written | None, messages: _Messages | None
) -> bool:
    """Whether ``exc`` (a ``ConnectionError`` escaping the handler) is the client going away:
    raised by this request's own connection (its response's writer: a write, the end, or the
    headers as a stream is prepared; its WebSocket's sends; its body's stream, read after the
    client left mid-upload), not by something the handler called (a backend it connects to),
    nor raised anew after the handler caught that one."""
    if written is not None and exc is written.failed:
        return True
    if messages is not None and exc is messages.failed:
        return True
    # Not through a counted write or send: the headers a stream's prepare() sends at once
    # (aiohttp's writer refuses them once the client is gone), a drain, the request body's
    # read (aiohttp sets the connection's loss on it). Its traceback then goes through a
    # method of this request's writer, protocol or body stream; a backend's never does.
    try:
        writer = request.writer
        owners = (writer, getattr(writer, "protocol", writer), request.content)
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None  # (not the middleware's own, running frame)
        depth = 0
        last = None
        while tb is not None and depth < 64:
            owner = tb.tb_frame.f_locals.get("self")
            if owner is not None and (owner is owners[0] or owner is owners[1] or owner is owners[2]):
                return True
            last = tb
            tb = tb.tb_next
            depth += 1
        if tb is None and last is not None:
            # Raised by a response being prepared for this request itself (not by code it
            # calls): a WebSocketResponse's prepare() finds the connection lost before its
            # handshake went out (aiohttp's "Connection lost", from _pre_start)
            from aiohttp import web

            frame = last.tb_frame
            owner = frame.f_locals.get("self")
            if isinstance(owner, web.StreamResponse) and frame.f_locals.get("request") is request:
                return True
    except Exception:  # noqa: S110  (then an error, as any other)
        pass
    return False


def _size(chunk: Any) -> int:
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


class _Written:
    """The body bytes of a request's response as they go out on the connection: handed to its
    payload writer (status line, headers, chunked framing and bytes past a declared
    ``Content-Length`` not included), after compression when aiohttp compresses them.

    Its ``write``/``write_eof`` replace the writer's on that writer object (aiohttp makes one
    per request), counting and delegating; the writer gets its class's methods back after
    ``write_eof``. A file sent with ``sendfile`` bypasses them (see :func:`_finish_when_sent`).
    When the writer compresses (``enable_compression``, seen at the first write), its
    compressor is wrapped to count what it produces: the bytes sent. It also keeps the status
    of the response that goes out (see :meth:`started`): the first one the prepare handler
    sees prepared or, when there is no prepare handler, the status line handed to
    ``write_headers`` (wrapped too then)."""

    __slots__ = (
        "_write",
        "_write_eof",
        "_write_headers",
        "deflated",
        "done",
        "failed",
        "n",
        "status",
        "status_line",
        "writer",
    )

    def __init__(self, writer: Any, status_lines: bool) -> None:
        self.n = 0
        self.writer = writer
        self._write = writer.write
        self._write_eof = writer.write_eof
        self._write_headers: Any = writer.write_headers if status_lines else None
        self.status: Any = None  # of the first response the prepare handler saw prepared
        self.status_line: Any = None  # ("HTTP/1.1 200 OK"; parsed only when asked)
        self.deflated: Any = _UNSEEN  # then the counting compressor, or None: not compressed
        self.done = False  # write_eof was called
        self.failed: BaseException | None = None  # what a write raised (the connection went away)

    @property
    def compressed(self) -> bool:
        """Whether the bytes went through the writer's compressor (as far as written)."""
        return self.deflated.__class__ is _Deflated

    @property
    def sent(self) -> int:
        """The body bytes sent so far (compressed ones when compressed)."""
        deflated = self.deflated
        return deflated.n if deflated.__class__ is _Deflated else self.n

    def started(self) -> int | None:
        """The status of the response that has started going out on the connection, None when
        nothing has (aiohttp can still answer with an error page: it looks at the writer's
        ``output_size`` too) or when it is not known."""
        try:
            if not self.writer.output_size:
                return None
            if self.status is not None:
                return int(self.status)
            line = self.status_line
            return None if line is None else int(line.split(" ", 2)[1])
        except Exception:
            return None

    def write_headers(self, status_line: Any, *args: Any, **kwargs: Any) -> Any:
        # (not a coroutine of its own: returns the writer's, so the write costs no extra frame)
        self.status_line = status_line
        return self._write_headers(status_line, *args, **kwargs)

    def _see_compressor(self) -> None:
        """At the first write: whether the writer compresses (then count what it produces)."""
        writer = self.writer
        self.deflated = None if getattr(writer, "_compress", None) is None else _deflating(writer)

    async def write(self, chunk: Any, *args: Any, **kwargs: Any) -> Any:
        if self.deflated is _UNSEEN:
            self._see_compressor()
        try:  # (counting must never fail the app's write)
            n = _size(chunk)
            remaining = getattr(self.writer, "length", None)  # aiohttp drops bytes past a declared length
            if isinstance(remaining, int) and n > remaining:
                n = remaining
        except Exception:
            n = 0
        try:
            result = await self._write(chunk, *args, **kwargs)
        except BaseException as exc:
            self.failed = exc
            raise
        self.n += n
        return result

    async def write_eof(self, chunk: Any = b"", *args: Any, **kwargs: Any) -> Any:
        if self.deflated is _UNSEEN:
            self._see_compressor()
        self.done = True
        try:
            result = await self._write_eof(chunk, *args, **kwargs)
            if chunk and isinstance(chunk, (bytes, bytearray, memoryview)):
                self.n += _size(chunk)
            return result
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            try:
                del self.writer.write, self.writer.write_eof
                if self._write_headers is not None:
                    del self.writer.write_headers
            except AttributeError:
                pass


_UNSEEN: Any = object()


class _Deflated:
    """Counts the bytes a payload writer's compressor produces (aiohttp's ``ZLibCompressor``
    since 3.9: ``await compress(data)`` and ``flush()``), delegating everything."""

    __slots__ = ("inner", "n")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.n = 0

    async def compress(self, data: Any) -> Any:
        out = await self.inner.compress(data)
        self.n += len(out)
        return out

    def flush(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner.flush(*args, **kwargs)
        self.n += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _deflating(writer: Any) -> _Deflated | None:
    """The counting wrapper now in place of ``writer``'s compressor, None when it does not
    compress (or its compressor is not where aiohttp 3.9 to 3.14 keep it: ``_compress``;
    then the bytes before compression are counted)."""
    try:
        inner = getattr(writer, "_compress", None)
        if inner is None:
            return None
        if inner.__class__ is _Deflated:
            return inner
        if not callable(getattr(inner, "compress", None)) or not callable(getattr(inner, "flush", None)):
            return None
        deflated = _Deflated(inner)
        writer._compress = deflated
        return deflated
    except Exception:
        return None


def _count_body(request: Any, status_lines: bool) -> _Written | None:
    """Count the response body bytes of ``request`` (None when its writer cannot be), and keep
    the status lines handed to its writer when ``status_lines``."""
    try:
        writer = request.writer
        written = _Written(writer, status_lines)
        writer.write = written.write
        writer.write_eof = written.write_eof
        if status_lines:
            writer.write_headers = written.write_headers
    except Exception:  # (no writer, or one that takes no attributes)
        return None
    return written


class _Messages:
    """A WebSocket's data messages (text and binary) received and sent, and its close code."""

    __slots__ = ("attributes", "close_code", "failed", "received", "sent", "socket")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.socket: Any = None
        self.close_code: int | None = None  # the server's, when it closed first
        # the last ConnectionError a send (or ping, pong) raised while the handler had not
        # closed the socket itself: the client went away
        self.failed: BaseException | None = None
        self.attributes: dict[str, Any] = {}  # the request's (to take the prepare hook back)

    def record(self, span: AnySpan) -> None:
        """Set the span's ``websocket.*`` attributes (the handler has returned)."""
        self.attributes.pop("_prepare_hook", None)
        socket = self.socket
        if socket is None:  # (the handler did not accept the upgrade)
            return
        try:
            span.set_attribute("websocket.messages.received", self.received)
            span.set_attribute("websocket.messages.sent", self.sent)
            # The first close frame's code, as the ASGI middleware records it: the server's when
            # the handler closed first (aiohttp's close_code is then the client's reply).
            code = self.close_code if self.close_code is not None else socket.close_code
            if code is not None:
                span.set_attribute("websocket.close.code", int(code))
        except Exception as exc:
            _safety.report("web.aiohttp.websocket", exc)


def _count_messages(request: Any) -> _Messages | None:
    """Count the messages of the ``WebSocketResponse`` the handler prepares for ``request``:
    the request's prepare hook (run by ``prepare``, before the handshake is sent) patches
    ``receive`` and the send methods on that response object. None when it cannot."""
    from aiohttp import WSMsgType, web

    data = (WSMsgType.TEXT, WSMsgType.BINARY)
    messages = _Messages()
    try:
        hook = request._prepare_hook
        attributes = request.__dict__
    except Exception:
        return None

    async def traced_hook(response: Any) -> None:
        attributes.pop("_prepare_hook", None)  # (once: back to the class's method)
        if messages.socket is None and isinstance(response, web.WebSocketResponse):
            try:
                _patch_socket(response, messages, data)
                messages.socket = response
            except Exception as exc:
                _safety.report("web.aiohttp.websocket", exc)
        await hook(response)

    # (straight into __dict__: aiohttp's debug-mode __setattr__ warns about custom attributes)
    attributes["_prepare_hook"] = traced_hook
    messages.attributes = attributes
    return messages


def _patch_socket(socket: Any, messages: _Messages, data: tuple[Any, ...]) -> None:
    receive = socket.receive

    async def counting_receive(*args: Any, **kwargs: Any) -> Any:
        message = await receive(*args, **kwargs)
        if message.type in data:
            messages.received += 1
        return message

    def failed(exc: BaseException) -> None:
        # aiohttp's writer refuses a frame once the transport closes: the client went away,
        # unless the handler had closed the socket itself (then sending is its own mistake)
        if messages.close_code is None:
            messages.failed = exc

    def counting_send(send: Any, counts: bool = True) -> Any:
        async def sent(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await send(*args, **kwargs)
            except ConnectionError as exc:
                failed(exc)
                raise
            if counts:
                messages.sent += 1
            return result

        return sent

    socket.receive = counting_receive
    # send_json goes through send_str, send_json_bytes through send_bytes: each counts once.
    socket.send_str = counting_send(socket.send_str)
    socket.send_bytes = counting_send(socket.send_bytes)
    socket.ping = counting_send(socket.ping, False)
    socket.pong = counting_send(socket.pong, False)
    send_frame = getattr(socket, "send_frame", None)  # (aiohttp 3.11+)
    if send_frame is not None:

        async def counting_send_frame(message: Any, opcode: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = await send_frame(message, opcode, *args, **kwargs)
            except ConnectionError as exc:
                failed(exc)
                raise
            if opcode in data:
                messages.sent += 1
            return result

        socket.send_frame = counting_send_frame

    close = socket.close

    async def closing(*args: Any, **kwargs: Any) -> Any:
        if messages.close_code is None and socket.close_code is None and not socket.closed:
            messages.close_code = int(kwargs.get("code", 1000))  # (keyword-only in aiohttp)
        return await close(*args, **kwargs)

    socket.close = closing


def _finish(
    state: RequestState, options: Options, start_ns: int, client: str | None, error: BaseException | None
) -> None:
    try:
        if (
            error is not None
            or fast_finish is None
            or fast_finish(state, start_ns, client, options.audit) is NotImplemented
        ):
            finish_request(state, options, state.resolve_route(), start_ns, time_ns(), client, error)
    except Exception as exc:
        _safety.report("web.aiohttp.finish", exc)


def _finish_when_sent(
    response: Any,
    state: RequestState,
    options: Options,
    start_ns: int,
    client: str | None,
    written: _Written | None,
) -> bool:
    """End the request once aiohttp has prepared ``response`` and written its end (or failed
    to): the status a ``FileResponse`` settles on (404, 304, 206...) and the bytes it sent.
    Patches the two methods on this response object only (and a ``FileResponse``'s
    ``_sendfile``, to see where a file cut short stopped); False when it cannot."""
    prepare, write_eof = response.prepare, response.write_eof
    sendfile: Any = getattr(response, "_sendfile", None)  # (FileResponse, aiohttp 3.9 to 3.14)
    done = False
    cut: list[int] = []  # the file bytes sendfile handed over before it failed
    prepared: list[Any] = []  # the request it was prepared for

    def end(error: BaseException | None, gone: bool = False) -> None:
        nonlocal done
        if done:
            return
        done = True
        try:
            state.status = status = response.status
            if cut and (written is None or not (written.n or written.failed or written.compressed)):
                length: int | None = cut[0]  # (sent by sendfile, not through the writer)
            elif gone and written is not None:
                # the client went away while the file went through the writer (compressed, or
                # no sendfile: AIOHTTP_NOSENDFILE): what it took, not the declared length
                length = written.sent
            else:
                length = response.content_length  # (a compressed body's, when compressed)
                if length is None and written is not None:  # chunked: the body bytes written
                    length = written.sent
            # (else the declared length: a whole file goes out by sendfile, which the writer
            # does not see)
            state.sent = body_size(status, state.method, length)
        except Exception as exc:
            _safety.report("web.aiohttp.response", exc)
        _finish(state, options, start_ns, client, error)
        try:  # (back to the class's methods; the response is not prepared twice)
            del response.prepare, response.write_eof
            response.__dict__.pop("_sendfile", None)
        except AttributeError:
            pass

    async def traced_prepare(request: Any) -> Any:
        prepared.append(request)
        try:
            return await prepare(request)
        except ConnectionError as exc:
            # the client went away (a reset, a broken pipe, a closed transport: what aiohttp
            # itself reads as a client that disconnected): aborted, as when cancelled, not an
            # error of the server
            try:
                mark_client_left(state.span, exc)
            except Exception as internal:
                _safety.report("web.aiohttp.response", internal)
            end(None, True)
            raise
        except Exception as exc:
            end(exc)
            raise
        except BaseException:  # cancelled: the client went away, aborted
            end(None)
            raise

    async def traced_write_eof(*args: Any, **kwargs: Any) -> Any:
        # (where a streamed payload is written: a Response whose body is an async generator)
        try:
            return await write_eof(*args, **kwargs)
        except Exception as exc:
            try:
                gone = (
                    isinstance(exc, ConnectionError)
                    and bool(prepared)
                    and _client_left(exc, prepared[0], written, None)
                )
                if gone:  # the client went away mid-body: what it took, not an error
                    mark_client_left(state.span, exc)
                else:  # the body's own failure (its generator raised): an error
                    stamp_exception(exc, state.span)
            except Exception as internal:
                gone = True  # (then no error, as before)
                _safety.report("web.aiohttp.response", internal)
            if gone:
                end(None, True)
            else:
                end(exc)
            raise
        finally:
            end(None)

    async def traced_sendfile(
        request: Any, fobj: Any, offset: Any, count: Any, *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await sendfile(request, fobj, offset, count, *args, **kwargs)
        except Exception:
            # loop.sendfile leaves the file's position past the bytes it sent, also when it
            # raises (asyncio documents it: "file.tell() can be used to obtain the actual
            # number of bytes sent")
            try:
                if isinstance(offset, int) and isinstance(count, int):
                    cut.append(min(max(fobj.tell() - offset, 0), count))
            except Exception:  # noqa: S110  (then the declared length, as before)
                pass
            raise

    try:
        response.prepare = traced_prepare
        response.write_eof = traced_write_eof
        if sendfile is not None and callable(sendfile):
            response._sendfile = traced_sendfile
    except Exception:  # (a response class that takes no attributes: ended now, as before)
        return False
    return True


def _finish_after_error_page(
    state: RequestState,
    options: Options,
    start_ns: int,
    client: str | None,
    error: BaseException,
    written: _Written | None,
) -> bool:
    """End the request of an unhandled exception once aiohttp has answered it: its own error
    page (500, or 504 for a ``TimeoutError``), written after the middleware returns, in the
    request's task (one per request since aiohttp 3.9), or nothing when the response had
    started already (aiohttp drops the connection). The body size is what went out. False
    when it cannot wait (then the request ends now, its body size 0)."""
    if written is None:
        return False
    try:
        task = asyncio.current_task()
        if task is None:
            return False

        def answered(_: Any) -> None:
            state.sent = body_size(state.status, state.method, written.sent)
            _finish(state, options, start_ns, client, error)

        task.add_done_callback(answered)
    except Exception:
        return False
    return True


def _put_headers(headers: Any, extra: list[tuple[str, str]]) -> None:
    for name, value in extra:
        if name not in headers:  # (the app's own value wins)
            headers[name] = value


def init_aiohttp(app: Any, **options: Any) -> Any:
    """Trace every request of an ``aiohttp.web.Application``: the tracing middleware goes
    first (outermost) and the correlation headers are added to each response as it is
    prepared. ``options`` are :func:`aiohttp_middleware`'s. Call it before the app starts
    (aiohttp freezes its middleware list then). Idempotent; returns the app."""
    key = _key("app")
    if key in app:
        return app
    middleware, add_headers = aiohttp_middleware(**options)
    app.middlewares.insert(0, middleware)
    if add_headers is not None:
        app.on_response_prepare.append(add_headers)
    app[key] = middleware
    return app


def _template(resource: Any, static: Any) -> str | None:
    """The route template of an aiohttp resource (``canonical``: sub-application prefixes
    included; ``{prefix}/{filename}`` for a static route), None when it has none."""
    template = resource.canonical
    if not isinstance(template, str):
        return None
    if isinstance(resource, static):
        # (canonical is the prefix alone: "/static" for "/static/css/app.css", "" for "/")
        return f"{template}/{{filename}}"
    return template or None


async def _route_not_allowed(request: Any, state: RequestState, static: Any) -> None:
    """The route of a 405 Method Not Allowed aiohttp's router answered: the template of the
    resource whose path matched (aiohttp's ``MatchInfoError`` keeps only the allowed methods,
    so the resources of the application that answered are asked again, in aiohttp's own
    resolution order: the first that matches the path for another method is the one aiohttp
    would have matched for that method). Only for 405s."""
    try:
        match_info = request.match_info
        failed = getattr(match_info, "http_exception", None)
        if failed is None or getattr(failed, "status", None) != 405:
            return
        apps = match_info.apps  # (the innermost application last: the one whose router answered)
        if not apps:
            return
        for resource in _resolution_order(apps[-1].router, request):
            if getattr(resource, "_app", None) is not None:
                continue  # (a sub-application: its own router answered for its paths)
            matched, allowed = await resource.resolve(request)
            if matched is None and allowed:
                template = _template(resource, static)
                if template:
                    state.route = template
                return
    except Exception as exc:
        _safety.report("web.aiohttp.route", exc)


def _resolution_order(router: Any, request: Any) -> Iterator[Any]:
    """The resources of ``router`` in the order ``UrlDispatcher.resolve`` asks them for
    ``request`` (aiohttp 3.10 and later): its domain sub-applications, then the resources
    indexed under the request's path, under each shorter ``/``-prefix of it in turn (the most
    explicit first: ``/items/special`` before ``/items/{item_id}``), and, for one key, in the
    order they were added. A router without that index (older aiohttp, or another router
    class) is asked in the order its resources were added."""
    index = getattr(router, "_resource_index", None)
    if not isinstance(index, dict):
        yield from router.resources()
        return
    yield from getattr(router, "_matched_sub_app_resources", ())
    url = request.rel_url
    part = getattr(url, "path_safe", None) or url.path  # (yarl before 1.10: no path_safe)
    while part:
        yield from index.get(part, ())
        if part == "/":
            break
        part = part.rpartition("/")[0] or "/"


#: ``network.protocol.version`` for aiohttp's ``request.version`` (an ``HttpVersion(major,
#: minor)`` tuple); other versions are not recorded.
_PROTOCOL_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0", (2, 0): "2", (3, 0): "3"}


def _begin(request: Any, path: str, start_ns: int, static: Any) -> tuple[RequestState, str | None]:
    headers = request.headers
    attrs: dict[str, Any] = {URL_SCHEME: request.scheme, URL_PATH: path}
    version = _PROTOCOL_VERSIONS.get(request.version)
    if version is not None:
        attrs[NETWORK_PROTOCOL_VERSION] = version
    websocket = headers.get("Upgrade", "").lower() == "websocket"
    if websocket:
        attrs[HTTP_METHOD] = request.method
        label = "WEBSOCKET"
    else:
        label = method_attributes(request.method, attrs)
    query = request.query_string
    if query:
        attrs[URL_QUERY] = query
    agent = headers.get("User-Agent")
    if agent:
        attrs[USER_AGENT] = agent
    length = request.content_length
    if length:
        attrs[HTTP_REQUEST_BODY_SIZE] = length
    address = request.remote or None
    if address:
        attrs[CLIENT_ADDRESS] = address
    # No traceparent: a new trace (tracestate and baggage alone are ignored, as extract does).
    parent = extract(headers) if "traceparent" in headers else None
    span = _start_span(label, attrs, _SERVER, parent, None, start_ns)
    state = RequestState(span, attrs[HTTP_METHOD], label)
    resource = getattr(getattr(request.match_info, "route", None), "resource", None)
    if resource is not None:  # (None for a path no route matched: the span keeps the method)
        state.route = _template(resource, static)
    return state, address


# -- client --------------------------------------------------------------------------------------
_client_patch: list[Any] = []


async def _on_request_start(session: Any, ctx: Any, params: Any) -> None:
    if CURRENT.get() is SUPPRESSED:
        return
    try:
        full, host, port = _strip_credentials(str(params.url))
        span = _start(params.method, full, host, port)
        inject(params.headers, context=span.context)
        setattr(ctx, _CLIENT_CTX, span)
    except Exception as exc:
        _safety.report("web.aiohttp_client.start", exc)


async def _on_request_end(session: Any, ctx: Any, params: Any) -> None:
    span: AnySpan | None = getattr(ctx, _CLIENT_CTX, None)
    if span is not None:
        _end(span, params.response.status, None)


async def _on_request_exception(session: Any, ctx: Any, params: Any) -> None:
    span: AnySpan | None = getattr(ctx, _CLIENT_CTX, None)
    if span is not None:
        exc = params.exception
        if isinstance(exc, asyncio.CancelledError):
            with _safety.guard("web.aiohttp_client.cancel"):
                span.set_attribute("error.type", "cancelled")
                span.end()
        else:
            _end(span, None, exc)


async def _on_request_redirect(session: Any, ctx: Any, params: Any) -> None:
    span: AnySpan | None = getattr(ctx, _CLIENT_CTX, None)
    if span is not None:
        with _safety.guard("web.aiohttp_client.redirect"):
            span.add_event("http.redirect", {"http.response.status_code": params.response.status})


def aiohttp_trace_config() -> Any:
    """An ``aiohttp.TraceConfig`` that makes each request of a session a CLIENT span and
    injects ``traceparent``: ``ClientSession(trace_configs=[aiohttp_trace_config()])``.
    :func:`instrument_aiohttp_client` adds it to every new session."""
    import aiohttp

    config = aiohttp.TraceConfig()
    config.on_request_start.append(_on_request_start)
    config.on_request_end.append(_on_request_end)
    config.on_request_exception.append(_on_request_exception)
    config.on_request_redirect.append(_on_request_redirect)
    config.pitchey_trace = True  # type: ignore[attr-defined]
    return config


def instrument_aiohttp_client() -> None:
    """Trace every ``aiohttp.ClientSession`` created from now on: each request (redirects
    followed included) is one CLIENT span, ended when the response headers arrive, and
    carries ``traceparent``. Idempotent; sessions created before are left as they are."""
    import aiohttp

    if _client_patch:
        return
    original = aiohttp.ClientSession.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        with _safety.guard("web.aiohttp_client.session"):
            configs = list(kwargs.get("trace_configs") or ())
            if not any(getattr(c, "pitchey_trace", False) for c in configs):
                kwargs["trace_configs"] = [*configs, aiohttp_trace_config()]
        original(self, *args, **kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    aiohttp.ClientSession.__init__ = __init__  # type: ignore[method-assign]
    _client_patch.append(original)


def uninstrument_aiohttp_client() -> None:
    """Undo :func:`instrument_aiohttp_client` for sessions created afterwards."""
    if _client_patch:
        import aiohttp

        aiohttp.ClientSession.__init__ = _client_patch.pop()  # type: ignore[method-assign]
