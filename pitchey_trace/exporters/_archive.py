"""The batching engine shared by :class:`LogpushExporter` (S3/R2) and
:class:`LocalArchiveExporter` (a directory): Logpush-style gzip NDJSON objects per dataset.

Flow (see ``docs/exporters.md`` for the guarantees):

* ``export()`` (the exporter's worker thread) encodes each record once and appends it to the
  open batch of its dataset - with a spool directory, straight into the batch's spool file
  with one ``write()`` per call, so a record handed to the exporter survives a hard kill of
  the process (``fsync`` at least every ``fsync_interval_s`` covers power loss too);
* a batch closes on the first limit hit (``max_batch_bytes`` uncompressed, ``max_batch_records``,
  ``max_interval_s`` since its first record) or on flush/shutdown; closing fixes its object name
  ``{prefix}/{YYYYMMDD}/{start}_{end}_{unique}.log.gz``;
* one background thread per exporter closes batches on time, fsyncs, compresses each closed
  batch's spool file once into the exact gzip body to upload (written to a temporary file,
  fsynced, renamed over the raw ``.ready`` file: a crash leaves one or the other, both valid),
  and uploads closed batches oldest first, retrying each with exponential backoff and jitter
  until it succeeds; a batch's file is deleted only after its upload is confirmed;
* the spool (or, without a spool directory, the memory buffer) is capped at
  ``spool_max_bytes`` (closed batches count by their compressed size once compressed): when
  full, the oldest closed batches are dropped first (counted under ``dropped.spool_cap`` and
  logged).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pitchey_trace import _stats
from pitchey_trace._batch import _Thread
from pitchey_trace._context import CURRENT
from pitchey_trace._json import _default, dumps, lenient_dumps
from pitchey_trace._span import SUPPRESSED
from pitchey_trace._validate import compresslevel as valid_compresslevel
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import finite, positive_int, str_map
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters._http import RetryPolicy, checked_retry, warn_limited
from pitchey_trace.exporters._spool import SpoolDir, new_key_name, safe_dataset
from pitchey_trace.logpush_config import checked_prefix
from pitchey_trace.records import Record, dataset_of

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without the extra
    _orjson = None  # type: ignore[assignment]

logger = logging.getLogger("pitchey_trace")

__all__ = ["ArchiveExporter", "Store", "encode_line", "gzip_ndjson"]

DEFAULT_MAX_BATCH_BYTES = 5_000_000
DEFAULT_MAX_BATCH_RECORDS = 100_000
DEFAULT_MAX_INTERVAL_S = 30.0
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
DEFAULT_FSYNC_INTERVAL_S = 1.0
DEFAULT_COMPRESSLEVEL = 6

# A closed batch's ``.ready`` file holds either the raw NDJSON lines (before compression, or
# left by an older version) or the gzip body to upload: JSON lines never start with the gzip
# magic, so the first two bytes tell them apart (SpoolDir only adopts ``.open``/``.ready``).
_GZIP_MAGIC = b"\x1f\x8b"
# Where a batch is compressed before being renamed over its ``.ready`` file (``.open`` when
# that rename failed): a hidden name SpoolDir never adopts; one left by a dead owner is deleted
# (``_sweep_temp``).
_TMP_SUFFIX = ".gz.tmp"
_TMP_FILE = re.compile(
    r"^\.(?P<owner>\d+-[0-9a-f]+)\.\d{10}\.[A-Za-z0-9_-]+\.[0-9TZ_a-f]+\.(?:open|ready)\.gz\.tmp$"
)

# Bumped each time an exporter of this process gives its spool up: the running exporters look
# for files to take over at their next wake (at most 5 s) rather than at their periodic look.
_releases = 0
_releases_lock = threading.Lock()


def _note_release() -> None:
    global _releases
    with _releases_lock:
        _releases += 1


if _orjson is not None:
    _opt = _orjson.OPT_NON_STR_KEYS | _orjson.OPT_APPEND_NEWLINE
    _odumps = _orjson.dumps

    def encode_line(record: Any) -> bytes:
        """One record as a JSON line (newline included)."""
        try:
            return _odumps(record, default=_default, option=_opt)
        except TypeError:  # an int beyond 64 bits, a lone surrogate: the lenient encoder
            return lenient_dumps(record) + b"\n"

else:  # pragma: no cover

    def encode_line(record: Any) -> bytes:
        """One record as a JSON line (newline included)."""
        return dumps(record) + b"\n"


def gzip_ndjson(lines: Iterable[bytes], compresslevel: int = DEFAULT_COMPRESSLEVEL) -> bytes:
    """One gzip member of the joined lines (deterministic: no timestamp in the header)."""
    return gzip.compress(b"".join(lines), compresslevel, mtime=0)


def clean_lines(data: bytes) -> tuple[bytes, int, int]:
    """Keep the complete, valid JSON lines of recovered spool data: (data, kept, invalid)."""
    kept: list[bytes] = []
    invalid = 0
    lines = data.split(b"\n")
    tail = lines.pop()  # text after the last newline: a torn write
    if tail.strip():
        invalid += 1
    loads = _orjson.loads if _orjson is not None else json.loads
    for line in lines:
        if not line.strip():
            continue
        try:
            loads(line)
        except ValueError:
            invalid += 1
            continue
        kept.append(line + b"\n")
    return b"".join(kept), len(kept), invalid


def gzip_records(data: bytes) -> tuple[int, bool]:
    """(lines, intact) of a gzip body read back from the spool: intact when it decompresses
    whole (CRC and length checked); else the complete lines of its readable start."""
    try:
        return gzip.decompress(data).count(b"\n"), True
    except (OSError, EOFError, zlib.error):
        pass
    d = zlib.decompressobj(wbits=31)
    lines = 0
    try:
        for start in range(0, len(data), 65536):
            lines += d.decompress(data[start : start + 65536]).count(b"\n")
    except zlib.error:
        pass
    return lines, False


def spool_records(data: bytes) -> int:
    """Records a closed batch's spool file holds (raw NDJSON or gzip body)."""
    if data[:2] == _GZIP_MAGIC:
        return gzip_records(data)[0]
    return clean_lines(data)[1]


