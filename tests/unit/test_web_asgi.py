"""ASGITracingMiddleware called directly with ASGI messages (no server): options, edge cases
of the ASGI protocol, and the guarantee that SDK errors never reach the app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Mount, Route

import pitchey_trace as pt
from pitchey_trace import _stats, sanitize
from pitchey_trace._context import CURRENT
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware, set_route, set_user
from pitchey_trace.web import _common as common
from pitchey_trace.web import asgi as asgi_module

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def http_scope(
    path: str = "/things/1", method: str = "GET", headers: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"q=1&token=abc",
        "root_path": "",
        "headers": headers if headers is not None else [(b"host", b"example.test")],
        "client": ("10.1.2.3", 5555),
        "server": ("127.0.0.1", 8000),
    }


def run(
    app: Any,
    scope: dict[str, Any],
    incoming: list[dict[str, Any]] | None = None,
    sent: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Call ``app`` once; return the messages it sent (also appended to ``sent``)."""
    sent = [] if sent is None else sent
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b" world"})


def headers_of(message: dict[str, Any]) -> dict[bytes, bytes]:
    return dict(message["headers"])


def test_server_span_attributes_and_default_header() -> None:
    with capture_spans(sanitizer=None) as exporter:  # the attributes exactly as recorded
        sent = run(
            ASGITracingMiddleware(ok_app),
            http_scope(
                headers=[(b"traceparent", TRACEPARENT), (b"user-agent", b"ua/1"), (b"content-length", b"12")]
            ),
        )
    [span] = exporter.spans()
    assert span["name"] == "GET"
    assert span["kind"] == "server"
    assert span["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span["parent_span_id"] == "00f067aa0ba902b7"
    assert span["attributes"] == {
        "http.request.method": "GET",
        "url.scheme": "https",
        "url.path": "/things/1",
        "network.protocol.version": "1.1",
        "url.query": "q=1&token=abc",
        "user_agent.original": "ua/1",
        "http.request.body.size": 12,
        "client.address": "10.1.2.3",
        "http.response.status_code": 200,
        "http.response.body.size": 11,
    }
    start = sent[0]
    assert headers_of(start)[b"x-trace-id"] == b"4bf92f3577b34da6a3ce929d0e0e4736"
    assert headers_of(start)[b"content-type"] == b"text/plain"
    assert b"traceresponse" not in headers_of(start)
    assert CURRENT.get() is None


def test_header_options() -> None:
    with capture_spans():
        custom = run(
            ASGITracingMiddleware(ok_app, trace_id_header="X-Request-Trace", traceresponse=True), http_scope()
        )
        none = run(ASGITracingMiddleware(ok_app, trace_id_header=None), http_scope())
    names = headers_of(custom[0])
    trace_id = names[b"x-request-trace"].decode()
    assert len(trace_id) == 32
    version, tid, span_id, flags = names[b"traceresponse"].decode().split("-")
    assert (version, tid, len(span_id), flags) == ("00", trace_id, 16, "01")
    assert set(headers_of(none[0])) == {b"content-type"}


def test_options_are_validated() -> None:
    with pytest.raises(TypeError):
        ASGITracingMiddleware(ok_app, excluded_paths=[""])
    with pytest.raises(TypeError):
        ASGITracingMiddleware(ok_app, trace_id_header="")
    # A str is not a list of paths: each character ("/" among them) would have been excluded.
    with pytest.raises(TypeError, match="list of paths"):
        ASGITracingMiddleware(ok_app, excluded_paths="/health")
    # Not a header name: the server would refuse every response, or send an injected header.
    for bad in ("X Trace", "X-Id\r\nSet-Cookie: a=b", "Ẋ-Id", ":authority", "x:y"):
        with pytest.raises(pt.ConfigurationError, match="not a valid HTTP header name"):
            ASGITracingMiddleware(ok_app, trace_id_header=bad)
        with pytest.raises(pt.ConfigurationError):
            WSGITracingMiddleware(lambda environ, start_response: [], trace_id_header=bad)
    assert (
        ASGITracingMiddleware(ok_app, trace_id_header="x_Trace.id~1").options.header_name_b == b"x_trace.id~1"
    )
    options = ASGITracingMiddleware(ok_app, excluded_paths=["/ping", "/internal/*"]).options
    assert options.excluded("/ping")
    assert options.excluded("/internal/metrics")
    assert not options.excluded("/ping/2")
    assert not options.excluded("/internals")
    assert not ASGITracingMiddleware(ok_app, excluded_paths=None).options.excluded("/healthz")


def test_unknown_method_is_other() -> None:
    with capture_spans() as exporter:
        run(ASGITracingMiddleware(ok_app), http_scope(method="PURGE"))
    [span] = exporter.spans()
    assert span["name"] == "HTTP"
    assert span["attributes"]["http.request.method"] == "_OTHER"
    assert span["attributes"]["http.request.method_original"] == "PURGE"


def test_exception_before_response_sends_500_and_reraises_the_same_object() -> None:
    error = LookupError("no such pitch")

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise error

    with capture_spans() as exporter:
        with pytest.raises(LookupError) as caught:
            run(ASGITracingMiddleware(failing), http_scope())
        sent_without: list[dict[str, Any]] = []
        with pytest.raises(LookupError):
            run(ASGITracingMiddleware(failing, error_response=False), http_scope(), sent=sent_without)
    assert caught.value is error
    spans = exporter.spans()
    assert [s["status"] for s in spans] == ["error", "error"]
    assert spans[0]["attributes"]["error.type"] == "LookupError"
    assert spans[0]["attributes"]["http.response.status_code"] == 500  # the 500 we sent
    assert "http.response.status_code" not in spans[1]["attributes"]
    assert getattr(error, common.EXC_IDS_ATTR) == (spans[1]["trace_id"], spans[1]["span_id"])
    assert sent_without == []
    audits = exporter.of_type("audit")
    assert [a["outcome"] for a in audits] == ["500", "error"]


def test_error_response_carries_the_trace_id() -> None:
    sent: list[dict[str, Any]] = []

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    with capture_spans() as exporter, pytest.raises(RuntimeError):
        asyncio.run(ASGITracingMiddleware(failing)(http_scope(), receive, send))
    [span] = exporter.spans()
    assert sent[0]["status"] == 500
    assert headers_of(sent[0])[b"x-trace-id"] == span["trace_id"].encode()
    assert sent[1]["body"] == b"Internal Server Error"


def test_exception_after_response_start_is_recorded_without_second_response() -> None:
    async def breaks_midway(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ConnectionResetError("upstream went away")

    sent: list[dict[str, Any]] = []
    with capture_spans() as exporter, pytest.raises(ConnectionResetError):
        run(ASGITracingMiddleware(breaks_midway), http_scope(), sent=sent)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    [span] = exporter.spans()
    assert span["status"] == "error"
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["attributes"]["http.response.body.size"] == 4


def test_cancellation_is_not_an_error() -> None:
    async def cancelled(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    with capture_spans() as exporter, pytest.raises(asyncio.CancelledError):
        run(ASGITracingMiddleware(cancelled), http_scope())
    [span] = exporter.spans()
    assert span["status"] == "unset"
    assert exporter.of_type("audit")[0]["outcome"] == "aborted"


def test_lifespan_and_unknown_scopes_pass_through() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], CURRENT.get()))

    with capture_spans() as exporter:
        asyncio.run(ASGITracingMiddleware(app)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == [("lifespan", None)]
    assert exporter.spans() == []


def test_set_route_and_set_user_inside_and_outside_a_request() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        set_route("/things/{thing_id}")
        set_user(42)
        await ok_app(scope, receive, send)

    set_route("/ignored")
    set_user("ignored")
    with capture_spans() as exporter:
        run(ASGITracingMiddleware(app), http_scope())
    [span] = exporter.spans()
    [audit] = exporter.of_type("audit")
    assert span["name"] == "GET /things/{thing_id}"
    assert span["attributes"]["http.route"] == "/things/{thing_id}"
    assert span["attributes"]["user.id"] == "42"
    assert (audit["action"], audit["target"], audit["actor"]) == (
        "GET /things/{thing_id}",
        "/things/{thing_id}",
        "42",
    )


def test_user_from_baggage_is_the_audit_actor() -> None:
    with capture_spans() as exporter:
        run(
            ASGITracingMiddleware(ok_app),
            http_scope(headers=[(b"traceparent", TRACEPARENT), (b"baggage", b"user.id=u-9")]),
        )
    assert exporter.of_type("audit")[0]["actor"] == "u-9"


def test_audit_can_be_turned_off() -> None:
    async def denied(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with capture_spans() as exporter:
        run(ASGITracingMiddleware(denied, audit=False), http_scope())
        run(ASGITracingMiddleware(denied), http_scope())
    assert len(exporter.spans()) == 2
    assert sorted(a["category"] for a in exporter.of_type("audit")) == ["request", "security"]


def test_excluded_path_suppresses_spans_below() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        with pt.span("inside_health_check"):
            await ok_app(scope, receive, send)

    with capture_spans() as exporter:
        sent = run(ASGITracingMiddleware(app), http_scope(path="/healthz"))
    assert exporter.records == []
    assert b"x-trace-id" not in headers_of(sent[0])
    assert CURRENT.get() is None


def test_websocket_rejected_before_accept_is_a_security_event() -> None:
    async def reject(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    scope = http_scope(path="/ws")
    scope["type"] = "websocket"
    scope["scheme"] = "wss"
    with capture_spans() as exporter:
        run(ASGITracingMiddleware(reject), scope, [{"type": "websocket.connect"}])
    [span] = exporter.spans()
    assert span["name"] == "WEBSOCKET"
    assert span["attributes"]["url.scheme"] == "wss"
    assert span["attributes"]["websocket.close.code"] == 1008
    assert sorted((a["category"], a["outcome"]) for a in exporter.of_type("audit")) == [
        ("request", "403"),
        ("security", "403"),
    ]


@pytest.mark.allow_internal_errors
def test_sdk_errors_never_reach_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sdk bug")

    sent: list[Any] = []
    with capture_spans():
        # the Python start, and the C accelerator's (when it is loaded)
        monkeypatch.setattr(asgi_module, "_start_span", broken)
        monkeypatch.setattr(asgi_module, "fast_begin", None)
        sent.append(run(ASGITracingMiddleware(ok_app), http_scope()))
        monkeypatch.undo()
        monkeypatch.setattr(asgi_module, "fast_begin", broken)
        sent.append(run(ASGITracingMiddleware(ok_app), http_scope()))
        monkeypatch.undo()
        # the Python finish, and the C accelerator's
        monkeypatch.setattr(asgi_module, "finish_request", broken)
        monkeypatch.setattr(asgi_module, "fast_finish", None)
        sent.append(run(ASGITracingMiddleware(ok_app), http_scope()))
        monkeypatch.undo()
        monkeypatch.setattr(asgi_module, "fast_finish", broken)
        sent.append(run(ASGITracingMiddleware(ok_app), http_scope()))
    for messages in sent:
        assert [m.get("body") for m in messages[1:]] == [b"hello", b" world"]
    assert _stats.get("internal_errors.web.asgi.start") == 2
    assert _stats.get("internal_errors.web.asgi.finish") == 2
    assert CURRENT.get() is None


def test_route_templates_include_mount_prefixes_and_are_cached() -> None:
    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("x")

    inner = Route("/orders/{order_id}", endpoint)
    app = Starlette(
        routes=[
            Mount("/api", routes=[Mount("/v2", routes=[inner])]),
            Host("admin.example.test", app=Starlette(routes=[Route("/stats", endpoint)])),
        ]
    )
    scope = {"route": inner, "router": app.router}
    assert common.route_template(scope) == "/api/v2/orders/{order_id}"
    assert common._route_templates[id(inner)] == (inner, app.router, "/api/v2/orders/{order_id}")
    assert common.route_template(scope) == "/api/v2/orders/{order_id}"  # from the cache
    # (reached from no router, or another one: its own template, cached beside)
    assert common.route_template({"route": inner}) == "/orders/{order_id}"
    assert common._route_templates[id(inner)][1] is app.router
    host_route = app.routes[1].routes[0]  # type: ignore[attr-defined]
    assert common.route_template({"route": host_route, "router": app.router}) == "/stats"
    assert common.route_template({}) is None
    assert common.route_template({"route": object()}) is None


def test_request_audit_record_matches_the_span_and_is_sanitized() -> None:
    """The audit record is built by the pipeline worker from what the middleware queued:
    same ids, action, target, duration and client as the request's span."""
    with capture_spans() as exporter:
        run(ASGITracingMiddleware(ok_app), http_scope(headers=[(b"traceparent", TRACEPARENT)]))
    [span] = exporter.spans()
    [audit] = exporter.of_type("audit")
    assert (audit["trace_id"], audit["span_id"]) == (span["trace_id"], span["span_id"])
    assert audit["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (audit["action"], audit["outcome"], audit["category"]) == (span["name"], "200", "request")
    assert audit["time_unix_nano"] == span["end_time_unix_nano"]
    attrs = audit["attributes"]
    assert attrs["duration_ms"] == round(span["duration_ms"], 3)
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["client.address"] == span["attributes"]["client.address"]


@pytest.mark.allow_internal_errors
def test_a_malformed_queued_tuple_is_dropped_and_counted_not_exported() -> None:
    with capture_spans() as exporter:
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        pipeline.emit(("not-an-audit", 1, 2))
        pipeline.emit((common.PENDING_AUDIT, "request"))  # too short
        run(ASGITracingMiddleware(ok_app), http_scope())
    assert len(exporter.of_type("audit")) == 1  # the good one still went out
    assert _stats.get("dropped.encode_error") >= 2


_HEADER_SETS: list[list[Any]] = [
    [],
    [(b"host", b"h"), (b"user-agent", b"curl/8 \xe9"), (b"content-length", b"12")],
    [(b"content-length", b"twelve"), (b"traceparent", TRACEPARENT), (b"baggage", b"user.id=u-7")],
    [(b"traceparent", b"00-zz-bad-01"), (b"tracestate", b"a=b")],
    [("traceparent", TRACEPARENT.decode())],  # a server giving str names: extract() decides
    [[b"user-agent", b"list-pair"]],  # pairs as lists
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "PATCH", "BREW", "get", ""]),
    query=st.sampled_from([b"", b"q=1&token=abc"]),
    headers=st.sampled_from(range(len(_HEADER_SETS))),
    client=st.sampled_from([("10.0.0.1", 1), None, (), ("", 0)]),
    status=st.sampled_from([200, 204, 304, 404, 401, 429, 500, 0]),
    user=st.sampled_from([None, "u-1"]),
    header_name=st.sampled_from(["X-Trace-Id", None]),
    raises=st.booleans(),
    version=st.sampled_from(["1.1", "2", "2.0", "1.0", "3", "HTTP/1.1", "9", 2, None, "absent"]),
)
def test_c_request_start_and_finish_equal_the_python_code(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    query: bytes,
    headers: int,
    client: Any,
    status: int,
    user: str | None,
    header_name: str | None,
    raises: bool,
    version: Any,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if user:
            set_user(user)
        if status:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"abc"})
        if raises:
            raise ValueError("boom")

    def one(fast: bool) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        scope = http_scope(method=method, headers=list(_HEADER_SETS[headers]))
        scope["query_string"] = query
        scope["client"] = client
        if version == "absent":
            del scope["http_version"]
        else:
            scope["http_version"] = version
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(asgi_module, "fast_begin", None)
                m.setattr(asgi_module, "fast_finish", None)
            with capture_spans() as exporter:
                sent: list[dict[str, Any]] = []
                try:
                    run(ASGITracingMiddleware(app, trace_id_header=header_name), scope, sent=sent)
                except ValueError:
                    pass
        volatile = (
            "trace_id",
            "span_id",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "duration_ms",
            "time_unix_nano",
            "record_id",
        )

        def strip(rec: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in rec.items() if k not in volatile}
            if rec["type"] == "span":  # a span's category follows its duration: timing, not logic
                out.pop("category")
            out["attributes"] = {k: v for k, v in rec["attributes"].items() if k != "duration_ms"}
            if "events" in rec:  # (times and stack traces differ between the two runs)
                out["events"] = [(e["name"], e["attributes"].get("exception.type")) for e in rec["events"]]
            if rec.get("trace_id") == "4bf92f3577b34da6a3ce929d0e0e4736":
                out["continued"] = True
            return out

        heads = [
            sorted(k for k, _ in m.get("headers", ())) for m in sent if m["type"] == "http.response.start"
        ]
        records = [strip(r) for r in exporter.records if r["type"] in ("span", "audit")]
        return records, heads, [m.get("status") for m in sent]

    assert one(fast=True) == one(fast=False)


def test_common_requests_take_the_c_path_when_it_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    python_calls: list[str] = []
    real_start, real_finish = ASGITracingMiddleware._start, asgi_module.finish_request

    def start(*args: Any) -> Any:
        python_calls.append("start")
        return real_start(*args)

    def finish(*args: Any) -> Any:
        python_calls.append("finish")
        return real_finish(*args)

    monkeypatch.setattr(ASGITracingMiddleware, "_start", start)
    monkeypatch.setattr(asgi_module, "finish_request", finish)
    with capture_spans() as exporter:
        run(ASGITracingMiddleware(ok_app), http_scope(headers=[(b"traceparent", TRACEPARENT)]))
    assert python_calls == ([] if common.fast_begin is not None else ["start", "finish"])
    [span] = exporter.spans()
    assert span["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span["attributes"]["http.response.body.size"] == len(b"hello world")
    assert len(exporter.of_type("audit")) == 1


def test_processors_and_custom_sanitizers_see_request_audits_as_records() -> None:
    seen: list[Any] = []

    def processor(rec: dict[str, Any]) -> dict[str, Any]:
        seen.append(rec)
        return rec

    class Upper(sanitize.Sanitizer):  # a subclass: the general path, not the fused one
        def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
            out = super().__call__(record)
            if out.get("type") == "audit":
                out = {**out, "outcome": "seen-" + out["outcome"]}
            return out

    with capture_spans(processors=[processor], sanitizer=Upper()) as exporter:
        run(ASGITracingMiddleware(ok_app), http_scope())
    audits = [r for r in seen if r.get("type") == "audit"]
    assert len(audits) == 1
    assert isinstance(audits[0], dict)
    assert audits[0]["outcome"] == "seen-200"
    assert exporter.of_type("audit")[0]["attributes"]["http.response.status_code"] == 200


def test_a_path_of_another_type_does_not_fail_the_request() -> None:
    # A list path raised "unhashable type" from the excluded-path check, into the caller.
    for path in ([], {}, b"/bytes", 7):
        scope = {**http_scope(), "path": path}
        messages = run(ASGITracingMiddleware(ok_app), scope)
        assert messages[0]["status"] == 200

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    got: list[str] = []
    for path in ([], b"/x"):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}
        body = WSGITracingMiddleware(wsgi_app)(environ, lambda status, *_: got.append(status))
        assert b"".join(body) == b"ok"
    assert got == ["200 OK", "200 OK"]


def test_a_status_of_another_type_still_ends_the_span() -> None:
    # ASGI says int; an app sending "201" or None made finishing fail: the span was never
    # ended (lost) and an internal error was logged.
    for status, expected in (("201", 201), (None, None), ("teapot", None)):

        async def app(scope: Any, receive: Any, send: Any, status: Any = status) -> None:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"x"})

        with capture_spans(rollups=None) as mem:
            messages = run(ASGITracingMiddleware(app), http_scope())
        assert messages[0]["status"] == status  # passed on unchanged
        (span,) = mem.spans()
        assert span["attributes"].get("http.response.status_code") == expected
        assert pt.stats().get("internal_errors", 0) == 0


