"""Route names of an app reached from more than one outermost router: the template cache was
keyed by the route alone, so a sub-app mounted under /a and /b, or mounted and also served on
its own, took the first prefix it was seen under for every request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware

pytestmark = pytest.mark.integration


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_a_sub_app_under_two_parents_and_alone_is_named_for_each(
    serve_asgi: Any, wait_for: Any, path_kind: str
) -> None:
    sub = Starlette(routes=[Route("/x/{n}", ok)])
    a = Starlette(routes=[Mount("/a", app=sub)])
    b = Starlette(routes=[Mount("/b", app=sub)])
    with capture_spans() as exporter:
        for app, path in ((a, "/a/x/1"), (b, "/b/x/2"), (sub, "/x/3"), (a, "/a/x/4"), (b, "/b/x/5")):
            url = serve_asgi(ASGITracingMiddleware(app))
            assert httpx.get(url + path).status_code == 200
        wait_for(lambda: len(exporter.spans()) >= 5)
        spans = exporter.spans()
    by_path = {s["attributes"]["url.path"]: s["name"] for s in spans}
    assert by_path == {
        "/a/x/1": "GET /a/x/{n}",
        "/b/x/2": "GET /b/x/{n}",
        "/x/3": "GET /x/{n}",
        "/a/x/4": "GET /a/x/{n}",
        "/b/x/5": "GET /b/x/{n}",
    }
