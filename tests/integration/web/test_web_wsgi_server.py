"""WSGITracingMiddleware around a Flask app (``init_flask``) and a plain WSGI app, served by
werkzeug's threaded WSGI server on 127.0.0.1 and called over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, Response, stream_with_context

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import TraceContextFilter, WSGITracingMiddleware, init_flask, set_user
from tests.support.web import server_span

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
CHUNK = b"y" * 500


def flask_app(**options: Any) -> Flask:
    app = Flask("pitchey_wsgi_test")

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        set_user(user_id)
        with pt.span("load_user"):
            pass
        return f"user {user_id}"

    @app.get("/busy")
    def busy() -> tuple[str, int]:
        return "later", 503

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("flask kaboom")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:
            for i in range(3):
                if i:
                    time.sleep(0.15)
                with pt.span("produce_chunk"):
                    yield CHUNK

        return Response(stream_with_context(body()), mimetype="application/octet-stream")

    @app.get("/healthz")
    def health() -> str:
        with pt.span("health_check_work"):
            pass
        return "ok"

    @app.get("/admin")
    def admin() -> tuple[str, int]:
        return "no", 403

    return init_flask(app, **options)  # type: ignore[no-any-return]


def test_flask_continues_traceparent_with_url_rule_names(serve_wsgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_wsgi(flask_app(traceresponse=True))
        r = httpx.get(f"{url}/users/31?tab=pitches", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        span = wait_for(server_span(exporter, TRACE_ID))
        child = wait_for(lambda: exporter.spans("load_user"))[0]
        audit = wait_for(lambda: exporter.of_type("audit"))[0]
    assert r.text == "user 31"
    assert r.headers["X-Trace-Id"] == TRACE_ID
    assert r.headers["traceresponse"] == f"00-{TRACE_ID}-{span['span_id']}-01"
    assert span["name"] == "GET /users/<int:user_id>"
    assert span["parent_span_id"] == PARENT_ID
    attrs = span["attributes"]
    assert attrs["http.route"] == "/users/<int:user_id>"
    assert attrs["url.path"] == "/users/31"
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.response.body.size"] == len("user 31")
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user.id"] == "31"
    assert child["parent_span_id"] == span["span_id"]
    assert audit["action"] == "GET /users/<int:user_id>"
    assert audit["actor"] == "31"
    assert audit["trace_id"] == TRACE_ID


@pytest.mark.parametrize("traceparent", [None, "00-xyz-abc-01", f"00-{TRACE_ID}-{'0' * 16}-01"])
def test_flask_new_trace_when_absent_or_malformed(
    serve_wsgi: Any, wait_for: Any, traceparent: str | None
) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    with capture_spans() as exporter:
        url = serve_wsgi(flask_app())
        r = httpx.get(f"{url}/users/1", headers=headers)
        span = wait_for(server_span(exporter))
    assert span["parent_span_id"] is None
    assert span["trace_id"] == r.headers["x-trace-id"] != TRACE_ID


def test_flask_unmatched_path_is_named_by_method_only(serve_wsgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_wsgi(flask_app())
        r = httpx.get(f"{url}/nothing/here/42")
        span = wait_for(server_span(exporter))
    assert r.status_code == 404
    assert span["name"] == "GET"
    assert "http.route" not in span["attributes"]


def test_flask_5xx_and_exceptions(serve_wsgi: Any, wait_for: Any, logs: Any) -> None:
    app = flask_app()
    collector = logs(app.logger.name, TraceContextFilter())
    with capture_spans() as exporter:
        url = serve_wsgi(app)
        busy = httpx.get(f"{url}/busy")
        boom = httpx.get(f"{url}/boom")
        spans = wait_for(lambda: len(exporter.spans()) >= 2 and exporter.spans())
    by_name = {s["name"]: s for s in spans}
    assert busy.status_code == 503
    assert by_name["GET /busy"]["status"] == "error"
    assert by_name["GET /busy"]["attributes"]["error.type"] == "503"
    assert boom.status_code == 500
    failed = by_name["GET /boom"]
    assert failed["trace_id"] == boom.headers["x-trace-id"]
    assert failed["status"] == "error"
    assert failed["status_message"] == "RuntimeError: flask kaboom"
    assert failed["attributes"]["error.type"] == "RuntimeError"
    assert failed["attributes"]["http.response.status_code"] == 500
    assert [e["attributes"]["exception.type"] for e in failed["events"]] == ["RuntimeError"]
    [record] = [r for r in collector.records if r.exc_info]
    assert str(record.exc_info[1]) == "flask kaboom"
    assert record.trace_id == boom.headers["x-trace-id"]  # type: ignore[attr-defined]
    assert record.span_id == failed["span_id"]  # type: ignore[attr-defined]


def test_flask_streaming_is_timed_to_the_last_byte(serve_wsgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_wsgi(flask_app())
        with httpx.Client() as client, client.stream("GET", f"{url}/stream") as r:
            chunks = r.iter_raw()
            first = next(chunks)
            first_at = time.time_ns()
            rest = b"".join(chunks)
        span = wait_for(server_span(exporter))
        produced = wait_for(
            lambda: len(exporter.spans("produce_chunk")) == 3 and exporter.spans("produce_chunk")
        )
    assert len(first) + len(rest) == 3 * len(CHUNK)
    assert span["end_time_unix_nano"] - first_at >= 250_000_000
    assert span["duration_ms"] >= 300
    assert span["attributes"]["http.response.body.size"] == 3 * len(CHUNK)
    # The generator runs while the server iterates the body, still inside the request's span.
    assert {p["parent_span_id"] for p in produced} == {span["span_id"]}


def test_flask_excluded_paths_and_security_audit(serve_wsgi: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_wsgi(flask_app())
        health = httpx.get(f"{url}/healthz")
        admin = httpx.get(f"{url}/admin")
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 2 and exporter.of_type("audit"))
    assert "x-trace-id" not in health.headers
    assert admin.status_code == 403
    assert [s["name"] for s in exporter.spans()] == ["GET /admin"]
    assert sorted((a["category"], a["action"], a["outcome"]) for a in audits) == [
        ("request", "GET /admin", "403"),
        ("security", "GET /admin", "403"),
    ]


def test_plain_wsgi_app_exception_is_reraised_to_the_server(
    serve_wsgi: Any, wait_for: Any, logs: Any
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError("missing")

    collector = logs("werkzeug")
    with capture_spans() as exporter:
        url = serve_wsgi(WSGITracingMiddleware(app))
        r = httpx.get(f"{url}/x")
        span = wait_for(server_span(exporter))
        # werkzeug answers 500 and logs the error only when the exception reaches it.
        wait_for(lambda: [x for x in collector.records if "KeyError" in x.getMessage()])
    assert r.status_code == 500
    assert span["name"] == "GET"
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "KeyError"
    assert "http.response.status_code" not in span["attributes"]


def test_plain_wsgi_streaming_generator_and_close(serve_wsgi: Any, wait_for: Any) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for i in range(3):
                if i:
                    time.sleep(0.1)
                with pt.span("chunk"):
                    yield b"z" * 10

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    with capture_spans() as exporter:
        url = serve_wsgi(WSGITracingMiddleware(app))
        r = httpx.get(f"{url}/plain", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        span = wait_for(server_span(exporter, TRACE_ID))
        chunks = wait_for(lambda: len(exporter.spans("chunk")) == 3 and exporter.spans("chunk"))
    assert r.text == "z" * 30
    # the span ends at the last chunk; the server calls close() after that, on its own thread
    assert wait_for(lambda: closed == [True])
    assert span["duration_ms"] >= 200
    assert span["attributes"]["http.response.body.size"] == 30
    assert {c["parent_span_id"] for c in chunks} == {span["span_id"]}


def test_an_excluded_paths_streaming_body_is_not_traced(serve_wsgi: Any, wait_for: Any) -> None:
    # The server iterates the body after the app returned: spans opened by its generator were
    # traced, each the root of a new trace, for a health check meant to be untraced.
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            with pt.span("db.in-body"):
                pass
            yield b"ok"

        return body()

    with capture_spans() as exporter:
        url = serve_wsgi(WSGITracingMiddleware(app, excluded_paths=["/health", "/gesundheit/\u00e4"]))
        assert httpx.get(f"{url}/health").text == "ok"
        assert httpx.get(f"{url}/gesundheit/%C3%A4").text == "ok"  # a non-ASCII excluded path
        assert httpx.get(f"{url}/traced").text == "ok"
        span = wait_for(server_span(exporter))
    assert span["attributes"]["url.path"] == "/traced"
    [in_body] = exporter.spans("db.in-body")  # the traced request's only
    assert in_body["parent_span_id"] == span["span_id"]
    assert len(exporter.spans()) == 2


def test_non_ascii_paths_are_recorded_as_sent(serve_wsgi: Any, wait_for: Any) -> None:
    # PEP 3333 servers give the path's UTF-8 bytes decoded as latin-1: /caf%C3%A9 was recorded
    # as "/cafÃ©". Flask's route (matched by Flask on the decoded path) names the span as before.
    app = Flask("pitchey_wsgi_non_ascii")

    @app.get("/caf\u00e9/<int:n>")
    def cafe(n: int) -> str:
        return "ok"

    def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [environ["PATH_INFO"].encode("latin-1")]  # the app's environ: unchanged

    with capture_spans() as exporter:
        flask_url = serve_wsgi(init_flask(app))
        plain_url = serve_wsgi(WSGITracingMiddleware(plain))
        assert httpx.get(f"{flask_url}/caf%C3%A9/3").text == "ok"
        assert httpx.get(f"{plain_url}/%E2%82%AC/x").content == "/\u20ac/x".encode()
        spans = wait_for(lambda: len(exporter.spans()) == 2 and exporter.spans())
    by_name = {s["name"]: s["attributes"]["url.path"] for s in spans}
    assert by_name == {"GET /caf\u00e9/<int:n>": "/caf\u00e9/3", "GET": "/\u20ac/x"}
