"""RabbitMQ: a PRODUCER span per message published, a CONSUMER span per message processed, the
trace carried in the message headers (``pika`` and ``aio-pika``, extra ``amqp``).

    from pitchey_trace.amqp import instrument_amqp
    instrument_amqp()       # in the publishing and in the consuming program

Publishing (pika ``BlockingChannel.basic_publish`` and ``Channel.basic_publish``, aio-pika
``Exchange.publish``) is a ``producer`` span ``publish {destination}`` that writes its
``traceparent`` (and ``tracestate`` / ``baggage``) into the message headers. The caller's
objects are left alone: pika gets a copy of the ``BasicProperties`` (a new one when there were
none) with a copy of its headers, aio-pika a copy of the ``Message``; the headers already there
are kept, except trace headers (a consumed message's, published again): ours replace them, and
their ``tracestate`` / ``baggage`` (another trace's) are dropped. A publish that fails (a
closed channel, a ``NackError`` / ``UnroutableError`` under publisher confirms) is an error
span with the exception, which is re-raised unchanged.

Processing a message is a ``consumer`` span ``process {queue}``, child of the publishing span
(in another process, on another machine), current while the application handles the message,
so its own spans and queries nest under it:

* pika: every callback registered with ``basic_consume`` (``BlockingChannel`` and the
  asynchronous adapters' ``Channel``), including callbacks registered before
  ``instrument_amqp()`` was called only if they were registered through an instrumented method;
* pika ``BlockingChannel.consume()``: each message yielded is current from the moment it is
  yielded to the next iteration (or to the generator being closed); an exception raised in the
  loop body never reaches the generator, so that span cannot show it;
* aio-pika: callbacks given to ``Queue.consume`` (``RobustQueue`` too), and
  ``async with message.process():`` blocks (inside a traced ``Queue.consume`` callback
  ``process()`` adds no second span);
* aio-pika ``Queue.iterator()`` (``RobustQueue`` too): each message from the moment the
  iterator returns it until it is settled (``ack``, ``nack``, ``reject``, also by a
  ``process()`` block, which adds no second span), the loop asks for the next one, or the
  iterator closes. An exception that leaves the ``process()`` block or the
  ``async with queue.iterator()`` block marks the span; the settling belongs to the span. A
  message never settled (``no_ack=True``) after a ``break`` out of an iterator never closed:
  its span ends when the channel closes.

Pulling a message (pika ``BlockingChannel.basic_get``, aio-pika ``Queue.get``, ``RobustQueue``
too) is a ``consumer`` span ``receive {queue}`` (``messaging.operation.type`` /
``messaging.operation.name`` ``receive``), child of the caller's current span and linked to the
publishing span of the message it returned, with that message's attributes; an empty queue
(aio-pika's ``QueueEmpty`` too) is no error. The message's processing is the application's:
aio-pika's ``async with message.process():`` is a ``process`` span as above; with pika, start one
from ``pt.extract(properties.headers)``. The asynchronous adapters' ``Channel.basic_get``
callback is a ``process`` span, as a ``basic_consume`` callback is.

A callback that raises is an error span with the exception, re-raised unchanged. A message
without valid trace headers (none, or a malformed ``traceparent``) is processed all the same,
in a new trace (or under the span current when it is delivered).

Attributes (OpenTelemetry messaging conventions, v1.27.0: later versions make ``receive``
spans ``CLIENT`` and name the destination ``{exchange}:{routing key}``): ``messaging.system`` (``rabbitmq``),
``messaging.operation.type`` (``send`` / ``process``), ``messaging.operation.name``
(``publish`` / ``process``), ``messaging.destination.name`` (the exchange: empty for the
default exchange, whose spans are named after the routing key),
``messaging.rabbitmq.destination.routing_key``,
``messaging.rabbitmq.message.delivery_tag`` (consumer), ``messaging.message.id`` (when the
message has one), ``messaging.message.body.size`` and ``server.address`` / ``server.port`` (from
the connection's parameters, when known). A server-named or anonymous queue (``amq.gen-…``,
aio-pika's ``amq_…``: an RPC reply queue, say) is never in a span name: ``publish (temporary)``
/ ``process (temporary)`` with ``messaging.destination.temporary``. Bodies and header values
are never recorded. Nothing is recorded or injected under :func:`pitchey_trace.suppress_tracing`
or before tracing is configured. Works with either library installed (or both);
``uninstrument_amqp()`` restores the originals, and callbacks wrapped earlier then pass
messages straight through.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from types import ModuleType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.propagation import extract, inject

if importlib.util.find_spec("pika") is None and importlib.util.find_spec("aio_pika") is None:
    raise IntegrationUnavailable("pitchey_trace.amqp", "amqp")

__all__ = ["instrument_amqp", "uninstrument_amqp"]

_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
_tracer = get_tracer()
_start_span = _tracer.start_span
_WRAPPED = "__pitchey_trace_wrapped__"
_ATTRS = "_pitchey_trace_attrs"
_HEADERS = ("traceparent", "tracestate", "baggage")
_patched: list[tuple[type, str, Any]] = []
#: Which libraries are patched; callbacks wrapped while they were pass through once cleared.
_libraries: set[str] = set()
# True while pika's BlockingChannel.basic_publish runs: the Channel.basic_publish it calls
# is the same message, already a span.
_in_blocking_publish: ContextVar[bool] = ContextVar("pitchey_trace_amqp_publish", default=False)
# The aio-pika message a Queue.consume callback span stands for: process() adds no second one.
_processing: ContextVar[Any] = ContextVar("pitchey_trace_amqp_processing", default=None)
# The message a Queue.iterator() returned last in this context, with its span (_Iterated).
_iterated: ContextVar[Any] = ContextVar("pitchey_trace_amqp_iterated", default=None)
# True inside an instrumented QueueIterator.__anext__: a subclass's override calling the base
# class's (also instrumented) takes one message, which gets one span.
_in_anext: ContextVar[bool] = ContextVar("pitchey_trace_amqp_anext", default=False)


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- shared ----------------------------------------------------------------------------------------
def _recording() -> bool:
    return _tracer.enabled and CURRENT.get() is not SUPPRESSED


def _body_size(body: Any) -> int | None:
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    if isinstance(body, str):  # pika sends str bodies as UTF-8
        return len(body) if body.isascii() else len(body.encode("utf-8", "replace"))
    if isinstance(body, memoryview):
        return body.nbytes
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _attributes(
    base: dict[str, Any],
    operation: str,
    exchange: Any,
    routing_key: Any,
    message_id: Any,
    body: Any,
) -> tuple[str, dict[str, Any]]:
    """(destination, attributes) of one message."""
    exchange = _text(exchange)
    route = _text(routing_key)
    destination = exchange or route  # the default exchange ("") routes by queue name
    attrs = {
        **base,
        "messaging.operation.type": "send" if operation == "publish" else operation,
        "messaging.operation.name": operation,
    }
    # The convention's destination is the exchange: "" for the default exchange (which routes
    # by queue name, so the routing key names the span then).
    attrs["messaging.destination.name"] = exchange
    if route:
        attrs["messaging.rabbitmq.destination.routing_key"] = route
    if isinstance(message_id, str) and message_id:
        attrs["messaging.message.id"] = message_id
    size = _body_size(body)
    if size is not None:
        attrs["messaging.message.body.size"] = size
    return destination, attrs


def _temporary(queue: str) -> bool:
    """A server-named queue (``amq.gen-…``; clients may not declare ``amq.`` names) or an
    anonymous one named by aio-pika's robust channel (``amq_<uuid>``): one per connection or
    RPC caller, so never in a span name (the messaging conventions' ``(temporary)``)."""
    return queue.startswith(("amq.", "amq_"))


def _cached_base(owner: Any, find: Callable[[Any], tuple[Any, Any]]) -> dict[str, Any]:
    """``messaging.system`` and the server's address, computed once per channel."""
    cached: dict[str, Any] | None = getattr(owner, _ATTRS, None)
    if cached is not None:
        return cached
    attrs: dict[str, Any] = {"messaging.system": "rabbitmq"}
    try:
        host, port = find(owner)
        if isinstance(host, str) and host:
            attrs["server.address"] = host
        if isinstance(port, int) and not isinstance(port, bool):
            attrs["server.port"] = port
    except Exception:  # noqa: S110  (a channel of another shape: no address)
        pass
    try:
        setattr(owner, _ATTRS, attrs)
    except Exception:  # noqa: S110  (an object that takes no attributes: computed each time)
        pass
    return attrs


def _merged(headers: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """The headers to send: the caller's with ours. Trace headers already there (a consumed
    message's properties, republished) are dropped, not kept beside ours: their
    ``tracestate`` / ``baggage`` belong to that other context."""
    if not headers:
        return ours
    if any(key in headers for key in _HEADERS):
        headers = {key: value for key, value in headers.items() if key not in _HEADERS}
    return {**headers, **ours}


def _carrier(headers: Any) -> dict[str, Any]:
    """Only our own entries of a message's headers (the others are never looked at)."""
    if not isinstance(headers, dict):
        return {}
    return {key: headers[key] for key in _HEADERS if key in headers}


def _consumer_span(
    base: dict[str, Any], queue: Any, exchange: Any, routing_key: Any, headers: Any, delivery_tag: Any,
    message_id: Any, body: Any,
) -> AnySpan | None:  # fmt: skip
    if not _recording():
        return None
    try:
        destination, attrs = _attributes(base, "process", exchange, routing_key, message_id, body)
        if isinstance(delivery_tag, int) and not isinstance(delivery_tag, bool):
            attrs["messaging.rabbitmq.message.delivery_tag"] = delivery_tag
        queue = _text(queue)
        target = queue or destination
        # (a named exchange, amq.* ones included, is never temporary: only queue names are)
        if (queue or not _text(exchange)) and _temporary(target):
            attrs["messaging.destination.temporary"] = True
            name = "process (temporary)"
        else:
            name = f"process {target}" if target else "process"
        carrier = _carrier(headers)
        parent = extract(carrier) if carrier else None
        return _start_span(name, attrs, _CONSUMER, parent)
    except Exception as exc:
        _safety.report("amqp.consume", exc)
        return None


def _producer_span(
    base: dict[str, Any], exchange: Any, routing_key: Any, message_id: Any, body: Any
) -> tuple[AnySpan, dict[str, Any]]:
    """The publish span and the headers to send (``traceparent``... only; the caller merges)."""
    destination, attrs = _attributes(base, "publish", exchange, routing_key, message_id, body)
    if not _text(exchange) and _temporary(destination):  # e.g. an RPC reply to its caller's queue
        attrs["messaging.destination.temporary"] = True
        name = "publish (temporary)"
    else:
        name = f"publish {destination}" if destination else "publish"
    span = _start_span(name, attrs, _PRODUCER)
    ours: dict[str, Any] = {}
    inject(ours, span)
    return span, ours


def _receive_span(base: dict[str, Any], queue: Any) -> AnySpan | None:
    """The span of one pull (pika ``basic_get``, aio-pika ``Queue.get``): a ``receive {queue}``
    consumer span, child of the caller's current span; the message it returns, if any, is
    described once it is there (:func:`_received`)."""
    if not _recording():
        return None
    try:
        queue = _text(queue)
        attrs = {**base, "messaging.operation.type": "receive", "messaging.operation.name": "receive"}
        if queue and _temporary(queue):
            attrs["messaging.destination.temporary"] = True
            name = "receive (temporary)"
        else:
            name = f"receive {queue}" if queue else "receive"
        return _start_span(name, attrs, _CONSUMER)
    except Exception as exc:
        _safety.report("amqp.receive", exc)
        return None


def _received(
    span: AnySpan,
    exchange: Any,
    routing_key: Any,
    headers: Any,
    delivery_tag: Any,
    message_id: Any,
    body: Any,
) -> None:
    """Describe the message a pull returned on its span, linked to the context it carries (the
    messaging conventions' creation context: the publishing span)."""
    try:
        _, attrs = _attributes({}, "receive", exchange, routing_key, message_id, body)
        del attrs["messaging.operation.type"], attrs["messaging.operation.name"]
        if isinstance(delivery_tag, int) and not isinstance(delivery_tag, bool):
            attrs["messaging.rabbitmq.message.delivery_tag"] = delivery_tag
        for key, value in attrs.items():
            span.set_attribute(key, value)
        carrier = _carrier(headers)
        context = extract(carrier) if carrier else None
        if context is not None:
            span.add_link(context)
    except Exception as exc:
        _safety.report("amqp.receive", exc)


def _fail(span: AnySpan, exc: BaseException) -> None:
    # Only Exception is a failure; KeyboardInterrupt, CancelledError and the like are control flow.
    if isinstance(exc, Exception):
        try:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.record_exception(exc)
            span.set_status("error", f"{type(exc).__name__}: {exc}"[:512])
        except Exception as internal:
            _safety.report("amqp.end", internal)


def _end(span: AnySpan, exc: BaseException | None = None, *, entered: bool = False) -> None:
    """End ``span`` (recording ``exc``); ``entered``: it was made current with ``__enter__``."""
    if exc is not None:
        _fail(span, exc)
    try:
        if entered:
            span.__exit__(None, None, None)
        else:
            span.end()
    except Exception as internal:
        _safety.report("amqp.end", internal)


# -- pika ------------------------------------------------------------------------------------------
def _pika_address(channel: Any) -> tuple[Any, Any]:
    impl = getattr(channel, "_impl", channel)  # a BlockingChannel wraps a pika Channel
    params = impl.connection.params
    return params.host, params.port


def _publish_arguments(
    exchange: Any, routing_key: Any, body: Any, properties: Any = None, mandatory: Any = False
) -> dict[str, Any]:
    """pika's basic_publish parameters, as keywords (the same for both channel classes)."""
    return {
        "exchange": exchange,
        "routing_key": routing_key,
        "body": body,
        "properties": properties,
        "mandatory": mandatory,
    }


def _pika_publish_start(channel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """(span, keyword arguments carrying the trace headers), or None to publish untouched."""
    try:
        call = _publish_arguments(*args, **kwargs)
    except TypeError:
        return None  # a call pika itself will refuse: let it say so
    span = None
    try:
        properties = call["properties"]
        headers = getattr(properties, "headers", None)
        if headers is not None and not isinstance(headers, dict):
            return None
        span, ours = _producer_span(
            _cached_base(channel, _pika_address),
            call["exchange"],
            call["routing_key"],
            getattr(properties, "message_id", None),
            call["body"],
        )
        if ours:
            # A copy, never the caller's object: it may be reused for other messages.
            properties = _pika_spec().BasicProperties() if properties is None else copy.copy(properties)
            properties.headers = _merged(headers, ours)
            call["properties"] = properties
        return span, call
    except Exception as exc:
        _safety.report("amqp.publish", exc)
        if span is not None:
            _end(span)
        return None


def _pika_spec() -> Any:
    return importlib.import_module("pika.spec")


def _wrap_pika_publish(original: Any, blocking: bool) -> Any:
    @functools.wraps(original)
    def basic_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _recording() or _in_blocking_publish.get():
            return original(self, *args, **kwargs)
        started = _pika_publish_start(self, args, kwargs)
        if started is None:
            return original(self, *args, **kwargs)
        span, call = started
        token = _in_blocking_publish.set(True) if blocking else None
        try:
            result = original(self, **call)
        except BaseException as exc:
            _end(span, exc)
            raise
        finally:
            if token is not None:
                _in_blocking_publish.reset(token)
        _end(span)
        return result

    setattr(basic_publish, _WRAPPED, original)
    return basic_publish


def _pika_consumer_span(queue: Any, channel: Any, method: Any, properties: Any, body: Any) -> AnySpan | None:
    if "pika" not in _libraries:
        return None
    return _consumer_span(
        _cached_base(channel, _pika_address),
        queue,
        getattr(method, "exchange", None),
        getattr(method, "routing_key", None),
        getattr(properties, "headers", None),
        getattr(method, "delivery_tag", None),
        getattr(properties, "message_id", None),
        body,
    )


def _traced_pika_callback(callback: Any, queue: Any) -> Any:
    if getattr(callback, _WRAPPED, None) is not None:
        return callback

    @functools.wraps(callback)
    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        span = _pika_consumer_span(queue, channel, method, properties, body)
        if span is None:
            return callback(channel, method, properties, body)
        span.__enter__()  # current while the callback runs
        try:
            result = callback(channel, method, properties, body)
        except BaseException as exc:
            _end(span, exc, entered=True)
            raise
        _end(span, entered=True)
        return result

    setattr(on_message, _WRAPPED, callback)
    return on_message


def _wrap_pika_basic_consume(original: Any, blocking_channel: type) -> Any:
    # BlockingChannel registers its own dispatcher on its pika Channel: the user's callback,
    # wrapped above it, is the one that runs the application's code.
    return _wrap_pika_callback(original, "on_message_callback", (blocking_channel,), "amqp.consume")


def _wrap_pika_callback(original: Any, keyword: str, internal: tuple[type, ...], kind: str) -> Any:
    """``basic_consume`` / ``basic_get`` of a pika channel: the message callback (argument 2
    or ``keyword``) becomes a ``process`` span per message, unless it is a method of one of
    the ``internal`` classes (pika's own dispatcher or collector, under a call that is traced
    already)."""

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if keyword in kwargs:
                callback = kwargs[keyword]
            elif len(args) >= 2:
                callback = args[1]
            else:
                callback = None
            if callable(callback) and not isinstance(getattr(callback, "__self__", None), internal):
                queue = kwargs["queue"] if "queue" in kwargs else (args[0] if args else None)
                traced = _traced_pika_callback(callback, queue)
                if keyword in kwargs:
                    kwargs[keyword] = traced
                else:
                    args = (args[0], traced, *args[2:])
        except Exception as exc:
            _safety.report(kind, exc)
        return original(self, *args, **kwargs)

    setattr(method, _WRAPPED, original)
    return method


def _traced_messages(channel: Any, messages: Iterator[Any], queue: Any) -> Iterator[Any]:
    """``BlockingChannel.consume()``'s messages, each current from its delivery to the next
    iteration. (A generator shares its caller's context, so the span set here is the one the
    loop body sees.)"""
    try:
        for item in messages:
            span = None
            try:
                method, properties, body = item
                if method is not None:
                    span = _pika_consumer_span(queue, channel, method, properties, body)
                    if span is not None:
                        span.__enter__()
            except Exception as exc:
                _safety.report("amqp.consume", exc)
            try:
                yield item
            finally:
                if span is not None:
                    _end(span, entered=True)
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()


def _wrap_pika_consume(original: Any) -> Any:
    @functools.wraps(original)
    def consume(self: Any, *args: Any, **kwargs: Any) -> Any:
        messages = original(self, *args, **kwargs)
        if "pika" not in _libraries:
            return messages
        queue = kwargs["queue"] if "queue" in kwargs else (args[0] if args else None)
        return _traced_messages(self, messages, queue)

    setattr(consume, _WRAPPED, original)
    return consume


def _wrap_pika_blocking_get(original: Any) -> Any:
    """``BlockingChannel.basic_get``: a ``receive`` span for the round trip, linked to the
    message's context (its processing, after the call, is the application's to trace)."""

    @functools.wraps(original)
    def basic_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "pika" not in _libraries or not _recording():
            return original(self, *args, **kwargs)
        queue = kwargs["queue"] if "queue" in kwargs else (args[0] if args else None)
        span = _receive_span(_cached_base(self, _pika_address), queue)
        if span is None:
            return original(self, *args, **kwargs)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        try:
            method, properties, body = result
            if method is not None:
                _received(
                    span,
                    getattr(method, "exchange", None),
                    getattr(method, "routing_key", None),
                    getattr(properties, "headers", None),
                    getattr(method, "delivery_tag", None),
                    getattr(properties, "message_id", None),
                    body,
                )
        except Exception as exc:
            _safety.report("amqp.receive", exc)
        _end(span)
        return result

    setattr(basic_get, _WRAPPED, original)
    return basic_get


def _wrap_pika_channel_get(original: Any, internal: tuple[type, ...]) -> Any:
    """``Channel.basic_get`` (the asynchronous adapters): the callback given the message is a
    ``process`` span, as a ``basic_consume`` callback is. (BlockingChannel.basic_get passes
    its own collector: that call has its span.)"""
    return _wrap_pika_callback(original, "callback", internal, "amqp.receive")


def _instrument_pika() -> bool:
    """Patch pika (when installed); False when it is not."""
    channel_module = _optional("pika.channel")
    blocking_module = _optional("pika.adapters.blocking_connection")
    if channel_module is None or blocking_module is None:
        return False
    if "pika" in _libraries:
        return True
    channel = channel_module.Channel
    blocking = blocking_module.BlockingChannel
    collector = getattr(blocking_module, "_CallbackResult", None)
    internal = (blocking, collector) if isinstance(collector, type) else (blocking,)
    targets: tuple[tuple[type, str, Callable[[Any], Any]], ...] = (
        (blocking, "basic_publish", lambda f: _wrap_pika_publish(f, True)),
        (channel, "basic_publish", lambda f: _wrap_pika_publish(f, False)),
        (blocking, "basic_consume", lambda f: _wrap_pika_basic_consume(f, blocking)),
        (channel, "basic_consume", lambda f: _wrap_pika_basic_consume(f, blocking)),
        (blocking, "consume", _wrap_pika_consume),
        (blocking, "basic_get", _wrap_pika_blocking_get),
        (channel, "basic_get", lambda f: _wrap_pika_channel_get(f, internal)),
    )
    for owner, name, wrapped in targets:
        original = owner.__dict__[name]
        setattr(owner, name, wrapped(original))
        _patched.append((owner, name, original))
    _libraries.add("pika")
    return True


# -- aio-pika --------------------------------------------------------------------------------------
def _aio_address(channel: Any) -> tuple[Any, Any]:
    url = channel._connection.url  # (aio_pika.Channel keeps its connection there)
    return url.host, url.port


def _wrap_aio_publish(original: Any) -> Any:
    @functools.wraps(original)
    async def publish(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        if not _recording():
            return await original(self, message, *args, **kwargs)
        span = None
        try:
            routing_key = args[0] if args else kwargs.get("routing_key")
            span, ours = _producer_span(
                _cached_base(self.channel, _aio_address),
                self.name,
                routing_key,
                getattr(message, "message_id", None),
                getattr(message, "body", None),
            )
            headers = getattr(message, "headers", None)
            if ours and (headers is None or isinstance(headers, dict)):
                # A copy: the caller's message may be locked (an IncomingMessage) or reused.
                outgoing = copy.copy(message)
                outgoing.headers = _merged(headers, ours)
                message = outgoing
        except Exception as exc:
            _safety.report("amqp.publish", exc)
        if span is None:
            return await original(self, message, *args, **kwargs)
        try:
            result = await original(self, message, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        _end(span)
        return result

    setattr(publish, _WRAPPED, original)
    return publish


def _aio_consumer_span(queue: Any, base: dict[str, Any], message: Any) -> AnySpan | None:
    if "aio_pika" not in _libraries:
        return None
    return _consumer_span(
        base,
        queue,
        getattr(message, "exchange", None),
        getattr(message, "routing_key", None),
        getattr(message, "headers", None),
        getattr(message, "delivery_tag", None),
        getattr(message, "message_id", None),
        getattr(message, "body", None),
    )


_AIO_BASE: dict[str, Any] = {"messaging.system": "rabbitmq"}


def _traced_aio_callback(callback: Any, queue: Any, awaitable: Any) -> Any:
    call = awaitable(callback)  # aio-pika's own adapter (and warning) for a plain function

    @functools.wraps(callback)
    async def on_message(message: Any) -> Any:
        span = _aio_consumer_span(queue.name, _cached_base(queue.channel, _aio_address), message)
        if span is None:
            return await call(message)
        token = _processing.set(message)
        span.__enter__()  # current while the callback runs (in the task aio-pika made for it)
        try:
            result = await call(message)
        except BaseException as exc:
            _end(span, exc, entered=True)
            raise
        finally:
            _processing.reset(token)
        _end(span, entered=True)
        return result

    setattr(on_message, _WRAPPED, callback)
    return on_message


def _wrap_aio_consume(original: Any, iterator: type, awaitable: Any) -> Any:
    @functools.wraps(original)
    async def consume(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            callback = kwargs["callback"] if "callback" in kwargs else (args[0] if args else None)
            # Queue.iterator() consumes with its own callback, which only queues the message;
            # those messages are traced by message.process().
            if (
                callable(callback)
                and getattr(callback, _WRAPPED, None) is None
                and not isinstance(getattr(callback, "__self__", None), iterator)
            ):
                traced = _traced_aio_callback(callback, self, awaitable)
                if "callback" in kwargs:
                    kwargs["callback"] = traced
                else:
                    args = (traced, *args[1:])
        except Exception as exc:
            _safety.report("amqp.consume", exc)
        return await original(self, *args, **kwargs)

    setattr(consume, _WRAPPED, original)
    return consume


def _wrap_aio_get(original: Any, empty: tuple[type, ...]) -> Any:
    """``Queue.get``: a ``receive`` span for the round trip, linked to the message's context
    (an empty queue, ``QueueEmpty`` or None, is no error); a ``process()`` block on the message
    then makes its ``process`` span, child of the publishing span."""

    @functools.wraps(original)
    async def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "aio_pika" not in _libraries or not _recording():
            return await original(self, *args, **kwargs)
        span = None
        try:
            span = _receive_span(_cached_base(self.channel, _aio_address), getattr(self, "name", None))
        except Exception as exc:
            _safety.report("amqp.receive", exc)
        if span is None:
            return await original(self, *args, **kwargs)
        try:
            message = await original(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, None if isinstance(exc, empty) else exc)
            raise
        if message is not None:
            _received(
                span,
                getattr(message, "exchange", None),
                getattr(message, "routing_key", None),
                getattr(message, "headers", None),
                getattr(message, "delivery_tag", None),
                getattr(message, "message_id", None),
                getattr(message, "body", None),
            )
        _end(span)
        return message

    setattr(get, _WRAPPED, original)
    return get


def _wrap_aio_enter(original: Any) -> Any:
    @functools.wraps(original)
    async def __aenter__(self: Any) -> Any:
        result = await original(self)
        message = getattr(self, "message", None)
        if message is not None and _processing.get() is not message and _iterated_for(message) is None:
            span = _aio_consumer_span(None, _AIO_BASE, message)
            if span is not None:
                try:
                    self._pitchey_trace_span = span
                except Exception as exc:
                    _safety.report("amqp.consume", exc)
                    _end(span)
                else:
                    span.__enter__()  # current in the block (the caller's task and context)
        return result

    setattr(__aenter__, _WRAPPED, original)
    return __aenter__


def _wrap_aio_exit(original: Any) -> Any:
    @functools.wraps(original)
    async def __aexit__(self: Any, exc_type: Any, exc: Any, tb: Any) -> Any:
        span = self.__dict__.pop("_pitchey_trace_span", None) if hasattr(self, "__dict__") else None
        if span is None:
            if isinstance(exc, Exception):  # a Queue.iterator() message's block failed
                held = _iterated_for(getattr(self, "message", None))
                if held is not None:
                    held.fail(exc)
            return await original(self, exc_type, exc, tb)
        try:
            return await original(self, exc_type, exc, tb)  # the ack or reject belongs to the span
        finally:
            _end(span, exc if isinstance(exc, BaseException) else None, entered=True)

    setattr(__aexit__, _WRAPPED, original)
    return __aexit__


class _Iterated:
    """A message ``Queue.iterator()`` returned: its span, current in the context that took it
    until the message is settled (ack, nack, reject, also by ``process()``), that context asks
    for the next message, or the iterator is closed or dropped."""

    __slots__ = ("failed", "held", "message", "span", "tokens")

    def __init__(self, message: Any, span: AnySpan, held: list[_Iterated]) -> None:
        self.message = message
        self.span: AnySpan | None = span
        self.held = held
        self.failed = False
        self.tokens: tuple[Token[Any], Token[Any]] | None = (CURRENT.set(span), _iterated.set(self))
        held.append(self)
        _open[id(message)] = self  # (the entry holds the message: its id is not reused meanwhile)

    def fail(self, exc: BaseException) -> None:
        if self.span is not None and not self.failed and isinstance(exc, Exception):
            self.failed = True
            _fail(self.span, exc)

    def finish(self) -> None:
        """End the span (once); restore the context when this is the context that took it. (A
        task's copy of it, which settled the message, cannot: the taking context restores
        itself at its next message, or when the iterator closes.)"""
        span, self.span = self.span, None
        if span is not None:
            if _open.get(id(self.message)) is self:
                del _open[id(self.message)]
            _end(span)
        tokens = self.tokens
        if tokens is not None and _iterated.get() is self:
            try:
                _iterated.reset(tokens[1])
                CURRENT.reset(tokens[0])
                self.tokens = None
            except ValueError:  # a copy of the taking context (its own task): not ours to undo
                pass
        if self.tokens is None and self in self.held:
            self.held.remove(self)


# Open Queue.iterator() message spans by id(message): the message settles them, from any task.
_open: dict[int, _Iterated] = {}


def _iterated_for(message: Any) -> _Iterated | None:
    held = _open.get(id(message)) if message is not None else None
    return held if held is not None and held.message is message else None


def _held(iterator: Any) -> list[_Iterated] | None:
    """The iterator's messages whose spans are open (made once per iterator; they end when the
    iterator is closed or collected)."""
    held: list[_Iterated] | None = getattr(iterator, "_pitchey_trace_held", None)
    if held is None:
        held = []
        try:
            iterator._pitchey_trace_held = held
            weakref.finalize(iterator, _finish_all, held).atexit = False
        except Exception as exc:
            _safety.report("amqp.iterator", exc)
            return None
        _finish_on_close(iterator, held)
    return held


def _finish_on_close(iterator: Any, held: list[_Iterated]) -> None:
    """End the iterator's open spans when its channel closes. After a ``break`` out of an
    iterator that is never closed, with a message that is not settled (``no_ack=True``), the
    channel's end is the last thing we see (aio-pika keeps such an iterator alive)."""
    try:
        closed = iterator._amqp_queue.channel.closed()  # a shield: our own future, to cancel
        closed.add_done_callback(lambda _: _finish_all(held))
        # Once the iterator closes (any way), drop the hook: a channel outlives many iterators.
        own = getattr(iterator, "_closed", None)
        if own is not None:
            own.add_done_callback(lambda _: closed.cancel())
    except Exception as exc:
        _safety.report("amqp.iterator", exc)


def _finish_all(held: list[_Iterated], exc: BaseException | None = None) -> None:
    for item in list(held):
        if exc is not None:
            item.fail(exc)
        item.finish()


def _wrap_iterator_next(original: Any) -> Any:
    @functools.wraps(original)
    async def __anext__(self: Any) -> Any:
        if _in_anext.get():
            return await original(self)
        try:  # the message this context took last is handled by now
            current = _iterated.get()
            if current is not None and current.held is getattr(self, "_pitchey_trace_held", None):
                current.finish()
        except Exception as exc:
            _safety.report("amqp.iterator", exc)
        flag = _in_anext.set(True)
        try:
            message = await original(self)
        finally:
            _in_anext.reset(flag)
        if "aio_pika" in _libraries:
            try:
                queue = getattr(self, "_amqp_queue", None)
                base = _AIO_BASE if queue is None else _cached_base(queue.channel, _aio_address)
                span = _aio_consumer_span(getattr(queue, "name", None), base, message)
                if span is not None:
                    held = _held(self)
                    if held is None:
                        _end(span)
                    else:
                        _Iterated(message, span, held)
            except Exception as exc:
                _safety.report("amqp.iterator", exc)
        return message

    setattr(__anext__, _WRAPPED, original)
    return __anext__


def _wrap_iterator_close(original: Any) -> Any:
    @functools.wraps(original)
    async def close(self: Any) -> Any:
        try:
            _finish_all(getattr(self, "_pitchey_trace_held", None) or [])
        except Exception as exc:
            _safety.report("amqp.iterator", exc)
        return await original(self)

    setattr(close, _WRAPPED, original)
    return close


def _wrap_iterator_exit(original: Any) -> Any:
    @functools.wraps(original)
    async def __aexit__(self: Any, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:  # an exception leaving the block while a message was being handled is that span's
            failed = exc if isinstance(exc, Exception) else None
            _finish_all(getattr(self, "_pitchey_trace_held", None) or [], failed)
        except Exception as internal:
            _safety.report("amqp.iterator", internal)
        return await original(self, exc_type, exc, tb)

    setattr(__aexit__, _WRAPPED, original)
    return __aexit__


def _wrap_settle(original: Any) -> Any:
    """``IncomingMessage.ack`` / ``nack`` / ``reject``: a ``Queue.iterator()`` message's span
    ends once it is settled (a failure to settle is recorded on it)."""

    @functools.wraps(original)
    async def settle(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            held = _iterated_for(self)
            if held is not None:
                held.fail(exc)
                held.finish()
            raise
        held = _iterated_for(self)
        if held is not None:
            held.finish()
        return result

    setattr(settle, _WRAPPED, original)
    return settle


def _instrument_aio_pika() -> bool:
    """Patch aio-pika (when installed); False when it is not."""
    exchange_module = _optional("aio_pika.exchange")
    queue_module = _optional("aio_pika.queue")
    message_module = _optional("aio_pika.message")
    tools = _optional("aio_pika.tools")
    if exchange_module is None or queue_module is None or message_module is None or tools is None:
        return False
    if "aio_pika" in _libraries:
        return True
    iterator = queue_module.QueueIterator
    exceptions = _optional("aio_pika.exceptions")
    queue_empty = getattr(exceptions, "QueueEmpty", None)
    empty: tuple[type, ...] = (queue_empty,) if isinstance(queue_empty, type) else ()
    awaitable = tools.ensure_awaitable
    context = message_module.ProcessContext
    targets: list[tuple[type, str, Callable[[Any], Any]]] = [
        (exchange_module.Exchange, "publish", _wrap_aio_publish),
        (queue_module.Queue, "consume", lambda f: _wrap_aio_consume(f, iterator, awaitable)),
        (queue_module.Queue, "get", lambda f: _wrap_aio_get(f, empty)),
        (context, "__aenter__", _wrap_aio_enter),
        (context, "__aexit__", _wrap_aio_exit),
    ]
    incoming = message_module.IncomingMessage
    settles = [name for name in ("ack", "nack", "reject") if name in incoming.__dict__]
    targets += [(incoming, name, _wrap_settle) for name in settles]
    robust = _optional("aio_pika.robust_queue")
    # RobustQueueIterator has its own __anext__ (it waits out reconnections).
    for cls in (iterator, getattr(robust, "RobustQueueIterator", None)):
        if isinstance(cls, type):
            targets += [
                (cls, name, wrap)
                for name, wrap in (
                    ("__anext__", _wrap_iterator_next),
                    ("close", _wrap_iterator_close),
                    ("__aexit__", _wrap_iterator_exit),
                )
                if name in cls.__dict__
            ]
    for owner, name, wrapped in targets:
        original = owner.__dict__[name]
        setattr(owner, name, wrapped(original))
        _patched.append((owner, name, original))
    _libraries.add("aio_pika")
    return True


# -- public ----------------------------------------------------------------------------------------
def instrument_amqp() -> None:
    """Trace publishing and consuming with pika and aio-pika, whichever are installed (see the
    module doc). Idempotent; call it in the publishing and in the consuming program."""
    _instrument_pika()
    _instrument_aio_pika()


def uninstrument_amqp() -> None:
    """Undo :func:`instrument_amqp`: the original methods come back, and consumer callbacks
    wrapped meanwhile pass messages through untraced."""
    _libraries.clear()
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
