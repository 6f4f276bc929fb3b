"""Django: name request spans after URL patterns, record the authenticated user and the
exceptions Django turns into 500s.

    # settings.py
    MIDDLEWARE = ["pitchey_trace.web.django.PitcheyRouteMiddleware", *MIDDLEWARE]

    # wsgi.py (or asgi.py with ASGITracingMiddleware / get_asgi_application)
    application = WSGITracingMiddleware(get_wsgi_application())

The request span itself comes from the WSGI / ASGI middleware around Django's handler; this
Django middleware only tells it the route template (``request.resolver_match.route``, e.g.
``/pitches/<int:pitch_id>/``) once Django has resolved the view, the user's primary key as
the audit actor, and the exception behind a 500 (Django answers it itself, so it never reaches
the WSGI / ASGI middleware). ``pitchey-trace run`` does all of it without any setting. This
module imports nothing from Django at import time; it works in sync and async projects.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from pitchey_trace import _safety
from pitchey_trace.web._common import ERROR_TYPE, REQUEST, set_route, set_user

__all__ = ["PitcheyRouteMiddleware"]

_DOTTED = "pitchey_trace.web.django.PitcheyRouteMiddleware"
# Where the exception already recorded on the request's span is kept (on the HttpRequest).
_RECORDED = "_pitchey_trace_exception"


def _is_async(fn: Any) -> bool:
    try:
        from asgiref.sync import iscoroutinefunction

        return bool(iscoroutinefunction(fn))
    except ImportError:  # (asgiref comes with Django; without it nothing is async)
        return inspect.iscoroutinefunction(fn)


class PitcheyRouteMiddleware:
    """Django middleware: the request span is named after the matched URL pattern, an
    authenticated user's primary key becomes the audit actor (``user.id``) as soon as the app
    loads the user, and an exception Django answers with a 500 is recorded on the span. Put it
    first in ``MIDDLEWARE``. Sync and async capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = _is_async(get_response)
        if self.is_async:
            try:
                from asgiref.sync import markcoroutinefunction

                markcoroutinefunction(self)
            except ImportError:  # pragma: no cover  (async Django always has asgiref)
                pass
        with _safety.guard("web.django.setup"):
            from django.core.signals import got_request_exception

            # (once per process, however many handlers load the middleware)
            got_request_exception.connect(_on_uncaught, dispatch_uid=_DOTTED)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        _record_user(request)
        return response

    async def _acall(self, request: Any) -> Any:
        response = await self.get_response(request)
        _record_user(request)
        return response

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        """Hand the resolved URL pattern to the request's span (never the raw path), and
        record the user when the view loads it."""
        route = getattr(getattr(request, "resolver_match", None), "route", None)
        if isinstance(route, str):
            set_route(_template(route))
        if REQUEST.get() is not None:
            with _safety.guard("web.django.user"):
                _watch_user(request)

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Record an exception the view raised that Django will answer with a 500 (first in
        ``MIDDLEWARE``, this runs after every other middleware's ``process_exception``: none
        of them answered it)."""
        if REQUEST.get() is not None:
            with _safety.guard("web.django.exception"):
                if not _answered_by_django(exception):
                    _record_exception(request, exception)


def _template(route: str) -> str:
    """The span's route template for Django's ``resolver_match.route``: ``path()`` patterns as
    they are (``pitches/<int:pk>/`` is ``/pitches/<int:pk>/``); a ``re_path()`` pattern without
    the regex's anchors, which Django keeps at its ends (``^top/(?P<n>[0-9]+)/$``, the ``^`` of
    included patterns already dropped) and which are no part of a path:
    ``/top/(?P<n>[0-9]+)/``."""
    if route.startswith("^"):
        route = route[1:]
    if route.endswith("\\Z"):
        route = route[:-2]
    elif route.endswith("$") and not route.endswith("\\$"):
        route = route[:-1]
    return "/" + route.lstrip("/")


def _record_user(request: Any) -> None:
    # request.user is lazy: read only when the app loaded it (no query of our own for it).
    user = getattr(request, "user", None)
    if user is None:
        return
    wrapped = getattr(user, "_wrapped", user)
    try:
        from django.utils.functional import empty
    except ImportError:  # pragma: no cover  (this middleware runs inside Django)
        return
    if wrapped is not empty:
        _record_actor(wrapped)


def _record_actor(user: Any) -> None:
    if getattr(user, "is_authenticated", False):
        set_user(user.pk)  # an id, never a name or an e-mail address


def _watch_user(request: Any) -> None:
    """Record the user the moment the app loads it (``request.user`` or Django 5's
    ``await request.auser()``, which async views and ``login_required`` use and which leaves
    ``request.user`` unloaded), so a view's own ``auth_failure()`` names the actor too. No
    query of our own: a user the app never loads is never loaded."""
    from django.utils.functional import empty

    user = getattr(request, "user", None)
    state = getattr(user, "__dict__", {})
    setup = state.get("_setupfunc")  # a SimpleLazyObject (AuthenticationMiddleware's)
    if callable(setup) and state.get("_wrapped") is empty:

        def load_user() -> Any:
            loaded = setup()
            with _safety.guard("web.django.user"):
                _record_actor(loaded)
            return loaded

        # (through __dict__: a lazy object's setattr would load the user now)
        user.__dict__["_setupfunc"] = load_user
    else:
        _record_user(request)
    auser = getattr(request, "auser", None)
    if callable(auser) and _is_async(auser):

        async def recording_auser() -> Any:
            loaded = await auser()
            with _safety.guard("web.django.user"):
                _record_actor(loaded)
            return loaded

        request.auser = recording_auser


def _answered_by_django(exc: BaseException) -> bool:
    """Django answers these with a 4xx (``response_for_exception``): no failure of the app."""
    from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
    from django.http import Http404
    from django.http.multipartparser import MultiPartParserError

    return isinstance(exc, (Http404, PermissionDenied, BadRequest, SuspiciousOperation, MultiPartParserError))


def _on_uncaught(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """Django's ``got_request_exception``: sent as it turns an exception into the 500, also
    for one raised by another middleware (no ``process_exception`` sees those). The exception
    is the one being handled; where Django runs this in a worker thread (async handlers) there
    is none, and only the view's, recorded by ``process_exception``, is known."""
    if REQUEST.get() is None:
        return
    with _safety.guard("web.django.exception"):
        exc = sys.exc_info()[1]
        if exc is not None and request is not None:
            _record_exception(request, exc)


def _record_exception(request: Any, exc: BaseException) -> None:
    if request.__dict__.get(_RECORDED) is exc:
        return  # (process_exception, then the signal for the same exception)
    from django.conf import settings

    if settings.DEBUG_PROPAGATE_EXCEPTIONS:
        return  # Django re-raises it: the WSGI / ASGI middleware records it then
    state = REQUEST.get()
    if state is None:
        return
    request.__dict__[_RECORDED] = exc
    span = state.span
    span.record_exception(exc)
    span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
    span.set_status("error", f"{type(exc).__name__}: {exc}")
