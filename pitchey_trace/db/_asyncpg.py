"""asyncpg support: ``instrument(conn)`` on an ``asyncpg.Connection``.

asyncpg's ``Connection`` has ``__slots__``, so methods cannot be replaced on the instance as
for psycopg. Instead the connection's class is swapped for a traced subclass that adds no
slot (same memory layout; ``isinstance`` checks still pass), and the per-connection state
lives in a weak mapping. Every statement method becomes a client span with the same
attributes, slow-query log, audit records and error scrubbing as psycopg's (the shared code
is :mod:`pitchey_trace.db._ops`):

* ``execute``, ``executemany``, ``fetch``, ``fetchrow``, ``fetchval``, ``fetchmany``;
* the four ``copy_*`` methods (one ``COPY`` span each);
* ``prepare()``: each execution of the prepared statement (SQLAlchemy's asyncpg dialect runs
  every statement this way);
* ``cursor()``: iterating it is one span (rows yielded); an awaited cursor is a ``DECLARE``
  span, then a ``FETCH`` / ``MOVE`` span per round trip;
* ``transaction()``: a ``TRANSACTION`` (or ``SAVEPOINT``) span, current inside the block.

SQL comments are never added here: asyncpg prepares and caches every statement by its text,
and a comment unique to each call would defeat that cache (a prepare round trip per query).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Sized
from types import TracebackType
from typing import Any

import asyncpg
import asyncpg.pool

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT, suppress_tracing
from pitchey_trace._span import AttributeValue
from pitchey_trace.db._ops import ConnState, Op, Stmt, set_batch_size, transaction_outcome

__all__ = [
    "instrument",
    "is_connection",
    "is_instrumented",
    "traced_query",
    "traced_transaction",
    "uninstrument",
]

_Connection: Any = asyncpg.Connection
_Proxy: Any = asyncpg.pool.PoolConnectionProxy

#: Tracing state of each instrumented connection (the connection has no room for it), by id():
#: a plain dict lookup per statement; the entry goes when the connection does.
_STATES: dict[int, ConnState] = {}
#: Traced subclass of each connection class seen (asyncpg's, or a ``connection_class``).
_TRACED: dict[type, type] = {}


def is_connection(obj: object) -> bool:
    """True for an asyncpg connection or a pool's connection proxy."""
    return isinstance(obj, _Connection)


def _raw(conn: Any) -> Any:
    """The connection behind a pool's proxy (``pool.acquire()`` hands out proxies)."""
    if isinstance(conn, _Proxy):
        raw = getattr(conn, "_con", None)
        if raw is None:
            raise TypeError("the pool connection was released")
        return raw
    return conn


def _state(conn: Any) -> ConnState | None:
    state = _STATES.get(id(conn))
    return state if state is not None and state.instrumented else None


def _connection_attributes(conn: Any) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {"db.system.name": "postgresql"}
    try:
        params = getattr(conn, "_params", None)
        database = getattr(params, "database", None)
        if database:
            attrs["db.namespace"] = str(database)
        addr = getattr(conn, "_addr", None)
        if isinstance(addr, str):  # a unix socket: the socket file's directory
            attrs["server.address"] = addr.rsplit("/", 1)[0] or "/"
            attrs["network.transport"] = "unix"
        elif isinstance(addr, tuple) and len(addr) >= 2:
            attrs["server.address"] = str(addr[0])
            attrs["server.port"] = int(addr[1])
    except Exception as exc:  # private attributes of another asyncpg version: spans carry less
        _safety.report("db.connection_info", exc)
    return attrs


def _status_rows(status: Any) -> int:
    """Rows counted in a command status (``INSERT 0 3``, ``UPDATE 2``, ``SELECT 5``); -1 if none."""
    if isinstance(status, str):
        tail = status.rpartition(" ")[2]
        if tail.isdigit():
            return int(tail)
    return -1


def _len(result: Any) -> int:
    return len(result) if isinstance(result, Sized) else -1


def _one(result: Any) -> int:
    return 0 if result is None else 1


def _unknown(_: Any) -> int:
    return -1


