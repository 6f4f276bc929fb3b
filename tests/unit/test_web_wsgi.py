"""WSGITracingMiddleware and init_flask called in-process (no server): the WSGI protocol's
corners (close, write, exc_info, errors while iterating) and SDK-error containment."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from flask import Flask

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace._context import CURRENT
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import WSGITracingMiddleware, init_flask, set_route
from pitchey_trace.web import _common as common
from pitchey_trace.web import wsgi as wsgi_module


def environ(path: str = "/pitches/5", **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": "sort=new"}
    env.update(extra)
    setup_testing_defaults(env)
    return env


class StartResponse:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers, exc_info))
        return self.written.append

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.calls[-1][1])


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


def test_span_attributes_headers_and_context_restored() -> None:
    sr = StartResponse()
    env = environ(
        HTTP_TRACEPARENT="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        HTTP_USER_AGENT="curl/8",
        CONTENT_LENGTH="3",
        REMOTE_ADDR="10.0.0.9",
    )
    with capture_spans(sanitizer=None) as exporter:
        body = b"".join(WSGITracingMiddleware(hello_app, traceresponse=True)(env, sr))
        assert CURRENT.get() is None
    [span] = exporter.spans()
    assert body == b"hello world"
    assert span["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span["parent_span_id"] == "00f067aa0ba902b7"
    assert span["attributes"] == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/pitches/5",
        "network.protocol.version": "1.0",
        "url.query": "sort=new",
        "user_agent.original": "curl/8",
        "http.request.body.size": 3,
        "client.address": "10.0.0.9",
        "http.response.status_code": 200,
        "http.response.body.size": 11,
    }
    assert sr.headers["X-Trace-Id"] == span["trace_id"]
    assert sr.headers["traceresponse"] == f"00-{span['trace_id']}-{span['span_id']}-01"


def test_close_ends_a_partly_read_body_once() -> None:
    closed: list[int] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b"b"

        def close(self) -> None:
            closed.append(1)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    with capture_spans() as exporter:
        result = WSGITracingMiddleware(app)(environ(), StartResponse())
        it = iter(result)
        assert next(it) == b"a"
        result.close()  # type: ignore[attr-defined]
        result.close()  # type: ignore[attr-defined]
    [span] = exporter.spans()
    assert closed == [1, 1]
    assert span["attributes"]["http.response.body.size"] == 1
    assert len(exporter.of_type("audit")) == 1


def test_write_callable_and_exc_info_are_passed_through() -> None:
    sr = StartResponse()
    exc_info: Any = None

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal exc_info
        write = start_response("200 OK", [])
        write(b"legacy")
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
            start_response("500 Internal Server Error", [], exc_info)
        return []

    with capture_spans() as exporter:
        list(WSGITracingMiddleware(app)(environ(), sr))
    [span] = exporter.spans()
    assert sr.written == [b"legacy"]
    assert sr.calls[1][2] is exc_info
    assert span["attributes"]["http.response.status_code"] == 500
    assert span["attributes"]["http.response.body.size"] == 6
    assert span["status"] == "error"


def test_exceptions_are_reraised_unchanged() -> None:
    error = KeyError("k")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    def failing_body(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"ok"
        raise OSError("disk")

    with capture_spans() as exporter:
        with pytest.raises(KeyError) as caught:
            WSGITracingMiddleware(app)(environ(), StartResponse())
        with pytest.raises(OSError, match="disk"):
            list(WSGITracingMiddleware(failing_body)(environ(), StartResponse()))
        assert CURRENT.get() is None
    assert caught.value is error
    first, second = exporter.spans()
    assert getattr(error, common.EXC_IDS_ATTR) == (first["trace_id"], first["span_id"])
    assert (first["status"], first["attributes"]["error.type"]) == ("error", "KeyError")
    assert (second["status"], second["attributes"]["error.type"]) == ("error", "OSError")
    assert second["attributes"]["http.response.body.size"] == 2


def test_set_route_from_a_plain_wsgi_app_and_excluded_paths() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        set_route("/pitches/{id}")
        with pt.span("work"):
            pass
        start_response("200 OK", [])
        return [b""]

    with capture_spans() as exporter:
        mw = WSGITracingMiddleware(app, excluded_paths=["/status"])
        list(mw(environ(), StartResponse()))
        sr = StartResponse()
        list(mw(environ("/status"), sr))
    assert [s["name"] for s in exporter.spans()] == ["work", "GET /pitches/{id}"]
    assert "X-Trace-Id" not in sr.headers


def test_an_excluded_paths_streamed_body_is_not_traced() -> None:
    # The body is iterated (and closed) after the app returned: spans its generator opened were
    # traced, each the root of a new trace, for a path meant to be untraced.
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            with pt.span("db.in-body"):
                pass
            yield b"ok"

        def close(self) -> None:
            with pt.span("db.in-close"):
                pass
            closed.append(CURRENT.get() is not None)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        with pt.span("db.in-handler"):
            pass
        start_response("200 OK", [])
        return Body()

    with capture_spans() as exporter:
        mw = WSGITracingMiddleware(app)
        result = mw(environ("/health"), StartResponse())
        assert CURRENT.get() is None  # (restored between the server's calls)
        assert list(result) == [b"ok"]
        assert CURRENT.get() is None
        result.close()  # type: ignore[attr-defined]
        assert CURRENT.get() is None
        assert closed == [True]  # close() ran, tracing suppressed
        with pt.span("after"):
            pass
    assert [s["name"] for s in exporter.spans()] == ["after"]


def test_an_excluded_paths_list_or_file_wrapper_is_passed_on_as_it_is() -> None:
    # Nothing runs while a list or a server's file wrapper is sent: returned unchanged, the
    # server still sees its length (Content-Length) or its file (sendfile).
    class FileWrapper:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self) -> Iterator[bytes]:
            yield self.data

    body = [b"o", b"k"]
    wrapped = FileWrapper(b"file")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body if environ["PATH_INFO"] == "/health" else environ["wsgi.file_wrapper"](b"file")

    mw = WSGITracingMiddleware(app, excluded_paths=["/health", "/static/*"])
    assert mw(environ("/health"), StartResponse()) is body
    result = mw(environ("/static/x", **{"wsgi.file_wrapper": FileWrapper}), StartResponse())  # type: ignore[arg-type]
    assert isinstance(result, FileWrapper)
    assert list(result) == list(wrapped)


@pytest.mark.parametrize(
    ("path_info", "expected"),
    [
        ("/caf\u00c3\u00a9", "/caf\u00e9"),  # PEP 3333: the UTF-8 bytes of /café, as latin-1
        ("/\u00e2\u0082\u00ac/x", "/\u20ac/x"),  # "/€/x"
        ("/caf\u00e9", "/caf\u00e9"),  # not UTF-8 (a latin-1 byte): kept as the server gave it
        ("/\u20ac", "/\u20ac"),  # not latin-1 (a server that decoded already): kept
        ("/plain", "/plain"),
    ],
)
def test_non_ascii_paths_are_decoded_as_utf8(path_info: str, expected: str) -> None:
    with capture_spans() as exporter:
        list(WSGITracingMiddleware(hello_app)(environ(path_info), StartResponse()))
    [span] = exporter.spans()
    assert span["attributes"]["url.path"] == expected
    assert span["name"] == "GET"


def test_non_ascii_excluded_paths_match() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    mw = WSGITracingMiddleware(app, excluded_paths=["/gesundheit/\u00e4", "/\u00e4pfel/*"])
    with capture_spans() as exporter:
        for path in ("/gesundheit/\u00c3\u00a4", "/\u00c3\u00a4pfel/1", "/traced"):
            list(mw(environ(path), StartResponse()))
    assert [s["attributes"]["url.path"] for s in exporter.spans()] == ["/traced"]
    # the app's environ: as the server gave it
    assert seen == ["/gesundheit/\u00c3\u00a4", "/\u00c3\u00a4pfel/1", "/traced"]


@pytest.mark.allow_internal_errors
def test_sdk_errors_never_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sdk bug")

    with capture_spans():
        monkeypatch.setattr(wsgi_module, "_start_span", broken)
        first = b"".join(WSGITracingMiddleware(hello_app)(environ(), StartResponse()))
        monkeypatch.undo()
        # the Python finish, and the C accelerator's
        monkeypatch.setattr(wsgi_module, "finish_request", broken)
        monkeypatch.setattr(wsgi_module, "fast_finish", None)
        second = b"".join(WSGITracingMiddleware(hello_app)(environ(), StartResponse()))
        monkeypatch.undo()
        monkeypatch.setattr(wsgi_module, "fast_finish", broken)
        third = b"".join(WSGITracingMiddleware(hello_app)(environ(), StartResponse()))
    assert first == second == third == b"hello world"
    assert _stats.get("internal_errors.web.wsgi.start") == 1
    assert _stats.get("internal_errors.web.wsgi.finish") == 2
    assert CURRENT.get() is None


def test_init_flask_is_idempotent_and_records_handled_exceptions() -> None:
    app = Flask("unit_flask")

    @app.get("/pitches/<slug>")
    def pitch(slug: str) -> str:
        raise ValueError(slug)

    init_flask(app, trace_id_header="X-Trace")
    wrapped = app.wsgi_app
    init_flask(app)
    assert app.wsgi_app is wrapped
    with capture_spans() as exporter:
        response = app.test_client().get("/pitches/abc")
        response.close()  # the span ends when the server closes the body
    [span] = exporter.spans()
    assert response.status_code == 500
    assert response.headers["X-Trace"] == span["trace_id"]
    assert span["name"] == "GET /pitches/<slug>"
    assert span["status_message"] == "ValueError: abc"
    assert [e["name"] for e in span["events"]] == ["exception"]


def test_django_snippet_middleware_names_spans_and_sets_the_actor() -> None:
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[2] / "examples" / "django_settings_snippet.py"
    spec = importlib.util.spec_from_file_location("django_settings_snippet", path)
    assert spec is not None
    assert spec.loader is not None
    snippet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snippet)

    def django_like_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # What Django's handler does with a middleware: resolve, process_view, then call it.
        request = SimpleNamespace(
            resolver_match=SimpleNamespace(route="pitches/<int:pitch_id>/"),
            user=SimpleNamespace(is_authenticated=True, pk=314),
        )
        mw = snippet.PitcheyRouteMiddleware(lambda req: "response")
        mw.process_view(request, None, (), {})
        assert mw(request) == "response"
        snippet.on_login_failed(None, {"password": "never recorded"})
        start_response("200 OK", [])
        return [b"ok"]

    with capture_spans() as exporter:
        list(WSGITracingMiddleware(django_like_app)(environ(), StartResponse()))
    [span] = exporter.spans()
    assert span["name"] == "GET /pitches/<int:pitch_id>/"
    audits = {a["category"]: a for a in exporter.of_type("audit")}
    assert audits["request"]["actor"] == "314"
    assert audits["security"]["outcome"] == "bad_credentials"
    assert "never recorded" not in str(exporter.records)


def test_odd_status_or_headers_from_the_app_are_passed_on_without_internal_errors() -> None:
    cases: list[tuple[Any, Any, int | None]] = [
        ("abc", [], None),  # unreadable status: no status attribute
        ("201 Created", (("X-A", "b"),), 201),  # a tuple of headers gets ours appended too
        ("200 OK", None, 200),  # the app's mistake, left for the server to refuse
    ]
    seen: list[tuple[Any, Any]] = []

    def server_start_response(status: Any, headers: Any, *_: Any) -> Any:
        seen.append((status, headers))
        return lambda data: None

    for status, headers, expected in cases:

        def app(
            env: dict[str, Any], start_response: Any, status: Any = status, headers: Any = headers
        ) -> list[bytes]:
            start_response(status, headers)
            return [b"ok"]

        with capture_spans(rollups=None) as mem:
            body = WSGITracingMiddleware(app)(environ(), server_start_response)
            assert b"".join(body) == b"ok"
        sent_status, sent_headers = seen[-1]
        assert sent_status == status
        if isinstance(headers, tuple):
            assert ("X-A", "b") in sent_headers
            assert any(k == "X-Trace-Id" for k, _ in sent_headers)
        (span,) = mem.spans()
        assert span["attributes"].get("http.response.status_code") == expected
        assert pt.stats().get("internal_errors", 0) == 0


@pytest.mark.parametrize("status", ["200 OK", "204 No Content", "302 Found", "401 Unauthorized", "503 Busy"])
@pytest.mark.parametrize("route", [None, "/pitches/<int:pitch_id>"])
@pytest.mark.parametrize("user", [None, "u-4"])
def test_accelerated_finish_exports_what_the_python_finish_does(
    monkeypatch: pytest.MonkeyPatch, status: str, route: str | None, user: str | None
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if route:
            set_route(route)
        if user:
            pt.web.set_user(user)
        start_response(status, [("Content-Type", "text/plain")])
        return [b"abc", b"de"]

    def one(fast: bool) -> list[dict[str, Any]]:
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(wsgi_module, "fast_finish", None)
            with capture_spans() as exporter:
                b"".join(WSGITracingMiddleware(app)(environ(REMOTE_ADDR="10.1.2.3"), StartResponse()))
        volatile = (
            "trace_id", "span_id", "start_time_unix_nano", "end_time_unix_nano", "time_unix_nano", "record_id"
        )  # fmt: skip
        out = []
        for rec in exporter.records:
            if rec["type"] == "rollup":
                continue
            kept = {
                k: v for k, v in rec.items() if k not in volatile and k not in ("duration_ms", "category")
            }
            kept["attributes"] = {k: v for k, v in rec["attributes"].items() if k != "duration_ms"}
            out.append(kept)
        return sorted(out, key=repr)

    fast, slow = one(True), one(False)
    assert fast == slow
    assert any(r["type"] == "span" for r in fast)
