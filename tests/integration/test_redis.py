"""pitchey_trace.redis against real redis-servers on 127.0.0.1: a plain server (sync and asyncio
clients, Pub/Sub) and a one-node cluster (sync and asyncio cluster clients)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

import pitchey_trace as pt
from pitchey_trace.redis import instrument_redis, uninstrument_redis
from pitchey_trace.testing import capture_spans
from tests.support.redisserver import redis_cluster_server, redis_server

pytestmark = pytest.mark.integration
# The cluster tests share one cluster server (it takes a couple of seconds to form).
cluster_group = pytest.mark.xdist_group("redis_cluster")
WRAPPED = "__pitchey_trace_wrapped__"


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_server() as port:
        yield port


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    with redis_cluster_server() as port:
        yield port


@pytest.fixture
def cluster(cluster_port: int) -> Iterator[redis.cluster.RedisCluster]:
    """A sync cluster client, built before any span is captured (building one asks a node for
    the slots)."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
    yield client
    client.close()


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_redis()
    instrument_redis()  # idempotent
    yield
    uninstrument_redis()


def test_commands_are_client_spans_without_keys_or_values(redis_port: int, traced: None) -> None:
    client = redis.Redis(port=redis_port, db=3)
    with capture_spans() as mem:
        with pt.span("request"):
            client.set("user:alice@example.com", "secret-token-value")
            assert client.get("user:alice@example.com") == b"secret-token-value"
            client.hset("profile:7", mapping={"email": "alice@example.com"})
            assert client.client_setname("worker-1")
    *commands, request = mem.spans()
    assert request["name"] == "request"
    assert [c["name"] for c in commands] == ["SET", "GET", "HSET", "CLIENT"]
    assert {c["parent_span_id"] for c in commands} == {request["span_id"]}
    set_, get, hset, setname = commands
    assert set_["kind"] == "client"
    assert set_["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "SET",
        "db.namespace": "3",
        "server.address": "localhost",
        "server.port": redis_port,
        "db.query.text": "SET ? ?",
    }
    assert get["attributes"]["db.query.text"] == "GET ?"
    assert hset["attributes"]["db.query.text"] == "HSET ? ? ?"
    assert setname["attributes"]["db.query.text"] == "CLIENT SETNAME ?"
    exported = str(mem.records)
    assert "alice" not in exported
    assert "secret-token" not in exported


def test_captured_keys_go_through_the_sanitizer(redis_port: int, traced: None) -> None:
    instrument_redis(capture_keys=True)
    client = redis.Redis(port=redis_port)
    with capture_spans() as mem:
        client.get("cart:42")
        client.get("session:alice@example.com")
    cart, session = mem.spans()
    assert cart["attributes"]["db.query.text"] == "GET ?"
    assert cart["attributes"]["db.redis.key"] == "cart:42"
    assert "alice@example.com" not in session["attributes"]["db.redis.key"]  # a masked e-mail


def test_pipelines_transactions_and_errors(redis_port: int, traced: None) -> None:
    client = redis.Redis(port=redis_port)
    client.delete("counter", "a-list")
    with capture_spans() as mem:
        pipe = client.pipeline(transaction=False)
        pipe.incrby("counter", 1).incrby("counter", 1).get("counter")
        assert pipe.execute() == [1, 2, b"2"]
        with client.pipeline() as tx:
            tx.set("a", 1).lpush("a-list", "x")
            tx.execute()
        client.set("text", "x")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            client.lpush("text", "y")
    plain, multi, _set, wrong = mem.spans()
    assert plain["name"] == "PIPELINE"
    assert plain["attributes"]["db.operation.batch.size"] == 3
    assert plain["attributes"]["db.query.text"] == "INCRBY ? ?; INCRBY ? ?; GET ?"
    assert multi["name"] == "MULTI"
    assert multi["attributes"]["db.operation.batch.size"] == 2
    assert wrong["status"] == "error"
    assert wrong["attributes"]["error.type"] == "ResponseError"
    assert [e["name"] for e in wrong["events"]] == ["exception"]


