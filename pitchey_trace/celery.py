"""Celery: a task sent from a traced request continues that request's trace in the worker.

    import pitchey_trace as pt
    from pitchey_trace.celery import instrument_celery

    pt.configure(service="pitch-worker", exporters=[...])
    instrument_celery()          # in the code that sends tasks and in the worker

Sending (``delay``, ``apply_async``, ``send_task``) is a ``producer`` span ``send {task}``
whose context travels in the message headers (``traceparent``, ``tracestate``, ``baggage``).
Running a task is a ``consumer`` span ``run {task}``, child of the sending span (in another
process, on another machine), current while the task runs, so the task's own spans and
queries nest under it. A task that raises is marked as an error with its exception; a retry
adds a ``retry`` event (``celery.retry.reason``: the type of the exception that caused it). Each
run is its own span, also when a retry (same task id) starts before the retried run ends.
Attributes (OpenTelemetry messaging conventions, those where the ``send`` operation type
replaced ``publish``): ``messaging.system`` (``celery``), ``messaging.operation.type``
(``send`` / ``process``), ``messaging.operation.name`` (``publish`` / ``process``),
``messaging.message.id`` (the task id), ``messaging.destination.name`` (the routing key),
``celery.task.name``, ``celery.task.state`` and ``celery.task.retries``. A task that raises
``Reject`` (state ``REJECTED``) adds ``celery.reject.requeue`` and ``celery.reject.reason``;
``Reject(requeue=False)`` drops (or dead-letters) the message, so the task's work is lost and
Celery records a failure: that span is an error (``error.type`` ``Reject``), a requeue is not.
Arguments are never recorded. A task name or routing key (the sender's choice) goes into span
names and attributes with its control characters and Unicode bidi formatting characters
(U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) replaced by U+FFFD.

A message the worker takes but never runs still ends the sender's trace with a ``run`` span
(ended at once, continuing the message's context): a task revoked before it ran or expired
(``celery.task.state`` ``REVOKED``, ``celery.task.expired``), one terminated while running
(``revoke(terminate=True)``: the killed pool process never exports its own span, the worker's
main process records this one, with ``celery.task.terminated``, from when the pool process took
the task), a task the worker does not know (an error span, ``error.type`` ``NotRegistered``,
state ``FAILURE``) and a message it cannot read as a task (an error span named ``run unknown``
unless the message names its task, state ``REJECTED``).

It connects to Celery's signals (``before_task_publish``, ``after_task_publish``,
``task_prerun``, ``task_postrun``, ``task_failure``, ``task_retry``, ``task_revoked``,
``task_unknown``, ``task_rejected``), so it works with every pool (prefork, threads, solo)
and with eager tasks. ``uninstrument_celery()`` disconnects.
Needs ``celery`` (extra ``celery``).
"""

from __future__ import annotations

import sys
from time import time_ns
from types import FrameType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._span import SpanKind, TrustedAttributes
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.propagation import extract, inject

try:
    from celery import signals
    from celery.exceptions import Reject
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationUnavailable("pitchey_trace.celery", "celery") from _exc

__all__ = ["instrument_celery", "uninstrument_celery"]

_UID = "pitchey_trace"
_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
#: Spans open between two signals: sends by task id, runs by task id and the run's own request
#: (a retry reuses the task id, and its run may start before the first one ends). Bounded (a
#: publish that raises never sends ``after_task_publish``, and a worker killed mid-task never
#: sends ``task_postrun``).
_MAX_OPEN = 10_000
_sending: dict[str, Any] = {}
_running: dict[tuple[str, int], Any] = {}
#: ``messaging.operation.name`` (Celery's own name for the operation: it publishes a task
#: message, ``before_task_publish``) by ``messaging.operation.type``.
_OPERATION_NAMES = {"send": "publish", "process": "process"}
#: The attributes shared by every span of a task name, operation and routing key, built once
#: (validated here, so start_span copies them without checking each entry).
_TEMPLATES: dict[tuple[str, str, str | None], TrustedAttributes] = {}


#: What a task name (chosen by whoever sends the message) or a routing key must not bring into
#: span names and attributes, each replaced by U+FFFD: control characters (C0, DEL, C1: an
#: escape sequence, a line break) and Unicode's bidirectional formatting characters (the
#: embeddings and overrides U+202A-U+202E, the isolates U+2066-U+2069, the marks U+200E,
#: U+200F and U+061C), which reorder how the text around them shows in a UI or a terminal.
_UNSAFE = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F], "\ufffd")
_UNSAFE.update(dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)], "\ufffd"))


