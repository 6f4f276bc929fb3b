"""The per-query hot path: statement cache, span start/end, errors, slow queries, audit.

Everything expensive about a statement (parsing, literal stripping, the span name, the
attribute template, the sensitive-table check) is computed once per statement text and
connection and cached in :class:`ConnState`, so a traced query costs one dict lookup, one
span and a few attribute writes. Every function here that runs on behalf of user code
catches its own errors and reports them through :mod:`pitchey_trace._safety`; the user's
exceptions are never touched.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
import weakref
from collections.abc import Callable, Mapping
from time import time_ns
from typing import TYPE_CHECKING, Any

from pitchey_trace import _safety
from pitchey_trace._span import AttributeValue, Limits, Span, SpanKind, TrustedAttributes
from pitchey_trace._sql import _CACHE_MAX_LEN, normalize_sql, parse_statement
from pitchey_trace._tracer import get_tracer
from pitchey_trace.db._options import OPTIONS

if TYPE_CHECKING:
    from pitchey_trace._span import AnySpan

# The process-wide tracer is never replaced (configure() re-points its pipeline).
_TRACER = get_tracer()

__all__ = ["STATE_ATTR", "ConnState", "Stmt", "logger", "record_error", "set_batch_size"]

#: Name of the attribute holding a connection's :class:`ConnState`.
STATE_ATTR = "_pitchey_trace_state"
#: Slow queries are logged here (WARNING, with trace id and normalised statement).
logger = logging.getLogger("pitchey_trace.db")

_CLIENT = SpanKind.CLIENT
_INTERNAL = SpanKind.INTERNAL
_CACHE_MAX = 512
_RETURNING_OPS = frozenset({"SELECT", "FETCH", "SHOW", "VALUES", "TABLE", "EXPLAIN"})
_AFFECTING_OPS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})
_QUOTED = re.compile(r"\"[^\"]*\"?|'[^']*'?")
_ARG_ERROR = re.compile(
    r"invalid input for query argument \$\d+(?: in element #\d+ of executemany\(\) sequence)?"
)

# An in-flight query: (span, statement info, start time in ns, query to send).
Op = tuple["AnySpan", "Stmt", int, Any]


_OTEL_MODULES = "opentelemetry.instrumentation."


def otel_replaced(factory: Any, traced: bool) -> bool:
    """True when OpenTelemetry's ``instrument_connection()``, run after ``instrument(conn)``,
    put its own traced cursor class in place of pitchey's (``traced``: whether ``factory``, the
    connection's cursor factory now, is still pitchey's or derived from it). OpenTelemetry's
    psycopg class derives from ``psycopg.Cursor``, its psycopg2 class from the factory in
    place unless that is falsy (pitchey's stand-in for an unset factory is): pitchey's
    statement spans then stop. Said once and counted as
    ``misuse.otel.duplicate_instrumentation.<library>``; ``instrument(conn)`` again traces
    the connection anew (each query is then two spans). Never raises."""
    try:
        if traced or not isinstance(factory, type):
            return False
        module = getattr(factory, "__module__", None)
        if not (isinstance(module, str) and module.startswith(_OTEL_MODULES)):
            return False
        library = module[len(_OTEL_MODULES) :].partition(".")[0]
        _safety.warn_once(
            f"otel.duplicate_instrumentation.{library}",
            "pitchey_trace: OpenTelemetry's %s instrument_connection() replaced the cursor factory "
            "of a connection after pitchey_trace.db.instrument(): its statements are no longer "
            "traced by pitchey; use one of the two (or call instrument(conn) again: each query "
            "is then two client spans)",
            library,
        )
        return True
    except Exception as exc:
        _safety.report("db.instrument", exc)
        return False


def live_connection(conn: Any) -> Callable[[], Any]:
    """A function giving ``conn`` back while it lives: the methods set on a connection hold it
    weakly (no cycle through its own ``__dict__``). Once it is gone (reachable only through a
    reference to such a method alone) the function raises ReferenceError."""
    ref = weakref.ref(conn)

    def target() -> Any:
        found = ref()
        if found is None:
            raise ReferenceError("the connection of this method was garbage-collected")
        return found

    return target


class Stmt:
    """What is known about one statement text, computed once."""

    __slots__ = (
        "attrs",
        "capture",
        "comment",
        "name",
        "operation",
        "rows_key",
        "sensitive",
        "skip",
        "table",
        "text",
    )

    def __init__(
        self,
        name: str,
        attrs: dict[str, AttributeValue],
        operation: str,
        table: str | None,
        text: str,
        sensitive: tuple[str, ...],
        rows_key: str | None,
        comment: bool,
        capture: bool,
        skip: bool = False,
    ) -> None:
        self.name = name
        self.attrs = attrs
        self.operation = operation
        self.table = table
        self.text = text
        self.sensitive = sensitive
        self.rows_key = rows_key
        self.comment = comment
        self.capture = capture
        self.skip = skip


_SKIP = Stmt("", {}, "", None, "", (), None, False, False, skip=True)


# A possibly schema-qualified, possibly double-quoted identifier. A bare one starts where a
# word starts (as _sql._TOKEN's identifiers): never the tail of "ñusers" or "x$users".
_NAME = re.compile(r'(?:"[^"]*"|(?<![\w$])[^\W\d][\w$]*)(?:\s*\.\s*(?:"[^"]*"|[^\W\d][\w$]*))*')


def sensitive_tables_in(text: str) -> tuple[str, ...]:
    """The configured sensitive tables the (normalised) statement mentions, in order of first
    mention. A name matches when it equals a configured entry either fully qualified
    (``public.users``) or by its last part (``users``). Runs once per statement text."""
    names = OPTIONS.sensitive_tables
    if not names:
        return ()
    found: list[str] = []
    for m in _NAME.finditer(text):
        full = "".join(m.group(0).split()).replace('"', "").lower()
        bare = full.rsplit(".", 1)[-1]
        name = full if full in names else bare if bare in names else None
        if name is not None and name not in found:
            found.append(name)
    return tuple(found)


def _scrub(message: str) -> str:
    """First line of an error message with every quoted fragment replaced by ``?``:
    PostgreSQL quotes both identifiers and offending values, and values must not leak."""
    first = message.strip().split("\n", 1)[0]
    return _QUOTED.sub("?", first)[:512]


def error_info(exc: BaseException) -> tuple[str | None, str, str]:
    """(SQLSTATE or None, exception type name, message safe to export)."""
    cls = type(exc)
    type_name = (
        cls.__qualname__
        if cls.__module__ in ("builtins", "__main__")
        else f"{cls.__module__}.{cls.__qualname__}"
    )
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)  # (psycopg2: pgcode)
    diag = getattr(exc, "diag", None)
    primary = None
    if diag is not None:
        try:
            primary = diag.message_primary
        except Exception:
            primary = None
    message = primary if primary else str(exc)
    arg = _ARG_ERROR.match(message)
    if arg is not None:
        # asyncpg's client-side DataError shows the argument's repr, unquoted for numbers and
        # lists ("...argument $1: 1099511627776 (value out of int32 range)"): keep only the
        # argument's position and the encoder's reason (its __cause__).
        cause = exc.__cause__
        message = f"{arg.group(0)}: ? ({cause})" if cause is not None else arg.group(0)
    message = _scrub(message)
    return (sqlstate if isinstance(sqlstate, str) and sqlstate else None), type_name, message


def record_error(span: AnySpan, exc: BaseException) -> str | None:
    """Record ``exc`` on ``span`` without any value from the message (status error, an
    ``exception`` event, ``error.type``, ``db.response.status_code``). Returns the SQLSTATE."""
    sqlstate, type_name, message = error_info(exc)
    if not span.is_recording:
        return sqlstate
    if sqlstate:
        span.set_attribute("db.response.status_code", sqlstate)
    span.set_attribute("error.type", sqlstate or type_name)
    # Frame locations only: the source lines shown by a normal traceback are the caller's
    # code, which may hold the very literals db.query.text strips.
    # The innermost 32 frames, where it failed (the message is at most 512 characters).
    frames = "".join(
        f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
        for f in traceback.extract_tb(exc.__traceback__, limit=-32)
    )
    span.record_exception(
        exc,
        {
            "exception.message": message,
            "exception.stacktrace": (
                f"Traceback (most recent call last):\n{frames}{type_name}: {message}"[-8192:]
            ),
        },
    )
    span.set_status("error", f"{type_name}: {message}")
    return sqlstate


def transaction_outcome(
    span: AnySpan,
    committed: bool,
    reason: BaseException | None,
    failure: BaseException | None,
    statement_count: int,
    forced: bool = False,
) -> None:
    """Record how a traced transaction ended: ``db.transaction.outcome``, the statement count,
    the rollback reason (exception type and SQLSTATE, or ``force_rollback``) and, when the
    block failed (``failure``), the error itself. Shared by every driver."""
    if not span.is_recording:
        return
    span.set_attribute("db.transaction.outcome", "commit" if committed else "rollback")
    span.set_attribute("db.transaction.statement_count", statement_count)
    if not committed:
        if reason is not None:
            sqlstate, type_name, _ = error_info(reason)
            span.set_attribute("db.transaction.rollback_reason", type_name)
            if sqlstate:
                span.set_attribute("db.response.status_code", sqlstate)
        elif forced:
            span.set_attribute("db.transaction.rollback_reason", "force_rollback")
    if isinstance(failure, Exception):
        record_error(span, failure)


def set_batch_size(span: AnySpan, params_seq: Any) -> None:
    """``db.operation.batch.size`` of an ``executemany``-like call: the number of parameter
    sets, only from two on (the conventions count a batch from two operations, so the value is
    never 1; an empty one runs nothing) and only when the sequence has a length (an iterator is
    not consumed). Never raises."""
    try:
        if span.is_recording and hasattr(params_seq, "__len__"):
            n = len(params_seq)
            if n >= 2:
                span.set_attribute("db.operation.batch.size", n)
    except Exception as exc:
        _safety.report("db.begin", exc)


def _param_value(value: object, limit: int) -> AttributeValue:
    if value is None:
        return "NULL"
    if value.__class__ in (bool, int, float):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return str(value)[:limit]


def capture_parameters(span: AnySpan, params: Any) -> None:
    """Record parameter values (opt-in) as ``db.query.parameter.<i>`` / ``.<name>``."""
    limit = OPTIONS.max_parameter_length
    if isinstance(params, Mapping):
        for key, value in params.items():
            span.set_attribute(f"db.query.parameter.{key}", _param_value(value, limit))
    elif isinstance(params, (list, tuple)):
        for i, value in enumerate(params):
            span.set_attribute(f"db.query.parameter.{i}", _param_value(value, limit))


def with_comment(query: Any, span: AnySpan) -> Any:
    """``query`` with a ``/*traceparent='...'*/`` prefix (str, bytes or psycopg ``sql``)."""
    comment = f"/*traceparent='00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}'*/ "
    if query.__class__ is str:
        return comment + query
    if isinstance(query, bytes):
        return comment.encode() + query
    pgsql = _sql_module(query)
    if pgsql is not None:
        return pgsql.SQL(comment) + query
    return query


def _sql_module(query: Any) -> Any:
    """psycopg's (or psycopg2's) ``sql`` module when ``query`` is one of its ``Composable``
    objects, else None. (This module also serves drivers without psycopg installed; a
    ``Composable`` can exist only once its module was imported.)"""
    for name in ("psycopg.sql", "psycopg2.sql"):
        module = sys.modules.get(name)
        if module is not None and isinstance(query, module.Composable):
            return module
    return None


def _query_text(query: Any, cur: Any) -> str | None:
    if isinstance(query, str):
        return query
    if isinstance(query, (bytes, bytearray)):
        return bytes(query).decode("utf-8", "replace")
    if _sql_module(query) is not None:
        return query.as_string(cur)  # type: ignore[no-any-return]
    strings = getattr(query, "strings", None)  # a PEP 750 template: keep only the SQL parts
    if isinstance(strings, tuple):
        return "%s".join(str(s) for s in strings)
    return None


class ConnState:
    """Tracing state of one connection: its attributes, statement cache and open transactions."""

    __slots__ = (
        "base_attrs",
        "blocks",
        "cache",
        "capture_parameters",
        "generation",
        "instrumented",
        "orig_cursor_factory",
        "orig_server_cursor_factory",
        "sql_comments",
        "tpc",
        "tx_stack",
    )

    def __init__(
        self,
        conn: Any,
        *,
        sql_comments: bool | None = None,
        capture_parameters: bool | None = None,
        base_attrs: dict[str, AttributeValue] | None = None,
    ) -> None:
        self.base_attrs = connection_attributes(conn) if base_attrs is None else base_attrs
        self.cache: dict[Any, Stmt] = {}
        self.generation = OPTIONS.generation
        self.sql_comments = sql_comments
        self.capture_parameters = capture_parameters
        self.instrumented = False
        self.orig_cursor_factory: Any = None
        self.orig_server_cursor_factory: Any = None
        # One [statement_count] frame per open traced transaction/savepoint on this connection.
        self.tx_stack: list[list[int]] = []
        self.tpc: Any = None  # the open two-phase transaction (pitchey_trace.db._tpc)
        # The open transaction blocks (psycopg 3, psycopg2), to end their spans when the
        # connection is collected with one still open: see end_abandoned_blocks.
        self.blocks: list[OpenBlock] = []

    def set_overrides(self, sql_comments: bool | None, capture_parameters: bool | None) -> None:
        """Change this connection's overrides of the global options (``instrument`` called
        again); cached statements are rebuilt when they change."""
        if self.sql_comments != sql_comments or self.capture_parameters != capture_parameters:
            self.sql_comments = sql_comments
            self.capture_parameters = capture_parameters
            self.cache.clear()

    # -- transactions --------------------------------------------------------------------------
    def push_frame(self) -> list[int]:
        """A new statement counter for a transaction block opening on this connection."""
        frame = [0]
        self.tx_stack.append(frame)
        return frame

    def transaction_span(self, nested: bool, name: str | None) -> AnySpan | None:
        """The span of a transaction block (``TRANSACTION``, or ``SAVEPOINT`` when opened inside
        a transaction; named ``name`` when given), not yet entered. None when nothing is
        recorded (not configured, or tracing suppressed). Shared by every driver."""
        if _TRACER.pipeline is None:
            return None
        operation = "SAVEPOINT" if nested else "TRANSACTION"
        attrs = dict(self.base_attrs)
        attrs["db.operation.name"] = operation
        span = _TRACER.start_span(name or operation, attrs, _INTERNAL)
        return span if span.trace_id else None

    def pop_frame(self, frame: list[int] | None) -> int:
        """Remove a block's counter (by identity: two blocks may hold equal counts) and return
        the statements it counted."""
        if frame is None:
            return 0
        stack = self.tx_stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                del stack[i]
                break
        return frame[0]

    # -- statement cache (slow path) ---------------------------------------------------------
    def statement(self, query: Any, cur: Any) -> Stmt:
        """The cached :class:`Stmt` for ``query`` (built on first use)."""
        if self.generation != OPTIONS.generation:
            self.cache.clear()
            self.generation = OPTIONS.generation
        key = query if isinstance(query, (str, bytes)) else None
        if key is not None:
            stmt = self.cache.get(key)
            if stmt is not None:
                return stmt
        text = _query_text(query, cur)
        if text is None:
            return _SKIP
        if key is None:
            key = text
            stmt = self.cache.get(key)
            if stmt is not None:
                return stmt
        stmt = self._build(text)
        if len(text) > _CACHE_MAX_LEN:
            return stmt  # bounded memory: a huge text (and its Stmt) is not kept, it re-parses
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()  # bounded: a workload with unbounded distinct texts just re-parses
        self.cache[key] = stmt
        return stmt

    def _build(self, text: str) -> Stmt:
        normalized = normalize_sql(text)
        if not normalized or not normalized.strip(" ;"):
            return _SKIP
        operation, table = parse_statement(text)
        operation = operation.upper() if operation else "QUERY"
        if table:
            # Quoting is syntax, not part of the name: SELECT "pitches" and SELECT pitches
            # are one operation for dashboards and rollups.
            # (A doubled quote inside a quoted name is one quote of the name.)
            table = table.replace('""', "\0").replace('"', "").replace("\0", '"')
        # Built from validated parts (str/int values): start_span copies it without re-checking.
        attrs = TrustedAttributes(self.base_attrs)
        attrs["db.operation.name"] = operation
        if table:
            attrs["db.collection.name"] = table
        attrs["db.query.text"] = normalized
        sql_comments = OPTIONS.sql_comments if self.sql_comments is None else self.sql_comments
        capture = OPTIONS.capture_parameters if self.capture_parameters is None else self.capture_parameters
        rows_key = (
            "db.response.returned_rows"
            if operation in _RETURNING_OPS
            else "db.response.affected_rows"
            if operation in _AFFECTING_OPS
            else None
        )
        return Stmt(
            name=f"{operation} {table}" if table else operation,
            attrs=attrs,
            operation=operation,
            table=table,
            text=normalized,
            sensitive=sensitive_tables_in(normalized),
            rows_key=rows_key,
            comment=sql_comments and operation != "COPY",
            capture=capture,
        )

    def cursor_statement(self, declared: Stmt, operation: str) -> Stmt:
        """The statement of a round trip of a server-side cursor (``FETCH`` or ``MOVE``)
        declared with ``declared``: named after the declared query's table and carrying its
        text (the FETCH text itself only names the cursor). Never commented, never audited (the
        DECLARE was), no parameters. Cached like the other statements."""
        if self.generation != OPTIONS.generation:
            self.cache.clear()
            self.generation = OPTIONS.generation
        key = (operation, declared.text)
        stmt = self.cache.get(key)
        if stmt is None:
            attrs = TrustedAttributes(self.base_attrs)
            attrs["db.operation.name"] = operation
            if declared.table:
                attrs["db.collection.name"] = declared.table
            attrs["db.query.text"] = declared.text
            stmt = Stmt(
                name=f"{operation} {declared.table}" if declared.table else operation,
                attrs=attrs,
                operation=operation,
                table=declared.table,
                text=declared.text,
                sensitive=(),
                rows_key="db.response.returned_rows" if operation == "FETCH" else None,
                comment=False,
                capture=False,
            )
            if len(declared.text) > _CACHE_MAX_LEN:
                return stmt  # (as in statement(): huge texts are not kept)
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[key] = stmt
        return stmt

    # -- hot path ---------------------------------------------------------------------------
    def begin_text(self, text: str) -> Op | None:
        """Start the span of a statement the SDK itself names (``COMMIT``, the 2PC recover
        query): its text parsed as any statement's. None: not traced. Never raises."""
        try:
            return self.begin_statement(self.statement(text, None))
        except Exception as exc:
            _safety.report("db.begin", exc)
            return None

    def begin_statement(self, stmt: Stmt) -> Op | None:
        """Start the span of a statement already known (no text to parse or comment); None
        means "run it untraced". Never raises."""
        try:
            if _TRACER.pipeline is None:
                return None
            span = _TRACER.start_span(stmt.name, stmt.attrs, _CLIENT)
            if not span.trace_id:  # suppressed (the SDK's own work)
                return None
            return span, stmt, span.start_ns if span.__class__ is Span else time_ns(), None
        except Exception as exc:
            _safety.report("db.begin", exc)
            return None

    def begin(self, cur: Any, query: Any, params: Any, prepare: bool | None = None) -> Op | None:
        """Start the span of one query; None means "run it untraced". Never raises."""
        try:
            tracer = _TRACER
            if tracer.pipeline is None:
                return None
            stmt = None
            if query.__class__ is str and self.generation == OPTIONS.generation:
                stmt = self.cache.get(query)
            if stmt is None:
                stmt = self.statement(query, cur)
            if stmt.skip:
                return None
            span = tracer.start_span(stmt.name, stmt.attrs, _CLIENT)
            if not span.trace_id:  # suppressed (the SDK's own work)
                return None
            if span.__class__ is Span:
                start = span.start_ns
                if stmt.capture and params is not None:
                    capture_parameters(span, params)
            else:
                start = time_ns()
            # (prepare_threshold: psycopg 3; 0 means every statement is prepared, keep texts)
            if (
                stmt.comment
                and prepare is not True
                and getattr(cur.connection, "prepare_threshold", None) != 0
            ):
                query = with_comment(query, span)
            return span, stmt, start, query
        except Exception as exc:
            _safety.report("db.begin", exc)
            return None

    def execute(self, cur: Any, query: Any, params: Any) -> None:
        """Run one statement on an untraced DB-API cursor, in a span (``traced_query``)."""
        op = self.begin(cur, query, params)
        if op is None:
            cur.execute(query, params)
            return
        try:
            cur.execute(op[3], params)
        except BaseException as exc:
            self.fail(op, exc)
            raise
        self.done(op, cur.rowcount)

    def done(self, op: Op, rows: int) -> None:
        """End the span of a query that succeeded (``rows`` < 0: unknown). Never raises."""
        try:
            span, stmt, start, _ = op
            end = time_ns()
            key = stmt.rows_key
            if key is not None and rows >= 0 and span.__class__ is Span:
                attrs = span.attributes  # a live span we started: set_attribute's checks, inlined
                if rows.__class__ is int and len(attrs) < Limits.max_attributes:
                    attrs[key] = rows
                else:
                    span.set_attribute(key, rows)
            slow = OPTIONS.slow_ns
            if slow is not None and end - start >= slow:
                slow_query(span, stmt, end - start)
            if self.tx_stack:
                for frame in self.tx_stack:
                    frame[0] += 1
            span.end(end)
            if stmt.sensitive:
                audit(span, stmt, "success", None)
        except Exception as exc:
            _safety.report("db.end", exc)

    def fail(self, op: Op, exc: BaseException) -> None:
        """End the span of a query that raised; the caller re-raises ``exc``. Never raises."""
        try:
            span, stmt, start, _ = op
            end = time_ns()
            exc = _interruption(exc)
            sqlstate = None
            if isinstance(exc, Exception):
                sqlstate = record_error(span, exc)
            elif span.is_recording:
                span.add_event("cancelled", {"exception.type": type(exc).__qualname__})
            slow = OPTIONS.slow_ns
            if slow is not None and end - start >= slow:
                slow_query(span, stmt, end - start)
            if self.tx_stack:
                for frame in self.tx_stack:
                    frame[0] += 1
            span.end(end)
            if stmt.sensitive:
                audit(span, stmt, "error", sqlstate or type(exc).__qualname__)
        except Exception as internal:
            _safety.report("db.end", internal)


