"""OpenTelemetry's own instrumentation packages (requests, httpx, psycopg, psycopg2, flask)
through ``pitchey_trace.otel``: against real servers on 127.0.0.1 (HTTP, PostgreSQL, werkzeug),
each compared with what the OpenTelemetry SDK records for the same calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import flask
import httpx
import psycopg
import psycopg2
import pytest
import requests
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.serving import make_server

import pitchey_trace as pt
from pitchey_trace.otel import install
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import instrument_requests, uninstrument_requests
from tests.support.httpserver import HandlerServer, QuietHandler
from tests.support.otel_global import _otel_global_provider_restored  # noqa: F401 (autouse)
from tests.support.pgserver import postgres_server, scratch_schema

pytestmark = pytest.mark.integration

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Recorder(QuietHandler):
    traceparents: list[str | None] = []

    def do_GET(self) -> None:
        self.traceparents.append(self.headers.get("traceparent"))
        self.send_response(500 if "fail" in self.path else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def http_url() -> Iterator[str]:
    _Recorder.traceparents = []
    server = HandlerServer(_Recorder)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    with postgres_server() as server, scratch_schema(server.dsn) as dsn:
        yield dsn


def _sdk() -> tuple[SdkTracerProvider, InMemorySpanExporter]:
    provider = SdkTracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _sdk_view(memory: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "kind": s.kind.name.lower(),
            "status": s.status.status_code.name.lower(),
            "status_message": s.status.description,
            "attributes": dict(s.attributes or {}),
            "events": [e.name for e in s.events],
            "exception.type": [e.attributes["exception.type"] for e in s.events if e.name == "exception"],
            "scope": s.instrumentation_scope.name if s.instrumentation_scope else None,
        }
        for s in memory.get_finished_spans()
    ]


def _pt_view(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": r["name"],
            "kind": r["kind"],
            "status": r["status"],
            "status_message": r["status_message"],
            "attributes": {k: v for k, v in r["attributes"].items() if not k.startswith("otel.scope.")},
            "events": [e["name"] for e in r["events"]],
            "exception.type": [
                e["attributes"]["exception.type"] for e in r["events"] if e["name"] == "exception"
            ],
            "scope": r["attributes"].get("otel.scope.name"),
        }
        for r in records
    ]


def _both(
    instrument: Callable[[Any], None], uninstrument: Callable[[], None], work: Callable[[], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``work`` run once under the OpenTelemetry SDK, once under pitchey-trace: both views and
    pitchey's records."""
    provider, memory = _sdk()
    instrument(provider)
    try:
        work()
    finally:
        uninstrument()
    with capture_spans() as mem:
        instrument(install())
        try:
            work()
        finally:
            uninstrument()
        pt.force_flush()
        records = mem.spans()
    return _sdk_view(memory), _pt_view(records), records


def _http_work(get: Callable[..., Any], url: str) -> Callable[[], None]:
    def work() -> None:
        get(url + "/ok?x=1")
        get(url + "/fail")
        with pytest.raises((requests.ConnectionError, httpx.ConnectError)):
            get("http://127.0.0.1:1/refused", timeout=5)

    return work


@pytest.mark.parametrize(
    ("instrumentor", "get"),
    [(RequestsInstrumentor, requests.get), (HTTPXClientInstrumentor, httpx.get)],
    ids=["requests", "httpx"],
)
def test_http_client_spans_match_the_sdk(instrumentor: Any, get: Callable[..., Any], http_url: str) -> None:
    sdk, ours, records = _both(
        lambda tp: instrumentor().instrument(tracer_provider=tp),
        lambda: instrumentor().uninstrument(),
        _http_work(get, http_url),
    )
    assert len(sdk) == len(ours) == 3
    for theirs, mine in zip(sdk, ours, strict=True):
        # the URL's port differs between the runs only for the refused call: none here
        assert mine == theirs
    assert [r["attributes"]["http.status_code"] for r in records[:2]] == [200, 500]  # ints stay ints
    assert records[2]["status_message"].startswith(("ConnectionError:", "ConnectError:"))
    [event] = records[2]["events"]
    assert event["attributes"]["exception.stacktrace"].startswith("Traceback")
    # the traceparent each instrumented request carried is the exported client span's
    sent = [str(value).split("-")[1:3] for value in _Recorder.traceparents[-2:]]
    assert sent == [[r["trace_id"], r["span_id"]] for r in records[:2]]
    assert all(r["start_time_unix_nano"] <= r["end_time_unix_nano"] for r in records)
    assert not [k for k in pt.stats() if k.startswith("misuse.otel.duplicate")]  # (one on only)


