"""pitchey_trace.grpc against real gRPC servers on 127.0.0.1 (sync and asyncio), called over
real channels: one trace from client to server, all four call shapes, status codes, errors,
suppression and instrument_grpc()."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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

pytestmark = pytest.mark.integration

SERVICE = "demo.Pitches"
STREAM_PAUSE = 0.05


# -- the service: raw bytes in and out (no generated code needed) --------------------------------
def _traceparent(context: Any) -> str:
    return dict(context.invocation_metadata()).get("traceparent", "-")


def get(request: bytes, context: Any) -> bytes:
    with pt.span("load pitch"):
        return b"pitch " + request + b" " + _traceparent(context).encode()


def listing(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(3):
        with pt.span("page"):
            time.sleep(STREAM_PAUSE)
        yield b"%d" % i


def upload(requests: Iterator[bytes], context: Any) -> bytes:
    return b"%d" % sum(len(r) for r in requests)


def chat(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


def fail(request: bytes, context: Any) -> bytes:
    raise ValueError("pitch store is down")


def missing(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no pitch " + request.decode())
    raise AssertionError("unreachable")


def overloaded(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.UNAVAILABLE)
    context.set_details("try later")
    return b""


def tagged(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-trace-id", "set-by-the-app"), ("x-shard", "3")))
    return b"ok"


HANDLERS = {
    "Tagged": grpc.unary_unary_rpc_method_handler(tagged),
    "Get": grpc.unary_unary_rpc_method_handler(get),
    "List": grpc.unary_stream_rpc_method_handler(listing),
    "Upload": grpc.stream_unary_rpc_method_handler(upload),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Missing": grpc.unary_unary_rpc_method_handler(missing),
    "Overloaded": grpc.unary_unary_rpc_method_handler(overloaded),
}


def _start_server(interceptors: list[Any] | None, make: Any = None) -> tuple[Any, str]:
    server = (make or grpc.server)(ThreadPoolExecutor(4), interceptors=interceptors)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server, address = _start_server([server_interceptor()])
    yield address
    server.stop(None)


@pytest.fixture
def channel(target: str) -> Iterator[Any]:
    with grpc.insecure_channel(target) as raw:
        yield grpc.intercept_channel(raw, client_interceptor(target))


def settle(mem: InMemoryExporter, count: int) -> list[dict[str, Any]]:
    """The records once ``count`` spans were exported (client spans of streams end on gRPC's
    thread, just after the caller has its last message)."""
    deadline = time.monotonic() + 10
    while True:
        pt.force_flush(5)
        spans = mem.spans()
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def by_name(spans: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {s["name"].rpartition("/")[2]: s for s in spans if s["kind"] == kind}


# -- sync ----------------------------------------------------------------------------------------
def test_unary_call_is_one_trace_from_client_to_server_handler(target: str, channel: Any) -> None:
    with capture_spans() as mem, swallowed_errors() as errors:
        with pt.span("request") as request:
            answer = channel.unary_unary(f"/{SERVICE}/Get")(b"7")
        spans = settle(mem, 4)
    assert errors == []
    load, server, client, root = spans
    assert root["span_id"] == f"{request.span_id:016x}"
    assert client["parent_span_id"] == root["span_id"]
    assert server["parent_span_id"] == client["span_id"]  # continued from the call's metadata
    assert load["parent_span_id"] == server["span_id"]  # current while the handler runs
    assert len({s["trace_id"] for s in spans}) == 1
    # the traceparent the server received is the client span's
    assert answer.startswith(f"pitch 7 00-{client['trace_id']}-{client['span_id']}-".encode())
    host, port = target.split(":")
    assert client["name"] == server["name"] == f"{SERVICE}/Get"
    assert client["kind"] == "client"
    assert server["kind"] == "server"
    assert client["attributes"] == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Get",
        "server.address": host,
        "server.port": int(port),
        "rpc.grpc.status_code": 0,
    }
    attrs = server["attributes"]
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.method"] == "Get"
    assert attrs["rpc.grpc.status_code"] == 0
    assert attrs["client.address"] == attrs["network.peer.address"] == "127.0.0.1"
    assert isinstance(attrs["network.peer.port"], int)
    assert attrs["network.peer.port"] > 0
    assert client["status"] == server["status"] == "unset"


def test_streams_in_every_shape_are_timed_to_their_last_message(channel: Any) -> None:
    with capture_spans() as mem:
        with pt.span("request"):
            pages = list(channel.unary_stream(f"/{SERVICE}/List")(b""))
            total = channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"ab", b"cde"]))
            echoed = list(channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"x", b"y"])))
        spans = settle(mem, 10)
    assert (pages, total, echoed) == ([b"0", b"1", b"2"], b"5", [b"X", b"Y"])
    servers, clients = by_name(spans, "server"), by_name(spans, "client")
    assert set(servers) == set(clients) == {"List", "Upload", "Chat"}
    for method in servers:
        assert servers[method]["parent_span_id"] == clients[method]["span_id"]
        assert servers[method]["attributes"]["rpc.grpc.status_code"] == 0
    listed = servers["List"]
    assert listed["end_time_unix_nano"] - listed["start_time_unix_nano"] >= 3 * STREAM_PAUSE * 1e9
    page_spans = [s for s in spans if s["name"] == "page"]
    assert len(page_spans) == 3
    assert {s["parent_span_id"] for s in page_spans} == {listed["span_id"]}
    assert clients["List"]["end_time_unix_nano"] >= listed["end_time_unix_nano"] - 5_000_000


def test_status_codes_and_exceptions(channel: Any) -> None:
    codes = {}
    with capture_spans() as mem:
        for method in ("Fail", "Missing", "Overloaded"):
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(f"/{SERVICE}/{method}")(b"7")
            codes[method] = raised.value.code()
        spans = settle(mem, 6)
    assert codes == {
        "Fail": grpc.StatusCode.UNKNOWN,
        "Missing": grpc.StatusCode.NOT_FOUND,
        "Overloaded": grpc.StatusCode.UNAVAILABLE,
    }
    servers, clients = by_name(spans, "server"), by_name(spans, "client")
    # a handler's exception: an error, recorded with its stack trace
    failed = servers["Fail"]
    assert failed["status"] == "error"
    assert failed["attributes"]["error.type"] == "UNKNOWN"
    assert failed["attributes"]["rpc.grpc.status_code"] == 2
    assert "ValueError: pitch store is down" in failed["status_message"]
    (event,) = failed["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"].endswith("ValueError")
    assert "pitch store is down" in event["attributes"]["exception.stacktrace"]
    # abort(NOT_FOUND): the handler's answer, not its failure; no exception recorded
    found = servers["Missing"]
    assert found["status"] == "unset"
    assert found["events"] == []
    assert found["attributes"]["rpc.grpc.status_code"] == 5
    assert "error.type" not in found["attributes"]
    # set_code(UNAVAILABLE) without raising: a server error
    assert servers["Overloaded"]["status"] == "error"
    assert servers["Overloaded"]["attributes"]["rpc.grpc.status_code"] == 14
    assert servers["Overloaded"]["status_message"] == "UNAVAILABLE: try later"
    # every non-OK code is an error for the client, with the details
    assert all(c["status"] == "error" for c in clients.values())
    assert clients["Missing"]["attributes"]["error.type"] == "NOT_FOUND"
    assert clients["Missing"]["status_message"] == "NOT_FOUND: no pitch 7"


def test_future_calls_end_their_span_when_they_complete(channel: Any) -> None:
    with capture_spans() as mem:
        future = channel.unary_unary(f"/{SERVICE}/Get").future(b"9")
        assert future.result(timeout=10).startswith(b"pitch 9 00-")
        spans = settle(mem, 3)
    client = by_name(spans, "client")["Get"]
    assert client["attributes"]["rpc.grpc.status_code"] == 0
    assert by_name(spans, "server")["Get"]["parent_span_id"] == client["span_id"]


def test_suppressed_calls_send_no_context_and_record_nothing(channel: Any) -> None:
    with capture_spans() as mem:
        with pt.span("request"), pt.suppress_tracing():
            answer = channel.unary_unary(f"/{SERVICE}/Get")(b"1")
        spans = settle(mem, 3)
    assert answer == b"pitch 1 -"
    # no client span; the server (another thread of this process) starts a trace of its own
    assert sorted(s["kind"] for s in spans) == ["internal", "internal", "server"]
    server = by_name(spans, "server")["Get"]
    (request,) = [s for s in spans if s["name"] == "request"]
    assert server["parent_span_id"] is None
    assert server["trace_id"] != request["trace_id"]


def test_bad_incoming_context_starts_a_new_trace_and_the_call_still_works(target: str) -> None:
    with capture_spans() as mem, grpc.insecure_channel(target) as raw:
        answer = raw.unary_unary(f"/{SERVICE}/Get")(
            b"3", metadata=(("traceparent", "00-zz-not-a-context-01"),)
        )
        spans = settle(mem, 2)
    assert answer == b"pitch 3 00-zz-not-a-context-01"
    server = by_name(spans, "server")["Get"]
    assert server["parent_span_id"] is None
    assert len(server["trace_id"]) == 32


def test_own_metadata_is_kept_and_a_stale_traceparent_replaced(target: str, channel: Any) -> None:
    stale = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    with capture_spans() as mem:
        answer = channel.unary_unary(f"/{SERVICE}/Get")(
            b"5", metadata=(("traceparent", stale), ("x-tenant", "t1"))
        )
        spans = settle(mem, 3)
    client = by_name(spans, "client")["Get"]
    assert answer.startswith(f"pitch 5 00-{client['trace_id']}-{client['span_id']}-".encode())


def test_unknown_method_is_answered_unimplemented_untraced_on_the_server(channel: Any) -> None:
    with capture_spans() as mem:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(f"/{SERVICE}/Nope")(b"")
        spans = settle(mem, 1)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [(s["kind"], s["attributes"]["rpc.grpc.status_code"]) for s in spans] == [("client", 12)]


# -- asyncio -------------------------------------------------------------------------------------
async def aio_get(request: bytes, context: Any) -> bytes:
    with pt.span("load pitch"):
        await asyncio.sleep(0)
        return b"pitch " + request


async def aio_listing(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        await asyncio.sleep(STREAM_PAUSE)
        yield b"%d" % i


async def aio_missing(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "gone")
    raise AssertionError("unreachable")


async def aio_fail(request: bytes, context: Any) -> bytes:
    raise KeyError("pitch")


AIO_HANDLERS = {
    "Get": grpc.unary_unary_rpc_method_handler(aio_get),
    "List": grpc.unary_stream_rpc_method_handler(aio_listing),
    "Missing": grpc.unary_unary_rpc_method_handler(aio_missing),
    "Fail": grpc.unary_unary_rpc_method_handler(aio_fail),
}


async def _aio_calls(client_interceptors: bool) -> tuple[list[Any], str]:
    server = grpc.aio.server(interceptors=[aio_server_interceptor()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, AIO_HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    try:
        interceptors = aio_client_interceptors(target) if client_interceptors else None
        async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
            results: list[Any] = []
            with pt.span("request"):
                results.append(await channel.unary_unary(f"/{SERVICE}/Get")(b"4"))
                results.append([m async for m in channel.unary_stream(f"/{SERVICE}/List")(b"")])
                for method in ("Missing", "Fail"):
                    try:
                        await channel.unary_unary(f"/{SERVICE}/{method}")(b"")
                    except grpc.aio.AioRpcError as exc:
                        results.append(exc.code())
            return results, target
    finally:
        await server.stop(None)


def test_asyncio_server_and_channel() -> None:
    with capture_spans() as mem, swallowed_errors() as errors:
        results, target = asyncio.run(_aio_calls(client_interceptors=True))
        spans = settle(mem, 10)
    assert errors == []
    assert results == [b"pitch 4", [b"0", b"1", b"2"], grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN]
    (root,) = [s for s in spans if s["name"] == "request"]
    assert len({s["trace_id"] for s in spans}) == 1
    servers, clients = by_name(spans, "server"), by_name(spans, "client")
    assert set(servers) == set(clients) == {"Get", "List", "Missing", "Fail"}
    for method, client in clients.items():
        assert client["parent_span_id"] == root["span_id"]
        assert servers[method]["parent_span_id"] == client["span_id"]
        assert client["attributes"]["server.port"] == int(target.rpartition(":")[2])
    (load,) = [s for s in spans if s["name"] == "load pitch"]
    assert load["parent_span_id"] == servers["Get"]["span_id"]
    listed = servers["List"]
    assert listed["end_time_unix_nano"] - listed["start_time_unix_nano"] >= 3 * STREAM_PAUSE * 1e9
    assert servers["Missing"]["status"] == "unset"
    assert servers["Missing"]["events"] == []
    assert clients["Missing"]["status_message"] == "NOT_FOUND: gone"
    assert servers["Fail"]["status"] == "error"
    assert servers["Fail"]["events"][0]["attributes"]["exception.type"].endswith("KeyError")


def test_asyncio_server_continues_an_untraced_clients_context() -> None:
    with capture_spans() as mem:
        results, _ = asyncio.run(_aio_calls(client_interceptors=False))
        spans = settle(mem, 5)
    assert results[0] == b"pitch 4"
    # no client spans and no context sent: each server span is a root of its own trace
    assert {s["kind"] for s in spans} == {"internal", "server"}
    servers = by_name(spans, "server")
    assert all(s["parent_span_id"] is None for s in servers.values())


# -- instrument_grpc -----------------------------------------------------------------------------
def test_instrument_grpc_traces_servers_and_channels_made_afterwards() -> None:
    original_server, original_channel = grpc.server, grpc.insecure_channel
    instrument_grpc()
    instrument_grpc()  # idempotent
    try:
        assert grpc.server is not original_server
        server, target = _start_server(None)
        # one of ours given by hand: not doubled
        doubled, doubled_target = _start_server([server_interceptor()])
        try:
            with capture_spans() as mem:
                with grpc.insecure_channel(target) as channel, pt.span("request"):
                    assert channel.unary_unary(f"/{SERVICE}/Get")(b"8").startswith(b"pitch 8 00-")
                with grpc.insecure_channel(doubled_target) as channel:
                    channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"z"]))
                spans = settle(mem, 6)
        finally:
            server.stop(None)
            doubled.stop(None)
    finally:
        uninstrument_grpc()
    assert grpc.server is original_server
    assert grpc.insecure_channel is original_channel
    names = sorted((s["kind"], s["name"]) for s in spans)
    assert names == [
        ("client", f"{SERVICE}/Get"),
        ("client", f"{SERVICE}/Upload"),
        ("internal", "load pitch"),
        ("internal", "request"),
        ("server", f"{SERVICE}/Get"),
        ("server", f"{SERVICE}/Upload"),
    ]
    assert len({s["trace_id"] for s in spans if "Get" in s["name"] or s["kind"] == "internal"}) == 1


def test_instrument_grpc_asyncio_factories_keep_the_apps_interceptors() -> None:
    seen: list[str] = []

    class Counting(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(dict(details.metadata or ()).get("traceparent", "-"))
            return await continuation(details, request)

    async def calls() -> bytes:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, AIO_HANDLERS),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", None, None, [Counting()]) as channel:
                return bytes(await channel.unary_unary(f"/{SERVICE}/Get")(b"2"))
        finally:
            await server.stop(None)

    instrument_grpc()
    try:
        with capture_spans() as mem:
            answer = asyncio.run(calls())
            spans = settle(mem, 3)
    finally:
        uninstrument_grpc()
    assert answer == b"pitch 2"
    client, server = by_name(spans, "client")["Get"], by_name(spans, "server")["Get"]
    assert server["parent_span_id"] == client["span_id"]
    # ours runs first, so the app's interceptor already sees the call's traceparent
    assert len(seen) == 1
    assert seen[0].startswith(f"00-{client['trace_id']}-{client['span_id']}-")


# -- across processes, unchanged programs under `pitchey-trace run` ------------------------------
SERVER_PROGRAM = """
import sys
from concurrent.futures import ThreadPoolExecutor
import grpc
import pitchey_trace as pt