def _safe(text: str) -> str:
    """``text`` with the characters of ``_UNSAFE`` replaced by U+FFFD."""
    if text.isprintable():  # (each of them is unprintable: the usual name is returned as it is)
        return text
    return text.translate(_UNSAFE)


def _remember(table: dict[Any, Any], key: Any, span: Any) -> None:
    table[key] = span
    while len(table) > _MAX_OPEN:  # the oldest first (dicts keep insertion order)
        del table[next(iter(table))]


def _attributes(task_name: str, task_id: str | None, operation: str, routing_key: Any) -> TrustedAttributes:
    route = routing_key if isinstance(routing_key, str) and routing_key else None
    key = (task_name, operation, route)
    template = _TEMPLATES.get(key)
    if template is None:
        template = TrustedAttributes(
            {
                "messaging.system": "celery",
                "messaging.operation.type": operation,
                "messaging.operation.name": _OPERATION_NAMES[operation],
                "celery.task.name": task_name,
            }
        )
        if route is not None:
            template["messaging.destination.name"] = _safe(route)
        if len(_TEMPLATES) >= 1024:  # bounded: task names are few, routing keys might not be
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    attrs = TrustedAttributes(template)
    if task_id:
        attrs["messaging.message.id"] = task_id
    return attrs


def _before_publish(sender: Any = None, headers: Any = None, routing_key: Any = None, **_: Any) -> None:
    # (try/except rather than _safety.guard: these run for every task, and every microsecond
    # here is the application's)
    try:
        tracer = get_tracer()
        if tracer.pipeline is None or not isinstance(headers, dict):
            return
        name = str(headers.get("task") or sender or "task")
        if not name.isprintable():  # (inline: _safe's own first test, without the call)
            name = _safe(name)
        task_id = headers.get("id")
        task_id = str(task_id) if task_id else None
        span = tracer.start_span(f"send {name}", _attributes(name, task_id, "send", routing_key), _PRODUCER)
        if not span.trace_id:  # suppressed
            return
        inject(headers, span)  # the worker reads them back from the task's request
        if task_id:
            _remember(_sending, task_id, span)
        else:
            span.end()
    except Exception as exc:
        _safety.report("celery.publish", exc)


def _after_publish(headers: Any = None, **_: Any) -> None:
    try:
        task_id = headers.get("id") if isinstance(headers, dict) else None
        span = _sending.pop(str(task_id), None) if task_id else None
        if span is not None:
            span.end()
    except Exception as exc:
        _safety.report("celery.publish", exc)


_HEADERS = ("traceparent", "tracestate", "baggage")


def _carrier(request: Any) -> dict[str, str]:
    """The propagation headers of the running task, as a dict (``extract``'s fastest carrier):
    Celery puts a message's custom headers on the request (protocol 2); older senders nest
    them under ``headers``."""
    nested = getattr(request, "headers", None)
    carrier: dict[str, str] = {}
    for key in _HEADERS:
        value = getattr(request, key, None)
        if value is None and isinstance(nested, dict):
            value = nested.get(key)
        if isinstance(value, str):
            carrier[key] = value
    return carrier


def _prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        tracer = get_tracer()
        if tracer.pipeline is None or task is None or not task_id:
            return
        request = task.request
        parent = extract(_carrier(request))
        delivery = getattr(request, "delivery_info", None) or {}
        name = str(task.name)
        if not name.isprintable():
            name = _safe(name)
        key = str(task_id)
        attrs = _attributes(name, key, "process", delivery.get("routing_key"))
        retries = getattr(request, "retries", 0)
        if retries.__class__ is int and retries:
            attrs["celery.task.retries"] = retries
        span = tracer.start_span(f"run {name}", attrs, _CONSUMER, parent)
        if not span.trace_id:
            return
        span.__enter__()  # current while the task runs (prerun and postrun share its thread)
        _remember(_running, _run_key(key, request), span)
    except Exception as exc:
        _safety.report("celery.run", exc)


def _run_key(task_id: Any, request: Any) -> tuple[str, int]:
    """A run's key in ``_running``: Celery pushes a new request (context) for every run, and it
    stays ``task.request`` until ``task_postrun``; the task id alone is shared by a task's
    retries (which may overlap the run that retried, e.g. ``retry(throw=False)``)."""
    return (str(task_id), id(request))