async def _run(
    state: ConnState | None,
    query: Any,
    params: Any,
    call: Callable[[], Awaitable[Any]],
    rows: Callable[[Any], int],
    batch: Any = None,
) -> Any:
    """Run one statement in a span (``call`` runs it); ``rows`` counts what it returned."""
    op = state.begin(None, query, params) if state is not None else None
    if op is None:
        return await call()
    if batch is not None:
        set_batch_size(op[0], batch)
    try:
        result = await call()
    except BaseException as exc:
        state.fail(op, exc)  # type: ignore[union-attr]
        raise
    state.done(op, rows(result))  # type: ignore[union-attr]
    return result


def _copy_text(table_name: Any, schema_name: Any, direction: str) -> str:
    table = f"{schema_name}.{table_name}" if schema_name else str(table_name)
    return f"COPY {table} {direction}"


class _TracedConnection:
    """Mixed into a traced subclass of the connection's own class (no slots of its own)."""

    __slots__ = ()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        call = super().execute  # type: ignore[misc]
        return await _run(  # type: ignore[no-any-return]
            _state(self), query, args or None, lambda: call(query, *args, timeout=timeout), _status_rows
        )

    async def executemany(self, command: str, args: Any, *, timeout: float | None = None) -> None:
        call = super().executemany  # type: ignore[misc]
        await _run(_state(self), command, None, lambda: call(command, args, timeout=timeout), _unknown, args)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        call = super().fetch  # type: ignore[misc]
        return await _run(_state(self), query, args or None, lambda: call(query, *args, **kwargs), _len)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        call = super().fetchrow  # type: ignore[misc]
        return await _run(_state(self), query, args or None, lambda: call(query, *args, **kwargs), _one)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        call = super().fetchval  # type: ignore[misc]
        return await _run(_state(self), query, args or None, lambda: call(query, *args, **kwargs), _unknown)

    async def fetchmany(self, query: str, args: Any, **kwargs: Any) -> Any:
        call = super().fetchmany  # type: ignore[misc]
        return await _run(_state(self), query, None, lambda: call(query, args, **kwargs), _len, args)

    async def copy_from_table(self, table_name: str, **kwargs: Any) -> str:
        call = super().copy_from_table  # type: ignore[misc]
        text = _copy_text(table_name, kwargs.get("schema_name"), "TO STDOUT")
        return await _run(  # type: ignore[no-any-return]
            _state(self), text, None, lambda: call(table_name, **kwargs), _status_rows
        )

    async def copy_from_query(self, query: str, *args: Any, **kwargs: Any) -> str:
        call = super().copy_from_query  # type: ignore[misc]
        text = f"COPY ({query}) TO STDOUT"
        return await _run(  # type: ignore[no-any-return]
            _state(self), text, args or None, lambda: call(query, *args, **kwargs), _status_rows
        )

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        call = super().copy_to_table  # type: ignore[misc]
        text = _copy_text(table_name, kwargs.get("schema_name"), "FROM STDIN")
        return await _run(  # type: ignore[no-any-return]
            _state(self), text, None, lambda: call(table_name, **kwargs), _status_rows
        )

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        call = super().copy_records_to_table  # type: ignore[misc]
        text = _copy_text(table_name, kwargs.get("schema_name"), "FROM STDIN")
        return await _run(  # type: ignore[no-any-return]
            _state(self), text, None, lambda: call(table_name, **kwargs), _status_rows
        )

    async def prepare(self, query: str, **kwargs: Any) -> Any:
        statement = await super().prepare(query, **kwargs)  # type: ignore[misc]
        state = _state(self)
        return statement if state is None else _TracedPreparedStatement(statement, state, query)

    def cursor(self, query: str, *args: Any, **kwargs: Any) -> Any:
        factory = super().cursor(query, *args, **kwargs)  # type: ignore[misc]
        state = _state(self)
        return factory if state is None else _TracedCursorFactory(factory, state, query, args)

    async def reset(self, **kwargs: Any) -> None:
        # A pool runs this when a connection goes back: asyncpg's clean-up statements, not the
        # application's, so no span for them.
        with suppress_tracing():
            await super().reset(**kwargs)  # type: ignore[misc]

    def transaction(self, **kwargs: Any) -> Any:
        tx = super().transaction(**kwargs)  # type: ignore[misc]
        state = _state(self)
        return tx if state is None else _TracedTransaction(tx, self, state)


