"""pitchey_trace.amqp against a real RabbitMQ node on 127.0.0.1 (one node for the module): pika's
BlockingConnection (basic_consume callbacks and the consume() generator), aio-pika
(Queue.consume callbacks, Queue.iterator() with and without message.process()), and two unchanged programs
under ``pitchey-trace run`` forming one trace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.queue
import aio_pika.robust_queue
import pika
import pika.adapters.blocking_connection
import pika.channel
import pika.exceptions
import pytest

import pitchey_trace as pt
from pitchey_trace.amqp import instrument_amqp, uninstrument_amqp
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support.rabbitmq import rabbitmq_server

# One node for the module (it takes a few seconds to start): its tests share an xdist worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("rabbitmq")]
WRAPPED = "__pitchey_trace_wrapped__"


@pytest.fixture(scope="module")
def amqp_port() -> Iterator[int]:
    with rabbitmq_server() as port:
        yield port


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_amqp()
    instrument_amqp()  # idempotent
    with swallowed_errors() as swallowed:
        yield
    uninstrument_amqp()
    assert swallowed == []  # no internal error of ours went unnoticed


@pytest.fixture
def channel(amqp_port: int) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def new_queue(channel: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    channel.queue_declare(name, auto_delete=False)
    return name


def drain(channel: Any, queue: str, handle: Callable[..., Any], count: int = 1) -> list[Any]:
    """Consume ``count`` messages with basic_consume, ``handle`` running in the callback."""
    seen: list[Any] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        seen.append((method, properties, body))
        handle(ch, method, properties, body)
        ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    channel.basic_cancel(tag)
    assert len(seen) == count
    return seen


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def test_pika_publish_and_basic_consume_form_one_trace(channel: Any, amqp_port: int, traced: None) -> None:
    queue = new_queue(channel)
    properties = pika.BasicProperties(headers={"x-tenant": "tenant-header-secret"}, message_id="order-17")
    with capture_spans() as mem:
        with pt.span("place order"):
            channel.basic_publish("", queue, b"secret-order-body", properties)
        [(_, received, body)] = drain(channel, queue, lambda *_: pt.span("handle order").end())
    spans = by_name(mem.spans())
    request, publish = spans["place order"], spans[f"publish {queue}"]
    process, handle = spans[f"process {queue}"], spans["handle order"]
    assert publish["kind"] == "producer"
    assert publish["parent_span_id"] == request["span_id"]
    assert process["kind"] == "consumer"
    assert process["parent_span_id"] == publish["span_id"]  # continued from the message headers
    assert handle["parent_span_id"] == process["span_id"]  # the callback ran under it
    assert {s["trace_id"] for s in spans.values()} == {request["trace_id"]}
    assert publish["attributes"] == {
        "messaging.system": "rabbitmq",
        "server.address": "127.0.0.1",
        "server.port": amqp_port,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "",  # the default exchange (the span is named after the key)
        "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.message.id": "order-17",
        "messaging.message.body.size": len(b"secret-order-body"),
    }
    assert process["attributes"]["messaging.operation.type"] == "process"
    assert process["attributes"]["messaging.operation.name"] == "process"
    assert process["attributes"]["messaging.rabbitmq.message.delivery_tag"] >= 1
    assert process["attributes"]["messaging.message.id"] == "order-17"
    # the message kept its own headers and got ours; the caller's properties were not touched
    assert received.headers["x-tenant"] == "tenant-header-secret"
    assert received.headers["traceparent"].startswith(f"00-{publish['trace_id']}-{publish['span_id']}-")
    assert properties.headers == {"x-tenant": "tenant-header-secret"}
    assert body == b"secret-order-body"
    assert "secret-order-body" not in json.dumps(mem.records, default=str)
    assert "tenant-header-secret" not in json.dumps(
        mem.records, default=str
    )  # other headers are not recorded


def test_pika_consume_generator_and_callback_errors(channel: Any, traced: None) -> None:
    queue = new_queue(channel)
    with capture_spans() as mem:
        with pt.span("producer"):
            channel.basic_publish("", queue, b"one")  # properties created for the headers
            channel.basic_publish("", queue, b"two")
        bodies = []
        for method, _properties, body in channel.consume(queue, inactivity_timeout=5):
            assert method is not None
            with pt.span(f"handle {body.decode()}"):
                channel.basic_ack(method.delivery_tag)
            bodies.append(body)
            if len(bodies) == 2:
                break
        channel.cancel()

        def explode(*_: Any) -> None:
            raise LookupError("no such order")

        channel.basic_publish("", queue, b"three")
        with pytest.raises(LookupError, match="no such order"):  # re-raised unchanged
            drain(channel, queue, explode)
    assert bodies == [b"one", b"two"]
    processes = mem.spans(f"process {queue}")
    publishes = mem.spans(f"publish {queue}")
    assert len(processes) == len(publishes) == 3
    for publish, process in zip(publishes, processes, strict=True):
        assert process["parent_span_id"] == publish["span_id"]
    [one, two] = mem.spans("handle one") + mem.spans("handle two")
    assert one["parent_span_id"] == processes[0]["span_id"]  # current until the next iteration
    assert two["parent_span_id"] == processes[1]["span_id"]
    failed = processes[2]
    assert failed["status"] == "error"
    assert failed["attributes"]["error.type"] == "LookupError"
    assert [e["name"] for e in failed["events"]] == ["exception"]


def test_pika_publish_failure_is_recorded_and_re_raised(channel: Any, traced: None) -> None:
    channel.confirm_delivery()
    with capture_spans() as mem:
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish("", f"nowhere-{uuid.uuid4().hex}", b"x", mandatory=True)
    [publish] = mem.spans()
    assert publish["kind"] == "producer"
    assert publish["status"] == "error"
    assert publish["attributes"]["error.type"] == "UnroutableError"


def test_malformed_traceparent_starts_a_new_trace(channel: Any, traced: None) -> None:
    queue = new_queue(channel)
    bad = pika.BasicProperties(headers={"traceparent": "00-not-a-trace-01", "tracestate": "a=b"})
    with capture_spans() as mem:
        with pt.suppress_tracing():  # published as it is, with the bad header
            channel.basic_publish("", queue, b"x", bad)
        [(_, received, _)] = drain(channel, queue, lambda *_: None)
    assert received.headers["traceparent"] == "00-not-a-trace-01"
    [process] = mem.spans()
    assert process["name"] == f"process {queue}"
    assert process["parent_span_id"] is None  # a root: a new trace


def test_suppression_records_and_injects_nothing(channel: Any, traced: None) -> None:
    queue = new_queue(channel)
    with capture_spans() as mem:
        with pt.span("outside"):
            channel.basic_publish("", queue, b"traced")  # carries a valid traceparent
            with pt.suppress_tracing():
                channel.basic_publish("", queue, b"x", pika.BasicProperties(headers={"k": "v"}))
                received = drain(channel, queue, lambda *_: None, count=2)
    assert [s["name"] for s in mem.spans()] == [f"publish {queue}", "outside"]  # no process spans
    assert "traceparent" in received[0][1].headers
    assert received[1][1].headers == {"k": "v"}


def test_uninstrument_restores_pika_and_aio_pika(channel: Any) -> None:
    blocking = pika.adapters.blocking_connection.BlockingChannel
    originals = {
        (owner, name): owner.__dict__[name]
        for owner, name in [
            (blocking, "basic_publish"),
            (blocking, "basic_consume"),
            (blocking, "consume"),
            (pika.channel.Channel, "basic_publish"),
            (pika.channel.Channel, "basic_consume"),
            (aio_pika.Exchange, "publish"),
            (aio_pika.Queue, "consume"),
            (aio_pika.queue.QueueIterator, "__anext__"),
            (aio_pika.queue.QueueIterator, "close"),
            (aio_pika.queue.QueueIterator, "__aexit__"),
            (aio_pika.robust_queue.RobustQueueIterator, "__anext__"),
            (aio_pika.IncomingMessage, "ack"),
            (aio_pika.IncomingMessage, "nack"),
            (aio_pika.IncomingMessage, "reject"),
        ]
    }
    instrument_amqp()
    assert all(getattr(owner.__dict__[name], WRAPPED) is f for (owner, name), f in originals.items())
    queue = new_queue(channel)
    got: list[Any] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append(properties.headers)
        ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(queue, on_message)  # wrapped while instrumented
    assert getattr(channel._consumer_infos[tag].on_message_callback, WRAPPED) is on_message
    uninstrument_amqp()
    uninstrument_amqp()  # idempotent
    assert all(owner.__dict__[name] is f for (owner, name), f in originals.items())
    with capture_spans() as mem:
        with pt.span("request"):
            channel.basic_publish("", queue, b"x")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            channel.connection.process_data_events(time_limit=0.05)
        channel.basic_cancel(tag)
    assert got == [None]  # no headers injected
    # the callback wrapped before uninstrument_amqp() passes messages through untraced
    assert [s["name"] for s in mem.spans()] == ["request"]


AIO_CONSUME_TIMEOUT = 10


def test_aio_pika_publish_consume_and_process(amqp_port: int, traced: None) -> None:
    async def main() -> tuple[dict[str, Any], str]:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"aio-{uuid.uuid4().hex[:12]}")
            original = aio_pika.Message(b"payload", headers={"x-tenant": "t-9"}, message_id="m-1")
            with pt.span("request"):
                await channel.default_exchange.publish(original, routing_key=queue.name)
            assert original.headers == {"x-tenant": "t-9"}  # the caller's message is untouched
            received: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():  # no second span inside a traced callback
                    with pt.span("handle"):
                        await asyncio.sleep(0)
                received.set_result(dict(message.headers))

            tag = await queue.consume(on_message)
            headers = await asyncio.wait_for(received, AIO_CONSUME_TIMEOUT)
            await queue.cancel(tag)

            with pt.span("second request"):
                await channel.default_exchange.publish(aio_pika.Message(b"two"), routing_key=queue.name)
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        with pt.span("handle second"):
                            pass
                    break

            failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            async def explode(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()
                failing.set_result(None)
                raise KeyError("bad payload")

            await channel.default_exchange.publish(aio_pika.Message(b"three"), routing_key=queue.name)
            tag = await queue.consume(explode)
            await asyncio.wait_for(failing, AIO_CONSUME_TIMEOUT)
            await asyncio.sleep(0.05)  # let the callback's task finish raising
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
        return headers, queue.name

    with capture_spans() as mem:
        headers, queue = asyncio.run(main())
    spans = mem.spans()
    request, second = mem.spans("request")[0], mem.spans("second request")[0]
    publishes = mem.spans(f"publish {queue}")
    processes = mem.spans(f"process {queue}")
    assert len(publishes) == len(processes) == 3
    first_publish, second_publish, third_publish = publishes
    assert first_publish["parent_span_id"] == request["span_id"]
    assert first_publish["attributes"]["messaging.message.id"] == "m-1"
    assert first_publish["attributes"]["messaging.message.body.size"] == len(b"payload")
    assert first_publish["attributes"]["server.port"] == amqp_port
    callback_span = next(p for p in processes if p["parent_span_id"] == first_publish["span_id"])
    [handle] = mem.spans("handle")
    assert handle["parent_span_id"] == callback_span["span_id"]
    assert callback_span["trace_id"] == request["trace_id"]
    # Queue.iterator() + message.process(): a consumer span too, child of its publish span
    assert second_publish["parent_span_id"] == second["span_id"]
    iterated = next(p for p in processes if p["parent_span_id"] == second_publish["span_id"])
    assert mem.spans("handle second")[0]["parent_span_id"] == iterated["span_id"]
    failed = next(p for p in processes if p["parent_span_id"] == third_publish["span_id"])
    assert failed["status"] == "error"
    assert failed["attributes"]["error.type"] == "KeyError"
    assert headers["x-tenant"] == "t-9"
    assert headers["traceparent"].startswith("00-")
    assert len({s["trace_id"] for s in spans}) == 3


def test_aio_pika_iterator_messages_without_process(amqp_port: int, traced: None) -> None:
    """Queue.iterator() messages handled without process(): each is a consumer span from the
    moment the iterator returns it until it is settled or the next is asked for; the context
    comes back after the loop; a failed process() block and an exception leaving the iterator
    mark their span."""

    async def main() -> tuple[str, list[str]]:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        order: list[str] = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"iter-{uuid.uuid4().hex[:12]}")
            for i in range(3):
                with pt.span(f"send {i}"):
                    message = aio_pika.Message(f"m{i}".encode())
                    await channel.default_exchange.publish(message, routing_key=queue.name)
            with pt.span("consumer loop"):
                async with queue.iterator() as messages:
                    async for message in messages:
                        body = message.body.decode()
                        order.append(body)
                        with pt.span(f"work {body}"):
                            pass
                        if body == "m1":  # a process() block that fails, caught by the app
                            try:
                                async with message.process(requeue=False):
                                    raise ValueError("bad m1")
                            except ValueError:
                                pass
                        else:
                            await message.ack()
                        if len(order) == 3:
                            break
                with pt.span("after the loop"):
                    pass
            # An exception leaving `async with queue.iterator()` is that message's.
            await channel.default_exchange.publish(aio_pika.Message(b"m3"), routing_key=queue.name)
            with pytest.raises(KeyError):
                async with queue.iterator(no_ack=True) as messages:
                    async for _message in messages:
                        raise KeyError("m3 failed")
            # `break` out of an iterator that is never closed (aio-pika keeps it consuming until
            # its channel closes): the ack ends the span and gives the context back.
            await channel.default_exchange.publish(aio_pika.Message(b"m4"), routing_key=queue.name)
            async for message in queue.iterator():
                with pt.span("work m4"):
                    pass
                await message.ack()
                break
            with pt.span("after the dropped iterator"):
                pass
            await queue.delete(if_unused=False, if_empty=False)
        return queue.name, order

    with capture_spans() as mem:
        queue, order = asyncio.run(main())
    assert order == ["m0", "m1", "m2"]
    processes = mem.spans(f"process {queue}")
    publishes = mem.spans(f"publish {queue}")
    assert len(publishes) == len(processes) == 5  # one span per message, none for process()
    by_parent = {p["parent_span_id"]: p for p in processes}
    spans = [by_parent[pub["span_id"]] for pub in publishes]  # each is its publish span's child
    for span in spans:
        assert span["kind"] == "consumer"
        assert span["attributes"]["messaging.operation.type"] == "process"
        assert span["attributes"]["server.port"] == amqp_port
    for i in range(3):
        assert spans[i]["trace_id"] == mem.spans(f"send {i}")[0]["trace_id"]
        assert mem.spans(f"work m{i}")[0]["parent_span_id"] == spans[i]["span_id"]
    assert [s["status"] for s in spans] == ["unset", "error", "unset", "error", "unset"]
    assert spans[1]["attributes"]["error.type"] == "ValueError"
    assert spans[3]["attributes"]["error.type"] == "KeyError"
    # each message's span ends before the next one starts (the next __anext__ ends it)
    assert spans[0]["end_time_unix_nano"] <= spans[1]["start_time_unix_nano"]
    assert spans[1]["end_time_unix_nano"] <= spans[2]["start_time_unix_nano"]
    # after the loop (and after the dropped iterator) the context is what it was
    loop = mem.spans("consumer loop")[0]
    assert mem.spans("after the loop")[0]["parent_span_id"] == loop["span_id"]
    assert mem.spans("after the dropped iterator")[0].get("parent_span_id") is None


def test_aio_pika_robust_iterator_settled_in_another_task(amqp_port: int, traced: None) -> None:
    """RobustQueue's iterator (its own __anext__): the span is current in the loop body and
    ends when another task acks the message; the loop's context comes back at the next message."""

    async def main() -> str:
        connection = await aio_pika.connect_robust(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"robust-{uuid.uuid4().hex[:12]}")
            for body in (b"r0", b"r1"):
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
            acks: list[asyncio.Task[None]] = []
            async with queue.iterator() as messages:
                async for message in messages:
                    with pt.span(f"work {message.body.decode()}"):
                        pass
                    acks.append(asyncio.create_task(message.ack()))  # settled elsewhere
                    await asyncio.gather(*acks)
                    if len(acks) == 2:
                        break
            with pt.span("after"):
                pass
            await queue.delete(if_unused=False, if_empty=False)
        return queue.name

    with capture_spans() as mem:
        queue = asyncio.run(main())
    processes = mem.spans(f"process {queue}")
    assert len(processes) == 2
    for i, span in enumerate(processes):
        assert mem.spans(f"work r{i}")[0]["parent_span_id"] == span["span_id"]
        assert span["status"] == "unset"
    assert processes[0]["end_time_unix_nano"] <= processes[1]["start_time_unix_nano"]
    assert mem.spans("after")[0].get("parent_span_id") is None


