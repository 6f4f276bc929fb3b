"""Django + pitchey-trace: what to put where (a snippet to copy, not a project).

1. ``settings.py`` - configure once and name spans after URL patterns::

       import pitchey_trace as pt
       pt.configure(service="pitch-admin", exporters=[...])
       MIDDLEWARE = [
           "pitchey_trace.web.django.PitcheyRouteMiddleware",  # route names, user ids
           *MIDDLEWARE,
       ]
       LOGGING = LOGGING_WITH_TRACE_IDS                      # below: ids on every log line

2. Every query on PostgreSQL traced (psycopg 3 or psycopg2 backend), e.g. in an ``AppConfig.ready``::

       from django.db.backends.signals import connection_created
       connection_created.connect(trace_database_queries)   # the function below, copied

3. ``wsgi.py`` (or ``asgi.py``) - wrap the application::

       from django.core.wsgi import get_wsgi_application
       from pitchey_trace.web import WSGITracingMiddleware
       application = WSGITracingMiddleware(get_wsgi_application())

       # asgi.py
       from django.core.asgi import get_asgi_application
       from pitchey_trace.web import ASGITracingMiddleware
       application = ASGITracingMiddleware(get_asgi_application())

Or none of it: ``pitchey-trace run -- gunicorn yourproject.wsgi`` does 1-3 without any change
(tracing configured from the environment).

The WSGI / ASGI middleware cannot see Django's URL resolver, so the route template comes from
``request.resolver_match.route`` (``pitches/<int:pitch_id>/``, recorded with its leading slash:
the span ``GET /pitches/<int:pitch_id>/``), handed over with
:func:`pitchey_trace.web.set_route` by ``PitcheyRouteMiddleware`` once Django has resolved the
view. Without it, spans are named by the method alone (``GET``), never by the raw path. It also
records the signed-in user's id (``user.id``, the audit actor) when the app loads the user, and
the exception behind a 500 on the request's span: Django turns it into the 500 itself, so the
WSGI / ASGI middleware never sees it. Django logs that exception on ``django.request`` while
the request's span is current, so the record carries the trace id, as does the 500 response's
``X-Trace-Id`` header.

This file imports no Django module, so it can be imported (and checked) anywhere;
tests/integration/db/test_django.py and tests/integration/web/test_session18_django.py run it
in Django projects under real WSGI and ASGI servers.
"""

from __future__ import annotations

from typing import Any

from pitchey_trace.web import auth_failure
from pitchey_trace.web.django import PitcheyRouteMiddleware

__all__ = ["LOGGING_WITH_TRACE_IDS", "PitcheyRouteMiddleware", "on_login_failed", "trace_database_queries"]


def trace_database_queries(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Connect to ``django.db.backends.signals.connection_created``: each new PostgreSQL
    connection is instrumented, so every query Django runs on it is a span (named
    ``"SELECT pitches"``, literals stripped) under the request's span."""
    if connection.vendor == "postgresql":
        from pitchey_trace.db import instrument

        instrument(connection.connection)


def on_login_failed(sender: Any, credentials: Any, request: Any = None, **kwargs: Any) -> None:
    """Connect to ``django.contrib.auth.signals.user_login_failed``: a security audit event
    (the credentials are never recorded)::

        from django.contrib.auth.signals import user_login_failed
        user_login_failed.connect(on_login_failed)
    """
    auth_failure("bad_credentials")


#: ``LOGGING`` for settings.py: every record gets ``trace_id`` and ``span_id``.
LOGGING_WITH_TRACE_IDS: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"trace_ids": {"()": "pitchey_trace.web.TraceContextFilter"}},
    "formatters": {"traced": {"()": "pitchey_trace.web.TraceFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["trace_ids"], "formatter": "traced"},
    },
    "root": {"handlers": ["console"], "level": "INFO"},
}


if __name__ == "__main__":
    # Nothing to serve without a Django project; show that the logging config is valid.
    import logging
    import logging.config

    logging.config.dictConfig(LOGGING_WITH_TRACE_IDS)
    logging.getLogger("django.request").info("logging configured with trace ids")
