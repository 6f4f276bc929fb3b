"""Tail keeping: export a head-unsampled request when one of its spans errored or was slow.

Runs on the pipeline worker, never on the request thread. The unit is the local trace: a
local root (a span without a parent, or under a remote one) and its local descendants, which
all carry its span id (``Span.local_root_id``). One trace can have several local roots in a
process (an unsampled caller retrying, or calling twice in parallel; a producer and its
consumer), and each decides for its own spans only. Record-only spans wait in a bounded buffer
per local root until either

* one of them is "interesting" (error status when ``keep_errors``; duration at or over
  ``slow_threshold_ms``): the buffered spans and every later span of that local trace are
  released;
* the local root ends without anything interesting: the buffer is discarded;
* the buffer is too old (``max_age_s``) or the total pending spans exceed ``max_pending``: the
  oldest buffer is discarded (counted as ``tail.evicted``).

Decisions are remembered (the last ``remember`` to ``2 * remember`` of them, in two plain dicts
that take turns: cheaper per span than an LRU) so that spans ending after their local root (a
task spawned and left running) still follow its decision.

Buffers and decisions are keyed by the local root's span id alone: 64 random bits made here, as
unique in practice as a (trace id, span id) pair, and a dict lookup per span cheaper than a
tuple key (built, hashed and compared anew for every span).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from pitchey_trace import _accel, _stats
from pitchey_trace._span import Span, StatusCode

_SLOW_EVENTS = frozenset(("slow_query", "slow"))
_ERROR = StatusCode.ERROR
# Why the C accelerator's tail_offer() stopped (besides reaching a span it leaves to Python).
_SWAP, _EVICT = 1, 2


class _Pending:
    __slots__ = ("born", "spans")

    def __init__(self, born: float) -> None:
        self.spans: list[Span] = []
        self.born = born


class TailKeeper:
    """Buffers record-only spans per local root and releases the local traces worth keeping."""

    def __init__(
        self,
        *,
        keep_errors: bool = True,
        slow_threshold_ms: float | None = 1000.0,
        max_pending: int = 50_000,
        max_age_s: float = 60.0,
        remember: int = 20_000,
    ) -> None:
        self.keep_errors = keep_errors
        self.slow_ns = int(slow_threshold_ms * 1e6) if slow_threshold_ms is not None else None
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.remember = remember
        # Keyed by local root span id (see the module docstring).
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._n_pending = 0
        # Decisions: the current generation and the previous one (see the module docstring).
        self._decided: dict[int, bool] = {}
        self._decided_old: dict[int, bool] = {}

    @property
    def enabled(self) -> bool:
        """Whether anything can ever be kept."""
        return self.keep_errors or self.slow_ns is not None

    def _decide(self, root: int, keep: bool) -> None:
        decided = self._decided
        decided[root] = keep
        if len(decided) >= self.remember:
            self._decided_old = decided
            self._decided = {}

    def offer(self, span: Span, out: list[Span]) -> None:
        """Take a finished record-only span; append to ``out`` whatever is now kept."""
        self.offer_many((span,), out)

    def offer_many(self, spans: Iterable[Span], out: list[Span]) -> None:
        """:meth:`offer` for a chunk of spans, in order (counters updated once per chunk)."""
        items = spans if spans.__class__ is list else list(spans)
        fast = _accel.tail_offer
        counts = [0, 0, 0]  # discarded, kept late, kept traces
        i, n = 0, len(items)
        while i < n:
            if fast is not None:
                # The C accelerator takes the spans in order while they are the common cases
                # (decided traces; roots and children of traces with nothing interesting yet)
                # and stops where this method has to act: a swap of the decision
                # generations, an eviction, or a span it leaves to the Python code below.
                i, discarded, self._n_pending, stop = fast(
                    items, i, out, self._decided, self._decided_old, self._pending, self.keep_errors,
                    self.slow_ns, _ERROR, _Pending, self._n_pending, self.remember, self.max_pending,
                )  # fmt: skip
                counts[0] += discarded
                if stop == _SWAP:
                    self._decided_old = self._decided
                    self._decided = {}
                    continue
                if stop == _EVICT:
                    if self._n_pending > self.max_pending:
                        self._evict_oldest()
                    continue
                if i >= n:
                    break
            self._offer_one(items[i], out, counts)
            i += 1
        if counts[0]:
            _stats.incr("tail.discarded", counts[0])
        if counts[1]:
            _stats.incr("tail.kept_late", counts[1])
        if counts[2]:
            _stats.incr("tail.kept_traces", counts[2])

    def _offer_one(self, span: Span, out: list[Span], counts: list[int]) -> None:
        """One span of :meth:`offer_many` (the reference the C accelerator follows)."""
        root = span.local_root_id
        events = span.events
        slow = self.slow_ns
        interesting = (
            (self.keep_errors and span.status == _ERROR)
            or (slow is not None and span.end_ns - span.start_ns >= slow)
            # Instrumentations with their own slowness notion (e.g. the PostgreSQL
            # slow-query threshold) mark the span with a ``slow_query`` / ``slow`` event.
            or (bool(events) and any(e[0] in _SLOW_EVENTS for e in events))  # type: ignore[union-attr]
        )
        decision = self._decided.get(root)
        if decision is None and self._decided_old:
            decision = self._decided_old.get(root)
        if decision is not None:
            if decision:
                out.append(span)
            elif interesting:
                # Decided "drop" already (its local root ended first) but this late span
                # is worth keeping on its own.
                out.append(span)
                counts[1] += 1
            else:
                counts[0] += 1
            return
        pending_map = self._pending
        pending = pending_map.get(root)
        if interesting:
            if pending is not None:
                del pending_map[root]
                self._n_pending -= len(pending.spans)
                out.extend(pending.spans)
            out.append(span)
            self._decide(root, True)
            counts[2] += 1
            return
        if span.local_root:
            if pending is not None:
                del pending_map[root]
                self._n_pending -= len(pending.spans)
                counts[0] += len(pending.spans)
            counts[0] += 1
            self._decide(root, False)
            return
        if pending is None:
            pending = pending_map[root] = _Pending(time.monotonic())
        pending.spans.append(span)
        self._n_pending += 1
        if self._n_pending > self.max_pending:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, pending = self._pending.popitem(last=False)
        self._n_pending -= len(pending.spans)
        _stats.incr("tail.evicted", len(pending.spans))

    def expire(self, now: float | None = None) -> None:
        """Discard buffers older than ``max_age_s`` (called periodically by the worker)."""
        now = time.monotonic() if now is None else now
        pending = self._pending
        while pending:
            oldest = next(iter(pending.values()))
            if now - oldest.born < self.max_age_s:
                break
            self._evict_oldest()

    def clear(self) -> None:
        """Forget everything (after fork in the child)."""
        self._pending.clear()
        self._decided = {}
        self._decided_old = {}
        self._n_pending = 0

    @property
    def pending_spans(self) -> int:
        """How many record-only spans are waiting for their trace's decision."""
        return self._n_pending
