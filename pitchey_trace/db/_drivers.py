"""The drivers besides psycopg 3 (asyncpg, psycopg2): which one a connection belongs to, and the
public functions for installs without psycopg 3.

Each driver module (:mod:`._asyncpg`, :mod:`._psycopg2`) has the same functions:
``is_connection``, ``instrument(conn, *, sql_comments, capture_parameters)``,
``uninstrument``, ``is_instrumented``, ``traced_query(conn, sql, params)`` and
``traced_transaction(conn, savepoint_name, force_rollback, name)``. A driver module is
imported only once its driver is (a connection of it can exist only then).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace.db._decorators import query_entry, transaction_entry

__all__ = [
    "instrument",
    "instrument_args",
    "instrument_async",
    "is_instrumented",
    "query_api",
    "support",
    "transaction_api",
    "uninstrument",
]


def support(conn: object) -> ModuleType | None:
    """The driver module for ``conn`` when it is an asyncpg or psycopg2 connection, else None."""
    modules = sys.modules
    if "asyncpg" in modules:
        from pitchey_trace.db import _asyncpg

        if _asyncpg.is_connection(conn):
            return _asyncpg
    if "psycopg2" in modules:
        from pitchey_trace.db import _psycopg2

        if _psycopg2.is_connection(conn):
            return _psycopg2
    return None


def _support(conn: object) -> ModuleType:
    found = support(conn)
    if found is None:
        raise TypeError(f"expected an asyncpg or psycopg2 connection, got {type(conn).__name__}")
    return found


def instrument_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """Instrument the asyncpg / psycopg2 connections among a call's arguments; return the first."""
    found = None
    try:
        for value in (*args, *kwargs.values()):
            driver = support(value)
            if driver is not None:
                if not driver.is_instrumented(value):
                    driver.instrument(value)
                if found is None:
                    found = value
    except Exception as exc:
        _safety.report("db.instrument_args", exc)
    return found


# -- the public functions when psycopg 3 is not installed (pitchey_trace.db binds these) -------
def instrument(conn: Any, *, sql_comments: bool | None = None, capture_parameters: bool | None = None) -> Any:
    """Trace every statement run on ``conn`` (asyncpg or psycopg2); returns ``conn``."""
    return _support(conn).instrument(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)


async def instrument_async(
    conn: Any, *, sql_comments: bool | None = None, capture_parameters: bool | None = None
) -> None:
    """:func:`instrument` as a coroutine, for ``asyncpg.create_pool(init=instrument_async)``."""
    instrument(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)


def uninstrument(conn: Any) -> Any:
    """Undo :func:`instrument`. Returns ``conn``."""
    return _support(conn).uninstrument(conn)


def is_instrumented(conn: Any) -> bool:
    """True when :func:`instrument` is in effect on ``conn``."""
    driver = support(conn)
    return driver is not None and bool(driver.is_instrumented(conn))


def query_api(
    target: Any = None,
    sql: Any = None,
    params: Any = None,
    /,
    *,
    table: str | None = None,
    name: str | None = None,
    operation: str | None = None,
) -> Any:
    """``traced_query`` without psycopg 3: ``rows = traced_query(conn, sql, params)`` (awaitable
    for asyncpg) or ``@traced_query(table=..., name=..., operation=...)``."""
    return query_entry(
        target,
        sql,
        params,
        table,
        name,
        operation,
        is_target=lambda t: support(t) is not None,
        run=lambda conn, q, p: _support(conn).traced_query(conn, q, p),
        instrument_args=instrument_args,
    )


def transaction_api(
    target: Any = None,
    /,
    *,
    savepoint_name: str | None = None,
    force_rollback: bool = False,
    name: str | None = None,
) -> Any:
    """``traced_transaction`` without psycopg 3: ``with`` / ``async with
    traced_transaction(conn):`` or ``@traced_transaction``."""
    return transaction_entry(
        target,
        is_connection=lambda t: support(t) is not None,
        transaction=lambda conn: _support(conn).traced_transaction(
            conn, savepoint_name, force_rollback, name
        ),
        instrument_args=instrument_args,
    )
