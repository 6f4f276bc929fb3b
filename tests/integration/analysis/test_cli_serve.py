"""``pitchey-trace serve`` as a user runs it: a separate process over an archive directory
written by LocalArchiveExporter, answering over HTTP until it is stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pitchey_trace.exporters import LocalArchiveExporter
from tests.support.analysis_data import TraceData

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("auth", [None, "ops:pw"])
def test_serve_command_answers_over_http(traces: TraceData, tmp_path: Path, auth: str | None) -> None:
    exporter = LocalArchiveExporter(tmp_path / "archive")
    assert exporter.export(traces.records)
    exporter.shutdown()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pitchey_trace.cli",
            "serve",
            "--archive",
            str(tmp_path / "archive"),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            **({"PITCHEY_TRACE_ANALYSIS_AUTH": auth} if auth else {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pitchey-trace serve did not answer within 30 s"
            time.sleep(0.05)
        credentials = tuple(auth.split(":", 1)) if auth else None
        if auth:
            assert httpx.get(url + "/api/overview", timeout=10).status_code == 401
        client = httpx.Client(auth=credentials, timeout=10)  # type: ignore[arg-type]
        overview = client.get(url + "/api/overview").json()
        assert overview["traces"] == 3
        found = client.get(url + "/api/search", params={"status": "error"}).json()
        assert [t["trace_id"] for t in found] == [traces.payment]
        page = client.get(f"{url}/traces/{traces.orders}")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert f"serving <Archive {tmp_path / 'archive'}" in err
    assert "Traceback" not in err
