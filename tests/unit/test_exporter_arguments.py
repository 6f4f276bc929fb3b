"""Exporter arguments are checked when the exporter is made: a wrong one is a clear error then,
not a failure of every export later (each case below used to be accepted)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.exporters import (
    ConsoleExporter,
    HttpAnalyticsExporter,
    LocalArchiveExporter,
    LogpushExporter,
    OTLPExporter,
)
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters.console import render_tree

URL = "http://127.0.0.1:9/ingest"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout_s": float("inf")}, pt.ConfigurationError),  # every export: OverflowError
        ({"timeout_s": float("nan")}, pt.ConfigurationError),  # every export: ValueError
        ({"timeout_s": 10**11}, pt.ConfigurationError),
        ({"timeout_s": "5"}, pt.ConfigurationError),
        ({"max_points_per_request": 1.5}, pt.ConfigurationError),  # range() of a float
        ({"max_blob_bytes": 2.5}, pt.ConfigurationError),
        ({"compresslevel": 1.5}, pt.ConfigurationError),
        ({"compresslevel": 10**11}, pt.ConfigurationError),
        ({"to_point": 3}, TypeError),  # "int is not callable" on every record
        ({"datasets": "traces"}, TypeError),  # would be {"t", "r", "a", "c", "e", "s"}
        ({"datasets": 5}, TypeError),
        ({"headers": 5}, TypeError),
        ({"headers": {"X-Tenant": "a\r\nX-Admin: 1"}}, pt.ConfigurationError),  # header injection
        ({"headers": {"bad name": "v"}}, pt.ConfigurationError),
        ({"headers": {"X-N": 1}}, TypeError),
        ({"token": 123}, TypeError),
        ({"name": ""}, TypeError),
        ({"url": 42}, TypeError),
        ({"url": "http://host:99999/x"}, pt.ConfigurationError),
        ({"url": "ftp://host/x"}, pt.ConfigurationError),
    ],
)
def test_http_analytics_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        HttpAnalyticsExporter(**{"url": URL, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"endpoint": 42}, TypeError),
        ({"timeout_s": float("inf")}, pt.ConfigurationError),
        ({"max_spans_per_request": 2.5}, pt.ConfigurationError),
        ({"datasets": "traces"}, TypeError),
        ({"headers": {"api-key": "k\n"}}, pt.ConfigurationError),
        ({"scope_name": None}, TypeError),
    ],
)
def test_otlp_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        OTLPExporter(**{"endpoint": URL, **kwargs})


def test_otlp_headers_from_the_environment_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%0D%0AX-Admin%3A%201")
    with pytest.raises(pt.ConfigurationError, match="control characters"):
        OTLPExporter(URL)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_batch_records": 1.5}, pt.ConfigurationError),
        ({"max_batch_bytes": "1MB"}, pt.ConfigurationError),
        ({"max_interval_s": float("nan")}, pt.ConfigurationError),
        ({"max_interval_s": 0}, pt.ConfigurationError),
        ({"fsync_interval_s": float("inf")}, pt.ConfigurationError),
        ({"compresslevel": 1.5}, pt.ConfigurationError),
        ({"spool_max_bytes": None}, pt.ConfigurationError),
        ({"datasets": "audit"}, TypeError),
        ({"prefixes": 5}, TypeError),
        ({"prefixes": {"traces": 5}}, TypeError),
    ],
)
def test_archive_arguments(tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LocalArchiveExporter(tmp_path, **kwargs)
    with pytest.raises(error):
        LogpushExporter("bucket", endpoint_url="http://127.0.0.1:9", region="us-east-1", **kwargs)


@pytest.mark.parametrize(
    "policy",
    [
        {"max_attempts": 1.5},
        {"max_attempts": 0},
        {"initial_backoff_s": float("nan")},
        {"max_backoff_s": float("inf")},
        {"multiplier": float("nan")},
        {"jitter": 2},
        {"max_elapsed_s": float("nan")},
        {"retry_statuses": 503},
    ],
)
def test_retry_policy_arguments(policy: dict[str, Any]) -> None:
    with pytest.raises((pt.ConfigurationError, TypeError)):
        RetryPolicy(**policy)


def test_console_arguments_and_partial_span_records() -> None:
    with pytest.raises(TypeError, match="stream"):
        ConsoleExporter("out.txt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pretty"):
        ConsoleExporter(pretty="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ConsoleExporter(datasets="traces")
    # A custom record of type "span" lacking fields is drawn, not a KeyError for the batch.
    out = io.StringIO()
    assert ConsoleExporter(out, pretty=True).export([{"type": "span", "name": "partial", "span_id": "a"}])
    assert "partial  ? ms" in out.getvalue()
    tree = render_tree([{"type": "span", "span_id": "x", "parent_span_id": "x", "name": "self-parent"}])
    assert "self-parent" in tree  # its own parent: drawn as a root, not lost


def test_valid_arguments_still_work(tmp_path: Path) -> None:
    exp = HttpAnalyticsExporter(
        URL, datasets=["traces", "audit"], headers={"X-Tenant": "t1"}, timeout_s=2, compresslevel=0
    )
    assert exp.datasets == frozenset({"traces", "audit"})
    assert exp._sender.headers["X-Tenant"] == "t1"
    assert OTLPExporter(URL, datasets=("traces",), headers={"api-key": "k"}).datasets == frozenset({"traces"})
    LocalArchiveExporter(tmp_path, prefixes={"traces": "t/"}, max_interval_s=0.5, compresslevel=9)
    RetryPolicy(max_attempts=3, initial_backoff_s=0, retry_statuses=frozenset({503}))


def test_tokens_and_header_values_that_http_cannot_send(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token read from a file or an env var often ends with a newline: stripped, not a failure
    # of every request. Non-latin-1 values cannot be sent by http.client at all.
    monkeypatch.setenv("PITCHEY_TRACE_ANALYTICS_TOKEN", "s3cr3t\n")
    assert HttpAnalyticsExporter(URL)._sender.headers["Authorization"] == "Bearer s3cr3t"
    with pytest.raises(pt.ConfigurationError, match="control characters"):
        HttpAnalyticsExporter(URL, token="a\nb")
    with pytest.raises(pt.ConfigurationError, match="latin-1"):
        OTLPExporter(URL, headers={"x-team": "☃"})
    assert OTLPExporter(URL, headers={"x-team": "café\tbar"})._sender.headers["x-team"] == "café\tbar"


def test_archive_directory_must_be_a_path() -> None:
    # "" was the current directory: archives landed wherever the process happened to run.
    for bad in ("", None, 5, b""):
        with pytest.raises(TypeError, match="directory"):
            LocalArchiveExporter(bad)  # type: ignore[arg-type]


def test_in_memory_exporter_arguments() -> None:
    with pytest.raises(TypeError):
        pt.InMemoryExporter(datasets="traces")
    for bad in (0, 1.5, None):
        with pytest.raises(pt.ConfigurationError):
            pt.InMemoryExporter(max_records=bad)  # type: ignore[arg-type]
    mem = pt.InMemoryExporter(max_records=2)
    assert mem.export([{"type": "span", "name": str(i)} for i in range(3)])
    assert [r["name"] for r in mem.records] == ["1", "2"]


@pytest.mark.parametrize("retry", [{"max_attempts": 3}, "fast", 3, RetryPolicy])
def test_retry_must_be_a_retry_policy(tmp_path: Path, retry: Any) -> None:
    # Accepted before, then every export failed with AttributeError (an internal error).
    from pitchey_trace.exporters import OTLPLogExporter, OTLPMetricsExporter, ZipkinExporter

    makers: list[Any] = [
        lambda: OTLPExporter(URL, retry=retry),
        lambda: OTLPExporter("http://127.0.0.1:9", protocol="grpc", retry=retry),
        lambda: HttpAnalyticsExporter(URL, retry=retry),
        lambda: ZipkinExporter(URL, retry=retry),
        lambda: OTLPLogExporter(URL, retry=retry),
        lambda: OTLPMetricsExporter(URL, retry=retry),
        lambda: LocalArchiveExporter(tmp_path, retry=retry),
        lambda: LogpushExporter("bucket", endpoint_url="http://127.0.0.1:9", region="us-east-1", retry=retry),
    ]
    for make in makers:
        with pytest.raises(TypeError, match="retry must be a RetryPolicy or None"):
            make()


def test_retry_none_or_a_policy_is_accepted(tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=2)
    assert OTLPExporter(URL, retry=policy)._sender.retry is policy
    assert isinstance(OTLPExporter(URL, retry=None)._sender.retry, RetryPolicy)
    assert OTLPExporter("http://127.0.0.1:9", protocol="grpc", retry=policy)._sender.retry is policy
    archive = LocalArchiveExporter(tmp_path, retry=policy)
    try:
        assert archive.retry is policy
    finally:
        archive.shutdown(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint_url": "localhost:9000"},  # no scheme: boto3 failed every upload
        {"endpoint_url": "ftp://storage.example"},
        {"endpoint_url": "http://"},  # no host
        {"endpoint_url": "https://host:99999"},
        {"endpoint_url": "https://host:port"},
        {"addressing_style": "pathstyle"},  # botocore: InvalidS3AddressingStyleError per upload
        {"addressing_style": "Path"},
        {"addressing_style": ""},
    ],
)
def test_logpush_endpoint_and_addressing_style_are_checked(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(pt.ConfigurationError, match=next(iter(kwargs))):
        LogpushExporter("bucket", region="us-east-1", spool_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # refused before anything was made


@pytest.mark.parametrize("bad", [5, b"http://host"])
def test_logpush_addressing_style_and_endpoint_types(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(TypeError, match="addressing_style"):
        LogpushExporter("bucket", addressing_style=bad, spool_dir=tmp_path)
    with pytest.raises(TypeError, match="endpoint_url"):
        LogpushExporter("bucket", endpoint_url=bad, spool_dir=tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint_url": "http://127.0.0.1:9000"},
        {"endpoint_url": "https://acct.r2.cloudflarestorage.com", "addressing_style": "virtual"},
        {"endpoint_url": "http://[::1]:9000/", "addressing_style": "path"},
        {"addressing_style": "auto"},
        {"addressing_style": None},
    ],
)
def test_logpush_valid_endpoints_and_styles(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    exp = LogpushExporter("bucket", region="us-east-1", spool_dir=tmp_path, **kwargs)
    try:
        assert exp.endpoint_url == kwargs.get("endpoint_url")
    finally:
        exp.shutdown(1)