def get(request, context):
    with pt.span("load pitch"):
        return b"pitch " + request

server = grpc.server(ThreadPoolExecutor(2))
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("demo.Pitches", {"Get": grpc.unary_unary_rpc_method_handler(get)}),)
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("PORT", port, flush=True)
sys.stdin.read()  # until the test closes it
server.stop(None)
"""

CLIENT_PROGRAM = """
import sys
import grpc
import pitchey_trace as pt

with grpc.insecure_channel(sys.argv[1]) as channel, pt.span("job"):
    print("ANSWER", channel.unary_unary("/demo.Pitches/Get")(b"12").decode(), flush=True)
"""


def test_unchanged_programs_under_pitchey_trace_run_share_one_trace(tmp_path: Path) -> None:
    for name, program in (("server.py", SERVER_PROGRAM), ("client.py", CLIENT_PROGRAM)):
        (tmp_path / name).write_text(textwrap.dedent(program))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    cli = [sys.executable, "-m", "pitchey_trace.cli", "run", "--exporter", "console"]
    server = subprocess.Popen(
        [*cli, "--service", "pitch-store", "--", sys.executable, str(tmp_path / "server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("PORT "), first
        target = f"127.0.0.1:{first.split()[1]}"
        client = subprocess.run(
            [*cli, "--service", "pitch-web", "--", sys.executable, str(tmp_path / "client.py"), target],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
        )
        served, _ = server.communicate("", timeout=60)
    finally:
        server.kill()
    assert client.returncode == 0, client.stderr
    assert "ANSWER pitch 12" in client.stdout

    def spans_of(stdout: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        return [r for r in records if r["type"] == "span"]

    calling, serving = spans_of(client.stdout), spans_of(served)
    job, call = sorted(calling, key=lambda s: s["kind"])[::-1]
    load, handled = sorted(serving, key=lambda s: s["kind"])
    assert (job["name"], call["name"], handled["name"], load["name"]) == (
        "job",
        "demo.Pitches/Get",
        "demo.Pitches/Get",
        "load pitch",
    )
    assert {s["service"] for s in calling} == {"pitch-web"}
    assert {s["service"] for s in serving} == {"pitch-store"}
    assert call["parent_span_id"] == job["span_id"]
    assert handled["parent_span_id"] == call["span_id"]
    assert load["parent_span_id"] == handled["span_id"]
    assert len({s["trace_id"] for s in calling + serving}) == 1


def test_the_sdks_own_otlp_grpc_export_stays_untraced() -> None:
    from pitchey_trace.exporters import OTLPExporter
    from pitchey_trace.exporters._grpc import EXPORT_METHOD

    received: list[dict[str, str]] = []

    def export(request: bytes, context: Any) -> bytes:
        received.append(dict(context.invocation_metadata()))
        return b""

    # the collector is made before instrument_grpc(): a collector of its own is another process
    collector = grpc.server(ThreadPoolExecutor(2))
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
    instrument_grpc()
    try:
        otlp = OTLPExporter(f"http://127.0.0.1:{port}", protocol="grpc")
        with capture_spans(exporters=[otlp]) as mem, swallowed_errors() as errors:
            with pt.span("job"):
                pass
            spans = settle(mem, 1)
            time.sleep(0.2)
            pt.force_flush(5)
            spans = mem.spans()
    finally:
        uninstrument_grpc()
        collector.stop(None)
    assert errors == []
    assert [s["name"] for s in spans] == ["job"]  # no span for the export call
    assert received
    assert all("traceparent" not in metadata for metadata in received)


def test_callers_get_the_trace_id_in_the_trailing_metadata(target: str, channel: Any) -> None:
    with capture_spans() as mem:
        _, call = channel.unary_unary(f"/{SERVICE}/Get").with_call(b"1")
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(f"/{SERVICE}/Fail")(b"")
        with pytest.raises(grpc.RpcError) as aborted:
            channel.unary_unary(f"/{SERVICE}/Missing")(b"1")
        stream = channel.unary_stream(f"/{SERVICE}/List")(b"")
        assert len(list(stream)) == 3
        _, own = channel.unary_unary(f"/{SERVICE}/Tagged").with_call(b"")
        spans = settle(mem, 10)
    servers = by_name(spans, "server")
    for method, answered in (
        ("Get", call),
        ("Fail", failed.value),
        ("Missing", aborted.value),
        ("List", stream),
    ):
        assert dict(answered.trailing_metadata())["x-trace-id"] == servers[method]["trace_id"], method
    # the handler's own entries are kept, its value for the key too
    assert dict(own.trailing_metadata()) == {"x-trace-id": "set-by-the-app", "x-shard": "3"}


def test_trace_id_metadata_can_be_renamed_or_turned_off() -> None:
    renamed, renamed_target = _start_server([server_interceptor(trace_id_metadata="X-Request-Trace")])
    silent, silent_target = _start_server([server_interceptor(trace_id_metadata=None)])
    try:
        with capture_spans() as mem:
            with grpc.insecure_channel(renamed_target) as channel:
                _, first = channel.unary_unary(f"/{SERVICE}/Get").with_call(b"1")
            with grpc.insecure_channel(silent_target) as channel:
                _, second = channel.unary_unary(f"/{SERVICE}/Get").with_call(b"1")
            spans = settle(mem, 4)
    finally:
        renamed.stop(None)
        silent.stop(None)
    trace_ids = {s["trace_id"] for s in spans if s["kind"] == "server"}
    assert dict(first.trailing_metadata()).get("x-request-trace") in trace_ids
    assert "x-trace-id" not in dict(second.trailing_metadata())
    for bad in ("", "x trace", "x-trace-bin", "grpc-trace", "tr\u00e4ce"):
        with pytest.raises(pt.ConfigurationError):
            server_interceptor(trace_id_metadata=bad)


async def aio_replaced(request: bytes, context: Any) -> bytes:
    assert isinstance(context, grpc.aio.ServicerContext)  # (what the handler sees is still one)
    context.set_trailing_metadata((("x-shard", "3"),))  # replaces the trailing metadata...
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "locked")  # ...and sends it at once
    raise AssertionError("unreachable")


async def aio_abort_with(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "gone", (("x-shard", "4"),))
    raise AssertionError("unreachable")


async def aio_own_id(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-trace-id", "set-by-the-app"),))
    return b"ok"


def test_asyncio_handlers_that_set_their_own_trailing_metadata_keep_the_trace_id() -> None:
    handlers = {
        "Replaced": grpc.unary_unary_rpc_method_handler(aio_replaced),
        "AbortWith": grpc.unary_unary_rpc_method_handler(aio_abort_with),
        "OwnId": grpc.unary_unary_rpc_method_handler(aio_own_id),
    }

    async def calls() -> dict[str, dict[str, str]]:
        server = grpc.aio.server(interceptors=[aio_server_interceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict[str, dict[str, str]] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for method in handlers:
                    call = channel.unary_unary(f"/{SERVICE}/{method}")(b"1")
                    try:
                        await call
                    except grpc.aio.AioRpcError:
                        pass
                    out[method] = dict(await call.trailing_metadata())
        finally:
            await server.stop(None)
        return out

    with capture_spans() as mem:
        got = asyncio.run(calls())
        spans = settle(mem, 3)
    servers = by_name(spans, "server")
    assert got["Replaced"] == {"x-shard": "3", "x-trace-id": servers["Replaced"]["trace_id"]}
    assert got["AbortWith"] == {"x-shard": "4", "x-trace-id": servers["AbortWith"]["trace_id"]}
    assert got["OwnId"] == {"x-trace-id": "set-by-the-app"}  # (the app's own value wins)


def test_asyncio_callers_get_the_trace_id_too() -> None:
    async def calls() -> tuple[Any, Any]:
        server = grpc.aio.server(interceptors=[aio_server_interceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, AIO_HANDLERS),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                ok = channel.unary_unary(f"/{SERVICE}/Get")(b"1")
                await ok
                missing = channel.unary_unary(f"/{SERVICE}/Missing")(b"1")
                with pytest.raises(grpc.aio.AioRpcError):
                    await missing
                return dict(await ok.trailing_metadata()), dict(await missing.trailing_metadata())
        finally:
            await server.stop(None)

    with capture_spans() as mem:
        ok, missing = asyncio.run(calls())
        spans = settle(mem, 3)
    servers = by_name(spans, "server")
    assert ok["x-trace-id"] == servers["Get"]["trace_id"]
    assert missing["x-trace-id"] == servers["Missing"]["trace_id"]


async def aio_upload(requests: Any, context: Any) -> bytes:
    total = 0
    async for r in requests:
        total += len(r)
    return b"%d" % total


async def aio_chat(requests: Any, context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        with pt.span("reply"):
            yield r.upper()


def test_asyncio_request_streams() -> None:
    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(aio_upload),
        "Chat": grpc.stream_stream_rpc_method_handler(aio_chat),
    }

    async def calls() -> tuple[bytes, list[bytes]]:
        server = grpc.aio.server(interceptors=[aio_server_interceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        target = f"127.0.0.1:{port}"

        async def messages() -> AsyncIterator[bytes]:
            for m in (b"ab", b"cde"):
                yield m

        try:
            async with grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(target)) as ch:
                with pt.span("request"):
                    total = await ch.stream_unary(f"/{SERVICE}/Upload")(messages())
                    echoed = [m async for m in ch.stream_stream(f"/{SERVICE}/Chat")(messages())]
            return total, echoed
        finally:
            await server.stop(None)

    with capture_spans() as mem, swallowed_errors() as errors:
        total, echoed = asyncio.run(calls())
        spans = settle(mem, 7)  # the request, two client and two server spans, two replies
    assert errors == []
    assert (total, echoed) == (b"5", [b"AB", b"CDE"])
    servers, clients = by_name(spans, "server"), by_name(spans, "client")
    assert set(servers) == set(clients) == {"Upload", "Chat"}
    for method in ("Upload", "Chat"):
        assert servers[method]["parent_span_id"] == clients[method]["span_id"]
        assert clients[method]["attributes"]["rpc.grpc.status_code"] == 0
    replies = [s for s in spans if s["name"] == "reply"]
    assert len(replies) == 2
    assert {r["parent_span_id"] for r in replies} == {servers["Chat"]["span_id"]}


# -- channels wrapped by hand under instrument_grpc() -------------------------------------------
class Recording(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """An application's interceptor: notes the traceparent each call carries when it runs."""

    def __init__(self, label: str, seen: list[tuple[str, str]]) -> None:
        self.label, self.seen = label, seen

    def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append((self.label, dict(details.metadata or ()).get("traceparent", "-")))
        return continuation(details, request)

    intercept_unary_unary = intercept_unary_stream = _intercept
    intercept_stream_unary = intercept_stream_stream = _intercept


