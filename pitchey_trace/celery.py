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
adds a ``retry`` event. Attributes (OpenTelemetry messaging conventions):
``messaging.system`` (``celery``), ``messaging.operation.type`` (``send`` / ``process``),
``messaging.message.id`` (the task id), ``messaging.destination.name`` (the routing key),
``celery.task.name``, ``celery.task.state`` and ``celery.task.retries``. Arguments are never
recorded.

It connects to Celery's signals (``before_task_publish``, ``after_task_publish``,
``task_prerun``, ``task_postrun``, ``task_failure``, ``task_retry``), so it works with every
pool (prefork, threads, solo) and with eager tasks. ``uninstrument_celery()`` disconnects.
Needs ``celery`` (extra ``celery``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._span import SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.propagation import extract, inject

try:
    from celery import signals
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise IntegrationUnavailable("pitchey_trace.celery", "celery") from _exc

__all__ = ["instrument_celery", "uninstrument_celery"]

_UID = "pitchey_trace"
#: Spans open between two signals, by task id; bounded (a publish that raises never sends
#: ``after_task_publish``, and a worker killed mid-task never sends ``task_postrun``).
_MAX_OPEN = 10_000
_sending: OrderedDict[str, Any] = OrderedDict()
_running: OrderedDict[str, Any] = OrderedDict()


def _remember(table: OrderedDict[str, Any], key: str, span: Any) -> None:
    table[key] = span
    while len(table) > _MAX_OPEN:
        table.popitem(last=False)


def _attributes(task_name: str, task_id: str | None, operation: str, routing_key: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": "celery",
        "messaging.operation.type": operation,
        "celery.task.name": task_name,
    }
    if task_id:
        attrs["messaging.message.id"] = task_id
    if isinstance(routing_key, str) and routing_key:
        attrs["messaging.destination.name"] = routing_key
    return attrs


def _before_publish(sender: Any = None, headers: Any = None, routing_key: Any = None, **_: Any) -> None:
    with _safety.guard("celery.publish"):
        tracer = get_tracer()
        if tracer.pipeline is None or not isinstance(headers, dict):
            return
        name = str(headers.get("task") or sender or "task")
        task_id = headers.get("id")
        span = tracer.start_span(
            f"send {name}", _attributes(name, task_id, "send", routing_key), SpanKind.PRODUCER
        )
        if not span.trace_id:  # suppressed
            return
        inject(headers, span)  # the worker reads them back from the task's request
        if task_id:
            _remember(_sending, str(task_id), span)
        else:
            span.end()


def _after_publish(headers: Any = None, **_: Any) -> None:
    with _safety.guard("celery.publish"):
        task_id = headers.get("id") if isinstance(headers, dict) else None
        span = _sending.pop(str(task_id), None) if task_id else None
        if span is not None:
            span.end()


def _from_request(request: Any, key: str) -> Any:
    """A propagation header of the running task: Celery puts the message's custom headers
    on the request (protocol 2), older senders nest them under ``headers``."""
    value = getattr(request, key, None)
    if value is None:
        nested = getattr(request, "headers", None)
        if isinstance(nested, dict):
            value = nested.get(key)
    return value if isinstance(value, str) else None


def _prerun(task_id: Any = None, task: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        tracer = get_tracer()
        if tracer.pipeline is None or task is None or not task_id:
            return
        request = task.request
        parent = extract(request, _from_request)
        delivery = getattr(request, "delivery_info", None) or {}
        name = str(task.name)
        attrs = _attributes(name, str(task_id), "process", delivery.get("routing_key"))
        retries = getattr(request, "retries", 0)
        if isinstance(retries, int) and retries:
            attrs["celery.task.retries"] = retries
        span = tracer.start_span(f"run {name}", attrs, SpanKind.CONSUMER, parent)
        if not span.trace_id:
            return
        span.__enter__()  # current while the task runs (prerun and postrun share its thread)
        _remember(_running, str(task_id), span)


def _failure(task_id: Any = None, exception: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        span = _running.get(str(task_id))
        if span is not None and isinstance(exception, BaseException):
            span.record_exception(exception)
            span.set_status("error", f"{type(exception).__qualname__}: {exception}"[:512])


def _retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        span = _running.get(str(getattr(request, "id", "")))
        if span is not None:
            span.add_event("retry", {"celery.retry.reason": type(reason).__qualname__})


def _postrun(task_id: Any = None, state: Any = None, **_: Any) -> None:
    with _safety.guard("celery.run"):
        span = _running.pop(str(task_id), None)
        if span is None:
            return
        if isinstance(state, str):
            span.set_attribute("celery.task.state", state)
        span.__exit__(None, None, None)


_HANDLERS = (
    (signals.before_task_publish, _before_publish),
    (signals.after_task_publish, _after_publish),
    (signals.task_prerun, _prerun),
    (signals.task_failure, _failure),
    (signals.task_retry, _retry),
    (signals.task_postrun, _postrun),
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
