"""Session 17: datasets whose prefixes overlap (the same folder or prefix, or one prefix inside
another's) list each archived object once, from a local archive directory and from S3
(moto's server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, LocalSource, ObjectInfo, S3Source
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration

DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SEC = 1_000_000_000


def _stamp(t: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _name(i: int) -> str:
    t = DAY0 + i * 60
    return f"{time.strftime('%Y%m%d', time.gmtime(t))}/{_stamp(t)}_{_stamp(t + 5)}_{i:08x}.log.gz"


def _span_object(i: int) -> bytes:
    start = (DAY0 + i * 60) * SEC
    span = {
        "type": "span",
        "schema_version": 1,
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": f"GET /op/{i}",
        "kind": "server",
        "service": "pitch-api",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 2_000_000,
        "status": "ok",
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {"service.name": "pitch-api"},
    }
    return gzip.compress(json.dumps(span).encode() + b"\n", mtime=0)


def _audit_object(i: int) -> bytes:
    rec = {"type": "audit", "time_unix_nano": (DAY0 + i * 60) * SEC, "action": f"login {i}", "outcome": "ok"}
    return gzip.compress(json.dumps(rec).encode() + b"\n", mtime=0)


def listed(source: Any) -> list[tuple[str, str]]:
    """(dataset, key) of every object the source lists, over its datasets, as the engine asks."""
    return [(info.dataset, info.key) for d in source.datasets for info in source.objects(d, None)]


class CountingReads:
    """Notes every key read (from the engine's worker threads too)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def note(self, info: ObjectInfo) -> None:
        with self.lock:
            self.keys.append(info.key)


# -- a local archive directory ------------------------------------------------------------------
@pytest.fixture
def shared_folder(tmp_path: Path) -> Path:
    """``all/`` holds two span objects and one audit object (two datasets written to one
    folder); ``all/audit/`` (a folder inside it, not a day) one more audit object."""
    for i, body in ((0, _span_object(0)), (1, _span_object(1)), (2, _audit_object(2))):
        path = tmp_path / "all" / _name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    nested = tmp_path / "all" / "audit" / _name(3)
    nested.parent.mkdir(parents=True)
    nested.write_bytes(_audit_object(3))
    return tmp_path


class CountingLocal(LocalSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = CountingReads()

    def read(self, info: ObjectInfo) -> bytes:
        self.counter.note(info)
        return super().read(info)


def test_local_datasets_sharing_a_folder_list_each_file_once(shared_folder: Path) -> None:
    source = CountingLocal(
        shared_folder,
        prefixes={"traces": "all", "audit": "all/", "performance": "./all", "logs": "all/audit"},
    )
    got = listed(source)
    keys = Counter(key for _, key in got)
    assert sorted(keys.values()) == [1, 1, 1, 1]  # every file once
    assert len(keys) == 4
    # (the first dataset lists the shared folder; the folder inside it is a dataset's own)
    assert {d for d, k in got if not k.endswith(_name(3))} == {"traces"}
    assert [d for d, k in got if k.endswith(_name(3))] == ["logs"]
    archive = Archive(source)
    found = archive.search(limit=10)
    assert sorted(t["trace_id"] for t in found) == [f"{1:032x}", f"{2:032x}"]
    assert len(archive.audit(limit=10)) == 2
    assert sorted(Counter(source.counter.keys).values()) == [1, 1, 1, 1]
    assert archive.read_stats["objects"] == 4


def test_local_dataset_named_twice_is_listed_once(shared_folder: Path) -> None:
    source = LocalSource(shared_folder, prefixes={"traces": "all"}, datasets=["traces", "traces"])
    assert source.datasets == ("traces",)
    assert len(listed(source)) == 3


# -- S3 ---------------------------------------------------------------------------------------
class CountingS3(S3Source):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = CountingReads()
        self.lists: list[str] = []

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        self.lists.append(dataset)
        return super().objects(dataset, since_ns)

    def read(self, info: ObjectInfo) -> bytes:
        self.counter.note(info)
        return super().read(info)


def test_s3_nested_and_equal_prefixes_list_each_object_once(s3: S3) -> None:
    """One bucket: ``traces`` under ``p/``, ``audit`` under ``p/audit/`` (inside it),
    ``performance`` under ``p/`` too, ``logs`` at the bucket's root (around them all). Each
    object is listed once, by the dataset with the longest prefix that holds it (the same
    prefix: the first dataset), and read once, with reads in flight at once."""
    bucket = s3.new_bucket()
    objects = {
        f"p/{_name(0)}": _span_object(0),
        f"p/{_name(1)}": _span_object(1),
        f"p/audit/{_name(2)}": _audit_object(2),
        f"p/audit/{_name(3)}": _audit_object(3),
        _name(4): _span_object(4),
    }
    for key, body in objects.items():
        s3.client.put_object(Bucket=bucket, Key=key, Body=body)
    source = CountingS3(
        bucket,
        prefixes={"traces": "p", "audit": "/p/audit/", "performance": "p/", "logs": ""},
        datasets=["traces", "audit", "performance", "logs"],
        client=s3.client,
        concurrency=4,
    )
    got = listed(source)
    assert Counter(key for _, key in got) == Counter(list(objects))  # each key once, none missing
    owner = dict((key, dataset) for dataset, key in got)
    assert owner == {
        f"p/{_name(0)}": "traces",
        f"p/{_name(1)}": "traces",
        f"p/audit/{_name(2)}": "audit",
        f"p/audit/{_name(3)}": "audit",
        _name(4): "logs",
    }
    source.lists.clear()
    archive = Archive(source)
    found = archive.search(limit=10)
    assert sorted(t["trace_id"] for t in found) == [f"{i + 1:032x}" for i in (0, 1, 4)]
    assert len(archive.audit(limit=10)) == 2
    assert sorted(source.lists) == sorted(source.datasets)  # one listing per dataset
    assert Counter(source.counter.keys) == Counter({key: 1 for key in objects})
    assert archive.read_stats["objects"] == len(objects)


def test_s3_datasets_in_separate_buckets_do_not_hide_each_other(s3: S3) -> None:
    """The same prefix in two buckets is two places: both listed."""
    first, second = s3.new_bucket(), s3.new_bucket()
    s3.client.put_object(Bucket=first, Key=f"data/{_name(0)}", Body=_span_object(0))
    s3.client.put_object(Bucket=second, Key=f"data/{_name(1)}", Body=_audit_object(1))
    source = S3Source(
        buckets={"traces": first, "audit": second},
        prefixes={"traces": "data", "audit": "data"},
        datasets=["traces", "audit"],
        client=s3.client,
    )
    assert listed(source) == [("traces", f"data/{_name(0)}"), ("audit", f"data/{_name(1)}")]