class _Wrapper:
    """Passes every attribute it does not trace through to the asyncpg object it wraps."""

    __slots__ = ("_inner", "_query", "_state")

    def __init__(self, inner: Any, state: ConnState, query: Any) -> None:
        self._inner = inner
        self._state = state
        self._query = query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<traced {self._inner!r}>"


class _TracedPreparedStatement(_Wrapper):
    """A prepared statement whose executions are spans (named and cached by its text)."""

    __slots__ = ()

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        call = self._inner.fetch
        return await _run(self._state, self._query, args or None, lambda: call(*args, **kwargs), _len)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        call = self._inner.fetchrow
        return await _run(self._state, self._query, args or None, lambda: call(*args, **kwargs), _one)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        call = self._inner.fetchval
        return await _run(self._state, self._query, args or None, lambda: call(*args, **kwargs), _unknown)

    async def fetchmany(self, args: Any, **kwargs: Any) -> Any:
        call = self._inner.fetchmany
        return await _run(self._state, self._query, None, lambda: call(args, **kwargs), _len, args)

    async def executemany(self, args: Any, **kwargs: Any) -> Any:
        call = self._inner.executemany
        return await _run(self._state, self._query, None, lambda: call(args, **kwargs), _unknown, args)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _TracedCursorFactory(self._inner.cursor(*args, **kwargs), self._state, self._query, args)


class _TracedCursorFactory(_Wrapper):
    """``conn.cursor(...)``: ``async for`` is one span; ``await`` gives a traced cursor."""

    __slots__ = ("_args",)

    def __init__(self, inner: Any, state: ConnState, query: Any, args: tuple[Any, ...]) -> None:
        super().__init__(inner, state, query)
        self._args = args

    def __aiter__(self) -> _TracedCursorIterator:
        iterator = self._inner.__aiter__()
        return _TracedCursorIterator(
            iterator, self._state.begin(None, self._query, self._args or None), self._state
        )

    def __await__(self) -> Any:
        return self._declare().__await__()

    async def _declare(self) -> Any:
        inner = self._inner
        cursor = await _run(self._state, self._query, self._args or None, lambda: inner, _unknown)
        try:
            stmt = self._state.statement(self._query, None)
        except Exception as exc:
            _safety.report("db.begin", exc)
            return cursor
        return cursor if stmt.skip else _TracedCursor(cursor, self._state, stmt)


class _TracedCursorIterator:
    """Rows of a cursor iteration; the span ends at the last row, on an error, or when the
    iteration is abandoned (stopping early is not an error)."""

    __slots__ = ("__weakref__", "_inner", "_op", "_rows", "_state")

    def __init__(self, inner: Any, op: Op | None, state: ConnState) -> None:
        self._inner = inner
        self._op = op
        self._state = state
        self._rows = 0

    def __aiter__(self) -> _TracedCursorIterator:
        return self

    async def __anext__(self) -> Any:
        try:
            row = await self._inner.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._rows += 1
        return row

    def _end(self, exc: BaseException | None) -> None:
        op, self._op = self._op, None
        if op is not None:
            if exc is None:
                self._state.done(op, self._rows)
            else:
                self._state.fail(op, exc)

    def __del__(self) -> None:
        self._end(None)