def _every_call_shape(channel: Any) -> list[Any]:
    get = channel.unary_unary(f"/{SERVICE}/Get")
    answers: list[Any] = [get(b"1")[:7], get.with_call(b"2")[0][:7], get.future(b"3").result(10)[:7]]
    answers.append(list(channel.unary_stream(f"/{SERVICE}/List")(b"")))
    answers.append(channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"ab"])))
    answers.append(list(channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"x"]))))
    return answers


EVERY_SHAPE = [b"pitch 1", b"pitch 2", b"pitch 3", [b"0", b"1", b"2"], b"2", [b"X"]]


def _one_client_span_per_call(spans: list[dict[str, Any]], calls: int) -> list[dict[str, Any]]:
    clients = [s for s in spans if s["kind"] == "client"]
    servers = {s["parent_span_id"]: s for s in spans if s["kind"] == "server"}
    assert len(clients) == calls
    for client in clients:  # each server span continues its call's one client span
        assert servers[client["span_id"]]["name"] == client["name"]
    return clients


def test_instrument_grpc_a_channel_given_our_interceptor_by_hand_is_traced_once(target: str) -> None:
    instrument_grpc()
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with grpc.insecure_channel(target) as raw:
                channel = grpc.intercept_channel(raw, client_interceptor(target))
                with pt.span("request"):
                    answers = _every_call_shape(channel)
            spans = settle(mem, 1 + 6 + 6 + 3 + 3)
            time.sleep(0.2)  # (a second client span would end about now)
            spans = settle(mem, 0)
    finally:
        uninstrument_grpc()
    assert errors == []
    assert answers == EVERY_SHAPE
    clients = _one_client_span_per_call(spans, 6)
    (request,) = [s for s in spans if s["name"] == "request"]
    assert {c["parent_span_id"] for c in clients} == {request["span_id"]}


