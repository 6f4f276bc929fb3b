"""pitchey_trace.celery and pitchey_trace.botocore in one process: task names are cleaned of
control and bidi characters, ``Reject`` records its reason and requeue, a terminated task's
span starts with the worker's record of when it started; a botocore error without an error
code has its HTTP status code as ``error.type``, and retries are the ``http.request.resend_count``
(a ``Stubber`` answers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.stub import Stubber
from celery import Celery, signals
from celery.app.task import Context
from celery.exceptions import Reject

from pitchey_trace import celery as pt_celery
from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore
from pitchey_trace.celery import instrument_celery, uninstrument_celery
from pitchey_trace.testing import capture_spans, swallowed_errors

#: Each character a task name must not bring into a span.
UNSAFE = [
    *map(chr, range(0x20)),
    *map(chr, range(0x7F, 0xA0)),
    "\u061c",
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
]


@pytest.fixture
def app() -> Iterator[Celery]:
    instrument_celery()
    try:
        with swallowed_errors() as swallowed:
            yield Celery("unit17", broker="memory://")
        assert swallowed == []
    finally:
        uninstrument_celery()


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_each_control_and_bidi_character_is_replaced(char: str) -> None:
    assert pt_celery._safe(f"tasks.a{char}b") == "tasks.a\ufffdb"


@pytest.mark.parametrize("name", ["tasks.score_pitch", "tâches.über", "任务.发送", "a b", "x\u00e9\u0301"])
def test_a_printable_name_is_kept_as_it_is(name: str) -> None:
    assert pt_celery._safe(name) is name


def test_an_eager_task_with_a_hostile_name_has_a_clean_span(app: Celery) -> None:
    @app.task(name="tasks.pay\u202eexe.txt\r\n")
    def hostile() -> None:
        pass

    with capture_spans() as mem:
        with app.connection_for_write() as conn:
            hostile.apply_async(connection=conn)
        hostile.apply()
    (send,) = mem.spans("send tasks.pay\ufffdexe.txt\ufffd\ufffd")
    (run,) = mem.spans("run tasks.pay\ufffdexe.txt\ufffd\ufffd")
    for span in (send, run):
        assert span["attributes"]["celery.task.name"] == "tasks.pay\ufffdexe.txt\ufffd\ufffd"
    route = pt_celery._attributes("t", None, "send", "q\u2067\x00")["messaging.destination.name"]
    assert route == "q\ufffd\ufffd"  # (a routing key too)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_rejected_eager_task_records_the_reason_and_the_requeue(app: Celery) -> None:
    reasons: list[Any] = ["queue full", None, KeyError("pitch 7"), _Unprintable(), ValueError()]

    @app.task(bind=True)
    def picky(self: Any, i: int) -> None:
        raise Reject(reasons[i], requeue=i == 0)

    with capture_spans() as mem:
        for i in range(len(reasons)):
            picky.apply((i,))
    runs = mem.spans(f"run {picky.name}")
    assert len(runs) == len(reasons)
    assert [r["attributes"]["celery.task.state"] for r in runs] == ["REJECTED"] * len(reasons)
    assert [r["attributes"]["celery.reject.requeue"] for r in runs] == [True, False, False, False, False]
    assert [r["attributes"].get("celery.reject.reason") for r in runs] == [
        "queue full",
        None,
        "KeyError: 'pitch 7'",
        "_Unprintable: <unprintable _Unprintable>",
        "ValueError",
    ]
    # a requeue is the task's choice; without one the message is dropped: its work is lost
    assert [r["status"] for r in runs] == ["unset"] + ["error"] * 4
    assert [r["attributes"].get("error.type") for r in runs] == [None] + ["Reject"] * 4
    assert [r.get("status_message") for r in runs[1:]] == [
        "Reject",
        "Reject: KeyError: 'pitch 7'",
        "Reject: _Unprintable: <unprintable _Unprintable>",
        "Reject: ValueError",
    ]


class _WorkerRequest:
    """Stands for Celery's worker ``Request`` (the main process's record of a task)."""

    def __init__(self, task_id: str, time_start: Any) -> None:
        self.id = task_id
        self.time_start = time_start

    def _announce_revoked(self, task: Any, context: Any) -> None:
        signals.task_revoked.send(task, request=context, terminated=True, signum=15, expired=False)


def test_a_terminated_tasks_span_starts_when_the_worker_says_it_started(app: Celery) -> None:
    @app.task
    def sleepy() -> None:
        pass

    started = time.time() - 2.5
    context = Context(id="t-1", task=sleepy.name, delivery_info={"routing_key": "celery"})
    with capture_spans() as mem:
        _WorkerRequest("t-1", started)._announce_revoked(sleepy, context)
        # no such record above the receiver, another task's, one from the future: at the revoke
        signals.task_revoked.send(sleepy, request=Context(id="t-2"), terminated=True)
        _WorkerRequest("t-3", started)._announce_revoked(sleepy, Context(id="t-other"))
        _WorkerRequest("t-4", time.time() + 60)._announce_revoked(sleepy, Context(id="t-4"))
    by_id = {s["attributes"]["messaging.message.id"]: s for s in mem.spans()}
    assert abs(by_id["t-1"]["start_time_unix_nano"] - int(started * 1e9)) < 1000
    assert by_id["t-1"]["duration_ms"] >= 2400
    assert by_id["t-1"]["attributes"]["celery.task.terminated"] is True
    for other in ("t-2", "t-other", "t-4"):
        assert by_id[other]["duration_ms"] < 1000, other


def test_a_failing_start_lookup_costs_the_start_time_not_the_span(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pitchey_trace.celery as pt_celery

    @app.task
    def sleepy() -> None:
        pass

    def shallow(depth: int = 0) -> Any:  # (as from a stack too shallow: ValueError)
        raise ValueError("call stack is not deep enough")

    monkeypatch.setattr(pt_celery.sys, "_getframe", shallow)
    with capture_spans() as mem, swallowed_errors() as swallowed:
        _WorkerRequest("t-9", time.time() - 2.5)._announce_revoked(sleepy, Context(id="t-9"))
    (span,) = mem.spans()
    assert span["attributes"]["celery.task.terminated"] is True
    assert span["duration_ms"] < 1000  # (started at the revoke)
    assert [kind for kind, _ in swallowed] == ["celery.revoked.start"]


@pytest.fixture
def s3() -> Iterator[Any]:
    instrument_botocore()
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    try:
        with swallowed_errors() as swallowed:
            yield client
        assert swallowed == []
    finally:
        uninstrument_botocore()


def test_an_error_without_a_code_has_its_status_code_as_error_type(s3: Any) -> None:
    with Stubber(s3) as stub, capture_spans() as mem:
        stub.add_client_error("head_object", service_error_code="", http_status_code=404)
        stub.add_client_error("head_object", service_error_code="", http_status_code=503)
        stub.add_client_error("head_object", service_error_code="NoSuchKey", http_status_code=404)
        for _ in range(3):
            with pytest.raises(botocore.exceptions.ClientError):
                s3.head_object(Bucket="b", Key="k")
    assert [s["attributes"]["error.type"] for s in mem.spans()] == ["404", "503", "NoSuchKey"]
    assert {s["status"] for s in mem.spans()} == {"error"}


def test_an_error_response_of_an_odd_shape_still_ends_the_span(s3: Any) -> None:
    def odd(**_: Any) -> None:
        exc = botocore.exceptions.ClientError({}, "HeadObject")
        exc.response = {"Error": "not a dict", "ResponseMetadata": []}
        raise exc

    s3.meta.events.register("before-call.s3.HeadObject", odd)
    with capture_spans() as mem:
        with pytest.raises(botocore.exceptions.ClientError):
            s3.head_object(Bucket="b", Key="k")
    (span,) = mem.spans()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "ClientError"


def test_retry_attempts_are_the_resend_count(s3: Any) -> None:
    with Stubber(s3) as stub, capture_spans() as mem:
        stub.add_response("list_buckets", {"Buckets": [], "ResponseMetadata": {"RetryAttempts": 3}})
        stub.add_response("list_buckets", {"Buckets": [], "ResponseMetadata": {"RetryAttempts": 0}})
        stub.add_client_error(
            "list_buckets", "Throttling", http_status_code=400, response_meta={"RetryAttempts": 4}
        )
        s3.list_buckets()
        s3.list_buckets()
        with pytest.raises(botocore.exceptions.ClientError):
            s3.list_buckets()
    assert [s["attributes"].get("http.request.resend_count") for s in mem.spans()] == [3, None, 4]
