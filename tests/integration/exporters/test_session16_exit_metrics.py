"""OTLP metrics sent at exit when the interpreter refuses new threads (Python 3.12+ in
``atexit``): the sender thread is started on the first export, which is often the exit flush."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.integration.exporters.servers import RecordingServer

PROGRAM = textwrap.dedent(
    """
    import atexit, sys, threading
    import pitchey_trace as pt
    from pitchey_trace.exporters import OTLPMetricsExporter

    pt.configure(service="jobs", exporters=[OTLPMetricsExporter(sys.argv[1], protocol="http/json")])

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    # runs before the SDK's exit handler (last in, first out), as 3.12 refuses threads there
    atexit.register(lambda: setattr(threading.Thread, "start", refuse))
    with pt.span("job"):
        pass
    """
)


def test_metrics_taken_in_at_exit_are_sent_when_threads_are_refused(http_server: RecordingServer) -> None:
    url = http_server.url + "/v1/metrics"
    done = subprocess.run([sys.executable, "-c", PROGRAM, url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr, done.stderr
    bodies = [r.json() for r in http_server.requests if r.path == "/v1/metrics"]
    names = {
        m["name"]
        for body in bodies
        for rm in body["resourceMetrics"]
        for sm in rm["scopeMetrics"]
        for m in sm["metrics"]
    }
    assert bodies, done.stderr
    assert names, done.stderr
