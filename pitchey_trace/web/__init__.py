"""Web integration: request tracing middleware, outbound propagation, log correlation.

    from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware, init_flask
    app = ASGITracingMiddleware(app)          # Starlette, FastAPI, any ASGI 3 app
    application = WSGITracingMiddleware(application)   # Django, any WSGI app
    init_flask(flask_app)                     # Flask (middleware + url_rule route names)
    init_aiohttp(aiohttp_app)                 # aiohttp.web (middleware + resource templates)

Inside a request: :func:`set_route` (frameworks the middleware cannot see into),
:func:`set_user` (audit actor), :func:`auth_failure` (security audit event).
Outbound: :func:`instrument_httpx`, :func:`instrument_requests`, :func:`instrument_urllib`,
:func:`instrument_urllib3`, :func:`instrument_aiohttp_client`, :func:`client_span`.
Logs: :class:`TraceContextFilter`, :class:`TraceFormatter`, :func:`add_trace_ids` (structlog);
:class:`LogEventHandler` / :func:`instrument_logging` (log records as span events);
:class:`LogExportHandler` / :func:`export_logs` (the application's logs shipped as records).
See ``docs/middleware.md``. No web framework is imported until it is used.
"""

from __future__ import annotations

from pitchey_trace.web._common import DEFAULT_EXCLUDED_PATHS, auth_failure, set_route, set_user
from pitchey_trace.web.aio import (
    aiohttp_middleware,
    aiohttp_trace_config,
    init_aiohttp,
    instrument_aiohttp_client,
    uninstrument_aiohttp_client,
)
from pitchey_trace.web.asgi import ASGITracingMiddleware
from pitchey_trace.web.logs import (
    LogEventHandler,
    LogExportHandler,
    TraceContextFilter,
    TraceFormatter,
    add_trace_ids,
    export_event,
    export_logs,
    instrument_logging,
    stop_export_logs,
    trace_ids,
    uninstrument_logging,
)
from pitchey_trace.web.outbound import (
    client_span,
    instrument_httpx,
    instrument_requests,
    instrument_urllib,
    instrument_urllib3,
    uninstrument_httpx,
    uninstrument_requests,
    uninstrument_urllib,
    uninstrument_urllib3,
)
from pitchey_trace.web.wsgi import WSGITracingMiddleware, init_flask

__all__ = [
    "DEFAULT_EXCLUDED_PATHS",
    "ASGITracingMiddleware",
    "LogEventHandler",
    "LogExportHandler",
    "TraceContextFilter",
    "TraceFormatter",
    "WSGITracingMiddleware",
    "add_trace_ids",
    "aiohttp_middleware",
    "aiohttp_trace_config",
    "auth_failure",
    "client_span",
    "export_event",
    "export_logs",
    "init_aiohttp",
    "init_flask",
    "instrument_aiohttp_client",
    "instrument_httpx",
    "instrument_logging",
    "instrument_requests",
    "instrument_urllib",
    "instrument_urllib3",
    "set_route",
    "set_user",
    "stop_export_logs",
    "trace_ids",
    "uninstrument_aiohttp_client",
    "uninstrument_httpx",
    "uninstrument_logging",
    "uninstrument_requests",
    "uninstrument_urllib",
    "uninstrument_urllib3",
]
