"""pitchey_trace.amqp against a real RabbitMQ node: pulled messages (pika ``basic_get``, on the
blocking and the asynchronous channels, aio-pika ``Queue.get``) and incoming trace headers of
the wrong shape (bytes, numbers, lists, tables, oversized values)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import aio_pika.exceptions
import pika
import pika.adapters.blocking_connection
import pytest

import pitchey_trace as pt
from pitchey_trace.amqp import instrument_amqp, uninstrument_amqp
from pitchey_trace.testing import capture_spans
from tests.support.instrumentation import instrumented
from tests.support.rabbitmq import rabbitmq_server

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("rabbitmq16b")]

TRACE = "7" * 32
PARENT = "8" * 16
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture(scope="module")
def amqp_port() -> Iterator[int]:
    with rabbitmq_server() as port:
        yield port


@pytest.fixture
def traced() -> Iterator[None]:
    with instrumented(instrument_amqp, uninstrument_amqp):
        yield


@pytest.fixture
def channel(amqp_port: int) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def new_queue(channel: Any) -> str:
    name = f"test16b-{uuid.uuid4().hex[:12]}"
    channel.queue_declare(name, auto_delete=False)
    return name


def test_pika_basic_get_is_a_receive_span_linked_to_the_publisher(channel: Any, traced: None) -> None:
    queue = new_queue(channel)
    with capture_spans() as mem:
        with pt.span("place order"):
            channel.basic_publish("", queue, b"order-body", pika.BasicProperties(message_id="o-1"))
        deadline = time.monotonic() + 10
        with pt.span("poll"):
            got = channel.basic_get(queue, auto_ack=True)
            while got[0] is None and time.monotonic() < deadline:
                got = channel.basic_get(queue, auto_ack=True)
        with pt.span("poll again"):
            assert channel.basic_get(queue, auto_ack=True) == (None, None, None)  # empty
    assert got[2] == b"order-body"
    (publish,) = mem.spans(f"publish {queue}")
    (poll,) = mem.spans("poll")
    (again,) = mem.spans("poll again")
    receives = mem.spans(f"receive {queue}")
    full = [s for s in receives if s["links"]]
    assert len(full) == 1
    (receive,) = full
    assert receive["kind"] == "consumer"
    assert receive["parent_span_id"] == poll["span_id"]  # the caller's span
    assert [(link["trace_id"], link["span_id"]) for link in receive["links"]] == [
        (publish["trace_id"], publish["span_id"])
    ]
    attrs = receive["attributes"]
    assert attrs["messaging.system"] == "rabbitmq"
    assert attrs["messaging.operation.type"] == "receive"
    assert attrs["messaging.operation.name"] == "receive"
    assert attrs["messaging.destination.name"] == ""
    assert attrs["messaging.rabbitmq.destination.routing_key"] == queue
    assert attrs["messaging.message.id"] == "o-1"
    assert attrs["messaging.message.body.size"] == len(b"order-body")
    assert attrs["messaging.rabbitmq.message.delivery_tag"] >= 1
    # an empty queue: a receive span without message attributes, no error
    (empty,) = [s for s in receives if s["parent_span_id"] == again["span_id"]]
    assert empty["status"] == "unset"
    assert "messaging.message.id" not in empty["attributes"]
    assert not mem.spans(f"process {queue}")  # basic_get alone processes nothing
    assert "order-body" not in json.dumps(mem.records, default=str)


def test_pika_async_channel_basic_get_callback_is_a_process_span(amqp_port: int, traced: None) -> None:
    """The asynchronous adapters' ``Channel.basic_get``: the callback handed the message runs
    under a ``process`` span continuing the publisher's trace."""
    queue = f"test16b-{uuid.uuid4().hex[:12]}"
    seen: list[Any] = []

    with capture_spans() as mem:
        with pt.span("publish side"):
            blocking = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port))
            ch = blocking.channel()
            ch.queue_declare(queue)
            ch.basic_publish("", queue, b"x")
            blocking.close()

        def on_get(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            seen.append(pt.current_span().trace_id)
            with pt.span("handle"):
                pass
            channel.connection.close()

        def on_channel(channel: Any) -> None:
            channel.basic_get(queue, on_get, auto_ack=True)

        connection = pika.SelectConnection(
            pika.ConnectionParameters("127.0.0.1", amqp_port),
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_close_callback=lambda c, reason: c.ioloop.stop(),
        )
        connection.ioloop.call_later(10, connection.ioloop.stop)
        connection.ioloop.start()
    (publish,) = mem.spans(f"publish {queue}")
    (process,) = mem.spans(f"process {queue}")
    (handle,) = mem.spans("handle")
    assert process["parent_span_id"] == publish["span_id"]
    assert handle["parent_span_id"] == process["span_id"]
    assert seen == [int(publish["trace_id"], 16)]


def test_aio_pika_queue_get_is_a_receive_span_and_process_continues(amqp_port: int, traced: None) -> None:
    async def main() -> None:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"aio16b-{uuid.uuid4().hex[:12]}")
            with pt.span("request"):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"payload", message_id="m-7"), routing_key=queue.name
                )
            message = None
            for _ in range(50):
                with pt.span("poll"):
                    message = await queue.get(fail=False)
                if message is not None:
                    break
                await asyncio.sleep(0.05)
            assert message is not None
            async with message.process():
                with pt.span("handle"):
                    pass
            with pt.span("poll empty"), pytest.raises(aio_pika.exceptions.QueueEmpty):
                await queue.get()
            await queue.delete(if_unused=False, if_empty=False)

    with capture_spans() as mem:
        asyncio.run(main())
    spans = mem.spans()
    (request,) = mem.spans("request")
    publish = next(s for s in spans if s["name"].startswith("publish "))
    receives = [s for s in spans if s["name"].startswith("receive aio16b-")]
    (got,) = [s for s in receives if s["links"]]
    assert got["links"][0]["span_id"] == publish["span_id"]
    assert got["attributes"]["messaging.message.id"] == "m-7"
    assert got["attributes"]["messaging.operation.type"] == "receive"
    (empty_poll,) = mem.spans("poll empty")
    (empty,) = [s for s in receives if s["parent_span_id"] == empty_poll["span_id"]]
    assert empty["status"] == "unset"  # an empty queue is no failure
    process = next(s for s in spans if s["name"].startswith("process"))
    (handle,) = mem.spans("handle")
    assert process["parent_span_id"] == publish["span_id"]
    assert process["trace_id"] == request["trace_id"]
    assert handle["parent_span_id"] == process["span_id"]


