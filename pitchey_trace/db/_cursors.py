"""Traced cursor classes: a mixin in front of whatever cursor class the connection uses.

``instrument(conn)`` replaces ``conn.cursor_factory`` / ``conn.server_cursor_factory`` with a
subclass ``(mixin, original)``, so every cursor the connection makes (including the one behind
``conn.execute``) goes through the overridden methods. The connection's
:class:`~pitchey_trace.db._ops.ConnState` is looked up on each call, so a cursor made before
``uninstrument(conn)`` simply stops tracing.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.client_cursor import ClientCursorMixin

from pitchey_trace import _safety
from pitchey_trace.db import _pipeline
from pitchey_trace.db._ops import STATE_ATTR, ConnState, Stmt, set_batch_size

#: The statement of each server-side cursor's last traced DECLARE. Kept outside the cursor so
#: that traced classes add no slot: an existing cursor (an argument of ``@traced_query``) can
#: then have its class switched, which needs the same instance layout.
_DECLARED: weakref.WeakKeyDictionary[Any, Stmt] = weakref.WeakKeyDictionary()

__all__ = ["is_traced_class", "is_traced_factory", "traced_class", "traced_factory"]


class _SyncCursorMixin:
    """execute / executemany / copy / stream of a client-side ``psycopg.Cursor``."""

    __slots__ = ()
    _conn: Any  # psycopg cursors keep their connection here
    rowcount: int

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params, prepare)) is None:
            return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[misc]
        if self._conn._pipeline is not None:  # pipeline mode: the result comes later
            entry = _pipeline.begin(self, state, op, self._conn._pipeline)
            try:
                super().execute(op[3], params, prepare=prepare, binary=binary)  # type: ignore[misc]
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None, self.rowcount)
            return self
        try:
            super().execute(op[3], params, prepare=prepare, binary=binary)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, self.rowcount)
        return self

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, None, _prepares_batches(self))) is None:
            return super().executemany(query, params_seq, **kwargs)  # type: ignore[misc,no-any-return]
        set_batch_size(op[0], params_seq)
        if self._conn._pipeline is not None:  # riding the user's pipeline: results come later
            entry = _pipeline.begin(self, state, op, self._conn._pipeline)
            try:
                super().executemany(op[3], params_seq, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None)
            return None
        try:
            super().executemany(op[3], params_seq, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, _batch_rows(self, kwargs))
        return None

    @contextmanager
    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, statement, params)) is None:
            with super().copy(statement, params, **kwargs) as copy:  # type: ignore[misc]
                yield copy
            return
        try:
            with super().copy(statement, params, **kwargs) as copy:  # type: ignore[misc]
                yield copy
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, self.rowcount)

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params)) is None:
            yield from super().stream(query, params, **kwargs)  # type: ignore[misc]
            return
        rows = 0
        try:
            for row in super().stream(op[3], params, **kwargs):  # type: ignore[misc]
                rows += 1
                yield row
        except GeneratorExit:
            state.done(op, rows)  # the consumer stopped early: not an error
            raise
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, rows)


class _ServerRoundTrips:
    """The round trips of a server-side cursor after its DECLARE: every ``FETCH`` (fetchone,
    fetchmany, fetchall, each page of an iteration) and ``MOVE`` (scroll) is a span of its own,
    named after the declared query's table. psycopg (3.1 to 3.3, sync and async alike) runs
    each of them through ``_fetch_gen`` / ``_scroll_gen``: the span covers the generator, so it
    times the round trip itself, inside ``conn.wait``."""

    __slots__ = ()
    _conn: Any

    def _fetch_gen(self, num: Any) -> Any:
        return _round_trip(self, super()._fetch_gen(num), "FETCH")  # type: ignore[misc]

    def _scroll_gen(self, value: Any, mode: Any) -> Any:
        return _round_trip(self, super()._scroll_gen(value, mode), "MOVE")  # type: ignore[misc]


def _remember(cur: Any, declared: Stmt | None) -> None:
    """Record (or forget, with None) the statement of the cursor's last traced DECLARE."""
    try:
        if declared is None:
            _DECLARED.pop(cur, None)
        else:
            _DECLARED[cur] = declared
    except Exception as exc:  # (a cursor class without weak references: no FETCH spans)
        _safety.report("db.declare", exc)


