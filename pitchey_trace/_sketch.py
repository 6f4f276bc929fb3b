"""A mergeable quantile sketch for durations (DDSketch-style log buckets).

A value ``x > 0`` falls in bucket ``i = ceil(log(x) / log(gamma))`` with
``gamma = (1 + a) / (1 - a)``; the bucket's representative value ``2 * gamma**i / (gamma + 1)``
is within relative error ``a`` (the *relative accuracy*, default 1%) of every value in it.
Quantiles read from the sketch are therefore within 1% of a true sample value of that rank,
whatever the distribution, and two sketches with the same accuracy merge exactly by adding
bucket counts - which is what lets per-minute rollups from many processes be combined.

Serialized form (the ``sketch`` field of a rollup record, see ``docs/exporters.md``)::

    {"kind": "ddsketch", "relative_accuracy": 0.01, "zero_count": 0,
     "offset": -40, "counts": [3, 0, 12, ...]}

``counts[j]`` is the count of bucket ``offset + j``; ``zero_count`` counts values too small to
index (at most :data:`MIN_INDEXABLE`, i.e. 1 ns when values are milliseconds). The number of
buckets is bounded (``max_bins``, default 2048): when exceeded, the lowest buckets collapse
into the lowest kept one, so only the smallest quantiles lose accuracy, never memory.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MIN_INDEXABLE", "DurationSketch", "merge_sketches"]

#: Values at or below this go to the zero bucket (1e-6 ms = 1 ns).
MIN_INDEXABLE = 1e-6
DEFAULT_RELATIVE_ACCURACY = 0.01
DEFAULT_MAX_BINS = 2048


class DurationSketch:
    """Log-bucket histogram with bounded relative error on quantiles; mergeable."""

    __slots__ = ("_inv_log_gamma", "bins", "count", "gamma", "max_bins", "relative_accuracy", "zero_count")

    def __init__(
        self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY, max_bins: int = DEFAULT_MAX_BINS
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError("relative_accuracy must be in (0, 1)")
        if max_bins < 1:
            raise ValueError("max_bins must be >= 1")
        self.relative_accuracy = float(relative_accuracy)
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.max_bins = max_bins
        self.bins: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0

    def add(self, value: float, n: int = 1) -> None:
        """Count ``value`` (``n`` times). Negative values count as zero."""
        self.count += n
        if value <= MIN_INDEXABLE:
            self.zero_count += n
            return
        i = math.ceil(math.log(value) * self._inv_log_gamma)
        bins = self.bins
        c = bins.get(i)
        if c is None:
            bins[i] = n
            if len(bins) > self.max_bins:
                self._collapse()
        else:
            bins[i] = c + n

    def add_many(self, values: Sequence[float]) -> None:
        """Count every value of ``values`` (the same result as :meth:`add` on each, faster)."""
        inv = self._inv_log_gamma
        log, ceil = math.log, math.ceil
        indexes = [ceil(log(v) * inv) for v in values if v > MIN_INDEXABLE]
        self.add_counts(Counter(indexes), len(values) - len(indexes))

    def add_counts(self, buckets: Mapping[int, int], zero_count: int) -> None:
        """Add ready-made bucket counts (``{index: n}``, indexes as :meth:`add` computes them)
        and ``zero_count`` values too small to index."""
        bins = self.bins
        total = zero_count
        for i, c in buckets.items():
            bins[i] = bins.get(i, 0) + c
            total += c
        self.zero_count += zero_count
        self.count += total
        if len(bins) > self.max_bins:
            self._collapse()

    def _collapse(self) -> None:
        """Fold the lowest buckets into bucket ``max - max_bins + 1`` so that the index range
        (and thus the serialized ``counts`` list) spans at most ``max_bins`` buckets."""
        bins = self.bins
        if not bins:
            return
        cut = max(bins) - self.max_bins + 1
        low = [k for k in bins if k < cut]
        if low:
            bins[cut] = bins.get(cut, 0) + sum(bins.pop(k) for k in low)

    def merge(self, other: DurationSketch) -> None:
        """Add every count of ``other`` (same relative accuracy) into this sketch."""
        if not math.isclose(other.relative_accuracy, self.relative_accuracy, rel_tol=1e-9):
            raise ValueError("cannot merge sketches with different relative accuracy")
        bins = self.bins
        for i, c in other.bins.items():
            bins[i] = bins.get(i, 0) + c
        self.zero_count += other.zero_count
        self.count += other.count
        if len(bins) > self.max_bins:
            self._collapse()

    def _value(self, index: int) -> float:
        return 2.0 * self.gamma**index / (self.gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The value at quantile ``q`` in [0, 1] (0.0 for an empty sketch): the bucket of the
        nearest rank, ``ceil(q * count)``, as the analysis engine picks a percentile from exact
        durations, so the two agree within the sketch's accuracy (1%). (A rank interpolated
        between neighbours, ``q * (count - 1)``, can be one value lower: far more than 1% in a
        tail.)"""
        if self.count == 0:
            return 0.0
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be in [0, 1]")
        rank = max(1, math.ceil(q * self.count))
        seen = self.zero_count
        if seen >= rank:
            return 0.0
        for i in sorted(self.bins):
            seen += self.bins[i]
            if seen >= rank:
                return self._value(i)
        return self._value(max(self.bins))  # pragma: no cover - rank < count always hits above

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready serialized form (see the module docstring)."""
        if self.bins:
            if max(self.bins) - min(self.bins) >= self.max_bins:
                self._collapse()
            lo, hi = min(self.bins), max(self.bins)
            get = self.bins.get
            counts = [get(i, 0) for i in range(lo, hi + 1)]
        else:
            lo, counts = 0, []
        return {
            "kind": "ddsketch",
            "relative_accuracy": self.relative_accuracy,
            "zero_count": self.zero_count,
            "offset": lo,
            "counts": counts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_bins: int = DEFAULT_MAX_BINS) -> DurationSketch:
        """Rebuild a sketch from :meth:`to_dict` output. Raises ValueError on malformed input."""
        if data.get("kind") != "ddsketch":
            raise ValueError(f"not a ddsketch: kind={data.get('kind')!r}")
        sketch = cls(float(data["relative_accuracy"]), max_bins)
        offset = int(data.get("offset", 0))
        total = int(data.get("zero_count", 0))
        if total < 0:
            raise ValueError("negative zero_count")
        sketch.zero_count = total
        for j, c in enumerate(data.get("counts", ())):
            c = int(c)
            if c < 0:
                raise ValueError("negative bucket count")
            if c:
                sketch.bins[offset + j] = c
                total += c
        sketch.count = total
        sketch.max_bins = max_bins
        sketch._collapse()
        return sketch

    def __repr__(self) -> str:
        return (
            f"DurationSketch(count={self.count}, relative_accuracy={self.relative_accuracy}, "
            f"bins={len(self.bins)})"
        )


def merge_sketches(sketches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge serialized sketches (all with the same relative accuracy) into one."""
    merged: DurationSketch | None = None
    for data in sketches:
        s = DurationSketch.from_dict(data)
        if merged is None:
            merged = s
        else:
            merged.merge(s)
    return (merged or DurationSketch()).to_dict()