def test_asyncio_client_suppression_and_uninstrument(redis_port: int, traced: None) -> None:
    async def calls() -> list[Any]:
        client = redis.asyncio.Redis(port=redis_port)
        try:
            with pt.span("job"):
                await client.set("k", "v")
                async with client.pipeline() as pipe:
                    got = await pipe.get("k").exists("k").execute()
                with pt.suppress_tracing():
                    await client.get("k")
            return got  # type: ignore[no-any-return]
        finally:
            await client.aclose()

    with capture_spans() as mem:
        assert asyncio.run(calls()) == [b"v", 1]
        uninstrument_redis()
        redis.Redis(port=redis_port).get("k")
    names = [s["name"] for s in mem.spans()]
    assert names == ["SET", "MULTI", "job"]  # nothing suppressed, nothing after uninstrument
    job = mem.spans("job")[0]
    assert {s["parent_span_id"] for s in mem.spans() if s["name"] != "job"} == {job["span_id"]}


def test_asyncio_pipeline_without_transaction_is_a_pipeline(redis_port: int, traced: None) -> None:
    # (redis.asyncio's Pipeline keeps the flag in is_transaction; .transaction is a method)
    async def calls() -> None:
        client = redis.asyncio.Redis(port=redis_port)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set("k", "v")
                pipe.get("k")
                assert await pipe.execute() == [True, b"v"]
            async with client.pipeline() as pipe:
                pipe.get("k")
                await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                pipe.multi()  # type: ignore[no-untyped-call]  # an explicit transaction
                pipe.set("k", "w")
                await pipe.execute()
        finally:
            await client.aclose()

    with capture_spans() as mem:
        asyncio.run(calls())
    assert [s["name"] for s in mem.spans()] == ["PIPELINE", "MULTI", "MULTI"]
    assert mem.spans()[0]["attributes"]["db.operation.name"] == "PIPELINE"


def test_watch_mode_commands_are_spans(redis_port: int, traced: None) -> None:
    # WATCH and the reads before MULTI go through Pipeline.immediate_execute_command.
    client = redis.Redis(port=redis_port)
    client.set("balance", 10)

    def withdraw(pipe: Any) -> None:
        balance = int(pipe.get("balance"))
        pipe.multi()
        pipe.set("balance", balance - 1)

    with capture_spans() as mem:
        with pt.span("request"):
            assert client.transaction(withdraw, "balance") == [True]
            with client.pipeline() as pipe:
                pipe.watch("balance")  # type: ignore[no-untyped-call]
                assert pipe.get("balance") == b"9"
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    pipe.lpush("balance", "x")
                pipe.multi()
                pipe.incr("balance")
                assert pipe.execute() == [10]
    *commands, request = mem.spans()
    assert [(s["name"], s["attributes"]["db.query.text"]) for s in commands] == [
        ("WATCH", "WATCH ?"),
        ("GET", "GET ?"),
        ("MULTI", "SET ? ?"),
        ("WATCH", "WATCH ?"),
        ("GET", "GET ?"),
        ("LPUSH", "LPUSH ? ?"),
        ("MULTI", "INCRBY ? ?"),
    ]
    assert {s["parent_span_id"] for s in commands} == {request["span_id"]}
    assert commands[0]["attributes"]["server.port"] == redis_port
    assert commands[5]["status"] == "error"
    assert commands[5]["attributes"]["error.type"] == "ResponseError"