class OpenBlock:
    """An open transaction block as its connection's state knows it: its span and frame, and
    what ended its transaction before the block did (``ended``: psycopg2's C methods that roll
    back, by name). Holds no reference to the connection, so the state can outlive it."""

    __slots__ = ("ended", "frame", "span")

    def __init__(self, span: AnySpan, frame: list[int] | None) -> None:
        self.span = span
        self.frame = frame
        self.ended: str | None = None


def open_block(state: ConnState, span: AnySpan, frame: list[int] | None) -> OpenBlock:
    """Register a transaction block whose span was just entered."""
    block = OpenBlock(span, frame)
    state.blocks.append(block)
    return block


def close_block(state: ConnState, block: OpenBlock | None) -> str | None:
    """Unregister a block that ends (by identity); what ended its transaction first, if any."""
    if block is None:
        return None
    blocks = state.blocks
    for i in range(len(blocks) - 1, -1, -1):
        if blocks[i] is block:
            del blocks[i]
            break
    return block.ended


def end_abandoned_blocks(state: ConnState) -> None:
    """The connection was garbage-collected with blocks still open (entered, never exited):
    the driver closed the session and the server rolled their transaction back. End their
    spans (innermost first) as ``rollback``, reason ``connection_garbage_collected``. Never
    raises; runs from a weakref finalizer, so the span is ended, not exited (the context it
    was made current in belongs to another frame, or is gone)."""
    blocks, state.blocks = state.blocks, []
    for block in reversed(blocks):
        try:
            count = state.pop_frame(block.frame)
            span = block.span
            transaction_outcome(span, False, None, None, count)
            if span.is_recording:
                span.set_attribute(
                    "db.transaction.rollback_reason", block.ended or "connection_garbage_collected"
                )
            span.end()
        except Exception as exc:
            _safety.report("db.transaction", exc)


