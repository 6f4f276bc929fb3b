"""Review of outbound HTTP instrumentation and log correlation against a real HTTP server on
127.0.0.1: redirect hops, retries, timeouts, error statuses, secrets in URLs, and the logging
filter, formatter and structlog processor in the cases users hit."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
import structlog
import urllib3

import pitchey_trace as pt
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import (
    TraceFormatter,
    add_trace_ids,
    export_logs,
    instrument_httpx,
    instrument_logging,
    instrument_requests,
    instrument_urllib3,
    stop_export_logs,
    uninstrument_httpx,
    uninstrument_logging,
    uninstrument_requests,
    uninstrument_urllib3,
)
from pitchey_trace.web._common import stamp_exception

pytestmark = pytest.mark.integration


class _Handler(BaseHTTPRequestHandler):
    """``/r1`` -> ``/r2`` -> ``/ok`` redirects, ``/503``, ``/404``, ``/slow`` (1 s)."""

    seen: list[tuple[str, str | None]]

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("traceparent")))
        path = self.path.partition("?")[0]
        if path in ("/r1", "/r2"):
            self._answer(302, {"Location": "/r2" if path == "/r1" else "/ok"})
        elif path in ("/503", "/404"):
            self._answer(int(path[1:]))
        else:
            if path == "/slow":
                time.sleep(1.0)
            self._answer(200, body=b"ok")


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def instrumented() -> Iterator[None]:
    instrument_httpx()
    instrument_httpx()  # twice: still one span per request
    instrument_requests()
    instrument_urllib3()
    try:
        yield
    finally:
        uninstrument_httpx()
        uninstrument_requests()
        uninstrument_urllib3()


def clients(exporter: Any) -> list[dict[str, Any]]:
    return [s for s in exporter.spans() if s["kind"] == "client"]


@pytest.mark.parametrize("client", ["httpx", "httpx-async", "requests", "urllib3"])
def test_each_redirect_hop_is_a_span_with_its_own_traceparent(
    server: tuple[str, list[Any]], instrumented: None, client: str
) -> None:
    base, seen = server
    with capture_spans() as exporter:
        with pt.span("root"):
            if client == "httpx":
                assert httpx.get(base + "/r1", follow_redirects=True).status_code == 200
            elif client == "httpx-async":

                async def main() -> int:
                    async with httpx.AsyncClient(follow_redirects=True) as c:
                        return (await c.get(base + "/r1")).status_code

                assert asyncio.run(main()) == 200
            elif client == "requests":
                assert requests.get(base + "/r1", timeout=10).status_code == 200
            else:
                assert urllib3.PoolManager().request("GET", base + "/r1").status == 200
    spans = clients(exporter)
    assert [s["attributes"]["url.full"] for s in spans] == [base + "/r1", base + "/r2", base + "/ok"]
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [302, 302, 200]
    assert all(s["status"] != "error" for s in spans)
    assert [p for p, _ in seen] == ["/r1", "/r2", "/ok"]
    assert [tp.split("-")[2] for _, tp in seen if tp] == [s["span_id"] for s in spans]


def test_urllib3_retries_stay_in_one_span_with_the_final_status(
    server: tuple[str, list[Any]], instrumented: None
) -> None:
    base, seen = server
    retry = urllib3.Retry(total=2, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
    with capture_spans() as exporter:
        with pt.span("root"):
            assert urllib3.PoolManager().request("GET", base + "/503", retries=retry).status == 503
    [span] = clients(exporter)
    assert span["attributes"]["http.response.status_code"] == 503
    assert span["attributes"]["error.type"] == "503"
    assert span["status"] == "error"
    assert len(seen) == 3
    assert len({tp for _, tp in seen}) == 1  # the span's traceparent each try


def test_timeouts_refused_connections_and_4xx_are_errors(
    server: tuple[str, list[Any]], instrumented: None
) -> None:
    base, _ = server
    with capture_spans() as exporter:
        with pt.span("root"):
            with pytest.raises(httpx.ReadTimeout):
                httpx.get(base + "/slow", timeout=0.2)
            with pytest.raises(requests.exceptions.ReadTimeout):
                requests.get(base + "/slow", timeout=0.2)
            with (
                pytest.raises(httpx.ConnectError),
                httpx.Client(transport=httpx.HTTPTransport(retries=1)) as c,
            ):
                c.get("http://127.0.0.1:1/")
            assert httpx.get(base + "/404").status_code == 404
    spans = clients(exporter)
    assert [s["attributes"].get("error.type") for s in spans] == [
        "ReadTimeout",
        "ReadTimeout",
        "ConnectError",
        "404",
    ]
    assert all(s["status"] == "error" for s in spans)
    assert "http.response.status_code" not in spans[0]["attributes"]
    assert spans[2]["attributes"]["server.port"] == 1
    assert spans[3]["attributes"]["server.address"] == "127.0.0.1"


def test_credentials_and_query_secrets_never_leave_in_url_full(
    server: tuple[str, list[Any]], instrumented: None
) -> None:
    base, seen = server
    url = (
        base.replace("http://", "http://ada:hunter2@") + "/ok?token=t0k3n&sig=s1g&X-Amz-Signature=amz&q=fine"
    )
    with capture_spans() as exporter:
        with pt.span("root"):
            httpx.get(url)
            requests.get(url, timeout=10)
            urllib3.PoolManager().request("GET", url)
    spans = clients(exporter)
    assert len(spans) == 3
    for span in spans:
        full = span["attributes"]["url.full"]
        assert full.startswith(base + "/ok?")
        assert full.endswith("&q=fine")
        for secret in ("ada", "hunter2", "t0k3n", "s1g", "amz"):
            assert secret not in full
    assert all("t0k3n" in path for path, _ in seen)  # (the request itself is unchanged)


# -- logging -------------------------------------------------------------------------------------
def test_dictconfig_filter_outside_spans_in_threads_and_tasks() -> None:
    out = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"ids": {"()": "pitchey_trace.web.TraceContextFilter", "missing": "-"}},
            "formatters": {"f": {"format": "%(trace_id)s %(span_id)s %(message)s"}},
            "handlers": {
                "h": {"class": "logging.StreamHandler", "stream": out, "filters": ["ids"], "formatter": "f"}
            },
            "loggers": {"review.dict": {"level": "INFO", "handlers": ["h"], "propagate": False}},
        }
    )
    log = logging.getLogger("review.dict")
    try:
        log.info("outside")
        with pt.span("s") as span:
            log.info("inside")
            thread = threading.Thread(target=log.info, args=("thread",))
            thread.start()
            thread.join()

            async def task() -> None:
                log.info("task")

            async def main() -> None:
                await asyncio.create_task(asyncio.to_thread(log.info, "to_thread"))
                await asyncio.create_task(task())

            asyncio.run(main())
        ids = f"{span.trace_id:032x} {span.span_id:016x}"
        assert out.getvalue().splitlines() == [
            "- - outside",
            f"{ids} inside",
            "- - thread",  # (a new thread does not inherit the context)
            f"{ids} to_thread",  # (asyncio.to_thread copies it)
            f"{ids} task",
        ]
    finally:
        for handler in log.handlers[:]:
            log.removeHandler(handler)
            handler.close()


@pytest.mark.parametrize("style", ["%", "{", "$"])
def test_trace_formatter_default_format_in_every_style(style: str) -> None:
    formatter = TraceFormatter(style=style)
    record = logging.LogRecord("review", logging.INFO, __file__, 1, "hello", None, None)
    assert formatter.format(record).endswith("review [trace_id= span_id=] hello")
    with pt.span("s") as span:
        record = logging.LogRecord("review", logging.INFO, __file__, 1, "hello", None, None)
        ids = f"[trace_id={span.trace_id:032x} span_id={span.span_id:016x}]"
        assert f"{ids} hello" in formatter.format(record)


def test_structlog_exception_outside_the_span_gets_the_requests_ids() -> None:
    with pt.span("GET /boom") as span:
        exc = RuntimeError("boom")
        stamp_exception(exc, span)
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out), processors=[add_trace_ids, structlog.processors.KeyValueRenderer()]
    )
    try:
        raise exc
    except RuntimeError:
        logger.exception("Exception in ASGI application")
        logger.error("failed", exc_info=True)
    logger.info("after")  # (no exception, no span: no ids)
    lines = out.getvalue().splitlines()
    assert all(f"trace_id='{span.trace_id:032x}'" in line for line in lines[:2]), lines
    assert "trace_id" not in lines[2]
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_logs_from_an_exporter_thread_and_huge_messages_are_bounded() -> None:
    class Noisy(InMemoryExporter):
        def export(self, records: Any) -> Any:
            logging.getLogger("review.noisy").warning("exporting %d", len(records))
            return super().export(records)

    exporter = Noisy()
    pt.configure(service="review", exporters=[exporter])
    export_logs("INFO")
    instrument_logging("INFO")
    log = logging.getLogger("review.big")
    try:
        with pt.span("s") as span:
            log.warning("x" * 100_000)
        for _ in range(3):
            assert pt.force_flush(10)
    finally:
        stop_export_logs()
        uninstrument_logging()
    logs = [r for r in exporter.records if r["type"] == "log"]
    assert [r["logger"] for r in logs] == ["review.big"]  # nothing from the export thread
    assert len(logs[0]["body"]) == 8192
    assert logs[0]["severity_number"] == 13
    assert logs[0]["trace_id"] == f"{span.trace_id:032x}"
    [spanrec] = [s for s in exporter.spans() if s["name"] == "s"]
    [event] = spanrec["events"]
    assert len(event["attributes"]["log.message"]) == 2048
