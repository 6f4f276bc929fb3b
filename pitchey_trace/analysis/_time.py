"""Time arguments of the analysis API: one parser for ``since`` / ``until`` everywhere."""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone

__all__ = ["is_relative", "parse_duration_ms", "parse_time"]

# One duration syntax for windows ("24h" ago) and durations ("250ms"): a number and a unit.
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*", re.ASCII)
_UNIT_NS = {
    "us": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
}
# Unix times in ns are ~1.8e18 today; 1e20 ns is year 5138: anything beyond is a typo, not a time.
_MAX_NS = 10**20


def parse_time(value: object, now_ns: int | None = None) -> int:
    """A point in time as Unix nanoseconds.

    Accepts an int (Unix ns), a float (Unix seconds), a :class:`datetime` (naive means UTC),
    ISO-8601 text (``2026-11-30T12:00:00Z``, ``2026-11-30``) or a relative text meaning that
    long before now: ``90s``, ``15m``, ``24h``, ``7d``, ``2w``, ``500ms``. Raises ``ValueError``
    on anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int):
        if not 0 <= value < _MAX_NS:
            raise ValueError(f"time out of range (expected Unix nanoseconds): {value}")
        return value
    if isinstance(value, float):
        if not 0 <= value < _MAX_NS / 1e9:  # also refuses NaN
            raise ValueError(f"time out of range (expected Unix seconds): {value}")
        return int(value * 1e9)
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return _from_datetime(dt)
    if isinstance(value, str):
        text = value.strip()
        m = _DURATION.fullmatch(text)
        if m and m.group(2):  # (without a unit, digits are a Unix time, below)
            now = time.time_ns() if now_ns is None else now_ns
            ago = float(m.group(1)) * _UNIT_NS[m.group(2)]
            if not ago < _MAX_NS:  # (infinite too: "999...9h" has more digits than a float holds)
                raise ValueError(f"relative time out of range: {value!r}")
            return max(0, now - int(ago))
        if text.isascii() and text.isdigit():  # (str.isdigit alone takes "²", which int() refuses)
            if len(text.lstrip("0")) > 20:  # (beyond any Unix ns; int() of 5,000 digits refuses too)
                raise ValueError(f"time out of range (expected Unix nanoseconds): {text[:40]!r}")
            return parse_time(int(text))
        iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text  # fromisoformat: "Z" only from 3.11
        try:
            dt = datetime.fromisoformat(iso)
        except ValueError:
            raise ValueError(
                f"not a time: {value!r} (expected e.g. 24h, 15m, 7d, 2026-11-30T12:00:00Z or Unix ns)"
            ) from None
        return parse_time(dt)
    raise ValueError(f"not a time: {value!r}")


def is_relative(text: str) -> bool:
    """Whether ``text`` is a relative time for :func:`parse_time` (a number and a unit: ``24h``),
    not an absolute one (digits alone are Unix nanoseconds)."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    return m is not None and m.group(2) is not None


def _from_datetime(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    ns = (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if ns < 0:
        raise ValueError(f"time before 1970: {dt.isoformat()}")
    return ns


def parse_duration_ms(text: str) -> float:
    """A duration in milliseconds: ``250ms``, ``1.5s``, ``2m``, ``1h``; a bare number is
    milliseconds. Raises ``ValueError`` on anything else."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a duration: {text!r} (e.g. 250ms, 1.5s, 2m)")
    ms = float(m.group(1)) * _UNIT_NS[m.group(2) or "ms"] / 10**6
    if not math.isfinite(ms):
        raise ValueError(f"duration out of range: {text!r}")
    return ms
