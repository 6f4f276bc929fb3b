"""Celery with a real prefork worker over a Redis broker and result backend: hostile task names
(control characters, Unicode bidi overrides) never reach span names or attributes as they are,
a task that raises ``Reject`` records the reason and whether it was requeued, and a task
terminated while running has a ``run`` span that starts when the task started."""

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

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("celery17")]

#: A registered task's name with an escape sequence, a newline, a right-to-left override and
#: isolates, a right-to-left mark and a C1 control character in it.
EVIL = "tasks17.invoice\u202egpj.exe\x1b[2J\n\u2066x\u2069\u200f\x85end"
EVIL_CLEAN = "tasks17.invoice\ufffdgpj.exe\ufffd[2J\ufffd\ufffdx\ufffd\ufffd\ufffdend"
#: The characters no exported name or attribute may carry.
UNSAFE = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F]}
UNSAFE |= {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}

TASKS = textwrap.dedent(
    """
    import os, time
    from celery.exceptions import Reject
    from pitchey_trace.celery import instrument_celery
    from tests.support.celeryworker import export_worker_spans, redis_app

    base = os.environ["PT_CELERY_DIR"]
    app = redis_app("tasks17", "q17")
    export_worker_spans("worker17")
    instrument_celery()

    EVIL = "tasks17.invoice\\u202egpj.exe\\x1b[2J\\n\\u2066x\\u2069\\u200f\\x85end"

    @app.task(name=EVIL)
    def evil():
        return 1

    @app.task(bind=True, acks_late=True)
    def picky(self):
        # the first run sends the message back to the queue, the second drops it
        marker = base + "/picky-" + self.request.id
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise Reject("not yet", requeue=True)
        raise Reject(ValueError("bad input"), requeue=False)

    @app.task
    def sleepy(seconds):
        with open(base + "/sleepy-started.tmp", "w") as f:
            f.write(str(time.time_ns()))
        os.replace(base + "/sleepy-started.tmp", base + "/sleepy-started")
        time.sleep(seconds)
        return seconds
    """
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A prefork worker (two pool processes) over a throwaway Redis, and the task module."""
    base = tmp_path_factory.mktemp("celery17")
    with redis_celery_worker(base, "tasks17", TASKS, "q17") as tasks:
        yield base, tasks


def _texts(span: dict[str, Any]) -> list[str]:
    """The span's name and every string attribute value."""
    return [span["name"], *(v for v in span["attributes"].values() if isinstance(v, str))]


def test_hostile_task_names_reach_no_span_name_or_attribute(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    assert tasks.EVIL == EVIL  # (the worker's task module spells the same name)
    missing = EVIL + ".missing\u202d"
    with capture_spans() as mem:
        with pt.span("POST /invoices"):
            # (only the ids are kept: a result left for the end would unsubscribe from a
            # stopped Redis)
            ran = tasks.evil.delay().id
            unknown = tasks.app.send_task(missing, ()).id
    sends = [s for s in mem.spans() if s["name"].startswith("send ")]
    assert [s["name"] for s in sends] == ["send " + EVIL_CLEAN, "send " + EVIL_CLEAN + ".missing\ufffd"]
    assert sends[0]["attributes"]["celery.task.name"] == EVIL_CLEAN
    spans = worker_spans(base, lambda ss: runs_of(ss, ran) and runs_of(ss, unknown))
    (run,) = runs_of(spans, ran)
    (unrun,) = runs_of(spans, unknown)
    assert run["name"] == "run " + EVIL_CLEAN
    assert run["attributes"]["celery.task.name"] == EVIL_CLEAN
    assert run["attributes"]["celery.task.state"] == "SUCCESS"
    assert run["parent_span_id"] == sends[0]["span_id"]
    assert unrun["name"] == "run " + EVIL_CLEAN + ".missing\ufffd"
    assert unrun["attributes"]["celery.task.name"] == EVIL_CLEAN + ".missing\ufffd"
    assert unrun["attributes"]["error.type"] == "NotRegistered"
    for span in [*sends, run, unrun]:
        for text in _texts(span):
            assert not UNSAFE & set(text), (span["name"], text)


def test_a_rejected_task_records_the_reason_and_the_requeue(worker: tuple[Path, Any]) -> None:
    """``Reject(requeue=True)`` puts the message back (the task runs again), ``requeue=False``
    drops it: each run span says which, and why."""
    base, tasks = worker
    with capture_spans() as mem:
        task_id = tasks.picky.delay().id
    (send,) = mem.spans("send tasks17.picky")
    spans = worker_spans(base, lambda ss: len(runs_of(ss, task_id)) >= 2)
    first, second = sorted(runs_of(spans, task_id), key=lambda s: s["start_time_unix_nano"])
    for run in (first, second):
        assert run["parent_span_id"] == send["span_id"]
        assert run["attributes"]["celery.task.state"] == "REJECTED"
    assert first["attributes"]["celery.reject.reason"] == "not yet"
    assert first["attributes"]["celery.reject.requeue"] is True
    assert second["attributes"]["celery.reject.reason"] == "ValueError: bad input"
    assert second["attributes"]["celery.reject.requeue"] is False
    assert (first["status"], second["status"]) == ("unset", "error")  # (the second's work is lost)
    assert second["status_message"] == "Reject: ValueError: bad input"


def test_a_terminated_tasks_run_span_starts_when_the_task_started(worker: tuple[Path, Any]) -> None:
    """``revoke(terminate=True)`` kills the pool process running the task; the worker's main
    process records its run span, from when the pool process took the task to the revoke."""
    base, tasks = worker
    (base / "sleepy-started").unlink(missing_ok=True)
    with capture_spans() as mem:
        task_id = tasks.sleepy.delay(60).id
        deadline = time.monotonic() + 20
        while not (base / "sleepy-started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started_ns = int((base / "sleepy-started").read_text())
        time.sleep(1.5)  # running for a while before it is terminated
        revoked_ns = time.time_ns()
        tasks.app.control.revoke(task_id, terminate=True)
    (send,) = mem.spans("send tasks17.sleepy")
    spans = worker_spans(base, lambda ss: runs_of(ss, task_id), timeout=30)
    (run,) = runs_of(spans, task_id)
    assert run["parent_span_id"] == send["span_id"]
    assert run["attributes"]["celery.task.terminated"] is True
    assert run["attributes"]["celery.task.state"] == "REVOKED"
    # it started with the task (the pool process takes it just before the task's first line),
    # not at the revoke
    assert send["start_time_unix_nano"] <= run["start_time_unix_nano"] <= started_ns + 50_000_000
    assert run["end_time_unix_nano"] >= revoked_ns - 50_000_000
    assert run["duration_ms"] >= 1400
