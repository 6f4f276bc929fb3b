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


# -- multiprocessing children: they leave through os._exit(), past atexit --------------------------
def _names_by_pid(directory: Path) -> dict[int, list[str]]:
    return {
        int(path.stem): [json.loads(line)["name"] for line in path.read_text().splitlines()]
        for path in directory.glob("*.ndjson")
    }


def _mp_work(i: int = 0) -> int:
    with pt.span("mp child", attributes={"i": i}):
        pass
    return os.getpid()


def test_multiprocessing_fork_child_exports_its_spans_when_it_exits(tmp_path: Path) -> None:
    import multiprocessing

    # (a long delay: only the flush at the child's exit can send its span)
    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    child = multiprocessing.get_context("fork").Process(target=_mp_work)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert _names_by_pid(tmp_path) == {child.pid: ["mp child"]}


def test_multiprocessing_pool_workers_export_their_spans_when_they_exit(tmp_path: Path) -> None:
    import multiprocessing

    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        workers = set(pool.map(_mp_work, range(6)))
        pool.close()  # (workers leave normally; terminate() would kill them by SIGTERM)
        pool.join()
    finally:
        pool.terminate()
    exported = _names_by_pid(tmp_path)
    assert set(exported) == workers
    assert sorted(name for names in exported.values() for name in names) == ["mp child"] * 6


class HangingExporter:
    name = "hanging"

    def export(self, batch: list[dict[str, Any]]) -> bool:
        import time

        time.sleep(3600)  # a collector that never answers
        return True


def test_multiprocessing_child_exit_is_bounded_by_the_shutdown_budget(monkeypatch: Any) -> None:
    import multiprocessing
    import time

    from pitchey_trace import _config

    monkeypatch.setattr(_config, "_EXIT_TIMEOUT_S", 0.5)  # (the child inherits it)
    pt.configure(service="forky", exporters=[HangingExporter()], schedule_delay_ms=60_000, rollups=None)
    child = multiprocessing.get_context("fork").Process(target=_mp_work)
    started = time.monotonic()
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert time.monotonic() - started < 10


MP_PROGRAM = """
import json, os, sys
import pitchey_trace as pt

class FileExporter:
    name = "file"
    def export(self, batch):
        with open(os.path.join(sys.argv[1], f"{os.getpid()}.ndjson"), "a") as fh:
            for rec in batch:
                fh.write(json.dumps(rec) + "\\n")
        return True

# configured before multiprocessing is imported (and configuring does not import it); the
# forkserver and its children import this module again, as __mp_main__
pt.configure(service="forky", exporters=[FileExporter()], schedule_delay_ms=60_000, rollups=None)
if __name__ == "__main__":
    assert "multiprocessing" not in sys.modules

def work(i):
    with pt.span("child " + sys.argv[2]):
        pass
    return os.getpid()

if __name__ == "__main__":
    import multiprocessing
    ctx = multiprocessing.get_context(sys.argv[2])
    child = ctx.Process(target=work, args=(0,))
    child.start()
    child.join(30)
    assert child.exitcode == 0, child.exitcode
    with ctx.Pool(2) as pool:  # (leaving it terminates the workers)
        pids = pool.map(work, range(4))
        workers = list(pool._pool)
    for proc in workers:
        proc.join(30)
    print(json.dumps([child.pid, *pids]))
"""


def test_multiprocessing_imported_after_configure_fork_and_forkserver(tmp_path: Path) -> None:
    import subprocess
    import sys

    program = tmp_path / "program.py"
    program.write_text(MP_PROGRAM)
    for method in ("fork", "forkserver"):
        out = tmp_path / method
        out.mkdir()
        run = subprocess.run(
            [sys.executable, str(program), str(out), method], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        pids = json.loads(run.stdout)
        exported = _names_by_pid(out)
        assert set(exported) == set(pids), (method, run.stderr)
        assert sum(len(names) for names in exported.values()) == 5
        assert all(name == f"child {method}" for names in exported.values() for name in names)


def test_a_forked_child_counts_from_zero(tmp_path: Path) -> None:
    """pt.stats() is per process: a pre-fork worker does not report its parent's counts."""
    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], rollups=None)
    for _ in range(100):
        with pt.span("parent"):
            pass
    assert pt.force_flush(10)
    assert pt.stats()["accepted"] == 100
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for _ in range(5):
                with pt.span("child"):
                    pass
            code = 0 if pt.shutdown(10) else 2
            counts = pt.stats()
            code = code or (0 if (counts["accepted"], counts["exported"]) == (5, 5) else 3)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pt.stats()["accepted"] == 100  # (the parent's own, unchanged)


