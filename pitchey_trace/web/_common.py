"""What the ASGI and WSGI middleware share: options, per-request state, audit, headers.

Everything here runs once per request, so it is decided at construction time where it can
be (header names encoded, excluded paths split into an exact set and a prefix tuple) and
does plain dict/set/str work per request: no regex, no JSON, no I/O.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from time import time_ns
from typing import TYPE_CHECKING, Any

from pitchey_trace import _accel, _safety
from pitchey_trace._span import Span, SpanKind, StatusCode
from pitchey_trace._tracer import get_tracer
from pitchey_trace._validate import HEADER_NAME
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.propagation import extract
from pitchey_trace.records import PENDING_AUDIT

if TYPE_CHECKING:
    from pitchey_trace._span import AnySpan

__all__ = [
    "DEFAULT_EXCLUDED_PATHS",
    "Options",
    "RequestState",
    "auth_failure",
    "current_request",
    "set_route",
    "set_user",
]

#: Health-check paths that are not traced unless ``excluded_paths`` says otherwise.
DEFAULT_EXCLUDED_PATHS: tuple[str, ...] = ("/health", "/healthz", "/livez", "/readyz")

# OpenTelemetry HTTP semantic-convention attribute names (precomputed, used on every request).
HTTP_METHOD = "http.request.method"
HTTP_METHOD_ORIGINAL = "http.request.method_original"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
HTTP_REQUEST_BODY_SIZE = "http.request.body.size"
HTTP_RESPONSE_BODY_SIZE = "http.response.body.size"
URL_SCHEME = "url.scheme"
URL_PATH = "url.path"
URL_QUERY = "url.query"
URL_FULL = "url.full"
USER_AGENT = "user_agent.original"
CLIENT_ADDRESS = "client.address"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
USER_ID = "user.id"
DURATION_MS = "duration_ms"

#: Methods recorded as themselves; anything else is ``_OTHER`` (semantic conventions).
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY")
)
#: ``network.protocol.version`` for what servers put in the ASGI scope's ``http_version`` and
#: the WSGI ``SERVER_PROTOCOL``: the semantic conventions' values (``1.1``, ``2``, ``3``, not
#: ``2.0``). Anything else is not recorded (the convention: unknown, not set).
PROTOCOL_VERSIONS: dict[str, str] = {
    "1.0": "1.0",
    "1.1": "1.1",
    "2": "2",
    "2.0": "2",
    "3": "3",
    "3.0": "3",
    "HTTP/1.0": "1.0",
    "HTTP/1.1": "1.1",
    "HTTP/2": "2",
    "HTTP/2.0": "2",
    "HTTP/3": "3",
    "HTTP/3.0": "3",
}


def protocol_version(value: object) -> str | None:
    """``network.protocol.version`` for an ASGI ``http_version`` or a WSGI ``SERVER_PROTOCOL``
    (None when absent or not one of the known versions)."""
    return PROTOCOL_VERSIONS.get(value) if isinstance(value, str) else None


#: Responses that also produce a ``security`` audit event.
SECURITY_STATUSES = frozenset((401, 403, 429))

#: Attribute set on an exception that escaped a traced request, so a log record written
#: later (by the server, after the request's span is no longer current) still carries the
#: request's trace id. See :mod:`pitchey_trace.web.logs`.
EXC_IDS_ATTR = "_pitchey_trace_ids"


# Route object -> full template (mount prefixes included), for the outermost router it was
# reached from (``scope["router"]``: an app mounted in another is served alone too, its routes
# then without the mount's prefix). Routes are few and long-lived, so the tree walk runs once
# per route; the objects are kept beside the id so a reused id misses. (The C accelerator
# reads this dict too, and calls route_template() when it misses.)
_route_templates: dict[int, tuple[object, object, str]] = {}
# The same for a route reached from more than one outermost router: by (route, router) ids.
_routes_by_router: dict[tuple[int, int], tuple[object, object, str]] = {}
# A route object the tree reaches under more than one prefix (a router included twice, under
# /v1 and /latest; the same routes mounted twice): never in the cache above, so each request
# comes here, and the template is the one whose pattern matches the request's path.
_ambiguous_routes: dict[int, tuple[object, list[tuple[Any, str]]]] = {}
_MAX_ROUTES = 4096


def _children(route: Any, prefix: str) -> tuple[Any, str]:
    """The routes under ``route`` (a Mount, a Host, a router FastAPI's ``include_router`` nests)
    and their prefix; (None, prefix) for a leaf."""
    children = getattr(route, "routes", None)
    if children is not None and not children:
        # A Mount of an app wrapped in middleware (Mount("/api", app=GZipMiddleware(sub))):
        # Starlette's Mount.routes asks only the outer object; its routes are behind ``.app``
        children = _wrapped_routes(getattr(route, "app", None))
    if children:
        path = getattr(route, "path", "")  # a Host has no path
        return children, prefix + (path if isinstance(path, str) else "")
    # FastAPI 0.13x and later: include_router() nests the router itself, its prefix (the one
    # given to include_router, joined to the including router's own) in include_context
    included = getattr(route, "original_router", None)
    if included is not None:
        context_prefix = getattr(getattr(route, "include_context", None), "prefix", "")
        children = getattr(included, "routes", None)
        return children, prefix + (context_prefix if isinstance(context_prefix, str) else "")
    return None, prefix


def _wrapped_routes(app: Any) -> Any:
    """The routes of the first app down a chain of ASGI middleware (each keeping the app it
    wraps as ``.app``, as Starlette's and most do), None when there are none."""
    try:
        for _ in range(8):
            if app is None:
                return None
            routes = getattr(app, "routes", None)
            if routes:
                return routes
            app = getattr(app, "app", None)
    except Exception:  # noqa: S110  (an odd object in the chain: no routes from it)
        pass
    return None


def _find_templates(routes: Iterable[Any], target: Any, prefix: str, depth: int, found: list[str]) -> None:
    """Append to ``found`` the full template of every place ``target`` has in the route tree."""
    for r in routes:
        if len(found) >= 16:
            return
        if r is target:
            found.append(prefix + str(r.path))
            continue
        if depth < 8:
            children, child_prefix = _children(r, prefix)
            if children:
                _find_templates(children, target, child_prefix, depth + 1, found)


def _compiled(template: str) -> Any:
    """The pattern Starlette matches ``template`` with (None when it cannot be compiled)."""
    try:
        from starlette.routing import compile_path

        return compile_path(template)[0]
    except Exception:
        return None


def _matching(candidates: list[tuple[Any, str]], scope: Mapping[str, Any]) -> str:
    """The template of ``candidates`` whose pattern matches the request's path below the
    app's root (the first when none does)."""
    path = scope.get("path")
    if isinstance(path, str):
        root = scope.get("app_root_path", scope.get("root_path")) or ""  # (Mount extends root_path)
        if isinstance(root, str) and root and path.startswith(root):
            path = path[len(root) :]
        for pattern, template in candidates:
            if pattern is not None and pattern.match(path):
                return template
    return candidates[0][1]


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The route template Starlette/FastAPI matched for this scope, or None."""
    route = scope.get("route")
    if route is None:
        return None
    router = scope.get("router")
    cached = _route_templates.get(id(route))
    if cached is not None and cached[0] is route:
        if cached[1] is router:
            return cached[2]
        cached = _routes_by_router.get((id(route), id(router)))
        if cached is not None and cached[0] is route and cached[1] is router:
            return cached[2]
    ambiguous = _ambiguous_routes.get(id(route))
    if ambiguous is not None and ambiguous[0] is route:
        return _matching(ambiguous[1], scope)
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    template = path
    if router is not None:
        found: list[str] = []
        _find_templates(getattr(router, "routes", ()), route, "", 0, found)
        distinct = list(dict.fromkeys(t or "/" for t in found))
        if len(distinct) > 1:
            if len(_ambiguous_routes) >= _MAX_ROUTES:
                _ambiguous_routes.clear()
            candidates = [(_compiled(t), t) for t in distinct]
            _ambiguous_routes[id(route)] = (route, candidates)
            return _matching(candidates, scope)
        if distinct:
            template = distinct[0]
    entry = (route, router, template or "/")
    first = _route_templates.get(id(route))
    if first is not None and first[0] is route and first[1] is not router:
        if len(_routes_by_router) >= _MAX_ROUTES:
            _routes_by_router.clear()
        _routes_by_router[(id(route), id(router))] = entry
    else:
        if len(_route_templates) >= _MAX_ROUTES:
            _route_templates.clear()
        _route_templates[id(route)] = entry
    return template or "/"


class RequestState:
    """Per-request facts collected while the app runs (one object per traced request)."""

    __slots__ = (
        "auth_failed",
        "label",
        "last_byte_ns",
        "method",
        "native_claimed",
        "route",
        "scope",
        "sent",
        "size_unknown",
        "span",
        "status",
        "user_id",
    )

    def __init__(
        self, span: AnySpan, method: str, label: str, scope: Mapping[str, Any] | None = None
    ) -> None:
        self.span = span
        self.method = method  # the http.request.method value (``_OTHER`` for unknown ones)
        self.label = label  # span-name prefix: the method, ``HTTP`` or ``WEBSOCKET``
        self.route: str | None = None
        self.user_id: str | None = None
        self.status = 0
        self.sent = 0
        # True once a file the server sends by itself went out whose size could not be read:
        # http.response.body.size is then left out (ASGI pathsend)
        self.size_unknown = False
        self.last_byte_ns = 0
        self.auth_failed = False
        self.scope = scope  # the ASGI scope, where Starlette records the matched route
        # FastAPI's native server span for this request was given the stand-in of ours
        # (pitchey_trace.otel; unset in states the C start makes: read with a default)
        self.native_claimed = False

    def resolve_route(self) -> str | None:
        """The route template: from :func:`set_route`, else from the ASGI scope, else None."""
        if self.route is None and self.scope is not None:
            return route_template(self.scope)
        return self.route

    def response_pathsend(
        self, message: Mapping[str, Any], send: Callable[[Any], Awaitable[None]]
    ) -> Awaitable[None]:
        """An ASGI ``http.response.pathsend`` message (the server sends the file at
        ``message["path"]``) handed to the server's ``send``: when the server offered the
        extension in ``scope["extensions"]``, it is the response's last body message; its size
        is the file's on disk (one ``stat``), taken before it is handed over, and counted with
        the last byte's time once the server's ``send`` returned (not when it raised). When
        the server did not offer it, the message goes to the server as it is, uncounted.
        Called by the ASGI middleware's send (the C accelerator's ``Sender`` too: one code
        for both). Never raises anything of its own."""
        scope = self.scope
        extensions = scope.get("extensions") if isinstance(scope, Mapping) else None
        if not (isinstance(extensions, Mapping) and PATHSEND in extensions):
            return send(message)
        size = file_size(message.get("path"))
        return self._pathsent(send(message), size)

    async def _pathsent(self, sending: Awaitable[None], size: int | None) -> None:
        await sending
        if size is None:
            self.size_unknown = True
        else:
            self.sent += size
        self.last_byte_ns = time_ns()


# The process-wide tracer object is never replaced (configure() re-points its pipeline).
_TRACER = get_tracer()

#: The C accelerator's request start (ASGI) and end (route, end time and finish) for the
#: common case: each returns NotImplemented, having changed nothing, whenever the Python code
#: below has to decide.
fast_begin: Any = None
fast_finish: Any = None
if _accel.web_setup is not None:
    try:
        _accel.web_setup(
            RequestState,
            KNOWN_METHODS,
            extract,
            _TRACER,
            SpanKind.SERVER,
            PENDING_AUDIT,
            _route_templates,
            route_template,
        )
    except Exception as _exc:  # a RequestState the accelerator does not fit: stay on Python
        _safety.report("web.accelerator", _exc)
    else:
        fast_begin = _accel.asgi_begin
        fast_finish = _accel.request_end

REQUEST: ContextVar[RequestState | None] = ContextVar("pitchey_trace_web_request", default=None)


def current_request() -> RequestState | None:
    """The state of the traced request being handled here, or None outside one."""
    return REQUEST.get()


def set_route(template: str) -> None:
    """Tell the middleware the route template of the current request (``/users/{id}``).

    Frameworks the middleware cannot see into call this once routing is done: the Flask
    integration does it from a ``before_request`` hook, a Django middleware from
    ``process_view``. Outside a traced request it does nothing.
    """
    state = REQUEST.get()
    if state is not None and template.__class__ is str:
        state.route = template


def set_user(user_id: str | int | None) -> None:
    """Record who makes the current request: the audit record's ``actor`` and the span's
    ``user.id``. Pass an identifier, never a name or an e-mail address."""
    state = REQUEST.get()
    if state is None or user_id is None:
        return
    uid = str(user_id)
    state.user_id = uid
    with _safety.guard("web.set_user"):
        state.span.set_attribute(USER_ID, uid)


def auth_failure(reason: str = "auth_failed", *, actor: str | None = None) -> None:
    """Record a failed authentication or authorisation as a ``security`` audit event.

    ``reason`` is a short code (``invalid_token``, ``bad_password``, ``forbidden``), never the
    credential. Inside a traced request the event carries the route and trace id, and the
    request's own 401/403 security event is not repeated. Never raises.
    """
    with _safety.guard("web.auth_failure"):
        state = REQUEST.get()
        attrs: dict[str, Any] = {"security.event": "auth_failure"}
        if state is not None:
            state.auth_failed = True
            route = state.resolve_route() or ""
            action = f"{state.label} {route}" if route else state.label
            attrs[HTTP_METHOD] = state.method
            get_tracer().emit_audit(
                action,
                route,
                str(reason),
                actor=actor if actor is not None else state.user_id,
                category="security",
                attributes=attrs,
                span=state.span,
            )
        else:
            get_tracer().emit_audit(
                "auth.failure", "", str(reason), actor=actor, category="security", attributes=attrs
            )


def split_excluded(paths: Iterable[str] | None) -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact paths and prefixes (entries ending in ``*``) for the per-request check."""
    exact: set[str] = set()
    prefixes: list[str] = []
    if isinstance(paths, (str, bytes)):  # its characters would each become an excluded path
        raise TypeError(f"excluded_paths must be a list of paths, got {paths!r}")
    for p in paths or ():
        if not isinstance(p, str) or not p:
            raise TypeError(f"excluded path must be a non-empty string, got {p!r}")
        if p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    return frozenset(exact), tuple(prefixes)


class Options:
    """Middleware settings, validated and precomputed once."""

    __slots__ = (
        "audit",
        "excluded_exact",
        "excluded_prefixes",
        "header_name",
        "header_name_b",
        "traceresponse",
    )

    def __init__(
        self,
        *,
        excluded_paths: Iterable[str] | None,
        trace_id_header: str | None,
        traceresponse: bool,
        audit: bool,
    ) -> None:
        self.excluded_exact, self.excluded_prefixes = split_excluded(excluded_paths)
        if trace_id_header is not None and (not isinstance(trace_id_header, str) or not trace_id_header):
            raise TypeError("trace_id_header must be a non-empty header name or None")
        if trace_id_header is not None and not HEADER_NAME.fullmatch(trace_id_header):
            # The server would refuse every response (h11), or send a broken or injected one.
            raise ConfigurationError(f"trace_id_header is not a valid HTTP header name: {trace_id_header!r}")
        self.header_name = trace_id_header
        # ASGI header names are lowercase bytes.
        self.header_name_b = trace_id_header.lower().encode("latin-1") if trace_id_header else None
        self.traceresponse = bool(traceresponse)
        self.audit = bool(audit)

    def excluded(self, path: str) -> bool:
        """True when ``path`` must not be traced."""
        if path in self.excluded_exact:
            return True
        prefixes = self.excluded_prefixes
        return bool(prefixes) and path.startswith(prefixes)

    def response_headers(self, span: AnySpan) -> list[tuple[str, str]]:
        """The correlation headers for a response (text form; WSGI)."""
        out: list[tuple[str, str]] = []
        if not span.trace_id:  # (tracing suppressed: no trace to name)
            return out
        if self.header_name is not None:
            out.append((self.header_name, f"{span.trace_id:032x}"))
        if self.traceresponse:
            out.append(("traceresponse", traceresponse_value(span)))
        return out

    def response_headers_b(self, span: AnySpan) -> list[tuple[bytes, bytes]]:
        """The correlation headers for a response (bytes form; ASGI)."""
        out: list[tuple[bytes, bytes]] = []
        if not span.trace_id:  # (tracing suppressed: no trace to name)
            return out
        if self.header_name_b is not None:
            out.append((self.header_name_b, b"%032x" % span.trace_id))
        if self.traceresponse:
            out.append((b"traceresponse", traceresponse_value(span).encode("ascii")))
        return out


def traceresponse_value(span: AnySpan) -> str:
    """The draft W3C ``traceresponse`` value: version, trace id, server span id, sampled flag."""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags & 1:02x}"


