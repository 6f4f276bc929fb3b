"""ASGITracingMiddleware under uvicorn with its httptools HTTP implementation (the other tests
use h11): the essentials over real connections on 127.0.0.1. One server for the module."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httptools  # noqa: F401  (a dev dependency: a missing one fails, as CI must not skip)
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware
from tests.integration.web.conftest import run_uvicorn
from tests.support.web import event_names, raw_connect, server_span

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CHUNK = b"h" * 1000


async def item(request: Request) -> Response:
    with pt.span("load_item"):
        pass
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def upload(request: Request) -> Response:
    return PlainTextResponse(str(len(await request.body())))


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def busy(request: Request) -> Response:
    return PlainTextResponse("later", status_code=503)


async def stream(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            if i:
                await asyncio.sleep(0.15)
            yield CHUNK

    return StreamingResponse(body())


async def endless(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(400):
            yield CHUNK
            await asyncio.sleep(0.05)

    return StreamingResponse(body())


APP = ASGITracingMiddleware(
    Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/upload", upload, methods=["POST"]),
            Route("/boom", boom),
            Route("/busy", busy),
            Route("/stream", stream),
            Route("/endless", endless),
        ]
    )
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_uvicorn(APP, http="httptools") as server:
        yield server.url


def test_traceparent_route_status_header(base_url: str, path_kind: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        response = httpx.get(f"{base_url}/items/9", headers={"traceparent": TRACEPARENT})
        span = wait_for(server_span(exporter))
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == TRACE_ID
    assert span["trace_id"] == TRACE_ID
    assert span["parent_span_id"] == PARENT_ID
    assert span["name"] == "GET /items/{item_id}"
    assert span["attributes"]["http.route"] == "/items/{item_id}"
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["attributes"]["http.response.body.size"] == len("item 9")
    assert span["attributes"]["network.protocol.version"] == "1.1"


def test_5xx_and_exception(base_url: str, path_kind: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        busy_resp = httpx.get(f"{base_url}/busy")
        boom_resp = httpx.get(f"{base_url}/boom")
        wait_for(lambda: len(exporter.spans()) >= 2)
        spans = {s["attributes"]["url.path"]: s for s in exporter.spans()}
    assert (busy_resp.status_code, boom_resp.status_code) == (503, 500)
    assert boom_resp.headers["x-trace-id"] == spans["/boom"]["trace_id"]
    assert spans["/busy"]["status"] == "error"
    assert spans["/boom"]["status"] == "error"
    assert spans["/boom"]["attributes"]["error.type"] == "RuntimeError"
    assert "exception" in event_names(spans["/boom"])


def test_request_body_sizes(base_url: str, path_kind: str, wait_for: Any) -> None:
    """A Content-Length, and a chunked upload (httptools parses it: counted as received)."""
    with capture_spans() as exporter:
        assert httpx.post(f"{base_url}/upload", content=b"q" * 321).text == "321"
        sock = raw_connect(base_url)
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"a" * 500, b"b" * 12)) + b"0\r\n\r\n"
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        answer = b""
        while b"512" not in answer:
            chunk = sock.recv(65536)
            assert chunk
            answer += chunk
        sock.close()
        wait_for(lambda: len(exporter.spans()) >= 2)
        sizes = sorted(s["attributes"]["http.request.body.size"] for s in exporter.spans())
    assert sizes == [321, 512]


def test_streaming_timed_to_last_byte(base_url: str, path_kind: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        started = time.monotonic()
        with httpx.stream("GET", f"{base_url}/stream") as response:
            body = b"".join(response.iter_bytes())
        elapsed = time.monotonic() - started
        span = wait_for(server_span(exporter))
    assert body == CHUNK * 3
    duration = (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e9
    assert 0.28 <= duration <= elapsed + 0.05
    assert span["attributes"]["http.response.body.size"] == 3000


def test_client_leaving_mid_stream(base_url: str, path_kind: str, wait_for: Any) -> None:
    with capture_spans() as exporter:
        sock = raw_connect(base_url)
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while CHUNK[:100] not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        sock.close()
        span = wait_for(server_span(exporter))
    assert "client.disconnected" in event_names(span)
    assert span["status"] != "error"
    assert span["attributes"]["http.response.status_code"] == 200
    assert "error.type" not in span["attributes"]
