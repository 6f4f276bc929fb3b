"""Session 19: the current span carried into child processes under every multiprocessing start
method. Before, a ``spawn`` or ``forkserver`` child (``Process``, ``Pool``,
``ProcessPoolExecutor``) started inside a span began a new trace; only ``fork`` children
joined the parent's. Real child processes, spans read from their console exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace

pytestmark = pytest.mark.integration

SHIM = Path(pitchey_trace.__file__).resolve().parent / "_autorun"
METHODS = ["fork", "spawn", "forkserver"]

# under `pitchey-trace run`: nothing about tracing in the program but its spans
RUN_PROGRAM = """
import multiprocessing as mp, sys
from concurrent.futures import ProcessPoolExecutor
import pitchey_trace as pt

def work(tag):
    with pt.span("child-" + tag):
        pass
    return tag

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    alone = ctx.Process(target=work, args=("alone",))  # no span current: a trace of its own
    alone.start(); alone.join()
    with pt.span("parent"):
        process = ctx.Process(target=work, args=("process",))
        process.start(); process.join()
        pool = ctx.Pool(1)
        assert pool.apply(work, ("pool",)) == "pool"
        pool.close(); pool.join()  # (its worker leaves by itself: not terminate()'s SIGTERM)
        with ProcessPoolExecutor(1, mp_context=ctx) as executor:
            assert executor.submit(work, "executor").result() == "executor"
    print("EXIT", alone.exitcode, process.exitcode, flush=True)
"""

# configured from code, at import time of the main module (which spawn children import again)
API_PROGRAM = """
import multiprocessing as mp, sys
if __name__ == "__mp_main__" and sys.argv[-1] == "no-sdk-in-child":
    sys.modules["pitchey_trace"] = None  # the child cannot import pitchey_trace
try:
    import pitchey_trace as pt
    import pitchey_trace.auto
    pt.configure(service="mp", exporters=[pt.ConsoleExporter()])
    pitchey_trace.auto.instrument_all(configure=False)
except ImportError:
    pt = None

def work(tag):
    print("CHILD", tag, pt is not None, flush=True)
    if pt is not None:
        with pt.span("child-" + tag):
            pass

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    with pt.span("parent"):
        process = ctx.Process(target=work, args=("process",))
        process.start(); process.join()
        bad = ctx.Process(target=work, args=("bad",))
        with pt.suppress_tracing():  # nothing current to carry: the bad value stays as set
            bad._pitchey_trace_parent = ("not", "a", "context")
            bad.start()
        bad.join()
    print("EXIT", process.exitcode, bad.exitcode, flush=True)
"""


def run(program: str, tmp_path: Path, *args: str, shim: bool) -> tuple[str, list[dict[str, Any]]]:
    script = tmp_path / "app.py"
    script.write_text(program)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (the pure-Python run of the suite: theirs too)
        environ["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    if shim:
        environ["PYTHONPATH"] = str(SHIM)
        environ["PITCHEY_TRACE_EXPORTER"] = "console"
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    spans = [r for r in records if r.get("type") == "span"]
    return proc.stdout, spans


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    named = {s["name"]: s for s in spans}
    assert len(named) == len(spans), [s["name"] for s in spans]
    return named


@pytest.mark.parametrize("method", METHODS)
def test_children_started_in_a_span_join_its_trace_under_run(method: str, tmp_path: Path) -> None:
    out, spans = run(RUN_PROGRAM, tmp_path, method, shim=True)
    assert "EXIT 0 0\n" in out
    named = by_name(spans)
    parent = named["parent"]
    for tag in ("process", "pool", "executor"):
        child = named["child-" + tag]
        assert child["trace_id"] == parent["trace_id"], (method, tag)
        assert child["parent_span_id"] == parent["span_id"], (method, tag)
        assert child["resource"]["process.pid"] != parent["resource"]["process.pid"]
    alone = named["child-alone"]
    assert alone["parent_span_id"] is None
    assert alone["trace_id"] != parent["trace_id"]


def test_children_join_the_trace_when_instrumented_from_code(tmp_path: Path) -> None:
    """configure() + auto.instrument_all() at import time, spawn; a bad value in the attribute
    the context rides on leaves that child untraced by it (a trace of its own), never failed."""
    out, spans = run(API_PROGRAM, tmp_path, shim=False)
    assert "EXIT 0 0\n" in out
    assert "CHILD process True\n" in out
    assert "CHILD bad True\n" in out
    named = by_name(spans)
    assert named["child-process"]["trace_id"] == named["parent"]["trace_id"]
    assert named["child-process"]["parent_span_id"] == named["parent"]["span_id"]
    assert named["child-bad"]["parent_span_id"] is None
    assert named["child-bad"]["trace_id"] != named["parent"]["trace_id"]


def test_a_child_that_cannot_import_pitchey_trace_runs_untraced(tmp_path: Path) -> None:
    """The context is pickled with the Process as plain data: nothing for the child to import."""
    out, spans = run(API_PROGRAM, tmp_path, "no-sdk-in-child", shim=False)
    assert "EXIT 0 0\n" in out
    assert "CHILD process False\n" in out
    assert "CHILD bad False\n" in out
    assert [s["name"] for s in spans] == ["parent"]
