"""Session 21: gevent. With the SDK configured before ``monkey.patch_all()`` (``pitchey-trace run
gunicorn -k gevent --preload``, an app configuring early), threads the SDK starts afterwards
are greenlets: joining one (an exporter's shutdown helper) waited out its whole timeout, and
threads told to stop once shutdown's time was used up could still be running at interpreter
exit, where greenlet crashed the final garbage collection. Those run in processes of their own
(``patch_all()`` is for a whole process), exporting over OTLP/HTTP JSON to a collector on
127.0.0.1 in the test's process. Then ``gevent.spawn_raw`` and ``gevent.threadpool`` tasks
carrying the spawner's span, with real gevent in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.event
import gevent.hub
import gevent.threadpool
import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.threads import instrument_threads, uninstrument_threads
from tests.support.instrumentation import instrumented_fixture
from tests.support.otlp_json import JsonSpanCollector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def collector() -> Iterator[JsonSpanCollector]:
    c = JsonSpanCollector()
    yield c
    c.server.close()


def run(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if "PITCHEY_TRACE_PURE_PYTHON" in os.environ:  # (both modes: the C accelerator's and not)
        env["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    env["PYTHONPATH"] = str(ROOT)
    # (the timeout only stops a hung program: what is checked is its output)
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_exporter_shutdown_is_seen_to_end_when_configured_before_patch_all(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        """
        import threading, time
        import pitchey_trace as pt

        helpers = []

        class Quick:
            name = "quick"
            def export(self, batch):
                return True
            def shutdown(self, timeout=None):
                helpers.append(threading.current_thread())  # (returns at once)

        pt.configure(service="g", exporters=[Quick()])
        from gevent import monkey; monkey.patch_all()
        import gevent
        gevent.get_hub()
        with pt.span("work"):
            pass
        deadline = time.monotonic() + 20
        print("shut down", pt.shutdown(20), flush=True)
        # Before, the helper thread running the exporter's shutdown was a greenlet (started
        # after patch_all) whose end join() never saw: shutdown waited out its 20 s.
        print("before the deadline", time.monotonic() < deadline)
        (helper,) = helpers
        print("helper", helper.name, "alive", helper.is_alive())
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "shut down True",
        "before the deadline True",
        "helper pitchey-trace-shutdown.quick alive False",
    ]
    assert done.stderr == ""


