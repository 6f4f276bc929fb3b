"""Concurrent S3 reads (``S3Source(concurrency=...)``) against moto's S3 server over real HTTP on
127.0.0.1: the same answers as one GET at a time on an archive of a few hundred objects, the
``max_spans`` bound with a bounded read-ahead, an object deleted between list and read, an
unreadable object, and failures in the worker threads."""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, ObjectInfo, S3Source
from tests.integration.exporters.servers import S3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N = 300
DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SEC = 1_000_000_000
THREAD_PREFIX = "pitchey-trace-archive-read"


def _stamp(t: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _key(dataset: str, i: int) -> str:
    # 40 objects a day, a minute apart; audit objects interleave with the traces ones
    t = DAY0 + (i // 40) * 86400 + (i % 40) * 60
    return f"{dataset}/{time.strftime('%Y%m%d', time.gmtime(t))}/{_stamp(t)}_{_stamp(t + 5)}_{i:08x}.log.gz"


def _span(i: int, j: int, trace: int, version: int) -> dict[str, Any]:
    start = (DAY0 + (i // 40) * 86400 + (i % 40) * 60) * SEC + j * 1000
    return {
        "type": "span",
        "schema_version": 1,
        "trace_id": f"{trace:032x}",
        "span_id": f"{trace:08x}{j:08x}",
        "parent_span_id": None if j == 0 else f"{trace:08x}{0:08x}",
        "name": f"op {j}",
        "kind": "server" if j == 0 else "internal",
        "service": "pitch-api",
        "start_time_unix_nano": start,
        "end_time_unix_nano": start + 2_000_000 + j,
        "status": "ok",
        "attributes": {"object": i, "version": version},
        "events": [],
        "links": [],
        "resource": {"service.name": "pitch-api"},
    }


def _body(i: int) -> bytes:
    """Object ``i``: 3 spans of trace i+1, and every 7th object repeats the spans of the trace
    before it with other attributes (the same span ids in two objects: which one is kept
    depends on the order objects are used in)."""
    spans = [_span(i, j, i + 1, 0) for j in range(3)]
    if i % 7 == 0 and i:
        spans += [_span(i - 1, j, i, 1) for j in range(3)]
    return gzip.compress(b"".join(json.dumps(s).encode() + b"\n" for s in spans), mtime=0)


def _audit(i: int) -> bytes:
    t = (DAY0 + (i // 40) * 86400 + (i % 40) * 60) * SEC
    rec = {"type": "audit", "time_unix_nano": t, "action": f"login {i}", "outcome": "ok"}
    return gzip.compress(json.dumps(rec).encode() + b"\n", mtime=0)


@pytest.fixture(scope="module")
def bucket(s3: S3) -> str:
    name = s3.new_bucket()

    def put(i: int) -> None:
        s3.client.put_object(Bucket=name, Key=_key("traces", i), Body=_body(i))
        if i % 10 == 0:
            s3.client.put_object(Bucket=name, Key=_key("audit", i), Body=_audit(i))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(N)))
    return name


class Counting(S3Source):
    """Counts reads and the most in flight at once; ``fail``: keys whose read raises that."""

    def __init__(self, *args: Any, fail: dict[str, BaseException] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fail = dict(fail or {})
        self.reads: list[str] = []
        self.threads: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def read(self, info: ObjectInfo) -> bytes:
        with self._lock:
            self.reads.append(info.key)
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if info.key in self.fail:
                raise self.fail[info.key]
            return super().read(info)
        finally:
            with self._lock:
                self.in_flight -= 1


def _state(archive: Archive) -> tuple[list[tuple[Any, Any]], dict[str, int], list[Any]]:
    """Everything the engine kept, in the order it kept it."""
    index = archive._index
    return list(index.spans.items()), dict(archive.read_stats), list(index.audits)


def _no_reader_threads() -> bool:
    deadline = time.monotonic() + 10
    while any(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_spans": 200},
        {"max_spans": 3},
        {"since": (DAY0 + 4 * 86400) * SEC},
        {"max_spans": 120, "since": (DAY0 + 3 * 86400) * SEC},
    ],
    ids=["all", "max_spans=200", "max_spans=3", "window", "max_spans+window"],
)
def test_concurrent_reads_give_what_one_at_a_time_gives(s3: S3, bucket: str, options: dict[str, Any]) -> None:
    since = options.get("since")
    results = []
    for concurrency in (1, 8):
        source = Counting(bucket, datasets=["traces", "audit"], client=s3.client, concurrency=concurrency)
        archive = Archive(source, max_spans=options.get("max_spans"))
        found = archive.search(limit=10_000, since=since)
        results.append((found, _state(archive), archive.audit(limit=10_000, since=since), source))
    (found1, state1, audit1, seq), (found8, state8, audit8, conc) = results
    assert found8 == found1
    assert state8 == state1  # the same spans (the same copy of each repeated one), in the same order
    assert audit8 == audit1
    assert found1  # (the case reads something)
    assert seq.most_in_flight == 1
    assert seq.threads == {threading.current_thread().name}  # concurrency 1: no worker threads
    assert conc.most_in_flight <= 8
    if "max_spans" not in options:
        assert sorted(conc.reads) == sorted(seq.reads)  # nothing read twice, nothing more
        assert conc.most_in_flight > 1
        assert all(t.startswith(THREAD_PREFIX) for t in conc.threads)
    assert _no_reader_threads()


def test_max_spans_reads_ahead_only_a_bounded_window(s3: S3, bucket: str) -> None:
    """Newest first: 20 objects of 3 spans fill a bound of 60; the reads ahead of need are at
    most the window's (8), never the 280 older objects."""
    source = Counting(bucket, datasets=["traces"], client=s3.client, concurrency=8)
    archive = Archive(source, max_spans=60)
    found = archive.search(limit=1000)
    assert len(archive._index.spans) <= 60
    stats = archive.read_stats
    assert stats["objects"] + stats["skipped_objects"] == N
    assert stats["objects"] <= 21
    assert len(source.reads) <= stats["objects"] + 8
    # the newest traces are the ones kept
    newest = {f"{i + 1:032x}" for i in range(N - 15, N)}
    assert newest <= {t["trace_id"] for t in found}
    # a refresh with nothing new reads nothing, and counts the skipped ones once
    before = len(source.reads)
    archive.refresh()
    archive.search(limit=1)
    assert len(source.reads) == before
    assert archive.read_stats["skipped_objects"] == stats["skipped_objects"]


def test_the_cache_directory_with_concurrent_reads(s3: S3, bucket: str, tmp_path: Path) -> None:
    first = Archive(S3Source(bucket, datasets=["traces"], client=s3.client, cache_dir=tmp_path))
    expected = first.search(limit=10_000)
    assert len(list(tmp_path.rglob("*.log.gz"))) == N  # every object kept, under its own name
    assert not list(tmp_path.rglob(".part-*"))  # no partial copy left behind
    # a second run reads the copies: no GET at all
    again = Counting(bucket, datasets=["traces"], client=s3.client, cache_dir=tmp_path)
    calls: list[str] = []
    again.client.meta.events.register("before-send.s3.GetObject", lambda **_: calls.append("get"))
    try:
        assert Archive(again).search(limit=10_000) == expected
    finally:
        again.client.meta.events.unregister("before-send.s3.GetObject")
    assert calls == []
    assert len(again.reads) == N


class DeletesAfterListing(S3Source):
    victims: tuple[str, ...] = ()

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        out = super().objects(dataset, since_ns)
        for key in self.victims:
            self.client.delete_object(Bucket=self.buckets[dataset], Key=key)
        self.victims = ()
        return out


def test_objects_deleted_between_list_and_read_are_skipped(s3: S3) -> None:
    name = s3.new_bucket()
    for i in range(40):
        s3.client.put_object(Bucket=name, Key=_key("traces", i), Body=_body(i))
    source = DeletesAfterListing(name, datasets=["traces"], client=s3.client, concurrency=8)
    source.victims = (_key("traces", 3), _key("traces", 4), _key("traces", 30))
    archive = Archive(source)
    found = {t["trace_id"] for t in archive.search(limit=100)}
    kept = set(range(40)) - {3, 4, 30}
    # (object 7 repeats trace 7, object 6's: 6 objects' traces come from the others)
    assert found == {f"{i + 1:032x}" for i in kept}
    assert archive.read_stats["objects"] == 37
    assert archive.read_stats["unreadable_objects"] == 0  # gone, not damaged


class _Refusing:
    """A client that answers GetObject for some keys with AccessDenied, the rest as ``inner``."""

    def __init__(self, inner: Any, refused: set[str]) -> None:
        self._inner = inner
        self.refused = refused

    def get_object(self, **kw: Any) -> Any:
        if kw["Key"] in self.refused:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
        return self._inner.get_object(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_unreadable_objects_are_counted(s3: S3, bucket: str) -> None:
    refused = {_key("traces", i) for i in (0, 150, 299)}
    fail = {_key("traces", 5): RuntimeError("a bug in a read"), _key("traces", 6): OSError("reset")}
    source = Counting(
        bucket, datasets=["traces"], client=_Refusing(s3.client, refused), concurrency=8, fail=fail
    )
    archive = Archive(source)
    found = {t["trace_id"] for t in archive.search(limit=10_000)}
    assert archive.read_stats["unreadable_objects"] == 5
    assert archive.read_stats["objects"] == N - 5
    assert f"{150 + 1:032x}" not in found
    assert f"{149 + 1:032x}" in found
    assert _no_reader_threads()


def test_every_read_failing_in_the_workers_neither_hangs_nor_raises(s3: S3, bucket: str) -> None:
    class Broken(S3Source):
        def read(self, info: ObjectInfo) -> bytes:
            time.sleep(0.001)
            raise ValueError("no")

    archive = Archive(Broken(bucket, datasets=["traces", "audit"], client=s3.client, concurrency=8))
    assert archive.search(limit=10) == []
    assert archive.read_stats["unreadable_objects"] == N + N // 10
    assert archive.read_stats["objects"] == 0
    assert _no_reader_threads()


def test_an_interrupt_in_a_worker_reaches_the_caller_and_the_next_query_reads_on(s3: S3, bucket: str) -> None:
    """A BaseException from a read (KeyboardInterrupt) ends the query as it would reading one
    at a time; nothing hangs and the next query reads what was left."""
    victim = _key("traces", 100)
    source = Counting(
        bucket, datasets=["traces"], client=s3.client, concurrency=8, fail={victim: KeyboardInterrupt()}
    )
    archive = Archive(source)
    with pytest.raises(KeyboardInterrupt):
        archive.search(limit=10)
    assert archive.read_stats["objects"] == 100  # the ones before it, in order
    source.fail.clear()
    assert len(archive.search(limit=10_000)) == N
    assert archive.read_stats["objects"] == N
    assert _no_reader_threads()