def test_instrument_grpc_the_apps_channel_interceptors_see_the_calls_traceparent(target: str) -> None:
    seen: list[tuple[str, str]] = []
    instrument_grpc()
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with grpc.insecure_channel(target) as raw:
                # grpc runs a, then b; wrapping again puts c outside them: c, a, b
                inner = grpc.intercept_channel(raw, Recording("a", seen), Recording("b", seen))
                channel = grpc.intercept_channel(inner, Recording("c", seen))
                plain_answers = _every_call_shape(inner)
                answers = _every_call_shape(channel)
            spans = settle(mem, 12 + 12 + 3 + 3)
            time.sleep(0.2)
            spans = settle(mem, 0)
    finally:
        uninstrument_grpc()
    assert errors == []
    assert plain_answers == answers == EVERY_SHAPE
    clients = _one_client_span_per_call(spans, 12)
    # ours runs first, so every interceptor of the app sees the traceparent of the call's span
    parents = {f"00-{c['trace_id']}-{c['span_id']}" for c in clients}
    assert [label for label, _ in seen] == ["a", "b"] * 6 + ["c", "a", "b"] * 6
    assert {traceparent[:-3] for _, traceparent in seen} == parents


def test_instrument_grpc_an_intercept_channel_imported_before_still_runs_ours_first(target: str) -> None:
    # what `from grpc import intercept_channel` in a module imported before instrument_grpc()
    # holds: the original function, not the one instrument_grpc() puts on the grpc module
    bound_before = grpc.intercept_channel
    seen: list[tuple[str, str]] = []
    instrument_grpc()
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with grpc.insecure_channel(target) as raw:
                inner = bound_before(raw, Recording("a", seen), Recording("b", seen))
                channel = bound_before(inner, Recording("c", seen))
                plain_answers = _every_call_shape(inner)
                answers = _every_call_shape(channel)
                # one of ours by hand, through the early-bound function: still one span a call
                by_hand = bound_before(raw, client_interceptor(target), Recording("d", seen))
                by_hand_answers = _every_call_shape(by_hand)
            spans = settle(mem, 18 + 18 + 3 * 3)
            time.sleep(0.2)
            spans = settle(mem, 0)
    finally:
        uninstrument_grpc()
    assert errors == []
    assert plain_answers == answers == by_hand_answers == EVERY_SHAPE
    clients = _one_client_span_per_call(spans, 18)
    parents = {f"00-{c['trace_id']}-{c['span_id']}" for c in clients}
    assert [label for label, _ in seen] == ["a", "b"] * 6 + ["c", "a", "b"] * 6 + ["d"] * 6
    assert {traceparent[:-3] for _, traceparent in seen} == parents


