"""SIGTERM (docker stop, Kubernetes, systemd) skips the flush at interpreter exit:
``configure(flush_on_sigterm=True)`` and ``pitchey-trace run`` export what is buffered first,
then the process ends as the signal would have ended it. Real processes, real signals."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pitchey_trace.cli"]

# Configures tracing with a local archive (batches written every 30 s, or at a flush), makes a
# span, says so on stdout and waits for a signal.
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, time
    import pitchey_trace as pt
    from pitchey_trace.exporters import LocalArchiveExporter

    kwargs = {}
    if os.environ.get("T_FLUSH") is not None:
        kwargs["flush_on_sigterm"] = os.environ["T_FLUSH"] == "1"
    if os.environ.get("T_OWN_HANDLER"):
        signal.signal(signal.SIGTERM, lambda *_: (print("own handler", flush=True), sys.exit(3)))
    pt.configure(service="sig", exporters=[LocalArchiveExporter(sys.argv[1])], **kwargs)
    with pt.span("before-the-signal"):
        pass
    print("ready", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
    while True:
        time.sleep(0.05)
    """
)


def _spans(archive: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(archive.rglob("*.log.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            rec = json.loads(line)
            if rec.get("type") == "span":
                out.append(rec)
    return out


def _start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_when_ready(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line + proc.communicate(timeout=30)[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return line + out, err


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def test_flush_on_sigterm_exports_the_buffer_and_dies_by_the_signal(program: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    proc = _start([sys.executable, str(program), str(archive)], {"T_FLUSH": "1"})
    out, err = _signal_when_ready(proc)
    assert out.startswith("ready True")
    assert proc.returncode == -signal.SIGTERM, err  # ended by the signal, as without tracing
    assert [s["name"] for s in _spans(archive)] == ["before-the-signal"]
    assert "Traceback" not in err


def test_without_it_sigterm_loses_the_buffer_as_before(program: Path, tmp_path: Path) -> None:
    # (the default: the signal's own action, no handler of ours; the reason for the option)
    archive = tmp_path / "archive"
    proc = _start([sys.executable, str(program), str(archive)])
    out, _ = _signal_when_ready(proc)
    assert out.startswith("ready False")
    assert proc.returncode == -signal.SIGTERM
    assert _spans(archive) == []


def test_the_environment_variable_turns_it_on(program: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    proc = _start([sys.executable, str(program), str(archive)], {"PITCHEY_TRACE_FLUSH_ON_SIGTERM": "true"})
    _signal_when_ready(proc)
    assert proc.returncode == -signal.SIGTERM
    assert len(_spans(archive)) == 1


def test_an_applications_own_handler_is_left_alone(program: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    proc = _start([sys.executable, str(program), str(archive)], {"T_FLUSH": "1", "T_OWN_HANDLER": "1"})
    out, _ = _signal_when_ready(proc)
    assert "own handler" in out
    assert proc.returncode == 3  # its sys.exit(3): a normal exit, so the exit flush ran too
    assert len(_spans(archive)) == 1


def test_run_flushes_on_sigterm_and_writes_the_archive_the_commands_read(
    program: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    app = tmp_path / "plain.py"
    # a program that does not configure anything itself: run's environment does
    app.write_text(
        "import time\nimport pitchey_trace as pt\n"
        "with pt.span('from-run'):\n    pass\nprint('ready', flush=True)\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    proc = _start(
        [*CLI, "run", "--exporter", "archive", "--", sys.executable, str(app)],
        {"PITCHEY_TRACE_ARCHIVE": str(archive)},
    )
    _signal_when_ready(proc)
    assert proc.returncode == -signal.SIGTERM
    assert [s["name"] for s in _spans(archive)] == ["from-run"]
    found = subprocess.run(
        [*CLI, "search", "--name", "from-run", "--json"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PITCHEY_TRACE_ARCHIVE": str(archive)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    assert "from-run" in found.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_uvicorn_service_under_run_keeps_its_requests_after_sigterm(tmp_path: Path) -> None:
    # uvicorn catches SIGTERM, shuts down gracefully, puts the handler it found back and raises
    # the signal again: the flush runs then, and the process still ends by the signal.
    (tmp_path / "svc.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "async def hello(request):\n    return PlainTextResponse('hi')\n"
        "app = Starlette(routes=[Route('/hello/{who}', hello)])\n"
    )
    archive = tmp_path / "archive"
    port = _free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "run",
            "--exporter",
            "archive",
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "svc:app",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PITCHEY_TRACE_ARCHIVE": str(archive)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/hello/ada", timeout=2).text == "hi"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        for who in ("bob", "cy"):
            assert httpx.get(f"http://127.0.0.1:{port}/hello/{who}", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGTERM, err
    names = [s["name"] for s in _spans(archive) if s["kind"] == "server"]
    assert names == ["GET /hello/{who}"] * 3


def test_run_refuses_the_archive_exporter_without_a_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PITCHEY_TRACE_ARCHIVE"}
    done = subprocess.run(
        [*CLI, "run", "--exporter", "archive", "--", sys.executable, "-c", "print('started')"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PITCHEY_TRACE_ARCHIVE" in done.stderr
    assert "started" not in done.stdout  # refused before the program started


def test_the_archive_exporter_name_needs_its_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_EXPORTER", "archive")
    monkeypatch.delenv("PITCHEY_TRACE_ARCHIVE", raising=False)
    with pytest.raises(ConfigurationError, match="PITCHEY_TRACE_ARCHIVE"):
        pt.configure(service="t")
    monkeypatch.setenv("PITCHEY_TRACE_ARCHIVE", str(tmp_path / "a"))
    try:
        pt.configure(service="t")
        with pt.span("archived"):
            pass
        assert pt.force_flush(10)
    finally:
        pt.shutdown(10)
    assert [s["name"] for s in _spans(tmp_path / "a")] == ["archived"]


def test_flush_on_sigterm_is_checked_and_left_alone_outside_the_main_thread() -> None:
    import threading

    with pytest.raises(TypeError, match="flush_on_sigterm"):
        pt.configure(service="t", flush_on_sigterm="yes")  # type: ignore[arg-type]
    before = signal.getsignal(signal.SIGTERM)
    _stats.reset()
    errors: list[BaseException] = []

    def configure_here() -> None:
        try:
            pt.configure(service="t", flush_on_sigterm=True)
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    t = threading.Thread(target=configure_here)
    t.start()
    t.join(30)
    try:
        assert errors == []
        assert signal.getsignal(signal.SIGTERM) is before  # (a handler can only be set there)
        assert pt.stats().get("misuse.sigterm_thread") == 1
    finally:
        pt.shutdown(5)
        signal.signal(signal.SIGTERM, before)


HANGING_EXPORT = textwrap.dedent(
    """
    import atexit, os, signal, sys, time
    import pitchey_trace as pt

    class Hang:
        name = "hang"

        def export(self, batch):
            time.sleep(3600)

    mode = sys.argv[1]
    if mode == "stuck_atexit":  # (the application's own exit hook hangs)
        atexit.register(lambda: time.sleep(60))
    pt.configure(service="h", exporters=[Hang()], flush_on_sigterm=True)
    with pt.span("a"):
        pass
    time.sleep(1.0)  # the exporter thread is stuck in export() now
    with pt.span("b"):
        pass
    print("ready", flush=True)
    if mode in ("exit", "stuck_atexit"):
        sys.exit(0)  # the flush at exit runs (bounded)
    while True:
        time.sleep(0.05)
    """
)


def _timed(script: Path, *args: str, signals: tuple[float, ...]) -> tuple[int, float]:
    """Run ``script``; send SIGTERM at each delay after it says ready; (status, seconds)."""
    proc = _start([sys.executable, str(script), *args])
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    t0 = time.monotonic()
    for delay in signals:
        while time.monotonic() - t0 < delay and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, time.monotonic() - t0


@pytest.fixture
def hanging(tmp_path: Path) -> Path:
    path = tmp_path / "hang.py"
    path.write_text(HANGING_EXPORT)
    return path


def test_a_second_sigterm_ends_the_process_at_once(hanging: Path) -> None:
    # (a flush that cannot finish takes its 10 s budget; each SIGTERM used to start another)
    status, took = _timed(hanging, "loop", signals=(0.5, 2.0))
    assert status == -signal.SIGTERM
    assert took < 8


def test_a_flush_that_cannot_finish_ends_within_its_budget(hanging: Path) -> None:
    status, took = _timed(hanging, "loop", signals=(0.5,))
    assert status == -signal.SIGTERM
    assert took < 20  # (10 s budget, a watchdog one second after it)


@pytest.mark.parametrize("mode", ["exit", "stuck_atexit"])
def test_sigterm_during_the_flush_at_exit_still_ends_the_process_by_it(hanging: Path, mode: str) -> None:
    # during the flush at exit it waits for the (bounded) flush, then ends the process by the
    # signal (it was ignored: status 0, and an application exit hook that hung kept the
    # process for good)
    status, took = _timed(hanging, mode, signals=(1.0,))
    assert status == -signal.SIGTERM
    assert took < 20


def test_an_application_handler_that_chains_to_it_keeps_its_cleanup(tmp_path: Path) -> None:
    script = tmp_path / "chain.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, sys, time
            import pitchey_trace as pt
            from pitchey_trace.exporters import InMemoryExporter

            pt.configure(service="c", exporters=[InMemoryExporter()], flush_on_sigterm=True)
            previous = signal.getsignal(signal.SIGTERM)

            def mine(signum, frame):
                if callable(previous):
                    previous(signum, frame)
                print("cleanup", flush=True)
                sys.exit(4)

            signal.signal(signal.SIGTERM, mine)
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
            """
        )
    )
    proc = _start([sys.executable, str(script)])
    out, _ = _signal_when_ready(proc)
    assert "cleanup" in out  # (it used to end the process inside the application's handler)
    assert proc.returncode == 4


def test_a_forked_child_stuck_in_c_code_still_ends_on_terminate(tmp_path: Path) -> None:
    script = tmp_path / "mp.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, time
            import pitchey_trace as pt
            from pitchey_trace.exporters import InMemoryExporter

            def busy():
                sum(range(10**11))  # in C: a Python-level handler would never run

            if __name__ == "__main__":
                pt.configure(service="m", exporters=[InMemoryExporter()], flush_on_sigterm=True)
                child = multiprocessing.get_context("fork").Process(target=busy)
                child.start()
                time.sleep(0.5)
                t0 = time.monotonic()
                child.terminate()
                child.join(30)
                print(child.exitcode, round(time.monotonic() - t0))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.stdout.split() == [str(-signal.SIGTERM), "0"], done.stdout + done.stderr


def test_sigterm_while_spans_end_in_a_tight_loop_never_hangs(tmp_path: Path) -> None:
    # The handler runs wherever the main thread was interrupted, possibly inside the SDK holding
    # the lock of the Event that wakes the worker (every span end does, with a batch of 1):
    # a flush on that thread waited for its own lock for good (seen in ~5% of such runs).
    script = tmp_path / "hot.py"
    script.write_text(
        textwrap.dedent(
            """
            import pitchey_trace as pt
            from pitchey_trace.exporters import InMemoryExporter

            pt.configure(service="hot", exporters=[InMemoryExporter()], export_batch_size=1,
                         flush_on_sigterm=True)
            print("ready", flush=True)
            while True:
                with pt.span("x"):
                    pass
            """
        )
    )
    procs = []
    for i in range(24):
        procs.append(_start([sys.executable, str(script)]))
        if len(procs) % 6 == 0:  # (six at a time: each spins a CPU)
            for proc in procs[-6:]:
                assert proc.stdout is not None
                assert proc.stdout.readline().startswith("ready")
            time.sleep(0.2 + 0.013 * i)
            for proc in procs[-6:]:
                proc.send_signal(signal.SIGTERM)
            for proc in procs[-6:]:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    assert [p.returncode for p in procs] == [-signal.SIGTERM] * 24


def test_run_keeps_a_relative_archive_where_it_started(tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    app = tmp_path / "moves.py"
    app.write_text(
        "import os, sys\nimport pitchey_trace as pt\n"
        f"os.chdir({str(work)!r})\n"
        "with pt.span('after-chdir'):\n    pass\n"
    )
    done = subprocess.run(
        [*CLI, "run", "--exporter", "archive", "--", sys.executable, str(app)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PITCHEY_TRACE_ARCHIVE": "arch"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [s["name"] for s in _spans(tmp_path / "arch")] == ["after-chdir"]
    assert not (work / "arch").exists()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PITCHEY_TRACE_EXPORTER": "archive"}, "PITCHEY_TRACE_ARCHIVE"),  # (no --exporter)
        ({"PITCHEY_TRACE_EXPORTER": "archive", "PITCHEY_TRACE_ARCHIVE": "  "}, "PITCHEY_TRACE_ARCHIVE"),
        ({"PITCHEY_TRACE_EXPORTER": "archive", "PITCHEY_TRACE_ARCHIVE": "/proc/nope"}, "cannot use"),
    ],
)
def test_run_refuses_an_unusable_archive_before_starting(env: dict[str, str], expected: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    done = subprocess.run(
        [*CLI, "run", "--", sys.executable, "-c", "print('started')"],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert expected in done.stderr
    assert "started" not in done.stdout