class Store(Protocol):
    """Where closed batches go: an S3 bucket, a directory..."""

    def put(self, dataset: str, key: str, body: bytes) -> None:
        """Store ``body`` under ``key``; raise on failure (the batch is retried)."""
        ...

    def reset(self) -> None:
        """Forget connections (in a forked child)."""
        ...


@dataclass(eq=False)
class _Open:
    dataset: str
    seq: int
    opened_ns: int
    opened_mono: float
    path: Path | None = None
    fd: int | None = None
    chunks: list[bytes] = field(default_factory=list)
    records: int = 0
    nbytes: int = 0
    written: int = 0
    dirty: bool = False


@dataclass(eq=False)
class _Ready:
    dataset: str
    key_name: str
    size: int
    records: int | None
    path: Path | None = None
    body: bytes | None = None
    recovered: bool = False
    cleaned: bool = False
    attempts: int = 0
    next_at: float = 0.0
    inflight: bool = False
    transient: bool = False  # its last attempt failed in a way the next success may disprove
    # The file holds the gzip body to upload (compressed by us, or adopted and checked); or
    # compressing was tried and failed (disk full...): compressed in memory at each attempt.
    packed: bool = False
    pack_failed: bool = False


class ArchiveExporter:
    """Base of the archive exporters (see the module docstring). Not used directly."""

    kind = "archive"
    # How often a running exporter looks for files of owners that died since it started (a
    # process killed meanwhile; an exporter of this process dropped without shutdown).
    adopt_interval_s = 30.0

    def __init__(
        self,
        store: Store,
        *,
        name: str,
        datasets: Iterable[str] | None,
        prefixes: Mapping[str, str] | None,
        max_batch_bytes: int,
        max_batch_records: int,
        max_interval_s: float,
        compresslevel: int,
        spool_dir: str | os.PathLike[str] | None,
        spool_max_bytes: int,
        fsync_interval_s: float,
        router: Callable[[Record], Iterable[str]] | None,
        retry: RetryPolicy | None,
    ) -> None:
        positive_int("max_batch_bytes", max_batch_bytes, 1 << 50)
        positive_int("max_batch_records", max_batch_records, 1 << 50)
        positive_int("spool_max_bytes", spool_max_bytes, 1 << 50)
        for label, seconds in (("max_interval_s", max_interval_s), ("fsync_interval_s", fsync_interval_s)):
            if not finite(label, seconds, 0.0, 86_400.0):
                raise ConfigurationError(f"{label} must be > 0")
        valid_compresslevel(compresslevel)
        if router is not None and not callable(router):
            raise TypeError("router must be callable (record -> dataset names)")
        prefixes = str_map("prefixes", prefixes)
        self.name = name
        self.datasets = valid_datasets(datasets)
        self.prefixes = {
            safe_dataset(k): checked_prefix(f"prefixes[{k!r}]", v) for k, v in (prefixes or {}).items()
        }
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_records = max_batch_records
        self.max_interval_s = float(max_interval_s)
        self.compresslevel = compresslevel
        self.spool_max_bytes = spool_max_bytes
        self.fsync_interval_s = float(fsync_interval_s)
        self.router = router
        self.retry = checked_retry(retry)
        self.spool_path = Path(spool_dir) if spool_dir is not None else None
        self._store = store
        self._shut = False
        self._init_state()

    # -- lifecycle -----------------------------------------------------------------------------
    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._open: dict[str, _Open] = {}
        self._ready: deque[_Ready] = deque()
        self._usage = 0
        self._stopping = False
        # Store-wide backoff: while every attempt fails (storage down), attempts are spaced by
        # the backoff of the consecutive failures, whatever the number of batches waiting.
        self._failures = 0
        self._gate = 0.0
        self._stop_deadline = 0.0
        # (dataset, problem) already explained in the log, until that dataset's next success
        self._reported: set[tuple[str, str]] = set()
        self._next_fsync = time.monotonic() + self.fsync_interval_s
        self._spool: SpoolDir | None = None
        self._thread_done = False
        self._adopted_at = _releases  # (read before adopting: a release meanwhile is seen)
        self._next_adopt = time.monotonic() + self.adopt_interval_s
        self._skipped_seen = 0
        if self.spool_path is not None:
            try:
                self._spool = SpoolDir(self.spool_path)
            except OSError as exc:
                raise ConfigurationError(f"spool_dir {str(self.spool_path)!r} is not usable: {exc}") from exc
            self._adopt()
        self._thread: threading.Thread | None = None
        self._start_thread()

    def _adopt(self) -> None:
        """Take over the files of dead owners (at start, then from time to time; lock held)."""
        assert self._spool is not None
        wanted = frozenset(safe_dataset(d) for d in self.datasets) if self.datasets is not None else None
        adopted = self._spool.adopt_orphans(wanted)
        self._sweep_temp()
        # Older than anything of ours: uploaded first (at start, before any new batch).
        self._ready.extendleft(
            _Ready(a.dataset, a.key_name, a.size, None, path=a.path, recovered=True)
            for a in reversed(adopted)
        )
        self._usage += sum(a.size for a in adopted)
        if adopted:
            _stats.incr(f"{self.kind}.recovered_files", len(adopted))
        # (entries left alone are found again on every look: counted when there are more)
        skipped, self._skipped_seen = self._spool.skipped - self._skipped_seen, self._spool.skipped
        if skipped > 0:
            _stats.incr(f"{self.kind}.spool_skipped", skipped)
            warn_limited(
                f"{self.kind}.spool_skipped",
                "pitchey_trace %s %s: %d entries of %s named like spool files are not regular "
                "files of this user (or are symbolic links); left alone",
                self.kind,
                self.name,
                self._spool.skipped,
                self.spool_path,
            )

    def _sweep_temp(self) -> None:
        """Delete the compression temporaries of owners that are gone (a crash between writing
        one and renaming it: the batch's ``.ready`` file is still there, raw). An owner's lock
        file exists for as long as it lives, and outlives its spool files."""
        assert self._spool is not None
        try:
            entries = os.listdir(self._spool.path)
        except OSError:
            return
        present = set(entries)
        for entry in entries:
            m = _TMP_FILE.match(entry) if entry.endswith(_TMP_SUFFIX) else None
            if m is None or m["owner"] == self._spool.owner or f"{m['owner']}.lock" in present:
                continue
            try:
                os.unlink(self._spool.path / entry)
            except OSError:
                pass

    def _start_thread(self) -> None:
        def run() -> None:
            CURRENT.set(SUPPRESSED)  # boto3 / HTTP instrumentation must not trace our uploads
            try:
                self._run()
            finally:
                self._thread_ended()

        # (the SDK's thread class: gevent's patch_all() after it started made its end a
        # KeyError traceback at exit, see _batch._Thread)
        self._thread = _Thread(target=run, name=f"pitchey-trace-{self.kind}-{self.name}", daemon=True)
        self._thread.start()

    def _ensure_running(self) -> None:
        if self._pid != os.getpid():
            self.after_fork()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's batches and files (the parent uploads them),
        become a new spool owner, adopt files of dead owners, start a fresh thread."""
        for ob in self._open.values():
            if ob.fd is not None:
                try:
                    os.close(ob.fd)
                except OSError:
                    pass
        if self._spool is not None:
            self._spool.forget_after_fork()
        self._store.reset()
        if not self._shut:
            self._init_state()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Close every open batch and wait (at most ``timeout`` s, default 30) until every
        closed batch is uploaded. Failed uploads are retried at once, then with backoff."""
        if self._shut:
            return not self._ready
        self._ensure_running()
        deadline = time.monotonic() + (30.0 if timeout is None else max(0.0, timeout))
        with self._cond:
            for ob in list(self._open.values()):
                self._close(ob)
            for item in self._ready:
                item.next_at = 0.0
            self._gate = 0.0
            self._cond.notify_all()
            while self._ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush (bounded by ``timeout``), stop the thread. With a spool, batches not uploaded
        stay on disk for the next start; without one they are lost (counted)."""
        if self._shut:
            return
        timeout = 30.0 if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + timeout
        # keep a quarter of the time to let an upload in flight finish and the thread stop
        self.force_flush(timeout * 0.75)
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.1, deadline - time.monotonic()))
        with self._cond:
            self._shut = True
            left = sum(i.records or 0 for i in self._ready)
            if self._ready:
                if self._spool is not None:
                    _stats.incr(f"{self.kind}.left_in_spool", left)
                    warn_limited(
                        f"{self.kind}.left",
                        "pitchey_trace %s %s: %d batch(es) not uploaded at shutdown stay in %s",
                        self.kind,
                        self.name,
                        len(self._ready),
                        self.spool_path,
                    )
                else:
                    _stats.incr("dropped.archive_unsent", left)
            # A thread still uploading (a hung request) keeps the lock, lest another owner
            # take the file it reads; it releases the lock itself when it ends.
            if thread is None or self._thread_done or not thread.is_alive():
                self._release_spool()

    def _thread_ended(self) -> None:
        """The upload thread's last act: after a shutdown that gave up waiting for it, give
        the spool up (else the lock stayed held as long as this object lives)."""
        with self._cond:
            self._thread_done = True
            if self._shut:
                self._release_spool()

    def _release_spool(self) -> None:
        """Give the spool up (lock held): its files become adoptable, also by the running
        exporters of this process."""
        if self._spool is not None and self._pid == os.getpid():
            self._spool.release()
            _note_release()

    # -- export (worker thread) -------------------------------------------------------------------
    def _datasets_for(self, record: Record) -> Iterable[str]:
        router = self.router
        if router is None:
            return (safe_dataset(dataset_of(record)),)
        wanted = self.datasets
        return [safe_dataset(n) for n in router(record) if wanted is None or n in wanted]

    def export(self, batch: Sequence[Record]) -> bool:
        """Encode and append the records to their datasets' open batches (never waits for
        storage). False only after shutdown; records that cannot be kept (spool full or
        unwritable) are counted under ``dropped.spool_cap`` / ``dropped.spool_write_error``."""
        if self._shut:
            return False  # the worker counts the batch under dropped.export_failed
        self._ensure_running()
        per_ds: dict[str, list[bytes]] = {}
        for rec in batch:
            try:
                line = encode_line(rec)
            except Exception as exc:
                _stats.incr("dropped.encode_error")
                warn_limited(
                    "archive.encode", "pitchey_trace %s: a record could not be encoded: %r", self.kind, exc
                )
                continue
            for ds in self._datasets_for(rec):
                lines = per_ds.get(ds)
                if lines is None:
                    per_ds[ds] = [line]
                else:
                    lines.append(line)
        with self._cond:
            for ds, lines in per_ds.items():
                self._append(ds, lines)
            self._cond.notify_all()
        # Records we could not keep are counted precisely (dropped.spool_cap, ...) by _append;
        # returning False would count the whole batch as dropped a second time.
        return True

    def _new_open(self, ds: str) -> _Open:
        now_ns = time.time_ns()
        spool = self._spool
        if spool is None:
            ob = _Open(ds, 0, now_ns, time.monotonic())
        else:
            seq = spool.next_seq()
            path = spool.open_path(seq, ds, now_ns)
            spool.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            ob = _Open(ds, seq, now_ns, time.monotonic(), path, fd)
        self._open[ds] = ob
        return ob

    def _append(self, ds: str, lines: list[bytes]) -> int:
        """Add lines to the open batch of ``ds`` (lock held); returns how many were kept."""
        ob = self._open.get(ds)
        pending: list[bytes] = []
        kept = dropped = 0
        max_bytes, max_records = self.max_batch_bytes, self.max_batch_records
        for line in lines:
            n = len(line)
            if ob is not None and ob.records and ob.nbytes + n > max_bytes:
                kept += self._write(ob, pending)
                pending = []
                self._close(ob)
                ob = None
            if self._usage + n > self.spool_max_bytes and not self._make_room(n):
                dropped += 1
                continue
            if ob is None:
                try:
                    ob = self._new_open(ds)
                except OSError as exc:
                    dropped += 1
                    _stats.incr("dropped.spool_write_error")
                    warn_limited(
                        f"{self.kind}.spool_open",
                        "pitchey_trace %s: cannot open a spool file in %s: %r",
                        self.kind,
                        self.spool_path,
                        exc,
                    )
                    continue
            pending.append(line)
            ob.records += 1
            ob.nbytes += n
            self._usage += n
            if ob.records >= max_records:
                kept += self._write(ob, pending)
                pending = []
                self._close(ob)
                ob = None
        if ob is not None and pending:
            kept += self._write(ob, pending)
        if dropped:
            _stats.incr("dropped.spool_cap", dropped)
            warn_limited(
                f"{self.kind}.cap",
                "pitchey_trace %s %s: spool full (%d bytes); dropping records",
                self.kind,
                self.name,
                self.spool_max_bytes,
            )
        return kept

    def _write(self, ob: _Open, lines: list[bytes]) -> int:
        if not lines:
            return 0
        if ob.fd is None:
            ob.chunks.extend(lines)
            return len(lines)
        data = b"".join(lines)
        view = memoryview(data)
        try:
            while view:
                done = os.write(ob.fd, view)
                view = view[done:]
        except OSError as exc:
            # Keep the file made of whole lines: cut what this call appended.
            try:
                os.ftruncate(ob.fd, ob.written)
            except OSError:
                pass
            ob.records -= len(lines)
            ob.nbytes -= len(data)
            self._usage -= len(data)
            _stats.incr("dropped.spool_write_error", len(lines))
            warn_limited(
                f"{self.kind}.spool_write", "pitchey_trace %s: spool write failed: %r", self.kind, exc
            )
            return 0
        ob.written += len(data)
        ob.dirty = True
        _stats.incr("spooled", len(lines))
        _stats.incr(f"{self.kind}.spooled", len(lines))
        return len(lines)

    def _close(self, ob: _Open) -> None:
        """Close an open batch (lock held): fix its object name, queue it for upload."""
        self._open.pop(ob.dataset, None)
        if ob.records == 0:
            self._discard_open(ob)
            return
        key_name = new_key_name(ob.opened_ns, time.time_ns())
        if ob.fd is None:
            body = gzip_ndjson(ob.chunks, self.compresslevel)
            self._usage += len(body) - ob.nbytes
            ob.chunks = []
            self._ready.append(_Ready(ob.dataset, key_name, len(body), ob.records, body=body))
        else:
            assert self._spool is not None
            assert ob.path is not None
            try:
                if ob.dirty:
                    os.fsync(ob.fd)
            except OSError:
                pass
            os.close(ob.fd)
            ob.fd = None
            dst = self._spool.ready_path(ob.seq, ob.dataset, key_name)
            try:
                os.rename(ob.path, dst)
            except OSError:
                dst = ob.path  # still uploadable; after a crash it would get a new name
            self._ready.append(_Ready(ob.dataset, key_name, ob.written, ob.records, path=dst))
            self._usage += ob.written - ob.nbytes
        self._cond.notify_all()

    def _discard_open(self, ob: _Open) -> None:
        if ob.fd is not None:
            try:
                os.close(ob.fd)
            except OSError:
                pass
            ob.fd = None
        if ob.path is not None:
            try:
                os.unlink(ob.path)
            except OSError:
                pass
        self._usage -= ob.nbytes

    def _make_room(self, n: int) -> bool:
        """Drop the oldest closed batches not being uploaded until ``n`` more bytes fit."""
        for item in list(self._ready):
            if self._usage + n <= self.spool_max_bytes:
                return True
            if item.inflight:
                continue
            self._ready.remove(item)
            records = item.records
            if item.path is not None:
                if records is None:
                    try:
                        records = spool_records(item.path.read_bytes())
                    except OSError:
                        records = 0
                try:
                    os.unlink(item.path)
                except OSError:
                    pass
            self._usage -= item.size
            _stats.incr("dropped.spool_cap", records or 0)
            _stats.incr(f"{self.kind}.dropped_batches")
        return self._usage + n <= self.spool_max_bytes

    # -- background thread ----------------------------------------------------------------------
    def object_key(self, dataset: str, key_name: str) -> str:
        """``{prefix}/{YYYYMMDD}/{start}_{end}_{unique}.log.gz`` for a dataset's batch."""
        prefix = self.prefixes.get(dataset, dataset)
        path = f"{key_name[:8]}/{key_name}.log.gz"
        return f"{prefix}/{path}" if prefix else path

    def _housekeeping(self, now: float) -> None:
        """Close batches past ``max_interval_s``, fsync open spool files, and take over the files
        of owners gone since the last look (lock held)."""
        for ob in list(self._open.values()):
            if now - ob.opened_mono >= self.max_interval_s:
                self._close(ob)
        if now >= self._next_fsync:
            self._next_fsync = now + self.fsync_interval_s
            for ob in self._open.values():
                if ob.dirty and ob.fd is not None:
                    try:
                        os.fsync(ob.fd)
                        ob.dirty = False
                    except OSError as exc:
                        warn_limited(
                            f"{self.kind}.fsync", "pitchey_trace %s: fsync failed: %r", self.kind, exc
                        )
        # Owners gone since start: an exporter of this process released its spool (a shutdown
        # that timed out, then its thread ended), or a process died. A live owner holds its
        # flock until it no longer touches its files, so none of its files is ever taken.
        if self._spool is not None and not self._stopping:
            released = _releases
            if released != self._adopted_at or now >= self._next_adopt:
                self._adopted_at = released
                self._next_adopt = now + self.adopt_interval_s
                self._adopt()

    def _next_wake(self, now: float) -> float:
        wake = now + 5.0
        for ob in self._open.values():
            wake = min(wake, ob.opened_mono + self.max_interval_s)
            if ob.dirty:
                wake = min(wake, self._next_fsync)
        for item in self._ready:
            if not item.inflight:
                wake = min(wake, max(item.next_at, self._gate))
        return max(0.0, wake - now)

    def _next_item(self, now: float) -> _Ready | None:
        """The batch to upload now (lock held): the oldest (first closed) among those not
        backing off, so a batch that keeps failing (say, one dataset's bucket is missing)
        never starves others."""
        if now < self._gate:
            return None
        for item in self._ready:
            if not item.inflight and item.next_at <= now:
                return item
        return None

    def _next_pack(self) -> _Ready | None:
        """The oldest closed batch whose spool file is still raw NDJSON (lock held): compressed
        while uploads wait (an outage), so the spool keeps compressed batches only."""
        if self._stopping:
            return None
        for item in self._ready:
            if item.path is not None and not (item.packed or item.pack_failed or item.inflight):
                return item
        return None

    def _run(self) -> None:
        cond = self._cond
        while True:
            packing = False
            with cond:
                while True:
                    now = time.monotonic()
                    try:
                        self._housekeeping(now)
                    except Exception as exc:  # never let the uploader die
                        warn_limited(f"{self.kind}.housekeeping", "pitchey_trace %s: %r", self.kind, exc)
                    if self._stopping and (not self._ready or now >= self._stop_deadline):
                        return
                    item = self._next_item(now)
                    if item is None:
                        item = self._next_pack()
                        packing = item is not None
                    if item is not None:
                        item.inflight = True
                        break
                    cond.wait(self._next_wake(now))
            if packing:
                packed = self._pack(item)
                outcome = packed if packed == "gone" else "packed"
            else:
                outcome = self._upload(item)
            with cond:
                item.inflight = False
                if outcome == "packed":
                    pass
                elif outcome in ("stuck", "stuck_all"):
                    # A configuration error (bucket missing, credentials refused): every batch
                    # of the dataset (refused credentials: every batch) waits the longest
                    # backoff - one request per interval, not one per waiting batch.
                    item.attempts += 1
                    later = time.monotonic() + self.retry.max_backoff_s
                    for other in self._ready:
                        if other.dataset == item.dataset or outcome == "stuck_all":
                            other.next_at = max(other.next_at, later)
                    if outcome == "stuck_all":
                        self._gate = max(self._gate, later)
                    _stats.incr("retried")
                    _stats.incr(f"{self.kind}.retried")
                elif outcome == "retry":
                    item.attempts += 1
                    item.transient = True
                    self._failures += 1
                    now = time.monotonic()
                    item.next_at = now + self.retry.backoff(item.attempts)
                    self._gate = now + self.retry.backoff(self._failures)
                    _stats.incr("retried")
                    _stats.incr(f"{self.kind}.retried")
                else:
                    if outcome == "done":
                        if self._failures:
                            # The store answers again: the batches that failed during the
                            # outage go now, oldest first, not each after its own backoff
                            # (which sent the newest batches first).
                            for other in self._ready:
                                if other.transient:
                                    other.transient = False
                                    other.next_at = 0.0
                        self._failures = 0
                        self._gate = 0.0
                    try:
                        self._ready.remove(item)
                    except ValueError:
                        pass
                    self._usage -= item.size
                    if item.path is not None:
                        try:
                            os.unlink(item.path)
                        except OSError:
                            pass
                cond.notify_all()

    def _pack(self, item: _Ready) -> bytes | str:
        """Make a closed batch's spool file hold its upload body (background thread, item in
        flight, lock not held): a raw file is compressed once, written to a temporary file,
        fsynced and renamed over it (a crash before the rename leaves the raw file, valid
        too); a compressed file adopted from a dead process is checked whole. Returns the
        body, or "gone" (file vanished, empty or corrupt) / "retry" (unreadable)."""
        assert item.path is not None
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            _stats.incr("dropped.spool_missing", item.records or 0)
            return "gone"
        except OSError as exc:
            item.pack_failed = True  # (not picked again by _next_pack: no busy loop)
            warn_limited(f"{self.kind}.read", "pitchey_trace %s: cannot read spool file: %r", self.kind, exc)
            return "retry"
        if data[:2] == _GZIP_MAGIC:  # compressed by an owner that died (or by us already)
            records, intact = gzip_records(data)
            if not intact:
                _stats.incr("dropped.spool_corrupt", records)
                _stats.incr(f"{self.kind}.spool_corrupt_files")
                warn_limited(
                    f"{self.kind}.spool_corrupt",
                    "pitchey_trace %s %s: spool file %s is not a whole gzip body; dropped "
                    "(at least %d records lost)",
                    self.kind,
                    self.name,
                    item.path.name,
                    records,
                )
                return "gone"
            with self._cond:
                item.records = records
                item.packed = True
            return data
        if item.recovered:
            data, kept, invalid = clean_lines(data)
            if invalid and not item.cleaned:  # (counted once, not on every retry)
                _stats.incr("dropped.spool_invalid_lines", invalid)
            item.cleaned = True
            item.records = kept
        if not item.records:
            return "gone"
        body = gzip.compress(data, self.compresslevel, mtime=0)
        tmp = item.path.with_name(f".{item.path.name}{_TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # (renamed under the lock: the spool's usage never counts a compressed file raw)
            with self._cond:
                os.replace(tmp, item.path)
                self._usage += len(body) - item.size
                item.size = len(body)
                item.packed = True
        except OSError as exc:
            # (a full disk: the raw file stays; this attempt uploads from memory, the next
            # ones compress again, as before compressed spool files)
            item.pack_failed = True
            try:
                os.unlink(tmp)
            except OSError:
                pass
            warn_limited(
                f"{self.kind}.spool_pack",
                "pitchey_trace %s: cannot write a compressed spool file: %r",
                self.kind,
                exc,
            )
        return body

    def _upload(self, item: _Ready) -> str:
        """Upload one closed batch: "done", "gone" (file vanished / empty), "retry", or
        "stuck" / "stuck_all" (a configuration error of the dataset / of the whole store)."""
        if item.body is not None:
            body = item.body
        elif not item.packed:
            packed = self._pack(item)
            if isinstance(packed, str):
                return packed
            body = packed
        else:
            assert item.path is not None
            try:
                body = item.path.read_bytes()  # the gzip body, compressed once
            except FileNotFoundError:
                _stats.incr("dropped.spool_missing", item.records or 0)
                return "gone"
            except OSError as exc:
                warn_limited(
                    f"{self.kind}.read", "pitchey_trace %s: cannot read spool file: %r", self.kind, exc
                )
                return "retry"
        if not item.records:
            return "gone"
        key = self.object_key(item.dataset, item.key_name)
        try:
            self._store.put(item.dataset, key, body)
        except Exception as exc:
            classify = getattr(self._store, "persistent_error", None)
            problem = classify(item.dataset, exc) if classify is not None else None
            if problem is not None:
                counter, explanation = problem
                _stats.incr(f"{self.kind}.{counter}")
                if (item.dataset, counter) not in self._reported:
                    self._reported.add((item.dataset, counter))
                    logger.warning(
                        "pitchey_trace %s %s: uploads of dataset %s fail: %s. Records are kept "
                        "(%s) and uploads retried every %.0f s; this is logged once.",
                        self.kind,
                        self.name,
                        item.dataset,
                        explanation,
                        "in the spool" if self._spool is not None else "in memory",
                        self.retry.max_backoff_s,
                    )
                return "stuck_all" if counter == "access_denied" else "stuck"
            warn_limited(
                f"{self.kind}.upload",
                "pitchey_trace %s %s: upload of %s failed (attempt %d), will retry: %r",
                self.kind,
                self.name,
                key,
                item.attempts + 1,
                exc,
            )
            return "retry"
        if self._reported:
            fixed = {r for r in self._reported if r[0] == item.dataset}
            if fixed:
                self._reported -= fixed
                logger.warning(
                    "pitchey_trace %s %s: uploads of dataset %s work again",
                    self.kind,
                    self.name,
                    item.dataset,
                )
        records = item.records
        _stats.incr(f"{self.kind}.uploaded", records)
        _stats.incr(f"{self.kind}.objects")
        _stats.incr(f"{self.kind}.bytes", len(body))
        if item.recovered:
            _stats.incr(f"{self.kind}.recovered", records)
        return "done"

    # -- introspection --------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        """What is waiting: records in open batches, closed batches, bytes held (spool or memory)."""
        with self._cond:
            return {
                "open_records": sum(ob.records for ob in self._open.values()),
                "closed_batches": len(self._ready),
                "bytes": self._usage,
            }
