"""Excluded paths behind a root path (``uvicorn --root-path /api``):
the server's ``scope["path"]`` carries the root path, while excluded paths, like route names,
are the app's own. Health checks under a root path were traced and audited."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware

pytestmark = pytest.mark.integration


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Any:
    return Starlette(routes=[Route("/healthz", ok), Route("/items/{n}", ok), Route("/api/ready", ok)])


def fastapi_app() -> Any:
    app = FastAPI()
    app.get("/healthz")(lambda: "ok")
    app.get("/items/{n}")(lambda n: "ok")
    return app


# (the root path is the prefix a proxy took off: uvicorn puts it back into the scope's path)
@pytest.mark.parametrize("make", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_health_checks_under_a_root_path_are_not_traced(
    serve_asgi: Any, wait_for: Any, path_kind: str, make: Any
) -> None:
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(make()), root_path="/api")
        with httpx.Client(base_url=url) as client:
            health = client.get("/healthz")
            item = client.get("/items/7")
        assert health.status_code == item.status_code == 200
        assert "x-trace-id" not in health.headers
        assert "x-trace-id" in item.headers
        spans = wait_for(lambda: [s for s in exporter.spans() if s["kind"] == "server"])
        audits = [r for r in exporter.records if r["type"] == "audit"]
    assert [s["name"] for s in spans] == ["GET /items/{n}"]
    assert [a["target"] for a in audits] == ["/items/{n}"]


def test_a_root_path_prefix_alone_still_traces_the_apps_own_routes(
    serve_asgi: Any, wait_for: Any, path_kind: str
) -> None:
    """Only what follows the root path is matched: the app's own ``/api/ready`` under root
    ``/api`` (``/api/api/ready`` in the scope) is traced, its ``/ready`` is not."""
    with capture_spans() as exporter:
        url = serve_asgi(ASGITracingMiddleware(starlette_app(), excluded_paths=["/ready"]), root_path="/api")
        with httpx.Client(base_url=url) as client:
            assert client.get("/api/ready").status_code == 200
            assert "x-trace-id" not in client.get("/ready").headers
        spans = wait_for(lambda: [s for s in exporter.spans() if s["kind"] == "server"])
    assert [s["name"] for s in spans] == ["GET /api/ready"]
