"""aiohttp: ``init_aiohttp`` on a real aiohttp server on 127.0.0.1, called over HTTP, and
``instrument_aiohttp_client`` sessions calling real servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, WSMsgType, web

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import (
    TraceContextFilter,
    aiohttp_trace_config,
    init_aiohttp,
    instrument_aiohttp_client,
    set_user,
    uninstrument_aiohttp_client,
)
from tests.support.web import server_span

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
CHUNK = b"z" * 400


def build_app(**options: Any) -> web.Application:
    app = web.Application()
    routes = web.RouteTableDef()

    @routes.get("/pitches/{pitch_id}")
    async def pitch(request: web.Request) -> web.Response:
        set_user(request.headers.get("X-User", "anonymous"))
        with pt.span("load_pitch"):
            await asyncio.sleep(0)
        return web.Response(text=f"pitch {request.match_info['pitch_id']}")

    @routes.get("/busy")
    async def busy(request: web.Request) -> web.Response:
        return web.Response(text="later", status=503)

    @routes.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("aiohttp kaboom")

    @routes.get("/admin")
    async def admin(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="no")

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(3):
            if i:
                await asyncio.sleep(0.15)
            with pt.span("produce_chunk"):
                await response.write(CHUNK)
        await response.write_eof()
        return response

    @routes.get("/healthz")
    async def health(request: web.Request) -> web.Response:
        with pt.span("health_check_work"):
            pass
        return web.Response(text="ok")

    @routes.get("/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                with pt.span("ws_message"):
                    await socket.send_str(message.data.upper())
        return socket

    app.add_routes(routes)
    sub = web.Application()

    async def item(request: web.Request) -> web.Response:
        return web.Response(text="item")

    sub.router.add_get("/items/{item_id}", item)
    app.add_subapp("/shop", sub)
    return init_aiohttp(app, **options)  # type: ignore[no-any-return]


def test_continues_traceparent_with_route_templates(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app(traceresponse=True))
        r = httpx.get(
            f"{url}/pitches/77?tab=team",
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-User": "u-9", "User-Agent": "t/1"},
        )
        span = wait_for(server_span(exporter, TRACE_ID))
        child = wait_for(lambda: exporter.spans("load_pitch"))[0]
        audit = wait_for(lambda: exporter.of_type("audit"))[0]
    assert r.text == "pitch 77"
    assert r.headers["X-Trace-Id"] == TRACE_ID
    assert r.headers["traceresponse"] == f"00-{TRACE_ID}-{span['span_id']}-01"
    assert span["name"] == "GET /pitches/{pitch_id}"
    assert span["parent_span_id"] == PARENT_ID
    attrs = span["attributes"]
    assert attrs["http.route"] == "/pitches/{pitch_id}"
    assert attrs["url.path"] == "/pitches/77"
    assert attrs["url.query"] == "tab=team"
    assert attrs["url.scheme"] == "http"
    assert attrs["network.protocol.version"] == "1.1"
    assert attrs["user_agent.original"] == "t/1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.response.body.size"] == len("pitch 77")
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user.id"] == "u-9"
    assert child["parent_span_id"] == span["span_id"]
    assert (audit["action"], audit["actor"], audit["outcome"]) == ("GET /pitches/{pitch_id}", "u-9", "200")
    assert audit["trace_id"] == TRACE_ID


@pytest.mark.parametrize("traceparent", [None, "00-xyz-abc-01", f"00-{TRACE_ID}-{'0' * 16}-01"])
def test_new_trace_when_absent_or_malformed(
    serve_aiohttp: Any, wait_for: Any, traceparent: str | None
) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        r = httpx.get(f"{url}/pitches/1", headers=headers)
        span = wait_for(server_span(exporter))
    assert span["parent_span_id"] is None
    assert span["trace_id"] == r.headers["x-trace-id"] != TRACE_ID


def test_unsampled_caller_is_honoured(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        r = httpx.get(f"{url}/pitches/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
        httpx.get(f"{url}/pitches/2")
        wait_for(server_span(exporter))
    assert r.status_code == 200
    assert r.headers["x-trace-id"] == TRACE_ID
    assert [s["attributes"]["url.path"] for s in exporter.spans() if s["kind"] == "server"] == ["/pitches/2"]


def test_sub_app_prefix_and_unmatched_path(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        item = httpx.get(f"{url}/shop/items/5")
        missing = httpx.get(f"{url}/nothing/here/42")
        spans = wait_for(lambda: len(exporter.spans()) >= 2 and exporter.spans())
    by_path = {s["attributes"]["url.path"]: s for s in spans}
    assert item.text == "item"
    assert by_path["/shop/items/5"]["name"] == "GET /shop/items/{item_id}"
    assert missing.status_code == 404
    assert missing.headers["x-trace-id"] == by_path["/nothing/here/42"]["trace_id"]
    assert by_path["/nothing/here/42"]["name"] == "GET"
    assert by_path["/nothing/here/42"]["status"] == "unset"
    assert "http.route" not in by_path["/nothing/here/42"]["attributes"]


def test_5xx_and_exceptions(serve_aiohttp: Any, wait_for: Any, logs: Any) -> None:
    collector = logs("aiohttp.server", TraceContextFilter())
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        busy = httpx.get(f"{url}/busy")
        boom = httpx.get(f"{url}/boom")
        spans = wait_for(lambda: len(exporter.spans()) >= 2 and exporter.spans())
        wait_for(lambda: [r for r in collector.records if r.exc_info])
    by_name = {s["name"]: s for s in spans}
    assert busy.status_code == 503
    assert by_name["GET /busy"]["status"] == "error"
    assert by_name["GET /busy"]["attributes"]["error.type"] == "503"
    assert boom.status_code == 500
    failed = by_name["GET /boom"]
    assert failed["trace_id"] == boom.headers["x-trace-id"]
    assert failed["status"] == "error"
    assert failed["status_message"] == "RuntimeError: aiohttp kaboom"
    assert failed["attributes"]["error.type"] == "RuntimeError"
    assert failed["attributes"]["http.response.status_code"] == 500
    assert [e["attributes"]["exception.type"] for e in failed["events"]] == ["RuntimeError"]
    [record] = [r for r in collector.records if r.exc_info]
    assert str(record.exc_info[1]) == "aiohttp kaboom"
    assert record.trace_id == boom.headers["x-trace-id"]  # type: ignore[attr-defined]
    assert record.span_id == failed["span_id"]  # type: ignore[attr-defined]


def test_http_exceptions_are_responses_and_security_events(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        admin = httpx.get(f"{url}/admin")
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 2 and exporter.of_type("audit"))
        span = wait_for(server_span(exporter))
    assert admin.status_code == 403
    assert admin.headers["x-trace-id"] == span["trace_id"]
    assert span["status"] == "unset"
    assert span["attributes"]["http.response.status_code"] == 403
    assert sorted((a["category"], a["action"], a["outcome"]) for a in audits) == [
        ("request", "GET /admin", "403"),
        ("security", "GET /admin", "403"),
    ]


def test_streaming_is_timed_to_the_last_byte(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        with httpx.Client() as client, client.stream("GET", f"{url}/stream") as r:
            chunks = r.iter_raw()
            first = next(chunks)
            first_at = time.time_ns()
            rest = b"".join(chunks)
            header = r.headers["x-trace-id"]
        span = wait_for(server_span(exporter))
        produced = wait_for(
            lambda: len(exporter.spans("produce_chunk")) == 3 and exporter.spans("produce_chunk")
        )
    assert len(first) + len(rest) == 3 * len(CHUNK)
    assert header == span["trace_id"]  # added while the stream was prepared
    assert span["end_time_unix_nano"] - first_at >= 250_000_000
    assert span["duration_ms"] >= 300
    assert span["attributes"]["http.response.body.size"] == 3 * len(CHUNK)  # the body alone
    assert {p["parent_span_id"] for p in produced} == {span["span_id"]}


def test_excluded_paths_are_untraced(serve_aiohttp: Any, wait_for: Any) -> None:
    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        health = httpx.get(f"{url}/healthz")
        httpx.get(f"{url}/pitches/3")
        wait_for(server_span(exporter))
    assert health.text == "ok"
    assert "x-trace-id" not in health.headers
    assert [s["name"] for s in exporter.spans()] == ["load_pitch", "GET /pitches/{pitch_id}"]


def test_websocket_connection_is_one_span(serve_aiohttp: Any, wait_for: Any) -> None:
    async def talk(url: str) -> list[str]:
        async with ClientSession() as session, session.ws_connect(f"{url}/ws") as socket:
            got = []
            for word in ("hello", "there"):
                await socket.send_str(word)
                got.append((await socket.receive()).data)
            return got

    with capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        replies = asyncio.run(talk(url))
        span = wait_for(server_span(exporter))
        messages = wait_for(lambda: len(exporter.spans("ws_message")) == 2 and exporter.spans("ws_message"))
    assert replies == ["HELLO", "THERE"]
    assert span["name"] == "WEBSOCKET /ws"
    assert span["attributes"]["http.response.status_code"] == 101
    assert {m["parent_span_id"] for m in messages} == {span["span_id"]}


def test_internal_failure_leaves_the_request_alone(
    serve_aiohttp: Any, wait_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pitchey_trace.web import aio

    def broken(*args: Any) -> Any:
        raise RuntimeError("tracing bug")

    monkeypatch.setattr(aio, "_begin", broken)
    with swallowed_errors() as seen, capture_spans() as exporter:
        url = serve_aiohttp(build_app())
        r = httpx.get(f"{url}/pitches/8")
        pt.force_flush(5.0)
    assert r.text == "pitch 8"
    assert "x-trace-id" not in r.headers
    assert [kind for kind, _ in seen] == ["web.aiohttp.start"]
    assert [s["name"] for s in exporter.spans()] == ["load_pitch"]  # a root span of its own


def test_init_is_idempotent() -> None:
    app = build_app()
    assert init_aiohttp(app) is app
    assert len(app.middlewares) == 1
    assert len(app.on_response_prepare) == 1


def test_without_correlation_headers_and_app_header_wins(serve_aiohttp: Any, wait_for: Any) -> None:
    async def own(request: web.Request) -> web.Response:
        return web.Response(text="own", headers={"X-Trace-Id": "the-app-s"})

    plain = build_app(trace_id_header=None)
    assert len(plain.on_response_prepare) == 0  # nothing to add: no signal handler
    app = build_app()
    app.router.add_get("/own", own)
    with capture_spans() as exporter:
        bare = httpx.get(f"{serve_aiohttp(plain)}/pitches/4")
        mine = httpx.get(f"{serve_aiohttp(app)}/own")
        spans = wait_for(lambda: len(exporter.spans()) >= 3 and exporter.spans())
    assert bare.text == "pitch 4"
    assert "x-trace-id" not in bare.headers
    assert mine.headers.get_list("x-trace-id") == ["the-app-s"]
    assert {s["name"] for s in spans} == {"load_pitch", "GET /pitches/{pitch_id}", "GET /own"}


# -- client --------------------------------------------------------------------------------------
def downstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"traceparent": request.headers.get("traceparent")})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/moved", moved)
    app.router.add_get("/missing", missing)
    return app


def parent_of(traceparent: str) -> tuple[str, str, bool]:
    """Trace id, parent span id and sampled flag of a ``traceparent`` (a new trace of ours
    also sets the W3C random flag, 0x02)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


