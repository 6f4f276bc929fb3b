"""pitchey_trace.celery in one process: eager tasks nest under the caller's span, and odd signal
arguments are ignored without raising into Celery."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import pitchey_trace as pt
from pitchey_trace import celery as pt_celery
from pitchey_trace.celery import instrument_celery, uninstrument_celery
from pitchey_trace.testing import capture_spans


@pytest.fixture
def app() -> Iterator[Celery]:
    instrument_celery()
    instrument_celery()  # idempotent: one receiver per signal
    try:
        yield Celery("unit", broker="memory://")
    finally:
        uninstrument_celery()


def test_eager_task_nests_under_the_callers_span(app: Celery) -> None:
    @app.task
    def double(x: int) -> int:
        with pt.span("inside"):
            return x * 2

    with capture_spans() as mem:
        with pt.span("caller"):
            assert double.apply((21,)).get() == 42
    caller, run, inside = (mem.spans(n)[0] for n in ("caller", f"run {double.name}", "inside"))
    assert run["parent_span_id"] == caller["span_id"]
    assert inside["parent_span_id"] == run["span_id"]
    assert run["attributes"]["celery.task.state"] == "SUCCESS"
    assert pt.current_span().is_recording is False  # nothing left current after the task


def test_send_and_run_spans_name_their_messaging_operation(app: Celery) -> None:
    """OpenTelemetry messaging conventions (those ``messaging.operation.type`` follows, with
    ``send`` for ``publish``): the operation's type and Celery's own name for it."""

    @app.task
    def noop() -> None:
        pass

    with capture_spans() as mem:
        with app.connection_for_write() as conn:
            noop.apply_async(connection=conn)  # published to the in-memory broker
        noop.apply()
    (send,) = mem.spans(f"send {noop.name}")
    (run,) = mem.spans(f"run {noop.name}")
    assert {k: v for k, v in send["attributes"].items() if k.startswith("messaging.operation.")} == {
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    assert {k: v for k, v in run["attributes"].items() if k.startswith("messaging.operation.")} == {
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }


def test_failing_eager_task_is_an_error_span(app: Celery) -> None:
    @app.task
    def broken() -> None:
        raise LookupError("no such pitch")

    with capture_spans() as mem:
        result = broken.apply()
    assert result.failed()
    (run,) = mem.spans(f"run {broken.name}")
    assert run["status"] == "error"
    assert run["attributes"]["celery.task.state"] == "FAILURE"
    assert [e["name"] for e in run["events"]] == ["exception"]


def test_odd_signal_arguments_are_ignored(app: Celery) -> None:
    odd: list[dict[str, Any]] = [
        {},
        {"headers": None},
        {"headers": "not a dict", "sender": 3},
        {"headers": {"id": object(), "task": None}},
    ]
    with capture_spans():
        for kwargs in odd:
            pt_celery._before_publish(**kwargs)
            pt_celery._after_publish(**kwargs)
        pt_celery._prerun(task_id="x", task=None)
        pt_celery._prerun(task_id=None, task=object())
        pt_celery._failure(task_id="missing", exception="not an exception")
        pt_celery._retry(request=None, reason=None)
        pt_celery._postrun(task_id="missing", state=None)
    assert pt.stats().get("internal_errors", 0) == 0


def _run_with_retry(task: Any, reason: Any) -> None:
    """Send a run's signals as a worker does when the task retries."""
    from celery import signals

    task.push_request(id="retried-task-id", retries=0)
    try:
        signals.task_prerun.send(sender=task, task_id="retried-task-id", task=task, args=(), kwargs={})
        signals.task_retry.send(sender=task, request=task.request, reason=reason, einfo=None)
        signals.task_postrun.send(
            sender=task,
            task_id="retried-task-id",
            task=task,
            args=(),
            kwargs={},
            retval=reason,
            state="RETRY",
        )
    finally:
        task.pop_request()


