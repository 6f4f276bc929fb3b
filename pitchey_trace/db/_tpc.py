"""Two-phase commit on an instrumented psycopg 3 connection (``tpc_begin`` / ``tpc_prepare`` /
``tpc_commit`` / ``tpc_rollback``, sync and async), and on a psycopg2 connection whose
instances have a ``__dict__`` (a Python subclass of its C connection type; see
:mod:`pitchey_trace.db._psycopg2`).

* ``tpc_begin(xid)`` opens a ``TRANSACTION`` span. It is not made current: the phases are
  separate calls, and the commit often runs elsewhere (a coordinator, another task), where the
  span could not be taken back out of this context. The statements run meanwhile are its
  siblings; it counts them (``db.transaction.statement_count``).
* ``tpc_prepare()`` ends it with ``db.transaction.outcome`` ``prepare``; a failing ``PREPARE
  TRANSACTION`` (the server then rolls the transaction back) ends it as ``rollback`` with the
  error. In a transaction that already failed (a statement raised), PREPARE TRANSACTION rolls
  back without an error: ``rollback``, reason ``failed_transaction``.
* ``tpc_commit()`` / ``tpc_rollback()`` without a prepare (one phase) end it as ``commit`` /
  ``rollback`` (a failing commit: ``rollback`` with the error).
* After a prepare, or with an ``xid`` (recovery: finishing a transaction another connection
  prepared, found with ``tpc_recover()``), the call is a span of its own, ``COMMIT PREPARED``
  or ``ROLLBACK PREPARED`` (client kind), with the outcome on success and the error (e.g.
  ``42704``, no such prepared transaction) on failure. It never touches an open transaction's
  span or counters.
* A 2PC span still open when ``tpc_begin`` is called again with the connection idle (its
  transaction ended another way), or when the connection is garbage-collected, ends as
  ``rollback`` with the reason ``abandoned``. A ``tpc_begin`` the driver refuses because that
  transaction is still going on is not traced: the transaction and its span go on.
* ``tpc_recover()``: psycopg 3 runs its query on a cursor of the connection, so it is an
  ordinary ``SELECT`` span. psycopg2 runs it from C on a plain cursor: given ``recover``,
  ``make_tpc_methods`` makes the same span around the call (the query is known; it cannot
  carry an SQL comment).

This module imports no driver: psycopg2-only installs use it too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._span import TrustedAttributes
from pitchey_trace.db._commit import DRIVER_HOUSEKEEPING
from pitchey_trace.db._ops import ConnState, Stmt, live_connection, transaction_outcome

__all__ = ["make_tpc_methods"]

#: libpq's PQTRANS_INERROR: psycopg's ``pq.TransactionStatus.INERROR`` (an IntEnum equal to
#: it) and psycopg2's ``TRANSACTION_STATUS_INERROR``.
_INERROR = 3
_IDLE = 0  # PQTRANS_IDLE
#: The query both drivers' ``tpc_recover()`` runs.
RECOVER_QUERY = "SELECT gid, prepared, owner, database FROM pg_prepared_xacts"
_FAILED = "failed_transaction"


class _Open:
    """The span of a 2PC transaction between ``tpc_begin`` and its end."""

    __slots__ = ("finalizer", "frame", "span", "state")

    def __init__(self, state: ConnState, span: Any, frame: list[int]) -> None:
        self.state = state
        self.span = span
        self.frame = frame
        self.finalizer: Any = None


def _open(conn: Any, state: ConnState) -> None:
    try:
        _close(state, None, outcome="rollback", abandoned=True)
        span = state.transaction_span(False, None)
        if span is None:
            return
        tx = _Open(state, span, state.push_frame())
        tx.finalizer = weakref.finalize(conn, _abandon, tx)
        state.tpc = tx
    except Exception as exc:
        _safety.report("db.tpc", exc)


def _abandon(tx: _Open) -> None:
    if tx.state.tpc is tx:
        _close(tx.state, None, outcome="rollback", abandoned=True)


def _refuses_begin(conn: Any, state: ConnState) -> bool:
    """True when ``tpc_begin`` comes while this connection's 2PC transaction is still going
    on (in a transaction): the driver refuses it, and that transaction, its span with it,
    goes on. (A span left open by a 2PC ended another way, the connection idle again, is
    abandoned by the next ``tpc_begin`` instead.)"""
    if state.tpc is None:
        return False
    try:
        return bool(conn.info.transaction_status != _IDLE)
    except Exception:
        return False


def _in_error(conn: Any) -> bool:
    """True when the transaction already failed: PREPARE TRANSACTION then rolls it back
    (the server answers ``ROLLBACK``, without an error)."""
    try:
        return bool(conn.info.transaction_status == _INERROR)
    except Exception:
        return False


def _close(
    state: ConnState,
    failure: BaseException | None,
    *,
    outcome: str,
    abandoned: bool = False,
    reason: str | None = None,
) -> None:
    """End the open 2PC span (if any) with ``outcome`` (``prepare``, ``commit``, ``rollback``);
    ``failure``: the error that ended it (recorded, and the outcome is then ``rollback``)."""
    tx = state.tpc
    if tx is None:
        return
    state.tpc = None
    span = tx.span
    try:
        if tx.finalizer is not None:
            tx.finalizer.detach()
        count = state.pop_frame(tx.frame)
        if failure is not None or outcome != "prepare":
            transaction_outcome(span, failure is None and outcome == "commit", failure, failure, count)
        elif span.is_recording:
            span.set_attribute("db.transaction.outcome", "prepare")
            span.set_attribute("db.transaction.statement_count", count)
        if (abandoned or reason) and span.is_recording:
            span.set_attribute("db.transaction.rollback_reason", reason or "abandoned")
    except Exception as exc:
        _safety.report("db.tpc", exc)
    try:
        span.end()
    except Exception as exc:
        _safety.report("db.tpc", exc)


def _phase(state: ConnState, action: str) -> Any:
    """Start the span of ``COMMIT PREPARED`` / ``ROLLBACK PREPARED``; None when not traced."""
    try:
        text = f"{action} PREPARED ?"
        attrs = TrustedAttributes(state.base_attrs)
        attrs["db.operation.name"] = f"{action} PREPARED"
        attrs["db.query.text"] = text
        stmt = Stmt(f"{action} PREPARED", attrs, f"{action} PREPARED", None, text, (), None, False, False)
        return state.begin_statement(stmt)
    except Exception as exc:
        _safety.report("db.tpc", exc)
        return None


def _phase_done(state: ConnState, op: Any, action: str, exc: BaseException | None) -> None:
    if op is None:
        return
    if exc is not None:
        state.fail(op, exc)
        return
    try:
        if op[0].is_recording:
            op[0].set_attribute("db.transaction.outcome", "commit" if action == "COMMIT" else "rollback")
    except Exception as internal:
        _safety.report("db.tpc", internal)
    state.done(op, -1)


def make_tpc_methods(
    conn: Any,
    state: ConnState,
    is_async: bool,
    *,
    is_traced: Callable[[Any], bool] | None = None,
    recover: Callable[[Any], bool] | None = None,
) -> dict[str, Any]:
    """The traced ``tpc_*`` methods set on the instance by ``instrument``. They hold the
    connection weakly (no cycle through its own ``__dict__``).

    ``is_traced(conn)``: whether ``state`` is the connection's live state (default: psycopg
    3's ``_pitchey_trace_state`` attribute). ``recover(conn)`` (sync only; psycopg2, whose
    ``tpc_recover`` queries from C): also wrap ``tpc_recover`` in the span of its query when
    it returns True (the call will send the query; False: it refuses first, untraced)."""
    target = live_connection(conn)
    cls = type(conn)

    def traced(c: Any) -> bool:
        if is_traced is not None:
            return is_traced(c)
        return getattr(c, "_pitchey_trace_state", None) is state and state.instrumented

    def finish_action(action: str, xid: Any) -> tuple[bool, Any]:
        """(one phase, op of a PREPARED span)."""
        if xid is None and state.tpc is not None:
            return True, None
        return False, _phase(state, action)

    if not is_async:

        def tpc_begin(xid: Any) -> None:
            c = target()
            if not traced(c) or _refuses_begin(c, state):
                return cls.tpc_begin(c, xid)  # type: ignore[no-any-return]
            _open(c, state)
            try:
                cls.tpc_begin(c, xid)
            except BaseException as exc:
                _close(state, exc, outcome="rollback")
                raise
            return None

        def tpc_prepare() -> None:
            c = target()
            if not traced(c):
                return cls.tpc_prepare(c)  # type: ignore[no-any-return]
            failed = _in_error(c)
            try:
                cls.tpc_prepare(c)
            except BaseException as exc:
                _close(state, exc, outcome="rollback")
                raise
            _close(
                state, None, outcome="rollback" if failed else "prepare", reason=_FAILED if failed else None
            )
            return None

        def finish(action: str, xid: Any) -> None:
            c = target()
            method = cls.tpc_commit if action == "COMMIT" else cls.tpc_rollback
            if not traced(c):
                return method(c) if xid is None else method(c, xid)  # type: ignore[no-any-return]
            one_phase, op = finish_action(action, xid)
            try:
                if xid is None:  # (psycopg2's C methods refuse an explicit None)
                    method(c)
                else:
                    method(c, xid)
            except BaseException as exc:
                if one_phase:
                    _close(state, exc, outcome="rollback")
                _phase_done(state, op, action, exc)
                raise
            if one_phase:
                _close(state, None, outcome="commit" if action == "COMMIT" else "rollback")
            _phase_done(state, op, action, None)
            return None

        def tpc_commit(xid: Any = None) -> None:
            finish("COMMIT", xid)

        def tpc_rollback(xid: Any = None) -> None:
            finish("ROLLBACK", xid)

    else:

        async def tpc_begin(xid: Any) -> None:  # type: ignore[misc]
            c = target()
            if not traced(c) or _refuses_begin(c, state):
                return await cls.tpc_begin(c, xid)  # type: ignore[no-any-return]
            _open(c, state)
            try:
                await cls.tpc_begin(c, xid)
            except BaseException as exc:
                _close(state, exc, outcome="rollback")
                raise
            return None

        async def tpc_prepare() -> None:  # type: ignore[misc]
            c = target()
            if not traced(c):
                return await cls.tpc_prepare(c)  # type: ignore[no-any-return]
            failed = _in_error(c)
            try:
                await cls.tpc_prepare(c)
            except BaseException as exc:
                _close(state, exc, outcome="rollback")
                raise
            _close(
                state, None, outcome="rollback" if failed else "prepare", reason=_FAILED if failed else None
            )
            return None

        async def afinish(action: str, xid: Any) -> None:
            c = target()
            method = cls.tpc_commit if action == "COMMIT" else cls.tpc_rollback
            if not traced(c):
                return await method(c, xid)  # type: ignore[no-any-return]
            one_phase, op = finish_action(action, xid)
            try:
                await method(c, xid)
            except BaseException as exc:
                if one_phase:
                    _close(state, exc, outcome="rollback")
                _phase_done(state, op, action, exc)
                raise
            if one_phase:
                _close(state, None, outcome="commit" if action == "COMMIT" else "rollback")
            _phase_done(state, op, action, None)
            return None

        async def tpc_commit(xid: Any = None) -> None:  # type: ignore[misc]
            await afinish("COMMIT", xid)

        async def tpc_rollback(xid: Any = None) -> None:  # type: ignore[misc]
            await afinish("ROLLBACK", xid)

    methods = {
        "tpc_begin": tpc_begin,
        "tpc_prepare": tpc_prepare,
        "tpc_commit": tpc_commit,
        "tpc_rollback": tpc_rollback,
    }
    if recover is not None and not is_async:

        def sends_recover(c: Any) -> bool:
            try:
                return recover(c)
            except Exception as exc:
                _safety.report("db.tpc", exc)
                return False

        def run_recover(c: Any) -> Any:
            # psycopg2 ends the transaction its query began with ``self.rollback()`` (looked
            # up on the instance, so the traced one): housekeeping, no ROLLBACK span.
            token = DRIVER_HOUSEKEEPING.set(True)
            try:
                return cls.tpc_recover(c)
            finally:
                DRIVER_HOUSEKEEPING.reset(token)

        def tpc_recover() -> Any:
            c = target()
            if not traced(c) or not sends_recover(c):
                return run_recover(c)
            op = state.begin_text(RECOVER_QUERY)
            if op is None:
                return run_recover(c)
            try:
                xids = run_recover(c)
            except BaseException as exc:
                state.fail(op, exc)
                raise
            state.done(op, len(xids) if isinstance(xids, list) else -1)
            return xids

        methods["tpc_recover"] = tpc_recover
    for name, fn in methods.items():
        fn.__doc__ = getattr(cls, name).__doc__
    return methods
