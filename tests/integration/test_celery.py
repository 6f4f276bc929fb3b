"""Celery across processes: tasks sent from this process (a traced request) run in a real
Celery worker process over the filesystem broker, with the solo pool and with the prefork pool
(Celery's default: the tasks run in a forked child, whose pipeline is a fresh one); the
worker's spans continue the sender's trace."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from tests.support.celeryworker import celery_worker

pytestmark = pytest.mark.integration

TASKS = textwrap.dedent(
    """
    import os
    from celery import Celery
    import pitchey_trace as pt
    from pitchey_trace.celery import instrument_celery
    from tests.support.celeryworker import export_worker_spans

    base = os.environ["PT_CELERY_DIR"]
    app = Celery("pitch_tasks", broker="filesystem://")
    app.conf.update(
        broker_transport_options={
            "data_folder_in": base + "/queue", "data_folder_out": base + "/queue",
            "processed_folder": base + "/done", "store_processed": False,
        },
        task_default_queue="pitches",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    export_worker_spans("pitch-worker")
    instrument_celery()

    @app.task(bind=True)
    def score_pitch(self, pitch_id, card):
        with pt.span("score", attributes={"pitch.id": pitch_id}):
            if pitch_id == 13:
                raise ValueError("unlucky pitch")
        return pitch_id * 2

    @app.task(bind=True, max_retries=2)
    def flaky(self):
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("first try"), countdown=0)
        return "ok"

    @app.task(bind=True, max_retries=1)
    def keep_going(self):
        # retry without leaving the task: with two threads, the retry runs before this run ends
        if self.request.retries == 0:
            import time
            self.retry(exc=KeyError("later"), countdown=0, throw=False)
            deadline = time.monotonic() + 20
            while not os.path.exists(base + "/second-ran") and time.monotonic() < deadline:
                time.sleep(0.05)
            with pt.span("more work"):
                return "first"
        open(base + "/second-ran", "w").close()
        return "second"
    """
)


@pytest.fixture(params=["solo", "prefork"])
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """The task module in tmp_path, a worker process running it, and the module imported here."""
    yield from _worker(tmp_path, request.param, 1)


@pytest.fixture
def threads_worker(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """As ``worker``, with the threads pool running two tasks at once."""
    yield from _worker(tmp_path, "threads", 2)


def _worker(tmp_path: Path, pool: str, concurrency: int) -> Iterator[tuple[Path, Any]]:
    (tmp_path / "queue").mkdir()
    (tmp_path / "done").mkdir()

    def show_unexpected_tracebacks(out: str) -> None:
        if "Traceback" in out and not any(m in out for m in ("unlucky pitch", "first try", "later")):
            print(out)

    with celery_worker(
        tmp_path,
        "pitch_tasks",
        TASKS,
        "pitches",
        pool=pool,
        concurrency=concurrency,
        worker_env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
        on_output=show_unexpected_tracebacks,
    ) as tasks:
        yield tmp_path, tasks


def worker_spans(base: Path, runs: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The worker's spans, once ``runs`` task runs were exported (or the timeout passed)."""
    path = base / "worker-spans.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        spans = [r for r in records if r["type"] == "span"]
        if sum(s["name"].startswith("run ") for s in spans) >= runs or time.monotonic() > deadline:
            time.sleep(0.3)  # (the spans of the last run's batch, if split)
            return [json.loads(line) for line in path.read_text().splitlines() if '"type": "span"' in line]
        time.sleep(0.1)


