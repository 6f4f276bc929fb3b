"""pitchey_trace.celery in one process: eager tasks nest under the caller's span, and odd signal
arguments are ignored without raising into Celery."""

from __future__ import annotations

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
