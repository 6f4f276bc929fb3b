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

Connections of a Python subclass (``psycopg2.extras.DictConnection``, ``RealDictConnection``,
``NamedTupleConnection``, ``LoggingConnection``, ``MinTimeLoggingConnection``, any
``connection_factory=``) often choose their own cursor class in their ``cursor()``:
``kwargs.setdefault("cursor_factory", self.cursor_factory or DictCursor)``. So that such a
default still wins, the factory ``instrument`` sets in place of an unset one (``None``) is
*falsy*, like ``None`` (its metaclass says so; psycopg2's C code only checks for ``None``), and
such a connection (it has a ``__dict__``) gets an instance attribute ``cursor`` that calls the
class's own ``cursor()`` unchanged and then switches the cursor it returns to the traced
subclass of that cursor's own class (``__class__`` assignment: the traced class adds no
storage). No table of psycopg2's classes is needed: whatever class the connection's
``cursor()`` creates (its default, ``conn.cursor(cursor_factory=...)``, a named cursor) is the
one traced. Not traced: a cursor of a class whose instances cannot switch class (the C type
``psycopg2.extensions.cursor`` itself, passed explicitly, or a subclass with ``__slots__`` and no
``__dict__``), and an explicit ``cursor_factory=`` on an instance of the C connection type
itself (``psycopg2.connect(dsn)``: no ``__dict__``, so its ``cursor`` cannot be wrapped; set
the factory on the connection instead, ``connect(..., cursor_factory=RealDictCursor)``). A
factory that is a function, not a class, is replaced by one that switches what it returns.

``traced_transaction(conn)`` is a transaction block of our own (psycopg2 has none): the
outermost commits or rolls back the connection, an inner one uses a savepoint.

Two-phase commit (``tpc_begin`` / ``tpc_prepare`` / ``tpc_commit`` / ``tpc_rollback`` /
``tpc_recover``) is traced as for psycopg 3 (:mod:`pitchey_trace.db._tpc`) when the connection
has a ``__dict__``, that is when it was made with a ``connection_factory`` that is a Python
subclass of psycopg2's connection type: the traced methods are then set on the instance, as
psycopg 3's are. An instance of the C type itself (``psycopg2.connect(dsn)``) has no
``__dict__`` and its class cannot be switched (a static type): its 2PC calls stay untraced.

Likewise ``commit()`` / ``rollback()`` (``COMMIT`` / ``ROLLBACK`` spans, see
:mod:`pitchey_trace.db._commit`): traced on a connection with a ``__dict__``, ``with conn:``
included (psycopg2's C ``__exit__`` calls ``self.commit()`` / ``self.rollback()``, found on the
instance), untraced on the C type itself. psycopg2 also ends a transaction in progress from C,
with no ``rollback()`` call: ``set_isolation_level()`` and ``set_client_encoding()`` (a new
encoding) send ROLLBACK first, ``reset()`` sends ABORT, and after ``close()`` the server rolls
back. Wrapped there too: a ``ROLLBACK`` span with ``db.transaction.rollback_reason`` the
method's name (``reset()`` / ``close()`` of a two-phase transaction end its ``TRANSACTION``
span instead: ``rollback``, ``abandoned``).
The ``autocommit`` / ``set_session`` setters refuse inside a transaction: nothing ends.