def test_asyncio_watch_mode_commands_are_spans(redis_port: int, traced: None) -> None:
    async def calls() -> list[Any]:
        client = redis.asyncio.Redis(port=redis_port)
        await client.set("stock", 5)

        async def take(pipe: Any) -> None:
            stock = int(await pipe.get("stock"))
            pipe.multi()
            pipe.set("stock", stock - 1)

        try:
            with pt.span("job"):
                return await client.transaction(take, "stock")  # type: ignore[no-any-return]
        finally:
            await client.aclose()

    with capture_spans() as mem:
        assert asyncio.run(calls()) == [True]
        uninstrument_redis()
        assert not hasattr(redis.client.Pipeline.immediate_execute_command, WRAPPED)
        assert not hasattr(redis.asyncio.client.Pipeline.immediate_execute_command, WRAPPED)
        redis.Redis(port=redis_port).transaction(lambda pipe: None, "stock")
    assert [s["name"] for s in mem.spans()] == ["SET", "WATCH", "GET", "MULTI", "job"]
    assert mem.spans("MULTI")[0]["attributes"]["db.query.text"] == "SET ? ?"


def test_connection_failure_is_recorded(traced: None) -> None:
    client = redis.Redis(port=9, socket_connect_timeout=1)  # nothing listens on port 9
    with capture_spans() as mem:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    [span] = mem.spans()
    assert span["name"] == "PING"
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionError"


# --- Cluster clients ---------------------------------------------------------------------------


@cluster_group
def test_cluster_commands_are_one_span_each(cluster: redis.cluster.RedisCluster, traced: None) -> None:
    # ZUNIONSTORE has "movable" keys: redis-py asks a node's plain Redis client for them
    # (COMMAND GETKEYS), which must not give spans of its own. Count those inner calls so the
    # test shows they happen.
    node_client = cluster.get_default_node().redis_connection
    assert node_client is not None
    inner: list[Any] = []
    traced_execute = type(node_client).execute_command
    assert hasattr(traced_execute, WRAPPED)

    def counting(*args: Any, **kwargs: Any) -> Any:
        inner.append(args[0])
        return traced_execute(node_client, *args, **kwargs)

    node_client.execute_command = counting
    cluster.delete("{z}a", "{z}b")
    with capture_spans() as mem:
        with pt.span("request"):
            cluster.set("user:alice@example.com", "secret-token-value")
            assert cluster.get("user:alice@example.com") == b"secret-token-value"
            cluster.zadd("{z}a", {"m": 1})
            assert cluster.zunionstore("{z}dest", ["{z}a", "{z}b"]) == 1
            assert cluster.ping() is True
    assert inner
    assert all(str(c).upper().startswith("COMMAND GETKEYS") for c in inner)
    *commands, request = mem.spans()
    assert request["name"] == "request"
    assert [c["name"] for c in commands] == ["SET", "GET", "ZADD", "ZUNIONSTORE", "PING"]
    assert {c["parent_span_id"] for c in commands} == {request["span_id"]}
    set_, _get, _zadd, zunion, _ping = commands
    assert set_["kind"] == "client"
    # No node address (redis-py picks the node) and no database number (always 0).
    assert set_["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "SET",
        "db.query.text": "SET ? ?",
    }
    assert zunion["attributes"]["db.query.text"] == "ZUNIONSTORE ? ? ? ?"
    exported = str(mem.records)
    assert "alice" not in exported
    assert "secret-token" not in exported


@cluster_group
def test_building_cluster_clients(cluster_port: int, traced: None) -> None:
    async def first_command() -> Any:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        try:
            return await client.get("{b}missing")  # discovers the slots first, inside its span
        finally:
            await client.aclose()

    with capture_spans() as mem:
        redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_port).close()
        assert asyncio.run(first_command()) is None
    slots, command, get = mem.spans()
    # The sync client asks a node's plain client for the slots, then itself for the commands.
    assert slots["attributes"]["db.query.text"] == "CLUSTER SLOTS"
    assert slots["attributes"]["server.port"] == cluster_port
    assert command["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "COMMAND",
        "db.query.text": "COMMAND",
    }
    assert get["name"] == "GET"