def _db_work(connect: Callable[[], Any]) -> Callable[[], None]:
    def work() -> None:
        conn = connect()
        try:
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("select %s::int", (1,))
            with pytest.raises(Exception, match="division by zero"):
                cur.execute("select 1/0")
        finally:
            conn.close()

    return work


@pytest.mark.parametrize(
    ("instrumentor", "driver"),
    [(PsycopgInstrumentor, psycopg), (Psycopg2Instrumentor, psycopg2)],
    ids=["psycopg", "psycopg2"],
)
def test_db_client_spans_match_the_sdk(instrumentor: Any, driver: Any, pg_dsn: str) -> None:
    sdk, ours, records = _both(
        lambda tp: instrumentor().instrument(tracer_provider=tp, skip_dep_check=True),
        lambda: instrumentor().uninstrument(),
        _db_work(lambda: driver.connect(pg_dsn)),
    )
    assert len(sdk) == len(ours) == 2
    for theirs, mine in zip(sdk, ours, strict=True):
        # (the sanitizer strips SQL literals from db.statement: the one expected difference)
        theirs["attributes"].pop("db.statement")
        assert mine["attributes"].pop("db.statement") in ("select %s::int", "select ?/?")
        assert mine == theirs
    assert records[1]["status"] == "error"
    assert isinstance(records[0]["attributes"]["net.peer.port"], int)


def test_flask_server_span_continues_the_caller_and_parents_pitchey_spans() -> None:
    app = flask.Flask("session20")

    @app.get("/pitches/<int:pitch_id>")
    def pitch(pitch_id: int) -> dict[str, int]:
        with pt.span("load_pitch"):
            return {"id": pitch_id}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    with capture_spans() as mem:
        FlaskInstrumentor().instrument_app(app, tracer_provider=install())
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_port}"
            assert httpx.get(url + "/pitches/7", headers={"traceparent": CALLER}).status_code == 200
            assert httpx.get(url + "/boom").status_code == 500
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
            FlaskInstrumentor().uninstrument_app(app)
        pt.force_flush()
        spans = mem.spans()
    server_spans = [s for s in spans if s["kind"] == "server"]
    load = next(s for s in spans if s["name"] == "load_pitch")
    first, failed = server_spans
    assert first["name"] == "GET /pitches/<int:pitch_id>"
    assert (first["trace_id"], first["parent_span_id"]) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert (load["trace_id"], load["parent_span_id"]) == (first["trace_id"], first["span_id"])
    assert first["attributes"]["http.status_code"] == 200
    assert failed["status"] == "error"
    assert failed["attributes"]["http.status_code"] == 500


def test_suppress_instrumentation_silences_pitchey_instrumentation_too(http_url: str) -> None:
    """OpenTelemetry's exporters and instrumentations call suppress_instrumentation() around
    their own requests: pitchey's instrumentation of the same library must stay silent there
    (no span, no traceparent), as it does inside pt.suppress_tracing()."""
    install()
    with capture_spans() as mem:
        instrument_requests()
        try:
            with suppress_instrumentation():
                requests.get(http_url + "/quiet")
            requests.get(http_url + "/loud")
        finally:
            uninstrument_requests()
        pt.force_flush()
        spans = mem.spans()
    assert [s["attributes"]["url.full"].rsplit("/", 1)[1] for s in spans] == ["loud"]
    assert _Recorder.traceparents[0] is None
    assert str(_Recorder.traceparents[1]).split("-")[1:3] == [spans[0]["trace_id"], spans[0]["span_id"]]


def test_both_instrumentations_on_nest_two_client_spans_and_say_so(http_url: str) -> None:
    """Documented behaviour: OpenTelemetry's requests instrumentation and pitchey's own both on
    give two client spans per request, pitchey's inside OpenTelemetry's (one trace; the
    traceparent sent is the inner span's), and a warning says so (counted as misuse)."""
    tp = install()
    with capture_spans() as mem:
        instrument_requests()
        RequestsInstrumentor().instrument(tracer_provider=tp)
        try:
            requests.get(http_url + "/twice")
            requests.get(http_url + "/twice")
        finally:
            RequestsInstrumentor().uninstrument()
            uninstrument_requests()
        pt.force_flush()
        spans = mem.spans()[:2]
    inner, outer = spans
    assert pt.stats()["misuse.otel.duplicate_instrumentation.requests"] == 2
    assert outer["attributes"]["otel.scope.name"] == "opentelemetry.instrumentation.requests"
    assert inner["parent_span_id"] == outer["span_id"]
    assert str(_Recorder.traceparents[0]).split("-")[1:3] == [inner["trace_id"], inner["span_id"]]