def status_int(status: object) -> int:
    """A response status as an int: ``"200"`` is 200; anything unreadable is 0 (no status)."""
    try:
        value = int(status)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0
    return value if 100 <= value <= 999 else 0


def text_path(path: object) -> str:
    """A request path as text: a str as it is, bytes as latin-1 (as WSGI and ASGI carry
    them), anything else the root; so an odd value from a broken caller never fails the request."""
    if isinstance(path, str):
        return path
    if isinstance(path, (bytes, bytearray)):
        return bytes(path).decode("latin-1")
    return "/"


def method_attributes(method: str, attrs: dict[str, Any]) -> str:
    """Store the method attributes and return the method to name the span with."""
    if method in KNOWN_METHODS:
        attrs[HTTP_METHOD] = method
        return method
    attrs[HTTP_METHOD] = "_OTHER"
    attrs[HTTP_METHOD_ORIGINAL] = method
    return "HTTP"


#: The event a server span gets when its client went away mid-request (its connection's read
#: or write failed, or the server reported the disconnect): aborted by the client, not an error
#: of the server. Its ``exception.type`` names what was raised. (Every integration uses it.)
CLIENT_DISCONNECTED = "client.disconnected"


def mark_client_left(span: AnySpan, exc: BaseException | None) -> None:
    """Add the ``client.disconnected`` event for ``exc`` to the request's span (None: nothing
    was raised, the server reported the disconnect and the app stopped; no ``exception.type``)."""
    span.add_event(CLIENT_DISCONNECTED, None if exc is None else {"exception.type": type(exc).__qualname__})


