"""Session 19: leaving ``with Pool()`` under the ``forkserver`` start method hung now and then
on a loaded machine (about 1 run in 100 under ``pitchey-trace run``; none untraced). A worker
that started late was still on its way to its first task when ``terminate()`` took the task
queue's read lock for good (``_help_stuff_finish``) and sent SIGTERM. Between tasks SIGTERM
runs our Python-level handler (flush first); a SIGTERM that landed just before the worker
blocked in C on that lock only marked the handler as due, and the main thread never came back
to Python to run it: the worker outlived ``terminate()``, whose ``join()`` waited forever.
Without tracing SIGTERM's default action ends it at once wherever it is.

The hung runs' worker had no SIGTERM due at all (gdb: ``Handlers[15].tripped == 0``, our
handler installed): a SIGTERM that reaches a child before it first runs is caught there by
the Python-level handler inherited from its forking process (the forkserver, or the app under
``run``) and dropped by CPython's after-fork reset of pending signals. ``Process.terminate()``
right after ``start()`` lost it about half the time under ``run``, never without tracing.

Real processes; every child runs in a session of its own, killed whole on timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace

pytestmark = pytest.mark.integration

SHIM = Path(pitchey_trace.__file__).resolve().parent / "_autorun"

# A Pool worker's task queue, waited on as the worker does between tasks, with its read lock
# held by someone else for good (as terminate() does). The SIGTERM is taken by another thread
# of the worker once the main thread sleeps in C: the state a process-wide SIGTERM leaves when
# it lands just before the blocking call (its handler is due, the main thread is not woken).
BLOCKED_WORKER = """
import multiprocessing as mp, os, signal, sys, threading, time
import pitchey_trace as pt
from pitchey_trace import _config

pt.configure(service="pool", exporters=[pt.ConsoleExporter()])
with pt.span("before-terminate"):
    pass
queue = mp.get_context("forkserver").SimpleQueue()  # (a Pool's inqueue)
queue._rlock.acquire()  # (held for good, as Pool._help_stuff_finish does)
inbox = _config._PoolInbox(queue)
main_tid = threading.get_native_id()

def main_thread_sleeps():
    with open("/proc/self/task/%d/stat" % main_tid) as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "S"

def sigterm_lands():
    while not main_thread_sleeps():
        time.sleep(0.01)
    time.sleep(0.2)  # (well inside the wait)
    print("SIGNAL", flush=True)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=sigterm_lands, daemon=True).start()
print("GOT", inbox.get(), flush=True)
"""

TERMINATED_AT_ONCE = """
import multiprocessing as mp, sys, time

def nap():
    time.sleep(0.5)

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    codes = []
    for _ in range(10):
        child = ctx.Process(target=nap)
        child.start()
        child.terminate()  # (most often before the child has run at all)
        child.join(30)
        codes.append(child.exitcode)
    print("CODES", codes, flush=True)
"""

POOLS = """
import multiprocessing as mp, os, sys
import pitchey_trace as pt

def work(tag):
    with pt.span("child-" + str(tag)):
        pass
    return os.getpid()

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")
    for round in range(int(sys.argv[1])):
        with ctx.Pool(2) as pool:  # leaving it: terminate(), SIGTERM to the idle workers
            pool.map(work, ["%d-%d" % (round, i) for i in range(4)])
            workers = list(pool._pool)
        for worker in workers:
            worker.join(30)
        print("WITH", sorted(w.exitcode for w in workers), flush=True)
    print("EXIT", flush=True)
"""


def run(
    program: str, tmp_path: Path, *args: str, timeout: float, **variables: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(program)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (the pure-Python run of the suite: theirs too)
        environ["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    if variables:  # (under `run`)
        environ.update(PYTHONPATH=str(SHIM), PITCHEY_TRACE_EXPORTER="console", **variables)
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=tmp_path,
        start_new_session=True,  # (the forkserver and its workers too: killed together)
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung (killed after {timeout} s):\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def spans(out: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("type") == "span"]


def test_idle_pool_worker_blocked_on_the_queue_lock_still_ends_on_sigterm(tmp_path: Path) -> None:
    proc = run(BLOCKED_WORKER, tmp_path, timeout=20)
    assert "SIGNAL\n" in proc.stdout, proc.stderr[-3000:]
    assert "GOT" not in proc.stdout
    # ended by the signal, as without tracing, after exporting what it had
    assert proc.returncode == -signal.SIGTERM, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [s["name"] for s in spans(proc.stdout)] == ["before-terminate"]


@pytest.mark.parametrize("flush_on_sigterm", ["false", "true"])
def test_leaving_with_pool_under_forkserver_exports_every_span(flush_on_sigterm: str, tmp_path: Path) -> None:
    rounds = 3
    proc = run(POOLS, tmp_path, str(rounds), timeout=25, PITCHEY_TRACE_FLUSH_ON_SIGTERM=flush_on_sigterm)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "EXIT\n" in proc.stdout
    for line in (line for line in proc.stdout.splitlines() if line.startswith("WITH ")):
        # ended by terminate()'s SIGTERM (or, now and then, by the sentinel that came first: 0)
        assert set(json.loads(line[len("WITH ") :])) <= {-signal.SIGTERM, 0}, line
    names = sorted(s["name"] for s in spans(proc.stdout))
    assert names == sorted(f"child-{r}-{i}" for r in range(rounds) for i in range(4))


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_child_terminated_before_it_ran_ends_by_sigterm(method: str, tmp_path: Path) -> None:
    proc = run(TERMINATED_AT_ONCE, tmp_path, method, timeout=25, PITCHEY_TRACE_FLUSH_ON_SIGTERM="true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("CODES "))
    assert json.loads(line[len("CODES ") :]) == [-signal.SIGTERM] * 10, line


APP_BLOCKS_SIGTERM = """
import os, signal
import pitchey_trace as pt
pt.configure(service="f", exporters=[pt.ConsoleExporter()], flush_on_sigterm=True)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
pid = os.fork()
if pid == 0:
    os._exit(10 + (signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())))
_, status = os.waitpid(pid, 0)
print("CHILD", os.waitstatus_to_exitcode(status), flush=True)
print("PARENT", signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set()), flush=True)
"""


def test_a_sigterm_the_application_blocked_stays_blocked_over_fork(tmp_path: Path) -> None:
    proc = run(APP_BLOCKS_SIGTERM, tmp_path, timeout=20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHILD 11\n" in proc.stdout, proc.stdout
    assert "PARENT True\n" in proc.stdout, proc.stdout
