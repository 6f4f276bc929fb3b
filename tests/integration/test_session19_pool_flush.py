"""Session 19: multiprocessing children under ``pitchey-trace run`` behave alike whatever the
start method. A ``spawn`` child configures (from ``sitecustomize``) before it imports
multiprocessing, so it never registered the pool-worker flush a ``fork`` or ``forkserver``
child gets at fork: leaving ``with Pool() as pool:`` (``terminate()``: SIGTERM) lost every span
its workers had not exported yet. With ``PITCHEY_TRACE_FLUSH_ON_SIGTERM=true`` (the command's
default) a spawn child kept the flush-first SIGTERM handler for its whole life instead, so
``terminate()`` of a child stuck in C code waited for that code to return. Real child
processes under the real ``run`` mechanism, spans read from their console exporter."""

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
METHODS = ["fork", "spawn", "forkserver"]

POOLS = """
import multiprocessing as mp, os, sys
from concurrent.futures import ProcessPoolExecutor
import pitchey_trace as pt

def work(tag):
    with pt.span("child-" + str(tag)):
        pass
    return os.getpid()

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:  # leaving it: terminate(), SIGTERM to the idle workers
        pids = set(pool.map(work, ["with-%d" % i for i in range(4)]))
        workers = list(pool._pool)
    for worker in workers:
        worker.join(30)
    print("WITH", sorted(w.exitcode for w in workers if w.pid in pids), flush=True)
    pool = ctx.Pool(1)
    pool.apply(work, ("close",))
    pool.close(); pool.join()
    with ProcessPoolExecutor(1, mp_context=ctx) as executor:
        executor.submit(work, "executor").result()
    print("EXIT", flush=True)
"""

HANDLERS = """
import multiprocessing as mp, signal, sys
import pitchey_trace as pt

def where(tag, queue):
    queue.put((tag, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL))

def in_task(tag):
    return (tag, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)

def stuck(ready):
    ready.set()
    sum(range(10**12))  # in C: a Python-level handler would never run

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    print("PARENT", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
    queue = ctx.SimpleQueue()
    process = ctx.Process(target=where, args=("process", queue))
    process.start(); process.join()
    print("DEFAULT", *queue.get(), flush=True)
    with ctx.Pool(1) as pool:
        print("DEFAULT", *pool.apply(in_task, ("task",)), flush=True)
    ready = ctx.Event()
    child = ctx.Process(target=stuck, args=(ready,))
    child.start()
    ready.wait(60)
    child.terminate()
    child.join(30)
    print("STUCK", child.exitcode, flush=True)  # (None: still running)
    if child.exitcode is None:
        child.kill(); child.join()
"""

# configured from code at import time of the main module, as docs/operations.md says: a spawn
# child is configured (multiprocessing imported) before its bootstrap, which still ran no
# after-fork callbacks
API_PROGRAM = """
import multiprocessing as mp, os, sys
import pitchey_trace as pt
import pitchey_trace.auto
pt.configure(service="mp", exporters=[pt.ConsoleExporter()])
pitchey_trace.auto.instrument_all(configure=False)

def work(tag):
    with pt.span("child-" + str(tag)):
        pass
    return os.getpid()

if __name__ == "__main__":
    with mp.get_context(sys.argv[1]).Pool(1) as pool:
        pool.map(work, ["api"])
    print("EXIT", flush=True)
"""


def run(program: str, tmp_path: Path, *args: str, **variables: str) -> tuple[str, list[dict[str, Any]]]:
    script = tmp_path / "app.py"
    script.write_text(program)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (the pure-Python run of the suite: theirs too)
        environ["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    if variables:  # (under `run`; else the program configures itself)
        environ.update(PYTHONPATH=str(SHIM), PITCHEY_TRACE_EXPORTER="console", **variables)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.stdout, [r for r in records if r.get("type") == "span"]


@pytest.mark.parametrize("flush_on_sigterm", ["false", "true"])
@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_export_their_spans_on_terminate_and_exit(
    method: str, flush_on_sigterm: str, tmp_path: Path
) -> None:
    out, spans = run(POOLS, tmp_path, method, PITCHEY_TRACE_FLUSH_ON_SIGTERM=flush_on_sigterm)
    assert "EXIT\n" in out
    # the idle workers that ran tasks were ended by terminate()'s signal, as without tracing
    # (or, now and then, by the pool's end-of-tasks sentinel that reached them first: 0)
    line = next(line for line in out.splitlines() if line.startswith("WITH "))
    codes = json.loads(line[len("WITH ") :])
    assert codes, line
    assert set(codes) <= {-signal.SIGTERM, 0}, line
    names = sorted(s["name"] for s in spans if s["name"].startswith("child-"))
    expected = sorted(["child-close", "child-executor"] + [f"child-with-{i}" for i in range(4)])
    assert names == expected, (method, names)


@pytest.mark.parametrize("method", METHODS)
def test_children_run_with_sigterms_default_action_as_fork_ones(method: str, tmp_path: Path) -> None:
    """Under ``run`` (flush on SIGTERM on) the program itself flushes first, but a child's
    target and a pool's task run with SIGTERM's default action: ``terminate()`` ends a child
    stuck in C code at once."""
    out, _spans = run(HANDLERS, tmp_path, method, PITCHEY_TRACE_FLUSH_ON_SIGTERM="true")
    assert "PARENT True\n" in out
    assert "DEFAULT process True\n" in out
    assert "DEFAULT task True\n" in out
    assert f"STUCK {-signal.SIGTERM}\n" in out


@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_export_on_terminate_when_configured_from_code(method: str, tmp_path: Path) -> None:
    out, spans = run(API_PROGRAM, tmp_path, method)
    assert "EXIT\n" in out
    assert [s["name"] for s in spans] == ["child-api"], method
