"""Session 18 review, against real servers on 127.0.0.1: a redis-server (error replies that echo
the command's arguments stay out of the spans; the Redis error prefix is recorded; no password
as a captured key) and an in-process gRPC server (a request stream the client cancels is no
server error). The Redis helpers' own tests (bounded texts, keyless commands, error messages)
need no server; they live here too (a tests/unit module of the same basename would clash)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio
import redis.exceptions

import pitchey_trace as pt
from pitchey_trace import redis as pt_redis
from pitchey_trace.grpc import client_interceptor, server_interceptor
from pitchey_trace.redis import instrument_redis, uninstrument_redis
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support import redisserver
from tests.support.instrumentation import instrumented_fixture

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-token-9f8e7d"


# shared fixtures: a redis-server for the module, redis-py traced
redis_port = redisserver.redis_port
traced = instrumented_fixture(instrument_redis, uninstrument_redis)


def test_redis_error_replies_keep_the_commands_values_out_of_the_spans(redis_port: int, traced: None) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    client.set("list-or-not", "a string")

    async def asyncio_calls() -> None:
        aclient = redis.asyncio.Redis(host="127.0.0.1", port=redis_port)
        try:
            pipe = aclient.pipeline(transaction=False)
            pipe.lpush("list-or-not", SECRET)
            with pytest.raises(redis.exceptions.ResponseError):
                await pipe.execute()
        finally:
            await aclient.aclose()

    with capture_spans() as mem, swallowed_errors() as errors:
        # redis-server answers "unknown command 'NOSUCHCMD', with args beginning with: '<SECRET>'"
        with pytest.raises(redis.exceptions.ResponseError, match=SECRET):
            client.execute_command("NOSUCHCMD", SECRET)
        with pytest.raises(redis.exceptions.ResponseError):
            client.lpush("list-or-not", SECRET)
        # redis-py names the failed command of a pipeline with its arguments
        pipe = client.pipeline(transaction=False)
        pipe.lpush("list-or-not", SECRET)
        with pytest.raises(redis.exceptions.ResponseError, match=SECRET):
            pipe.execute()
        asyncio.run(asyncio_calls())
        pt.force_flush(5)
        spans = mem.spans()
    client.close()
    assert errors == []
    assert [s["name"] for s in spans] == ["NOSUCHCMD", "LPUSH", "PIPELINE", "PIPELINE"]
    assert SECRET not in repr(spans)
    unknown, wrongtype, pipeline, async_pipeline = spans
    assert unknown["status"] == "error"
    assert unknown["status_message"] == "ResponseError: unknown command ?, with args beginning with: ?"
    assert unknown["attributes"]["db.response.status_code"] == "ERR"
    assert unknown["events"][0]["attributes"]["exception.message"] == (
        "unknown command ?, with args beginning with: ?"
    )
    assert wrongtype["attributes"]["db.response.status_code"] == "WRONGTYPE"
    assert wrongtype["attributes"]["error.type"] == "ResponseError"
    for span in (pipeline, async_pipeline):
        assert span["attributes"]["db.response.status_code"] == "WRONGTYPE"
        assert span["status_message"] == (
            "ResponseError: Command # 1 (LPUSH) of pipeline caused error: "
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )


def test_redis_capture_keys_records_no_password(redis_port: int) -> None:
    instrument_redis(capture_keys=True)
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    try:
        with capture_spans() as mem:
            with pytest.raises(redis.exceptions.AuthenticationError):
                client.auth(SECRET, "alice")
            client.echo(SECRET)
            client.get("cart:42")
            pt.force_flush(5)
            spans = mem.spans()
    finally:
        client.close()
        uninstrument_redis()
    assert [(s["name"], s["attributes"].get("db.redis.key")) for s in spans] == [
        ("AUTH", None),
        ("ECHO", None),
        ("GET", "cart:42"),
    ]
    assert SECRET not in repr(spans)


# -- Redis helpers (a redis-py client object, nothing sent) -------------------------------------


@pytest.fixture
def fresh_texts() -> Iterator[None]:
    pt_redis._texts.clear()
    yield
    pt_redis._texts.clear()


def test_a_huge_commands_text_is_bounded_and_cached_once(fresh_texts: None) -> None:
    client = redis.Redis()  # (no connection is made: only the span is started)
    cap = pt_redis.MAX_TEXT_ARGUMENTS
    with capture_spans() as mem:
        for n in range(5_000, 5_200):
            span = pt_redis._start_command(client, ("DEL", *(f"k{i}" for i in range(n))))
            assert span is not None
            span.end()
        small = pt_redis._start_command(client, ("MSET", "a", "1", "b", "2"))
        assert small is not None
        small.end()
        pt.force_flush(5)
        spans = mem.spans()
    texts = [s["attributes"]["db.query.text"] for s in spans]
    assert texts[0] == "DEL " + " ".join("?" * cap) + " ..."
    assert len(set(texts[:-1])) == 1
    assert texts[-1] == "MSET ? ? ? ?"
    # one cache entry for every DEL past the cap (it held 200 texts of 10 kB each)
    assert sum(len(text) for text in pt_redis._texts.values()) < 1_000
    # exactly at the cap: every argument shown, no marker
    assert pt_redis._text(("DEL", *("k" * cap))) == "DEL " + " ".join("?" * cap)
    assert pt_redis._text(("DEL", *("k" * (cap + 1)))).endswith("? ...")


@pytest.mark.parametrize(
    "args",
    [
        ("AUTH", "hunter2"),
        ("AUTH", "alice", "hunter2"),
        ("AUTH alice hunter2",),
        ("HELLO", 3, "AUTH", "alice", "hunter2"),
        ("EVAL", "return 'hunter2'", 0),
        ("ECHO", "hunter2"),
        ("MIGRATE", "hunter2.example", 6379, "", 0, 5000, "AUTH", "pw"),
    ],
)
def test_capture_keys_never_takes_a_password_script_or_message(args: tuple[object, ...]) -> None:
    assert pt_redis._key(args) is None
    instrument_redis(capture_keys=True)
    try:
        with capture_spans() as mem:
            span = pt_redis._start_command(redis.Redis(), args)
            assert span is not None
            span.end()
            pt.force_flush(5)
            (record,) = mem.spans()
    finally:
        uninstrument_redis()
    assert "db.redis.key" not in record["attributes"]
    assert "hunter2" not in repr(record)


def test_keys_are_still_captured_for_key_commands() -> None:
    assert pt_redis._key(("GET", "cart:42")) == "cart:42"
    assert pt_redis._key(("SET cart:42 v",)) == "cart:42"


@pytest.mark.parametrize(
    ("exc", "prefix", "message"),
    [
        (
            redis.exceptions.ResponseError("unknown command 'FOO', with args beginning with: 's3cr3t' 'x' "),
            None,  # (redis-py < 8 gives no status_code and took ERR off)
            "unknown command ?, with args beginning with: ? ?",
        ),
        (
            redis.exceptions.ResponseError(
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
            "WRONGTYPE",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ),
        (
            redis.exceptions.ResponseError(
                "Command # 2 (LPUSH k s3cr3t) of pipeline caused error: WRONGTYPE Operation against a key"
            ),
            "WRONGTYPE",
            "Command # 2 (LPUSH) of pipeline caused error: WRONGTYPE Operation against a key",
        ),
        (
            redis.exceptions.ResponseError(
                "Command # 1 (SET s3cr3t (x)) of pipeline caused error: ('WRONGTYPE Operation',)"
            ),
            "WRONGTYPE",
            "Command # 1 (SET) of pipeline caused error: WRONGTYPE Operation",
        ),
        (
            redis.exceptions.ResponseError("ERR Error running script\nuser_script:1: s3cr3t"),
            "ERR",
            "ERR Error running script",
        ),
        (
            redis.exceptions.ConnectionError("Error 111 connecting to localhost:1."),
            None,
            "Error 111 connecting to localhost:1.",
        ),
    ],
)
def test_error_messages_keep_no_value_of_the_command(
    exc: Exception, prefix: str | None, message: str
) -> None:
    got_prefix, got_message = pt_redis._error_info(exc)
    if prefix is not None or not isinstance(exc, redis.exceptions.ResponseError):
        assert got_prefix == prefix
    assert got_message == message
    assert "s3cr3t" not in got_message


# -- gRPC ----------------------------------------------------------------------------------------
SERVICE = "review.Uploads"


def test_grpc_a_request_stream_the_client_cancels_is_cancelled_not_a_server_error() -> None:
    reading = threading.Event()
    release = threading.Event()
    seen: list[Any] = []

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        count = 0
        try:
            for _ in requests:  # raises once the client has cancelled
                count += 1
                reading.set()
        except grpc.RpcError as exc:
            seen.append(exc)
            raise
        return b"%d" % count

    def requests() -> Iterator[bytes]:
        yield b"first"
        release.wait(10)  # the stream stays open until the client cancels

    handlers = {"Upload": grpc.stream_unary_rpc_method_handler(upload)}
    server = grpc.server(ThreadPoolExecutor(2), interceptors=[server_interceptor()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        with capture_spans() as mem, swallowed_errors() as errors:
            with grpc.insecure_channel(target) as raw:
                channel = grpc.intercept_channel(raw, client_interceptor(target))
                future = channel.stream_unary(f"/{SERVICE}/Upload").future(requests())
                assert reading.wait(10)
                future.cancel()
                done = threading.Event()
                future.add_done_callback(lambda _: done.set())
                assert done.wait(10)
                # (only now may the request stream end: ended before the cancellation reached
                # the server, the handler's loop would finish normally, as it did once in CI)
                release.set()
            # the handler's span ends when its request iterator has raised
            for _ in range(200):
                pt.force_flush(5)
                if len([s for s in mem.spans() if s["kind"] == "server"]) == 1:
                    break
                threading.Event().wait(0.05)
            spans = mem.spans()
    finally:
        release.set()
        server.stop(None)
    assert errors == []
    assert len(seen) == 1  # the handler did see the cancellation as an exception
    (server_span,) = [s for s in spans if s["kind"] == "server"]
    (client_span,) = [s for s in spans if s["kind"] == "client"]
    assert client_span["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert server_span["trace_id"] == client_span["trace_id"]
    # CANCELLED, what the client got; not UNKNOWN, and no server error (not in the server's list)
    assert server_span["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert server_span["status"] == "unset"
    assert "error.type" not in server_span["attributes"]


def test_a_redis_pipeline_of_one_command_has_no_batch_size(redis_port: int, traced: None) -> None:
    """The conventions count batches from two operations: ``db.operation.batch.size`` is never 1."""
    client = redis.Redis(port=redis_port)
    client.delete("one-counter")
    with capture_spans() as mem:
        pipe = client.pipeline(transaction=False)
        pipe.incrby("one-counter", 1)
        assert pipe.execute() == [1]
        with client.pipeline() as tx:
            tx.get("one-counter").get("one-counter")
            assert tx.execute() == [b"1", b"1"]
    one, two = mem.spans()
    assert (one["name"], two["name"]) == ("PIPELINE", "MULTI")
    assert "db.operation.batch.size" not in one["attributes"]
    assert one["attributes"]["db.query.text"] == "INCRBY ? ?"
    assert two["attributes"]["db.operation.batch.size"] == 2
