"""``instrument(conn)`` / ``uninstrument(conn)``: turn tracing on and off for one connection.

Instrumenting swaps the connection's cursor factories for traced subclasses (see
:mod:`pitchey_trace.db._cursors`) and wraps its ``transaction()``, ``tpc_*``, ``commit()`` and
``rollback()`` methods on the instance; the connection object itself stays what it was (same
class, ``isinstance`` checks unchanged).
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from pitchey_trace import _safety
from pitchey_trace.db._commit import DRIVER_HOUSEKEEPING, END_METHODS, make_end_methods
from pitchey_trace.db._cursors import is_traced_factory, traced_factory
from pitchey_trace.db._drivers import support
from pitchey_trace.db._ops import STATE_ATTR, ConnState, end_abandoned_blocks, otel_replaced
from pitchey_trace.db._pipeline import statement_error
from pitchey_trace.db._tpc import make_tpc_methods
from pitchey_trace.db._transaction import AsyncTracedTransaction, TracedTransaction

_TPC_METHODS = ("tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "tpc_recover")
_ACTIVE = pq.TransactionStatus.ACTIVE
_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR

__all__ = ["instrument", "instrument_async", "is_instrumented", "state_of", "uninstrument"]

C = TypeVar("C", psycopg.Connection[Any], psycopg.AsyncConnection[Any])


def _check(conn: object) -> None:
    if not isinstance(conn, (psycopg.Connection, psycopg.AsyncConnection)):
        raise TypeError(
            "expected a psycopg Connection or AsyncConnection, or an asyncpg or psycopg2 connection, "
            f"got {type(conn).__name__}"
        )


def state_of(conn: Any) -> ConnState | None:
    """The connection's tracing state, or None when it was never instrumented."""
    return getattr(conn, STATE_ATTR, None)


def is_instrumented(conn: Any) -> bool:
    """True when ``instrument(conn)`` is in effect."""
    driver = support(conn)
    if driver is not None:
        return bool(driver.is_instrumented(conn))
    state = state_of(conn)
    return state is not None and state.instrumented


_OTEL_MODULES = "opentelemetry.instrumentation."


def _warn_if_doubled(conn: Any) -> None:
    """OpenTelemetry's psycopg / psycopg2 instrumentation already wraps ``conn``'s cursors (its
    ``instrument()`` or ``instrument_connection()``; its traced cursor class, or a class derived
    from it, is the cursor factory): pitchey's traced cursor derives from that class, so each
    query is two spans. Not an error: said once, counted. (Once per connection, at instrument
    time: a walk of one class's MRO.)"""
    try:
        factory = getattr(conn, "cursor_factory", None)
        for cls in factory.__mro__ if isinstance(factory, type) else ():
            module = getattr(cls, "__module__", None)
            if isinstance(module, str) and module.startswith(_OTEL_MODULES):
                library = module[len(_OTEL_MODULES) :].partition(".")[0]
                _safety.warn_once(
                    f"otel.duplicate_instrumentation.{library}",
                    "pitchey_trace: both OpenTelemetry's %s instrumentation and "
                    "pitchey_trace.db.instrument() are on for a connection: each query is recorded "
                    "as two client spans, side by side; turn one of them off",
                    library,
                )
                return
    except Exception as exc:  # (an unusual factory or connection: no warning, never an error)
        _safety.report("db.instrument", exc)


def _make_transaction(conn: Any, state: ConnState) -> Any:
    """The ``transaction()`` set on the instance. It holds the connection weakly: a strong
    reference from the connection's own ``__dict__`` would be a cycle, and a dropped connection
    would stay open until the cycle collector ran."""
    method = type(conn).transaction
    ref = weakref.ref(conn)
    cls = AsyncTracedTransaction if isinstance(conn, psycopg.AsyncConnection) else TracedTransaction

    def transaction(savepoint_name: str | None = None, force_rollback: bool = False) -> Any:
        target = ref()
        if target is None:  # (only reachable through a reference to this function alone)
            raise ReferenceError("the connection of this transaction() was garbage-collected")
        orig = method.__get__(target)
        if state_of(target) is not state or not state.instrumented:
            return orig(savepoint_name, force_rollback)
        factory = target.cursor_factory
        otel_replaced(factory, is_traced_factory(factory))
        return cls(target, state, orig, savepoint_name, force_rollback)

    transaction.__doc__ = method.__doc__
    transaction.__signature__ = inspect.signature(method.__get__(conn))  # type: ignore[attr-defined]
    return transaction


