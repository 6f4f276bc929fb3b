"""pitchey_trace.botocore against moto's server (server mode, over HTTP): the retries botocore
made are the span's ``http.request.resend_count`` (a proxy in front of moto answers the first
attempts with S3's 503 ``SlowDown``), and a HEAD error without an error code (S3 sends a bare
404 for ``HeadObject``) has the status code as its ``error.type``, as OpenTelemetry's HTTP
conventions say."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

import pitchey_trace as pt
from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore
from pitchey_trace.testing import capture_spans
from tests.integration.exporters.conftest import s3_endpoint  # noqa: F401  (the moto server fixture)
from tests.integration.exporters.servers import S3, FaultProxy
from tests.support.instrumentation import instrumented

pytestmark = pytest.mark.integration


class FlakyProxy(FaultProxy):
    """A proxy to moto that answers the first ``failures`` connections with S3's ``503
    SlowDown`` (``Connection: close``: each attempt comes on a new connection), then forwards."""

    def __init__(self, target: tuple[str, int], failures: int) -> None:
        self.failures = failures  # (before the accepting thread starts)
        super().__init__(target)

    def _serve(self, client: socket.socket, mode: str) -> None:
        with self._lock:
            failing = self.failures > 0
            self.failures -= failing
        super()._serve(client, "503" if failing else "up")


@pytest.fixture
def traced() -> Iterator[None]:
    with instrumented(instrument_botocore, uninstrument_botocore):
        yield


def _flaky(endpoint: str, failures: int) -> FlakyProxy:
    host, port = endpoint.removeprefix("http://").split(":")
    return FlakyProxy((host, int(port)), failures)


def _client(endpoint: str, attempts: int) -> Any:
    retries: Any = {"mode": "standard", "total_max_attempts": attempts}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(retries=retries))


def test_the_retries_botocore_made_are_the_resend_count(s3_endpoint: str, traced: None) -> None:  # noqa: F811
    bucket = S3(s3_endpoint).new_bucket()
    proxy = _flaky(s3_endpoint, failures=2)
    try:
        client = _client(proxy.url, attempts=4)
        with capture_spans() as mem:
            with pt.span("upload"):
                client.put_object(Bucket=bucket, Key="k", Body=b"after two 503s")
                client.put_object(Bucket=bucket, Key="k", Body=b"at once")
    finally:
        proxy.close()
    assert proxy.refused == 2
    retried, first_time, _ = mem.spans()
    assert retried["name"] == first_time["name"] == "S3.PutObject"
    assert retried["status"] == "unset"
    assert retried["attributes"]["http.request.resend_count"] == 2
    assert retried["attributes"]["http.response.status_code"] == 200
    assert "http.request.resend_count" not in first_time["attributes"]  # none: not recorded


def test_a_call_that_fails_after_retries_has_the_resend_count(s3_endpoint: str, traced: None) -> None:  # noqa: F811
    proxy = _flaky(s3_endpoint, failures=100)
    try:
        client = _client(proxy.url, attempts=3)
        with capture_spans() as mem:
            with pytest.raises(botocore.exceptions.ClientError) as raised:
                client.list_objects_v2(Bucket="any")
    finally:
        proxy.close()
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    (span,) = mem.spans()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "SlowDown"
    assert span["attributes"]["http.response.status_code"] == 503
    assert span["attributes"]["http.request.resend_count"] == 2


def test_a_head_error_without_an_error_code_has_the_status_code_as_error_type(
    s3_endpoint: str,  # noqa: F811
    traced: None,
) -> None:
    """S3 answers a HEAD with the status alone (no body, so no error code): botocore takes the
    status code as the code, and so does ``error.type`` (OpenTelemetry's HTTP conventions: the
    status code as a string when there is nothing more specific); the status message says
    what it is."""
    bucket = S3(s3_endpoint).new_bucket()
    client: Any = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    with capture_spans() as mem:
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client.head_object(Bucket=bucket, Key="missing")
    assert raised.value.response["Error"]["Code"] == "404"
    (span,) = mem.spans()
    assert span["name"] == "S3.HeadObject"
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "404"
    assert span["attributes"]["http.response.status_code"] == 404
    assert span["status_message"] == (
        "ClientError: An error occurred (404) when calling the HeadObject operation: Not Found"
    )
    assert "http.request.resend_count" not in span["attributes"]
