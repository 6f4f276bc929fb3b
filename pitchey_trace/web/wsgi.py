"""WSGI middleware: one server span per request, ended when the response's last byte is out.

    from pitchey_trace.web import WSGITracingMiddleware, init_flask
    application = WSGITracingMiddleware(application)     # any WSGI app (Django, Bottle, ...)
    init_flask(app)                                       # Flask: middleware + route templates

The span is current while the app runs and while the server iterates the response body (so
spans opened by a streaming generator are its children); it ends on the body's last chunk or
on ``close()``, whichever comes first. Route templates come from
:func:`pitchey_trace.web.set_route` (``init_flask`` calls it with ``request.url_rule.rule``).
A client that goes away (the server's write raises an ``OSError``: it closes the body on its
way up, or ``write()`` raises it under the app) is not an error of the server: the span keeps
its status and the chunks written before the failed one, and gets a ``client.disconnected``
event, as in the aiohttp integration. A response built with the server's own
``wsgi.file_wrapper`` goes back to the server as it is (waitress's channel and gunicorn's
``sendfile`` send it their own way); its span ends as the server closes it (a response without
a body, which waitress sends the file for even so: as waitress takes it), counting no more than
the response's ``Content-Length``.
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from time import time_ns
from types import TracebackType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.propagation import extract
from pitchey_trace.web._common import (
    CLIENT_ADDRESS,
    DEFAULT_EXCLUDED_PATHS,
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
    protocol_version,
    set_route,
    stamp_exception,
    status_int,
    text_path,
)

__all__ = ["WSGITracingMiddleware", "init_flask"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_SERVER = SpanKind.SERVER
# The process-wide tracer object is never replaced (configure() re-points it).
_start_span = get_tracer().start_span


class WSGITracingMiddleware:
    """Trace every request of a WSGI application.

    Args:
        app: the WSGI application.
        excluded_paths: paths served untraced (exact; an entry ending in ``*`` is a prefix).
            Default: ``/health``, ``/healthz``, ``/livez``, ``/readyz``.
        trace_id_header: response header carrying the trace id (default ``X-Trace-Id``;
            None to omit).
        traceresponse: also send the draft W3C ``traceresponse`` header.
        audit: emit one ``request`` audit record per request, and ``security`` records for
            401/403/429 responses (default True).

    Exceptions from the app are recorded on the span and re-raised unchanged (the server
    answers 500 and logs them; the log record carries the trace id through
    :class:`pitchey_trace.web.TraceContextFilter`).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        excluded_paths: Iterable[str] | None = DEFAULT_EXCLUDED_PATHS,
        trace_id_header: str | None = "X-Trace-Id",
        traceresponse: bool = False,
        audit: bool = True,
    ) -> None:
        self.app = app
        self.options = Options(
            excluded_paths=excluded_paths,
            trace_id_header=trace_id_header,
            traceresponse=traceresponse,
            audit=audit,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        options = self.options
        path = environ.get("PATH_INFO") or "/"
        if path.__class__ is not str:  # (a server always gives a str; a broken caller may not)
            path = text_path(path)
        if not path.isascii():
            path = _utf8_path(path)
        if path in options.excluded_exact or (
            options.excluded_prefixes and path.startswith(options.excluded_prefixes)
        ):
            token = CURRENT.set(SUPPRESSED)
            try:
                result = self.app(environ, start_response)
            finally:
                CURRENT.reset(token)
            return _untraced_body(result, environ)
        try:
            start_ns = time_ns()
            state, client = self._start(environ, path, start_ns)
            span = state.span
            extra = options.response_headers(span)
        except Exception as exc:
            _safety.report("web.wsgi.start", exc)
            return self.app(environ, start_response)

        app_headers: Any = None  # (what the app passed last: read only for a file handed over)

        def traced_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal app_headers
            app_headers = headers
            try:
                # (an odd status or header list is the app's to answer for: the server gets it
                # as given; it is not an internal error of ours)
                state.status = status_int(status[:3] if isinstance(status, (str, bytes)) else status)
                if extra and isinstance(headers, (list, tuple)):
                    headers = [*headers, *_not_set(headers, extra)]
            except Exception as exc:
                _safety.report("web.wsgi.headers", exc)
            write = start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            def counted_write(data: bytes) -> object:
                try:
                    result = write(data)
                except Exception as exc:
                    if _client_gone(exc):  # the server could not write it: the client went away
                        _mark_raised_by_server(exc)
                    raise
                state.sent += len(data)
                return result

            return counted_write

        token = CURRENT.set(span)
        rtoken = REQUEST.set(state)
        try:
            result = self.app(environ, traced_start_response)
        except BaseException as exc:
            if isinstance(exc, Exception):
                stamp_exception(exc, span)
                if _raised_by_server(exc):
                    # the server's write() failed under the app: its client went away; not an
                    # error of the app (the status it started with and the bytes written kept)
                    _client_left(state, exc)
                    _finish(state, options, start_ns, client, None)
                    raise
            _finish(state, options, start_ns, client, exc)
            raise
        finally:
            _reset(rtoken, token)
        # (a list keeps its len(): servers set Content-Length for a one-item list, waitress too)
        if result.__class__ is list or result.__class__ is tuple:
            return _SizedTracedBody(result, state, options, start_ns, client)
        wrapper = environ.get("wsgi.file_wrapper")
        if (
            wrapper is not None
            and result.__class__ is wrapper
            and _hand_over_file(result, state, options, start_ns, client, app_headers)
        ):
            return result  # the server's own file wrapper: it sends it by its own fast path
        return _TracedBody(result, state, options, start_ns, client)

    def _start(self, environ: dict[str, Any], path: str, start_ns: int) -> tuple[RequestState, str | None]:
        parent = extract(environ)
        attrs: dict[str, Any] = {URL_SCHEME: environ.get("wsgi.url_scheme") or "http", URL_PATH: path}
        label = method_attributes(environ.get("REQUEST_METHOD") or "GET", attrs)
        version = protocol_version(environ.get("SERVER_PROTOCOL"))
        if version is not None:
            attrs[NETWORK_PROTOCOL_VERSION] = version
        query = environ.get("QUERY_STRING")
        if query:
            attrs[URL_QUERY] = query
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attrs[USER_AGENT] = agent
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                attrs[HTTP_REQUEST_BODY_SIZE] = int(length)
            except ValueError:
                pass
        address = environ.get("REMOTE_ADDR") or None
        if address:
            attrs[CLIENT_ADDRESS] = address
        span = _start_span(label, attrs, _SERVER, parent, None, start_ns)
        return RequestState(span, attrs["http.request.method"], label), address


def _finish(
    state: RequestState, options: Options, start_ns: int, client: str | None, exc: BaseException | None
) -> None:
    try:
        # (the C accelerator's request_end does the common case: route, now, finish)
        if (
            exc is not None
            or fast_finish is None
            or fast_finish(state, start_ns, client, options.audit) is NotImplemented
        ):
            finish_request(state, options, state.route, start_ns, time_ns(), client, exc)
    except Exception as internal:
        _safety.report("web.wsgi.finish", internal)


#: Set on an exception the server's ``write`` callable raised (see ``counted_write``).
_SERVER_RAISED = "_pitchey_trace_server_write"


def _mark_raised_by_server(exc: BaseException) -> None:
    try:
        setattr(exc, _SERVER_RAISED, True)
    except Exception:  # noqa: S110  (a type that refuses attributes: an error, as before)
        pass


def _raised_by_server(exc: BaseException) -> bool:
    """Whether ``exc`` is what the server's ``write`` raised (one the app raised anew after
    catching that one is its own error)."""
    return getattr(exc, _SERVER_RAISED, False) is True


def _client_left(state: RequestState, exc: BaseException | None) -> None:
    try:
        mark_client_left(state.span, exc)
    except Exception as internal:
        _safety.report("web.wsgi.disconnect", internal)


def _not_set(headers: Iterable[Any], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The correlation headers ``extra`` the app's own response headers do not carry already:
    an ``X-Trace-Id`` the app set (a gateway's id it passes on) is kept, not sent twice, as the
    aiohttp integration does. Header names compare case-insensitively."""
    present: set[str] = set()
    for header in headers:
        try:
            present.add(header[0].lower())
        except Exception:  # noqa: S112  (an odd header: the server answers for it)
            continue
    return [pair for pair in extra if pair[0].lower() not in present]


def _utf8_path(path: str) -> str:
    """PEP 3333 gives the path's bytes decoded as latin-1; the client meant their UTF-8
    decoding (what ASGI servers give): ``/caf%C3%A9`` is ``/café``. Bytes that are not UTF-8,
    or a str that is not latin-1 (a server that decoded it already), are kept as given."""
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path


def _untraced_body(result: Iterable[bytes], environ: dict[str, Any]) -> Iterable[bytes]:
    """An excluded request's response: a generator runs while the server iterates it, after
    the app returned, so it is wrapped to stay untraced. A list, or the server's file wrapper,
    runs no code of the app: passed on as it is (the server keeps its length, or sendfile)."""
    if result.__class__ is list or result.__class__ is tuple:
        return result
    wrapper = environ.get("wsgi.file_wrapper")
    # (a plain class only: isinstance() then runs no code that could raise)
    if type(wrapper) is type and isinstance(result, wrapper):
        return result
    return _UntracedBody(result)


class _UntracedBody:
    """The response iterable of an excluded path, iterated and closed with tracing
    suppressed (as the app itself ran)."""

    __slots__ = ("_it", "_result")

    def __init__(self, result: Iterable[bytes]) -> None:
        self._result = result
        self._it: Iterator[bytes] | None = None

    def __iter__(self) -> _UntracedBody:
        return self

    def __next__(self) -> bytes:
        token = CURRENT.set(SUPPRESSED)
        try:
            it = self._it
            if it is None:
                it = self._it = iter(self._result)
            return next(it)
        finally:
            CURRENT.reset(token)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            token = CURRENT.set(SUPPRESSED)
            try:
                close()
            finally:
                CURRENT.reset(token)


def _client_gone(exc: BaseException) -> bool:
    """Whether ``exc``, raised by the server's write, says the client went away: an ``OSError``
    (werkzeug, gunicorn), or waitress's ``ClientDisconnected`` (a plain ``Exception``, raised
    as it writes to a connection that closed)."""
    if isinstance(exc, OSError):
        return True
    waitress = sys.modules.get("waitress.channel")
    disconnected = getattr(waitress, "ClientDisconnected", None) if waitress is not None else None
    return isinstance(disconnected, type) and isinstance(exc, disconnected)


def _in_flight_oserror() -> BaseException | None:
    """The server's client-gone exception (:func:`_client_gone`) on its way up through the
    server's frame that calls ``close()``, else None."""
    exc = sys.exc_info()[1]
    return exc if exc is not None and _client_gone(exc) else None


def _reset(rtoken: Any, token: Any) -> None:
    try:
        REQUEST.reset(rtoken)
        CURRENT.reset(token)
    except ValueError:
        CURRENT.set(None)
        REQUEST.set(None)


class _TracedBody:
    """The app's response iterable, timed to its last chunk and run with the span current."""

    __slots__ = ("_client", "_done", "_it", "_last", "_options", "_result", "_start_ns", "_state")

    def __init__(
        self,
        result: Iterable[bytes],
        state: RequestState,
        options: Options,
        start_ns: int,
        client: str | None,
    ) -> None:
        self._result = result
        self._it: Iterator[bytes] | None = None
        self._state = state
        self._options = options
        self._start_ns = start_ns
        self._client = client
        self._done = False
        self._last = 0  # the size of the last chunk handed to the server

    def __iter__(self) -> _TracedBody:
        return self

    def __next__(self) -> bytes:
        state = self._state
        token = CURRENT.set(state.span)
        rtoken = REQUEST.set(state)
        try:
            it = self._it
            if it is None:
                it = self._it = iter(self._result)
            chunk = next(it)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            if isinstance(exc, Exception):
                stamp_exception(exc, state.span)
            self._end(exc)
            raise
        finally:
            _reset(rtoken, token)
        self._last = size = len(chunk)
        state.sent += size
        return chunk

    def close(self) -> None:
        state = self._state
        close = getattr(self._result, "close", None)
        error: BaseException | None = None
        try:
            if close is not None:
                _close_in_request(state, close)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if not self._done:
                # Closed before the body's end with the server's OSError on its way up (a
                # server closes the body in a ``finally`` as its write to the client fails):
                # the client went away; the last chunk, whose write failed, was not sent.
                gone = _in_flight_oserror() if error is None else None
                if gone is not None:
                    state.sent -= self._last
                    _client_left(state, gone)
                self._end(error)

    def _end(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            _finish(self._state, self._options, self._start_ns, self._client, exc)


class _SizedTracedBody(_TracedBody):
    """A list or tuple body, traced: its ``len()`` stays visible to the server, which sets
    ``Content-Length`` from a one-item body (waitress, gunicorn) instead of sending it chunked."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


def _close_in_request(state: RequestState, close: Callable[[], object]) -> None:
    """Call the app's ``close()`` (of its body, or of the server's file wrapper) with the
    request current: spans it makes are the request's children."""
    token = CURRENT.set(state.span)
    rtoken = REQUEST.set(state)
    try:
        close()
    finally:
        _reset(rtoken, token)


def _hand_over_file(
    result: Any,
    state: RequestState,
    options: Options,
    start_ns: int,
    client: str | None,
    headers: Any,
) -> bool:
    """Whether the app's response, an instance of the server's own ``wsgi.file_wrapper``
    class, is handed back to the server as it is (True: its ``close()``, which the server calls
    once the file is out or the client went away, now ends the span), so that the server sends
    it by its own file path instead of iterating a traced body in blocks. Only for a wrapper
    whose bytes can be counted without iterating it:

    * waitress's ``ReadOnlyFileBasedBuffer`` around a seekable file (``prepare`` / ``remain``):
      the server's channel sends it from the file, in its own thread; the bytes sent are the
      size it prepared less what remained.
    * a ``filelike`` wrapper (gunicorn's, which sends it with ``sendfile``, and wsgiref's,
      which iterates it) around a file with a position (``tell``): iterated, the file's
      position moved by the bytes read; sent with ``sendfile``, it did not (gunicorn seeks
      back), and the rest of the file went out. A file without a file descriptor (an
      ``io.BytesIO``) is never sent with ``sendfile`` (gunicorn checks ``fileno()``): it is
      iterated, and its position counts it all the same.

    Either way no more than the response's ``Content-Length`` (``headers``: what the app gave
    ``start_response``) is counted: gunicorn sends no more (``sendfile`` sends that many bytes;
    iterating, it cuts its writes there), waitress prepares no more. Anything else (a pipe, a
    wrapper without ``__dict__``) stays a traced iterable.
    """
    try:
        length = _content_length(headers)
        if hasattr(result, "prepare") and hasattr(result, "remain"):
            if not _seekable(getattr(result, "file", None)):
                return False  # (waitress iterates a file it cannot seek)
            tracker: _FileTracker = _PreparedFile(result, state, options, start_ns, client, length)
        else:
            filelike = getattr(result, "filelike", None)
            tell = getattr(filelike, "tell", None)
            if tell is None or not _seekable(filelike):
                return False
            tracker = _PositionedFile(result, state, options, start_ns, client, length)
        result.close = tracker.close  # (an instance attribute: the server calls this one)
    except Exception:
        return False  # (a wrapper that refuses attributes, a file whose position fails: iterated)
    return True


def _content_length(headers: Any) -> int | None:
    """The ``Content-Length`` among the response headers the app passed to ``start_response``
    (the last one, as gunicorn and waitress read them); None without a readable one."""
    length: int | None = None
    if isinstance(headers, (list, tuple)):
        for header in headers:
            try:
                name, value = header
                if name.lower() == "content-length":
                    length = int(value.strip(" \t"))
            except Exception:  # noqa: S112  (an odd header: the server answers for it)
                continue
    return length if length is None or length >= 0 else None


def _has_body(state: RequestState) -> bool:
    """Whether the response carries a body (not for HEAD, 1xx, 204, 304: see ``body_size``)."""
    return body_size(state.status, state.method, 1) != 0


def _seekable(file: Any) -> bool:
    """Whether a server would seek ``file`` (waitress's test)."""
    seekable = getattr(file, "seekable", None)
    if seekable is not None:
        return bool(seekable())
    return hasattr(file, "seek") and hasattr(file, "tell")


class _FileTracker(abc.ABC):
    """Ends the span of a request whose file the server sends by its own path, as the server
    closes the file wrapper (once, whoever calls it first)."""

    __slots__ = ("_client", "_close", "_done", "_length", "_options", "_result", "_start_ns", "_state")

    def __init__(
        self,
        result: Any,
        state: RequestState,
        options: Options,
        start_ns: int,
        client: str | None,
        length: int | None,
    ) -> None:
        self._result = result
        self._close = getattr(result, "close", None)  # (the wrapper's own close, if any)
        self._state = state
        self._options = options
        self._start_ns = start_ns
        self._client = client
        self._length = length  # the response's Content-Length (None: not given)
        self._done = False
        self._watch()

    @abc.abstractmethod
    def _watch(self) -> None:
        """Start following what the server sends of the file (called by ``__init__``)."""

    @abc.abstractmethod
    def _sent(self, raised: BaseException | None) -> tuple[int, bool]:
        """The bytes the server sent, and whether the file was cut short (``raised``: the
        exception on its way up through the server's frame that closes the wrapper)."""

    def close(self) -> None:
        if self._done:
            if self._close is not None:
                self._close()
            return
        self._done = True
        state = self._state
        raised = sys.exc_info()[1]
        try:
            sent, short = self._sent(raised)
            length = self._length
            if length is not None and sent > length:
                sent = length  # (the server sends no more than the Content-Length it announced)
            state.sent += sent
            if raised is not None and _client_gone(raised):
                _client_left(state, raised)
            elif raised is None and short and _has_body(state):
                # (the server closed it before its end: the connection. Not for a response
                # without a body: what waitress sends of the file then is past the response.)
                _client_left(state, None)
        except Exception as internal:
            _safety.report("web.wsgi.file", internal)
        error: BaseException | None = None
        try:
            if self._close is not None:
                _close_in_request(state, self._close)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _finish(state, self._options, self._start_ns, self._client, error)


class _PreparedFile(_FileTracker):
    """waitress's file wrapper: its ``prepare(size)`` sets ``remain``, the bytes to send, and
    each send lowers it; ``close()`` comes when it reached 0 or the connection closed.

    waitress sends the file even for a response without a body (HEAD, 204, 304), and a client
    that only waits for the headers leaves it unread (or closes the connection under it): such
    a response is over as waitress prepares the file, right before its headers go out; the
    span ends then (with no body), not when the connection closes."""

    __slots__ = ("_prepared",)

    def _watch(self) -> None:
        self._prepared = 0
        result, state = self._result, self._state
        prepare = result.prepare

        def traced_prepare(*args: Any, **kwargs: Any) -> Any:
            size = prepare(*args, **kwargs)
            self._prepared = size if size.__class__ is int else 0
            if self._prepared and not self._done and not _has_body(state):
                self._done = True
                _finish(state, self._options, self._start_ns, self._client, None)
            return size

        result.prepare = traced_prepare

    def _sent(self, raised: BaseException | None) -> tuple[int, bool]:
        prepared = self._prepared
        if not prepared:  # (never prepared, or empty: waitress iterated nothing)
            return 0, False
        remain = self._result.remain
        return prepared - remain, remain > 0


class _PositionedFile(_FileTracker):
    """A ``filelike`` wrapper (gunicorn, wsgiref): the bytes sent are told by the file's
    position (see :func:`_hand_over_file`)."""

    __slots__ = ("_file", "_start")

    def _watch(self) -> None:
        self._file = self._result.filelike
        self._start = self._file.tell()

    def _sent(self, raised: BaseException | None) -> tuple[int, bool]:
        file = self._file
        read = file.tell() - self._start
        if read > 0:  # iterated in blocks: every block read was written, but a failed last one
            if raised is not None:
                block = getattr(self._result, "blksize", 0)
                if block.__class__ is int and block > 0:
                    read -= read % block or block
            return max(read, 0), False
        if raised is not None:
            return 0, False  # (a sendfile cut short, or nothing sent: how far it went is unknown)
        # The position did not move: sent with sendfile (the rest of the file), or an empty
        # file iterated. A file without a usable descriptor (io.BytesIO: UnsupportedOperation)
        # is never sent with sendfile: nothing was read, nothing sent.
        fileno = getattr(file, "fileno", None)
        if fileno is None:
            return 0, False
        try:
            size = os.fstat(fileno()).st_size
        except (OSError, ValueError):  # (io.UnsupportedOperation is both)
            return 0, False
        return max(size - self._start, 0), False


def init_flask(app: Any, **options: Any) -> Any:
    """Trace a Flask app: wrap ``app.wsgi_app`` in :class:`WSGITracingMiddleware` (``options``
    are its keyword arguments), name spans after ``request.url_rule`` and record unhandled
    exceptions on the request's span. Idempotent; returns the app.
    """
    extensions = app.extensions
    if "pitchey_trace" in extensions:
        return app
    from flask import request
    from flask.signals import got_request_exception, request_started

    def record_route(sender: Any, **extra: Any) -> None:
        # (on request_started: the URL is matched by then, and it comes before every
        # before_request function, so a 401 an auth hook aborts with is named too)
        rule = request.url_rule
        if rule is not None:
            set_route(rule.rule)

    def record_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
        # Flask turns the exception into a 500 itself: it never reaches the middleware.
        state = REQUEST.get()
        if state is not None:
            with _safety.guard("web.flask.exception"):
                state.span.record_exception(exception)
                state.span.set_attribute("error.type", type(exception).__qualname__)
                state.span.set_status("error", f"{type(exception).__name__}: {exception}")

    request_started.connect(record_route, app, weak=False)
    got_request_exception.connect(record_exception, app, weak=False)
    app.wsgi_app = WSGITracingMiddleware(app.wsgi_app, **options)
    extensions["pitchey_trace"] = app.wsgi_app
    return app
