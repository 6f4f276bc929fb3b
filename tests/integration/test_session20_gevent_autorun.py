"""Session 20: the most common gevent deployment, ``pitchey-trace run gunicorn -k gevent``, with
and without ``--preload``. The run wrapper's ``sitecustomize`` configures the SDK in gunicorn's
master before the workers call ``monkey.patch_all()``, then the master forks. A Flask app with
no tracing code but a ``pt.span`` and a ``gevent.spawn`` in its handler, served by real
processes exporting OTLP/HTTP JSON to a collector on 127.0.0.1 in the test's process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.otlp_json import JsonSpanCollector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # (pitchey-trace and gunicorn, installed with the SDK)


Collector = JsonSpanCollector


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.close()


APP = """
    import os
    import gevent
    from flask import Flask
    import pitchey_trace as pt

    app = Flask("gapp")

    def mark(name):
        with pt.span(name):
            pass

    @app.get("/r/<int:n>")
    def handle(n):
        with pt.span(f"outer-{n}") as outer:
            gevent.sleep(0.05)  # (the requests on a worker interleave here)
            gevent.spawn(mark, f"spawned-{n}").join()
            return {"outer": outer.span_id_hex, "pid": os.getpid()}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-worker", "preload"])
def test_run_gunicorn_gevent_workers(tmp_path: Path, collector: Collector, preload: bool) -> None:
    (tmp_path / "gapp.py").write_text(textwrap.dedent(APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (both modes: the C accelerator's and not)
        env["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    env.update(
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        PYTHONPATH=str(ROOT),
        PITCHEY_TRACE_SERVICE="gapp",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.server.url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
        OTEL_EXPORTER_OTLP_COMPRESSION="none",
        # Nothing is exported on a schedule: what the collector gets, SIGTERM's flush sent.
        OTEL_BSP_SCHEDULE_DELAY="3600000",
    )
    port = free_port()
    command = [str(BIN / "pitchey-trace"), "run", "gunicorn", "-k", "gevent", "-w", "2"]
    command += ["--graceful-timeout", "20", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        [*command, *(["--preload"] if preload else []), "gapp:app"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # (its process group is killed below whatever happens)
    )
    base = f"http://127.0.0.1:{port}"
    answers: dict[int, tuple[str, dict[str, Any]]] = {}
    lock = threading.Lock()

    def get(n: int) -> None:
        r = httpx.get(f"{base}/r/{n}", headers={"Connection": "close"}, timeout=30)
        r.raise_for_status()
        with lock:
            answers[n] = (r.headers["X-Trace-Id"], r.json())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(0)
                break
            except httpx.TransportError:
                assert server.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(get, range(1, 41)))
        assert collector.spans == []  # (nothing sent yet: see OTEL_BSP_SCHEDULE_DELAY)
        server.send_signal(signal.SIGTERM)  # graceful: each worker flushes as it exits
        # (the timeout only stops a hang: what is checked is that it ends)
        _, err = server.communicate(timeout=90)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.communicate()
    assert server.returncode == 0, err
    assert "Traceback" not in err, err
    assert "Exception" not in err, err
    assert "pitchey-trace run" not in err, err  # (tracing started in every process)
    # Every request traced once, in the worker that answered, with its greenlet's span in it.
    assert len(answers) == 41
    assert len(collector.spans) == 3 * 41
    assert len({s["span"] for s in collector.spans}) == len(collector.spans)  # (no duplicates)
    assert {s["service"] for s in collector.spans} == {"gapp"}
    for n, (trace_id, body) in answers.items():
        trace = {s["name"]: s for s in collector.spans if s["trace"] == trace_id}
        assert len(trace) == 3, (n, sorted(trace))
        root = next(s for s in trace.values() if s["parent"] is None)
        outer, spawned = trace[f"outer-{n}"], trace[f"spawned-{n}"]
        assert outer["span"] == body["outer"]
        assert (outer["parent"], spawned["parent"]) == (root["span"], outer["span"])
        assert {s["pid"] for s in trace.values()} == {body["pid"]}


PATCHING_LATE = """
    import sys
    import gevent  # (pitchey-trace run instruments it here, before patch_all)
    from gevent import monkey

    monkey.patch_all()  # the SDK's threads, started before, make their hubs at their next wait
    import pitchey_trace as pt

    with pt.span("after-patch"):
        gevent.sleep(0.01)
    print("flushed", pt.force_flush(20), flush=True)
"""


def test_run_program_patching_after_the_sdk_started_does_not_deadlock(
    tmp_path: Path, collector: Collector
) -> None:
    # Before, the SDK's threads started before patch_all() (waking every millisecond here)
    # each made their first gevent hub at once, importing gevent's loop under import locks
    # patch_all had made gevent locks: a deadlock in most runs, the flush never done.
    (tmp_path / "program.py").write_text(textwrap.dedent(PATCHING_LATE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:
        env["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    env.update(
        PYTHONPATH=str(ROOT),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.server.url,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
        OTEL_EXPORTER_OTLP_COMPRESSION="none",
        OTEL_BSP_SCHEDULE_DELAY="1",
    )
    for attempt in range(4):
        child = subprocess.Popen(
            [str(BIN / "pitchey-trace"), "run", sys.executable, "program.py"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            # (the timeout only stops a deadlocked program: what is checked is its output)
            out, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            out, err = "deadlocked", ""
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.communicate()
        assert out == "flushed True\n", (attempt, out, err)
        assert "Traceback" not in err, err
    assert [s["name"] for s in collector.spans] == ["after-patch"] * 4