@pytest.mark.parametrize(
    ("patch", "warned"),
    [
        ({"headers": 5}, True),  # not iterable
        ({"headers": [(b"host", b"h", b"extra")]}, True),  # not pairs
        ({"headers": [(b"user-agent", "text, not bytes")]}, True),
        ({"headers": [(b"traceparent", TRACEPARENT), (b"x", b"y", b"z")]}, True),
        ({"query_string": "q=1&token=abc"}, False),  # text instead of bytes: used as is
    ],
)
def test_a_scope_that_breaks_the_asgi_contract_is_traced_without_an_internal_error(
    patch: dict[str, Any], warned: bool
) -> None:
    # These counted an internal error and served the request untraced.
    before = pt.stats().get("misuse.asgi_headers", 0)
    with capture_spans(rollups=None) as mem:
        messages = run(ASGITracingMiddleware(ok_app), {**http_scope(), **patch})
    assert messages[0]["status"] == 200
    (span,) = mem.spans()
    assert span["name"] == "GET"
    assert span["parent_span_id"] is None  # the caller's headers are not trusted, even a traceparent
    assert span["attributes"]["url.query"].startswith("q=1&token=")
    assert "abc" not in span["attributes"]["url.query"]  # sanitized as usual
    assert "user_agent.original" not in span["attributes"]
    assert pt.stats().get("misuse.asgi_headers", 0) == before + warned
    assert pt.stats().get("internal_errors", 0) == 0
