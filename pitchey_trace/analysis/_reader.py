"""Where archived records come from: a local archive directory or S3 / R2 buckets.

Both hold what the archive exporters write: ``{prefix}/{YYYYMMDD}/{opened}_{closed}_{unique}.log.gz``
(gzip NDJSON, one gzip member per written batch). A source lists those objects with the times
from their names, so a time-bounded query can skip objects without reading them, and reads one
object's bytes. :func:`decode_object` turns the bytes into records, keeping everything that can
be read from a damaged object (a torn last line, a truncated gzip member, a bad line).

A source with a ``concurrency`` attribute above 1 (:class:`S3Source`: 8 by default) has that
many reads in flight at once: the engine calls its ``read`` from worker threads, so its
``read`` must be safe to call from several threads (a boto3 client is; a boto3 session is not).
"""

from __future__ import annotations

import calendar
import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pitchey_trace import _json
from pitchey_trace.exceptions import ArchiveUnavailable

__all__ = [
    "DATASETS",
    "LocalSource",
    "MultiSource",
    "ObjectInfo",
    "S3Source",
    "Source",
    "decode_object",
    "key_times",
]

#: The datasets a source reads by default (what the archive exporters write by default).
DATASETS = ("traces", "audit", "performance", "logs")

#: Reads an S3 source has in flight at once by default, and the most it takes.
S3_CONCURRENCY = 8
MAX_CONCURRENCY = 64

_KEY = re.compile(r"(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)_[0-9A-Za-z]+\.log\.gz")


@dataclass(frozen=True)
class ObjectInfo:
    """One archived object: where it is and the batch times its name gives (None if unnamed)."""

    dataset: str
    key: str
    size: int
    version: str  # changes when the object's bytes may have changed (mtime, ETag)
    opened_ns: int | None
    closed_ns: int | None


class Source(Protocol):
    """What :class:`~pitchey_trace.analysis.Archive` reads from."""

    def describe(self) -> str:
        """A short human-readable name (for messages)."""

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        """The dataset's objects; may leave out objects closed before ``since_ns``."""

    def read(self, info: ObjectInfo) -> bytes:
        """The object's stored bytes (FileNotFoundError: deleted since it was listed).

        A source may also have ``concurrency`` (an int): how many reads the engine may have in
        flight at once, from worker threads. Without it (or 1), reads are one at a time."""