@pytest.fixture
def client_instrumented() -> Any:
    instrument_aiohttp_client()
    instrument_aiohttp_client()  # idempotent
    yield
    uninstrument_aiohttp_client()


def test_client_spans_propagate_from_a_traced_handler(
    serve_aiohttp: Any, wait_for: Any, client_instrumented: Any
) -> None:
    downstream = serve_aiohttp(downstream_app())

    async def relay(request: web.Request) -> web.Response:
        async with ClientSession() as session:
            async with session.get(f"{downstream}/echo") as r:
                seen = (await r.json())["traceparent"]
            async with session.get(f"{downstream}/moved") as r:
                redirected = (await r.json())["traceparent"]
            async with session.get(f"{downstream}/missing") as r:
                missing = r.status
        return web.json_response({"seen": seen, "redirected": redirected, "missing": missing})

    app = web.Application()
    app.router.add_get("/relay", relay)
    with capture_spans() as exporter:
        url = serve_aiohttp(init_aiohttp(app))
        body = httpx.get(f"{url}/relay").json()
        server = wait_for(server_span(exporter))
        clients = wait_for(
            lambda: (
                len([s for s in exporter.spans() if s["kind"] == "client"]) == 3
                and [s for s in exporter.spans() if s["kind"] == "client"]
            )
        )
    echo, moved, missing = sorted(clients, key=lambda s: s["start_time_unix_nano"])
    assert {c["parent_span_id"] for c in clients} == {server["span_id"]}
    assert {c["trace_id"] for c in clients} == {server["trace_id"]}
    assert parent_of(body["seen"]) == (server["trace_id"], echo["span_id"], True)
    assert parent_of(body["redirected"]) == (server["trace_id"], moved["span_id"], True)
    assert echo["name"] == "GET"
    assert echo["attributes"]["url.full"] == f"{downstream}/echo"
    assert echo["attributes"]["server.address"] == "127.0.0.1"
    assert echo["attributes"]["http.response.status_code"] == 200
    assert moved["attributes"]["http.response.status_code"] == 200
    assert [e["name"] for e in moved["events"]] == ["http.redirect"]
    assert missing["status"] == "error"
    assert missing["attributes"]["error.type"] == "404"