def exception_chain(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling (``__cause__``, else
    ``__context__``), at most ``depth`` of them."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < depth:
        yield current
        seen += 1
        current = current.__cause__ or current.__context__


def stamp_exception(exc: BaseException, span: AnySpan) -> None:
    """Remember the request's ids on an escaping exception (read by the log filter)."""
    try:
        setattr(exc, EXC_IDS_ATTR, (f"{span.trace_id:032x}", f"{span.span_id:016x}"))
    except Exception:  # noqa: S110  (an exception type that refuses attributes: no correlation)
        pass


#: The ASGI extension by which a server sends a file by path (``http.response.pathsend``).
PATHSEND = "http.response.pathsend"


def file_size(path: object) -> int | None:
    """The size of the regular file at ``path`` (an absolute path as text, as the ASGI
    pathsend extension gives it), None when it is anything else or cannot be read: one
    ``os.stat``, no read of the file."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # (ValueError: a NUL in the path)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def body_size(status: int, method: str, length: int | None) -> int:
    """``http.response.body.size``: no body goes out for HEAD, 1xx, 204 and 304 (servers
    drop what the app hands them then)."""
    if method == "HEAD" or status < 200 or status == 204 or status == 304:
        return 0
    return length or 0


def finish_request(
    state: RequestState,
    options: Options,
    route: str | None,
    start_ns: int,
    end_ns: int,
    client_address: str | None,
    exc: BaseException | None,
    http: bool = True,
) -> None:
    """Name the span after its route, set the response attributes and status, emit the audit
    record(s), end the span. Called exactly once per traced request, under a guard."""
    span = state.span
    status = state.status
    if status.__class__ is not int:  # the app sent a status of another type (ASGI says int)
        status = state.status = status_int(status)
    label = state.label
    name = f"{label} {route}" if route else label
    if isinstance(span, Span):
        # (the C accelerator's request_end does this part for the common case)
        span.update_name(name)
        if route:
            span.set_attribute(HTTP_ROUTE, route)
        if http:
            if status:
                span.set_attribute(HTTP_STATUS, status)
            # (left out after a file sent by path whose size could not be read, unless the
            # response has no body anyway: HEAD, 1xx, 204, 304)
            if not state.size_unknown or not body_size(status, state.method, 1):
                span.set_attribute(HTTP_RESPONSE_BODY_SIZE, body_size(status, state.method, state.sent))
        if exc is not None and isinstance(exc, Exception):
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            span.record_exception(exc)
            span.set_status("error", f"{type(exc).__name__}: {exc}")
        elif status >= 500 and span.status != StatusCode.ERROR:
            if ERROR_TYPE not in span.attributes:
                span.set_attribute(ERROR_TYPE, str(status))
            span.set_status("error")
    if options.audit:
        pipeline = _TRACER.pipeline
        if pipeline is not None:
            outcome = str(status) if status else ("error" if isinstance(exc, Exception) else "aborted")
            actor = state.user_id
            if actor is None and span.baggage:
                baggage = dict(span.baggage)
                actor = baggage.get("user.id") or baggage.get("actor")
            # The record itself is built by the pipeline worker (records.request_audit).
            pending = (
                PENDING_AUDIT,
                "request",
                end_ns,
                span.trace_id,
                span.span_id,
                actor,
                name,
                route or "",
                outcome,
                state.method,
                status,
                end_ns - start_ns,
                client_address,
            )
            pipeline.emit(pending)
            if status in SECURITY_STATUSES and not state.auth_failed:
                pipeline.emit((PENDING_AUDIT, "security", *pending[2:]))
    span.end(end_ns)