PRODUCER = """
import sys
import pika

port, queue = int(sys.argv[1]), sys.argv[2]
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
channel = connection.channel()
channel.queue_declare(queue)
channel.basic_publish("", queue, b"order-17")
connection.close()
print("SENT", flush=True)
"""

CONSUMER = """
import sys
import pika

port, queue = int(sys.argv[1]), sys.argv[2]
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
channel = connection.channel()
channel.queue_declare(queue)

def handle(ch, method, properties, body):
    print("GOT", body.decode(), flush=True)
    ch.basic_ack(method.delivery_tag)
    ch.stop_consuming()

channel.basic_consume(queue, handle)
channel.start_consuming()
connection.close()
"""


def run(program: str, tmp_path: Path, name: str, *args: str) -> list[dict[str, Any]]:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(program))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    cli = [sys.executable, "-m", "pitchey_trace.cli", "run", "--exporter", "console", "--service", name]
    proc = subprocess.run(
        [*cli, "--", sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("SENT" if name == "producer" else "GOT order-17") in proc.stdout
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in records if r["type"] == "span"]


def test_unchanged_programs_under_pitchey_trace_run_form_one_trace(amqp_port: int, tmp_path: Path) -> None:
    queue = f"run-{uuid.uuid4().hex[:12]}"
    [publish] = run(PRODUCER, tmp_path, "producer", str(amqp_port), queue)
    [process] = run(CONSUMER, tmp_path, "consumer", str(amqp_port), queue)
    assert (publish["name"], publish["kind"]) == (f"publish {queue}", "producer")
    assert (process["name"], process["kind"]) == (f"process {queue}", "consumer")
    assert (publish["service"], process["service"]) == ("producer", "consumer")
    assert process["trace_id"] == publish["trace_id"]
    assert process["parent_span_id"] == publish["span_id"]


def test_server_named_reply_queues_are_temporary_destinations(channel: Any, traced: None) -> None:
    """An RPC reply queue (server-named ``amq.gen-…``) is one per caller: never in a span name
    (``publish (temporary)`` / ``process (temporary)``), flagged temporary, the routing key kept.
    A named exchange keeps its name, ``amq.direct`` too."""
    reply_to = channel.queue_declare("", exclusive=True).method.queue
    assert reply_to.startswith("amq.gen-")
    channel.queue_bind(reply_to, "amq.direct", routing_key=reply_to)
    with capture_spans() as mem:
        with pt.span("reply"):
            channel.basic_publish("", reply_to, b"answer")
            channel.basic_publish("amq.direct", reply_to, b"routed")
        drain(channel, reply_to, lambda *_: None, count=2)
    names = sorted(s["name"] for s in mem.spans())
    assert names == [
        "process (temporary)",
        "process (temporary)",
        "publish (temporary)",
        "publish amq.direct",
        "reply",
    ]
    [publish] = mem.spans("publish (temporary)")
    assert publish["attributes"]["messaging.destination.temporary"] is True
    assert publish["attributes"]["messaging.destination.name"] == ""
    assert publish["attributes"]["messaging.rabbitmq.destination.routing_key"] == reply_to
    [routed] = mem.spans("publish amq.direct")
    assert "messaging.destination.temporary" not in routed["attributes"]
    for process in mem.spans("process (temporary)"):
        assert process["attributes"]["messaging.destination.temporary"] is True
        assert process["attributes"]["messaging.rabbitmq.destination.routing_key"] == reply_to
    assert {p["parent_span_id"] for p in mem.spans("process (temporary)")} == {
        publish["span_id"],
        routed["span_id"],
    }


def test_aio_pika_anonymous_queues_are_temporary_destinations(amqp_port: int, traced: None) -> None:
    """aio-pika's robust channel names an anonymous queue ``amq_<uuid>`` itself."""

    async def main() -> str:
        connection = await aio_pika.connect_robust(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            with pt.span("reply"):
                await channel.default_exchange.publish(aio_pika.Message(b"answer"), routing_key=queue.name)
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    break
        return str(queue.name)

    with capture_spans() as mem:
        queue = asyncio.run(main())
    assert queue.startswith("amq_")
    assert sorted(s["name"] for s in mem.spans()) == ["process (temporary)", "publish (temporary)", "reply"]
    [publish] = mem.spans("publish (temporary)")
    [process] = mem.spans("process (temporary)")
    assert process["parent_span_id"] == publish["span_id"]
    for span in (publish, process):
        assert span["attributes"]["messaging.destination.temporary"] is True
        assert span["attributes"]["messaging.rabbitmq.destination.routing_key"] == queue
