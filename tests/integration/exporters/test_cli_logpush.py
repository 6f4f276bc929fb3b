"""``pitchey-trace logpush setup|verify`` against moto's S3 server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pitchey_trace.cli import main
from tests.integration.exporters.servers import S3, S3_ENV

pytestmark = pytest.mark.integration


def write_config(tmp_path: Path, endpoint: str, bucket: str, extra: str = "") -> Path:
    p = tmp_path / "logpush.toml"
    p.write_text(f'endpoint_url = "{endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n{extra}')
    return p


def rules(s3: S3, bucket: str) -> dict[str, tuple[str, int]]:
    resp = s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)
    return {r["ID"]: (r.get("Filter", {}).get("Prefix", ""), r["Expiration"]["Days"]) for r in resp["Rules"]}


def test_setup_creates_bucket_and_rules_idempotently_and_verify_passes(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = f"pt-cli-{os.getpid()}-{tmp_path.name[-8:]}".lower().replace("_", "-")
    cfg = write_config(tmp_path, s3.endpoint, bucket)
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "created" in out
    assert "FAIL" not in out
    assert rules(s3, bucket) == {
        "pitchey-trace-traces": ("traces/", 30),
        "pitchey-trace-audit": ("audit/", 90),
        "pitchey-trace-performance": ("performance/", 14),
        "pitchey-trace-logs": ("logs/", 30),
    }
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0  # again: nothing to change
    out = capsys.readouterr().out
    assert "exists" in out
    assert out.count("(unchanged)") == 4
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 1 + 4 + 4  # bucket, 4 retention rules, 4 round trips
    assert out.rstrip().endswith("9 passed, 0 failed")
    assert s3.keys(bucket) == []  # the round-trip objects were deleted


def test_verify_reports_wrong_retention_and_setup_repairs_it_keeping_foreign_rules(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    s3.client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "someone-else",
                    "Filter": {"Prefix": "other/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 3},
                },
                {
                    "ID": "pitchey-trace-traces",
                    "Filter": {"Prefix": "traces/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 7},
                },
            ]
        },
    )
    cfg = write_config(tmp_path, s3.endpoint, bucket, "[datasets.traces]\nretention_days = 30\n")
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "objects expire after 7 days, want 30" in out
    assert "1 failed" in out
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    assert "(updated)" in capsys.readouterr().out
    assert rules(s3, bucket) == {"someone-else": ("other/", 3), "pitchey-trace-traces": ("traces/", 30)}
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0


def test_verify_fails_for_a_missing_bucket(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "endpoint_url": s3.endpoint,
                "region": "us-east-1",
                "datasets": {"audit": {"bucket": "pt-never-created-x1", "prefix": "a", "retention_days": 90}},
            }
        )
    )
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "missing (run logpush setup)" in out
    assert "0 passed, 3 failed" in out


def test_console_script_runs_setup_and_verify(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    cfg = write_config(tmp_path, s3.endpoint, bucket)
    exe = Path(sys.executable).with_name("pitchey-trace")
    env = {**os.environ, **S3_ENV}
    setup = subprocess.run(
        [str(exe), "logpush", "setup", "-c", str(cfg)], capture_output=True, text=True, env=env, timeout=120
    )
    assert setup.returncode == 0, setup.stderr
    verify = subprocess.run(
        [str(exe), "logpush", "verify", "-c", str(cfg)], capture_output=True, text=True, env=env, timeout=120
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "9 passed, 0 failed" in verify.stdout
    bad = subprocess.run(
        [str(exe), "logpush", "verify", "-c", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "cannot read" in bad.stderr
