"""Django: name request spans after URL patterns and record the authenticated user.

    # settings.py
    MIDDLEWARE = ["pitchey_trace.web.django.PitcheyRouteMiddleware", *MIDDLEWARE]

    # wsgi.py (or asgi.py with ASGITracingMiddleware / get_asgi_application)
    application = WSGITracingMiddleware(get_wsgi_application())

The request span itself comes from the WSGI / ASGI middleware around Django's handler; this
Django middleware only tells it the route template (``request.resolver_match.route``, e.g.
``/pitches/<int:pitch_id>/``) once Django has resolved the view, and the user's primary key as
the audit actor. ``pitchey-trace run`` does both without any setting. This module imports
nothing from Django; it works in sync and async projects.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pitchey_trace.web._common import set_route, set_user

__all__ = ["PitcheyRouteMiddleware"]

_DOTTED = "pitchey_trace.web.django.PitcheyRouteMiddleware"


def _is_async(fn: Any) -> bool:
    try:
        from asgiref.sync import iscoroutinefunction

        return bool(iscoroutinefunction(fn))
    except ImportError:  # (asgiref comes with Django; without it nothing is async)
        return inspect.iscoroutinefunction(fn)


class PitcheyRouteMiddleware:
    """Django middleware: the request span is named after the matched URL pattern, and an
    authenticated user's primary key becomes the audit actor (``user.id``). Put it first in
    ``MIDDLEWARE``. Sync and async capable."""

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
        """Hand the resolved URL pattern to the request's span (never the raw path)."""
        route = getattr(getattr(request, "resolver_match", None), "route", None)
        if isinstance(route, str):
            set_route(_template(route))


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
    if wrapped is not empty and getattr(wrapped, "is_authenticated", False):
        set_user(wrapped.pk)  # an id, never a name or an e-mail address