def test_client_connection_error_and_suppression(client_instrumented: Any) -> None:
    async def calls() -> None:
        async with ClientSession() as session:
            with pytest.raises(OSError):
                # (port 9 on 127.0.0.1: nothing listens, the connection is refused)
                await session.get("http://user:secret@127.0.0.1:9/x")
            with pt.suppress_tracing():
                with pytest.raises(OSError):
                    await session.get("http://127.0.0.1:9/y")

    with capture_spans() as exporter:
        with pt.span("job"):
            asyncio.run(calls())
        pt.force_flush(5.0)
    [failed] = [s for s in exporter.spans() if s["kind"] == "client"]
    assert failed["status"] == "error"
    assert failed["attributes"]["url.full"] == "http://127.0.0.1:9/x"
    assert "secret" not in str(failed)
    assert failed["attributes"]["error.type"]


def test_explicit_trace_config_and_uninstrument(serve_aiohttp: Any) -> None:
    downstream = serve_aiohttp(downstream_app())

    async def call(**kwargs: Any) -> str | None:
        async with ClientSession(**kwargs) as session, session.get(f"{downstream}/echo") as r:
            return (await r.json())["traceparent"]  # type: ignore[no-any-return]

    with capture_spans() as exporter:
        with pt.span("job"):
            plain = asyncio.run(call())
            explicit = asyncio.run(call(trace_configs=[aiohttp_trace_config()]))
        pt.force_flush(5.0)
    assert plain is None  # not instrumented: nothing injected
    [client] = [s for s in exporter.spans() if s["kind"] == "client"]
    assert explicit is not None
    assert parent_of(explicit) == (client["trace_id"], client["span_id"], True)


