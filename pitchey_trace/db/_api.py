"""``traced_query`` and ``traced_transaction``: the one-call and decorator forms."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

import psycopg

from pitchey_trace import _safety
from pitchey_trace.db import _pipeline
from pitchey_trace.db._cursors import is_traced_class, traced_class
from pitchey_trace.db._decorators import query_entry, transaction_entry
from pitchey_trace.db._drivers import support
from pitchey_trace.db._instrument import instrument, is_instrumented, state_of
from pitchey_trace.db._ops import STATE_ATTR, ConnState
from pitchey_trace.db._transaction import AsyncTracedTransaction, TracedTransaction

__all__ = ["traced_query", "traced_transaction"]

F = TypeVar("F", bound=Callable[..., Any])

_CONNECTIONS = (psycopg.Connection, psycopg.AsyncConnection)
_CURSORS = (psycopg.Cursor, psycopg.AsyncCursor, psycopg.ServerCursor, psycopg.AsyncServerCursor)


# -- helpers -----------------------------------------------------------------------------------
def _passive_state(conn: Any) -> ConnState:
    """The connection's state; an uninstrumented connection gets one that only caches."""
    state = state_of(conn)
    if state is None:
        state = ConnState(conn)
        setattr(conn, STATE_ATTR, state)
    return state


