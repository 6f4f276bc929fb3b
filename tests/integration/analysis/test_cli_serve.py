"""``pitchey-trace serve`` as a user runs it: a separate process over an archive directory
written by LocalArchiveExporter, answering over HTTP until it is stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pitchey_trace.exporters import LocalArchiveExporter
from tests.integration.exporters.servers import self_signed_certificate
from tests.support.analysis_data import TraceData

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_serve(
    archive: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pitchey_trace.cli",
            "serve",
            "--archive",
            str(archive),
            "--port",
            str(port),
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(proc: subprocess.Popen[str], url: str, **client: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(url + "/healthz", timeout=2, **client).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "pitchey-trace serve did not answer within 30 s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.fixture
def archive_dir(traces: TraceData, tmp_path: Path) -> Path:
    exporter = LocalArchiveExporter(tmp_path / "archive")
    assert exporter.export(traces.records)
    exporter.shutdown()
    return tmp_path / "archive"


@pytest.mark.parametrize("auth", [None, "ops:pw"])
def test_serve_command_answers_over_http(traces: TraceData, archive_dir: Path, auth: str | None) -> None:
    port = _free_port()
    proc = _start_serve(archive_dir, port, env={"PITCHEY_TRACE_ANALYSIS_AUTH": auth} if auth else None)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
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
        err = _stop(proc)
    assert f"serving <Archive {archive_dir}" in err
    assert "Traceback" not in err


def test_serve_command_over_https(traces: TraceData, archive_dir: Path, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    port = _free_port()
    proc = _start_serve(
        archive_dir, port, "--tls-cert", cert, "--tls-key", key, env={"PITCHEY_TRACE_ANALYSIS_AUTH": "ops:pw"}
    )
    url = f"https://127.0.0.1:{port}"
    trusting = ssl.create_default_context(cafile=cert)
    try:
        _wait_healthy(proc, url, verify=trusting)
        # (left open: a browser's idle keep-alive connection, which the stop must not wait on)
        client = httpx.Client(auth=("ops", "pw"), timeout=10, verify=trusting)
        assert client.get(url + "/api/overview").json()["traces"] == 3
        assert client.get(f"{url}/traces/{traces.payment}").status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(url + "/healthz", timeout=5)
        # plain HTTP gets no answer from a TLS port (the server waits for a handshake: the
        # short timeout ends the wait, either way a transport error)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    finally:
        err = _stop(proc)
    assert f"on https://127.0.0.1:{port}/ (HTTP Basic authentication)" in err
    assert "Traceback" not in err
    assert proc.returncode == 0  # stopped by the SIGINT, not killed after _stop's wait


def test_serve_refuses_a_key_of_another_certificate(archive_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed_certificate(tmp_path / "a")
    _, other_key = self_signed_certificate(tmp_path / "b")
    proc = _start_serve(archive_dir, _free_port(), "--tls-cert", cert, "--tls-key", other_key)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("pitchey-trace: error: --tls-cert/--tls-key:")
    assert "Traceback" not in err


def test_serve_with_an_encrypted_key(archive_dir: Path, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, key_password=b"s3cret")
    # Without the password: one error line at once, never a pass-phrase prompt on the terminal.
    proc = _start_serve(archive_dir, _free_port(), "--tls-cert", cert, "--tls-key", key)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD" in err
    port = _free_port()
    proc = _start_serve(
        archive_dir,
        port,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        env={"PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD": "s3cret"},
    )
    try:
        _wait_healthy(proc, f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=cert))
    finally:
        err = _stop(proc)
    assert "s3cret" not in err
    assert "Traceback" not in err


def _first_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The first line the process writes to stderr ("" if it exits first)."""
    import threading

    line: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: line.append(proc.stderr.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert line, f"pitchey-trace serve wrote nothing within {timeout} s"
    return line[0]


def test_serve_on_port_0_tells_the_port_it_listens_on(archive_dir: Path) -> None:
    proc = _start_serve(archive_dir, 0)
    try:
        first = _first_line(proc)
        match = re.search(r" on (http://127\.0\.0\.1:(\d+)/)$", first.rstrip("\n"))
        assert match, first
        assert int(match[2]) != 0
        _wait_healthy(proc, match[1].rstrip("/"))
        assert httpx.get(match[1] + "api/overview", timeout=10).json()["traces"] == 3
    finally:
        err = _stop(proc)
    assert "Traceback" not in err


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(archive_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = _start_serve(archive_dir, port)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert err == f"pitchey-trace: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
