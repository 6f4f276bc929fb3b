"""Greenlets spawned with gevent start in the span current where they were spawned.

Each greenlet starts with an empty ``contextvars`` context (greenlet >= 0.4.17), so a span
opened in a spawned greenlet began a trace of its own. After :func:`instrument_gevent` the
greenlets made by ``gevent.spawn``, ``gevent.spawn_later``, ``gevent.spawn_raw`` and
``gevent.pool`` (``Group`` / ``Pool``: ``spawn``, ``apply*``, ``map*``, ``imap*``), and the
tasks of ``gevent.threadpool`` (``ThreadPool.spawn``, ``apply*``, ``map*``, ``imap*``, its
``ThreadPoolExecutor.submit``, the hub's ``threadpool``), run under the span current at that
call, as threads do after :func:`pitchey_trace.threads.instrument_threads`.

Only the current span is carried, not the whole context: other libraries' context variables
(Flask's request context among them) stay greenlet-local as before. ``gevent.Greenlet`` itself
is left as it is: compiled gevent makes it an immutable type (nothing of it can be replaced),
and putting a subclass in its place would break ``isinstance`` / ``type() is`` checks and the
classes subclassing it. So a greenlet made with ``Greenlet(fn)`` or ``Greenlet.spawn`` directly
starts without the span: pass ``pitchey_trace.wrap_context(fn)`` there. Nothing happens (and
gevent is not imported) until gevent is imported by the program.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any

from pitchey_trace._context import CURRENT

__all__ = ["instrument_gevent", "uninstrument_gevent"]

# (owner, attribute, original value) for each replacement, undone in reverse order
_replaced: list[tuple[Any, str, Any]] = []


def _carrying(base: Any) -> Any:
    """A subclass of the greenlet class ``base`` that runs under the span current when it was
    made (only when one was: otherwise it runs exactly as ``base``)."""

    class Carrying(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._pitchey_parent = CURRENT.get()
            super().__init__(*args, **kwargs)

        def run(self) -> Any:
            parent = self._pitchey_parent
            if parent is not None:
                self._pitchey_parent = None  # (a long-lived greenlet does not keep it alive)
                CURRENT.set(parent)  # (this greenlet's own context: nothing to reset)
            return super().run()

    Carrying.__name__ = Carrying.__qualname__ = base.__name__
    return Carrying


def _carried(fn: Any) -> Any:
    """``fn``, or when a span is current a function that runs ``fn`` under it. The span is
    reset after: a thread pool's thread runs one task after another in the same context."""
    parent = CURRENT.get()
    if parent is None or not callable(fn):  # (gevent's own TypeError for a non-callable)
        return fn

    def carried(*args: Any, **kwargs: Any) -> Any:
        token = CURRENT.set(parent)
        try:
            return fn(*args, **kwargs)
        finally:
            with contextlib.suppress(ValueError):  # (fn moved this greenlet to another context)
                CURRENT.reset(token)

    return carried


def _carrying_spawn_raw(original: Any) -> Any:
    @functools.wraps(original)
    def spawn_raw(function: Any, *args: Any, **kwargs: Any) -> Any:
        return original(_carried(function), *args, **kwargs)

    return spawn_raw


def _carrying_pool_spawn(original: Any) -> Any:
    @functools.wraps(original)
    def spawn(self: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, _carried(func), *args, **kwargs)

    return spawn


def _replace(owner: Any, name: str, value: Any) -> None:
    _replaced.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
    setattr(owner, name, value)


def instrument_gevent() -> bool:
    """Carry the current span into greenlets gevent spawns (see the module doc). Does nothing
    unless gevent is imported already; True when gevent is (now) instrumented. Idempotent."""
    if _replaced:
        return True
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return False
    import importlib

    _resolve_hub_imports(gevent)
    pool = importlib.import_module("gevent.pool")
    hub = importlib.import_module("gevent.hub")
    threadpool = importlib.import_module("gevent.threadpool")
    greenlet = _carrying(importlib.import_module("gevent.greenlet").Greenlet)
    try:
        _replace(gevent, "spawn", greenlet.spawn)
        _replace(gevent, "spawn_later", greenlet.spawn_later)
        _replace(gevent, "spawn_raw", _carrying_spawn_raw(gevent.spawn_raw))
        _replace(hub, "spawn_raw", _carrying_spawn_raw(hub.spawn_raw))
        # Every ThreadPool way in (apply*, map*, imap*, the executor) goes through spawn.
        _replace(
            threadpool.ThreadPool, "spawn", _carrying_pool_spawn(threadpool.ThreadPool.__dict__["spawn"])
        )
        _replace(pool.Group, "greenlet_class", greenlet)  # Group/Pool.spawn, apply
        _replace(pool, "Greenlet", greenlet)  # the pool's map, map_async, apply_async greenlets
        _replace(pool, "IMap", _carrying(pool.IMap))  # imap's own greenlet spawns the calls
        _replace(pool, "IMapUnordered", _carrying(pool.IMapUnordered))
    except BaseException:
        uninstrument_gevent()
        raise
    return True


def _resolve_hub_imports(gevent: Any) -> None:
    """Import now, in this thread, the modules gevent imports when a thread makes its first hub.
    The SDK's worker threads started before ``monkey.patch_all()`` (``pitchey-trace run``
    configures gunicorn's master before its gevent workers patch) each make a hub at their
    first wait after it, importing gevent's loop under import locks that patch_all made gevent
    locks, which need a hub: two threads doing it at once deadlocked (the flush hung)."""
    import contextlib

    # (an invalid GEVENT_* setting: left to gevent to report where it is used)
    with contextlib.suppress(Exception):
        for name in ("loop", "resolver", "threadpool"):
            getattr(gevent.config, name)  # (resolving a setting imports its module only)


def uninstrument_gevent() -> None:
    """Undo :func:`instrument_gevent`."""
    while _replaced:
        owner, name, original = _replaced.pop()
        setattr(owner, name, original)
