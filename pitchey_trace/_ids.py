"""Trace and span ids: random ints, formatted as lowercase hex only when exported.

``random.getrandbits`` is the fastest uniform source in CPython and is reseeded in the child
after ``os.fork()`` by the random module itself. Every bit of a trace id we generate is random,
so we honestly set the W3C Level 2 "random" trace flag on traces we start.
"""

from __future__ import annotations

from random import getrandbits

__all__ = ["FLAG_RANDOM", "FLAG_SAMPLED", "new_span_id", "new_trace_id", "span_hex", "trace_hex"]

FLAG_SAMPLED = 0x01
FLAG_RANDOM = 0x02


def new_trace_id() -> int:
    """A non-zero random 128-bit trace id."""
    tid = getrandbits(128)
    while not tid:  # pragma: no cover - 2**-128
        tid = getrandbits(128)
    return tid


def new_span_id() -> int:
    """A non-zero random 64-bit span id."""
    sid = getrandbits(64)
    while not sid:  # pragma: no cover - 2**-64
        sid = getrandbits(64)
    return sid


def trace_hex(trace_id: int) -> str:
    """32 lowercase hex digits."""
    return f"{trace_id:032x}"


def span_hex(span_id: int) -> str:
    """16 lowercase hex digits."""
    return f"{span_id:016x}"