@cluster_group
def test_cluster_pipelines_and_transactions(cluster: redis.cluster.RedisCluster, traced: None) -> None:
    cluster.delete("{p}counter")
    with capture_spans() as mem:
        with cluster.pipeline() as pipe:
            pipe.incrby("{p}counter", 2).incrby("{p}counter", 3).get("{p}counter")
            assert pipe.execute() == [2, 5, b"5"]
            assert pipe.execute() == []  # nothing queued: no span
        with cluster.pipeline(transaction=True) as tx:
            tx.set("{p}a", 1).get("{p}a")
            assert tx.execute()[1] == b"1"
        cluster.mset_nonatomic({"x": 1, "y": 2})  # a pipeline inside redis-py: one span
    plain, multi, nonatomic = mem.spans()
    assert plain["name"] == "PIPELINE"
    assert plain["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "PIPELINE",
        "db.operation.batch.size": 3,
        "db.query.text": "INCRBY ? ?; INCRBY ? ?; GET ?",
    }
    assert multi["name"] == "MULTI"
    assert multi["attributes"]["db.operation.batch.size"] == 2
    assert multi["attributes"]["db.query.text"] == "SET ? ?; GET ?"
    assert nonatomic["name"] == "PIPELINE"
    assert nonatomic["attributes"]["db.query.text"] == "MSET ? ?; MSET ? ?"


@cluster_group
def test_cluster_errors_are_recorded_and_reraised(cluster: redis.cluster.RedisCluster, traced: None) -> None:
    cluster.set("{e}text", "x")
    with capture_spans() as mem:
        with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE") as wrongtype:
            cluster.lpush("{e}text", "y")
        with pytest.raises(redis.RedisClusterException, match="same key slot"):
            cluster.execute_command("MGET", "left", "right")  # keys in different slots
        pipe = cluster.pipeline()
        pipe.get("{e}text").lpush("{e}text", "y")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            pipe.execute()
    assert type(wrongtype.value) is redis.ResponseError  # re-raised unchanged
    lpush, mget, pipeline = mem.spans()
    assert lpush["name"] == "LPUSH"
    assert lpush["status"] == "error"
    assert lpush["attributes"]["error.type"] == "ResponseError"
    assert [e["name"] for e in lpush["events"]] == ["exception"]
    assert mget["status"] == "error"
    assert mget["attributes"]["error.type"] == "RedisClusterException"
    assert pipeline["name"] == "PIPELINE"
    assert pipeline["status"] == "error"
    assert pipeline["attributes"]["error.type"] == "ResponseError"


@cluster_group
def test_asyncio_cluster_commands_pipelines_and_errors(cluster_port: int, traced: None) -> None:
    async def calls() -> list[Any]:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        try:
            with pt.span("job"):
                await client.set("{a}k", "v")  # the first command also discovers the slots
                assert await client.get("{a}k") == b"v"
                async with client.pipeline() as pipe:
                    got = await pipe.get("{a}k").exists("{a}k").execute()
                async with client.pipeline(transaction=True) as tx:
                    got += await tx.set("{a}n", 1).incr("{a}n").execute()
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    await client.lpush("{a}k", "x")
                with pt.suppress_tracing():
                    await client.get("{a}k")
            return got
        finally:
            await client.aclose()

    with capture_spans() as mem:
        assert asyncio.run(calls()) == [b"v", 1, True, 2]
    names = [s["name"] for s in mem.spans()]
    assert names == ["SET", "GET", "PIPELINE", "MULTI", "LPUSH", "job"]
    set_, _get, pipeline, multi, lpush, job = mem.spans()
    assert {s["parent_span_id"] for s in (set_, pipeline, multi, lpush)} == {job["span_id"]}
    assert set_["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "SET",
        "db.query.text": "SET ? ?",
    }
    assert pipeline["attributes"]["db.query.text"] == "GET ?; EXISTS ?"
    assert pipeline["attributes"]["db.operation.batch.size"] == 2
    assert multi["attributes"]["db.query.text"] == "SET ? ?; INCRBY ? ?"
    assert lpush["status"] == "error"
    assert lpush["attributes"]["error.type"] == "ResponseError"


