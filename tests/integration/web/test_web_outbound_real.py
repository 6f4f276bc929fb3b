"""Outbound instrumentation of httpx (sync and async) and requests against a real HTTP server
on 127.0.0.1 that echoes the propagation headers it received."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import urllib3

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import (
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

pytestmark = pytest.mark.integration


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers with the traceparent it got; ``/fail`` answers 500, ``/moved`` redirects to ``/``."""
    if environ["PATH_INFO"] == "/moved":
        start_response("302 Found", [("Location", "/"), ("Content-Length", "0")])
        return [b""]
    body = json.dumps({"traceparent": environ.get("HTTP_TRACEPARENT")}).encode()
    status = "500 Internal Server Error" if environ["PATH_INFO"] == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def echo_url(serve_wsgi: Any) -> str:
    return serve_wsgi(echo_app)  # type: ignore[no-any-return]


@pytest.fixture
def instrumented() -> Iterator[None]:
    instrument_httpx()
    instrument_requests()
    try:
        yield
    finally:
        uninstrument_httpx()
        uninstrument_requests()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there any more


def check_client_span(exporter: Any, received: str | None, parent: Any, url: str, status: int) -> None:
    [client] = [s for s in exporter.spans() if s["kind"] == "client"]
    assert client["name"] == "GET"
    assert client["trace_id"] == f"{parent.trace_id:032x}"
    assert client["parent_span_id"] == f"{parent.span_id:016x}"
    assert received is not None
    assert received[:-2] == f"00-{client['trace_id']}-{client['span_id']}-"
    assert int(received[-2:], 16) & 1  # sampled (the random flag 0x02 may be set too)
    attrs = client["attributes"]
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.full"] == url
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == int(url.split(":")[2].split("/")[0])
    assert attrs["http.response.status_code"] == status


@pytest.mark.usefixtures("instrumented")
def test_httpx_sync_client_span_and_injection(echo_url: str) -> None:
    with capture_spans() as exporter, pt.span("caller") as parent, httpx.Client() as client:
        received = client.get(f"{echo_url}/echo?q=1").json()["traceparent"]
    check_client_span(exporter, received, parent, f"{echo_url}/echo?q=1", 200)


@pytest.mark.usefixtures("instrumented")
def test_httpx_async_client_span_and_injection(echo_url: str) -> None:
    async def call() -> tuple[Any, str]:
        with pt.span("caller") as parent:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{echo_url}/echo")
        return parent, r.json()["traceparent"]

    with capture_spans() as exporter:
        parent, received = asyncio.run(call())
    check_client_span(exporter, received, parent, f"{echo_url}/echo", 200)


@pytest.mark.usefixtures("instrumented")
def test_requests_client_span_and_injection(echo_url: str) -> None:
    with capture_spans() as exporter, pt.span("caller") as parent:
        received = requests.get(f"{echo_url}/echo", timeout=10).json()["traceparent"]
    check_client_span(exporter, received, parent, f"{echo_url}/echo", 200)


@pytest.mark.usefixtures("instrumented")
def test_error_statuses_and_connection_failures(echo_url: str) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/x"
    with capture_spans() as exporter:
        assert httpx.get(f"{echo_url}/fail").status_code == 500
        assert requests.get(f"{echo_url}/fail", timeout=10).status_code == 500
        with pytest.raises(httpx.ConnectError):
            httpx.get(dead)
        with pytest.raises(requests.ConnectionError):
            requests.get(dead, timeout=10)
    spans = [s for s in exporter.spans() if s["kind"] == "client"]
    assert len(spans) == 4
    assert all(s["status"] == "error" for s in spans)
    kinds = sorted(s["attributes"]["error.type"] for s in spans)
    assert kinds == ["500", "500", "ConnectError", "ConnectionError"]
    assert sum(1 for s in spans if any(e["name"] == "exception" for e in s["events"])) == 2


def test_instrumentation_is_idempotent_and_reversible(echo_url: str) -> None:
    try:
        instrument_httpx()
        instrument_httpx()
        instrument_requests()
        instrument_requests()
        with capture_spans() as exporter, pt.span("caller"):
            httpx.get(f"{echo_url}/echo")
            requests.get(f"{echo_url}/echo", timeout=10)
        assert len([s for s in exporter.spans() if s["kind"] == "client"]) == 2
    finally:
        uninstrument_httpx()
        uninstrument_requests()
    with capture_spans() as exporter, pt.span("caller"):
        via_httpx = httpx.get(f"{echo_url}/echo").json()["traceparent"]
        via_requests = requests.get(f"{echo_url}/echo", timeout=10).json()["traceparent"]
    assert via_httpx is None
    assert via_requests is None
    assert [s["name"] for s in exporter.spans()] == ["caller"]


