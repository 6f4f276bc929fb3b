"""``max_concurrent_requests``: the requests of one batch sent at once, each by a thread on a
sender (connection) of its own, without the network: ``_deliver`` is replaced by one that
records who sent what."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import HttpAnalyticsExporter
from pitchey_trace.exporters._http import HttpResult, HttpSender

URL = "http://127.0.0.1:9/points"


class Recording(HttpAnalyticsExporter):
    """Requests recorded (by sender and thread) instead of sent; each waits at ``barrier``
    (when set), which only opens when that many requests are in progress at once."""

    def __init__(self, *args: Any, fail: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_concurrent_requests", 4)
        super().__init__(URL, *args, **kwargs)
        self.sent: list[tuple[HttpSender | None, str, list[str]]] = []
        self.barrier: threading.Barrier | None = None
        self.fail = fail  # the request holding this point number fails (given up)
        self.boom = False

    def _deliver(self, payload: bytes, items: int, sender: HttpSender | None = None) -> HttpResult | None:
        names = [p["blobs"][3] for p in json.loads(payload)["points"]]
        if self.barrier is not None:
            self.barrier.wait(10)
        if self.boom and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("a bug in a sending thread")
        self.sent.append((sender, threading.current_thread().name, names))
        if self.fail is not None and f"op{self.fail}" in names:
            return HttpResult(False, 500, error="HTTP 500")
        return HttpResult(True, 204)


def _batch(n: int) -> list[dict[str, Any]]:
    return [{"type": "span", "service": "s", "name": f"op{i}"} for i in range(n)]


@pytest.mark.parametrize("bad", [0, -1, 33, True, 2.0, "4", None])
def test_max_concurrent_requests_is_checked(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_concurrent_requests"):
        HttpAnalyticsExporter(URL, max_concurrent_requests=bad)


def test_a_sender_of_its_own_per_extra_request() -> None:
    # (one at a time by default: requests of a batch arrive in order, as before)
    assert HttpAnalyticsExporter(URL).max_concurrent_requests == 1
    assert HttpAnalyticsExporter(URL)._lane_senders == ()
    exp = HttpAnalyticsExporter(URL, max_concurrent_requests=4)
    assert exp.max_concurrent_requests == 4
    lanes = exp._lane_senders
    assert len(lanes) == 3
    assert len({id(s) for s in (exp._sender, *lanes)}) == 4
    assert HttpAnalyticsExporter(URL, max_concurrent_requests=1)._lane_senders == ()


def test_requests_of_one_batch_are_in_progress_at_once() -> None:
    exp = Recording()
    exp.barrier = threading.Barrier(4)  # (breaks after 10 s unless all four wait together)
    assert exp.export(_batch(1000)) is True
    assert len(exp.sent) == 4
    senders = {id(sender) for sender, _, _ in exp.sent}
    assert len(senders) == 4  # (each on its own connection)
    assert sorted(n for _, _, names in exp.sent for n in names) == sorted(f"op{i}" for i in range(1000))
    assert _stats.get("http_analytics.points") == 1000


def test_no_more_threads_than_requests() -> None:
    exp = Recording()
    assert exp.export(_batch(300)) is True  # (2 requests: one extra thread, the caller sends too)
    threads = {thread for _, thread, _ in exp.sent}
    assert threads <= {threading.current_thread().name, "pitchey-trace-send-http_analytics"}
    assert len(exp.sent) == 2
    exp.sent.clear()
    assert exp.export(_batch(250)) is True  # (1 request: no thread at all)
    assert [thread for _, thread, _ in exp.sent] == [threading.current_thread().name]


def test_one_at_a_time_with_max_concurrent_requests_1() -> None:
    exp = Recording(max_concurrent_requests=1)
    assert exp.export(_batch(1000)) is True
    assert {thread for _, thread, _ in exp.sent} == {threading.current_thread().name}
    assert [names[0] for _, _, names in exp.sent] == ["op0", "op250", "op500", "op750"]  # (in order)


def test_a_request_given_up_is_counted_once_as_part_of_the_batch() -> None:
    exp = Recording(fail=600)
    result = exp.export(_batch(1000))
    assert isinstance(result, _stats.PartlyFailed)
    assert int(result) == 250
    assert _stats.get("dropped.export_failed.http_analytics") == 250
    assert _stats.get("http_analytics.points") == 750


def test_every_request_given_up_fails_the_batch() -> None:
    exp = Recording()

    def fail_all(payload: bytes, items: int, sender: HttpSender | None = None) -> HttpResult | None:
        return HttpResult(False, 500, error="HTTP 500")

    exp._deliver = fail_all  # type: ignore[method-assign]
    assert exp.export(_batch(1000)) is False  # (the export worker counts the whole batch)
    assert _stats.get("dropped.export_failed.http_analytics") == 0


def test_a_bug_in_a_sending_thread_is_raised_to_the_caller() -> None:
    # (as it would be on one thread: the export worker reports it and counts the batch)
    exp = Recording()
    exp.boom = True
    with pytest.raises(RuntimeError, match="sending thread"):
        exp.export(_batch(1000))
    assert not [t for t in threading.enumerate() if t.name.startswith("pitchey-trace-send-")]


def test_shutdown_aborts_every_sender() -> None:
    exp = HttpAnalyticsExporter(URL, max_concurrent_requests=4)
    exp.shutdown(1)
    assert exp._sender.aborted  # type: ignore[union-attr]
    assert all(lane.aborted for lane in exp._lane_senders)


def test_after_fork_forgets_every_connection() -> None:
    exp = HttpAnalyticsExporter(URL, max_concurrent_requests=4)
    before = exp._lane_senders
    for lane in before:
        lane._pid = -1  # (as if made by another process)
        lane._conn = object()  # type: ignore[assignment]
    exp.after_fork()
    assert exp._lane_senders == before
    assert all(lane._conn is None and lane._pid == os.getpid() for lane in before)
