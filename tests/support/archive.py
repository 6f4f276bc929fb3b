"""An ArchiveExporter over any store, with the defaults the archive unit tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pitchey_trace.exporters._archive import ArchiveExporter, Store
from pitchey_trace.exporters._http import RetryPolicy


def make_archive_exporter(store: Store, spool: Path | None, **kw: Any) -> ArchiveExporter:
    """An exporter named "t" on ``store`` (``spool``: its spool directory or None), every
    option at a test-friendly value unless given in ``kw`` (a short retry backoff)."""
    opts: dict[str, Any] = {
        "name": "t",
        "datasets": None,
        "prefixes": None,
        "max_batch_bytes": 5_000_000,
        "max_batch_records": 100_000,
        "max_interval_s": 30.0,
        "compresslevel": 6,
        "spool_dir": spool,
        "spool_max_bytes": 1 << 30,
        "fsync_interval_s": 1.0,
        "router": None,
        "retry": RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05),
    }
    opts.update(kw)
    return ArchiveExporter(store, **opts)