def _instrument_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Instrument psycopg connections (and make cursors traced) among a call's arguments;
    return the first connection found (or None). Never raises."""
    found = None
    for value in (*args, *kwargs.values()):
        try:  # each argument on its own: one that cannot be traced does not hide the others
            conn = _connection_of(value)
            if conn is None:
                continue
            if found is None:
                found = conn
            if not is_instrumented(conn):
                instrument(conn)
        except Exception as exc:
            _safety.report("db.instrument_args", exc)
    return found


def _connection_of(value: Any) -> Any:
    """The connection of a connection or cursor argument (None for anything else); a cursor
    becomes traced on the way."""
    if isinstance(value, _CONNECTIONS) or support(value) is not None:
        return value
    if not isinstance(value, _CURSORS):
        return None
    if not is_traced_class(type(value)):
        try:
            # Same layout, extra methods: the cursor keeps working, now traced.
            value.__class__ = traced_class(type(value))
        except Exception as exc:  # (a cursor class whose layout differs): its queries go untraced
            _safety.report("db.instrument_args", exc)
    return value.connection


def _run_sync(target: Any, query: Any, params: Any) -> list[Any]:
    if isinstance(target, psycopg.Connection):
        with target.cursor() as cur:
            return _execute_sync(cur, target, query, params)
    return _execute_sync(target, target.connection, query, params)


def _execute_sync(cur: Any, conn: Any, query: Any, params: Any) -> list[Any]:
    if is_traced_class(type(cur)) and state_of(conn) is not None:
        cur.execute(query, params)  # already traced by the cursor class
    elif conn._pipeline is not None:
        state = _passive_state(conn)
        op = state.begin(cur, query, params)
        if op is None:
            cur.execute(query, params)
        else:
            entry = _pipeline.begin(cur, state, op, conn._pipeline)
            try:
                cur.execute(op[3], params)
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None)
    else:
        _passive_state(conn).execute(cur, query, params)
    return cur.fetchall() if cur.description is not None else []


async def _run_async(target: Any, query: Any, params: Any) -> list[Any]:
    if isinstance(target, psycopg.AsyncConnection):
        async with target.cursor() as cur:
            return await _execute_async(cur, target, query, params)
    return await _execute_async(target, target.connection, query, params)


async def _execute_async(cur: Any, conn: Any, query: Any, params: Any) -> list[Any]:
    if is_traced_class(type(cur)) and state_of(conn) is not None:
        await cur.execute(query, params)
    else:
        state = _passive_state(conn)
        op = state.begin(cur, query, params)
        if op is None:
            await cur.execute(query, params)
        elif conn._pipeline is not None:
            entry = _pipeline.begin(cur, state, op, conn._pipeline)
            try:
                await cur.execute(op[3], params)
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None)
        else:
            try:
                await cur.execute(op[3], params)
            except BaseException as exc:
                state.fail(op, exc)
                raise
            state.done(op, cur.rowcount)
    return await cur.fetchall() if cur.description is not None else []


# -- traced_query ------------------------------------------------------------------------------
@overload
def traced_query(
    conn: psycopg.Connection[Any] | psycopg.Cursor[Any], sql: Any, params: Any = None, /
) -> list[Any]: ...
@overload
def traced_query(
    conn: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any], sql: Any, params: Any = None, /
) -> Awaitable[list[Any]]: ...
@overload
def traced_query(fn: F, /) -> F: ...
@overload
def traced_query(
    *, table: str | None = None, name: str | None = None, operation: str | None = None
) -> Callable[[F], F]: ...
def traced_query(
    target: Any = None,
    sql: Any = None,
    params: Any = None,
    /,
    *,
    table: str | None = None,
    name: str | None = None,
    operation: str | None = None,
) -> Any:
    """Trace one query, or every query of a function.

    One call: ``rows = traced_query(conn, "SELECT * FROM pitches WHERE id = %s", (pid,))`` runs
    the statement in a client span and returns its rows (``[]`` for a statement that returns
    none). ``conn`` may be a connection or a cursor; with an ``AsyncConnection`` /
    ``AsyncCursor`` the call returns an awaitable. The connection does not need to be
    instrumented.

    Decorator: ``@traced_query`` or ``@traced_query(table="pitches", name=..., operation=...)``
    on a sync or ``async`` function. Each call runs in an internal span (named ``name`` or the
    function's qualified name) that parents the spans of the queries it runs. psycopg
    connections passed as arguments are instrumented on first use (cursors passed as
    arguments become traced cursors), so their queries are traced without further set-up.
    """
    return query_entry(
        target,
        sql,
        params,
        table,
        name,
        operation,
        is_target=_is_query_target,
        run=_run_one,
        instrument_args=_instrument_args,
    )


def _is_query_target(target: Any) -> bool:
    return isinstance(target, (*_CONNECTIONS, *_CURSORS)) or support(target) is not None


def _run_one(target: Any, sql: Any, params: Any) -> Any:
    driver = support(target)
    if driver is not None:
        return driver.traced_query(target, sql, params)
    if isinstance(target, (psycopg.AsyncConnection, psycopg.AsyncCursor, psycopg.AsyncServerCursor)):
        return _run_async(target, sql, params)
    return _run_sync(target, sql, params)


# -- traced_transaction ------------------------------------------------------------------------
@overload
def traced_transaction(
    conn: psycopg.Connection[Any],
    /,
    *,
    savepoint_name: str | None = None,
    force_rollback: bool = False,
    name: str | None = None,
) -> TracedTransaction: ...
@overload
def traced_transaction(
    conn: psycopg.AsyncConnection[Any],
    /,
    *,
    savepoint_name: str | None = None,
    force_rollback: bool = False,
    name: str | None = None,
) -> AsyncTracedTransaction: ...
@overload
def traced_transaction(fn: F, /) -> F: ...
@overload
def traced_transaction(
    *, savepoint_name: str | None = None, force_rollback: bool = False, name: str | None = None
) -> Callable[[F], F]: ...
def traced_transaction(
    target: Any = None,
    /,
    *,
    savepoint_name: str | None = None,
    force_rollback: bool = False,
    name: str | None = None,
) -> Any:
    """A traced ``conn.transaction()`` block, as a context manager or a decorator.

    ``with traced_transaction(conn) as tx:`` (``async with`` for an ``AsyncConnection``) opens
    a transaction (a savepoint when one is already open) in a span named ``TRANSACTION`` (or
    ``SAVEPOINT``, or ``name``) that records ``db.transaction.outcome`` (commit/rollback),
    ``db.transaction.rollback_reason`` (exception type, ``Rollback`` or ``force_rollback``),
    ``db.response.status_code`` (SQLSTATE), ``db.transaction.statement_count``; its duration
    is the span's. Nested ``conn.transaction()`` blocks become child ``SAVEPOINT`` spans. The
    connection is instrumented if it was not. ``tx`` is psycopg's ``Transaction``.

    ``@traced_transaction`` (or ``@traced_transaction(name=...)``) runs each call of a sync or
    ``async`` function inside such a block, on the first psycopg connection (or cursor's
    connection) among its arguments.

    Raises:
        TypeError: (decorator) no psycopg or asyncpg connection among the call's arguments.
    """
    return transaction_entry(
        target,
        is_connection=lambda t: isinstance(t, _CONNECTIONS) or support(t) is not None,
        transaction=lambda conn: _transaction(conn, savepoint_name, force_rollback, name),
        instrument_args=_instrument_args,
    )


def _transaction(conn: Any, savepoint_name: str | None, force_rollback: bool, name: str | None) -> Any:
    driver = support(conn)
    if driver is not None:
        return driver.traced_transaction(conn, savepoint_name, force_rollback, name)
    if not is_instrumented(conn):
        instrument(conn)
    state = state_of(conn)
    assert state is not None
    orig = type(conn).transaction.__get__(conn)
    cls = AsyncTracedTransaction if isinstance(conn, psycopg.AsyncConnection) else TracedTransaction
    return cls(conn, state, orig, savepoint_name, force_rollback, name)
