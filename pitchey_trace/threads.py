"""Carry the current span into threads and thread pools without changing the program.

    from pitchey_trace.threads import instrument_threads
    instrument_threads()

Afterwards, work handed to another thread while a span is current runs in a copy of the
submitter's context, so the spans it opens are children of that span (as with asyncio tasks,
which copy the context by themselves):

- ``concurrent.futures.ThreadPoolExecutor.submit`` and ``map`` (``loop.run_in_executor``
  included);
- ``threading.Thread.start``: the thread's ``run`` (a subclass's own ``run`` too) runs in the
  context of the code that started it.

Nothing changes when no span is current: the work runs as it always did, in the thread's own
context. Child processes: :func:`pitchey_trace.auto.instrument_all` makes the span current at
``multiprocessing.Process.start`` the parent of the child's spans under the ``spawn`` and
``forkserver`` start methods too (``fork`` copies it by itself); a process pool's workers run
under the span current when each worker was started, not per task (pass ``inject``-ed headers
with a task for that). :func:`pitchey_trace.wrap_context` and
:class:`pitchey_trace.ContextThreadPoolExecutor` do the same for one callable or one pool.
``pitchey-trace run`` calls this (``--exclude threading`` leaves it off, and the processes').

gevent: when gevent is imported (call this after ``gevent.monkey.patch_all()``), the greenlets
``gevent.spawn``, ``gevent.spawn_later``, ``gevent.spawn_raw`` and ``gevent.pool`` make, and
``gevent.threadpool`` tasks, run in the span current when they were spawned too (each greenlet
starts with an empty context of its own): see ``pitchey_trace._gevent``.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pitchey_trace import _gevent, _safety
from pitchey_trace._context import CURRENT

__all__ = ["instrument_threads", "uninstrument_threads"]

_patched: list[tuple[type, str, Any]] = []


def _context_to_carry() -> contextvars.Context | None:
    """A copy of this context when a span (or a suppression) is current, else None."""
    return contextvars.copy_context() if CURRENT.get() is not None else None


def _wrap_submit(original: Any) -> Any:
    @functools.wraps(original)
    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        ctx = _context_to_carry()
        if ctx is None:
            return original(self, fn, *args, **kwargs)
        return original(self, ctx.run, fn, *args, **kwargs)

    return submit


def _wrap_start(original: Any) -> Any:
    @functools.wraps(original)
    def start(self: Any) -> None:
        # (the SDK's own threads start suppressed, whatever was current)
        ctx = None if self.name.startswith("pitchey-trace") else _context_to_carry()
        if ctx is not None:
            try:
                run = self.run  # (bound now: a subclass's own run, or the target's)
                self.run = functools.partial(ctx.run, run)
            except Exception as exc:  # (a thread object that takes no attribute: as before)
                _safety.report("threads.start", exc)
        original(self)

    return start


def instrument_threads() -> None:
    """Run work submitted to thread pools, and threads started, while a span is current, in
    that span's context; greenlets spawned with gevent too when gevent is imported. Idempotent
    (a second call instruments gevent imported since the first)."""
    try:
        _gevent.instrument_gevent()
    except Exception as exc:  # (gevent as it was: threads are still instrumented)
        _safety.report("threads.gevent", exc)
    if _patched:
        return
    # ThreadPoolExecutor.map goes through submit, so one patch covers both.
    for cls, name, wrap in (
        (ThreadPoolExecutor, "submit", _wrap_submit),
        (threading.Thread, "start", _wrap_start),
    ):
        # The class that defines it: after gevent's monkey.patch_all() (Python < 3.13)
        # threading.Thread is gevent's subclass, which inherits start (a KeyError here made
        # the call fail, and an app calling it at import failed to load).
        owner = next(c for c in cls.__mro__ if name in c.__dict__)
        original = owner.__dict__[name]
        setattr(owner, name, wrap(original))
        _patched.append((owner, name, original))


def uninstrument_threads() -> None:
    """Undo :func:`instrument_threads`."""
    _gevent.uninstrument_gevent()
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
