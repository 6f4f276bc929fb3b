"""The exit flush where the interpreter refuses new threads (Python 3.12+ in ``atexit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import atexit, threading
    import pitchey_trace as pt

    class Exporter:
        def export(self, batch):
            for record in batch:
                print("EXPORT", record["name"], flush=True)
            return True

        def shutdown(self, timeout=None):
            print("SHUTDOWN", flush=True)

    pt.configure(service="jobs", exporters=[Exporter()], rollups=None)

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    # registered after configure(): runs before the SDK's handler (atexit is last in, first
    # out), as Python 3.12+ refuses threads to every atexit handler
    atexit.register(lambda: setattr(threading.Thread, "start", refuse))
    with pt.span("job"):
        pass
    """
)


def test_exporters_are_flushed_and_shut_down_when_threads_are_refused_at_exit() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["EXPORT job", "SHUTDOWN"]
    assert "internal error" not in done.stderr, done.stderr
