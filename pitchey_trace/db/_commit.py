"""Direct ``conn.commit()`` / ``conn.rollback()`` on an instrumented connection.

What Django's outermost ``atomic()``, SQLAlchemy and most DB-API code call to end a
transaction; they are not statements, so the cursor hooks never see them. ``instrument`` sets
these methods on the instance (psycopg 3 sync and async; psycopg2 when the connection has a
``__dict__``, see :mod:`pitchey_trace.db._psycopg2`). A call that ends a transaction in
progress is a client span ``COMMIT`` / ``ROLLBACK`` with the connection's attributes and
``db.transaction.outcome``:

* success: ``commit`` / ``rollback``; a COMMIT of a failed transaction (a statement raised
  and the transaction was not rolled back) makes the server roll back without an error:
  ``rollback``, ``db.transaction.rollback_reason`` ``failed_transaction``;
* a failing call (serialization failure ``40001``, a deferred constraint checked at commit,
  a lost connection): ``rollback``, the reason (exception type) and the error as on any
  statement (``db.response.status_code``, ``error.type``, scrubbed ``exception`` event); the
  exception is re-raised unchanged;
* in pipeline mode, an earlier statement's error that psycopg raises from ``commit()`` (as
  it queues the COMMIT or at its sync; that statement's span has it) while the transaction
  stays open, failed (the COMMIT was skipped or never sent): a ``pipeline_aborted`` event, no
  outcome, no error status;
* interrupted (task cancelled, Ctrl-C): a ``cancelled`` event, no outcome (unknown).

No span when the call sends nothing: no transaction in progress (autocommit, idle), inside a
``conn.transaction()`` block or a two-phase transaction (the driver refuses the call). None
for the transaction blocks (``conn.transaction()``, ``traced_transaction``), which end the
transaction without calling these methods and record their outcome on their ``TRANSACTION``
span, nor for psycopg 3's ``tpc_recover()`` ending the transaction its own query began (see
:data:`DRIVER_HOUSEKEEPING`). The span is a statement to the rest of
the module: timed against ``slow_threshold_ms`` (a slow COMMIT: fsync, synchronous
replication) and counted in enclosing traced blocks.

This module imports no driver: psycopg2-only installs use it too.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pitchey_trace import _safety
from pitchey_trace.db._ops import ConnState, Op, error_info, live_connection

__all__ = ["DRIVER_HOUSEKEEPING", "END_METHODS", "make_end_methods"]

#: The connection methods :func:`make_end_methods` replaces on the instance.
END_METHODS = ("commit", "rollback")
_FAILED = "failed_transaction"
#: True while the driver ends a transaction it opened for its own query (``tpc_recover()`` of
#: both drivers rolls back the transaction its recover query began, through
#: ``self.rollback()``, which finds the traced instance method): no span for that. A context
#: variable, so that only that call (this thread, this task) is affected.
DRIVER_HOUSEKEEPING: ContextVar[bool] = ContextVar("pitchey_trace_db_housekeeping", default=False)


def _end(
    state: ConnState,
    op: Op,
    action: str,
    exc: BaseException | None,
    was_failed: bool,
    skipped: bool,
) -> None:
    """End the span with the outcome. ``was_failed``: the transaction had already failed
    before the call; ``skipped``: ``exc`` is an earlier pipelined statement's error and the
    transaction is still open."""
    span = op[0]
    try:
        if span.is_recording:
            if exc is None:
                committed = action == "COMMIT" and not was_failed
                span.set_attribute("db.transaction.outcome", "commit" if committed else "rollback")
                if action == "COMMIT" and was_failed:
                    span.set_attribute("db.transaction.rollback_reason", _FAILED)
            elif skipped:
                # The COMMIT was skipped or never sent: the transaction is still open (failed).
                span.add_event("pipeline_aborted", {"exception.type": error_info(exc)[1]})
            elif isinstance(exc, Exception):
                span.set_attribute("db.transaction.outcome", "rollback")
                span.set_attribute("db.transaction.rollback_reason", error_info(exc)[1])
    except Exception as internal:
        _safety.report("db.commit", internal)
    if exc is None or skipped:
        state.done(op, -1)
    else:
        state.fail(op, exc)


def make_end_methods(
    conn: Any,
    state: ConnState,
    is_async: bool,
    *,
    is_traced: Callable[[Any], bool],
    pending: Callable[[Any], bool],
    failed: Callable[[Any], bool],
    skipped: Callable[[Any, BaseException], bool] | None = None,
) -> dict[str, Any]:
    """The traced ``commit`` / ``rollback`` set on the instance by ``instrument``. They hold
    the connection weakly (no cycle through its own ``__dict__``) and call the class's methods.

    ``is_traced(conn)``: ``state`` is the connection's live state. ``pending(conn)``: the call
    will send COMMIT / ROLLBACK (a transaction is in progress and the driver will not refuse).
    ``failed(conn)``: the transaction already failed. ``skipped(conn, exc)`` (after a
    failure): ``exc`` is an earlier pipelined statement's error and the call ended nothing.
    They are only called when tracing is on; one that raises means "not traced"."""
    target = live_connection(conn)
    cls = type(conn)

    def start(c: Any, action: str) -> tuple[Op | None, bool]:
        """(span op or None, the transaction had failed). Never raises."""
        try:
            if not is_traced(c) or not pending(c) or DRIVER_HOUSEKEEPING.get():
                return None, False
            op = state.begin_text(action)
            return op, (op is not None and failed(c))
        except Exception as exc:
            _safety.report("db.commit", exc)
            return None, False

    def finish(c: Any, op: Op, action: str, exc: BaseException | None, was_failed: bool) -> None:
        try:
            aborted = exc is not None and skipped is not None and skipped(c, exc)
        except Exception as internal:
            _safety.report("db.commit", internal)
            aborted = False
        _end(state, op, action, exc, was_failed, aborted)

    if not is_async:

        def run(action: str, method: Any) -> None:
            c = target()
            op, was_failed = start(c, action)
            if op is None:
                return method(c)  # type: ignore[no-any-return]
            try:
                method(c)
            except BaseException as exc:
                finish(c, op, action, exc, was_failed)
                raise
            finish(c, op, action, None, was_failed)
            return None

        def commit() -> None:
            run("COMMIT", cls.commit)

        def rollback() -> None:
            run("ROLLBACK", cls.rollback)

    else:

        async def arun(action: str, method: Any) -> None:
            c = target()
            op, was_failed = start(c, action)
            if op is None:
                return await method(c)  # type: ignore[no-any-return]
            try:
                await method(c)
            except BaseException as exc:
                finish(c, op, action, exc, was_failed)
                raise
            finish(c, op, action, None, was_failed)
            return None

        async def commit() -> None:  # type: ignore[misc]
            await arun("COMMIT", cls.commit)

        async def rollback() -> None:  # type: ignore[misc]
            await arun("ROLLBACK", cls.rollback)

    methods = {"commit": commit, "rollback": rollback}
    for name, fn in methods.items():
        fn.__doc__ = getattr(cls, name).__doc__
    return methods
