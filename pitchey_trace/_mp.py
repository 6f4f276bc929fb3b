"""Carry the current span into child processes, whatever the multiprocessing start method.

A ``fork`` child copies its parent, contextvars included, so its spans already join the
parent's trace. A ``spawn`` or ``forkserver`` child is a new interpreter: it gets only what is
pickled with its ``Process`` object. So ``Process.start`` stores the current span's context on
the object as plain data (ints and tuples of str: a child that cannot import pitchey_trace
unpickles it all the same and ignores it), and ``Process._bootstrap``, in an instrumented
child, runs the child's work with that context current when the child has none of its own (a
fork child has the span itself, so it is left as it was).

Pool and ProcessPoolExecutor workers are processes too: their work runs under the span current
when the worker was started, as with fork. Carrying each task's submitter would put an SDK
object into every pickled task, which a worker without pitchey_trace could not unpickle (the
pool would break), so per-task parents are left to ``inject``/``extract`` (docs/operations.md).

``_bootstrap`` also gives a spawn child what a fork child gets at fork (``_config``): SIGTERM's
default action while its target runs, and the flush of a Pool worker's spans at its exit and
on ``terminate()`` between tasks.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from pitchey_trace import _config, _safety
from pitchey_trace._context import CURRENT

__all__ = ["instrument_processes", "uninstrument_processes"]

# The attribute on the Process object (pickled with it); its value: trace id, span id, flags,
# tracestate and baggage pairs, builtins only.
ATTRIBUTE = "_pitchey_trace_parent"
Carried = tuple[int, int, int, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]

_patched: list[tuple[type, str, Any]] = []


def _plain(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    # (a str subclass would be pickled by its class, which the child may not have)
    return tuple((str.__str__(key), str.__str__(value)) for key, value in pairs)


def context_to_carry() -> Carried | None:
    """The current span's context as plain data, or None when no span (or a suppression) is
    current."""
    current = CURRENT.get()
    if current is None or not current.trace_id:
        return None
    return (
        current.trace_id,
        current.span_id,
        current.trace_flags,
        _plain(current.trace_state),
        _plain(current.baggage),
    )


def carried_scope(process: Any) -> Any:
    """What to enter around a child's work: the remote parent carried on ``process``; None
    when nothing was carried, it is unusable, or a span is already current (fork)."""
    if CURRENT.get() is not None:
        return None
    carried = getattr(process, "__dict__", {}).get(ATTRIBUTE)
    if carried is None:
        return None
    from pitchey_trace._span import TraceContext
    from pitchey_trace._tracer import use_context

    try:
        trace_id, span_id, flags, state, baggage = carried
        context = TraceContext(trace_id, span_id, flags, state, baggage, is_remote=True)
    except Exception as exc:  # (not what start() stores: the child runs untraced by it)
        _safety.warn_once(
            "multiprocessing.context", "pitchey_trace: unusable parent context on the process: %r", exc
        )
        return None
    return use_context(context)


def _wrap_start(original: Any) -> Any:
    @functools.wraps(original)
    def start(self: Any) -> None:
        try:
            carried = context_to_carry()
            if carried is not None:
                self.__dict__[ATTRIBUTE] = carried
        except Exception as exc:  # (a process object that takes no attribute: as before)
            _safety.report("multiprocessing.start", exc)
        original(self)

    return start


def _wrap_bootstrap(original: Any) -> Any:
    @functools.wraps(original)
    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:  # (before the bootstrap: it runs the after-fork callbacks this may register)
            _config._before_process_bootstrap(self)
        except Exception as exc:
            _safety.report("multiprocessing.exit", exc)
        scope = None
        try:
            scope = carried_scope(self)
        except Exception as exc:
            _safety.report("multiprocessing.bootstrap", exc)
        if scope is None:
            return original(self, *args, **kwargs)
        with scope:
            return original(self, *args, **kwargs)

    return _bootstrap


def instrument_processes() -> None:
    """Make the span current at ``Process.start`` the parent of the child's spans under the
    ``spawn`` and ``forkserver`` start methods (``fork`` does so by itself). Needed in the
    parent and in the child (``pitchey-trace run`` does both; from code, call it at import
    time of the main module, which spawn children import again). Idempotent."""
    if _patched:
        return
    base = importlib.import_module("multiprocessing.process").BaseProcess
    for name, wrap in (("start", _wrap_start), ("_bootstrap", _wrap_bootstrap)):
        original = base.__dict__[name]
        setattr(base, name, wrap(original))
        _patched.append((base, name, original))


def uninstrument_processes() -> None:
    """Undo :func:`instrument_processes`."""
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