def test_uninstrument_grpc_restores_intercept_channel_and_made_channels_stay_traced_once(target: str) -> None:
    from grpc import _interceptor

    original, private = grpc.intercept_channel, _interceptor.intercept_channel
    instrument_grpc()
    try:
        assert grpc.intercept_channel is not original
        assert _interceptor.intercept_channel is not private  # (what the public one calls)
        raw = grpc.insecure_channel(target)
    finally:
        uninstrument_grpc()
    assert grpc.intercept_channel is original
    assert _interceptor.intercept_channel is private
    try:
        with capture_spans() as mem:
            # wrapped by the original intercept_channel: ours by hand outside the factory's
            channel = grpc.intercept_channel(raw, client_interceptor(target))
            assert channel.unary_unary(f"/{SERVICE}/Get")(b"4").startswith(b"pitch 4 00-")
            spans = settle(mem, 3)
            time.sleep(0.2)
            spans = settle(mem, 0)
    finally:
        raw.close()
    _one_client_span_per_call(spans, 1)


def test_nested_client_interceptors_make_one_span_and_leave_other_calls_alone(target: str) -> None:
    other_calls: list[bytes] = []

    class TokenFetcher(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        """An app interceptor that makes a call of its own (an auth token) on another channel."""

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            if details.method.endswith("/Get"):
                other_calls.append(token_channel.stream_unary(f"/{SERVICE}/Upload")(iter([b"tok"])))
            return continuation(details, request)

    with capture_spans() as mem, grpc.insecure_channel(target) as raw, grpc.insecure_channel(target) as other:
        token_channel = grpc.intercept_channel(other, client_interceptor(target))
        traced = grpc.intercept_channel(raw, client_interceptor(target))
        channel = grpc.intercept_channel(
            grpc.intercept_channel(traced, TokenFetcher()), client_interceptor(target)
        )
        with pt.span("request"):
            answer = channel.unary_unary(f"/{SERVICE}/Get")(b"5")
        spans = settle(mem, 1 + 3 + 2)
        time.sleep(0.2)
        spans = settle(mem, 0)
    assert answer.startswith(b"pitch 5 00-")
    assert other_calls == [b"3"]
    clients = _one_client_span_per_call(spans, 2)  # Get once, and the token call
    assert sorted(c["name"] for c in clients) == [f"{SERVICE}/Get", f"{SERVICE}/Upload"]
