"""pitchey_trace.amqp against a real RabbitMQ node on 127.0.0.1 (session 18 review): a message
republished with the trace headers of another context, and aio-pika ``Queue.iterator()``
messages abandoned without being settled."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from typing import Any

import aio_pika
import pika
import pytest

import pitchey_trace as pt
from pitchey_trace import amqp
from pitchey_trace.amqp import instrument_amqp, uninstrument_amqp
from pitchey_trace.testing import capture_spans
from tests.support import rabbitmq
from tests.support.instrumentation import instrumented_fixture

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("rabbitmq")]

# The trace headers of a message consumed earlier, in another trace.
OLD_TRACEPARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
STALE = {"traceparent": OLD_TRACEPARENT, "tracestate": "vendor=stale", "baggage": "user=stale"}


# shared fixtures: a RabbitMQ node for the module, a pika channel on it, pika / aio-pika traced
amqp_port = rabbitmq.amqp_port
channel = rabbitmq.channel
traced = instrumented_fixture(instrument_amqp, uninstrument_amqp)


def test_pika_republished_message_carries_only_the_current_trace_headers(channel: Any, traced: None) -> None:
    """Properties of a consumed message published again (a retry, a forward): the new
    traceparent replaces the old one, and the old tracestate / baggage, which belong to the
    other trace, do not travel with it."""
    queue = f"s18-{uuid.uuid4().hex[:12]}"
    channel.queue_declare(queue)
    properties = pika.BasicProperties(headers={**STALE, "x-attempt": 2})
    with capture_spans() as mem:
        with pt.span("retry"):
            channel.basic_publish("", queue, b"x", properties)
    got: tuple[Any, Any, Any] = (None, None, None)
    deadline = time.monotonic() + 10
    while got[0] is None and time.monotonic() < deadline:
        got = channel.basic_get(queue, auto_ack=True)
    headers = got[1].headers
    (publish,) = mem.spans(f"publish {queue}")
    assert headers["traceparent"].startswith(f"00-{publish['trace_id']}-{publish['span_id']}-")
    assert "tracestate" not in headers
    assert "baggage" not in headers
    assert headers["x-attempt"] == 2
    assert properties.headers == {**STALE, "x-attempt": 2}  # the caller's object is untouched
    channel.queue_delete(queue)


def test_aio_pika_republished_message_carries_only_the_current_trace_headers(
    amqp_port: int, traced: None
) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("", exclusive=True)
            message = aio_pika.Message(b"x", headers={**STALE, "x-attempt": 2})
            with pt.span("retry"):
                await channel.default_exchange.publish(message, routing_key=queue.name)
            got = None
            for _ in range(100):
                got = await queue.get(fail=False, no_ack=True)
                if got is not None:
                    break
                await asyncio.sleep(0.05)
            assert got is not None
            return dict(got.headers), dict(message.headers)

    with capture_spans() as mem:
        headers, original = asyncio.run(main())
    (publish,) = [s for s in mem.spans() if s["name"].startswith("publish")]
    assert str(headers["traceparent"]).startswith(f"00-{publish['trace_id']}-{publish['span_id']}-")
    assert "tracestate" not in headers
    assert "baggage" not in headers
    assert headers["x-attempt"] == 2
    assert original == {**STALE, "x-attempt": 2}


def test_aio_pika_iterator_message_abandoned_unsettled_ends_when_its_channel_closes(
    amqp_port: int, traced: None
) -> None:
    """``break`` out of ``queue.iterator(no_ack=True)`` (nothing left to settle, the iterator
    never closed): the message's span ends and is exported once its channel closes, and
    nothing of it stays behind."""

    async def main() -> str:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"s18-{uuid.uuid4().hex[:12]}", auto_delete=True)
            with pt.span("send"):
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
            async for _message in queue.iterator(no_ack=True):
                with pt.span("handle"):
                    pass
                break
            await channel.close()
            await asyncio.sleep(0)  # (the channel's close callbacks run)
            return queue.name

    with capture_spans() as mem:
        queue = asyncio.run(main())
        gc.collect()
    (send,) = mem.spans("send")
    (process,) = mem.spans(f"process {queue}")
    (handle,) = mem.spans("handle")
    assert process["trace_id"] == send["trace_id"]
    assert handle["parent_span_id"] == process["span_id"]
    assert process["end_time_unix_nano"] >= handle["end_time_unix_nano"]
    assert amqp._open == {}
