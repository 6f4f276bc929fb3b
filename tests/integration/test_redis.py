"""pitchey_trace.redis against a real redis-server on 127.0.0.1 (sync and asyncio clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

import pitchey_trace as pt
from pitchey_trace.redis import instrument_redis, uninstrument_redis
from pitchey_trace.testing import capture_spans
from tests.support.redisserver import redis_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_server() as port:
        yield port


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


def test_connection_failure_is_recorded(traced: None) -> None:
    client = redis.Redis(port=9, socket_connect_timeout=1)  # nothing listens on port 9
    with capture_spans() as mem:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    [span] = mem.spans()
    assert span["name"] == "PING"
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ConnectionError"