@pytest.mark.usefixtures("instrumented")
def test_suppressed_tracing_sends_and_records_nothing(echo_url: str) -> None:
    with capture_spans() as exporter, pt.span("caller"), pt.suppress_tracing():
        received = httpx.get(f"{echo_url}/echo").json()["traceparent"]
    assert received is None
    assert [s["name"] for s in exporter.spans()] == ["caller"]


@pytest.mark.usefixtures("instrumented")
def test_credentials_never_reach_url_full(echo_url: str) -> None:
    with capture_spans() as exporter:
        httpx.get(echo_url.replace("http://", "http://alice:s3cret@") + "/echo")
        requests.get(echo_url.replace("http://", "http://bob:hunter2@") + "/echo", timeout=10)
    fulls = [s["attributes"]["url.full"] for s in exporter.spans() if s["kind"] == "client"]
    assert fulls == [f"{echo_url}/echo", f"{echo_url}/echo"]


def test_client_span_helper_with_any_client(echo_url: str) -> None:
    with capture_spans() as exporter:
        headers: dict[str, str] = {}
        with client_span("GET", f"{echo_url}/echo", headers) as span:
            req = urllib.request.Request(f"{echo_url}/echo", headers=headers)  # noqa: S310
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  (http to 127.0.0.1)
                received = json.loads(resp.read())["traceparent"]
                span.set_attribute("http.response.status_code", resp.status)
    [client] = exporter.spans()
    assert client["kind"] == "client"
    assert received[:-2] == f"00-{client['trace_id']}-{client['span_id']}-"
    assert client["attributes"]["http.response.status_code"] == 200


# -- urllib.request (the standard library) ---------------------------------------------------------
def fetch(url: str, path: str = "") -> Any:
    """``urlopen`` of http://127.0.0.1 (a GET request made explicitly, as an application would)."""
    request = urllib.request.Request(url + path, method="GET")  # noqa: S310  (http to 127.0.0.1)
    return urllib.request.urlopen(request, timeout=10)  # noqa: S310


def instrumented_twice(instrument: Any, uninstrument: Any) -> Iterator[None]:
    instrument()
    instrument()  # idempotent
    try:
        yield
    finally:
        uninstrument()


@pytest.fixture
def urllib_traced() -> Iterator[None]:
    yield from instrumented_twice(instrument_urllib, uninstrument_urllib)


def check_direct_and_redirect(
    echo_url: str, job: Any, direct_call: tuple[Any, Any], redirect_call: tuple[Any, Any, Any]
) -> None:
    """A GET of ``/items?id=7`` and one of ``/moved``, made in span ``job``: client spans with
    the HTTP attributes, each hop of the redirect its own span, each carrying its traceparent."""
    (direct, first), (hop, landed, redirected) = direct_call, redirect_call
    assert {s["parent_span_id"] for s in (direct, hop, landed)} == {f"{job.span_id:016x}"}
    assert direct["kind"] == "client"
    host, port = echo_url.removeprefix("http://").split(":")
    assert direct["attributes"] == {
        "url.full": f"{echo_url}/items?id=7",
        "server.address": host,
        "server.port": int(port),
        "http.request.method": "GET",
        "http.response.status_code": 200,
    }
    assert first["traceparent"].startswith(f"00-{direct['trace_id']}-{direct['span_id']}-")
    # each redirect hop is its own span, and the landing request carries its own traceparent
    assert hop["attributes"]["http.response.status_code"] == 302
    assert landed["attributes"]["url.full"] == f"{echo_url}/"
    assert redirected["traceparent"].startswith(f"00-{landed['trace_id']}-{landed['span_id']}-")


def test_urllib_client_spans_injection_and_redirect_hops(echo_url: str, urllib_traced: None) -> None:
    with capture_spans() as mem:
        with pt.span("job") as job:
            with fetch(echo_url, "/items?id=7") as r:
                first = json.loads(r.read())
            with fetch(echo_url, "/moved") as r:
                redirected = json.loads(r.read())
    direct, hop, landed, root = mem.spans()
    assert root["name"] == "job"
    assert direct["name"] == "GET"
    check_direct_and_redirect(echo_url, job, (direct, first), (hop, landed, redirected))


def test_urllib_errors_suppression_and_uninstrument(echo_url: str, urllib_traced: None) -> None:
    with capture_spans() as mem:
        with pytest.raises(urllib.error.HTTPError) as failed:
            fetch(echo_url, "/fail")
        failed.value.close()
        with pytest.raises(urllib.error.URLError):
            fetch(f"http://127.0.0.1:{closed_port()}/")
        with pt.suppress_tracing(), fetch(echo_url) as r:
            assert json.loads(r.read())["traceparent"] is None
        uninstrument_urllib()
        with fetch(echo_url) as r:
            assert json.loads(r.read())["traceparent"] is None
    assert failed.value.code == 500  # the application's exception, unchanged
    server_error, refused = mem.spans()
    assert server_error["status"] == "error"
    assert server_error["attributes"]["http.response.status_code"] == 500
    assert refused["status"] == "error"
    assert refused["attributes"]["error.type"] == "URLError"


