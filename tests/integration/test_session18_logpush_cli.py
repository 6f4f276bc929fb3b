"""Session 18 walkthrough of ``pitchey-trace logpush setup|verify`` and ``pitchey-trace config``
as a new user following docs/exporters.md, against moto's S3 server over HTTP: config values
the exporter would refuse, missing / refused credentials and unreachable endpoints (one line,
exit 2), rules of others that expire a dataset sooner, versioned buckets, and secrets in
``config``'s error line."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.cli import main
from tests.integration.exporters import conftest as exporter_fixtures
from tests.integration.exporters.servers import S3, S3_ENV

pytestmark = pytest.mark.integration


# moto's S3 server over HTTP and a fresh-bucket helper: the exporter tests' fixtures
s3_endpoint = exporter_fixtures.s3_endpoint
s3 = exporter_fixtures.s3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authed_moto(s3_endpoint: str) -> Iterator[dict[str, Any]]:
    """A second moto server (its own process: moto reads the setting at import) that checks
    signatures after its first 4 requests, with a bucket and an IAM user allowed to write,
    read and delete objects and read lifecycle rules, but not to list the bucket."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        bucket = "pt-writeonly"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=bucket)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
        iam.create_user(UserName="writer")
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": [
                        "s3:PutObject",
                        "s3:GetObject",
                        "s3:DeleteObject",
                        "s3:GetLifecycleConfiguration",
                    ],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName="writer", PolicyName="write", PolicyDocument=json.dumps(policy))
        yield {
            "url": url,
            "bucket": bucket,
            "key_id": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
        }
    finally:
        proc.terminate()
        proc.wait(30)


