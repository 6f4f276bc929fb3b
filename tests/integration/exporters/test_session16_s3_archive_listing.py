"""S3Source against moto's S3 server (real HTTP on 127.0.0.1): a dataset of more than 1,000
objects (list_objects_v2 pages), with and without a time window, and an object deleted (a
retention rule, a cleanup) between the listing and the read."""

from __future__ import annotations

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, ObjectInfo, S3Source
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration

N = 1105  # more than one page of list_objects_v2 (1,000 keys)
DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SEC = 1_000_000_000


def _stamp(t: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _key(i: int) -> str:
    # 50 objects a day from 2026-01-01: 23 date folders
    t = DAY0 + (i // 50) * 86400 + (i % 50) * 60
    return f"traces/{time.strftime('%Y%m%d', time.gmtime(t))}/{_stamp(t)}_{_stamp(t + 5)}_{i:08x}.log.gz"


def _record(i: int) -> dict[str, Any]:
    start = (DAY0 + (i // 50) * 86400 + (i % 50) * 60) * SEC
    return {
        "type": "span",
        "schema_version": 1,
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": "GET /pitches",
        "kind": "server",
        "service": "pitch-api",
        "environment": "test",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 2_000_000,
        "duration_ms": 2.0,
        "status": "ok",
        "category": "fast",
        "attributes": {"seq": i},
        "events": [],
        "links": [],
        "resource": {"service.name": "pitch-api"},
    }


@pytest.fixture(scope="module")
def many(s3_endpoint: str) -> tuple[S3, str]:
    s3 = S3(s3_endpoint)
    bucket = s3.new_bucket()

    def put(i: int) -> None:
        body = gzip.compress(json.dumps(_record(i)).encode() + b"\n", mtime=0)
        s3.client.put_object(Bucket=bucket, Key=_key(i), Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(N)))
    return s3, bucket


class DeletesAfterListing(S3Source):
    """Deletes ``victim`` from the bucket once the dataset was listed (the object is listed,
    then gone when it is read)."""

    victim: str = ""

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        out = super().objects(dataset, since_ns)
        if self.victim:
            self.client.delete_object(Bucket=self.buckets[dataset], Key=self.victim)
            self.victim = ""
        return out


def test_more_than_a_page_of_objects_is_listed_whole(many: tuple[S3, str]) -> None:
    s3, bucket = many
    source = S3Source(bucket, datasets=["traces"], client=s3.client)
    listed = source.objects("traces", None)
    assert len(listed) == N
    assert len({o.key for o in listed}) == N
    assert {o.key for o in listed} == {_key(i) for i in range(N)}
    # A window: listing starts after the day before it (StartAfter), over pages too.
    since = (DAY0 + 2 * 86400) * SEC  # 2026-01-03: from the 2026-01-02 folder on
    windowed = source.objects("traces", since)
    assert {o.key for o in windowed} == {_key(i) for i in range(50, N)}


def test_an_archive_over_more_than_a_page_of_objects(many: tuple[S3, str], tmp_path: Path) -> None:
    """Every listed object is known to the archive: with a span bound (newest first), the
    newest 40 are read and the 1,065 older ones, on the first page of the listing, skipped.
    (Bounded to stay fast: each object read costs ~5-15 ms against moto here.)"""
    s3, bucket = many
    archive = Archive(
        S3Source(bucket, datasets=["traces"], client=s3.client, cache_dir=tmp_path), max_spans=40
    )
    found = archive.search(limit=N)
    assert {t["trace_id"] for t in found} == {f"{i + 1:032x}" for i in range(N - 40, N)}
    assert archive.read_stats["objects"] == 40
    assert archive.read_stats["skipped_objects"] == N - 40
    assert archive.read_stats["unreadable_objects"] == 0
    assert archive.read_stats["unusable_records"] == 0


def test_an_object_deleted_between_list_and_read(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    for i in range(5):
        body = gzip.compress(json.dumps(_record(i)).encode() + b"\n", mtime=0)
        s3.client.put_object(Bucket=bucket, Key=_key(i), Body=body)
    source = DeletesAfterListing(bucket, datasets=["traces"], client=s3.client)
    source.victim = _key(2)
    archive = Archive(source)
    found = {t["trace_id"] for t in archive.search(limit=10)}
    assert found == {f"{i + 1:032x}" for i in (0, 1, 3, 4)}
    # gone, not damaged: passed over as a file deleted from an archive directory is
    assert archive.read_stats["unreadable_objects"] == 0
    assert archive.read_stats["objects"] == 4


def test_reading_a_deleted_object_says_it_is_gone(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    body = gzip.compress(json.dumps(_record(0)).encode() + b"\n", mtime=0)
    s3.client.put_object(Bucket=bucket, Key=_key(0), Body=body)
    source = S3Source(bucket, datasets=["traces"], client=s3.client, cache_dir=tmp_path)
    [info] = source.objects("traces", None)
    s3.client.delete_object(Bucket=bucket, Key=_key(0))
    with pytest.raises(FileNotFoundError, match=_key(0)):
        source.read(info)
    # (any other failure is not taken for a deleted object)
    with pytest.raises(Exception) as other:
        S3Source("pt-no-such-bucket-s16", datasets=["traces"], client=s3.client).read(info)
    assert not isinstance(other.value, FileNotFoundError)
