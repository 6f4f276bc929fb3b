"""os.fork(): the child gets a fresh worker and an empty queue; the parent is unaffected."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pitchey_trace as pt


class FileExporter:
    """Appends NDJSON to a file named after the exporting process's pid."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def export(self, batch: list[dict[str, Any]]) -> bool:
        with open(self.directory / f"{os.getpid()}.ndjson", "a") as fh:
            for rec in batch:
                fh.write(json.dumps(rec) + "\n")
        return True


def test_fork_child_exports_its_own_spans_and_parent_queue_is_intact(tmp_path: Path) -> None:
    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    # spans queued in the parent before the fork must be exported by the parent only
    for i in range(100):
        with pt.span("parent_before", attributes={"i": i}):
            pass
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(50):
                with pt.span("child", attributes={"i": i}):
                    pass
            code = 0 if pt.shutdown(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pt.span("parent_after"):
        pass
    assert pt.shutdown(10)

    def names(p: int) -> list[str]:
        path = tmp_path / f"{p}.ndjson"
        return [json.loads(line)["name"] for line in path.read_text().splitlines()]

    child = names(pid)
    parent = names(os.getpid())
    assert child == ["child"] * 50  # nothing inherited from the parent's queue
    assert sorted(parent) == ["parent_after"] + ["parent_before"] * 100
    child_resource = json.loads((tmp_path / f"{pid}.ndjson").read_text().splitlines()[0])["resource"]
    assert child_resource["process.pid"] == pid


def test_fork_while_another_thread_holds_the_rate_limiter_lock() -> None:
    import signal
    import threading

    sampler = pt.RateLimited(100)
    pt.configure(service="forky", exporters=[], sampler=sampler, rollups=None)
    held, release = threading.Event(), threading.Event()

    def request_thread() -> None:  # inside should_sample() at the moment of the fork
        with sampler._lock:
            held.set()
            release.wait()

    t = threading.Thread(target=request_thread)
    t.start()
    held.wait()
    try:
        pid = os.fork()
        if pid == 0:  # child: the lock's holder does not exist here
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # (not pytest-timeout's handler)
            signal.alarm(5)  # a hang ends the child by SIGALRM instead of the test run
            code = 1
            try:
                with pt.span("in child"):
                    pass
                code = 0
            finally:
                os._exit(code)
    finally:
        release.set()
        t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