def _round_trip(cur: Any, gen: Any, operation: str) -> Any:
    """``gen`` timed as one span, when the cursor's DECLARE was traced; else ``gen`` itself."""
    try:
        declared = _DECLARED.get(cur)
        state: ConnState | None = getattr(cur._conn, STATE_ATTR, None)
        if declared is None or state is None:
            return gen
        return _timed(gen, state, state.cursor_statement(declared, operation))
    except Exception as exc:
        _safety.report("db.fetch", exc)
        return gen


def _timed(gen: Any, state: ConnState, stmt: Stmt) -> Any:
    # A generator around psycopg's: the span starts when conn.wait first advances it.
    op = state.begin_statement(stmt)
    if op is None:
        return (yield from gen)
    try:
        result = yield from gen
    except BaseException as exc:
        state.fail(op, exc)
        raise
    state.done(op, len(result) if isinstance(result, list) else -1)
    return result


class _SyncServerCursorMixin(_ServerRoundTrips):
    """A server-side (named) ``psycopg.ServerCursor``: execute (the DECLARE) and each round trip
    after it are spans."""

    __slots__ = ()
    rowcount: int

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _remember(self, None)
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params)) is None:
            return super().execute(query, params, **kwargs)  # type: ignore[misc]
        try:
            super().execute(op[3], params, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, -1)
        _remember(self, op[1])
        return self


class _AsyncCursorMixin:
    """execute / executemany / copy / stream of a client-side ``psycopg.AsyncCursor``."""

    __slots__ = ()
    _conn: Any  # psycopg cursors keep their connection here
    rowcount: int

    async def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params, prepare)) is None:
            return await super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[misc]
        if self._conn._pipeline is not None:  # pipeline mode: the result comes later
            entry = _pipeline.begin(self, state, op, self._conn._pipeline)
            try:
                await super().execute(op[3], params, prepare=prepare, binary=binary)  # type: ignore[misc]
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None, self.rowcount)
            return self
        try:
            await super().execute(op[3], params, prepare=prepare, binary=binary)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, self.rowcount)
        return self

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, None, _prepares_batches(self))) is None:
            return await super().executemany(query, params_seq, **kwargs)  # type: ignore[misc,no-any-return]
        set_batch_size(op[0], params_seq)
        if self._conn._pipeline is not None:  # riding the user's pipeline: results come later
            entry = _pipeline.begin(self, state, op, self._conn._pipeline)
            try:
                await super().executemany(op[3], params_seq, **kwargs)  # type: ignore[misc]
            except BaseException as exc:
                _pipeline.end(entry, exc)
                raise
            _pipeline.end(entry, None)
            return None
        try:
            await super().executemany(op[3], params_seq, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, _batch_rows(self, kwargs))
        return None

    @asynccontextmanager
    async def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, statement, params)) is None:
            async with super().copy(statement, params, **kwargs) as copy:  # type: ignore[misc]
                yield copy
            return
        try:
            async with super().copy(statement, params, **kwargs) as copy:  # type: ignore[misc]
                yield copy
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, self.rowcount)

    async def stream(self, query: Any, params: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params)) is None:
            async for row in super().stream(query, params, **kwargs):  # type: ignore[misc]
                yield row
            return
        rows = 0
        try:
            async for row in super().stream(op[3], params, **kwargs):  # type: ignore[misc]
                rows += 1
                yield row
        except GeneratorExit:
            state.done(op, rows)
            raise
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, rows)


class _AsyncServerCursorMixin(_ServerRoundTrips):
    """A server-side ``psycopg.AsyncServerCursor``: execute and each round trip after it."""

    __slots__ = ()
    rowcount: int

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _remember(self, None)
        state: ConnState | None = getattr(self._conn, STATE_ATTR, None)
        if state is None or (op := state.begin(self, query, params)) is None:
            return await super().execute(query, params, **kwargs)  # type: ignore[misc]
        try:
            await super().execute(op[3], params, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)
            raise
        state.done(op, -1)
        _remember(self, op[1])
        return self