@cluster_group
def test_cluster_watch_mode_commands_are_spans(cluster: redis.cluster.RedisCluster, traced: None) -> None:
    # As for a plain client: WATCH and the commands before multi() run at once (redis-py's
    # TransactionStrategy sends them on the watching connection, not through execute_command).
    cluster.set("{b}balance", 10)
    cluster.zadd("{b}scores", {"m": 1})

    def withdraw(pipe: Any) -> None:
        balance = int(pipe.get("{b}balance"))
        pipe.multi()
        pipe.set("{b}balance", balance - 1)

    with capture_spans() as mem:
        with pt.span("request"):
            cluster.transaction(withdraw, "{b}balance")
            with cluster.pipeline(transaction=True) as pipe:
                pipe.watch("{b}balance")
                assert pipe.get("{b}balance") == b"9"
                # its keys come from COMMAND GETKEYS: still one span, for ZUNIONSTORE
                assert pipe.zunionstore("{b}copy", ["{b}scores"]) == 1
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    pipe.lpush("{b}balance", "x")
                pipe.multi()
                pipe.incr("{b}balance")
                pipe.zunionstore("{b}copy", ["{b}scores", "{b}none"])  # queued: in MULTI's span
                assert pipe.execute() == [10, 1]
            with pt.suppress_tracing():
                cluster.transaction(withdraw, "{b}balance")
    *commands, request = mem.spans()
    assert [(s["name"], s["attributes"]["db.query.text"]) for s in commands] == [
        ("WATCH", "WATCH ?"),
        ("GET", "GET ?"),
        ("MULTI", "SET ? ?"),
        ("WATCH", "WATCH ?"),
        ("GET", "GET ?"),
        ("ZUNIONSTORE", "ZUNIONSTORE ? ? ?"),
        ("LPUSH", "LPUSH ? ?"),
        ("MULTI", "INCRBY ? ?; ZUNIONSTORE ? ? ? ?"),
    ]
    assert {s["parent_span_id"] for s in commands} == {request["span_id"]}
    assert commands[0]["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "WATCH",
        "db.query.text": "WATCH ?",
    }
    assert commands[6]["status"] == "error"
    assert commands[6]["attributes"]["error.type"] == "ResponseError"
    assert cluster.get("{b}balance") == b"9"


@cluster_group
def test_asyncio_cluster_watch_mode_commands_are_spans(cluster_port: int, traced: None) -> None:
    async def calls() -> list[Any]:
        client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port)
        await client.set("{s}stock", 5)
        # (no ZUNIONSTORE here: redis-py 8.1's asyncio TransactionStrategy asks for its keys on
        # a connection of a private event loop, and aclose() then fails, traced or not)

        async def take(pipe: Any) -> None:
            stock = int(await pipe.get("{s}stock"))
            assert await pipe.strlen("{s}stock") == 1
            pipe.multi()
            pipe.set("{s}stock", stock - 1)

        try:
            with pt.span("job"):
                return await client.transaction(take, "{s}stock")  # type: ignore[no-any-return]
        finally:
            await client.aclose()

    with capture_spans() as mem:
        assert asyncio.run(calls()) == [True]
    _set, *commands, job = mem.spans()
    assert job["name"] == "job"
    assert [(s["name"], s["attributes"]["db.query.text"]) for s in commands] == [
        ("WATCH", "WATCH ?"),
        ("GET", "GET ?"),
        ("STRLEN", "STRLEN ?"),
        ("MULTI", "SET ? ?"),
    ]
    assert {s["parent_span_id"] for s in commands} == {job["span_id"]}


