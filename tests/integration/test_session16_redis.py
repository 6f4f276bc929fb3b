"""pitchey_trace.redis against a real redis-server on 127.0.0.1: commands given as one string
with their arguments (``execute_command("SET key value")``, which redis-py splits before
sending) keep their keys, values and passwords out of the spans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import pitchey_trace as pt
from pitchey_trace import redis as pt_redis
from pitchey_trace.redis import instrument_redis, uninstrument_redis
from pitchey_trace.testing import capture_spans
from tests.support.redisserver import redis_server

pytestmark = pytest.mark.integration

SECRETS = ("alice", "s3cr3t", "hunter2", "ALICE", "S3CR3T", "HUNTER2")


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_server() as port:
        yield port


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_redis()
    yield
    uninstrument_redis()


def test_a_command_string_holding_its_arguments_shows_none_of_them(redis_port: int, traced: None) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    with capture_spans() as mem:
        client.execute_command("SET session:alice s3cr3t")
        assert client.execute_command(b"GET session:alice") == b"s3cr3t"
        with pytest.raises(redis.exceptions.RedisError):
            client.execute_command("AUTH hunter2")  # (no password set: refused, still traced)
        client.execute_command("ACL WHOAMI")
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("SET session:alice s3cr3t")
        pipe.execute_command("GET", "session:alice")
        pipe.execute()
        pt.force_flush(5)
        spans = mem.spans()
    client.close()
    texts = [(s["name"], s["attributes"]["db.query.text"]) for s in spans]
    assert texts == [
        ("SET", "SET ? ?"),
        ("GET", "GET ?"),
        ("AUTH", "AUTH ?"),
        ("ACL", "ACL WHOAMI"),
        ("PIPELINE", "SET ? ?; GET ?"),
    ]
    for span in spans:
        assert not any(secret in repr(span) for secret in SECRETS), span
    # nor are they kept in the module's cache of texts
    assert not any(secret in repr(pt_redis._texts) for secret in SECRETS)


def test_capture_keys_takes_the_key_from_a_command_string(redis_port: int) -> None:
    instrument_redis(capture_keys=True)
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    try:
        with capture_spans() as mem:
            client.execute_command("SET cart:42 s3cr3t")
            client.execute_command("CONFIG GET maxmemory")
            pt.force_flush(5)
            spans = mem.spans()
    finally:
        client.close()
        uninstrument_redis()
    assert [s["attributes"].get("db.redis.key") for s in spans] == ["cart:42", None]
    assert spans[1]["attributes"]["db.query.text"] == "CONFIG GET ?"
    assert "s3cr3t" not in repr(spans)