Auto-instrumentation (:mod:`pitchey_trace.auto`) makes ``psycopg2.connect(dsn)`` connect with
:class:`connection`, a subclass that adds nothing, when the program names no
``connection_factory``: commit, rollback and 2PC are then traced there too.
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
from pitchey_trace.db._commit import END_METHODS, make_end_methods
from pitchey_trace.db._ops import (
    ConnState,
    Op,
    OpenBlock,
    Stmt,
    close_block,
    end_abandoned_blocks,
    live_connection,
    open_block,
    otel_replaced,
    set_batch_size,
    transaction_outcome,
)
from pitchey_trace.db._tpc import _close as _tpc_close
from pitchey_trace.db._tpc import make_tpc_methods

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
#: The traced subclass of each cursor class (key: the class, and whether it stands for an unset
#: factory: then it is falsy, see :class:`_Unset`).
_TRACED: dict[tuple[type, bool], type] = {}
#: The server-side variant of each traced cursor class.
_NAMED: dict[type, type] = {}
#: What a cursor of each class is switched to by :func:`_adopt` (None: it cannot be switched).
_ADOPT: dict[type, type | None] = {}
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: only instances of such a class can switch class
_IDLE = _ext.TRANSACTION_STATUS_IDLE
_PREPARED = _ext.STATUS_PREPARED
_BEGIN = _ext.STATUS_BEGIN
_INERROR = _ext.TRANSACTION_STATUS_INERROR
_OPEN = (_ext.TRANSACTION_STATUS_INTRANS, _INERROR)
_TPC_METHODS = ("tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "tpc_recover")
#: The methods that end a transaction in progress without ``rollback()`` (psycopg2 from C).
_IMPLICIT_END = ("set_isolation_level", "set_client_encoding", "reset", "close")
_TPC_ENDS = ("reset", "close")


class connection(_Connection):  # type: ignore[misc]
    """psycopg2's connection as a Python subclass, adding nothing: what auto-instrumentation
    (:mod:`pitchey_trace.auto`) passes to ``psycopg2.connect`` as ``connection_factory`` when the
    program gives none. Its instances have a ``__dict__``, so :func:`instrument` can set the
    traced ``commit`` / ``rollback`` / ``tpc_*`` on them (never on the C type). Same name and
    ``repr``; only ``type(conn) is psycopg2.extensions.connection`` is false."""


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
                if batch is not None:
                    set_batch_size(op[0], batch)
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


class _Unset(type):
    """Metaclass of the traced factory set in place of an unset (``None``) one: falsy, as
    ``None`` is, so that ``self.cursor_factory or DictCursor`` in a connection subclass's
    ``cursor()`` (all of ``psycopg2.extras``' connections) still picks its own default.
    psycopg2's C code tests the attribute against ``None`` only, so it still calls it."""

    def __bool__(cls) -> bool:
        return False


def _traced_class(base: type, unset: bool = False) -> type:
    key = (base, unset)
    cls = _TRACED.get(key)
    if cls is None:
        meta: type = _Unset if unset else type
        cls = meta(base.__name__, (_TracedCursor, base), {"__module__": base.__module__})
        _NAMED[cls] = type(base.__name__, (_NamedCursor, cls), {"__module__": base.__module__})
        _TRACED[key] = cls
    return cls


def _adopt_target(base: type) -> type | None:
    """The traced class a cursor of class ``base`` can be switched to, or None."""
    if base in _ADOPT:
        return _ADOPT[base]
    target: type | None = None
    if base.__flags__ & _HEAPTYPE and base.__dictoffset__:
        traced = _traced_class(base)
        named = _NAMED[traced]
        layout = (base.__basicsize__, base.__dictoffset__, base.__weakrefoffset__)
        if all((c.__basicsize__, c.__dictoffset__, c.__weakrefoffset__) == layout for c in (traced, named)):
            target = traced
    _ADOPT[base] = target
    return target


def _adopt(cur: Any) -> Any:
    """Switch a cursor the connection's own ``cursor()`` made to the traced subclass of its
    class (its ``__init__`` has run: rows, logging, everything of its class is kept)."""
    try:
        cls = type(cur)
        if not getattr(cls, "_pitchey_traced", False):
            target = _adopt_target(cls)
            if target is not None:
                cur.__class__ = _NAMED[target] if cur.name is not None else target
    except Exception as exc:
        _safety.report("db.instrument", exc)
    return cur


def _traced_factory(factory: Any) -> Any:
    """What ``instrument`` sets as the connection's ``cursor_factory`` (None: leave it)."""
    try:
        if factory is None:
            return _traced_class(_ext.cursor, unset=True)
        if isinstance(factory, type):
            return _traced_class(factory)
        if not callable(factory):
            return None

        def traced_factory(*args: Any, **kwargs: Any) -> Any:  # a function: adopt what it makes
            return _adopt(factory(*args, **kwargs))

        traced_factory._pitchey_traced = True  # type: ignore[attr-defined]
        return traced_factory
    except Exception as exc:
        _safety.report("db.instrument", exc)
        return None


def _set_cursor_method(conn: Any) -> None:
    """On a connection with a ``__dict__``, wrap ``cursor`` (see the module docstring)."""
    try:
        attrs = getattr(conn, "__dict__", None)
        if not isinstance(attrs, dict):
            return
        target = live_connection(conn)  # (no cycle through the connection's own __dict__)
        own = attrs.get("cursor")  # an instance attribute of the application's: wrapped, restored

        def cursor(*args: Any, **kwargs: Any) -> Any:
            if own is not None:
                return _adopt(own(*args, **kwargs))
            c = target()
            return _adopt(type(c).cursor(c, *args, **kwargs))

        cursor._pitchey_wraps = own  # type: ignore[attr-defined]
        attrs["cursor"] = cursor
    except Exception as exc:
        _safety.report("db.instrument", exc)


def _unset_cursor_method(conn: Any) -> None:
    attrs = getattr(conn, "__dict__", None)
    if isinstance(attrs, dict) and hasattr(attrs.get("cursor"), "_pitchey_wraps"):
        own = attrs.pop("cursor")._pitchey_wraps
        if own is not None:
            attrs["cursor"] = own


def _recover_sends(conn: Any) -> bool:
    """True when ``conn.tpc_recover()`` will run its query (psycopg2 refuses first on a closed
    or asynchronous connection and while a transaction is prepared: no query, no span)."""
    return not conn.closed and not conn.async_ and conn.status != _PREPARED


def _set_tpc_methods(conn: Any, state: ConnState) -> None:
    """Trace 2PC on a connection with a ``__dict__`` (a Python subclass of the C type)."""
    try:
        attrs = getattr(conn, "__dict__", None)
        if not isinstance(attrs, dict):
            return  # the C type itself: nothing can be set on it (see the module docstring)
        key = id(conn)

        def is_traced(c: Any) -> bool:
            return _STATES.get(key) is state and state.instrumented

        # Straight into __dict__, as a plain attribute would be: a subclass's own property of
        # that name (if any) keeps precedence and nothing of the class runs.
        attrs.update(make_tpc_methods(conn, state, False, is_traced=is_traced, recover=_recover_sends))
    except Exception as exc:
        _safety.report("db.tpc", exc)


def _set_end_methods(conn: Any, state: ConnState) -> None:
    """Trace ``commit()`` / ``rollback()`` on a connection with a ``__dict__``."""
    try:
        attrs = getattr(conn, "__dict__", None)
        if not isinstance(attrs, dict):
            return  # the C type itself (see the module docstring)
        key = id(conn)

        def is_traced(c: Any) -> bool:
            return _STATES.get(key) is state and state.instrumented

        def pending(c: Any) -> bool:
            # psycopg2 sends COMMIT / ROLLBACK only for a transaction it began itself (never in
            # autocommit mode, even after a BEGIN of the application's) and refuses both
            # during a two-phase transaction (ours is known by its open span).
            return bool(c.status == _BEGIN) and state.tpc is None

        def failed(c: Any) -> bool:
            return bool(c.get_transaction_status() == _INERROR)

        methods = make_end_methods(conn, state, False, is_traced=is_traced, pending=pending, failed=failed)
        methods.update(_implicit_end_methods(conn, state, is_traced))
        attrs.update(methods)
    except Exception as exc:
        _safety.report("db.commit", exc)


def _encoding_name(name: str) -> str:
    """psycopg2's ``clear_encoding_name``: upper case, only ASCII letters and digits."""
    return "".join(ch.upper() for ch in name if ch.isascii() and ch.isalnum())


def _rolls_back(cause: str, c: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """True when ``c.<cause>(*args, **kwargs)`` ends the transaction in progress (the caller
    saw ``c.status == STATUS_BEGIN``): what psycopg2's C code checks before it rolls back."""
    if c.closed:
        return False
    if cause == "close":  # the server rolls back the transaction of a session that ends
        return True
    if c.async_:
        return False
    if cause == "reset":  # ABORT, then DISCARD ALL
        return True
    if kwargs or len(args) != 1:  # (psycopg2 refuses these: TypeError, nothing sent)
        return False
    arg = args[0]
    if cause == "set_isolation_level":  # ROLLBACK first, whatever the new level (0 to 4)
        return not isinstance(arg, int) or 0 <= arg <= 4
    # set_client_encoding: ROLLBACK first, unless the (normalised) name is the current one
    return isinstance(arg, str) and "\0" not in arg and _encoding_name(arg) != c.encoding


def _implicit_end_methods(conn: Any, state: ConnState, is_traced: Callable[[Any], bool]) -> dict[str, Any]:
    """``set_isolation_level()``, ``set_client_encoding()``, ``reset()`` and ``close()``, which
    end a transaction in progress without ``rollback()`` (psycopg2's C code sends ROLLBACK /
    ABORT itself; ``close()`` ends the session and the server rolls back): a ``ROLLBACK`` span
    as ``rollback()``'s, ``db.transaction.rollback_reason`` the method's name. ``reset()`` /
    ``close()`` of a two-phase transaction end its ``TRANSACTION`` span instead (``rollback``,
    ``abandoned``). With no transaction in progress: one status check, then the call."""
    target = live_connection(conn)
    cls = type(conn)

    def in_session_transaction(c: Any) -> bool:
        # The server rolls back whatever transaction the session has, one psycopg2 began or a
        # BEGIN of the application's in autocommit mode (libpq's status: no round trip).
        return not c.closed and c.get_transaction_status() in _OPEN

    def make(cause: str) -> Callable[..., Any]:
        method = getattr(cls, cause)

        def call(*args: Any, **kwargs: Any) -> Any:
            c = target()
            try:
                ends = in_session_transaction(c) if cause == "close" else c.status == _BEGIN
            except Exception as exc:
                _safety.report("db.commit", exc)
                ends = False
            if not ends:
                return method(c, *args, **kwargs)  # (the cheap case: nothing to end)
            op: Op | None = None
            tpc = False
            try:
                if is_traced(c) and _rolls_back(cause, c, args, kwargs):
                    # reset() and close() end psycopg2's two-phase transaction as well: its
                    # span ends. After the other two, psycopg2 keeps the xid and goes on with
                    # a fresh transaction (commit() still refused): a ROLLBACK span only.
                    tpc = state.tpc is not None and cause in _TPC_ENDS
                    if not tpc:
                        op = state.begin_text("ROLLBACK")
            except Exception as exc:
                _safety.report("db.commit", exc)
            if op is None and not tpc and not state.blocks:
                return method(c, *args, **kwargs)
            try:
                result = method(c, *args, **kwargs)
            except BaseException as exc:
                _implicit_ended(c, state, op, tpc, cause, exc)
                raise
            _implicit_ended(c, state, op, tpc, cause, None)
            return result

        call.__name__ = cause
        call.__doc__ = method.__doc__
        return call

    return {cause: make(cause) for cause in _IMPLICIT_END}


def _implicit_ended(
    c: Any, state: ConnState, op: Op | None, tpc: bool, cause: str, exc: BaseException | None
) -> None:
    """End the span of an implicit rollback (``op``), or the open 2PC span (``tpc``), and tell
    the open ``traced_transaction`` blocks that their transaction ended. Never raises."""
    try:
        ended = bool(c.closed) or c.status != _BEGIN
    except Exception as internal:
        _safety.report("db.commit", internal)
        ended = False
    if ended:
        for block in state.blocks:
            if block.ended is None:
                block.ended = cause
    if op is None:
        if ended and tpc:
            try:
                _tpc_close(state, None, outcome="rollback", abandoned=True)
            except Exception as internal:
                _safety.report("db.tpc", internal)
        return
    span = op[0]
    try:
        if ended and span.is_recording:
            span.set_attribute("db.transaction.outcome", "rollback")
            span.set_attribute("db.transaction.rollback_reason", cause)
    except Exception as internal:
        _safety.report("db.commit", internal)
    if exc is None:
        state.done(op, -1)
    else:
        state.fail(op, exc)


def instrument(conn: Any, *, sql_comments: bool | None = None, capture_parameters: bool | None = None) -> Any:
    """Trace every statement run on a psycopg2 connection's cursors (and its 2PC calls,
    ``commit()`` and ``rollback()`` when it has a ``__dict__``); returns ``conn``."""
    state = _STATES.get(id(conn))
    if state is not None and state.instrumented:
        state.set_overrides(sql_comments, capture_parameters)
        factory = conn.cursor_factory
        if otel_replaced(factory, _cursors_traced(conn)):
            traced = _traced_factory(factory)  # (OpenTelemetry's class, traced as any other)
            if traced is not None:
                conn.cursor_factory = traced
        return conn
    state = ConnState(conn, sql_comments=sql_comments, capture_parameters=capture_parameters)
    factory = conn.cursor_factory
    state.orig_cursor_factory = factory
    if not getattr(factory, "_pitchey_traced", False):
        traced = _traced_factory(factory)
        if traced is not None:
            conn.cursor_factory = traced
    state.instrumented = True
    key = id(conn)
    _STATES[key] = state
    weakref.finalize(conn, _forget, key, state).atexit = False  # (at exit it is not collected)
    _set_cursor_method(conn)
    _set_tpc_methods(conn, state)
    _set_end_methods(conn, state)
    return conn


def _cursors_traced(conn: Any) -> bool:
    """True when the connection's cursors are still traced: its factory is ours (or derived
    from ours), or it has our ``cursor`` wrapper (a ``__dict__``: that switches whatever class
    the factory makes, OpenTelemetry's too)."""
    if getattr(conn.cursor_factory, "_pitchey_traced", False):
        return True
    attrs = getattr(conn, "__dict__", None)
    return isinstance(attrs, dict) and hasattr(attrs.get("cursor"), "_pitchey_wraps")


def _forget(key: int, state: ConnState) -> None:
    """The connection is gone (garbage-collected): drop its state, and end the spans of the
    ``traced_transaction`` blocks still open on it (entered, never exited), whose transaction
    the server rolled back when psycopg2 closed the session. Never raises."""
    try:
        if _STATES.get(key) is state:
            del _STATES[key]
        end_abandoned_blocks(state)
    except Exception as exc:
        _safety.report("db.transaction", exc)


def uninstrument(conn: Any) -> Any:
    """Undo :func:`instrument`: the connection's own cursor factory, ``cursor`` (and ``tpc_*``,
    ``commit``, ``rollback``) come back."""
    state = _STATES.pop(id(conn), None)
    if state is not None:
        state.instrumented = False
        if getattr(conn.cursor_factory, "_pitchey_traced", False):
            conn.cursor_factory = state.orig_cursor_factory
        _unset_cursor_method(conn)
        attrs = getattr(conn, "__dict__", None)
        if isinstance(attrs, dict):
            for name in (*_TPC_METHODS, *END_METHODS, *_IMPLICIT_END):
                attrs.pop(name, None)
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
    or with ``force_rollback``) at the end; inside a transaction, a savepoint instead.

    psycopg2's ``set_isolation_level()``, ``set_client_encoding()``, ``reset()`` and ``close()``
    can end the transaction inside the block (see :func:`_implicit_end_methods`): every block
    open then records ``rollback`` with that method's name as the reason, whatever its end
    does, which is unchanged (the outermost one commits what ran after, in a new transaction,
    as psycopg2 itself would; a nested one's RELEASE fails: its savepoint went with the
    transaction)."""

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
        self._block: OpenBlock | None = None

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
                self._block = open_block(self._state, span, self._frame)
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
            # The class's methods: this block records the outcome, so no COMMIT / ROLLBACK
            # span of the traced instance methods as well.
            elif commit:
                type(self._conn).commit(self._conn)
            else:
                type(self._conn).rollback(self._conn)
        except BaseException as error:
            self._finish(False, error, error)
            raise
        self._finish(commit, ev, ev)

    def _finish(self, committed: bool, reason: BaseException | None, failure: BaseException | None) -> None:
        frame, self._frame = self._frame, None
        count = self._state.pop_frame(frame)
        span, self._span = self._span, None
        block, self._block = self._block, None
        ended = close_block(self._state, block)
        if span is None:
            return
        try:
            if ended is not None:  # (its transaction was rolled back from psycopg2's C code)
                transaction_outcome(span, False, None, failure, count)
                if span.is_recording:
                    span.set_attribute("db.transaction.rollback_reason", ended)
            else:
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
    else:
        otel_replaced(conn.cursor_factory, _cursors_traced(conn))
    state = _state(conn)
    assert state is not None
    return _Transaction(conn, state, savepoint_name, force_rollback, name)
