"""InMemoryExporter: keeps exported records in a list (tests, notebooks, the demo)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace._validate import positive_int
from pitchey_trace.records import Record


class InMemoryExporter:
    """Collects every exported record (schema-v1 dicts) in :attr:`records`.

    ``max_records`` bounds memory: beyond it the oldest records are discarded.
    """

    name = "memory"

    def __init__(self, *, datasets: Iterable[str] | None = None, max_records: int = 1_000_000) -> None:
        self.datasets = valid_datasets(datasets)
        self.max_records = positive_int("max_records", max_records, 1 << 40)
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self.shut_down = False

    def export(self, batch: Sequence[Record]) -> bool:
        """Store the batch."""
        with self._lock:
            self._records.extend(batch)
            overflow = len(self._records) - self.max_records
            if overflow > 0:
                del self._records[:overflow]
        return True

    def force_flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Mark as shut down (records stay readable)."""
        self.shut_down = True

    def after_fork(self) -> None:
        """A forked child starts with no records and a fresh lock."""
        self._lock = threading.Lock()
        self._records = []

    @property
    def records(self) -> list[Record]:
        """A copy of every record exported so far."""
        with self._lock:
            return list(self._records)

    def spans(self, name: str | None = None) -> list[Record]:
        """Span records, optionally only those named ``name``."""
        return [r for r in self.records if r.get("type") == "span" and (name is None or r["name"] == name)]

    def of_type(self, record_type: str) -> list[Record]:
        """Records of one type (``span``, ``audit``, ``rollup``)."""
        return [r for r in self.records if r.get("type") == record_type]

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"InMemoryExporter(records={len(self._records)})"

    def __iter__(self) -> Any:
        return iter(self.records)
