"""Session 18 review of the request middleware, on real servers (127.0.0.1):

* route templates of a Starlette ``Mount`` whose app is wrapped in middleware (its routes are
  behind ``.app``), beside another mount of the same routes;
* Flask: the route of a request an app-level ``before_request`` hook aborts (401) is known;
* WSGI: an ``X-Trace-Id`` the app set itself is not sent a second time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from flask import Blueprint, Flask, abort, request
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware, init_flask
from tests.integration.web.conftest import run_uvicorn, run_waitress, run_wsgi

pytestmark = pytest.mark.integration


def _server_spans(exporter: Any, wait_for: Any, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        spans = [s for s in exporter.spans() if s["kind"] == "server"]
        return spans if len(spans) >= count else None

    result: list[dict[str, Any]] = wait_for(found)
    return result


# --- Starlette: a Mount of an app wrapped in middleware --------------------------------------


async def _item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("x")


def test_mount_of_wrapped_app_keeps_its_own_prefix(path_kind: str, wait_for: Any) -> None:
    # The same routes under "/api" (behind GZipMiddleware: Mount.routes is empty for it) and
    # under "/t/{tenant}": a request for /api/... was named after the tenant mount, and that
    # template was cached for the route object, so every later request got it too.
    sub = Starlette(routes=[Route("/items/{item_id:int}", _item)])
    app = Starlette(routes=[Mount("/api", app=GZipMiddleware(sub)), Mount("/t/{tenant}", app=sub)])
    with capture_spans() as exporter, run_uvicorn(ASGITracingMiddleware(app)) as server:
        for path in ("/api/items/3", "/t/acme/items/4", "/api/items/5"):
            assert httpx.get(server.url + path).status_code == 200
        spans = _server_spans(exporter, wait_for, 3)
    by_path = {s["attributes"]["url.path"]: s for s in spans}
    assert by_path["/api/items/3"]["name"] == "GET /api/items/{item_id:int}"
    assert by_path["/api/items/3"]["attributes"]["http.route"] == "/api/items/{item_id:int}"
    assert by_path["/t/acme/items/4"]["attributes"]["http.route"] == "/t/{tenant}/items/{item_id:int}"
    assert by_path["/api/items/5"]["attributes"]["http.route"] == "/api/items/{item_id:int}"
    # never the raw path or the tenant's name
    assert all("acme" not in s["name"] and "/3" not in s["name"] for s in spans)


def test_mount_of_wrapped_app_alone(path_kind: str, wait_for: Any) -> None:
    sub = Starlette(routes=[Route("/items/{item_id:int}", _item)])
    app = Starlette(routes=[Mount("/api", app=GZipMiddleware(GZipMiddleware(sub)))])
    with capture_spans() as exporter, run_uvicorn(ASGITracingMiddleware(app)) as server:
        assert httpx.get(server.url + "/api/items/3").status_code == 200
        (span,) = _server_spans(exporter, wait_for, 1)
    assert span["attributes"]["http.route"] == "/api/items/{item_id:int}"


# --- Flask: the route of a request a before_request hook aborts ------------------------------


def _flask_app() -> Flask:
    app = Flask("session18")

    @app.before_request
    def authenticate() -> None:  # registered before init_flask, as apps usually do
        if request.headers.get("Authorization") != "Bearer ok":
            abort(401)

    bp = Blueprint("things", "session18", url_prefix="/bp")

    @bp.get("/things/<int:thing_id>")
    def thing(thing_id: int) -> str:
        return "ok"

    app.register_blueprint(bp)
    init_flask(app)
    return app


@pytest.mark.parametrize("runner", [run_wsgi, run_waitress], ids=["werkzeug", "waitress"])
def test_flask_route_known_when_before_request_aborts(runner: Any, wait_for: Any) -> None:
    with capture_spans() as exporter, runner(_flask_app()) as server:
        assert httpx.get(server.url + "/bp/things/7?token=abc").status_code == 401
        (span,) = _server_spans(exporter, wait_for, 1)
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 2 and exporter.of_type("audit"))
    assert span["name"] == "GET /bp/things/<int:thing_id>"
    assert span["attributes"]["http.route"] == "/bp/things/<int:thing_id>"
    security = [a for a in audits if a["category"] == "security"]
    assert len(security) == 1
    assert security[0]["target"] == "/bp/things/<int:thing_id>"
    assert security[0]["outcome"] == "401"
    # the query (a secret in it) is in no audit record
    assert all("abc" not in str(a) and "token" not in str(a) for a in audits)


def test_flask_route_still_recorded_when_allowed(wait_for: Any) -> None:
    with capture_spans() as exporter, run_wsgi(_flask_app()) as server:
        response = httpx.get(server.url + "/bp/things/7", headers={"Authorization": "Bearer ok"})
        assert response.status_code == 200
        (span,) = _server_spans(exporter, wait_for, 1)
    assert span["attributes"]["http.route"] == "/bp/things/<int:thing_id>"


# --- WSGI: the app's own X-Trace-Id -----------------------------------------------------------


def _own_header_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("x-trace-id", "gateway-42")])
    return [b"ok"]


def _plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("runner", [run_wsgi, run_waitress], ids=["werkzeug", "waitress"])
def test_wsgi_app_own_trace_id_header_not_duplicated(runner: Any, wait_for: Any) -> None:
    traced = WSGITracingMiddleware(_own_header_app, traceresponse=True)
    with capture_spans() as exporter, runner(traced) as server:
        response = httpx.get(server.url + "/x")
        _server_spans(exporter, wait_for, 1)
    assert response.headers.get_list("x-trace-id") == ["gateway-42"]  # the app's own, once
    assert len(response.headers.get_list("traceresponse")) == 1  # (the app set none: ours)


def test_wsgi_trace_id_header_added_when_app_sets_none(wait_for: Any) -> None:
    with capture_spans() as exporter, run_wsgi(WSGITracingMiddleware(_plain_app)) as server:
        response = httpx.get(server.url + "/x")
        (span,) = _server_spans(exporter, wait_for, 1)
    assert response.headers.get_list("x-trace-id") == [span["trace_id"]]


async def _asgi_own_header_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    own = [(b"X-Trace-ID", b"gateway-42")] if scope["path"] == "/own" else []
    headers = [(b"content-type", b"text/plain"), *own]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("traceresponse", [False, True])  # (without it the C sender adds them)
def test_asgi_app_own_trace_id_header_not_duplicated(
    path_kind: str, traceresponse: bool, wait_for: Any
) -> None:
    """An app's own X-Trace-Id (any case) is kept and not sent twice (as on WSGI and aiohttp);
    the headers the app did not set are still added."""
    traced = ASGITracingMiddleware(_asgi_own_header_app, traceresponse=traceresponse)
    with capture_spans() as exporter, run_uvicorn(traced) as server:
        own = httpx.get(server.url + "/own")
        plain = httpx.get(server.url + "/plain")
        spans = _server_spans(exporter, wait_for, 2)
    assert own.headers.get_list("x-trace-id") == ["gateway-42"]  # the app's own, once
    assert len(own.headers.get_list("traceresponse")) == int(traceresponse)  # (the app set none)
    assert plain.headers.get_list("x-trace-id")[0] in {s["trace_id"] for s in spans}
    assert len(plain.headers.get_list("x-trace-id")) == 1
