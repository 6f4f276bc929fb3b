"""Session 19: ``pitchey-trace logpush setup|verify`` on versioned buckets, against moto's S3
server over HTTP. In a bucket whose versioning is enabled (or suspended after being enabled) an
Expiration rule only puts a delete marker in front of each archive: the data stays as a
noncurrent version for ever unless a rule also has NoncurrentVersionExpiration. A store without
versioning (R2 answers GetBucketVersioning with NotImplemented) and a key that may not read the
versioning state are played by a small proxy in front of moto."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.cli import main
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration

STANDARD = {"traces": 30, "audit": 90, "performance": 14, "logs": 30}


def write_config(tmp_path: Path, endpoint: str, bucket: str, extra: str = "") -> Path:
    p = tmp_path / "logpush.toml"
    p.write_text(f'endpoint_url = "{endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n{extra}')
    return p


def rules_by_id(s3: S3, bucket: str) -> dict[str, dict[str, Any]]:
    return {r["ID"]: r for r in s3.client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}


def rows(out: str) -> dict[str, str]:
    """Report lines by target, for the lifecycle / retention rows."""
    return {
        line.split()[1]: line for line in out.splitlines() if line.startswith(("lifecycle ", "retention "))
    }


def versioned_bucket(s3: S3, state: str) -> str:
    bucket = s3.new_bucket()
    s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if state == "Suspended":
        s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert s3.client.get_bucket_versioning(Bucket=bucket)["Status"] == state
    return bucket


# -- setup -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["Enabled", "Suspended"])
def test_setup_in_a_versioned_bucket_also_expires_noncurrent_versions(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    bucket = versioned_bucket(s3, state)
    foreign = {
        "ID": "other-team",
        "Filter": {"Prefix": "other/"},
        "Status": "Enabled",
        "Expiration": {"Days": 3},
    }
    s3.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]})
    cfg = write_config(tmp_path, s3.endpoint, bucket)
    for detail in ("updated", "unchanged"):  # idempotent: the second run writes nothing
        assert main(["logpush", "setup", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert out.rstrip().endswith("5 passed, 0 failed")
        line = rows(out)[f"{bucket}/traces"]
        assert f"noncurrent versions 1 day later (versioning {state}) ({detail})" in line
    got = rules_by_id(s3, bucket)
    assert got.pop("other-team") == foreign  # kept as it was
    # before: only Expiration, so every expired archive stayed as a noncurrent version forever
    assert {i: (r["Expiration"], r.get("NoncurrentVersionExpiration")) for i, r in got.items()} == {
        f"pitchey-trace-{name}": ({"Days": days}, {"NoncurrentDays": 1}) for name, days in STANDARD.items()
    }
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "30 days (noncurrent versions expire too)" in rows(out)[f"{bucket}/traces"]


def test_setup_in_an_unversioned_bucket_writes_expiration_only(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    cfg = write_config(tmp_path, s3.endpoint, bucket)
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    assert "versioning" not in capsys.readouterr().out
    assert all("NoncurrentVersionExpiration" not in r for r in rules_by_id(s3, bucket).values())
    # versioning turned on later: verify says so, the next setup adds the noncurrent expiration
    s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1
    assert "4 failed" in capsys.readouterr().out
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    assert "(updated)" in rows(capsys.readouterr().out)[f"{bucket}/audit"]
    assert rules_by_id(s3, bucket)["pitchey-trace-audit"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 1
    }
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0


# -- verify ----------------------------------------------------------------------------------------
def test_verify_fails_a_versioned_bucket_whose_rules_keep_noncurrent_versions(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = versioned_bucket(s3, "Enabled")
    # what setup wrote before: the right Expiration days, nothing for noncurrent versions; and a
    # disabled rule of others that would expire them
    old = [
        {
            "ID": f"pitchey-trace-{n}",
            "Filter": {"Prefix": f"{n}/"},
            "Status": "Enabled",
            "Expiration": {"Days": d},
        }
        for n, d in STANDARD.items()
    ]
    disabled = {
        "ID": "noncurrent-off",
        "Filter": {"Prefix": ""},
        "Status": "Disabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    s3.client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [*old, disabled]}
    )
    cfg = write_config(tmp_path, s3.endpoint, bucket)
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1  # was 0: "30 days", all PASS
    out = capsys.readouterr().out
    line = rows(out)[f"{bucket}/traces"]
    assert "FAIL" in line
    assert "versioning Enabled but no rule expires noncurrent versions" in line
    assert "(run logpush setup)" in line
    assert out.rstrip().endswith("5 passed, 4 failed")
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0  # setup fixes it, keeps the other rule
    assert rules_by_id(s3, bucket)["noncurrent-off"] == disabled
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0


def test_a_rule_keeping_the_newest_noncurrent_versions_does_not_count() -> None:
    # (moto drops NewerNoncurrentVersions from stored rules, so this is checked on the rule list)
    from pitchey_trace import logpush_config as lc

    d = lc.DatasetConfig("traces", "b", "traces", 30)
    rule = {"ID": "x", "Filter": {"Prefix": "traces/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    # an archive key has one noncurrent version: "keep the newest 1" keeps it for ever
    keeps_one = dict(rule, NoncurrentVersionExpiration={"NoncurrentDays": 1, "NewerNoncurrentVersions": 1})
    assert not lc._check_retention(d, [keeps_one], "Enabled").ok
    assert lc._check_retention(
        d, [dict(rule, NoncurrentVersionExpiration={"NoncurrentDays": 7})], "Enabled"
    ).ok
    assert lc._check_retention(d, [rule], None).ok
    assert not lc._check_retention(d, [rule], "Suspended").ok


# -- stores without versioning, keys that may not read it --------------------------------------------
class VersioningProxy:
    """HTTP proxy to moto answering every ``?versioning`` request with ``status`` / ``code``
    (R2: 501 NotImplemented; a key without s3:GetBucketVersioning: 403 AccessDenied)."""

    def __init__(self, target: str, status: int, code: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        upstream = (host, int(port))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "versioning" in self.path.partition("?")[2].split("&"):
                    err = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>{code}</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                conn = http.client.HTTPConnection(*upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for name, value in resp.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(name, value)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def r2_like(s3_endpoint: str) -> Iterator[VersioningProxy]:
    p = VersioningProxy(s3_endpoint, 501, "NotImplemented")
    yield p
    p.close()


@pytest.fixture
def versioning_denied(s3_endpoint: str) -> Iterator[VersioningProxy]:
    p = VersioningProxy(s3_endpoint, 403, "AccessDenied")
    yield p
    p.close()


def test_a_store_without_versioning_gets_expiration_only_and_passes(
    s3: S3, r2_like: VersioningProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    cfg = write_config(tmp_path, r2_like.url, bucket)
    assert main(["logpush", "setup", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("5 passed, 0 failed")
    assert all("NoncurrentVersionExpiration" not in r for r in rules_by_id(s3, bucket).values())
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0
    assert "30 days" in rows(capsys.readouterr().out)[f"{bucket}/traces"]


def test_a_key_that_may_not_read_versioning_fails_setup_and_verify_clearly(
    s3: S3, versioning_denied: VersioningProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.new_bucket()
    old = [
        {
            "ID": f"pitchey-trace-{n}",
            "Filter": {"Prefix": f"{n}/"},
            "Status": "Enabled",
            "Expiration": {"Days": d},
        }
        for n, d in STANDARD.items()
    ]
    s3.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": old})
    cfg = write_config(tmp_path, versioning_denied.url, bucket)
    assert main(["logpush", "setup", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "cannot read the bucket versioning: AccessDenied" in rows(out)[bucket]
    assert rules_by_id(s3, bucket) == {r["ID"]: r for r in old}  # nothing written on a guess
    assert main(["logpush", "verify", "--config", str(cfg)]) == 1
    line = rows(capsys.readouterr().out)[f"{bucket}/traces"]
    assert "FAIL" in line
    assert "the bucket versioning cannot be read (AccessDenied)" in line
    # a rule that expires noncurrent versions makes the versioning state irrelevant
    fixed = [dict(r, NoncurrentVersionExpiration={"NoncurrentDays": 1}) for r in old]
    s3.client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": fixed})
    assert main(["logpush", "verify", "--config", str(cfg)]) == 0