@cluster_group
def test_cluster_capture_keys_and_uninstrument(cluster: redis.cluster.RedisCluster, traced: None) -> None:
    instrument_redis(capture_keys=True)
    pipe = cluster.pipeline()  # keeps RedisCluster.execute_command bound (parent_execute_command)
    with capture_spans() as mem:
        cluster.get("cart:42")
        cluster.get("session:alice@example.com")
        uninstrument_redis()
        cluster.get("cart:42")
        pipe.get("cart:42")
        assert pipe.execute() == [None]
        pipe.parent_execute_command("GET", "cart:42")
        cluster.pubsub().subscribe("after")
        cluster.transaction(lambda tx: tx.get("cart:42"), "cart:42")
    cart, session = mem.spans()  # nothing after uninstrument_redis()
    assert cart["attributes"]["db.query.text"] == "GET ?"
    assert cart["attributes"]["db.redis.key"] == "cart:42"
    assert "alice@example.com" not in session["attributes"]["db.redis.key"]  # a masked e-mail
    classes = [
        (redis.cluster.RedisCluster, "execute_command"),
        (redis.cluster.ClusterPipeline, "execute"),
        (redis.cluster.ClusterPubSub, "execute_command"),
        (redis.asyncio.cluster.RedisCluster, "execute_command"),
        (redis.asyncio.cluster.ClusterPipeline, "execute"),
        (redis.asyncio.cluster.ClusterPubSub, "execute_command"),
        (redis.cluster.TransactionStrategy, "execute_command"),
        (redis.cluster.TransactionStrategy, "_immediate_execute_command"),
        (redis.asyncio.cluster.TransactionStrategy, "_immediate_execute_command"),
        (redis.client.PubSub, "execute_command"),
        (redis.asyncio.client.PubSub, "execute_command"),
    ]
    assert [c for c, name in classes if hasattr(getattr(c, name), WRAPPED)] == []


def test_redis_py_without_cluster_modules() -> None:
    # An old or trimmed redis-py without redis.cluster / redis.asyncio.cluster: plain clients
    # are still instrumented, and instrument/uninstrument do not fail.
    code = """
import sys
import redis.client
sys.modules["redis.cluster"] = None
sys.modules["redis.asyncio.cluster"] = None
from pitchey_trace import redis as traced_redis
assert traced_redis._sync_cluster is None and traced_redis._async_cluster is None
traced_redis.instrument_redis()
assert hasattr(redis.client.Redis.execute_command, "__pitchey_trace_wrapped__")
assert len(traced_redis._patched) == 8, traced_redis._patched
traced_redis.uninstrument_redis()
assert not hasattr(redis.client.Redis.execute_command, "__pitchey_trace_wrapped__")
print("ok")
"""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# --- Pub/Sub -----------------------------------------------------------------------------------


def _next_message(pubsub: Any, kind: str) -> tuple[dict[str, Any], int]:
    """The next message of ``kind``, and how many messages were read to get it."""
    deadline = time.monotonic() + 10
    reads = 0
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None:
            reads += 1
            if message["type"] == kind:
                return message, reads
    raise AssertionError(f"no {kind} message")


