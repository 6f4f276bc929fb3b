"""psycopg2 support: ``instrument(conn)`` on a ``psycopg2`` connection.

psycopg2's connection is a C type: nothing can be set on it and its class cannot be switched.
What can be changed is its ``cursor_factory``: ``instrument(conn)`` sets it to a traced subclass
of the factory in place (so ``DictCursor`` / ``RealDictCursor`` set as the connection's factory
keep working). The per-connection state lives in a weak mapping. Traced, as client spans with
the psycopg 3 path's attributes, slow-query log, audit records and error scrubbing
(:mod:`pitchey_trace.db._ops`):

* ``execute``, ``executemany`` (``db.operation.batch.size``);
* ``copy_expert``, ``copy_from``, ``copy_to`` (one ``COPY`` span, rows copied);
* server-side (named) cursors: the ``DECLARE`` and each round trip after it (``FETCH`` for
  ``fetchone`` / ``fetchmany`` / ``fetchall`` and each page of an iteration, ``MOVE`` for
  ``scroll``).

A cursor made with an explicit ``conn.cursor(cursor_factory=...)`` argument bypasses the
connection's factory and is not traced; set the factory on the connection instead
(``connect(..., cursor_factory=RealDictCursor)`` before ``instrument``).
``traced_transaction(conn)`` is a transaction block of our own (psycopg2 has none): the
outermost commits or rolls back the connection, an inner one uses a savepoint.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import psycopg2.extensions as _ext

from pitchey_trace import _safety
from pitchey_trace._context import suppress_tracing
from pitchey_trace._span import AnySpan
from pitchey_trace.db._ops import ConnState, Op, Stmt, transaction_outcome

__all__ = [
    "instrument",
    "is_connection",
    "is_instrumented",
    "traced_query",
    "traced_transaction",
    "uninstrument",
]

_Connection: Any = _ext.connection
#: State of each instrumented connection, by id(): a plain dict lookup on every statement
#: (a WeakKeyDictionary makes a weakref per lookup); the entry goes when the connection does.
_STATES: dict[int, ConnState] = {}
_TRACED: dict[type, type] = {}
#: The server-side variant of each traced cursor class.
_NAMED: dict[type, type] = {}
_IDLE = _ext.TRANSACTION_STATUS_IDLE


def is_connection(obj: object) -> bool:
    """True for a psycopg2 connection."""
    return isinstance(obj, _Connection)


def _state(conn: Any) -> ConnState | None:
    state = _STATES.get(id(conn))
    return state if state is not None and state.instrumented else None


def _one(row: Any) -> int:
    return 0 if row is None else 1


def _len(rows: Any) -> int:
    return len(rows) if isinstance(rows, list) else -1


class _TracedCursor:
    """Mixed into a traced subclass of the connection's cursor factory."""

    _pitchey_traced = True

    # -- statements ----------------------------------------------------------------------------
    def _run(
        self,
        query: Any,
        params: Any,
        call: Callable[[Any], Any],
        batch: Any = None,
        procedure: str | None = None,
    ) -> Any:
        state = _state(self.connection)  # type: ignore[attr-defined]
        op = state.begin(self, query, params) if state is not None else None
        if op is None:
            return call(query)
        if (batch is not None or procedure is not None) and op[0].is_recording:
            try:
                if hasattr(batch, "__len__"):
                    op[0].set_attribute("db.operation.batch.size", len(batch))
                if procedure is not None:
                    op[0].update_name(f"SELECT {procedure}")
                    op[0].set_attribute("db.stored_procedure.name", procedure)
            except Exception as exc:
                _safety.report("db.begin", exc)
        try:
            result = call(op[3])
        except BaseException as exc:
            state.fail(op, exc)  # type: ignore[union-attr]
            raise
        if self.name is not None:  # type: ignore[attr-defined]  # (a DECLARE: remember what for)
            self._pitchey_declared = op[1]
        state.done(op, self.rowcount)  # type: ignore[union-attr,attr-defined]
        return result

    def execute(self, query: Any, vars: Any = None) -> Any:
        # The hot path, written out (no closure): the other methods go through _run.
        state = _STATES.get(id(self.connection))  # type: ignore[attr-defined]
        op = state.begin(self, query, vars) if state is not None and state.instrumented else None
        if op is None:
            return super().execute(query, vars)  # type: ignore[misc]
        try:
            result = super().execute(op[3], vars)  # type: ignore[misc]
        except BaseException as exc:
            state.fail(op, exc)  # type: ignore[union-attr]
            raise
        if self.name is not None:  # type: ignore[attr-defined]
            self._pitchey_declared = op[1]
        state.done(op, self.rowcount)  # type: ignore[union-attr,attr-defined]
        return result

    def executemany(self, query: Any, vars_list: Any) -> Any:
        call = super().executemany  # type: ignore[misc]
        return self._run(query, None, lambda q: call(q, vars_list), vars_list)

    def callproc(self, procname: str, parameters: Any = None) -> Any:
        call = super().callproc  # type: ignore[misc]
        # The span shows the statement psycopg2 sends for it (its placeholders, not the values);
        # the text is only recorded, never executed.
        try:
            if isinstance(parameters, dict):
                args = ", ".join(f"{k} := %({k})s" for k in parameters)
            else:
                args = ", ".join(["%s"] * (len(parameters) if parameters is not None else 0))
        except Exception:  # (parameters psycopg2 will refuse itself)
            args = ""
        text = f"SELECT * FROM {procname}({args})"  # noqa: S608
        return self._run(text, None, lambda _: call(procname, parameters), procedure=str(procname))

    def copy_expert(self, sql: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
        call = super().copy_expert  # type: ignore[misc]
        return self._run(sql, None, lambda q: call(sql, file, *args, **kwargs))

    def copy_from(self, file: Any, table: str, *args: Any, **kwargs: Any) -> Any:
        call = super().copy_from  # type: ignore[misc]
        return self._run(f"COPY {table} FROM STDIN", None, lambda _: call(file, table, *args, **kwargs))

    def copy_to(self, file: Any, table: str, *args: Any, **kwargs: Any) -> Any:
        call = super().copy_to  # type: ignore[misc]
        return self._run(f"COPY {table} TO STDOUT", None, lambda _: call(file, table, *args, **kwargs))

    def __new__(cls, conn: Any, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        # A named (server-side) cursor gets the subclass that traces its fetches; a client-side
        # cursor keeps psycopg2's own fetch methods (no round trip: nothing to trace, no cost).
        named = _NAMED.get(cls)
        if name is not None and named is not None:
            cls = named
        return super().__new__(cls, conn, name, *args, **kwargs)  # type: ignore[call-arg]


class _NamedCursor:
    """Mixed into a server-side cursor's traced class: each round trip after the DECLARE."""

    def _round_trip(self, operation: str, call: Callable[[], Any], rows: Callable[[Any], int]) -> Any:
        declared: Stmt | None = getattr(self, "_pitchey_declared", None)
        state = _state(self.connection)  # type: ignore[attr-defined]
        op: Op | None = None
        if declared is not None and state is not None:
            try:
                op = state.begin_statement(state.cursor_statement(declared, operation))
            except Exception as exc:
                _safety.report("db.begin", exc)
        if op is None:
            return call()
        try:
            result = call()
        except BaseException as exc:
            state.fail(op, exc)  # type: ignore[union-attr]
            raise
        state.done(op, rows(result))  # type: ignore[union-attr]
        return result

    def fetchone(self) -> Any:
        return self._round_trip("FETCH", super().fetchone, _one)  # type: ignore[misc]

    def fetchmany(self, size: int | None = None) -> Any:
        call = super().fetchmany  # type: ignore[misc]
        return self._round_trip("FETCH", lambda: call() if size is None else call(size), _len)

    def fetchall(self) -> Any:
        return self._round_trip("FETCH", super().fetchall, _len)  # type: ignore[misc]

    def scroll(self, value: int, mode: str = "relative") -> Any:
        call = super().scroll  # type: ignore[misc]
        return self._round_trip("MOVE", lambda: call(value, mode), lambda _: -1)

    def __iter__(self) -> Iterator[Any]:
        if getattr(self, "_pitchey_declared", None) is None:  # (declared untraced)
            return super().__iter__()  # type: ignore[misc,no-any-return]
        return self._pages()

    def _pages(self) -> Iterator[Any]:
        # A named cursor's iteration fetches ``itersize`` rows per round trip: one span each.
        while True:
            rows = self.fetchmany(self.itersize)  # type: ignore[attr-defined]
            if not rows:
                return
            yield from rows


def _traced_class(base: type) -> type:
    cls = _TRACED.get(base)
    if cls is None:
        cls = type(base.__name__, (_TracedCursor, base), {"__module__": base.__module__})
        _NAMED[cls] = type(base.__name__, (_NamedCursor, cls), {"__module__": base.__module__})
        _TRACED[base] = cls
    return cls


def instrument(conn: Any, *, sql_comments: bool | None = None, capture_parameters: bool | None = None) -> Any:
    """Trace every statement run on a psycopg2 connection's cursors; returns ``conn``."""
    state = _STATES.get(id(conn))
    if state is not None and state.instrumented:
        state.set_overrides(sql_comments, capture_parameters)
        return conn
    state = ConnState(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)
    factory = conn.cursor_factory
    state.orig_cursor_factory = factory
    if not getattr(factory, "_pitchey_traced", False):
        conn.cursor_factory = _traced_class(factory or _ext.cursor)
    state.instrumented = True
    key = id(conn)
    _STATES[key] = state
    weakref.finalize(conn, _STATES.pop, key, None)
    return conn


def uninstrument(conn: Any) -> Any:
    """Undo :func:`instrument`: the connection's own cursor factory comes back."""
    state = _STATES.pop(id(conn), None)
    if state is not None:
        state.instrumented = False
        if getattr(conn.cursor_factory, "_pitchey_traced", False):
            conn.cursor_factory = state.orig_cursor_factory
    return conn


def is_instrumented(conn: Any) -> bool:
    """True when :func:`instrument` is in effect on this psycopg2 connection."""
    return _state(conn) is not None


def traced_query(conn: Any, sql: Any, params: Any = None) -> list[Any]:
    """Run ``sql`` in a span on a fresh cursor of ``conn``; its rows (``[]`` when none)."""
    state = _state(conn) or ConnState(conn)
    with conn.cursor() as cur:
        if getattr(cur, "_pitchey_traced", False):  # (a traced cursor makes its own span)
            cur.execute(sql, params)
        else:
            state.execute(cur, sql, params)
        return cur.fetchall() if cur.description is not None else []


class _Transaction:
    """``with traced_transaction(conn):`` for psycopg2: commit (or roll back on an exception,
    or with ``force_rollback``) at the end; inside a transaction, a savepoint instead."""

    def __init__(
        self, conn: Any, state: ConnState, savepoint_name: str | None, force_rollback: bool, name: str | None
    ) -> None:
        self._conn = conn
        self._state = state
        self._savepoint = savepoint_name
        self._force_rollback = force_rollback
        self._name = name
        self._nested = False
        self._span: AnySpan | None = None
        self._frame: list[int] | None = None

    def _sql(self, *statements: str) -> None:
        with suppress_tracing():  # this block's own statements, not the application's
            cur = _ext.cursor(self._conn)
            try:
                for statement in statements:
                    cur.execute(statement)
            finally:
                cur.close()

    def __enter__(self) -> Any:
        conn = self._conn
        # Nested when a block of ours is open on this connection (psycopg2 sends BEGIN only
        # with the first statement, so the server may still say idle) or the server says so.
        self._nested = bool(self._state.tx_stack) or conn.get_transaction_status() != _IDLE
        self._frame = self._state.push_frame()  # (pushed even untraced: it marks the nesting)
        try:
            span = self._state.transaction_span(self._nested, self._name)
            if span is not None:
                span.__enter__()
                self._span = span
        except Exception as exc:
            _safety.report("db.transaction", exc)
        try:
            if self._nested:
                self._savepoint = self._savepoint or f"pitchey_sp_{len(self._state.tx_stack)}"
                self._sql(f'SAVEPOINT "{self._savepoint}"')
                if self._span is not None and self._span.is_recording:
                    self._span.set_attribute("db.transaction.savepoint_name", self._savepoint)
            elif conn.autocommit:
                self._sql("BEGIN")
        except BaseException as exc:
            self._finish(False, exc, exc)
            raise
        return conn

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        commit = ev is None and not self._force_rollback
        try:
            if self._nested:
                if commit:
                    self._sql(f'RELEASE SAVEPOINT "{self._savepoint}"')
                else:
                    self._sql(
                        f'ROLLBACK TO SAVEPOINT "{self._savepoint}"', f'RELEASE SAVEPOINT "{self._savepoint}"'
                    )
            elif self._conn.autocommit:
                self._sql("COMMIT" if commit else "ROLLBACK")
            elif commit:
                self._conn.commit()
            else:
                self._conn.rollback()
        except BaseException as error:
            self._finish(False, error, error)
            raise
        self._finish(commit, ev, ev)

    def _finish(self, committed: bool, reason: BaseException | None, failure: BaseException | None) -> None:
        frame, self._frame = self._frame, None
        count = self._state.pop_frame(frame)
        span, self._span = self._span, None
        if span is None:
            return
        try:
            transaction_outcome(span, committed, reason, failure, count, self._force_rollback)
        except Exception as exc:
            _safety.report("db.transaction", exc)
        try:
            span.__exit__(None, None, None)
        except Exception as exc:
            _safety.report("db.transaction", exc)


def traced_transaction(
    conn: Any, savepoint_name: str | None = None, force_rollback: bool = False, name: str | None = None
) -> _Transaction:
    """A traced transaction block on a psycopg2 connection (instrumenting it if it was not)."""
    if not is_instrumented(conn):
        instrument(conn)
    state = _state(conn)
    assert state is not None
    return _Transaction(conn, state, savepoint_name, force_rollback, name)
