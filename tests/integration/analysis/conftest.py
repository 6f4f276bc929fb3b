"""The analysis app under a real uvicorn server on 127.0.0.1, over an archive of real spans;
moto's S3 server over HTTP on 127.0.0.1 (one per test module)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from tests.integration.exporters.servers import S3, S3_ENV, start_moto
from tests.support.analysis_data import TraceData, make_traces

pytestmark = pytest.mark.integration


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port until the block exits; yields the
    base URL once ``/healthz`` answers."""
    # The socket is bound here, so parallel test workers never race for a port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:  # readiness: the server answers, not merely "started"
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited before serving")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not answer /healthz within 20 s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def traces() -> TraceData:
    """Three real traces (see tests/support/analysis_data.py)."""
    return make_traces()


@pytest.fixture(scope="module")
def server(traces: TraceData) -> Iterator[str]:
    """Base URL of the analysis app over ``traces``."""
    with serve(create_app(Archive.from_records(traces.records))) as url:
        yield url


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """moto's S3 server (AWS credentials for it in the environment meanwhile), and a client."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server, url = start_moto()
    try:
        yield S3(url)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
