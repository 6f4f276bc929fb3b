"""pitchey_trace.botocore: boto3 calls to moto's S3 server over HTTP become CLIENT spans; the
SDK's own logpush uploads through the same botocore stay untraced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

import pitchey_trace as pt
from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import instrument_urllib3, uninstrument_urllib3
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_botocore()
    instrument_botocore()  # idempotent
    yield
    uninstrument_botocore()


def test_calls_are_client_spans_with_rpc_attributes(s3: S3, traced: None) -> None:
    bucket = s3.new_bucket()
    client: Any = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    with capture_spans() as mem:
        with pt.span("upload"):
            client.put_object(Bucket=bucket, Key="users/alice@example.com/avatar", Body=b"secret-bytes")
            client.get_object(Bucket=bucket, Key="users/alice@example.com/avatar")["Body"].read()
            with pytest.raises(botocore.exceptions.ClientError):
                client.get_object(Bucket=bucket, Key="missing")
    *calls, upload = mem.spans()
    assert [c["name"] for c in calls] == ["S3.PutObject", "S3.GetObject", "S3.GetObject"]
    assert {c["parent_span_id"] for c in calls} == {upload["span_id"]}
    put, get, missing = calls
    host, port = s3.endpoint.removeprefix("http://").split(":")
    assert put["kind"] == "client"
    assert {k: v for k, v in put["attributes"].items() if k != "aws.request_id"} == {
        "rpc.system": "aws-api",
        "rpc.service": "S3",
        "rpc.method": "PutObject",
        "cloud.region": "us-east-1",
        "server.address": host,
        "server.port": int(port),
        "aws.s3.bucket": bucket,
        "http.response.status_code": 200,
    }
    assert get["status"] == "unset"
    assert missing["status"] == "error"
    assert missing["attributes"]["error.type"] == "NoSuchKey"
    assert missing["attributes"]["http.response.status_code"] == 404
    exported = str(mem.records)
    assert "alice" not in exported  # object keys are not recorded
    assert "secret-bytes" not in exported


def test_the_sdks_own_uploads_make_no_spans(s3: S3, traced: None, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    archive = LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=tmp_path / "spool"
    )
    with capture_spans(exporters=[archive]) as mem:
        with pt.span("job"):
            pass
        with pt.suppress_tracing():
            boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").list_buckets()
        assert pt.force_flush(20)
    assert [s["name"] for s in mem.spans()] == ["job"]  # no S3.PutObject from the exporter
    [key] = s3.keys(bucket, "traces/")
    assert [r["name"] for r in s3.records(bucket, key) if r["type"] == "span"] == ["job"]


def test_uninstrument_restores_the_client(s3: S3) -> None:
    instrument_botocore()
    uninstrument_botocore()
    with capture_spans() as mem:
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").list_buckets()
    assert mem.spans() == []


def test_an_aws_call_is_one_span_with_urllib3_instrumented(s3: S3, traced: None) -> None:
    """botocore sends with urllib3: an instrumented AWS call gets no second (HTTP) span, so the
    service map counts it once; without the botocore instrumentation the request is an HTTP
    client span (urllib3's)."""
    instrument_urllib3()
    try:
        client: Any = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        with capture_spans() as mem:
            client.list_buckets()
        assert [s["name"] for s in mem.spans()] == ["S3.ListBuckets"]
        uninstrument_botocore()
        with capture_spans() as mem:
            client.list_buckets()
        [http] = mem.spans()
        assert (http["name"], http["kind"]) == ("GET", "client")
        assert http["attributes"]["url.full"].startswith(s3.endpoint)
    finally:
        uninstrument_urllib3()


def test_server_address_drops_userinfo_from_the_endpoint(s3: S3, traced: None) -> None:
    """An endpoint URL with ``user:password@`` (a MinIO-style URL) reaches the server, and the
    span's ``server.address`` is the host alone: the password is never recorded."""
    host, port = s3.endpoint.removeprefix("http://").split(":")
    url = f"http://minio-user:hunter2-secret@{host}:{port}"
    client: Any = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    with capture_spans() as mem:
        client.list_buckets()
    [call] = mem.spans()
    assert call["attributes"]["http.response.status_code"] == 200
    assert call["attributes"]["server.address"] == host
    assert call["attributes"]["server.port"] == int(port)
    assert "hunter2" not in str(mem.records)
    assert "minio-user" not in str(mem.records)


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("http://[::1]:9000", "::1", 9000),  # an IPv6 address without its brackets, the port apart
        ("https://S3.Example.COM/", "s3.example.com", None),  # no explicit port: the address only
    ],
)
def test_server_address_and_port_from_the_endpoint(
    traced: None, endpoint: str, address: str, port: int | None
) -> None:
    """(botocore's Stubber: no request is sent, so no IPv6 loopback is needed.)"""
    from botocore.stub import Stubber

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with Stubber(client) as stub, capture_spans() as mem:
        stub.add_response("list_buckets", {"Buckets": []})
        client.list_buckets()
    [call] = mem.spans()
    assert call["attributes"]["server.address"] == address
    assert call["attributes"].get("server.port") == port