def test_tasks_continue_the_senders_trace_in_the_worker(worker: tuple[Path, Any]) -> None:
    base, tasks = worker
    from pitchey_trace.celery import instrument_celery, uninstrument_celery

    with capture_spans() as mem:
        instrument_celery()
        with pt.span("POST /pitches/42/score"):
            tasks.score_pitch.delay(42, "4111 1111 1111 1111")
        tasks.score_pitch.delay(13, None)
        tasks.flaky.delay()
        # run score_pitch x2, run flaky x2 (the retry re-runs it)
        spans = worker_spans(base, runs=4)
        uninstrument_celery()
    sent = {s["span_id"]: s for s in mem.spans() if s["name"].startswith("send ")}
    assert sorted(s["name"] for s in sent.values()) == [
        "send pitch_tasks.flaky",
        "send pitch_tasks.score_pitch",
        "send pitch_tasks.score_pitch",
    ]
    (request,) = mem.spans("POST /pitches/42/score")
    runs = [s for s in spans if s["name"].startswith("run ")]
    assert len(runs) == 4, [s["name"] for s in spans]
    for run in runs:
        assert run["kind"] == "consumer"
        assert run["service"] == "pitch-worker"
        assert run["attributes"]["messaging.system"] == "celery"
        assert run["attributes"]["messaging.operation.type"] == "process"
        assert run["attributes"]["messaging.operation.name"] == "process"
    for send in [*sent.values(), *(s for s in spans if s["name"].startswith("send "))]:
        assert send["kind"] == "producer"
        assert send["attributes"]["messaging.operation.type"] == "send"
        assert send["attributes"]["messaging.operation.name"] == "publish"
    ok, failed = sorted(
        (s for s in runs if s["name"] == "run pitch_tasks.score_pitch"),
        key=lambda s: s["attributes"]["celery.task.state"] != "SUCCESS",
    )
    # across processes: the worker's span is the child of the send span, in the request's trace
    send_ok = sent[ok["parent_span_id"]]
    assert send_ok["parent_span_id"] == request["span_id"]
    assert ok["trace_id"] == request["trace_id"]
    assert send_ok["kind"] == "producer"
    assert send_ok["attributes"]["messaging.message.id"] == ok["attributes"]["messaging.message.id"]
    (score,) = [s for s in spans if s["name"] == "score" and s["trace_id"] == ok["trace_id"]]
    assert score["parent_span_id"] == ok["span_id"]  # the task's own spans nest under its run
    assert failed["status"] == "error"
    assert failed["attributes"]["celery.task.state"] == "FAILURE"
    assert any(e["name"] == "exception" for e in failed["events"])
    assert failed["parent_span_id"] in sent  # no request around it: the send span is the root
    flaky = [s for s in runs if s["name"] == "run pitch_tasks.flaky"]
    states = sorted(s["attributes"]["celery.task.state"] for s in flaky)
    assert states == ["RETRY", "SUCCESS"]
    retried = next(s for s in flaky if s["attributes"]["celery.task.state"] == "RETRY")
    assert [e["name"] for e in retried["events"]] == ["retry"]
    # Celery signals its Retry wrapper: the event names the exception it wraps
    assert retried["events"][0]["attributes"]["celery.retry.reason"] == "KeyError"
    again = next(s for s in flaky if s["attributes"]["celery.task.state"] == "SUCCESS")
    assert again["attributes"]["celery.task.retries"] == 1
    # the retry is sent again from the worker: a send span under the first run, parent of the next
    (resent,) = [s for s in spans if s["name"] == "send pitch_tasks.flaky"]
    assert resent["parent_span_id"] == retried["span_id"]
    assert again["parent_span_id"] == resent["span_id"]
    assert "4111 1111 1111 1111" not in json.dumps(spans + mem.records)  # arguments never recorded


def test_a_retry_running_before_the_retried_run_ends(threads_worker: tuple[Path, Any]) -> None:
    """``self.retry(throw=False)`` then more work, two threads: the retry (same task id) runs
    while the first run is still going. Both runs are exported, the retry's ``send`` span is a
    child of the first run and the parent of the second."""
    base, tasks = threads_worker
    from pitchey_trace.celery import instrument_celery, uninstrument_celery

    with capture_spans() as mem:
        instrument_celery()
        with pt.span("POST /pitches/7/rescore"):
            tasks.keep_going.apply_async(task_id="rescore-7")
        spans = worker_spans(base, runs=2, timeout=45)
        uninstrument_celery()
    (request,) = mem.spans("POST /pitches/7/rescore")
    (sent,) = mem.spans("send pitch_tasks.keep_going")
    runs = [s for s in spans if s["name"] == "run pitch_tasks.keep_going"]
    assert len(runs) == 2, [s["name"] for s in spans]
    first = next(s for s in runs if s["parent_span_id"] == sent["span_id"])
    second = next(s for s in runs if s is not first)
    assert first["trace_id"] == second["trace_id"] == request["trace_id"]
    # retry(throw=False) raises nothing (so no task_retry signal, no event) and the task returns
    assert first["attributes"]["celery.task.state"] == "SUCCESS"
    (resent,) = [s for s in spans if s["name"] == "send pitch_tasks.keep_going"]
    assert resent["parent_span_id"] == first["span_id"]
    assert second["parent_span_id"] == resent["span_id"]
    assert second["attributes"]["celery.task.retries"] == 1
    assert (
        second["attributes"]["messaging.message.id"]
        == first["attributes"]["messaging.message.id"]
        == "rescore-7"
    )
    (more,) = [s for s in spans if s["name"] == "more work"]
    assert more["parent_span_id"] == first["span_id"]
    assert second["start_time_unix_nano"] < first["end_time_unix_nano"]  # they did overlap