def _current_request(task: Any) -> Any:
    return getattr(task, "request", None) if task is not None else None


def _failure(sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        span = _running.get(_run_key(task_id, _current_request(sender)))
        if span is not None and isinstance(exception, BaseException):
            span.record_exception(exception)
            span.set_status("error", f"{type(exception).__qualname__}: {exception}"[:512])


def _retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        if request is None:
            request = _current_request(sender)
        span = _running.get(_run_key(getattr(request, "id", ""), request))
        if span is not None:
            # Celery passes its Retry wrapper; the reason is the exception it wraps, if any
            cause = getattr(reason, "exc", None) or reason
            span.add_event("retry", {"celery.retry.reason": type(cause).__qualname__})


#: The longest ``celery.reject.reason`` recorded (characters).
_MAX_REASON = 512


def _postrun(task_id: Any = None, task: Any = None, state: Any = None, retval: Any = None, **_: Any) -> None:
    try:
        span = _running.pop(_run_key(task_id, _current_request(task)), None)
        if span is None:
            return
        if isinstance(state, str):
            span.set_attribute("celery.task.state", state)
        if isinstance(retval, Reject):  # (state REJECTED: Celery passes the Reject it caught)
            try:
                _record_reject(span, retval)
            except Exception as exc:  # (the span still ends)
                _safety.report("celery.run", exc)
        span.__exit__(None, None, None)
    except Exception as exc:
        _safety.report("celery.run", exc)


def _record_reject(span: Any, reject: Any) -> None:
    """What a task that raised ``Reject`` said: ``celery.reject.requeue`` (whether the message
    goes back to the queue) and ``celery.reject.reason`` (a text as it is, an exception as
    ``Type: message``, as a failure's status message; none when it gave no reason)."""
    requeue = bool(reject.requeue)
    span.set_attribute("celery.reject.requeue", requeue)
    reason = reject.reason
    text = None
    if reason is not None:
        kind = type(reason).__qualname__
        try:
            text = str(reason)
        except Exception:  # (the application's __str__: the type says enough)
            text = f"<unprintable {kind}>"
        if isinstance(reason, BaseException):
            text = f"{kind}: {text}" if text else kind
        text = text[:_MAX_REASON]
        span.set_attribute("celery.reject.reason", text)
    if not requeue:
        # The message is dropped or dead-lettered: the work is lost (recent Celery versions
        # also mark the task FAILURE and send task_failure from the worker's main process).
        span.set_attribute("error.type", "Reject")
        span.set_status("error", f"Reject: {text}"[:512] if text else "Reject")


def _message_carrier(headers: Any) -> dict[str, str]:
    """The propagation headers of a message the worker did not run (a dict of str only)."""
    if not isinstance(headers, dict):
        return {}
    return {key: value for key in _HEADERS if isinstance(value := headers.get(key), str)}


#: The longest task name a span takes from a message the worker could not run (the name is
#: the sender's, not a registered task's).
_MAX_UNRUN_NAME = 200


def _unrun(
    name: Any,
    task_id: Any,
    carrier: dict[str, str],
    routing_key: Any,
    state: str,
    extra: dict[str, Any],
    start_time_ns: int | None = None,
) -> Any:
    """A ``run`` span, ended at once, for a message the worker took but never ran (revoked,
    expired, an unknown task, an invalid message) or whose run span was lost with the process
    that ran it (terminated; ``start_time_ns``: when it started): the sender's trace shows what
    became of it."""
    tracer = get_tracer()
    if tracer.pipeline is None:
        return None
    text = name if isinstance(name, str) and name else "unknown"
    text = _safe(text[:_MAX_UNRUN_NAME])
    key = str(task_id) if task_id else None
    attrs = _attributes(text, key, "process", routing_key)
    attrs["celery.task.state"] = state
    attrs.update(extra)
    parent = extract(carrier) if carrier else None
    span = tracer.start_span(f"run {text}", attrs, _CONSUMER, parent, start_time_ns=start_time_ns)
    if span.trace_id:
        return span
    return None


def _revoked(
    sender: Any = None, request: Any = None, terminated: Any = False, expired: Any = False, **_: Any
) -> None:
    """A task revoked before it ran, expired, or terminated while running (its run span, in a
    pool process that was killed, is lost: this one stands for it)."""
    with _safety.guard("celery.revoked"):
        name = getattr(sender, "name", None) or getattr(request, "task", None)
        delivery = getattr(request, "delivery_info", None)
        route = delivery.get("routing_key") if isinstance(delivery, dict) else None
        task_id = getattr(request, "id", None)
        extra: dict[str, Any] = {}
        start = None
        if terminated is True:
            extra["celery.task.terminated"] = True
            start = _started_ns(task_id)
        if expired is True:
            extra["celery.task.expired"] = True
        span = _unrun(name, task_id, _carrier(request), route, "REVOKED", extra, start)
        if span is not None:
            span.end()


#: How many frames above the ``task_revoked`` receiver the worker's request of the task is
#: looked for (Celery: receiver, ``Signal.send``, ``Request._announce_revoked``).
_REQUEST_FRAMES = 6


def _started_ns(task_id: Any) -> int | None:
    """When the pool process took a task the worker terminated (ns since the epoch), or None.

    The worker's main process keeps that time on its own request of the task (Celery's
    ``Request.time_start``, set when the pool process acknowledges the task, just before it runs
    it), but ``task_revoked`` gets the task's context, not that request: it is the ``self`` of
    the method that sent the signal (``Request._announce_revoked``), found in the frames above
    this receiver by its task id. Only for a terminated task (rare), never on the hot path."""
    if not task_id:
        return None
    try:  # (a lookup that fails costs the start time only, not the span)
        frame: FrameType | None = sys._getframe(2)  # (above _revoked)
        for _ in range(_REQUEST_FRAMES):
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            started = getattr(owner, "time_start", None)
            if started.__class__ is float and getattr(owner, "id", None) == task_id:
                start = int(started * 1e9)
                return start if 0 < start <= time_ns() else None
            frame = frame.f_back
    except Exception as exc:
        _safety.report("celery.revoked.start", exc)
    return None


def _message_facts(message: Any) -> tuple[Any, Any, dict[str, str], Any]:
    """(task name, task id, propagation headers, routing key) of a kombu message."""
    headers = getattr(message, "headers", None)
    delivery = getattr(message, "delivery_info", None)
    route = delivery.get("routing_key") if isinstance(delivery, dict) else None
    if not isinstance(headers, dict):
        return None, None, {}, route
    return headers.get("task"), headers.get("id"), _message_carrier(headers), route


def _unknown(message: Any = None, name: Any = None, id: Any = None, **_: Any) -> None:
    """A message for a task the worker does not know: rejected, marked as failed."""
    with _safety.guard("celery.rejected"):
        _, _, carrier, route = _message_facts(message)
        span = _unrun(name, id, carrier, route, "FAILURE", {"error.type": "NotRegistered"})
        if span is not None:
            span.set_status("error", "NotRegistered")
            span.end()


def _rejected(message: Any = None, exc: Any = None, **_: Any) -> None:
    """A message the worker could not take as a task (an unknown message type, an invalid
    task message): rejected."""
    with _safety.guard("celery.rejected"):
        name, task_id, carrier, route = _message_facts(message)
        kind = type(exc).__qualname__ if isinstance(exc, BaseException) else "UnknownMessage"
        span = _unrun(name, task_id, carrier, route, "REJECTED", {"error.type": kind})
        if span is not None:
            span.set_status("error", kind)
            span.end()


_HANDLERS = (
    (signals.before_task_publish, _before_publish),
    (signals.after_task_publish, _after_publish),
    (signals.task_prerun, _prerun),
    (signals.task_failure, _failure),
    (signals.task_retry, _retry),
    (signals.task_postrun, _postrun),
    (signals.task_revoked, _revoked),
    (signals.task_unknown, _unknown),
    (signals.task_rejected, _rejected),
)


def instrument_celery() -> None:
    """Trace task sending and running (idempotent); call it where tasks are sent and in the
    worker, e.g. next to ``pt.configure()`` in the module that defines the Celery app."""
    for signal, handler in _HANDLERS:
        signal.connect(handler, weak=False, dispatch_uid=f"{_UID}.{handler.__name__}")


def uninstrument_celery() -> None:
    """Disconnect what :func:`instrument_celery` connected."""
    for signal, handler in _HANDLERS:
        signal.disconnect(handler, dispatch_uid=f"{_UID}.{handler.__name__}")