HOSTILE: dict[str, Any] = {
    "bytes": {"traceparent": TRACEPARENT.encode()},
    "number": {"traceparent": 5},
    "list": {"traceparent": [TRACEPARENT, "x"]},
    "table": {"traceparent": {"nested": TRACEPARENT}},
    "huge": {"traceparent": TRACEPARENT + "x" * 60_000},
    "huge state": {"traceparent": TRACEPARENT, "tracestate": "k=" + "v" * 60_000},
    "bytes state": {"traceparent": TRACEPARENT, "tracestate": b"k=v", "baggage": b"user=bob"},
}


def test_hostile_trace_headers_never_break_consuming(channel: Any, traced: None) -> None:
    """Headers of any type and size (another client's, an attacker's): every message is
    processed under a span, no internal error, nothing of the values recorded."""
    queue = new_queue(channel)
    with pt.suppress_tracing():  # (sent exactly as written)
        for name, headers in HOSTILE.items():
            channel.basic_publish("", queue, name.encode(), pika.BasicProperties(headers=headers))
    seen: list[tuple[bytes, int]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        seen.append((body, pt.current_span().trace_id))
        ch.basic_ack(method.delivery_tag)

    with capture_spans() as mem:
        tag = channel.basic_consume(queue, on_message)
        deadline = time.monotonic() + 10
        while len(seen) < len(HOSTILE) and time.monotonic() < deadline:
            channel.connection.process_data_events(time_limit=0.05)
        channel.basic_cancel(tag)
        with pt.suppress_tracing():
            channel.basic_publish("", queue, b"get", pika.BasicProperties(headers=HOSTILE["huge"]))
        got = (None, None, None)
        while got[0] is None and time.monotonic() < deadline:
            got = channel.basic_get(queue, auto_ack=True)
    assert got[2] == b"get"
    assert len(seen) == len(HOSTILE)
    assert all(trace_id for _, trace_id in seen)  # each ran under a span
    assert len(mem.spans(f"process {queue}")) == len(HOSTILE)
    assert "x" * 1000 not in json.dumps(mem.records, default=str)
    assert "v" * 1000 not in json.dumps(mem.records, default=str)
