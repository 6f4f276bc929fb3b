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


def test_a_middleware_inside_an_excluded_path_sends_no_trace_id(
    serve_asgi: Any, serve_wsgi: Any, wait_for: Any, path_kind: str
) -> None:
    """A middleware that runs with tracing suppressed (inside another's excluded path, under
    ``pt.suppress_tracing()``) has no trace to name: it answered ``X-Trace-Id: 000...0``."""
    from pitchey_trace.web import WSGITracingMiddleware

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    inner = Starlette(routes=[Route("/internal/x", ok), Route("/public", ok)])
    asgi = ASGITracingMiddleware(
        ASGITracingMiddleware(inner, traceresponse=True),
        excluded_paths=["/internal/*"],
        trace_id_header="X-Outer",
    )
    wsgi = WSGITracingMiddleware(WSGITracingMiddleware(wsgi_app), excluded_paths=["/internal/*"])
    with capture_spans() as exporter:
        for url in (serve_asgi(asgi), serve_wsgi(wsgi)):
            hidden = httpx.get(url + "/internal/x")
            assert hidden.status_code == 200
            assert {"x-trace-id", "x-outer", "traceresponse"}.isdisjoint(hidden.headers)
        public = httpx.get(serve_asgi(asgi) + "/public")
        wait_for(lambda: len(exporter.spans()) >= 2)
    # (outside the excluded path both trace: the inner span is a child of the outer)
    assert public.headers["x-outer"] == public.headers["x-trace-id"]
    assert public.headers["traceresponse"].split("-")[1] == public.headers["x-trace-id"]
    assert {s["attributes"]["url.path"] for s in exporter.spans()} == {"/public"}