def test_sdk_thread_started_after_patch_all_is_joined(tmp_path: Path) -> None:
    # The class made before patch_all, the thread started after it: the other SDK threads
    # started then (an exporter's own, a worker restarted) are joined the same way.
    done = run(
        tmp_path,
        """
        import time
        from pitchey_trace import _batch
        from gevent import monkey; monkey.patch_all()
        import gevent

        ran = []
        t = _batch._suppressed_thread(lambda: (gevent.sleep(0.01), ran.append(True)), "pitchey-trace-x")
        assert _batch.start_thread(t)
        deadline = time.monotonic() + 20
        _batch.join_thread(t, 20)
        print("joined", ran == [True], "before the deadline", time.monotonic() < deadline)
        print("alive", t.is_alive())
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["joined True before the deadline True", "alive False"]


STUCK = """
    import sys, threading, _thread
    import pitchey_trace as pt
    from pitchey_trace.exporters import OTLPExporter
    stuck = _thread.allocate_lock()  # (a real lock: made before patch_all)
    stuck.acquire()

    class Stuck:
        name = "stuck"
        def export(self, batch):
            stuck.acquire()  # hangs until the program is done
            return True

    pt.configure(
        service="g",
        exporters=[OTLPExporter(sys.argv[1], protocol="http/json", compression=None), Stuck()],
    )
    from gevent import monkey; monkey.patch_all()
    import gevent
    gevent.get_hub()
    with pt.span("work"):
        pass
    print("flushed", pt.force_flush(0.5), flush=True)
    # (session 20: with the flush's time used up, joining the stuck worker with a timeout of
    # 0, which gevent's join of a thread started before patch_all reads as none, waited for ever)
    print("shut down", pt.shutdown(0.5), flush=True)
    # The flush used up shutdown's time: the workers were told to stop, not waited for.
    # Before, they were still running as the interpreter finalized (each had made a gevent
    # hub): greenlet crashed the final garbage collection, a segfault in about half the runs.
    alive = sorted(t.name for t in threading.enumerate() if t.name.startswith("pitchey-trace"))
    print("still running", alive, flush=True)
"""


def test_threads_told_to_stop_end_before_exit_behind_a_stuck_exporter(
    tmp_path: Path, collector: JsonSpanCollector
) -> None:
    for attempt in range(3):
        done = run(tmp_path, STUCK, collector.url)
        assert done.returncode == 0, (attempt, done.returncode, done.stderr)
        assert done.stdout.splitlines() == [
            "flushed False",
            "shut down False",
            "still running ['pitchey-trace-export-stuck']",
        ], attempt
    assert [s["name"] for s in collector.spans] == ["work"] * 3  # (the other exporter delivered)


carried = instrumented_fixture(instrument_threads, uninstrument_threads)


def span_id_here() -> str:
    return pt.current_span().span_id_hex if pt.current_span().is_recording else "none"


def test_spawn_raw_runs_under_the_spawners_span(carried: None) -> None:
    seen: list[tuple[str, str]] = []
    done = gevent.event.Event()

    def record(how: str, last: bool = False) -> None:
        seen.append((how, span_id_here()))
        if last:
            done.set()

    with capture_spans():
        with pt.span("request") as request:
            gevent.spawn_raw(record, "positional")
            gevent.hub.spawn_raw(record, "hub")
            gevent.spawn_raw(record, "keywords", last=True)  # (gevent's partial path)
            done.wait(10)
        done.clear()
        gevent.spawn_raw(record, "no span", last=True)
        done.wait(10)
        with pytest.raises(TypeError):  # (gevent's own check, as before)
            gevent.spawn_raw(None)
    assert seen == [
        ("positional", request.span_id_hex),
        ("hub", request.span_id_hex),
        ("keywords", request.span_id_hex),
        ("no span", "none"),
    ]


def test_threadpool_tasks_run_under_the_spawners_span(carried: None) -> None:
    pool = gevent.threadpool.ThreadPool(1)  # (one thread: every task after another on it)
    executor = gevent.threadpool.ThreadPoolExecutor(1)
    threads: set[int] = set()

    def task(how: str) -> tuple[str, str]:
        threads.add(threading.get_ident())
        return how, span_id_here()

    try:
        with capture_spans():
            with pt.span("request") as request:
                under = [
                    pool.spawn(task, "spawn").get(),
                    pool.apply(task, ("apply",)),
                    pool.apply_async(task, ("apply_async",)).get(),
                    *pool.map(task, ["map"]),
                    *pool.imap(task, ["imap"]),
                    *pool.imap_unordered(task, ["imap_unordered"]),
                    executor.submit(task, "executor").result(10),
                    gevent.get_hub().threadpool.spawn(task, "hub").get(),
                ]
            # The same thread next, no span current: the carried one was reset after the task.
            after = pool.spawn(task, "after").get()
    finally:
        pool.kill()
        executor.shutdown()
    assert threading.get_ident() not in threads  # (native threads, not this one)
    assert under == [
        (how, request.span_id_hex)
        for how in ("spawn", "apply", "apply_async", "map", "imap", "imap_unordered", "executor", "hub")
    ]
    assert after == ("after", "none")


def test_uninstrument_restores_spawn_raw_and_the_threadpool(carried: None) -> None:
    uninstrument_threads()
    assert gevent.spawn_raw is gevent.hub.spawn_raw
    assert not hasattr(gevent.spawn_raw, "__wrapped__")
    assert not hasattr(gevent.threadpool.ThreadPool.spawn, "__wrapped__")
    pool = gevent.threadpool.ThreadPool(1)
    try:
        with capture_spans(), pt.span("request"):
            assert pool.spawn(span_id_here).get() == "none"
    finally:
        pool.kill()


def test_spawn_raw_and_threadpool_carry_the_span_after_patch_all(
    tmp_path: Path, collector: JsonSpanCollector
) -> None:
    done = run(
        tmp_path,
        """
        import sys
        from gevent import monkey; monkey.patch_all()
        import gevent, gevent.event
        import pitchey_trace as pt
        from pitchey_trace.exporters import OTLPExporter
        from pitchey_trace.threads import instrument_threads
        exporter = OTLPExporter(sys.argv[1], protocol="http/json", compression=None)
        pt.configure(service="g", exporters=[exporter])
        instrument_threads()

        def mark(name, done=None):
            with pt.span(name):
                pass
            if done is not None:
                done.set()

        with pt.span("request"):
            done = gevent.event.Event()
            gevent.spawn_raw(mark, "raw", done)
            done.wait(10)
            gevent.get_hub().threadpool.apply(mark, ("pooled",))
        print("flushed", pt.force_flush(10), flush=True)
        """,
        collector.url,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "flushed True\n"
    request = collector.named("request")
    for name in ("raw", "pooled"):
        child = collector.named(name)
        assert (child["trace"], child["parent"]) == (request["trace"], request["span"])


def test_archive_thread_of_an_sdk_configured_before_patch_all_ends_quietly(tmp_path: Path) -> None:
    """The local archive's (and Logpush's) upload thread was a plain ``threading.Thread``: with
    the SDK configured before ``patch_all()`` its end looked itself up under gevent's id, a
    ``KeyError`` traceback on stderr at every exit (the SDK's other threads had the fix)."""
    done = run(
        tmp_path,
        """
        import sys
        import pitchey_trace as pt
        from pitchey_trace.exporters import LocalArchiveExporter
        pt.configure(service="g", exporters=[LocalArchiveExporter(sys.argv[1])])
        with pt.span("before"):
            pass
        from gevent import monkey; monkey.patch_all()
        with pt.span("after"):
            pass
        print("done", flush=True)
        """,
        str(tmp_path / "archive"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert "Traceback" not in done.stderr, done.stderr
    assert list((tmp_path / "archive").rglob("*.gz"))  # (the spans were archived at exit)