# -- urllib3 -----------------------------------------------------------------------------------------
@pytest.fixture
def urllib3_traced() -> Iterator[None]:
    yield from instrumented_twice(instrument_urllib3, uninstrument_urllib3)


def test_urllib3_client_spans_injection_and_redirect_hops(echo_url: str, urllib3_traced: None) -> None:
    caller_headers = {"X-Tenant": "t-1"}
    http = urllib3.PoolManager(headers={"User-Agent": "pool/1"})
    with capture_spans() as mem, pt.span("job") as job:
        first = http.request("GET", f"{echo_url}/items?id=7", headers=caller_headers).json()
        redirected = http.request("GET", f"{echo_url}/moved").json()  # the PoolManager follows it
        # a pool's own request: a path on its host, the pool's headers
        pool = urllib3.HTTPConnectionPool("127.0.0.1", int(echo_url.rsplit(":", 1)[1]), headers={"A": "b"})
        pooled = pool.urlopen("GET", "/pooled").json()
    assert caller_headers == {"X-Tenant": "t-1"}  # the caller's map and the pools' are untouched
    assert http.headers == {"User-Agent": "pool/1"}
    assert dict(pool.headers) == {"A": "b"}
    direct, hop, landed, pool_span, _job = mem.spans()
    assert pool_span["parent_span_id"] == f"{job.span_id:016x}"
    check_direct_and_redirect(echo_url, job, (direct, first), (hop, landed, redirected))
    assert pool_span["attributes"]["url.full"] == f"{echo_url}/pooled"
    assert pooled["traceparent"].startswith(f"00-{pool_span['trace_id']}-{pool_span['span_id']}-")


def test_urllib3_errors_suppression_and_uninstrument(echo_url: str, urllib3_traced: None) -> None:
    http = urllib3.PoolManager()
    with capture_spans() as mem:
        assert http.request("GET", f"{echo_url}/fail").status == 500
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            http.request("GET", f"http://127.0.0.1:{closed_port()}/", retries=1)
        with pt.suppress_tracing():
            assert http.request("GET", echo_url).json()["traceparent"] is None
        uninstrument_urllib3()
        assert http.request("GET", echo_url).json()["traceparent"] is None
    server_error, refused = mem.spans()
    assert (server_error["status"], server_error["attributes"]["error.type"]) == ("error", "500")
    assert refused["status"] == "error"
    assert refused["attributes"]["error.type"] == "MaxRetryError"  # its retry is inside the span


def test_requests_over_instrumented_urllib3_is_one_span(echo_url: str, urllib3_traced: None) -> None:
    """requests sends with urllib3: instrumented both, a call is still one CLIENT span, and the
    traceparent on the wire is that span's."""
    instrument_requests()
    try:
        with capture_spans() as mem, pt.span("caller"):
            received = requests.get(f"{echo_url}/echo", timeout=10).json()["traceparent"]
    finally:
        uninstrument_requests()
    [client] = [s for s in mem.spans() if s["kind"] == "client"]
    assert received.startswith(f"00-{client['trace_id']}-{client['span_id']}-")
    # without the requests instrumentation, the urllib3 request underneath is the span
    with capture_spans() as mem, pt.span("caller"):
        received = requests.get(f"{echo_url}/echo", timeout=10).json()["traceparent"]
    [client] = [s for s in mem.spans() if s["kind"] == "client"]
    assert received.startswith(f"00-{client['trace_id']}-{client['span_id']}-")


STALE = "00-11111111111111111111111111111111-2222222222222222-01"


def test_a_callers_traceparent_in_another_case_is_replaced(echo_url: str, urllib3_traced: None) -> None:
    """A caller's ``Traceparent`` (a stale one, copied from an inbound request) was sent next to
    ours: the server saw two (werkzeug joins them with a comma) and started a new trace."""
    caller_headers = {"Traceparent": STALE, "X-Tenant": "t-1"}
    with capture_spans() as mem, pt.span("job"):
        by_urllib3 = urllib3.PoolManager().request("GET", f"{echo_url}/a", headers=caller_headers).json()
        headers = {"TRACEPARENT": STALE}
        with client_span("GET", f"{echo_url}/b", headers):
            req = urllib.request.Request(f"{echo_url}/b", headers=headers)  # noqa: S310
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  (http to 127.0.0.1)
                by_helper = json.loads(resp.read())
    assert caller_headers == {"Traceparent": STALE, "X-Tenant": "t-1"}  # the caller's map: untouched
    pool_span, helper_span = [s for s in mem.spans() if s["kind"] == "client"]
    assert by_urllib3["traceparent"][:-2] == f"00-{pool_span['trace_id']}-{pool_span['span_id']}-"
    assert by_helper["traceparent"][:-2] == f"00-{helper_span['trace_id']}-{helper_span['span_id']}-"
