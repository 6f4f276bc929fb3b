"""Celery tasks that are taken by a real worker but never run to the end (revoked before
running, expired, terminated while running in a prefork pool process, a task the worker does
not know, a message it cannot read), and chains/groups/chords: a real prefork worker over a
Redis broker and result backend. Every message the sender traced ends in a ``run`` span of
the sender's trace."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from tests.support.celeryworker import redis_celery_worker, runs_of, worker_spans

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("celery16b")]

TASKS = textwrap.dedent(
    """
    import os, time
    from pitchey_trace.celery import instrument_celery
    from tests.support.celeryworker import export_worker_spans, redis_app

    base = os.environ["PT_CELERY_DIR"]
    app = redis_app("tasks16b", "q16b")
    export_worker_spans("worker16b")
    instrument_celery()

    @app.task
    def add(x, y):
        return x + y

    @app.task
    def total(xs):
        return sum(xs)

    @app.task
    def sleepy(seconds):
        open(base + "/sleepy-started", "w").close()
        time.sleep(seconds)
        return seconds
    """
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A prefork worker (two pool processes) over a throwaway Redis, and the task module."""
    base = tmp_path_factory.mktemp("celery16b")
    with redis_celery_worker(base, "tasks16b", TASKS, "q16b") as tasks:
        yield base, tasks


def test_chain_group_and_chord_tasks_each_continue_from_their_own_send(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    from celery import chain, chord, group

    with capture_spans() as mem:
        with pt.span("POST /scores"):
            chained = chain(tasks.add.s(1, 2), tasks.add.s(3)).delay()
            grouped = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).delay()
            chorded = chord([tasks.add.s(5, 5), tasks.add.s(6, 6)], tasks.total.s()).delay()
    (request,) = mem.spans("POST /scores")
    # (waiting on the spans, not on the results: no result subscription is left in this process)
    assert grouped.id

    def runs_of_request(ss: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in ss if s["name"].startswith("run ") and s["trace_id"] == request["trace_id"]]

    spans = worker_spans(base, lambda ss: len(runs_of_request(ss)) >= 7, timeout=60)
    every = {s["span_id"]: s for s in [*spans, *mem.spans()]}
    runs = runs_of_request(spans)
    assert len(runs) == 7  # 2 chained, 2 grouped, 2 in the chord's header, its body
    for run in runs:
        send = every[run["parent_span_id"]]
        assert send["name"] == "send " + run["name"].removeprefix("run ")
        assert send["attributes"]["messaging.message.id"] == run["attributes"]["messaging.message.id"]
    # the chain's second task and the chord's body are sent by the worker, from a run
    (second,) = runs_of(spans, chained.id)
    (body,) = runs_of(spans, chorded.id)
    for late in (second, body):
        sender = every[every[late["parent_span_id"]]["parent_span_id"]]
        assert sender["name"].startswith("run tasks16b.")


def test_a_task_revoked_before_it_runs_is_a_revoked_run_span(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    with capture_spans() as mem:
        with pt.span("POST /cancel"):
            # (time enough for the revoke to reach the worker, on a busy machine too)
            result = tasks.add.apply_async((1, 1), countdown=8)
        result.revoke()
    (send,) = mem.spans("send tasks16b.add")
    spans = worker_spans(base, lambda ss: runs_of(ss, result.id), timeout=30)
    (run,) = runs_of(spans, result.id)
    assert run["parent_span_id"] == send["span_id"]
    assert run["trace_id"] == send["trace_id"]
    assert run["kind"] == "consumer"
    assert run["attributes"]["celery.task.state"] == "REVOKED"
    assert run["attributes"]["messaging.operation.type"] == "process"


def test_an_expired_task_is_a_revoked_run_span(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    with capture_spans() as mem:
        result = tasks.add.apply_async((2, 2), countdown=2, expires=0.5)
    (send,) = mem.spans("send tasks16b.add")
    spans = worker_spans(base, lambda ss: runs_of(ss, result.id), timeout=30)
    (run,) = runs_of(spans, result.id)
    assert run["parent_span_id"] == send["span_id"]
    assert run["attributes"]["celery.task.state"] == "REVOKED"
    assert run["attributes"]["celery.task.expired"] is True


def test_a_task_terminated_in_a_pool_process_is_a_revoked_run_span(worker: tuple[Path, Any]) -> None:
    """``revoke(terminate=True)`` kills the pool process running it: that process never exports
    its run span, the worker's main process records one."""
    base, tasks = worker
    (base / "sleepy-started").unlink(missing_ok=True)
    with capture_spans() as mem:
        result = tasks.sleepy.delay(60)
        deadline = time.monotonic() + 20
        while not (base / "sleepy-started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result.revoke(terminate=True)
    (send,) = mem.spans("send tasks16b.sleepy")
    spans = worker_spans(base, lambda ss: runs_of(ss, result.id), timeout=30)
    (run,) = runs_of(spans, result.id)
    assert run["parent_span_id"] == send["span_id"]
    assert run["attributes"]["celery.task.state"] == "REVOKED"
    assert run["attributes"]["celery.task.terminated"] is True


def test_a_task_the_worker_does_not_know_is_an_error_run_span(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    with capture_spans() as mem:
        with pt.span("POST /typo"):
            result = tasks.app.send_task("tasks16b.no_such_task", (1,))
    (send,) = mem.spans("send tasks16b.no_such_task")
    spans = worker_spans(base, lambda ss: runs_of(ss, result.id), timeout=30)
    (run,) = runs_of(spans, result.id)
    assert run["name"] == "run tasks16b.no_such_task"
    assert run["parent_span_id"] == send["span_id"]
    assert run["status"] == "error"
    assert run["attributes"]["error.type"] == "NotRegistered"
    assert run["attributes"]["celery.task.state"] == "FAILURE"


def test_a_message_the_worker_cannot_take_is_a_rejected_run_span(worker: tuple[Path, Any]) -> None:
    """A message without a task (published by hand, a foreign producer): rejected by the worker,
    the span continues the trace its headers carry."""
    base, tasks = worker
    traceparent = "00-" + "5" * 32 + "-" + "6" * 16 + "-01"
    with tasks.app.producer_or_acquire() as producer:
        producer.publish(
            {"not": "a task"},
            routing_key="q16b",
            exchange="",
            headers={"traceparent": traceparent, "tracestate": b"bytes=ignored", "baggage": 7},
            serializer="json",
        )
    spans = worker_spans(base, lambda ss: any(s["trace_id"] == "5" * 32 for s in ss), timeout=30)
    (run,) = [s for s in spans if s["trace_id"] == "5" * 32]
    assert run["name"] == "run unknown"
    assert run["parent_span_id"] == "6" * 16
    assert run["status"] == "error"
    assert run["attributes"]["celery.task.state"] == "REJECTED"
    assert run["attributes"]["error.type"] == "UnknownMessage"