def _interruption(exc: BaseException) -> BaseException:
    """The interruption behind ``exc`` when ``exc`` is only its consequence, else ``exc``.

    When a query is interrupted in the application (task cancelled, Ctrl-C), psycopg's
    ``conn.wait`` cancels it on the server and drives the query's generator on to the
    ``QueryCanceled`` (57014) answer before re-raising the interruption. A span that covers the
    generator itself (a server-side cursor's FETCH) sees that 57014 raised while the
    interruption is being handled (its ``__context__``); the query did not fail, it was
    cancelled. (A ``statement_timeout`` 57014 has no such context and stays an error.)"""
    context = exc.__context__
    if (
        context is not None
        and not isinstance(context, Exception)
        and isinstance(exc, Exception)
        and getattr(exc, "sqlstate", None) == "57014"
    ):
        return context
    return exc


def connection_attributes(conn: Any) -> dict[str, AttributeValue]:
    """The attributes every span of this connection shares."""
    attrs: dict[str, AttributeValue] = {"db.system.name": "postgresql"}
    info = conn.info
    try:
        if info.dbname:
            attrs["db.namespace"] = info.dbname
        host = info.host
        if host:
            attrs["server.address"] = host
            if host.startswith("/"):  # a socket directory: say so (TCP is the default)
                attrs["network.transport"] = "unix"
        if info.port:
            attrs["server.port"] = int(info.port)
    except Exception as exc:  # a closed connection has no info; spans then carry less
        _safety.report("db.connection_info", exc)
    return attrs