class _TracedCursor(_Wrapper):
    """An awaited cursor: each ``fetch`` / ``fetchrow`` is a ``FETCH`` span, ``forward`` a
    ``MOVE`` span, named after the declared statement's table and carrying its text."""

    __slots__ = ("_stmt",)

    def __init__(self, inner: Any, state: ConnState, stmt: Stmt) -> None:
        super().__init__(inner, state, stmt.text)
        self._stmt = stmt

    async def _round_trip(
        self, operation: str, call: Callable[[], Awaitable[Any]], rows: Callable[[Any], int]
    ) -> Any:
        op = None
        try:
            op = self._state.begin_statement(self._state.cursor_statement(self._stmt, operation))
        except Exception as exc:
            _safety.report("db.begin", exc)
        if op is None:
            return await call()
        try:
            result = await call()
        except BaseException as exc:
            self._state.fail(op, exc)
            raise
        self._state.done(op, rows(result))
        return result

    async def fetch(self, n: int, **kwargs: Any) -> Any:
        call = self._inner.fetch
        return await self._round_trip("FETCH", lambda: call(n, **kwargs), _len)

    async def fetchrow(self, **kwargs: Any) -> Any:
        call = self._inner.fetchrow
        return await self._round_trip("FETCH", lambda: call(**kwargs), _one)

    async def forward(self, n: int, **kwargs: Any) -> Any:
        call = self._inner.forward
        return await self._round_trip("MOVE", lambda: call(n, **kwargs), _unknown)


_NOT_CURRENT = object()  # (a transaction span that was not made current)


class _TracedTransaction:
    """``conn.transaction()``: a ``TRANSACTION`` span (``SAVEPOINT`` when nested), current
    inside the block, with the outcome, the rollback reason and the statements run inside.
    Works with ``async with`` and with ``start()`` / ``commit()`` / ``rollback()``."""

    __slots__ = ("_conn", "_frame", "_inner", "_name", "_prev", "_span", "_state")

    def __init__(self, inner: Any, conn: Any, state: ConnState) -> None:
        self._name: str | None = None
        self._inner = inner
        self._conn = conn
        self._state = state
        self._span: Any = None
        self._frame: list[int] | None = None
        self._prev: Any = _NOT_CURRENT

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<traced {self._inner!r}>"

    def _open(self, current: bool) -> bool:
        """Open the span (made current when ``current``); False when one was already open (a
        second ``start()`` or a re-entered block: asyncpg refuses it and the span stays)."""
        try:
            if self._span is not None:
                return False
            span = self._state.transaction_span(self._conn.is_in_transaction(), self._name)
            if span is None:
                return True
            self._span = span
            if current:
                self._prev = CURRENT.get()
                CURRENT.set(span)
            self._frame = self._state.push_frame()
        except Exception as exc:
            _safety.report("db.transaction", exc)
        return True

    def _close(self, committed: bool, reason: BaseException | None, failed: bool) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        try:
            frame, self._frame = self._frame, None
            count = self._state.pop_frame(frame)
            transaction_outcome(span, committed, reason, reason if failed else None, count)
        except Exception as exc:
            _safety.report("db.transaction", exc)
        try:
            prev, self._prev = self._prev, _NOT_CURRENT
            if prev is not _NOT_CURRENT and CURRENT.get() is span:
                CURRENT.set(prev)
            span.end()
        except Exception as exc:
            _safety.report("db.transaction", exc)

    async def start(self) -> None:
        """``Transaction.start()``: opens the span, then sends ``BEGIN`` / ``SAVEPOINT``.

        Called by hand (not through ``async with``) the span is not made current: ``commit()``
        may run in another task (SQLAlchemy closes sessions in a shielded task), which could
        not take it back out of this task's context. The statements in between are then its
        siblings; it still records the outcome and counts them."""
        await self._begin(self._inner.start, False)

    async def _begin(self, enter: Callable[[], Awaitable[Any]], current: bool) -> Any:
        opened = self._open(current)
        try:
            with suppress_tracing():  # BEGIN / SAVEPOINT: this span's, not a statement's
                return await enter()
        except BaseException as exc:
            if opened:
                self._close(False, exc, True)
            raise

    async def _end(self, call: Callable[[], Awaitable[Any]], committed: bool) -> None:
        # Inside `async with` asyncpg refuses commit()/rollback() without touching the
        # transaction: the span stays open and the block's exit ends it.
        managed = getattr(self._inner, "_managed", False) is True
        try:
            with suppress_tracing():
                await call()
        except BaseException as exc:
            if not managed:
                self._close(False, exc, True)
            raise
        self._close(committed, None, False)

    async def commit(self) -> None:
        """``Transaction.commit()``; a failing commit is recorded as a rollback with its error."""
        await self._end(self._inner.commit, True)

    async def rollback(self) -> None:
        """``Transaction.rollback()``: an intended rollback, not an error."""
        await self._end(self._inner.rollback, False)

    async def __aenter__(self) -> Any:
        # asyncpg's own __aenter__ (not start()): it marks the transaction as managed by the
        # block, so a stray commit() inside it and a re-entry fail exactly as without tracing.
        # The span is current: a block is entered and left in the same task.
        return await self._begin(self._inner.__aenter__, True)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> Any:
        try:
            with suppress_tracing():  # COMMIT / ROLLBACK [TO SAVEPOINT]
                result = await self._inner.__aexit__(et, ev, tb)
        except BaseException as exc:
            self._close(False, exc, True)
            raise
        self._close(ev is None, ev, ev is not None)
        return result


