"""LogpushExporter against real servers: moto over HTTP (missing bucket, a restart on the same
port), and a small S3-like server answering 403 / 503 SlowDown."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.logpush_config import LogpushConfig
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.2)


def rec(seq: int) -> dict[str, Any]:
    return {"type": "span", "trace_id": "t", "span_id": f"{seq:016x}", "name": "op", "seq": seq}


def make(endpoint: str, bucket: str, spool: Path, **kw: Any) -> LogpushExporter:
    kw.setdefault("retry", FAST)
    return LogpushExporter(
        bucket,
        endpoint_url=endpoint,
        region="us-east-1",
        spool_dir=spool,
        connect_timeout_s=1.0,
        read_timeout_s=3.0,
        **kw,
    )


class S3Errors:
    """An S3-like endpoint that answers every request with one fixed error."""

    def __init__(self, status: int, code: str) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # (answers botocore's Expect: 100-continue at once)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{code}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def denied(s3_endpoint: str) -> Iterator[S3Errors]:  # (s3_endpoint: the credentials' env)
    server = S3Errors(403, "InvalidAccessKeyId")
    yield server
    server.close()


@pytest.fixture
def slow_down(s3_endpoint: str) -> Iterator[S3Errors]:
    server = S3Errors(503, "SlowDown")
    yield server
    server.close()


def test_missing_bucket_counted_warned_once_retried_slowly_then_delivered(
    s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    bucket = "pt-missing-" + str(time.time_ns())[-8:]
    slow = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=5.0)
    exp = make(s3.endpoint, bucket, tmp_path, max_batch_records=2, retry=slow)
    exp.export([rec(i) for i in range(10)])  # 5 batches waiting
    assert not exp.force_flush(1.0)
    deadline = time.monotonic() + 30  # (the first upload's answer: slow on a loaded machine)
    while _stats.get("logpush.missing_bucket") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stats.get("logpush.missing_bucket") == 1  # not one per batch; next in max_backoff_s
    warnings = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(warnings) == 1
    assert bucket in warnings[0]
    s3.client.create_bucket(Bucket=bucket)
    assert exp.force_flush(10)
    exp.shutdown(5)
    assert sorted(r["seq"] for r in s3.all_records(bucket)) == list(range(10))
    assert any("work again" in r.getMessage() for r in caplog.records)


def test_refused_credentials_one_warning_no_retry_storm(
    denied: S3Errors, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    slow = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=5.0)
    exp = make(denied.url, "bucket", tmp_path, max_batch_records=1, datasets=["traces", "audit"], retry=slow)
    try:
        exp.export([rec(i) for i in range(20)])
        exp.export([{**rec(100), "type": "audit"}])
        exp.force_flush(0.2)
        deadline = time.monotonic() + 30  # (the first answer: slow on a loaded machine)
        while _stats.get("logpush.access_denied") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # (21 batches waiting, in two datasets: no second request comes)
        assert denied.requests == 1  # refused credentials hold every dataset back
        assert _stats.get("logpush.access_denied") == 1
        warnings = [r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(warnings) == 1
        assert "InvalidAccessKeyId" in warnings[0]
    finally:
        exp.shutdown(0.5)
    assert exp.pending()["closed_batches"] == 21  # kept in the spool for the next start
    assert len(list(tmp_path.glob("*.ready"))) == 21


def test_no_credentials_at_all_is_explained_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/pitchey-trace-tests")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/pitchey-trace-tests")
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    slow = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=5.0)
    exp = make("http://127.0.0.1:9", "bucket", tmp_path, max_batch_records=1, retry=slow)
    try:
        exp.export([rec(i) for i in range(10)])
        exp.force_flush(0.2)
        time.sleep(0.5)
        assert _stats.get("logpush.access_denied") == 1  # not one per batch
        warnings = [r.getMessage() for r in caplog.records if "no usable credentials" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        exp.shutdown(0.2)


def test_slow_down_backs_off_store_wide(slow_down: S3Errors, tmp_path: Path) -> None:
    retry = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, jitter=0.0)
    exp = make(slow_down.url, "bucket", tmp_path, max_batch_records=1, retry=retry)
    exp.export([rec(i) for i in range(30)])
    exp.force_flush(0.05)
    time.sleep(1.5)
    # 0.1 + 0.2 + 0.4 + 0.4 ... : about 6 requests in 1.5 s for 30 waiting batches
    assert 3 <= slow_down.requests <= 10
    assert _stats.get("logpush.retried") >= 3
    assert _stats.get("logpush.access_denied") == 0  # (throttling is not a configuration error)
    exp.shutdown(0.5)


def test_objects_are_gzip_files_not_gzip_encoded(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    exp = make(s3.endpoint, bucket, tmp_path)
    exp.export([rec(i) for i in range(5)])
    assert exp.force_flush(10)
    exp.shutdown(5)
    (key,) = s3.keys(bucket)
    head = s3.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/gzip"
    assert "ContentEncoding" not in head  # (clients must not un-gzip a .log.gz on download)
    raw = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert [json.loads(x)["seq"] for x in gzip.decompress(raw).splitlines()] == list(range(5))


def test_s3_down_then_restarted_on_the_same_port_drains_the_spool(
    tmp_path: Path,
    s3_endpoint: str,  # (s3_endpoint: the credentials' env; its own server here)
) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = S3(endpoint)
    bucket = s3.new_bucket()
    exp = make(endpoint, bucket, tmp_path, max_batch_records=5)
    try:
        exp.export([rec(i) for i in range(5)])
        assert exp.force_flush(10)
        server.stop()
        exp.export([rec(i) for i in range(5, 25)])
        assert not exp.force_flush(1.0)
        assert _stats.get("logpush.retried") >= 1
        assert len(list(tmp_path.glob("*.ready"))) >= 1  # waiting on disk
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        assert exp.force_flush(15)
        assert sorted(r["seq"] for r in s3.all_records(bucket)) == list(range(25))
        assert not list(tmp_path.glob("*.ready"))
    finally:
        exp.shutdown(2)
        server.stop()


def test_a_retention_rule_never_reaches_another_dataset() -> None:
    nested = {"bucket": "b", "datasets": {"traces": {"prefix": "t"}, "audit": {"prefix": "t/audit"}}}
    with pytest.raises(ConfigurationError, match=r"would expire the objects of datasets\.audit"):
        LogpushConfig.from_mapping(nested)
    whole = {"bucket": "b", "datasets": {"traces": {"prefix": ""}, "audit": {}}}
    with pytest.raises(ConfigurationError, match="whole bucket"):
        LogpushConfig.from_mapping(whole)
    # the same retention, or another bucket: fine
    LogpushConfig.from_mapping(
        {"bucket": "b", "datasets": {"traces": {"prefix": "t"}, "logs": {"prefix": "t/logs"}}}
    )
    LogpushConfig.from_mapping(
        {"bucket": "b", "datasets": {"traces": {"prefix": ""}, "audit": {"bucket": "other"}}}
    )
    LogpushConfig.from_mapping({"bucket": "b", "datasets": {"traces": {"prefix": "t"}, "tx": {}}})