def test_pubsub_commands_are_spans_received_messages_are_not(redis_port: int, traced: None) -> None:
    publisher = redis.Redis(port=redis_port)
    subscriber = redis.Redis(port=redis_port).pubsub()
    with capture_spans() as mem:
        with pt.span("listener"):
            subscriber.subscribe("orders:alice@example.com")
            subscriber.psubscribe("news.*")
            _, confirmations = _next_message(subscriber, "psubscribe")
            assert publisher.publish("orders:alice@example.com", "paid") == 1
            assert publisher.publish("news.today", "sunny") == 1
            order, _ = _next_message(subscriber, "message")
            news, _ = _next_message(subscriber, "pmessage")
            subscriber.ping()
            _next_message(subscriber, "pong")
            subscriber.unsubscribe()
            subscriber.punsubscribe()
        subscriber.close()
    # The application still works: the subscriber got what was published.
    assert (order["channel"], order["data"]) == (b"orders:alice@example.com", b"paid")
    assert (news["channel"], news["data"]) == (b"news.today", b"sunny")
    assert confirmations == 2
    # One span per command sent; none for the five messages received.
    *spans, listener = mem.spans()
    names = [s["name"] for s in spans]
    assert names == ["SUBSCRIBE", "PSUBSCRIBE", "PUBLISH", "PUBLISH", "PING", "UNSUBSCRIBE", "PUNSUBSCRIBE"]
    assert {s["parent_span_id"] for s in spans} == {listener["span_id"]}
    subscribe = spans[0]
    assert subscribe["kind"] == "client"
    assert subscribe["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "SUBSCRIBE",
        "db.namespace": "0",
        "server.address": "localhost",
        "server.port": redis_port,
        "db.query.text": "SUBSCRIBE ?",
    }
    assert [s["attributes"]["db.query.text"] for s in spans[1:4]] == [
        "PSUBSCRIBE ?",
        "PUBLISH ? ?",
        "PUBLISH ? ?",
    ]
    assert spans[-2]["attributes"]["db.query.text"] == "UNSUBSCRIBE"
    assert "alice" not in str(mem.records)


def test_asyncio_pubsub(redis_port: int, traced: None) -> None:
    async def calls() -> dict[str, Any]:
        publisher = redis.asyncio.Redis(port=redis_port)
        pubsub = publisher.pubsub()
        try:
            with pt.span("listener"):
                await pubsub.subscribe("events")
                deadline = time.monotonic() + 10
                received: dict[str, Any] | None = None
                while received is None and time.monotonic() < deadline:
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None and message["type"] == "subscribe":
                        assert await publisher.publish("events", "hello") == 1
                    elif message is not None and message["type"] == "message":
                        received = message
                await pubsub.unsubscribe("events")
            assert received is not None
            return received
        finally:
            await pubsub.aclose()
            await publisher.aclose()

    with capture_spans() as mem:
        message = asyncio.run(calls())
    assert message["data"] == b"hello"
    assert [s["name"] for s in mem.spans()] == ["SUBSCRIBE", "PUBLISH", "UNSUBSCRIBE", "listener"]
    assert mem.spans("UNSUBSCRIBE")[0]["attributes"]["db.query.text"] == "UNSUBSCRIBE ?"


@cluster_group
def test_cluster_pubsub_sync_and_asyncio(
    cluster: redis.cluster.RedisCluster, cluster_port: int, traced: None
) -> None:
    async def async_round_trip() -> bytes:
        client = await redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_port).initialize()
        pubsub = client.pubsub()  # (needs the slots: hence initialize())
        try:
            # async ClusterPubSub sends through PubSub.execute_command: still one span
            await pubsub.subscribe("async-channel")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=0.5)
                if message is not None and message["type"] == "subscribe":
                    await client.publish("async-channel", "hi")
                elif message is not None and message["type"] == "message":
                    return message["data"]  # type: ignore[no-any-return]
            raise AssertionError("no message")
        finally:
            await pubsub.aclose()
            await client.aclose()

    pubsub = cluster.pubsub()
    with capture_spans() as mem:
        pubsub.subscribe("sync-channel")
        _next_message(pubsub, "subscribe")
        cluster.publish("sync-channel", "hello")
        message, _ = _next_message(pubsub, "message")
        assert asyncio.run(async_round_trip()) == b"hi"
    pubsub.close()
    assert message["data"] == b"hello"
    spans = mem.spans()
    assert [s["name"] for s in spans] == ["SUBSCRIBE", "PUBLISH", "SUBSCRIBE", "PUBLISH"]
    for span in spans:
        assert "server.address" not in span["attributes"]
        assert "db.namespace" not in span["attributes"]
    assert spans[0]["attributes"]["db.query.text"] == "SUBSCRIBE ?"