def write(tmp_path: Path, text: str, name: str = "logpush.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("pitchey-trace")
    return subprocess.run(
        [str(exe), *argv], capture_output=True, text=True, env=env or dict(os.environ), timeout=120
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pitchey-trace: error: ")
    return lines[0]


# -- config values -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[batch]\nmax_bytes = "big"\n', "batch.max_bytes must be an int"),
        ("[batch]\nmax_records = 0\n", "batch.max_records must be an int"),
        ("[batch]\nmax_records = true\n", "batch.max_records must be an int"),
        ("[batch]\nmax_interval_s = 0\n", "batch.max_interval_s must be > 0"),
        ('[batch]\nmax_interval_s = "30s"\n', "batch.max_interval_s must be a number"),
        ('endpoint_url = "ftp://127.0.0.1:9000"\n', "endpoint_url must be http(s)://host[:port]"),
        ('endpoint_url = "localhost:9000"\n', "endpoint_url must be http(s)://host[:port]"),
        ('endpoint_url = "http://127.0.0.1:99999"\n', "endpoint_url must be http(s)://host[:port]"),
    ],
)
def test_values_the_exporter_refuses_are_refused_by_setup_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    # Before: setup/verify accepted them (an ftp:// endpoint even reported "bucket missing")
    # and only LogpushExporter.from_config refused the same file later, in the service.
    from pitchey_trace.exceptions import ConfigurationError
    from pitchey_trace.exporters import LogpushExporter

    cfg = write(tmp_path, f'region = "us-east-1"\nbucket = "pitchey-logs"\n{extra}')
    for action in ("setup", "verify"):
        assert main(["logpush", action, "--config", str(cfg)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert message in one_error_line(captured.err)
    with pytest.raises(ConfigurationError, match="must be"):
        LogpushExporter.from_config(cfg)


def test_a_profile_that_does_not_exist_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'bucket = "pitchey-logs"\nprofile = "no-such-profile"\n')
    res = run_cli("logpush", "verify", "--config", str(cfg), env={**os.environ, **S3_ENV})
    assert res.returncode == 2
    assert "no-such-profile" in one_error_line(res.stderr)  # (was a botocore traceback)
    assert res.stdout == ""


# -- credentials and endpoints -------------------------------------------------------------------
@pytest.mark.parametrize("action", ["setup", "verify"])
def test_no_credentials_is_one_line_and_exit_2(s3: S3, tmp_path: Path, action: str) -> None:
    cfg = write(tmp_path, f'endpoint_url = "{s3.endpoint}"\nregion = "auto"\nbucket = "pitchey-logs"\n')
    env = {**os.environ, **S3_ENV}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(name)
    res = run_cli("logpush", action, "--config", str(cfg), env=env)
    assert res.returncode == 2  # was 1, with a table of 9 failures, 8 of them "bucket missing"
    assert "no usable S3 credentials" in one_error_line(res.stderr)
    assert res.stdout == ""


@pytest.mark.parametrize("action", ["setup", "verify"])
def test_an_endpoint_refusing_connections_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_endpoint: str, action: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = write(tmp_path, f'endpoint_url = "{url}"\nregion = "auto"\nbucket = "pitchey-logs"\n')
    assert main(["logpush", action, "--config", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot connect to {url}" in one_error_line(captured.err)


@pytest.mark.parametrize("action", ["setup", "verify"])
def test_credentials_the_store_refuses_are_one_line_and_exit_2(
    authed_moto: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    cfg = write(tmp_path, f'endpoint_url = "{authed_moto["url"]}"\nbucket = "{authed_moto["bucket"]}"\n')
    assert main(["logpush", action, "--config", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = one_error_line(captured.err)
    assert "refused the credentials (InvalidAccessKeyId)" in line
    assert "wrong" not in line


def test_verify_with_a_key_that_may_not_list_the_bucket_still_checks_the_rest(
    authed_moto: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A least-privilege key (what the exporter needs: put objects) cannot HEAD the bucket: the
    # 403 was reported as "bucket missing" for every dataset and nothing else was checked.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", authed_moto["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", authed_moto["secret"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    cfg = write(
        tmp_path,
        f'endpoint_url = "{authed_moto["url"]}"\nbucket = "{authed_moto["bucket"]}"\n[datasets.traces]\n',
    )
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1
    rows = {tuple(re.split(r"\s{2,}", line)[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert "FAIL" in rows["bucket exists", "pt-writeonly"]
    assert "AccessDenied" in rows["bucket exists", "pt-writeonly"]
    assert "no expiration rule (want 30 days" in rows["retention", "pt-writeonly/traces"]
    assert "PASS" in rows["write/read/delete", "pt-writeonly/traces"]
    assert "bucket missing" not in "".join(rows.values())


# -- lifecycle rules of others, versioned buckets -------------------------------------------------
def rule(rule_id: str, prefix: str, days: int) -> dict[str, Any]:
    return {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled", "Expiration": {"Days": days}}


def test_setup_keeps_a_foreign_rule_but_fails_when_it_expires_a_dataset_sooner(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    foreign = [rule("other-team", "other/", 3), rule("their-traces", "traces/", 7)]
    s3.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": foreign})
    cfg = write(tmp_path, f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n')
    for detail in ("updated", "unchanged"):  # a second run writes nothing and says the same
        assert main(["logpush", "setup", "--config", str(cfg)]) == 1  # was 0: all PASS
        out = capsys.readouterr().out
        traces = next(line for line in out.splitlines() if f"{bucket}/traces " in line)
        assert "FAIL" in traces
        assert f"objects expire after 7 days, want 30: rule 'their-traces', kept ({detail})" in traces
        assert out.rstrip().endswith("4 passed, 1 failed")
    got = s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    by_id = {r["ID"]: (r["Filter"]["Prefix"], r["Expiration"]["Days"]) for r in got}
    assert by_id == {
        "other-team": ("other/", 3),
        "their-traces": ("traces/", 7),
        "pitchey-trace-traces": ("traces/", 30),
        "pitchey-trace-audit": ("audit/", 90),
        "pitchey-trace-performance": ("performance/", 14),
        "pitchey-trace-logs": ("logs/", 30),
    }
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1  # setup and verify agree
    assert "objects expire after 7 days, want 30" in capsys.readouterr().out


def test_setup_fails_a_keep_forever_dataset_under_a_foreign_whole_bucket_rule(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    s3.client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [rule("everything", "", 365)]}
    )
    cfg = write(
        tmp_path,
        f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n'
        "[datasets.audit]\nretention_days = 0\n",
    )
    assert main(["logpush", "setup", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "configured to keep forever but a rule expires after 365 days: rule 'everything', kept" in out
    rules = s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["ID"] for r in rules] == ["everything"]  # kept, and nothing of ours added


def test_verify_in_a_versioned_bucket_leaves_no_version_or_delete_marker(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    cfg = write(tmp_path, f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n')
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("9 passed, 0 failed")
    versions = s3.client.list_object_versions(Bucket=bucket)
    # (before: every run left its 4 test objects behind delete markers, kept for ever)
    assert versions.get("Versions", []) == []
    assert versions.get("DeleteMarkers", []) == []


# -- pitchey-trace config ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "shown"),
    [
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:s3cr3t-pw@collector.example:99999/?token=tok-123",
            },
            "https://user:***@collector.example:99999/v1/traces?token=***",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "zipkin",
                "OTEL_EXPORTER_ZIPKIN_ENDPOINT": "ftp://user:s3cr3t-pw@zipkin.example/api?token=tok-123",
            },
            "ftp://user:***@zipkin.example/api?token=***",
        ),
    ],
)
def test_config_masks_credentials_in_its_error_line(
    env: dict[str, str], shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PITCHEY_TRACE_SERVICE", "svc")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    res = run_cli("config", env=dict(os.environ))
    assert res.returncode == 2
    line = one_error_line(res.stderr)
    assert shown in line
    assert "s3cr3t-pw" not in line  # was printed as given
    assert "tok-123" not in line


def test_config_shows_no_secret_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(8)
    monkeypatch.setenv("PITCHEY_TRACE_SERVICE", "svc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://u:{secret}a@collector.example:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer {secret}b")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{secret}c")
    monkeypatch.setenv("PITCHEY_TRACE_ANALYSIS_AUTH", f"admin:{secret}d")
    for argv in (["config"], ["config", "--json"]):
        res = run_cli(*argv, env=dict(os.environ))
        assert res.returncode == 0, res.stderr
        assert "collector.example" in res.stdout
        assert secret not in res.stdout + res.stderr
