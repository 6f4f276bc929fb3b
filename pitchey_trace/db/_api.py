"""``traced_query`` and ``traced_transaction``: the one-call and decorator forms."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, overload

import psycopg

from pitchey_trace import _safety
from pitchey_trace._span import AnySpan, AttributeValue, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.db._cursors import is_traced_class, traced_class
from pitchey_trace.db._instrument import instrument, is_instrumented, state_of
from pitchey_trace.db._ops import STATE_ATTR, ConnState, record_error
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
    try:
        for value in (*args, *kwargs.values()):
            conn = None
            if isinstance(value, _CONNECTIONS):
                conn = value
            elif isinstance(value, _CURSORS):
                conn = value.connection
                if not is_traced_class(type(value)):
                    # Same slots, extra methods: the cursor keeps working, now traced.
                    value.__class__ = traced_class(type(value))
            if conn is None:
                continue
            if not is_instrumented(conn):
                instrument(conn)  # type: ignore[type-var]
            if found is None:
                found = conn
    except Exception as exc:
        _safety.report("db.instrument_args", exc)
    return found


def _enter_span(name: str, attrs: dict[str, AttributeValue]) -> AnySpan | None:
    try:
        tracer = get_tracer()
        if tracer.pipeline is None:
            return None
        span = tracer.start_span(name, attrs, SpanKind.INTERNAL)
        span.__enter__()
        return span
    except Exception as exc:
        _safety.report("db.traced_query", exc)
        return None


def _exit_span(span: AnySpan | None, exc: BaseException | None) -> None:
    if span is None:
        return
    try:
        if isinstance(exc, Exception):
            record_error(span, exc)  # values from the message never reach the span
    except Exception as internal:
        _safety.report("db.traced_query", internal)
    try:
        span.__exit__(None, None, None)
    except Exception as internal:
        _safety.report("db.traced_query", internal)


def _run_sync(target: Any, query: Any, params: Any) -> list[Any]:
    if isinstance(target, psycopg.Connection):
        with target.cursor() as cur:
            return _execute_sync(cur, target, query, params)
    return _execute_sync(target, target.connection, query, params)


def _execute_sync(cur: Any, conn: Any, query: Any, params: Any) -> list[Any]:
    if is_traced_class(type(cur)) and state_of(conn) is not None:
        cur.execute(query, params)  # already traced by the cursor class
    else:
        state = _passive_state(conn)
        op = state.begin(cur, query, params)
        if op is None:
            cur.execute(query, params)
        else:
            try:
                cur.execute(op[3], params)
            except BaseException as exc:
                state.fail(op, exc)
                raise
            state.done(op, cur.rowcount)
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
    if target is not None and not isinstance(target, (*_CONNECTIONS, *_CURSORS)):
        if callable(target) and sql is None and params is None:
            return _decorate_query(target, table, name, operation)
        raise TypeError(
            "traced_query(conn_or_cursor, sql, params) or @traced_query(table=...); "
            f"got {type(target).__name__}"
        )
    if target is None:
        if sql is not None or params is not None:
            raise TypeError("traced_query: the connection or cursor is missing")
        return lambda fn: _decorate_query(fn, table, name, operation)
    if sql is None:
        raise TypeError("traced_query(conn, sql, params): sql is missing")
    if isinstance(target, (psycopg.AsyncConnection, psycopg.AsyncCursor, psycopg.AsyncServerCursor)):
        return _run_async(target, sql, params)
    return _run_sync(target, sql, params)


def _decorate_query(func: F, table: str | None, name: str | None, operation: str | None) -> F:
    if not callable(func):
        raise TypeError("@traced_query decorates a function")
    span_name = name or func.__qualname__
    attrs: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "code.function.name": f"{func.__module__}.{func.__qualname__}",
    }
    if table:
        attrs["db.collection.name"] = table
    if operation:
        attrs["db.operation.name"] = operation

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            _instrument_args(args, kwargs)
            span = _enter_span(span_name, attrs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                _exit_span(span, exc)
                raise
            _exit_span(span, None)
            return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _instrument_args(args, kwargs)
        span = _enter_span(span_name, attrs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _exit_span(span, exc)
            raise
        _exit_span(span, None)
        return result

    return wrapper  # type: ignore[return-value]


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
        TypeError: (decorator) no psycopg connection among the call's arguments.
    """
    if target is None:
        return lambda fn: _decorate_transaction(fn, savepoint_name, force_rollback, name)
    if isinstance(target, _CONNECTIONS):
        return _transaction(target, savepoint_name, force_rollback, name)
    if callable(target):
        return _decorate_transaction(target, savepoint_name, force_rollback, name)
    raise TypeError(
        f"traced_transaction expects a psycopg connection or a function, got {type(target).__name__}"
    )


def _transaction(
    conn: Any, savepoint_name: str | None, force_rollback: bool, name: str | None
) -> TracedTransaction | AsyncTracedTransaction:
    if not is_instrumented(conn):
        instrument(conn)
    state = state_of(conn)
    assert state is not None
    orig = type(conn).transaction.__get__(conn)
    cls = AsyncTracedTransaction if isinstance(conn, psycopg.AsyncConnection) else TracedTransaction
    return cls(conn, state, orig, savepoint_name, force_rollback, name)


def _decorate_transaction(func: F, savepoint_name: str | None, force_rollback: bool, name: str | None) -> F:
    where = f"{func.__module__}.{func.__qualname__}"

    def connection_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        conn = _instrument_args(args, kwargs)
        if conn is None:
            raise TypeError(f"@traced_transaction: no psycopg connection among the arguments of {where}")
        return conn

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with _transaction(connection_of(args, kwargs), savepoint_name, force_rollback, name):  # type: ignore[union-attr]
                return await func(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _transaction(connection_of(args, kwargs), savepoint_name, force_rollback, name):  # type: ignore[union-attr]
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
