"""psycopg 3 pipeline mode: a statement's outcome arrives after its ``execute()`` returned.

In pipeline mode (``with conn.pipeline():``) ``execute()`` only queues the statement; psycopg
reads its result later (at a sync, a fetch, another statement's ``execute`` or the end of the
block) and raises an error there. A traced statement run in a pipeline therefore keeps its span
open until its result is processed, and ends it then with the result's outcome.

How results are matched to spans, exactly and in O(1): psycopg appends one ``(cursor, info)``
tuple per statement to ``pipeline.result_queue`` and later hands that same tuple to
``pipeline._process_results(queued, results)``. The first traced statement of a pipeline
installs, on that pipeline object only (psycopg makes a new one per outermost
``conn.pipeline()`` block):

* ``result_queue``: a deque subclass whose ``append`` maps the tuple's identity to the
  statement registering on that cursor (``executemany`` appends one per parameter set);
* ``_process_results``: records each mapped result (rows, or the error) on its statement and
  ends the span once every result of the statement arrived;
* ``_communicate_gen`` / ``_fetch_gen``: remember an error that is not a statement's result
  (the connection failed), for statements whose results then never arrive;
* ``_exit``: when the outermost block ends, every span still open ends (with that error, the
  task's cancellation, or a ``pipeline_no_result`` event): none outlives the block.

A statement the server skipped because an earlier one failed (``PipelineAborted``) ends with
status unset and a ``pipeline_aborted`` event: the error is the failing statement's only. At
most :data:`MAX_OPEN` spans wait per pipeline; beyond that the oldest ends at once with a
``pipeline_unresolved`` event (a pipeline queuing without ever syncing stays bounded).

Nothing here runs outside pipeline mode: the plain query path only checks
``conn._pipeline is None``.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections import deque
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import errors as _errors

from pitchey_trace import _safety
from pitchey_trace._span import Span
from pitchey_trace.db._ops import ConnState, Op, audit, record_error

__all__ = ["MAX_OPEN", "Entry", "begin", "end", "statement_error"]

#: Spans waiting for their result in one pipeline, at most.
MAX_OPEN = 4096
_ATTR = "_pitchey_trace_pipeline"
_ABORTED = "psycopg.errors.PipelineAborted"
_BAD = psycopg.pq.ConnStatus.BAD

try:  # (psycopg's Prepare enum: a statement prepared in the pipeline is preceded by its Parse)
    from psycopg._preparing import Prepare

    _SHOULD: Any = Prepare.SHOULD
except Exception:  # pragma: no cover - a psycopg without it: prepare errors show as aborted
    _SHOULD = object()


class Entry:
    """One traced statement waiting for its results."""

    __slots__ = (
        "aborted",
        "cursor_id",
        "error",
        "expected",
        "op",
        "open",
        "received",
        "rows",
        "state",
        "tracker",
    )

    def __init__(self, state: ConnState, op: Op, cursor_id: int, tracker: _Tracker | None) -> None:
        self.state = state
        self.op: Op | None = op
        self.cursor_id = cursor_id
        self.tracker = tracker
        self.open = True  # its execute()/executemany() call is still running
        self.expected = 0  # results it queued
        self.received = 0
        self.rows = -1
        self.error: BaseException | None = None
        self.aborted = False

    def result(self, exc: BaseException | None, results: Any, prepare_error: BaseException | None) -> None:
        self.received += 1
        if exc is None:
            for res in results:
                n = res.command_tuples
                if n is not None:
                    self.rows = n if self.rows < 0 else self.rows + n
        elif isinstance(exc, _errors.PipelineAborted):
            if prepare_error is not None and self.error is None:
                self.error = prepare_error  # its own Parse failed: that is its error
            else:
                self.aborted = True
        elif self.error is None:
            self.error = exc
        if not self.open and self.received >= self.expected:
            finish(self)


def finish(entry: Entry, reason: BaseException | None = None, event: str | None = None) -> None:
    """End the entry's span with what its results said (or ``reason`` / ``event`` when they
    never came). Once; never raises."""
    op, entry.op = entry.op, None
    if op is None:
        return
    try:
        span, stmt, _, _ = op
        exc = entry.error or reason
        if exc is not None:
            sqlstate = None
            if isinstance(exc, Exception):
                sqlstate = record_error(span, exc)
            elif span.is_recording:
                span.add_event("cancelled", {"exception.type": type(exc).__qualname__})
            outcome: tuple[str, str | None] = ("error", sqlstate or type(exc).__qualname__)
        elif entry.aborted:
            if span.is_recording:
                span.add_event("pipeline_aborted", {"exception.type": _ABORTED})
            outcome = ("error", "PipelineAborted")
        elif event is not None:
            if span.is_recording:
                span.add_event(event)
            outcome = ("unknown", None)
        else:
            key = stmt.rows_key
            if key is not None and entry.rows >= 0 and span.__class__ is Span:
                span.set_attribute(key, entry.rows)
            outcome = ("success", None)
        span.end()
        if stmt.sensitive:
            audit(span, stmt, outcome[0], outcome[1])
    except Exception as internal:
        _safety.report("db.pipeline", internal)


class _Tracker:
    """The traced statements of one pipeline object."""

    __slots__ = (
        "__weakref__",
        "by_item",
        "failure",
        "order",
        "prepare_error",
        "registering",
        "seen",
        "statement_errors",
    )

    def __init__(self) -> None:
        self.by_item: dict[int, Entry] = {}  # id(result_queue tuple) -> its statement
        self.registering: dict[int, Entry] = {}  # id(cursor) -> statement being queued
        self.order: deque[Entry] = deque()  # registration order, for the MAX_OPEN bound
        self.seen: deque[BaseException] = deque(maxlen=16)  # errors of processed results
        # errors of statements' results (not of commands: BEGIN, COMMIT, a Parse)
        self.statement_errors: deque[BaseException] = deque(maxlen=16)
        self.failure: BaseException | None = None  # the pipeline's own failure (connection)
        self.prepare_error: BaseException | None = None

    def saw(self, exc: BaseException) -> bool:
        return any(e is exc for e in self.seen)

    def close(self, reason: BaseException | None) -> None:
        """The outermost block ended: end every span still waiting."""
        reason = self.failure or reason
        entries = {id(e): e for e in (*self.by_item.values(), *self.registering.values(), *self.order)}
        self.by_item.clear()
        self.registering.clear()
        self.order.clear()
        self.seen.clear()
        self.statement_errors.clear()
        for entry in entries.values():
            if entry.op is not None:
                finish(entry, reason, None if reason is not None else "pipeline_no_result")


class _ResultQueue(deque):  # type: ignore[type-arg]
    """psycopg's ``result_queue`` that also maps each statement's tuple to its entry."""

    __slots__ = ("tracker",)
    tracker: _Tracker

    def append(self, item: Any) -> None:
        deque.append(self, item)
        if item is not None:
            try:
                tracker: _Tracker = self.tracker
                entry = tracker.registering.get(id(item[0]))
                if entry is not None:
                    tracker.by_item[id(item)] = entry
                    entry.expected += 1
            except Exception as exc:
                _safety.report("db.pipeline", exc)


def _install(pipeline: Any) -> _Tracker:
    tracker: _Tracker | None = pipeline.__dict__.get(_ATTR)
    if tracker is not None:
        return tracker
    tracker = _Tracker()
    cls = type(pipeline)
    ref = weakref.ref(pipeline)  # (no strong cycle through the instance's own __dict__)
    queue = _ResultQueue(pipeline.result_queue)
    queue.tracker = tracker

    def _process_results(queued: Any, results: Any) -> None:
        p = ref()
        assert p is not None
        entry = None
        prepare_error, tracker.prepare_error = tracker.prepare_error, None
        if queued is not None:
            entry = tracker.by_item.pop(id(queued), None)
        try:
            cls._process_results(p, queued, results)
        except BaseException as exc:
            tracker.seen.append(exc)
            if queued is not None:
                tracker.statement_errors.append(exc)
            try:
                if entry is not None:
                    info = queued[1]
                    prepared = info is not None and len(info) > 1 and info[1] is _SHOULD
                    entry.result(exc, results, prepare_error if prepared else None)
                elif queued is None and not isinstance(exc, _errors.PipelineAborted):
                    tracker.prepare_error = exc  # a Parse (or BEGIN/COMMIT) that failed
            except Exception as internal:
                _safety.report("db.pipeline", internal)
            raise
        if entry is not None:
            try:
                entry.result(None, results, None)
            except Exception as internal:
                _safety.report("db.pipeline", internal)

    def _communicate_gen() -> Generator[Any, Any, None]:
        p = ref()
        assert p is not None
        try:
            yield from cls._communicate_gen(p)
        except Exception as exc:
            if not tracker.saw(exc):
                tracker.failure = exc
            raise

    def _fetch_gen(*, flush: bool) -> Generator[Any, Any, None]:
        p = ref()
        assert p is not None
        try:
            yield from cls._fetch_gen(p, flush=flush)
        except Exception as exc:
            if not tracker.saw(exc):
                tracker.failure = exc
            raise

    def _exit(exc: BaseException | None) -> None:
        p = ref()
        try:
            if p is not None:
                cls._exit(p, exc)
        finally:
            if p is None or p.level == 0:
                pending = sys.exc_info()[1] or exc
                # Results that never came are explained by the task's cancellation (Ctrl-C) or
                # the connection's failure, not by an error of the block's own code (psycopg
                # still reads every result after one).
                if pending is not None and (
                    tracker.saw(pending)
                    or (isinstance(pending, Exception) and p is not None and p.pgconn.status != _BAD)
                ):
                    pending = None
                tracker.close(pending)

    pipeline.result_queue = queue
    pipeline._process_results = _process_results
    pipeline._communicate_gen = _communicate_gen
    pipeline._fetch_gen = _fetch_gen
    pipeline._exit = _exit
    setattr(pipeline, _ATTR, tracker)
    return tracker


#: The private psycopg methods :func:`_install` wraps, with the parameters it calls them with.
_HOOKED = {
    "_process_results": ("self", "queued", "results"),
    "_communicate_gen": ("self",),
    "_fetch_gen": ("self", "flush"),
    "_exit": ("self", "exc"),
}
_supported: dict[type, bool] = {}


def _hookable(cls: type) -> bool:
    """Whether ``cls`` (psycopg's pipeline class) has the private methods :func:`_install` wraps,
    with the parameters it passes (checked once per class): a psycopg that changed them gets
    the plain behaviour (each span ends when its ``execute()`` returns) instead of a wrapper
    that would raise into the application."""
    known = _supported.get(cls)
    if known is None:
        try:
            known = all(
                tuple(inspect.signature(getattr(cls, name)).parameters) == params
                for name, params in _HOOKED.items()
            )
        except Exception:
            known = False
        _supported[cls] = known
    return known


def statement_error(pipeline: Any, exc: BaseException) -> bool | None:
    """Whether ``exc`` is the error of a statement's result processed in this pipeline (not
    of a command psycopg queued itself, such as ``commit()``'s COMMIT); None when no traced
    statement ran in it (nothing was recorded)."""
    tracker: _Tracker | None = pipeline.__dict__.get(_ATTR)
    if tracker is None:
        return None
    return any(e is exc for e in tracker.statement_errors)


def begin(cur: Any, state: ConnState, op: Op, pipeline: Any) -> Entry:
    """Register a traced statement about to be queued on ``pipeline``. Never raises (the entry
    then has no tracker: :func:`end` ends its span at once, as outside a pipeline)."""
    tracker = None
    try:
        tracker = pipeline.__dict__.get(_ATTR)
        if tracker is None:
            if not _hookable(type(pipeline)):
                return Entry(state, op, id(cur), None)
            if isinstance(pipeline, psycopg.Pipeline):
                # psycopg touches the queue only under the connection's lock (which its
                # execute() takes right after: waiting for it here cannot deadlock more).
                with cur._conn.lock:
                    tracker = _install(pipeline)
            else:  # asyncio: nothing else runs between here and the install
                tracker = _install(pipeline)
        entry = Entry(state, op, id(cur), tracker)
        tracker.registering[id(cur)] = entry
        # Counted in the transactions open when it is queued (its result may come after).
        for frame in state.tx_stack:
            frame[0] += 1
        order = tracker.order
        order.append(entry)
        while len(order) > MAX_OPEN:
            old = order.popleft()
            if old.op is not None and not old.open:
                finish(old, None, "pipeline_unresolved")
        return entry
    except Exception as exc:
        _safety.report("db.pipeline", exc)
        return Entry(state, op, id(cur), None)


def end(entry: Entry, exc: BaseException | None, rows: int = -1) -> None:
    """The statement's ``execute()`` returned (``exc`` None) or raised ``exc``. Never raises."""
    try:
        tracker = entry.tracker
        if tracker is None:
            op = entry.op
            if op is not None:
                entry.op = None
                if exc is None:
                    entry.state.done(op, rows)
                else:
                    entry.state.fail(op, exc)
            return
        if tracker.registering.get(entry.cursor_id) is entry:
            del tracker.registering[entry.cursor_id]
        entry.open = False
        if exc is not None and not tracker.saw(exc) and entry.error is None:
            # Not a result's error: the call itself failed. Nothing queued (adapting the
            # parameters, a closed connection): that is its outcome. Queued (the connection
            # failed while sending): its results will not come; the block's end says so.
            if entry.expected == 0 or entry.received < entry.expected:
                entry.error = exc
            if entry.expected == 0:
                finish(entry)
                return
        if entry.received >= entry.expected:
            finish(entry)
    except Exception as internal:
        _safety.report("db.pipeline", internal)