def slow_query(span: AnySpan, stmt: Stmt, duration_ns: int) -> None:
    """Mark a slow query: ``slow_query`` event and a WARNING log record."""
    ms = duration_ns / 1e6
    threshold = OPTIONS.slow_threshold_ms
    span.add_event(
        "slow_query", {"db.query.duration_ms": round(ms, 3), "db.slow_threshold_ms": float(threshold or 0)}
    )
    trace_id = f"{span.trace_id:032x}"
    logger.warning(
        "slow query: %.1f ms (threshold %s ms) trace_id=%s statement=%s",
        ms,
        threshold,
        trace_id,
        stmt.text,
        extra={
            "trace_id": trace_id,
            "span_id": f"{span.span_id:016x}",
            "duration_ms": ms,
            "db_query_text": stmt.text,
        },
    )


def audit(span: AnySpan, stmt: Stmt, outcome: str, error: str | None) -> None:
    """One ``data_access`` audit record per sensitive table the statement touched."""
    tracer = get_tracer()
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "db.operation.name": stmt.operation,
    }
    namespace = stmt.attrs.get("db.namespace")
    if namespace is not None:
        attributes["db.namespace"] = namespace
    if error is not None:
        attributes["error.type"] = error
    for table in stmt.sensitive:
        tracer.emit_audit(
            stmt.operation, table, outcome, category="data_access", attributes=attributes, span=span
        )