def _compact_ns(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ")) * 1_000_000_000


def key_times(name: str) -> tuple[int | None, int | None]:
    """``(opened_ns, closed_ns)`` from an object's file name, ``(None, None)`` if it has none."""
    m = _KEY.fullmatch(name)
    if not m:
        return None, None
    try:
        # Names have whole seconds: the batch closed before the end of its closing second.
        return _compact_ns(m.group(1)), _compact_ns(m.group(2)) + 999_999_999
    except ValueError:
        return None, None


def _prefixes(prefixes: Mapping[str, str] | None, datasets: Iterable[str]) -> dict[str, str]:
    given = dict(prefixes or {})
    for k, v in given.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("prefixes must map dataset names to str prefixes")
    return {d: given.get(d, d).strip("/") for d in datasets}


def _datasets(datasets: Iterable[str] | None) -> tuple[str, ...]:
    if datasets is None:
        return DATASETS
    if isinstance(datasets, str):
        raise TypeError("datasets must be a list of names, not one str")
    out = tuple(datasets)
    if not out or not all(isinstance(d, str) and d for d in out):
        raise TypeError("datasets must be a non-empty list of names")
    return tuple(dict.fromkeys(out))  # (a name given twice is listed once)


class LocalSource:
    """A local archive directory (what :class:`~pitchey_trace.exporters.LocalArchiveExporter` writes).

    Args:
        root: the archive directory.
        prefixes: folder per dataset when the exporter was given other ``prefixes``.
        datasets: the datasets to read (default: traces, audit, performance, logs).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        prefixes: Mapping[str, str] | None = None,
        datasets: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise TypeError("root must be a non-empty path")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"archive directory not found: {self.root}")
        self.datasets = _datasets(datasets)
        self.prefixes = _prefixes(prefixes, self.datasets)

    def describe(self) -> str:
        """The directory."""
        return str(self.root)

    def _folder(self, dataset: str) -> Path:
        prefix = self.prefixes.get(dataset, dataset)
        return self.root / prefix if prefix else self.root

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        """Every ``*.log.gz`` under the dataset's folder (date folders before ``since_ns``
        skipped). A folder that is also an earlier dataset's (the same prefix, or a path that
        resolves to the same folder) was listed under that one: nothing here."""
        base = self._folder(dataset)
        try:
            # The archive itself must still be there: removed (or replaced by a file, or made
            # unreadable) since the Archive was made, it is unavailable, not empty.
            os.listdir(self.root)
        except OSError as exc:
            raise ArchiveUnavailable(
                f"cannot list archive directory {self.root}: {exc.strerror or exc}"
            ) from exc
        if not base.is_dir():  # (a dataset the exporter has not written yet)
            return []
        real = os.path.realpath(base)
        for other in self.datasets:
            if other == dataset:
                break
            if os.path.realpath(self._folder(other)) == real:
                return []  # (its objects are listed under ``other``)
        first_day = time.strftime("%Y%m%d", time.gmtime(since_ns // 10**9 - 86400)) if since_ns else ""
        out: list[ObjectInfo] = []
        try:
            days = sorted(os.listdir(base))
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot list {base}: {exc.strerror or exc}") from exc
        for day in days:
            folder = base / day
            if not (len(day) == 8 and day.isdigit() and day >= first_day) or not folder.is_dir():
                continue
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:  # (removed since it was listed: a cleanup job)
                continue
            except OSError as exc:
                raise ArchiveUnavailable(f"cannot list {folder}: {exc.strerror or exc}") from exc
            for entry in entries:
                if not entry.name.endswith(".log.gz") or not entry.is_file():
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # (deleted since it was listed: not in the archive now)
                    continue
                opened, closed = key_times(entry.name)
                out.append(
                    ObjectInfo(
                        dataset, entry.path, st.st_size, f"{st.st_mtime_ns}:{st.st_size}", opened, closed
                    )
                )
        return out

    def read(self, info: ObjectInfo) -> bytes:
        """The file's bytes. PermissionError for a file that is (or is in) a symbolic link to
        somewhere outside the archive directory and the dataset's folder: the engine skips it
        and counts it in ``read_stats["unreadable_objects"]``."""
        real = os.path.realpath(info.key)
        if not any(_inside(real, os.path.realpath(base)) for base in (self.root, self._folder(info.dataset))):
            # (whoever can write into the archive must not make the server read other files)
            raise PermissionError(f"{info.key} links outside the archive directory")
        return Path(real).read_bytes()

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is in real path ``folder`` (at any depth)."""
    try:
        return os.path.commonpath((path, folder)) == folder
    except ValueError:  # (one relative, one absolute: never, as both are real paths)
        return False


