"""Session 20: gevent. In this process, without monkey-patching it: greenlets spawned in a span
run under it, ``instrument_threads`` after gevent replaced ``threading.Thread``, the SDK's
workers behind gevent's ``join`` and ``get_ident``. Then programs in processes of their own
(``monkey.patch_all()`` is for a whole process) that export over OTLP/HTTP JSON to a collector
on 127.0.0.1 in the test's process: the SDK configured after ``patch_all()`` (its workers are
greenlets) and before it (``gunicorn --preload``, an app importing the SDK early: its workers
are real threads, the events made afterwards gevent's), and gunicorn's gevent workers serving
a Flask app."""

from __future__ import annotations

import itertools
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

import gevent
import gevent.pool
import httpx
import pytest

import pitchey_trace as pt
from pitchey_trace import _batch
from pitchey_trace.testing import capture_spans
from pitchey_trace.threads import instrument_threads, uninstrument_threads
from tests.support.instrumentation import instrumented_fixture
from tests.support.otlp_json import JsonSpanCollector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


carried = instrumented_fixture(instrument_threads, uninstrument_threads)


def mark(name: Any) -> str:
    with pt.span(str(name)):
        return pt.current_span().span_id_hex


def test_greenlets_spawned_in_a_span_run_under_it(carried: None) -> None:
    with capture_spans() as mem:
        with pt.span("request") as request:
            pool = gevent.pool.Pool(3)
            group = gevent.pool.Group()
            results = [
                gevent.spawn(mark, "spawn").get(),
                gevent.spawn_later(0.001, mark, "spawn_later").get(),
                pool.spawn(mark, "pool.spawn").get(),
                pool.apply_async(mark, ("pool.apply_async",)).get(),
                group.spawn(mark, "group.spawn").get(),
                *pool.map(mark, ["pool.map"]),
                *pool.map_async(mark, ["pool.map_async"]).get(),
                *pool.imap(mark, ["pool.imap"]),
                *pool.imap_unordered(mark, ["pool.imap_unordered"]),
            ]
        pt.force_flush()
    spans = {r["name"]: r for r in mem.records if r["type"] == "span" and r["name"] != "request"}
    assert len(spans) == len(results) == 9
    for record in spans.values():
        assert record["trace_id"] == request.trace_id_hex
        assert record["parent_span_id"] == request.span_id_hex


def test_each_greenlet_keeps_its_own_span(carried: None) -> None:
    def work(i: int) -> None:
        with pt.span(f"outer-{i}") as outer:
            gevent.sleep(0.001)  # (the others run meanwhile)
            with pt.span(f"inner-{i}") as inner:
                gevent.sleep(0.001)
                assert pt.current_span() is inner
            assert pt.current_span() is outer

    with capture_spans() as mem:
        with pt.span("request") as request:
            gevent.joinall([gevent.spawn(work, i) for i in range(20)], raise_error=True)
        assert not pt.current_span().is_recording  # (nothing left attached here)
        pt.force_flush()
    by_name = {r["name"]: r for r in mem.records if r["type"] == "span"}
    for i in range(20):
        assert by_name[f"outer-{i}"]["parent_span_id"] == request.span_id_hex
        assert by_name[f"inner-{i}"]["parent_span_id"] == by_name[f"outer-{i}"]["span_id"]


def test_without_a_span_greenlets_run_as_before_and_uninstrument_restores(carried: None) -> None:
    assert not pt.current_span().is_recording
    assert gevent.spawn(lambda: pt.current_span().is_recording).get() is False
    assert isinstance(gevent.spawn(mark, "x"), gevent.Greenlet)  # (a subclass of gevent's)
    uninstrument_threads()
    assert gevent.spawn.__self__ is gevent.Greenlet
    assert gevent.pool.Group.greenlet_class is gevent.Greenlet
    with pt.span("request"):
        assert gevent.spawn(lambda: pt.current_span().is_recording).get() is False