def test_a_traced_sub_application_inside_a_traced_one_makes_one_span(
    serve_aiohttp: Any, wait_for: Any
) -> None:
    async def leaf(request: web.Request) -> web.Response:
        return web.Response(text="leaf")

    parent, child = web.Application(), web.Application()
    child.router.add_get("/leaf/{n}", leaf)
    init_aiohttp(child)  # its own defaults: the X-Trace-Id header
    parent.add_subapp("/sub", child)
    init_aiohttp(parent, trace_id_header="X-Parent-Trace")
    with capture_spans() as exporter:
        r = httpx.get(f"{serve_aiohttp(parent)}/sub/leaf/3")
        span = wait_for(server_span(exporter))
        pt.force_flush(5.0)
    assert r.text == "leaf"
    assert r.headers["x-parent-trace"] == span["trace_id"]
    assert "x-trace-id" not in r.headers  # the inner app's signal leaves the outer's request alone
    assert [s["name"] for s in exporter.spans()] == ["GET /sub/leaf/{n}"]


def test_file_responses_end_when_sent_with_the_status_aiohttp_settled_on(
    serve_aiohttp: Any, wait_for: Any, tmp_path: Any
) -> None:
    (tmp_path / "deck.pdf").write_bytes(b"%PDF" + b"x" * 300_000)
    app = web.Application()

    async def slow_body() -> Any:
        for _ in range(3):
            await asyncio.sleep(0.1)
            yield b"chunk"

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(tmp_path / request.match_info["name"])

    async def streamed(request: web.Request) -> web.Response:
        return web.Response(body=slow_body())  # sent by aiohttp after the handler returned

    app.router.add_get("/files/{name}", file)
    app.router.add_get("/streamed", streamed)
    app.router.add_static("/static", tmp_path)
    init_aiohttp(app)
    with capture_spans() as exporter, swallowed_errors() as errors:
        url = serve_aiohttp(app)
        with httpx.Client() as client:
            whole = client.get(f"{url}/files/deck.pdf")
            missing = client.get(f"{url}/files/nope.pdf")
            cached = client.get(f"{url}/files/deck.pdf", headers={"If-None-Match": whole.headers["ETag"]})
            ranged = client.get(f"{url}/static/deck.pdf", headers={"Range": "bytes=0-99"})
            slow = client.get(f"{url}/streamed")
        spans = wait_for(lambda: len(exporter.spans()) >= 5 and exporter.spans())
        audits = wait_for(lambda: len(exporter.of_type("audit")) >= 5 and exporter.of_type("audit"))
    assert errors == []
    assert [r.status_code for r in (whole, missing, cached, ranged, slow)] == [200, 404, 304, 206, 200]
    assert slow.content == b"chunk" * 3
    by_order = sorted(spans, key=lambda s: s["start_time_unix_nano"])
    statuses = [s["attributes"]["http.response.status_code"] for s in by_order]
    assert statuses == [200, 404, 304, 206, 200]  # not the 200 the handlers returned
    assert [s["name"] for s in by_order[:3]] == ["GET /files/{name}"] * 3
    assert by_order[0]["attributes"]["http.response.body.size"] == 300_004
    assert by_order[3]["attributes"]["http.response.body.size"] == 100
    assert by_order[4]["duration_ms"] >= 290  # timed until its last chunk was sent
    assert by_order[1]["status"] == "unset"  # a 404 is the client's error, not the server's
    assert sorted(a["outcome"] for a in audits) == ["200", "200", "206", "304", "404"]
    assert whole.headers["x-trace-id"] == by_order[0]["trace_id"]
