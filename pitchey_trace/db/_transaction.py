"""Traced transaction blocks: ``conn.transaction()`` on an instrumented connection.

A block opened while the connection is idle is a ``TRANSACTION`` span; one opened inside a
transaction (psycopg then uses a savepoint) is a ``SAVEPOINT`` span, child of the enclosing
block's span. Each records its outcome (``commit`` / ``rollback``), the rollback reason
(exception type and SQLSTATE, ``Rollback``, ``force_rollback``) and how many statements ran
inside. The span is current inside the block, so query spans are its children.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq

from pitchey_trace import _safety
from pitchey_trace._span import AnySpan
from pitchey_trace.db._ops import ConnState, OpenBlock, close_block, open_block, transaction_outcome

__all__ = ["AsyncTracedTransaction", "TracedTransaction"]

_IDLE = pq.TransactionStatus.IDLE
# (a closed or broken connection: no transaction to nest in; psycopg refuses the block)
_UNKNOWN = pq.TransactionStatus.UNKNOWN
_COMMITTED = psycopg.Transaction.Status.COMMITTED


class _TxBase:
    __slots__ = (
        "_block",
        "_cm",
        "_conn",
        "_force_rollback",
        "_frame",
        "_name",
        "_orig",
        "_savepoint_name",
        "_span",
        "_state",
        "_tx",
    )

    def __init__(
        self,
        conn: Any,
        state: ConnState,
        orig: Any,
        savepoint_name: str | None = None,
        force_rollback: bool = False,
        name: str | None = None,
    ) -> None:
        self._conn = conn
        self._state = state
        self._orig = orig
        self._savepoint_name = savepoint_name
        self._force_rollback = force_rollback
        self._name = name
        self._span: AnySpan | None = None
        self._cm: Any = None
        self._tx: Any = None
        self._frame: list[int] | None = None
        self._block: OpenBlock | None = None

    def _start(self) -> None:
        """Open the span (made current) before BEGIN/SAVEPOINT is sent. Never raises."""
        try:
            nested = self._conn.info.transaction_status not in (_IDLE, _UNKNOWN)
            span = self._state.transaction_span(nested, self._name)
            if span is None:
                return
            span.__enter__()
            self._span = span
            self._frame = self._state.push_frame()
            self._block = open_block(self._state, span, self._frame)
        except Exception as exc:
            _safety.report("db.transaction", exc)

    def _entered(self) -> None:
        try:
            span = self._span
            if span is not None and span.is_recording:
                # In pipeline mode the status before the block is that of unsynced statements
                # (ACTIVE); psycopg decides after syncing: follow its decision.
                outer = getattr(self._tx, "_outer_transaction", None)
                if outer is not None:
                    operation = "TRANSACTION" if outer else "SAVEPOINT"
                    if span.attributes.get("db.operation.name") != operation:
                        span.set_attribute("db.operation.name", operation)
                        if self._name is None:
                            span.update_name(operation)
                savepoint = self._tx.savepoint_name
                if savepoint and self._span.attributes.get("db.operation.name") == "SAVEPOINT":  # type: ignore[union-attr]
                    span.set_attribute("db.transaction.savepoint_name", savepoint)
        except Exception as exc:
            _safety.report("db.transaction", exc)

    def _finish(
        self,
        exc: BaseException | None,
        suppressed: bool,
        commit_error: BaseException | None,
    ) -> None:
        """Record the outcome and end the span. Never raises."""
        span = self._span
        if span is None:
            return
        self._span = None
        try:
            block, self._block = self._block, None
            close_block(self._state, block)
            frame, self._frame = self._frame, None
            count = self._state.pop_frame(frame)
            tx = self._tx
            committed = tx is not None and commit_error is None and getattr(tx, "status", None) == _COMMITTED
            # psycopg.Rollback is a requested rollback, also when it targets an outer block and
            # passes through this one (psycopg re-raises it here): never a failure.
            failed = exc is not None and not suppressed and not isinstance(exc, psycopg.Rollback)
            failure = commit_error or (exc if failed else None)
            transaction_outcome(span, committed, commit_error or exc, failure, count, self._force_rollback)
            # conn.close() inside the block: psycopg ends it quietly, the server rolls back.
            quiet = not committed and commit_error is None and exc is None
            if quiet and span.is_recording and self._conn.closed:
                span.set_attribute("db.transaction.rollback_reason", "close")
        except Exception as internal:
            _safety.report("db.transaction", internal)
        try:
            span.__exit__(None, None, None)
        except Exception as internal:
            _safety.report("db.transaction", internal)


class TracedTransaction(_TxBase):
    """Wraps a sync ``Connection.transaction()`` block; returns psycopg's ``Transaction``."""

    __slots__ = ()

    def __enter__(self) -> psycopg.Transaction:
        self._start()
        try:
            self._cm = self._orig(self._savepoint_name, self._force_rollback)
            self._tx = self._cm.__enter__()
        except BaseException as exc:
            self._finish(exc, False, None)
            raise
        self._entered()
        return self._tx  # type: ignore[no-any-return]

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            suppressed = bool(self._cm.__exit__(et, ev, tb))
        except BaseException as commit_error:
            self._finish(ev, False, commit_error)
            raise
        self._finish(ev, suppressed, None)
        return suppressed


class AsyncTracedTransaction(_TxBase):
    """Wraps an ``AsyncConnection.transaction()`` block (``async with``)."""

    __slots__ = ()

    async def __aenter__(self) -> psycopg.AsyncTransaction:
        self._start()
        try:
            self._cm = self._orig(self._savepoint_name, self._force_rollback)
            self._tx = await self._cm.__aenter__()
        except BaseException as exc:
            self._finish(exc, False, None)
            raise
        self._entered()
        return self._tx  # type: ignore[no-any-return]

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            suppressed = bool(await self._cm.__aexit__(et, ev, tb))
        except BaseException as commit_error:
            self._finish(ev, False, commit_error)
            raise
        self._finish(ev, suppressed, None)
        return suppressed
