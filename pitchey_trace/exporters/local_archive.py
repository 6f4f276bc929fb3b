"""LocalArchiveExporter: the Logpush layout in a local directory.

``{directory}/{prefix}/{YYYYMMDD}/{start}_{end}_{unique}.log.gz`` - the same gzip NDJSON
objects :class:`~pitchey_trace.exporters.LogpushExporter` puts in a bucket, so the analysis
engine reads either the same way. Files appear atomically (written to a temporary name in the
same folder, fsynced, then renamed): a reader never sees a partial file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pitchey_trace.exporters._archive import (
    DEFAULT_COMPRESSLEVEL,
    DEFAULT_FSYNC_INTERVAL_S,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_RECORDS,
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_SPOOL_MAX_BYTES,
    ArchiveExporter,
)
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.records import Record

__all__ = ["LocalArchiveExporter", "LocalStore"]

#: ``spool_max_bytes`` without a spool directory: what the open and unsent batches may hold in
#: this process's memory while the directory cannot be written (a full disk, a read-only
#: mount). The spool's 1 GiB would let an outage of minutes grow the process by a gigabyte
#: (measured: bench/outage_bounds.py). Closed batches are held gzipped, so this keeps several
#: hundred MB of records; beyond it the oldest batches go first (``dropped.spool_cap``).
DEFAULT_MEMORY_MAX_BYTES = 64 << 20
#: ``spool_max_bytes`` not given: the cap that fits ``spool_dir`` (None stays an error).
_DEFAULT_CAP: Any = object()


class LocalStore:
    """Writes objects as files under a root directory, atomically."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def put(self, dataset: str, key: str, body: bytes) -> None:
        """Write ``body`` to ``root/key`` (temp file + fsync + rename; overwrites)."""
        dst = self.root / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def reset(self) -> None:
        """Nothing to reset."""

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


class LocalArchiveExporter(ArchiveExporter):
    """Archive records as Logpush-style gzip NDJSON files in ``directory``.

    Args:
        directory: the archive root (created if missing).
        datasets: datasets to archive (default: all).
        prefixes: folder per dataset (default: the dataset name, e.g. ``traces/``).
        max_batch_bytes / max_batch_records / max_interval_s: a file is written when the first
            of these is reached (defaults 5 MB uncompressed, 100,000 records, 30 s) and on
            flush/shutdown.
        spool_dir: optional durable spool (see :class:`LogpushExporter`); without it the open
            batch lives in memory and a hard kill loses up to one batch interval.
        spool_max_bytes: cap of the spool (default 1 GiB) or, without ``spool_dir``, of the
            memory buffer (default 64 MiB); oldest batches are dropped first
            (``dropped.spool_cap``).
        router: the Router passed to ``configure()`` when you route records to custom
            datasets, so each record lands in every dataset folder it belongs to.

    Counters: ``local_archive.uploaded`` (records written), ``.objects``, ``.bytes``,
    ``.retried``, ``.spooled``; ``dropped.archive_unsent`` for records still unsent when
    shutdown's time ran out without a spool.
    """

    kind = "local_archive"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        datasets: Iterable[str] | None = None,
        prefixes: Mapping[str, str] | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS,
        max_interval_s: float = DEFAULT_MAX_INTERVAL_S,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = _DEFAULT_CAP,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        fsync: bool = True,
        router: Callable[[Record], Iterable[str]] | None = None,
        retry: RetryPolicy | None = None,
        name: str = "local_archive",
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            # ("" would be the current directory: archives written wherever the process runs)
            raise TypeError(f"directory must be a non-empty path, got {directory!r}")
        if spool_max_bytes is _DEFAULT_CAP:
            spool_max_bytes = DEFAULT_SPOOL_MAX_BYTES if spool_dir is not None else DEFAULT_MEMORY_MAX_BYTES
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(
            LocalStore(self.directory, fsync=fsync),
            name=name,
            datasets=datasets,
            prefixes=prefixes,
            max_batch_bytes=max_batch_bytes,
            max_batch_records=max_batch_records,
            max_interval_s=max_interval_s,
            compresslevel=compresslevel,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            fsync_interval_s=fsync_interval_s,
            router=router,
            retry=retry,
        )

    def __repr__(self) -> str:
        return f"LocalArchiveExporter({str(self.directory)!r}, datasets={self.datasets!r})"
