"""Process-wide counters behind :func:`pitchey_trace.stats`.

Counters are plain ints in a dict guarded by a lock; the hot path never touches them except
for the rare "queue full" drop, so contention does not matter.
"""

from __future__ import annotations

import threading

# Reentrant: a signal handler runs on the main thread between two bytecodes, maybe inside
# incr(); one that counts something or reads stats() (pt.shutdown() in a SIGTERM handler)
# would otherwise wait forever for a lock its own thread holds.
_lock = threading.RLock()
_counters: dict[str, int] = {}


class PartlyRejected(int):
    """What an exporter's ``export()`` returns when its destination accepted the batch but
    refused this many of its records (OTLP partial success), which the exporter counted in
    ``dropped.rejected`` itself: the export worker counts the rest as ``exported``."""

    __slots__ = ()


class PartlyFailed(PartlyRejected):
    """Like :class:`PartlyRejected`, but some of those records were given up (a request that
    failed while others went out), counted by the exporter in ``dropped.export_failed``: the
    export worker counts the rest as ``exported`` and the next flush reports the loss."""

    __slots__ = ()


def incr(key: str, n: int = 1) -> None:
    """Add ``n`` to counter ``key`` (dotted names, e.g. ``dropped.queue_full``)."""
    with _lock:
        _counters[key] = _counters.get(key, 0) + n


def get(key: str) -> int:
    """Current value of one counter (0 when never incremented)."""
    return _counters.get(key, 0)


def snapshot() -> dict[str, int]:
    """A copy of every counter plus ``dropped``, the sum of the ``dropped.<reason>`` counters
    (not of their per-exporter splits, ``dropped.<reason>.<exporter>``, counted in them too)."""
    with _lock:
        snap = dict(_counters)
    snap["dropped"] = sum(v for k, v in snap.items() if k.startswith("dropped.") and k.count(".") == 1)
    for key in ("accepted", "exported", "retried", "spooled", "internal_errors"):
        snap.setdefault(key, 0)
    return dict(sorted(snap.items()))


def reset() -> None:
    """Zero every counter (tests, and after fork in the child)."""
    with _lock:
        _counters.clear()


def _reinit_after_fork() -> None:
    # The child is another process: its counters start at zero (per-process figures, sent
    # again by each worker's metrics under its own service.instance.id otherwise).
    global _lock
    _lock = threading.RLock()
    _counters.clear()


import os as _os  # noqa: E402  (registered last so the module is complete first)

if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_reinit_after_fork)
