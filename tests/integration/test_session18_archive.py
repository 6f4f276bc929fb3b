"""Session 18 review of the archive exporters, against moto's S3 server over HTTP (through a
fault-injecting proxy) and real directories: upload order after an outage, bucket names
botocore can never send, and spool entries that are not regular files."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import LocalArchiveExporter, LogpushExporter
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.logpush_config import LogpushConfig, make_s3_client
from tests.integration.exporters import conftest as exporter_fixtures
from tests.integration.exporters.servers import S3, FaultProxy

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.4)
DEAD = "99999-deadbeef"  # a spool owner whose lock nobody holds: a process that died

# shared fixtures: moto's S3 server over HTTP (AWS credentials for it in the environment), a
# fault-injecting proxy in front of it, a client to it
s3_endpoint = exporter_fixtures.s3_endpoint
proxy = exporter_fixtures.proxy
s3 = exporter_fixtures.s3


def rec(seq: int) -> dict[str, Any]:
    return {"type": "span", "trace_id": "t", "span_id": f"{seq:016x}", "name": "op", "seq": seq}


class OrderedClient:
    """A real boto3 client (to moto through the proxy) that records the keys it PUT, in order."""

    def __init__(self, endpoint: str) -> None:
        self.real = make_s3_client(
            endpoint_url=endpoint, region="us-east-1", connect_timeout_s=1.0, read_timeout_s=3.0
        )
        self.keys: list[str] = []

    def put_object(self, **kw: Any) -> Any:
        answer = self.real.put_object(**kw)
        self.keys.append(kw["Key"])
        return answer


def test_after_an_outage_the_backlog_goes_out_oldest_first_without_a_flush(
    s3: S3, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    client = OrderedClient(proxy.url)
    exp = LogpushExporter(bucket, client=client, spool_dir=tmp_path, retry=FAST, max_batch_records=10)
    try:
        proxy.set_mode("down")
        for i in range(0, 200, 10):  # 20 batches close while the storage is unreachable
            exp.export([rec(j) for j in range(i, i + 10)])
            time.sleep(0.03)
        time.sleep(0.5)  # the first batches have failed a few times by now
        assert _stats.get("logpush.retried") >= 2
        proxy.set_mode("up")
        deadline = time.monotonic() + 20
        while len(client.keys) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        firsts = [s3.records(bucket, k)[0]["seq"] for k in client.keys]
        # was [70, 80, ..., 190, 0, 10, ..., 60]: batches that had failed waited out their
        # own backoff behind the ones never tried. Now, once the first retry finds the
        # storage back (whichever batch's backoff ended first), the rest go oldest first.
        assert firsts[1:] == sorted(firsts[1:])
        assert sorted(firsts) == list(range(0, 200, 10))
        assert sorted(r["seq"] for r in s3.all_records(bucket)) == list(range(200))
    finally:
        exp.shutdown(2)


@pytest.mark.parametrize("name", ["bad bucket", "logs/2026", "b" * 256, "bucket\n"])
def test_a_bucket_name_botocore_never_sends_is_a_configuration_error(
    s3_endpoint: str, tmp_path: Path, name: str
) -> None:
    # (before: accepted, then every upload failed with ParamValidationError, retried forever)
    with pytest.raises(ConfigurationError, match="bucket"):
        LogpushExporter(name, endpoint_url=s3_endpoint, spool_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="bucket"):
        LogpushExporter("ok-bucket", buckets={"audit": name}, endpoint_url=s3_endpoint, spool_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="bucket"):
        LogpushConfig.from_mapping({"bucket": name})
    assert not list(tmp_path.iterdir())  # nothing was started


def test_bucket_names_botocore_accepts_still_work(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    arn = "arn:aws:s3:us-east-1:123456789012:accesspoint/my-point"
    exp = LogpushExporter(
        bucket, buckets={"audit": arn}, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=tmp_path
    )
    try:
        exp.export([rec(1)])
        assert exp.force_flush(10)
        assert [r["seq"] for r in s3.all_records(bucket)] == [1]
    finally:
        exp.shutdown(2)
    assert LogpushConfig.from_mapping({"bucket": "Legacy_Bucket.Name"}).buckets == ["Legacy_Bucket.Name"]


def _spool_name(seq: int, stamp: str, state: str = "ready") -> str:
    return f"{DEAD}.{seq:010d}.traces.{stamp}.{state}"


def _archived(root: Path) -> dict[str, list[Any]]:
    return {
        str(p.relative_to(root)): [
            json.loads(line)["seq"] for line in gzip.decompress(p.read_bytes()).splitlines()
        ]
        for p in sorted(root.rglob("*.log.gz"))
    }


def test_a_directory_or_fifo_named_like_a_spool_file_is_skipped(tmp_path: Path) -> None:
    spool, root = tmp_path / "spool", tmp_path / "archive"
    spool.mkdir()
    (spool / _spool_name(1, "20261130T053700Z_20261130T053730Z_0123456789abcdef")).write_bytes(b'{"seq":1}\n')
    (spool / _spool_name(2, "20261130T053700Z_20261130T053730Z_1123456789abcdef")).mkdir()
    fifo = spool / _spool_name(3, "20261130T053700Z_20261130T053730Z_2123456789abcdef")
    os.mkfifo(fifo)
    (spool / _spool_name(4, "20261130T053800Z", "open")).write_bytes(b'{"seq":4}\n')
    exp = LocalArchiveExporter(root, spool_dir=spool, retry=FAST)
    try:
        # before: the directory failed to read forever (force_flush never True again) and the
        # FIFO blocked the uploader thread in open() for good
        assert exp.force_flush(5)
        assert sorted(s for seqs in _archived(root).values() for s in seqs) == [1, 4]
        assert _stats.get("local_archive.spool_skipped") == 2
        assert fifo.exists()  # not ours to delete
    finally:
        # (unblock a reader stuck in open() of the FIFO, if any)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        exp.shutdown(2)


def test_a_spool_file_with_a_malformed_object_name_gets_a_logpush_name(tmp_path: Path) -> None:
    spool, root = tmp_path / "spool", tmp_path / "archive"
    spool.mkdir()
    good = "20261130T053700Z_20261130T053730Z_0123456789abcdef"
    (spool / _spool_name(1, good)).write_bytes(b'{"seq":1}\n')
    for seq, stamp in ((2, "T"), (3, "0_0"), (4, "20261130T053700Z_ab")):
        (spool / _spool_name(seq, stamp)).write_bytes(b'{"seq":%d}\n' % seq)
    exp = LocalArchiveExporter(root, spool_dir=spool, retry=FAST)
    try:
        assert exp.force_flush(5)
    finally:
        exp.shutdown(2)
    got = _archived(root)
    # before: traces/T/T.log.gz, traces/0_0/0_0.log.gz ... outside the date folders
    assert got[f"traces/20261130/{good}.log.gz"] == [1]
    assert sorted(s for seqs in got.values() for s in seqs) == [1, 2, 3, 4]
    layout = re.compile(r"^traces/(\d{8})/\1T\d{6}Z_\d{8}T\d{6}Z_[0-9a-f]{16}\.log\.gz$")
    assert all(layout.match(k) for k in got), sorted(got)