class S3Source:
    """S3 or Cloudflare R2 buckets written by :class:`~pitchey_trace.exporters.LogpushExporter`.

    Args:
        bucket: the bucket of every dataset (or give ``buckets``).
        buckets: bucket per dataset, for datasets with their own bucket.
        prefixes: key prefix per dataset (default: the dataset name).
        datasets: the datasets to read (default: traces, audit, performance, logs).
        client: a boto3 S3 client; default: one made from ``endpoint_url``/``region``/``profile``
            (credentials from boto3's usual chain).
        cache_dir: keep a copy of each object read here, so later runs read it from disk
            (objects are immutable once written; a copy is used only if its size matches).
        concurrency: how many objects are downloaded at once (default 8, 1 to 64; 1 reads one
            at a time). Never more than the connection pool of a ``client`` given (botocore's
            ``max_pool_connections``, 10 by default); a client made here gets as many as
            ``concurrency``. Objects are
            still used in the same order, and with ``max_spans`` at most this many are
            downloaded ahead of need.

    ``S3Source.from_config(path_or_config)`` takes buckets, prefixes and endpoint from the
    logpush configuration file that ``pitchey-trace logpush setup`` uses.
    """

    def __init__(
        self,
        bucket: str | None = None,
        *,
        buckets: Mapping[str, str] | None = None,
        prefixes: Mapping[str, str] | None = None,
        datasets: Iterable[str] | None = None,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        concurrency: int = S3_CONCURRENCY,
    ) -> None:
        _check_concurrency(concurrency)
        per = dict(buckets or {})
        wanted = _datasets(datasets)
        if datasets is None and "logs" not in per and not bucket:
            # (buckets= for the three datasets of old: the logs, shipped only when asked, are
            # read when they have a bucket)
            wanted = tuple(d for d in wanted if d != "logs")
        self.datasets = wanted
        self.prefixes = _prefixes(prefixes, self.datasets)
        self.buckets: dict[str, str] = {}
        for d in self.datasets:
            b = per.get(d, bucket)
            if not isinstance(b, str) or not b:
                raise TypeError(f"no bucket for dataset {d!r}: give bucket= or buckets={{{d!r}: ...}}")
            self.buckets[d] = b
        if client is None:
            from pitchey_trace.logpush_config import make_s3_client

            client = make_s3_client(
                endpoint_url=endpoint_url,
                region=region,
                profile=profile,
                max_attempts=3,
                max_pool_connections=max(10, concurrency),
            )
        self.client = client
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        # (a client's calls are thread-safe; more reads than its pooled connections would open
        # and discard a connection per extra read)
        pool = getattr(getattr(getattr(client, "meta", None), "config", None), "max_pool_connections", None)
        if isinstance(pool, int) and not isinstance(pool, bool) and pool >= 1:
            concurrency = min(concurrency, pool)
        #: Reads in flight at once (see the class's ``concurrency``).
        self.concurrency = concurrency

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        client: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
        concurrency: int = S3_CONCURRENCY,
    ) -> S3Source:
        """From a logpush configuration: a ``LogpushConfig`` or the path of its file."""
        from pitchey_trace import logpush_config as lc

        cfg = config if isinstance(config, lc.LogpushConfig) else lc.load_config(config)
        return cls(
            buckets={n: d.bucket for n, d in cfg.datasets.items()},
            prefixes={n: d.prefix for n, d in cfg.datasets.items()},
            datasets=list(cfg.datasets),
            client=client
            if client is not None
            else lc.client_for(cfg, max_pool_connections=max(10, concurrency)),
            cache_dir=cache_dir,
            concurrency=concurrency,
        )

    def describe(self) -> str:
        """``s3://bucket/prefix`` of each dataset."""
        return ", ".join(f"s3://{self.buckets[d]}/{self.prefixes[d]}" for d in self.datasets)

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        """The dataset's objects; listing starts at the day before ``since_ns`` (keys sort by day)."""
        bucket, prefix = self.buckets.get(dataset), self.prefixes.get(dataset, dataset)
        if bucket is None:
            return []
        base = f"{prefix}/" if prefix else ""
        claimed = self._claimed(dataset, bucket, base)
        if claimed is None:
            return []  # (an earlier dataset has the same bucket and prefix: listed under it)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": base}
        if since_ns:
            kwargs["StartAfter"] = base + time.strftime("%Y%m%d", time.gmtime(since_ns // 10**9 - 86400))
        out: list[ObjectInfo] = []
        try:
            pages = list(self.client.get_paginator("list_objects_v2").paginate(**kwargs))
        except Exception as exc:  # botocore's ClientError / BotoCoreError, and whatever a client raises
            raise ArchiveUnavailable(f"cannot list s3://{bucket}/{base}: {exc}") from exc
        for page in pages:
            for obj in page.get("Contents") or ():
                key = obj["Key"]
                if not key.endswith(".log.gz") or (claimed and key.startswith(claimed)):
                    continue
                opened, closed = key_times(key.rpartition("/")[2])
                version = f"{obj.get('ETag', '')}:{obj.get('Size', 0)}"
                out.append(ObjectInfo(dataset, key, int(obj.get("Size", 0)), version, opened, closed))
        return out

    def _claimed(self, dataset: str, bucket: str, base: str) -> tuple[str, ...] | None:
        """The key prefixes under ``base`` that other datasets of ``bucket`` list (an object
        is listed once, under the dataset with the longest prefix that holds it), or None when
        an earlier dataset has the same prefix (it lists them all)."""
        claimed: list[str] = []
        earlier = True
        for other in self.datasets:
            if other == dataset:
                earlier = False
                continue
            if self.buckets.get(other) != bucket:
                continue
            prefix = self.prefixes.get(other, other)
            other_base = f"{prefix}/" if prefix else ""
            if other_base == base:
                if earlier:
                    return None
            elif other_base.startswith(base):
                claimed.append(other_base)
        return tuple(claimed)

    def _cache_path(self, info: ObjectInfo) -> Path | None:
        if self.cache_dir is None:
            return None
        parts = [p for p in info.key.split("/") if p not in ("", ".", "..")]
        return self.cache_dir.joinpath(self.buckets[info.dataset], *parts)

    def read(self, info: ObjectInfo) -> bytes:
        """The object's bytes: from the cache directory when it has them, else from the bucket.
        FileNotFoundError when the object is gone (deleted since it was listed)."""
        path = self._cache_path(info)
        if path is not None:
            try:
                cached = path.read_bytes()
                if len(cached) == info.size:
                    return cached
            except OSError:
                pass
        try:
            body = self.client.get_object(Bucket=self.buckets[info.dataset], Key=info.key)["Body"]
        except Exception as exc:
            if _no_such_key(exc):  # deleted since it was listed (retention, a cleanup job)
                raise FileNotFoundError(f"s3://{self.buckets[info.dataset]}/{info.key}") from exc
            raise
        try:
            data: bytes = body.read()
        finally:
            body.close()
        if path is not None:
            try:  # write-then-rename: a crash never leaves a short copy under the final name
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except OSError:
                pass  # the cache is an optimisation only
        return data

    def __repr__(self) -> str:
        return f"S3Source({self.describe()!r})"


def _check_concurrency(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be an int from 1 to {MAX_CONCURRENCY}, got {value!r}")


def _no_such_key(exc: BaseException) -> bool:
    """Whether a client's error says the object does not exist (botocore's ``ClientError``
    with code ``NoSuchKey``; ``404`` / ``NotFound`` from stores that answer a GET so)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return False
    error = response.get("Error")
    code = error.get("Code") if isinstance(error, Mapping) else None
    return code in ("NoSuchKey", "404", "NotFound")


class MultiSource:
    """Several sources read as one archive: e.g. the archive directories of two services whose
    traces cross, or a bucket and a local directory. A span found in two of them counts once."""

    def __init__(self, sources: Iterable[Source]) -> None:
        self.sources = list(sources)
        if not self.sources or not all(hasattr(s, "objects") and hasattr(s, "read") for s in self.sources):
            raise TypeError("MultiSource needs one or more source objects")
        names: list[str] = []
        for src in self.sources:
            names += [d for d in getattr(src, "datasets", DATASETS) if d not in names]
        self.datasets = tuple(names)
        #: Reads in flight at once: the most any of the sources takes. Each source still gets
        #: no more at once than its own ``concurrency`` (one for a source that says nothing):
        #: the reads beyond that wait for their turn in :meth:`read`.
        self.concurrency = max(_concurrency(s) for s in self.sources)
        self._gates = [threading.BoundedSemaphore(_concurrency(s)) for s in self.sources]

    def describe(self) -> str:
        """Each source's description."""
        return " + ".join(s.describe() for s in self.sources)

    def objects(self, dataset: str, since_ns: int | None) -> list[ObjectInfo]:
        """Every source's objects of ``dataset``; keys carry the source's position."""
        out: list[ObjectInfo] = []
        for i, src in enumerate(self.sources):
            if dataset not in getattr(src, "datasets", DATASETS):
                continue
            out += [
                ObjectInfo(o.dataset, f"{i}:{o.key}", o.size, o.version, o.opened_ns, o.closed_ns)
                for o in src.objects(dataset, since_ns)
            ]
        return out

    def read(self, info: ObjectInfo) -> bytes:
        """The object's bytes, from the source it came from."""
        i, _, key = info.key.partition(":")
        inner = ObjectInfo(info.dataset, key, info.size, info.version, info.opened_ns, info.closed_ns)
        n = int(i)
        with self._gates[n]:
            return self.sources[n].read(inner)

    def __repr__(self) -> str:
        return f"MultiSource({self.sources!r})"


def _concurrency(source: Any) -> int:
    """How many reads of ``source`` may be in flight at once (1 unless it says more)."""
    value = getattr(source, "concurrency", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return 1
    return min(value, MAX_CONCURRENCY)


# Decompressed bytes handled at a time: an object is decoded as it is decompressed, so the
# whole decompressed text (and its list of lines) is never held beside the records (a 1 GB
# object of 10,000 spans with 100 kB values peaked at 2.9 GB, now about its records' size).
_CHUNK = 1 << 20
#: The longest line read, in decompressed bytes (far beyond what the sanitizer's limits let a
#: record reach): a longer one counts as a bad line and is passed over as it is decompressed, so
#: a small damaged or hostile object (a gzip bomb of one line) cannot take the server's memory.
MAX_LINE_BYTES = 64 << 20


def record_weight(line: bytes) -> int:
    """About the memory, in bytes, that the record decoded from ``line`` takes: its length plus
    56 per item and container (a Python object and its reference), counted by the separators
    and opening brackets (in strings too: an overestimate). One pass over the line, and it
    follows what a line of many tiny items (``[{},{},...]``: about 24 bytes of memory per byte
    of line) costs, which the length alone would not."""
    return len(line) + 56 * (len(line) - len(line.translate(None, b",:{[")))


def decode_object(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records in an archived object and the number of lines that could not be read.

    A damaged gzip stream counts as one bad line; a torn last line (a crash mid-write) too.
    Every gzip member is read (one per written batch), and whatever a damaged or truncated
    member gave before the damage is kept.
    """
    records: list[dict[str, Any]] = []
    bad = decode_into(data, lambda rec, _weight: records.append(rec))
    return records, bad


def decode_into(data: bytes, emit: Callable[[dict[str, Any], int], None], *, weigh: bool = False) -> int:
    """:func:`decode_object`, handing each record to ``emit`` as it is decoded, with its
    :func:`record_weight` (0 without ``weigh``), so a caller can bound what it keeps before the
    whole object is decoded. Returns the number of lines that could not be read."""
    loads = _json.loads
    bad = 0
    pieces: list[bytes] = []  # the line being read, in pieces (a line may span many chunks)
    held = 0  # bytes in pieces
    too_long = False  # the line being read is longer than MAX_LINE_BYTES: passed over

    def line(text: bytes) -> None:
        nonlocal bad
        if not text.strip():
            return
        try:
            rec = loads(text)
        except (ValueError, RecursionError):  # (the stdlib's json, without orjson: deep nesting)
            bad += 1
            return
        if isinstance(rec, dict):
            emit(rec, record_weight(text) if weigh else 0)
        else:
            bad += 1

    def hold(piece: bytes) -> None:
        nonlocal held, too_long
        if too_long or not piece:
            return
        held += len(piece)
        if held > MAX_LINE_BYTES:
            pieces.clear()
            held, too_long = 0, True
        else:
            pieces.append(piece)

    def end_line() -> None:
        nonlocal held, too_long, bad
        if too_long:
            bad += 1
        else:
            line(b"".join(pieces))
        pieces.clear()
        held, too_long = 0, False

    def take(chunk: bytes) -> None:
        nonlocal bad
        nl = chunk.find(b"\n")
        if nl < 0:
            hold(chunk)
            return
        hold(chunk[:nl])
        end_line()
        lines = chunk[nl + 1 :].split(b"\n")
        last = lines.pop()
        for text in lines:
            if len(text) > MAX_LINE_BYTES:  # (only with a chunk longer than the limit)
                bad += 1
            else:
                line(text)
        hold(last)

    damaged = False
    rest = data
    while rest and not damaged:
        d = zlib.decompressobj(31)
        given = False  # whether this member gave anything
        feed = rest
        try:
            while not d.eof:
                out = d.decompress(feed, _CHUNK)
                feed = d.unconsumed_tail
                if out:
                    given = True
                    take(out)
                elif not feed:
                    break  # (all input used, no more output: a truncated member)
        except zlib.error:
            damaged = True
            if given:  # the line the damage cut is the one bad line counted for it
                pieces.clear()
                held, too_long = 0, False
            break
        if not d.eof:  # a truncated member: what it gave is kept
            take(d.flush())
            damaged = True
        rest = d.unused_data
    if pieces or too_long:
        end_line()
    return bad + int(damaged)
