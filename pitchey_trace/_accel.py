"""Loads the optional C accelerator (``_speedups.c``) once, for the modules that use it.

Both names are None when it is not compiled here or ``PITCHEY_TRACE_PURE_PYTHON=1`` is set;
callers then run their Python code, which gives the same results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from random import getrandbits
from typing import Any

from pitchey_trace._context import CURRENT
from pitchey_trace._span import Limits, NonRecordingSpan, Span, StatusCode
from pitchey_trace.records import NO_ITEMS

__all__ = [
    "build_audit_record",
    "build_audit_records",
    "build_span_records",
    "install_tracer",
    "rollup_chunk",
    "tail_offer",
    "take_chunk",
    "untrack_records",
    "web_setup",
]

build_span_records: Callable[..., list[dict[str, Any]]] | None = None
rollup_chunk: Callable[..., dict[tuple[int, str, Any], tuple[Any, ...]]] | None = None
take_chunk: Callable[..., tuple[int, list[Any], list[Span], list[Span], list[Any]]] | None = None
install_tracer: Callable[[type, Any, type], None] | None = None
untrack_records: Callable[[list[Any]], int] | None = None
build_audit_record: Callable[..., dict[str, Any] | None] | None = None
tail_offer: Callable[..., tuple[int, int, int, int]] | None = None
build_audit_records: Callable[..., tuple[list[dict[str, Any]], list[Any]]] | None = None
#: Set up by pitchey_trace.web._common (web_setup), which then uses asgi_begin/request_end.
web_setup: Callable[..., None] | None = None
asgi_begin: Callable[..., Any] | None = None
request_end: Callable[..., Any] | None = None

# (read at import: cannot raise. Only a true value turns the accelerator off: "false", "no"
# and "off" did too, as did a typo; an unknown value keeps the C code)
if os.environ.get("PITCHEY_TRACE_PURE_PYTHON", "").strip().lower() not in ("1", "true", "yes", "on"):
    try:
        from pitchey_trace import _speedups

        _speedups.setup(Span, StatusCode.UNSET, NO_ITEMS)
        # Span.__enter__, __exit__, set_attribute and end become C methods with the same
        # behaviour (they call the Python code for anything but the common case: keywords, a
        # re-entered span, odd arguments); the Python methods stay reachable for that.
        Span._py_end = Span.end  # type: ignore[attr-defined]
        Span._py_exit = Span.__exit__  # type: ignore[attr-defined]
        Span._py_set_attribute = Span.set_attribute  # type: ignore[attr-defined]
        _speedups.install_methods(CURRENT, Limits, getrandbits, NonRecordingSpan)
    except ImportError:
        pass
    except Exception as exc:  # a Span class the accelerator does not fit: stay on Python
        logging.getLogger("pitchey_trace").warning("pitchey_trace: C accelerator disabled: %s", exc)
    else:
        build_span_records = _speedups.build_span_records
        rollup_chunk = _speedups.rollup_chunk
        take_chunk = _speedups.take_chunk
        install_tracer = _speedups.install_tracer
        untrack_records = _speedups.untrack_records
        build_audit_record = _speedups.build_audit_record
        tail_offer = _speedups.tail_offer
        build_audit_records = _speedups.build_audit_records
        web_setup = _speedups.web_setup
        asgi_begin = _speedups.asgi_begin
        request_end = _speedups.request_end