def _traced_class(base: type) -> type:
    cls = _TRACED.get(base)
    if cls is None:
        # Same metaclass as the base (asyncpg's ConnectionMeta), no slot added: the instance's
        # __class__ can be switched back and forth.
        cls = type(base)(
            base.__name__, (_TracedConnection, base), {"__slots__": (), "__module__": base.__module__}
        )
        cls._pitchey_traced = True  # type: ignore[attr-defined]
        _TRACED[base] = cls
    return cls


def instrument(conn: Any, *, sql_comments: bool | None = None, capture_parameters: bool | None = None) -> Any:
    """Trace every statement run on an asyncpg connection (or a pool's connection proxy);
    returns ``conn``. Calling it again only updates ``capture_parameters``; ``sql_comments``
    does not apply (see the module docstring)."""
    raw = _raw(conn)
    state = _STATES.get(id(raw))
    if state is not None and state.instrumented:
        state.set_overrides(False, capture_parameters)
        return conn
    state = ConnState(
        raw, sql_comments=False, capture_parameters=capture_parameters, base_attrs=_connection_attributes(raw)
    )
    cls = type(raw)
    if not getattr(cls, "_pitchey_traced", False):
        raw.__class__ = _traced_class(cls)
    state.instrumented = True
    _STATES[id(raw)] = state
    weakref.finalize(raw, _STATES.pop, id(raw), None)
    return conn


def uninstrument(conn: Any) -> Any:
    """Undo :func:`instrument`: the connection gets its own class back. Returns ``conn``."""
    raw = _raw(conn)
    state = _STATES.pop(id(raw), None)
    if state is not None:
        state.instrumented = False
    cls = type(raw)
    if getattr(cls, "_pitchey_traced", False):
        raw.__class__ = next(base for base in cls.__mro__[1:] if base is not _TracedConnection)
    return conn


def is_instrumented(conn: Any) -> bool:
    """True when :func:`instrument` is in effect on this asyncpg connection."""
    try:
        return _state(_raw(conn)) is not None
    except TypeError:
        return False


async def traced_query(conn: Any, sql: Any, params: Any = None) -> list[Any]:
    """``conn.fetch(sql, *params)`` in a span, on an instrumented connection or not."""
    raw = _raw(conn)
    state = _state(raw)
    if state is None:
        state = ConnState(raw, sql_comments=False, base_attrs=_connection_attributes(raw))
    args = tuple(params) if params is not None else ()
    call = _Connection.fetch.__get__(raw)  # the untraced method: the span is this function's
    result = await _run(state, sql, args or None, lambda: call(sql, *args), _len)
    return list(result)


def traced_transaction(
    conn: Any, savepoint_name: str | None = None, force_rollback: bool = False, name: str | None = None
) -> Any:
    """``conn.transaction()`` as a span (named ``name``, default ``TRANSACTION`` /
    ``SAVEPOINT``), instrumenting the connection if it was not."""
    if savepoint_name is not None or force_rollback:
        raise TypeError("traced_transaction: savepoint_name and force_rollback are psycopg options")
    if not is_instrumented(conn):
        instrument(conn)
    tx = conn.transaction()
    if name is not None and isinstance(tx, _TracedTransaction):
        tx._name = name
    return tx