def _pending(conn: Any) -> bool:
    """True when ``conn.commit()`` / ``rollback()`` will end a transaction: one is in progress
    (in pipeline mode the status is ACTIVE while results are unsynced; with autocommit off
    psycopg has sent BEGIN) and psycopg will not refuse the call (inside a ``transaction()``
    block or a two-phase transaction it raises without sending anything)."""
    if conn._num_transactions or getattr(conn, "_tpc", None) is not None:
        return False
    status = conn.pgconn.transaction_status
    return status in (_INTRANS, _INERROR) or (status == _ACTIVE and not conn.autocommit)


def _failed(conn: Any) -> bool:
    return bool(conn.pgconn.transaction_status == _INERROR)


def _skipped(conn: Any, exc: BaseException) -> bool:
    """After a failing commit in pipeline mode: psycopg raised an earlier statement's error
    (as it queued the COMMIT or at its sync), so the COMMIT was skipped or never sent and the
    transaction is still open. Told by the pipeline's record of its statements' errors (the
    status may still be ACTIVE before the sync's answer is read); without one, by the
    transaction still being failed."""
    pipeline = conn._pipeline
    if pipeline is None:
        return False
    known = statement_error(pipeline, exc)
    if known is not None:
        return known
    return bool(conn.pgconn.transaction_status == _INERROR)


def _make_end_methods(conn: Any, state: ConnState) -> dict[str, Any]:
    def is_traced(c: Any) -> bool:
        return state_of(c) is state and state.instrumented

    is_async = isinstance(conn, psycopg.AsyncConnection)
    methods = make_end_methods(
        conn, state, is_async, is_traced=is_traced, pending=_pending, failed=_failed, skipped=_skipped
    )
    # tpc_recover() rolls back, through self.rollback(), the transaction its query began: the
    # driver's housekeeping, not a transaction of the application.
    ref = weakref.ref(conn)
    method = type(conn).tpc_recover

    def target() -> Any:
        found = ref()
        if found is None:  # (only through a reference to the function alone)
            raise ReferenceError("the connection of this method was garbage-collected")
        return found

    if is_async:

        async def atpc_recover() -> Any:
            token = DRIVER_HOUSEKEEPING.set(True)
            try:
                return await method(target())
            finally:
                DRIVER_HOUSEKEEPING.reset(token)

        methods["tpc_recover"] = atpc_recover
    else:

        def tpc_recover() -> Any:
            token = DRIVER_HOUSEKEEPING.set(True)
            try:
                return method(target())
            finally:
                DRIVER_HOUSEKEEPING.reset(token)

        methods["tpc_recover"] = tpc_recover
    methods["tpc_recover"].__doc__ = method.__doc__
    return methods


