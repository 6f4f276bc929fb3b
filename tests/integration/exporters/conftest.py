"""Fixtures for the exporter tests: moto's S3 server over HTTP on 127.0.0.1 (one per test
worker), a fault-injecting proxy in front of it, fresh buckets, recording HTTP servers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from tests.integration.exporters.servers import S3, S3_ENV, FaultProxy, RecordingServer, start_moto


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server, url = start_moto()
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_endpoint: str) -> S3:
    return S3(s3_endpoint)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    p = FaultProxy((host, int(port)))
    yield p
    p.close()


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()
