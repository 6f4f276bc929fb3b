"""Session 18 review of outbound HTTP client spans (against a real HTTP server on 127.0.0.1)
and of log correlation / log export: OpenTelemetry's HTTP client conventions
(``http.request.resend_count``, ``http.request.method_original``, ``error.type`` on
cancellation), ``traceparent`` on urllib3 requests with a body, and log handlers fed odd
records."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import requests.sessions
import urllib3
import urllib3.poolmanager

import pitchey_trace as pt
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import (
    LogEventHandler,
    LogExportHandler,
    client_span,
    export_event,
    instrument_httpx,
    instrument_requests,
    instrument_urllib,
    instrument_urllib3,
    uninstrument_httpx,
    uninstrument_requests,
    uninstrument_urllib,
    uninstrument_urllib3,
)
from tests.support.httpserver import HandlerServer, QuietHandler

pytestmark = pytest.mark.integration

Seen = list[tuple[str, str, list[str]]]


class _Handler(QuietHandler):
    """``/r1`` -> ``/r2`` -> ``/ok`` (302s); ``/auth`` 401 (Digest) without ``Authorization``;
    ``/slow`` answers after 2 s; else 200. Records the
    method, path and every ``traceparent`` each request carried."""

    seen: Seen

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get_all("traceparent") or []))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.partition("?")[0]
        if path in ("/r1", "/r2"):
            self.send_response(302)
            self.send_header("Location", "/r2" if path == "/r1" else "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/auth" and "Authorization" not in self.headers:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Digest realm="r", nonce="abc", qop="auth"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/slow":
            time.sleep(2)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = do_get = do_post = do_FOO = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, Seen]]:
    seen: Seen = []
    srv = HandlerServer(type("Handler", (_Handler,), {"seen": seen}))
    try:
        yield srv.url, seen
    finally:
        srv.close()


@pytest.fixture
def instrumented() -> Iterator[None]:
    instrument_httpx()
    instrument_requests()
    instrument_urllib()
    instrument_urllib3()
    try:
        yield
    finally:
        uninstrument_httpx()
        uninstrument_requests()
        uninstrument_urllib()
        uninstrument_urllib3()


def clients(exporter: Any) -> list[dict[str, Any]]:
    return [s for s in exporter.spans() if s["kind"] == "client"]


# -- outbound ------------------------------------------------------------------------------------
def test_urllib3_requests_with_a_body_carry_one_traceparent(
    server: tuple[str, Seen], instrumented: None
) -> None:
    # PoolManager.request() puts a body's headers in an HTTPHeaderDict, whose ``del`` of a
    # missing key raises: the injection failed and the request went without a traceparent.
    base, seen = server
    stale = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    given = urllib3.HTTPHeaderDict({"TraceParent": stale, "X-Other": "kept"})
    with capture_spans() as exporter:
        with pt.span("root"):
            assert urllib3.PoolManager().request("POST", base + "/post", body=b"data").status == 200
            assert urllib3.PoolManager().request("PUT", base + "/put", fields={"a": "b"}).status == 200
            pool = urllib3.HTTPConnectionPool("127.0.0.1", int(base.rsplit(":", 1)[1]))
            assert pool.urlopen("POST", "/given", body=b"x", headers=given).status == 200
    spans = clients(exporter)
    assert [s["name"] for s in spans] == ["POST", "PUT", "POST"]
    assert [(m, p) for m, p, _ in seen] == [("POST", "/post"), ("PUT", "/put"), ("POST", "/given")]
    for (_, _, traceparents), span in zip(seen, spans, strict=True):
        assert len(traceparents) == 1
        assert traceparents[0].split("-")[2] == span["span_id"]
    assert dict(given) == {"TraceParent": stale, "X-Other": "kept"}  # (the caller's map unchanged)


@pytest.mark.parametrize("client", ["httpx", "httpx-async", "requests", "urllib", "urllib3"])
def test_redirect_hops_carry_http_request_resend_count(
    server: tuple[str, Seen], instrumented: None, client: str
) -> None:
    # semantic conventions: each resent request's span has the ordinal of the resend, for any
    # reason, redirects included; the first request has none.
    base, seen = server
    with capture_spans() as exporter:
        with pt.span("root"):
            for _ in range(2):  # (a second call counts from 0 again)
                if client == "httpx":
                    with httpx.Client(follow_redirects=True) as c:
                        assert c.get(base + "/r1").status_code == 200
                elif client == "httpx-async":

                    async def main() -> int:
                        async with httpx.AsyncClient(follow_redirects=True) as c:
                            return (await c.get(base + "/r1")).status_code

                    assert asyncio.run(main()) == 200
                elif client == "requests":
                    assert requests.get(base + "/r1", timeout=10).status_code == 200
                elif client == "urllib":
                    with urllib.request.urlopen(base + "/r1", timeout=10) as resp:  # noqa: S310  (127.0.0.1)
                        assert resp.status == 200
                else:
                    assert urllib3.PoolManager().request("GET", base + "/r1").status == 200
    spans = clients(exporter)
    assert [s["attributes"].get("http.request.resend_count") for s in spans] == [None, 1, 2] * 2
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [302, 302, 200] * 2
    assert [p for _, p, _ in seen] == ["/r1", "/r2", "/ok"] * 2


def test_an_httpx_auth_retry_is_a_resend(server: tuple[str, Seen], instrumented: None) -> None:
    base, seen = server
    with capture_spans() as exporter:
        with pt.span("root"):
            assert httpx.get(base + "/auth", auth=httpx.DigestAuth("u", "p")).status_code == 200
    spans = clients(exporter)
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [401, 200]
    assert [s["attributes"].get("http.request.resend_count") for s in spans] == [None, 1]
    assert len(seen) == 2


def test_resend_count_scopes_are_restored_by_uninstrument(server: tuple[str, Seen]) -> None:
    originals = [
        httpx.Client.__dict__["send"],
        httpx.AsyncClient.__dict__["send"],
        requests.sessions.Session.__dict__["send"],
        urllib.request.OpenerDirector.__dict__["open"],
        urllib3.poolmanager.PoolManager.__dict__["urlopen"],
    ]

    def current() -> list[Any]:
        return [
            httpx.Client.__dict__["send"],
            httpx.AsyncClient.__dict__["send"],
            requests.sessions.Session.__dict__["send"],
            urllib.request.OpenerDirector.__dict__["open"],
            urllib3.poolmanager.PoolManager.__dict__["urlopen"],
        ]

    for _ in range(2):
        instrument_httpx()
        instrument_requests()
        instrument_urllib()
        instrument_urllib3()
        instrument_httpx()  # (idempotent: wrapped once)
        assert all(a is not b for a, b in zip(current(), originals, strict=True))
        for _ in range(2):  # (idempotent)
            uninstrument_httpx()
            uninstrument_requests()
            uninstrument_urllib()
            uninstrument_urllib3()
        assert all(a is b for a, b in zip(current(), originals, strict=True))
    base, _ = server
    with capture_spans() as exporter:
        with pt.span("root"):
            assert httpx.get(base + "/r1", follow_redirects=True).status_code == 200
    assert clients(exporter) == []


def test_method_original_is_the_method_as_sent(server: tuple[str, Seen], instrumented: None) -> None:
    # http.request.method_original: the original value when it differs (semantic conventions);
    # urllib and http.client send a method's case as given.
    base, seen = server
    with capture_spans() as exporter:
        with pt.span("root"):
            for method in ("get", "post", "FOO"):
                req = urllib.request.Request(  # noqa: S310  (127.0.0.1)
                    base + "/m", method=method, data=b"x" if method != "get" else None
                )
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310  (127.0.0.1)
                    assert resp.status == 200
            with client_span("get", base + "/cs", {}):
                pass
    spans = clients(exporter)
    assert [m for m, _, _ in seen] == ["get", "post", "FOO"]
    assert [(s["name"], s["attributes"]["http.request.method"]) for s in spans] == [
        ("GET", "GET"),
        ("POST", "POST"),
        ("HTTP", "_OTHER"),
        ("GET", "GET"),
    ]
    assert [s["attributes"].get("http.request.method_original") for s in spans] == [
        "get",
        "post",
        "FOO",
        "get",
    ]


def test_a_cancelled_async_request_ends_its_span_as_an_error(
    server: tuple[str, Seen], instrumented: None
) -> None:
    # semantic conventions: a request that failed because it was cancelled sets status Error
    # and error.type; the cancellation itself reaches the caller unchanged.
    base, _ = server

    async def main() -> None:
        async with httpx.AsyncClient() as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.get(base + "/slow"), 0.2)

    with capture_spans() as exporter:
        with pt.span("root"):
            asyncio.run(main())
    [span] = clients(exporter)
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "CancelledError"
    assert "http.response.status_code" not in span["attributes"]


# -- logs ----------------------------------------------------------------------------------------
def test_log_handlers_never_raise_on_records_without_a_logger_name() -> None:
    # logging.makeLogRecord() (socket log receivers rebuild records with it) leaves ``name``
    # None unless given: the handlers raised AttributeError into the logging call.
    exporter = InMemoryExporter()
    pt.configure(service="review", exporters=[exporter])
    log = logging.getLogger("review.s18.noname")
    log.propagate = False
    handlers: list[logging.Handler] = [LogExportHandler(), LogEventHandler()]
    for handler in handlers:
        log.addHandler(handler)
    try:
        with pt.span("s") as span:
            log.handle(
                logging.makeLogRecord({"msg": "no name", "levelno": logging.ERROR, "levelname": "ERROR"})
            )
            log.handle(logging.makeLogRecord({"name": 7, "msg": "odd name", "levelno": logging.ERROR}))
        assert pt.force_flush(10)
    finally:
        for handler in handlers:
            log.removeHandler(handler)
    logs = [r for r in exporter.records if r["type"] == "log"]
    assert [(r["body"], r["logger"]) for r in logs] == [("no name", "None"), ("odd name", "7")]
    assert all(r["trace_id"] == f"{span.trace_id:032x}" for r in logs)
    [spanrec] = [s for s in exporter.spans() if s["name"] == "s"]
    assert [e["attributes"]["log.message"] for e in spanrec["events"]] == ["no name", "odd name"]


def test_structlog_events_with_non_text_keys_are_shipped() -> None:
    # Sorting the event's keys failed on mixed key types: the event was lost (internal error).
    exporter = InMemoryExporter()
    pt.configure(service="review", exporters=[exporter])
    event = {"event": "hello", 1: "one", "user_id": 42}
    with pt.span("s"):
        assert export_event(None, "warning", event) is event
    assert pt.force_flush(10)
    [log] = [r for r in exporter.records if r["type"] == "log"]
    assert log["body"] == "hello"
    assert log["severity_text"] == "WARNING"
    assert log["attributes"]["user_id"] == 42
    assert "1" not in log["attributes"]