def instrument(conn: C, *, sql_comments: bool | None = None, capture_parameters: bool | None = None) -> C:
    """Trace every statement run on ``conn`` and its cursors; returns ``conn``.

    Covers ``execute``, ``executemany``, ``copy`` and ``stream`` on the connection and on every
    cursor it creates afterwards (client-side and server-side/named cursors), and turns
    ``conn.transaction()`` blocks into ``TRANSACTION`` / ``SAVEPOINT`` spans. Works for
    ``psycopg.Connection`` and ``psycopg.AsyncConnection``. Calling it again is harmless (it
    only updates the overrides).

    An ``asyncpg.Connection`` (or a pool's connection proxy) is traced too: its statement
    methods, prepared statements, cursors and ``transaction()``; ``sql_comments`` does not
    apply to it. For an asyncpg pool: ``asyncpg.create_pool(dsn, init=instrument_async)``.
    So is a psycopg2 connection: its cursors, through its ``cursor_factory``. See
    ``docs/database.md``.

    With OpenTelemetry's psycopg or psycopg2 instrumentation already on for the connection,
    each query is two client spans (its and pitchey's): a warning says so once
    (counted as ``misuse.otel.duplicate_instrumentation.<library>``); turn one of them off.

    Set a custom ``cursor_factory`` before instrumenting (or pass it to ``connect``): the traced
    class is derived from the factory in place at this moment.

    With ``psycopg_pool``: ``ConnectionPool(conninfo, configure=instrument)``; for
    ``AsyncConnectionPool`` use ``configure=instrument_async``.

    Args:
        conn: the connection.
        sql_comments: override :func:`pitchey_trace.db.configure`'s ``sql_comments`` for this
            connection (None: follow the global setting).
        capture_parameters: override ``capture_parameters`` for this connection.

    Raises:
        TypeError: ``conn`` is not a psycopg or asyncpg connection.
    """
    driver = support(conn)
    if driver is not None:
        if not driver.is_instrumented(conn):
            _warn_if_doubled(conn)
        return driver.instrument(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)  # type: ignore[no-any-return]
    _check(conn)
    state = state_of(conn)
    if state is not None and state.instrumented:
        state.set_overrides(sql_comments, capture_parameters)
        for attr in ("cursor_factory", "server_cursor_factory"):
            factory = getattr(conn, attr)
            if otel_replaced(factory, is_traced_factory(factory)):
                setattr(conn, attr, traced_factory(factory))  # (OpenTelemetry's, traced as any)
        return conn
    _warn_if_doubled(conn)
    state = ConnState(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)
    # Each part on its own: what cannot be traced on an unusual connection (a cursor factory
    # that is a function, a subclass whose transaction() is a property) stays as it was, and
    # the rest is traced. Nothing here raises into the caller (a pool's configure callback).
    state.orig_cursor_factory = conn.cursor_factory
    state.orig_server_cursor_factory = conn.server_cursor_factory
    try:
        conn.cursor_factory = traced_factory(conn.cursor_factory)
        conn.server_cursor_factory = traced_factory(conn.server_cursor_factory)
    except Exception as exc:
        _safety.report("db.instrument", exc)
    try:
        methods = {"transaction": _make_transaction(conn, state)}
        methods.update(make_tpc_methods(conn, state, isinstance(conn, psycopg.AsyncConnection)))
        methods.update(_make_end_methods(conn, state))
    except Exception as exc:
        _safety.report("db.instrument", exc)
        methods = {}
    for name, method in methods.items():
        if hasattr(type(inspect.getattr_static(type(conn), name, None)), "__set__"):
            continue  # (a property or other data descriptor of the class wins over the instance)
        try:
            setattr(conn, name, method)
        except Exception as exc:
            _safety.report("db.instrument", exc)
    state.instrumented = True
    setattr(conn, STATE_ATTR, state)
    try:  # (a block left open when the connection goes: its span ends, see end_abandoned_blocks)
        weakref.finalize(conn, end_abandoned_blocks, state).atexit = False  # (not collected then)
    except Exception as exc:
        _safety.report("db.instrument", exc)
    return conn


async def instrument_async(
    conn: Any,
    *,
    sql_comments: bool | None = None,
    capture_parameters: bool | None = None,
) -> None:
    """:func:`instrument` as a coroutine, for ``AsyncConnectionPool(configure=instrument_async)``
    and ``asyncpg.create_pool(init=instrument_async)`` (the pools await these callbacks)."""
    instrument(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)


def uninstrument(conn: C) -> C:
    """Undo :func:`instrument`: restore the cursor factories, ``transaction()``, the ``tpc_*``
    methods and ``commit()`` / ``rollback()``.

    Cursors created while instrumented stop tracing too. Returns ``conn``.
    """
    driver = support(conn)
    if driver is not None:
        return driver.uninstrument(conn)  # type: ignore[no-any-return]
    _check(conn)
    state = state_of(conn)
    if state is None:
        return conn
    state.instrumented = False
    if is_traced_factory(conn.cursor_factory) and state.orig_cursor_factory is not None:
        conn.cursor_factory = state.orig_cursor_factory
    if is_traced_factory(conn.server_cursor_factory) and state.orig_server_cursor_factory is not None:
        conn.server_cursor_factory = state.orig_server_cursor_factory
    for name in ("transaction", *_TPC_METHODS, *END_METHODS):
        conn.__dict__.pop(name, None)
    delattr(conn, STATE_ATTR)
    return conn