def test_instrument_threads_after_gevent_replaced_the_thread_class(monkeypatch: pytest.MonkeyPatch) -> None:
    # What gevent's monkey.patch_all() does on Python < 3.13: threading.Thread becomes a
    # subclass that inherits start. Before, instrument_threads() raised KeyError('start').
    class PatchedThread(threading.Thread):
        pass

    original = threading.Thread
    original_start = original.__dict__["start"]
    monkeypatch.setattr(threading, "Thread", PatchedThread)
    instrument_threads()
    try:
        assert PatchedThread.start is not original_start
        seen: list[str] = []
        with capture_spans():
            with pt.span("request") as request:
                for cls in (PatchedThread, original):
                    t = cls(target=lambda: seen.append(pt.current_span().span_id_hex))
                    t.start()
                    t.join()
        assert seen == [request.span_id_hex] * 2
    finally:
        uninstrument_threads()
    assert original.__dict__["start"] is original_start


def test_workers_are_not_joined_with_no_time_left() -> None:
    # gevent's join of a thread started before patch_all() reads a timeout of 0 as none and
    # waits for ever: shutdown hung at exit behind a stuck exporter once its time was used up.
    joined: list[float | None] = []

    class Thread(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            joined.append(timeout)
            super().join(timeout)

    release = threading.Event()
    t = Thread(target=release.wait, daemon=True)
    t.start()
    try:

        class Exporter:
            def export(self, batch: Any) -> bool:
                return True

        worker = _batch.ExporterWorker(Exporter(), 10, 10)
        worker._thread = t
        worker.stop(0.0)
        _batch.join_thread(t, -1.0)
        _batch.join_thread(t, 0.01)
    finally:
        release.set()
    assert joined == [0.01]


def test_worker_thread_ends_quietly_after_get_ident_was_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    # gevent's patch_all() after an SDK thread started replaces threading.get_ident, which
    # the thread's own clean-up uses: before, a KeyError traceback on stderr as it stopped.
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    real = threading.get_ident

    def patch() -> None:
        monkeypatch.setattr(threading, "get_ident", lambda: -real())

    t = _batch._suppressed_thread(patch, "pitchey-trace-test")
    t.start()
    t.join()
    monkeypatch.setattr(threading, "get_ident", real)
    # (only this thread's: another test's thread ending meanwhile meets the same replaced
    # get_ident, which says nothing of ours)
    assert [u for u in unraisable if getattr(u.object, "__self__", None) is t] == []
    assert t not in threading.enumerate()  # (its entry was removed all the same)


Collector = JsonSpanCollector


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.close()


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (both modes: the C accelerator's and not)
        env["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    # (the timeout only stops a hung program: what is checked is that it ends)
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


PROGRAM = """
    import sys
    ORDER, URL = sys.argv[1], sys.argv[2]
    if ORDER == "patch-first":
        from gevent import monkey; monkey.patch_all()
    import pitchey_trace as pt
    from pitchey_trace.exporters import OTLPExporter
    from pitchey_trace.threads import instrument_threads
    pt.configure(service="g", exporters=[OTLPExporter(URL, protocol="http/json", compression=None)])
    if ORDER == "sdk-first":
        from gevent import monkey; monkey.patch_all()
    instrument_threads()  # (after patch_all: gevent is imported)
    import threading
    import gevent

    def mark(name):
        with pt.span(name):
            pass

    def request(i):
        with pt.span(f"request-{i}"):
            for j in range(3):
                with pt.span(f"step-{i}-{j}"):
                    gevent.sleep(0.001)
                    with pt.span(f"query-{i}-{j}"):
                        gevent.sleep(0.001)
            gevent.spawn(mark, f"spawned-{i}").join()
            t = threading.Thread(target=mark, args=(f"thread-{i}",))
            t.start()
            t.join()

    gevent.joinall([gevent.spawn(request, i) for i in range(50)])
    print("flushed", pt.force_flush(10), flush=True)
    with pt.span("at-exit"):  # (left to the exit flush)
        pass
"""


@pytest.mark.parametrize("order", ["patch-first", "sdk-first"])
def test_greenlets_trace_and_export_in_either_order(tmp_path: Path, collector: Collector, order: str) -> None:
    done = run(tmp_path, PROGRAM, order, collector.url)
    assert done.returncode == 0, done.stderr
    assert "flushed True" in done.stdout
    # Nothing on stderr: before, workers started before patch_all() printed a KeyError
    # traceback each as they stopped at exit (threading.get_ident had been replaced).
    assert done.stderr == ""
    assert len(collector.spans) == 50 * 9 + 1  # the exit flush's span included
    collector.named("at-exit")
    for i in range(50):
        request = collector.named(f"request-{i}")
        assert request["parent"] is None
        for j in range(3):
            step = collector.named(f"step-{i}-{j}")
            query = collector.named(f"query-{i}-{j}")
            assert (step["parent"], query["parent"]) == (request["span"], step["span"])
            assert step["trace"] == query["trace"] == request["trace"]
        # A greenlet spawned in the span (before: a trace of its own), a thread started in it.
        for name in (f"spawned-{i}", f"thread-{i}"):
            child = collector.named(name)
            assert (child["trace"], child["parent"]) == (request["trace"], request["span"])


# (shutdown behind a stuck exporter, configured before patch_all: test_session21_gevent.py)


GUNICORN_APP = """
    import os
    import gevent
    from flask import Flask
    import pitchey_trace as pt
    from pitchey_trace.exporters import OTLPExporter
    from pitchey_trace.threads import instrument_threads
    from pitchey_trace.web import WSGITracingMiddleware

    pt.configure(
        service="gapp",
        exporters=[OTLPExporter(os.environ["COLLECTOR"], protocol="http/json", compression=None)],
    )
    instrument_threads()  # (before, after gevent's patch_all: a KeyError, the worker failed to boot)
    app = Flask("gapp")

    def mark(name):
        with pt.span(name):
            pass

    @app.get("/slow/<int:n>")
    def slow(n):
        with pt.span(f"outer-{n}") as outer:
            gevent.sleep(0.3)  # (the requests on a worker interleave here)
            with pt.span(f"inner-{n}"):
                gevent.sleep(0.05)
            gevent.spawn(mark, f"spawned-{n}").join()
            return {"outer": outer.span_id_hex, "pid": os.getpid()}

    application = WSGITracingMiddleware(app)
"""


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-worker", "preload"])
def test_gunicorn_gevent_workers(tmp_path: Path, collector: Collector, preload: bool) -> None:
    (tmp_path / "gapp.py").write_text(textwrap.dedent(GUNICORN_APP))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            *(["--preload"] if preload else []),
            "gapp:application",
        ],
        cwd=tmp_path,
        env=environment(COLLECTOR=collector.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/slow/0", timeout=10)
                break
            except httpx.TransportError:
                assert server.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        lock = threading.Lock()
        answers: dict[int, tuple[str, dict[str, Any]]] = {}

        def get(n: int) -> None:
            r = httpx.get(f"{base}/slow/{n}", headers={"Connection": "close"}, timeout=30)
            with lock:
                answers[n] = (r.headers["X-Trace-Id"], r.json())

        with ThreadPoolExecutor(24) as pool:
            list(pool.map(get, range(1, 25)))
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: each worker flushes as it exits
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "Traceback" not in err, err
    assert "Exception" not in err, err
    assert len({body["pid"] for _, body in answers.values()}) == 2, "both workers answered"
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for n, (trace_id, body) in answers.items():
        trace = [s for s in collector.spans if s["trace"] == trace_id]
        (root,) = [s for s in trace if s["parent"] is None]
        outer, inner, spawned = (collector.named(f"{kind}-{n}") for kind in ("outer", "inner", "spawned"))
        assert len(trace) == 4
        assert outer["span"] == body["outer"]
        assert (outer["parent"], inner["parent"], spawned["parent"]) == (
            root["span"],
            outer["span"],
            outer["span"],
        )
        assert {s["pid"] for s in trace} == {body["pid"]}
        by_pid.setdefault(body["pid"], []).append(outer)
    # The slow requests on one worker ran at once: one began before another had ended.
    for outers in by_pid.values():
        outers.sort(key=lambda s: s["start"])
        assert any(later["start"] < earlier["end"] for earlier, later in itertools.pairwise(outers))