_MIXINS = (_SyncCursorMixin, _SyncServerCursorMixin, _AsyncCursorMixin, _AsyncServerCursorMixin)


def _prepares_batches(cur: Any) -> bool | None:
    """True when psycopg runs this cursor's ``executemany`` as a prepared statement (always,
    except on client-side-binding cursors or with ``prepare_threshold=None``): the statement
    must then keep its text, since a comment unique to each call would prepare a new
    server-side statement per call and evict the connection's others. Else None (commented as
    ``execute`` is)."""
    if isinstance(cur, ClientCursorMixin) or getattr(cur._conn, "prepare_threshold", 5) is None:
        return None
    return True


def _batch_rows(cur: Any, kwargs: dict[str, Any]) -> int:
    """Rows affected by an ``executemany`` that succeeded. With ``returning=True`` psycopg keeps
    one result per parameter set and ``rowcount`` is the current (first) one's only: the total
    is the sum of their command tuples. -1 (unknown) when that cannot be read."""
    if not kwargs.get("returning"):
        return int(cur.rowcount)
    try:
        return sum(res.command_tuples or 0 for res in cur._results)
    except Exception:  # (a psycopg without ``_results``: say nothing rather than a wrong count)
        return -1


_classes: dict[type, type] = {}


def is_traced_class(cls: type) -> bool:
    """True for a class made by :func:`traced_class`."""
    return issubclass(cls, _MIXINS)


def traced_class(base: type) -> type:
    """The traced subclass of a psycopg cursor class (made once per class and cached)."""
    if is_traced_class(base):
        return base
    cls = _classes.get(base)
    if cls is not None:
        return cls
    if issubclass(base, psycopg.AsyncServerCursor):
        mixin: type = _AsyncServerCursorMixin
    elif issubclass(base, psycopg.ServerCursor):
        mixin = _SyncServerCursorMixin
    elif issubclass(base, psycopg.AsyncCursor):
        mixin = _AsyncCursorMixin
    elif issubclass(base, psycopg.Cursor):
        mixin = _SyncCursorMixin
    else:
        raise TypeError(f"not a psycopg cursor class: {base!r}")
    # No slot of its own: same layout as ``base``, so ``cur.__class__ = cls`` works on a cursor
    # made before instrumenting (see _DECLARED).
    cls = type(f"Traced{base.__name__}", (mixin, base), {"__slots__": (), "__module__": __name__})
    _classes[base] = cls
    return cls


_CURSOR_BASES = (psycopg.Cursor, psycopg.AsyncCursor, psycopg.ServerCursor, psycopg.AsyncServerCursor)


def _adopt(cur: Any) -> Any:
    """``cur`` switched to its traced class (same layout, extra methods). A cursor that is no
    psycopg cursor, or whose class cannot be switched, is returned as it is (untraced)."""
    try:
        cls = type(cur)
        if isinstance(cur, _CURSOR_BASES) and not is_traced_class(cls):
            cur.__class__ = traced_class(cls)
    except Exception as exc:
        _safety.report("db.cursor_factory", exc)
    return cur


def traced_factory(factory: Any) -> Any:
    """What ``instrument`` sets as the connection's cursor factory in place of ``factory``: the
    traced subclass of a psycopg cursor class, or, for any other callable (psycopg calls the
    factory; a function returning cursors works without tracing), a function that switches
    each cursor it makes to the traced class. Never raises."""
    if isinstance(factory, type) and issubclass(factory, _CURSOR_BASES):
        try:
            return traced_class(factory)
        except Exception as exc:  # (a class whose layout a subclass cannot share)
            _safety.report("db.cursor_factory", exc)
    if not callable(factory):
        return factory

    def traced(*args: Any, **kwargs: Any) -> Any:
        return _adopt(factory(*args, **kwargs))

    traced.__wrapped__ = factory  # type: ignore[attr-defined]
    traced._pitchey_traced = True  # type: ignore[attr-defined]
    return traced


def is_traced_factory(factory: Any) -> bool:
    """True for what :func:`traced_factory` returns (a traced class or a wrapping function)."""
    if isinstance(factory, type):
        return is_traced_class(factory)
    return getattr(factory, "_pitchey_traced", False) is True