def test_pool_terminate_lets_idle_workers_export_their_spans_first(tmp_path: Path) -> None:
    """Leaving ``with Pool()`` calls terminate(): its SIGTERM used to kill the workers with
    their spans still queued (a 60 s delay here: nothing else would send them)."""
    import multiprocessing

    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        workers = set(pool.map(_mp_work, range(6)))
        procs = list(pool._pool)  # type: ignore[attr-defined]
    for proc in procs:
        proc.join(30)
    exported = _names_by_pid(tmp_path)
    assert set(exported) == workers
    assert sorted(name for names in exported.values() for name in names) == ["mp child"] * 6


def _raw_pool_worker(
    ctx: Any, initializer: Any = None, initargs: tuple[Any, ...] = ()
) -> tuple[Any, Any, Any]:
    """A process running multiprocessing's Pool worker loop on queues of its own: what a Pool
    starts, without the Pool's threads (a Pool hangs when a worker is killed behind its back)."""
    import multiprocessing.pool

    inbox, outbox = ctx.SimpleQueue(), ctx.SimpleQueue()
    proc = ctx.Process(target=multiprocessing.pool.worker, args=(inbox, outbox, initializer, initargs))
    proc.start()
    return proc, inbox, outbox


def _run_task(inbox: Any, outbox: Any, func: Any, *args: Any) -> Any:
    inbox.put((0, 0, func, args, {}))
    _job, _i, (ok, value) = outbox.get()
    assert ok, value
    return value


def test_a_sigterm_to_an_idle_pool_worker_exports_then_ends_it_by_the_signal(tmp_path: Path) -> None:
    import multiprocessing
    import signal

    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    proc, inbox, outbox = _raw_pool_worker(multiprocessing.get_context("fork"))
    pids = {_run_task(inbox, outbox, _mp_work, i) for i in range(3)}
    assert pids == {proc.pid}
    proc.terminate()  # waiting for its next task
    proc.join(30)
    assert proc.exitcode == -signal.SIGTERM  # ended by the signal, as without tracing
    assert _names_by_pid(tmp_path) == {proc.pid: ["mp child"] * 3}


def _sleep_after_marking(path: str, seconds: float) -> None:
    import time

    Path(path).write_text("")
    time.sleep(seconds)


def test_a_pool_worker_running_a_task_is_still_ended_at_once(tmp_path: Path) -> None:
    import multiprocessing
    import signal
    import time

    pt.configure(service="forky", exporters=[HangingExporter()], schedule_delay_ms=60_000, rollups=None)
    proc, inbox, _outbox = _raw_pool_worker(multiprocessing.get_context("fork"))
    mark = tmp_path / "started"
    inbox.put((0, 0, _sleep_after_marking, (str(mark), 60), {}))
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proc.terminate()
    proc.join(30)
    assert proc.exitcode == -signal.SIGTERM
    assert time.monotonic() - started < 5  # not the task's 60 s, nor a flush to a hung collector


def _own_sigterm_handler(directory: str) -> None:
    import signal

    def handler(signum: int, _frame: Any) -> None:
        (Path(directory) / f"own-{os.getpid()}").write_text("")
        os._exit(3)

    signal.signal(signal.SIGTERM, handler)


def test_a_pool_initializers_own_sigterm_handler_is_left_alone(tmp_path: Path) -> None:
    import multiprocessing

    pt.configure(service="forky", exporters=[FileExporter(tmp_path)], schedule_delay_ms=60_000, rollups=None)
    ctx = multiprocessing.get_context("fork")
    proc, inbox, outbox = _raw_pool_worker(ctx, _own_sigterm_handler, (str(tmp_path),))
    _run_task(inbox, outbox, _mp_work, 0)
    proc.terminate()
    proc.join(30)
    assert proc.exitcode == 3
    assert (tmp_path / f"own-{proc.pid}").exists()