def test_retry_event_names_the_exception_that_caused_the_retry(app: Celery) -> None:
    from celery.exceptions import Retry

    @app.task(bind=True)
    def flaky(self: Any) -> None:
        pass

    with capture_spans() as mem:
        # Celery passes its Retry wrapper as the reason: the event names what it wraps
        _run_with_retry(flaky, Retry(exc=KeyError("first try"), when=0))
        _run_with_retry(flaky, Retry(when=0))  # self.retry() without exc: the wrapper itself
    runs = mem.spans(f"run {flaky.name}")
    assert [e["name"] for run in runs for e in run["events"]] == ["retry", "retry"]
    assert [run["events"][0]["attributes"]["celery.retry.reason"] for run in runs] == ["KeyError", "Retry"]
    assert [run["attributes"]["celery.task.state"] for run in runs] == ["RETRY", "RETRY"]


def test_a_retry_that_starts_before_the_first_run_ends_keeps_both_runs(app: Celery) -> None:
    """``self.retry(countdown=0, throw=False)`` then more work, in a threads pool: the retry's
    run (same task id, a new request) starts in another thread before the first run's
    ``task_postrun``. Both runs are exported, each ended in its own thread, and the retry's
    ``send`` span is a child of the first run and the parent of the second."""
    from celery import signals
    from celery.exceptions import Retry

    @app.task(bind=True)
    def slow(self: Any) -> None:  # never called: the signals are sent as a worker sends them
        pass

    task_id = "fixed-task-id"
    second_started, first_done, second_done = threading.Event(), threading.Event(), threading.Event()
    resent: dict[str, Any] = {}
    errors: list[BaseException] = []

    def second_run() -> None:
        try:
            slow.push_request(id=task_id, retries=1, **resent)
            try:
                signals.task_prerun.send(sender=slow, task_id=task_id, task=slow, args=(), kwargs={})
                with pt.span("second work"):
                    second_started.set()
                    assert first_done.wait(10)
                signals.task_postrun.send(
                    sender=slow,
                    task_id=task_id,
                    task=slow,
                    args=(),
                    kwargs={},
                    retval="second",
                    state="SUCCESS",
                )
            finally:
                slow.pop_request()
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)
        finally:
            second_done.set()

    with capture_spans() as mem:
        slow.push_request(id=task_id, retries=0)
        try:
            signals.task_prerun.send(sender=slow, task_id=task_id, task=slow, args=(), kwargs={})
            first_request = slow.request
            # the retry is sent from the first run (retry(throw=False) does not leave the task)
            headers: dict[str, Any] = {"id": task_id, "task": slow.name}
            signals.before_task_publish.send(sender=slow.name, headers=headers, routing_key="celery")
            signals.after_task_publish.send(sender=slow.name, headers=headers, routing_key="celery")
            resent.update({k: headers[k] for k in ("traceparent", "tracestate", "baggage") if k in headers})
            thread = threading.Thread(target=second_run)
            thread.start()
            assert second_started.wait(10)
            signals.task_retry.send(
                sender=slow, request=first_request, reason=Retry(exc=KeyError("x")), einfo=None
            )
            with pt.span("first work"):
                pass
            signals.task_postrun.send(
                sender=slow, task_id=task_id, task=slow, args=(), kwargs={}, retval="first", state="SUCCESS"
            )
            first_done.set()
        finally:
            slow.pop_request()
            first_done.set()
        thread.join(10)
        assert not errors, errors
        assert pt.current_span().is_recording is False
    runs = mem.spans(f"run {slow.name}")
    (send,) = mem.spans(f"send {slow.name}")
    (first_work,) = mem.spans("first work")
    (second_work,) = mem.spans("second work")
    assert len(runs) == 2, runs
    first, second = sorted(runs, key=lambda s: s["attributes"].get("celery.task.retries", 0))
    assert [e["name"] for e in first["events"]] == ["retry"]
    assert send["parent_span_id"] == first["span_id"]
    assert second["parent_span_id"] == send["span_id"]
    assert second["attributes"]["celery.task.retries"] == 1
    assert first_work["parent_span_id"] == first["span_id"]
    assert second_work["parent_span_id"] == second["span_id"]
    assert not pt_celery._running  # nothing left open
