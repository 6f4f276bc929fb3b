"""Outbound HTTP: client spans and ``traceparent`` injection.

Any client works with plain propagation (``pt.inject(headers)`` before sending) or with
:func:`client_span`, which also times the call. For ``httpx`` (sync and async), ``requests``,
``urllib3`` and the standard library's ``urllib.request`` one call instruments every request
the process makes::

    from pitchey_trace.web import instrument_httpx, instrument_requests, instrument_urllib
    instrument_httpx(); instrument_requests(); instrument_urllib()      # idempotent
    uninstrument_httpx(); uninstrument_requests(); uninstrument_urllib()
    instrument_urllib3(); uninstrument_urllib3()

(A ``requests`` call, or an AWS API call traced by :mod:`pitchey_trace.botocore`, is one span:
the urllib3 request it makes underneath gets no second one.)

Each request on the wire (redirects included) becomes a CLIENT span named after its method,
with ``http.request.method`` (and ``http.request.method_original`` when the method sent
differs), ``url.full`` (credentials removed), ``server.address``, ``server.port``,
``http.response.status_code``, ``http.request.resend_count`` on each request after the first
of one call (redirects, auth retries) and, on failure or cancellation, ``error.type``. The span
ends when the response headers arrive (a streamed body is read later, outside it). Inside
:func:`pitchey_trace.suppress_tracing` (and on the SDK's export threads) nothing is
recorded or injected.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT, IN_HTTP_CLIENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.propagation import inject
from pitchey_trace.web._common import (
    ERROR_TYPE,
    HTTP_METHOD_ORIGINAL,
    HTTP_STATUS,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    method_attributes,
)

__all__ = [
    "client_span",
    "instrument_httpx",
    "instrument_requests",
    "instrument_urllib",
    "instrument_urllib3",
    "uninstrument_httpx",
    "uninstrument_requests",
    "uninstrument_urllib",
    "uninstrument_urllib3",
]

_CLIENT = SpanKind.CLIENT
# The process-wide tracer object is never replaced (configure() re-points it).
_start_span = get_tracer().start_span
_WRAPPED = "__pitchey_trace_wrapped__"
# library -> (owner class, attribute name, original function) for every patched method.
_patched: dict[str, list[tuple[type, str, Any]]] = {}

RESEND_COUNT = "http.request.resend_count"
# The API call under way (one ``Client.send``, ``Session.send``, ``OpenerDirector.open``,
# ``PoolManager.urlopen``, redirects and auth retries included): (library, client, requests
# it has put on the wire so far). Each request after the first is a resend (semantic
# conventions: ``http.request.resend_count``, for any reason, redirects included).
_call: ContextVar[tuple[str, object, list[int]] | None] = ContextVar("pitchey_trace_http_call", default=None)


def _start(
    method: str, full_url: str, host: str | None, port: int | None, library: str | None = None
) -> AnySpan:
    attrs: dict[str, Any] = {URL_FULL: full_url}
    if host:
        attrs[SERVER_ADDRESS] = host
    if port:
        attrs[SERVER_PORT] = port
    upper = method.upper()
    label = method_attributes(upper, attrs)
    if upper != method:  # (what went on the wire: ``get`` is GET, its original kept)
        attrs[HTTP_METHOD_ORIGINAL] = method
    call = _call.get()
    if library is not None and call is not None and call[0] == library:
        sent = call[2]
        if sent[0]:
            attrs[RESEND_COUNT] = sent[0]
        sent[0] += 1
    return _start_span(label, attrs, _CLIENT)


def _scoped(library: str, send: Callable[..., Any]) -> Callable[..., Any]:
    """``send`` (a client's method) counting the requests one call puts on the wire; a nested
    call on the same client (requests' redirects, urllib's) counts in the outer one."""

    def scoped(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _call.get()
        if call is not None and call[1] is self:
            return send(self, *args, **kwargs)
        token = _call.set((library, self, [0]))
        try:
            return send(self, *args, **kwargs)
        finally:
            _call.reset(token)

    setattr(scoped, _WRAPPED, send)
    return scoped


def _scoped_async(library: str, send: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`_scoped` for a coroutine method (``httpx.AsyncClient.send``)."""

    async def scoped(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _call.get()
        if call is not None and call[1] is self:
            return await send(self, *args, **kwargs)
        token = _call.set((library, self, [0]))
        try:
            return await send(self, *args, **kwargs)
        finally:
            _call.reset(token)

    setattr(scoped, _WRAPPED, send)
    return scoped


def _patch_scope(library: str, owner: type, name: str, is_async: bool = False) -> None:
    original = owner.__dict__.get(name)
    if original is None:  # (another version of the library: spans without the count)
        return
    setattr(owner, name, (_scoped_async if is_async else _scoped)(library, original))
    _patched[library].append((owner, name, original))


def _end(span: AnySpan, status: int | None, exc: BaseException | None) -> None:
    with _safety.guard("web.client.end"):
        if exc is not None:
            # (cancelled too: a task cancelled or an interrupt mid-request did not complete it)
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status("error", f"{type(exc).__name__}: {exc}")
            else:
                span.set_status("error", type(exc).__name__)
        elif status is not None:
            span.set_attribute(HTTP_STATUS, status)
            if status >= 400:
                span.set_attribute(ERROR_TYPE, str(status))
                span.set_status("error")
        span.end()


def _strip_credentials(url: str) -> tuple[str, str | None, int | None]:
    """``url`` without ``user:password@``, its host and its port."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    try:
        port = parts.port
    except ValueError:  # a malformed port: record none rather than guess
        return url, parts.hostname, None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return url, parts.hostname, port


@contextmanager
def client_span(method: str, url: str, headers: MutableMapping[str, str]) -> Iterator[AnySpan]:
    """Time an outbound HTTP call made with any client and propagate the trace through
    ``headers`` (modified in place)::

        headers = {}
        with client_span("GET", url, headers) as span:
            status = my_client.get(url, headers=headers).status
            span.set_attribute("http.response.status_code", status)

    An exception escaping the block is recorded on the span and re-raised unchanged.
    """
    try:
        if CURRENT.get() is SUPPRESSED:
            span: AnySpan = SUPPRESSED
        else:
            full, host, port = _strip_credentials(url)
            span = _start(method, full, host, port)
            inject(headers, context=span.context)
    except Exception as exc:
        _safety.report("web.client.start", exc)
        span = SUPPRESSED
    with span:
        yield span


# -- httpx ---------------------------------------------------------------------------------------
def _httpx_start(request: Any) -> AnySpan | None:
    try:
        url = request.url
        full = str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        span = _start(request.method, full, url.host, port, "httpx")
        inject(request.headers, context=span.context)
        return span
    except Exception as exc:
        _safety.report("web.httpx.start", exc)
        return None


def instrument_httpx() -> None:
    """Create a CLIENT span and inject ``traceparent`` for every ``httpx`` request, sync and
    async (``HTTPTransport`` / ``AsyncHTTPTransport``). Idempotent."""
    import httpx

    if "httpx" in _patched:
        return
    sync_orig = httpx.HTTPTransport.handle_request
    async_orig = httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self: Any, request: Any) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return sync_orig(self, request)
        span = _httpx_start(request)
        if span is None:
            return sync_orig(self, request)
        try:
            response = sync_orig(self, request)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        _end(span, response.status_code, None)
        return response

    async def handle_async_request(self: Any, request: Any) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return await async_orig(self, request)
        span = _httpx_start(request)
        if span is None:
            return await async_orig(self, request)
        try:
            response = await async_orig(self, request)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        _end(span, response.status_code, None)
        return response

    setattr(handle_request, _WRAPPED, sync_orig)
    setattr(handle_async_request, _WRAPPED, async_orig)
    httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]
    _patched["httpx"] = [
        (httpx.HTTPTransport, "handle_request", sync_orig),
        (httpx.AsyncHTTPTransport, "handle_async_request", async_orig),
    ]
    _patch_scope("httpx", httpx.Client, "send")
    _patch_scope("httpx", httpx.AsyncClient, "send", is_async=True)


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx` (no-op when not instrumented)."""
    _restore("httpx")


# -- requests ------------------------------------------------------------------------------------
def instrument_requests() -> None:
    """Create a CLIENT span and inject ``traceparent`` for every ``requests`` call (patches
    ``requests.adapters.HTTPAdapter.send``, so each redirect hop is its own span). Idempotent."""
    import requests.adapters
    import requests.sessions

    if "requests" in _patched:
        return
    adapter = requests.adapters.HTTPAdapter
    orig = adapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return orig(self, request, *args, **kwargs)
        try:
            full, host, port = _strip_credentials(request.url)
            span = _start(request.method or "GET", full, host, port, "requests")
            inject(request.headers, context=span.context)
        except Exception as exc:
            _safety.report("web.requests.start", exc)
            return orig(self, request, *args, **kwargs)
        inside = IN_HTTP_CLIENT.set(True)  # (urllib3's request underneath is this one)
        try:
            response = orig(self, request, *args, **kwargs)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        finally:
            IN_HTTP_CLIENT.reset(inside)
        _end(span, response.status_code, None)
        return response

    setattr(send, _WRAPPED, orig)
    adapter.send = send  # type: ignore[method-assign]
    _patched["requests"] = [(adapter, "send", orig)]
    _patch_scope("requests", requests.sessions.Session, "send")


def uninstrument_requests() -> None:
    """Undo :func:`instrument_requests` (no-op when not instrumented)."""
    _restore("requests")


# -- urllib.request ------------------------------------------------------------------------------
def _add_unredirected(request: Any, name: str, value: str) -> None:
    # (not copied onto a redirect's new request: each hop gets its own span's traceparent)
    request.add_unredirected_header(name, value)


def _request_to_send(req: Any) -> Any:
    """A shallow copy of a ``urllib.request.Request`` with a header map of its own, for the
    injected headers: the caller's object is never changed, so a Request sent again (or by
    another thread at the same time) carries only the headers of its own call, never a
    ``traceparent`` (``baggage``, ``tracestate``) left by an earlier one."""
    sent = copy.copy(req)
    sent.unredirected_hdrs = dict(req.unredirected_hdrs)
    return sent


def instrument_urllib() -> None:
    """Create a CLIENT span and inject ``traceparent`` for every HTTP(S) request made with the
    standard library's ``urllib.request`` (``urlopen``, openers; patches
    ``AbstractHTTPHandler.do_open``, so each redirect hop is its own span). The headers go on
    a copy of the request: the caller's ``Request`` object is not changed, so one sent again
    carries the context of its new call. Idempotent."""
    # (by name, not ``urllib.request``: run from the post-import hook, the submodule is not yet
    # an attribute of its package)
    request_module = importlib.import_module("urllib.request")
    if "urllib" in _patched:
        return
    handler = request_module.AbstractHTTPHandler
    orig = handler.do_open

    def do_open(self: Any, http_class: Any, req: Any, **http_conn_args: Any) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return orig(self, http_class, req, **http_conn_args)
        try:
            full, host, port = _strip_credentials(req.full_url)
            sent = _request_to_send(req)
            span = _start(req.get_method(), full, host, port, "urllib")
            inject(sent, context=span.context, setter=_add_unredirected)
        except Exception as exc:
            _safety.report("web.urllib.start", exc)
            return orig(self, http_class, req, **http_conn_args)
        try:
            response = orig(self, http_class, sent, **http_conn_args)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        _end(span, getattr(response, "status", None), None)  # (4xx / 5xx raise only later)
        return response

    setattr(do_open, _WRAPPED, orig)
    handler.do_open = do_open
    _patched["urllib"] = [(handler, "do_open", orig)]
    _patch_scope("urllib", request_module.OpenerDirector, "open")


def uninstrument_urllib() -> None:
    """Undo :func:`instrument_urllib` (no-op when not instrumented)."""
    _restore("urllib")


# -- urllib3 ---------------------------------------------------------------------------------------
def _assign(carrier: Any, name: str, value: str) -> None:
    carrier[name] = value


def _pool_url(pool: Any, url: str) -> str:
    """The full URL of a pool's request: ``url`` is usually a path on the pool's host (a
    proxy's requests carry a full URL)."""
    if "://" in url:
        return url
    scheme = getattr(pool, "scheme", None) or "http"
    host = str(pool.host)
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    port = getattr(pool, "port", None)
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{url if url.startswith('/') else '/' + url}"


def instrument_urllib3() -> None:
    """Create a CLIENT span and inject ``traceparent`` for every request made with ``urllib3``
    (``PoolManager``, connection pools, and the libraries built on them; patches
    ``HTTPConnectionPool.urlopen``). A call's retries, and the redirects a pool follows itself,
    are inside its span; a ``PoolManager`` follows redirects with a call per hop, so each hop
    is its own span. The caller's and the pool's header maps are never changed: the request
    goes with a copy that has ``traceparent``. Requests made by an instrumented ``requests``
    or ``botocore`` get no second span. Idempotent."""
    connectionpool = importlib.import_module("urllib3.connectionpool")
    if "urllib3" in _patched:
        return
    pool_class = connectionpool.HTTPConnectionPool
    orig = pool_class.urlopen

    def urlopen(
        self: Any, method: str, url: str, body: Any = None, headers: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if IN_HTTP_CLIENT.get() or CURRENT.get() is SUPPRESSED:
            return orig(self, method, url, body, headers, *args, **kwargs)
        try:
            full, host, port = _strip_credentials(_pool_url(self, url))
            span = _start(method, full, host, port, "urllib3")
            given = headers if headers is not None else self.headers
            sent = given.copy() if hasattr(given, "copy") else dict(given or {})
            # (a plain dict: inject replaces a key in any case itself; urllib3's HTTPHeaderDict,
            # which request() builds for a body, replaces in any case on assignment)
            inject(sent, context=span.context, setter=None if isinstance(sent, dict) else _assign)
        except Exception as exc:
            _safety.report("web.urllib3.start", exc)
            return orig(self, method, url, body, headers, *args, **kwargs)
        inside = IN_HTTP_CLIENT.set(True)  # (a retry or a redirect followed here: this span's)
        try:
            response = orig(self, method, url, body, sent, *args, **kwargs)
        except BaseException as exc:
            _end(span, None, exc)
            raise
        finally:
            IN_HTTP_CLIENT.reset(inside)
        _end(span, getattr(response, "status", None), None)
        return response

    setattr(urlopen, _WRAPPED, orig)
    pool_class.urlopen = urlopen
    _patched["urllib3"] = [(pool_class, "urlopen", orig)]
    poolmanager = importlib.import_module("urllib3.poolmanager")
    _patch_scope("urllib3", poolmanager.PoolManager, "urlopen")  # (its redirects: a call per hop)


def uninstrument_urllib3() -> None:
    """Undo :func:`instrument_urllib3` (no-op when not instrumented)."""
    _restore("urllib3")


def _restore(library: str) -> None:
    for owner, name, original in _patched.pop(library, ()):
        if getattr(owner.__dict__.get(name), _WRAPPED, None) is not original:
            # Another layer was put on top of ours since; restoring drops it too.
            _safety.warn_once(f"uninstrument.{library}", "%s.%s was wrapped again after us", owner, name)
        setattr(owner, name, original)
