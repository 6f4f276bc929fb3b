"""pitchey_trace.grpc under instrument_grpc() against real gRPC servers on 127.0.0.1: factories
bound by name before instrumentation, channels made before it, the SDK's own OTLP calls, and
the statuses of streaming calls (errors, deadlines, cancellation) on both sides."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

import pitchey_trace as pt
from pitchey_trace.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    client_interceptor,
    instrument_grpc,
    server_interceptor,
    uninstrument_grpc,
)
from pitchey_trace.testing import InMemoryExporter, capture_spans, swallowed_errors

# bound by name at import, before any instrument_grpc(): what application modules hold
from grpc import insecure_channel as early_insecure_channel  # isort: skip
from grpc import intercept_channel as early_intercept_channel  # isort: skip
from grpc import secure_channel as early_secure_channel  # isort: skip
from grpc import server as early_server  # isort: skip
from grpc.aio import insecure_channel as early_aio_insecure_channel  # isort: skip
from grpc.aio import server as early_aio_server  # isort: skip

pytestmark = pytest.mark.integration

SERVICE = "demo.Pitches"


def _traceparent(context: Any) -> bytes:
    return dict(context.invocation_metadata()).get("traceparent", "-").encode()


def get(request: bytes, context: Any) -> bytes:
    return b"pitch " + request + b" " + _traceparent(context)


def listing(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(int(request or b"3")):
        yield b"%d" % i


def upload(requests: Iterator[bytes], context: Any) -> bytes:
    return b"%d" % sum(len(r) for r in requests)


def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


def broken_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"first"
    raise RuntimeError("lost the cursor")


def slow_stream(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(50):
        time.sleep(0.05)
        if not context.is_active():
            return
        yield b"%d" % i


def slow(request: bytes, context: Any) -> bytes:
    time.sleep(0.5)
    return b"late"


def refused_upload(requests: Iterator[bytes], context: Any) -> bytes:
    next(requests)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad chunk")
    raise AssertionError("unreachable")


def chat_fails(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        if r == b"boom":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
        yield r


HANDLERS = {
    "Get": grpc.unary_unary_rpc_method_handler(get),
    "List": grpc.unary_stream_rpc_method_handler(listing),
    "Upload": grpc.stream_unary_rpc_method_handler(upload),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Broken": grpc.unary_stream_rpc_method_handler(broken_stream),
    "SlowStream": grpc.unary_stream_rpc_method_handler(slow_stream),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Refused": grpc.stream_unary_rpc_method_handler(refused_upload),
    "ChatFails": grpc.stream_stream_rpc_method_handler(chat_fails),
}


def _serve(
    make: Any = None, interceptors: list[Any] | None = None, credentials: Any = None
) -> tuple[Any, str]:
    server = (make or grpc.server)(ThreadPoolExecutor(8), interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server, address = _serve(interceptors=[server_interceptor()])
    yield address
    server.stop(None)


@pytest.fixture
def instrumented() -> Iterator[None]:
    instrument_grpc()
    try:
        yield
    finally:
        uninstrument_grpc()


def settle(mem: InMemoryExporter, count: int, extra: float = 0.2) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        pt.force_flush(5)
        if len(mem.spans()) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    time.sleep(extra)  # (a span too many would end about now)
    pt.force_flush(5)
    return mem.spans()


def clients_of(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == "client"]


def by_method(spans: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for s in spans:
        if s["kind"] == kind:
            assert s["name"] not in found, f"two {kind} spans for {s['name']}"
            found[s["name"].rpartition("/")[2]] = s
    return found


# -- factories bound before instrument_grpc() ---------------------------------------------------
def test_channel_factories_imported_by_name_before_instrumenting_are_traced(
    target: str, instrumented: None
) -> None:
    with capture_spans() as mem, swallowed_errors() as errors:
        with early_insecure_channel(target) as channel, pt.span("request") as request:
            answer = channel.unary_unary(f"/{SERVICE}/Get")(b"1")
            listed = list(channel.unary_stream(f"/{SERVICE}/List")(b"2"))
            total = channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"ab", b"c"]))
            echoed = list(channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"x"])))
            future = channel.unary_unary(f"/{SERVICE}/Get").future(b"2").result(10)
        spans = settle(mem, 1 + 5 + 5)
    assert errors == []
    assert (listed, total, echoed) == ([b"0", b"1"], b"3", [b"X"])
    clients = clients_of(spans)
    assert len(clients) == 5
    assert {c["parent_span_id"] for c in clients} == {request.span_id_hex}
    servers = {s["parent_span_id"]: s for s in spans if s["kind"] == "server"}
    assert all(servers[c["span_id"]]["name"] == c["name"] for c in clients)
    for text in (answer, future):  # the server saw the client span's traceparent
        traceparent = text.split(b" ")[2].decode()
        assert traceparent[3:35] == request.trace_id_hex
        assert traceparent[36:52] in {c["span_id"] for c in clients}
    assert clients[0]["attributes"]["server.port"] == int(target.rpartition(":")[2])


def test_secure_channel_imported_before_instrumenting_is_traced(instrumented: None) -> None:
    server, address = _serve(interceptors=[server_interceptor()], credentials=grpc.local_server_credentials())
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with early_secure_channel(address, grpc.local_channel_credentials()) as channel:
                answer = channel.unary_unary(f"/{SERVICE}/Get")(b"s")
            spans = settle(mem, 2)
    finally:
        server.stop(None)
    assert errors == []
    (client,) = clients_of(spans)
    (served,) = [s for s in spans if s["kind"] == "server"]
    assert served["parent_span_id"] == client["span_id"]
    assert client["span_id"] in answer.decode()


def test_a_channel_made_before_instrumenting_is_traced_from_then_on(target: str) -> None:
    with grpc.insecure_channel(target) as channel:  # (a module-level channel made at import)
        instrument_grpc()
        try:
            with capture_spans() as mem:
                channel.unary_unary(f"/{SERVICE}/Get")(b"1")
                spans = settle(mem, 2)
        finally:
            uninstrument_grpc()
        with capture_spans() as mem:  # uninstrumented: untraced again (the server still traces)
            channel.unary_unary(f"/{SERVICE}/Get")(b"1")
            after = settle(mem, 1)
    (client,) = clients_of(spans)
    assert [s["parent_span_id"] for s in spans if s["kind"] == "server"] == [client["span_id"]]
    assert [s["kind"] for s in after] == ["server"]


def test_early_intercept_channel_on_an_early_made_channel_runs_ours_first(
    target: str, instrumented: None
) -> None:
    seen: list[str] = []

    class Recording(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(dict(details.metadata or ()).get("traceparent", "-"))
            return continuation(details, request)

    with capture_spans() as mem, swallowed_errors() as errors:
        with early_insecure_channel(target) as raw:
            channel = early_intercept_channel(raw, Recording())
            channel.unary_unary(f"/{SERVICE}/Get")(b"1")
            # ours by hand as well: still one span
            by_hand = early_intercept_channel(raw, client_interceptor(target), Recording())
            by_hand.unary_unary(f"/{SERVICE}/Get")(b"2")
        spans = settle(mem, 4)
    assert errors == []
    clients = clients_of(spans)
    assert len(clients) == 2
    # the app's interceptor saw the call's traceparent (ours ran first)
    assert sorted(tp[36:52] for tp in seen) == sorted(c["span_id"] for c in clients)


def test_instrumenting_twice_and_uninstrumenting_restore_the_channel_class() -> None:
    from grpc import _channel

    methods = {name: _channel.Channel.__dict__[name] for name in ("unary_unary", "stream_stream")}
    instrument_grpc()
    instrument_grpc()
    try:
        assert _channel.Channel.__dict__["unary_unary"] is not methods["unary_unary"]
    finally:
        uninstrument_grpc()
    uninstrument_grpc()  # (twice: nothing left to undo)
    assert {name: _channel.Channel.__dict__[name] for name in methods} == methods


def test_server_factory_imported_by_name_before_instrumenting_is_traced(
    target: str, instrumented: None
) -> None:
    server, address = _serve(make=early_server)
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with grpc.insecure_channel(address) as channel:
                channel.unary_unary(f"/{SERVICE}/Get")(b"1")
            spans = settle(mem, 2)
    finally:
        server.stop(None)
    assert errors == []
    (client,) = clients_of(spans)
    assert [s["parent_span_id"] for s in spans if s["kind"] == "server"] == [client["span_id"]]


async def aio_get(request: bytes, context: Any) -> bytes:
    return b"pitch " + request + b" " + _traceparent(context)


def test_asyncio_factories_imported_by_name_before_instrumenting_are_traced(instrumented: None) -> None:
    async def calls() -> bytes:
        server = early_aio_server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(aio_get)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with early_aio_insecure_channel(f"127.0.0.1:{port}") as channel:
                with pt.span("request"):
                    return bytes(await channel.unary_unary(f"/{SERVICE}/Get")(b"3"))
        finally:
            await server.stop(None)

    with capture_spans() as mem, swallowed_errors() as errors:
        answer = asyncio.run(calls())
        spans = settle(mem, 3)
    assert errors == []
    (client,) = clients_of(spans)
    (served,) = [s for s in spans if s["kind"] == "server"]
    assert served["parent_span_id"] == client["span_id"]
    assert client["span_id"] in answer.decode()


# -- the SDK's own OTLP calls ---------------------------------------------------------------------
def test_otlp_grpc_export_called_on_an_application_thread_stays_untraced(instrumented: None) -> None:
    from pitchey_trace.exporters import OTLPExporter
    from pitchey_trace.exporters._grpc import EXPORT_METHOD

    received: list[dict[str, str]] = []

    def export(request: bytes, context: Any) -> bytes:
        received.append(dict(context.invocation_metadata()))
        return b""

    collector = grpc.server(ThreadPoolExecutor(2))  # (instrumented too: as another process would be)
    service, method = EXPORT_METHOD.strip("/").split("/")
    collector.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(export)}
            ),
        )
    )
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    record = _a_span_record()
    try:
        otlp = OTLPExporter(f"http://127.0.0.1:{port}", protocol="grpc")
        with capture_spans() as mem, swallowed_errors() as errors:
            with pt.span("job"):
                # an exporter used directly, inside a request (a flush of one's own)
                assert otlp.export([record])
            spans = settle(mem, 1)
        otlp.shutdown()
    finally:
        collector.stop(None)
    assert errors == []
    assert received
    assert all("traceparent" not in m for m in received)
    # no client span for the export (the collector here is traced as a server would be)
    assert [s["name"] for s in spans if s["kind"] != "server"] == ["job"]


def _a_span_record() -> dict[str, Any]:
    with capture_spans() as mem:
        with pt.span("exported"):
            pass
        pt.force_flush(5)
    return mem.spans()[0]


# -- streaming statuses: errors, deadlines, cancellation ------------------------------------------
def test_stream_errors_deadlines_and_cancellation_statuses(target: str, instrumented: None) -> None:
    with capture_spans() as mem, swallowed_errors() as errors:
        with grpc.insecure_channel(target) as channel:
            broken = channel.unary_stream(f"/{SERVICE}/Broken")(b"")
            got = []
            with pytest.raises(grpc.RpcError) as raised:
                for m in broken:
                    got.append(m)
            assert raised.value.code() == grpc.StatusCode.UNKNOWN
            # deadline exceeded on a unary call and on a stream
            with pytest.raises(grpc.RpcError) as late:
                channel.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=0.1)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as late_stream:
                list(channel.unary_stream(f"/{SERVICE}/SlowStream")(b"", timeout=0.2))
            assert late_stream.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # the client cancels a stream half-way
            stream = channel.unary_stream(f"/{SERVICE}/SlowStream")(b"")
            next(stream)
            stream.cancel()
            # request stream refused by the server; bidi stream aborted mid-way
            with pytest.raises(grpc.RpcError) as refused:
                channel.stream_unary(f"/{SERVICE}/Refused")(iter([b"a", b"b"]))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            replies: list[bytes] = []
            with pytest.raises(grpc.RpcError) as quota:
                for m in channel.stream_stream(f"/{SERVICE}/ChatFails")(iter([b"a", b"boom", b"c"])):
                    replies.append(m)
            assert quota.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.6)  # (the server's slow handlers finish)
        spans = settle(mem, 12)
    assert errors == []
    assert got == [b"first"]
    assert replies == [b"a"]
    clients = by_method(spans, "client")
    servers = by_method(spans, "server")
    expected_client = {
        "Broken": "UNKNOWN",
        "Slow": "DEADLINE_EXCEEDED",
        "SlowStream": None,  # two calls: checked below
        "Refused": "INVALID_ARGUMENT",
        "ChatFails": "RESOURCE_EXHAUSTED",
    }
    for method, code in expected_client.items():
        if code is None:
            continue
        span = clients[method]
        assert span["status"] == "error", method
        assert span["attributes"]["error.type"] == code, method
        assert span["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode[code].value[0], method
    # server side: an exception in a stream is UNKNOWN and an error with the exception; an abort
    # with a client-side code is the handler's answer, not its failure
    assert servers["Broken"]["status"] == "error"
    assert servers["Broken"]["attributes"]["rpc.grpc.status_code"] == 2
    assert servers["Broken"]["events"][0]["attributes"]["exception.type"].endswith("RuntimeError")
    assert servers["Refused"]["status"] == "unset"
    assert servers["Refused"]["attributes"]["rpc.grpc.status_code"] == 3
    assert servers["ChatFails"]["attributes"]["rpc.grpc.status_code"] == 8


def test_stream_cancelled_and_deadline_statuses_per_call(target: str, instrumented: None) -> None:
    with capture_spans() as mem, swallowed_errors() as errors:
        with grpc.insecure_channel(target) as channel, pt.span("cancelled") as cancelled:
            stream = channel.unary_stream(f"/{SERVICE}/SlowStream")(b"")
            next(stream)
            stream.cancel()
        with grpc.insecure_channel(target) as channel, pt.span("late") as late:
            with pytest.raises(grpc.RpcError):
                list(channel.unary_stream(f"/{SERVICE}/SlowStream")(b"", timeout=0.2))
        time.sleep(0.3)
        spans = settle(mem, 6)
    assert errors == []

    def under(root: Any, kind: str) -> dict[str, Any]:
        (span,) = [s for s in spans if s["trace_id"] == root.trace_id_hex and s["kind"] == kind]
        return span

    client = under(cancelled, "client")
    assert client["attributes"]["rpc.grpc.status_code"] == 1
    assert client["attributes"]["error.type"] == "CANCELLED"
    server = under(cancelled, "server")
    assert server["attributes"]["rpc.grpc.status_code"] == 1  # the client went away
    assert server["status"] == "unset"
    client = under(late, "client")
    assert client["attributes"]["error.type"] == "DEADLINE_EXCEEDED"
    server = under(late, "server")
    assert server["attributes"]["rpc.grpc.status_code"] == 4
    assert server["status"] == "error"


# -- asyncio streaming statuses ------------------------------------------------------------------
async def aio_broken(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError("lost the cursor")


async def aio_slow_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(50):
        await asyncio.sleep(0.05)
        yield b"%d" % i


async def aio_slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(0.5)
    return b"late"


def test_asyncio_stream_errors_deadlines_and_cancellation() -> None:
    handlers = {
        "Broken": grpc.unary_stream_rpc_method_handler(aio_broken),
        "SlowStream": grpc.unary_stream_rpc_method_handler(aio_slow_stream),
        "Slow": grpc.unary_unary_rpc_method_handler(aio_slow),
    }
    codes: dict[str, Any] = {}

    async def calls() -> None:
        server = grpc.aio.server(interceptors=[aio_server_interceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        target = f"127.0.0.1:{port}"
        try:
            async with grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(target)) as ch:
                try:
                    [m async for m in ch.unary_stream(f"/{SERVICE}/Broken")(b"")]
                except grpc.aio.AioRpcError as exc:
                    codes["Broken"] = exc.code()
                try:
                    await ch.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=0.1)
                except grpc.aio.AioRpcError as exc:
                    codes["Slow"] = exc.code()
                call = ch.unary_stream(f"/{SERVICE}/SlowStream")(b"")
                await call.read()
                call.cancel()
                codes["SlowStream"] = await call.code()
                await asyncio.sleep(0.6)
        finally:
            await server.stop(None)

    with capture_spans() as mem, swallowed_errors() as errors:
        asyncio.run(calls())
        spans = settle(mem, 6)
    assert errors == []
    assert codes == {
        "Broken": grpc.StatusCode.UNKNOWN,
        "Slow": grpc.StatusCode.DEADLINE_EXCEEDED,
        "SlowStream": grpc.StatusCode.CANCELLED,
    }
    clients, servers = by_method(spans, "client"), by_method(spans, "server")
    for method, code in codes.items():
        assert clients[method]["attributes"]["rpc.grpc.status_code"] == code.value[0], method
        assert clients[method]["status"] == "error", method
    assert servers["Broken"]["status"] == "error"
    assert servers["Broken"]["attributes"]["rpc.grpc.status_code"] == 2
    assert servers["SlowStream"]["attributes"]["rpc.grpc.status_code"] == 1
    assert servers["Slow"]["attributes"]["rpc.grpc.status_code"] == 4
    assert servers["Slow"]["status"] == "error"


def test_threads_of_the_app_calling_while_instrumenting_concurrently(target: str) -> None:
    """Instrumenting while other threads call: every call answers, none fails."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def caller() -> None:
        with grpc.insecure_channel(target) as channel:
            while not stop.is_set():
                try:
                    channel.unary_unary(f"/{SERVICE}/Get")(b"1")
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)

    with capture_spans():
        threads = [threading.Thread(target=caller) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(20):
            instrument_grpc()
            time.sleep(0.005)
            uninstrument_grpc()
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
