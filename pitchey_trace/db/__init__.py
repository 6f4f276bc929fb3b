"""PostgreSQL tracing for psycopg 3: every database call visible, timed and safe to export.

    from pitchey_trace.db import instrument, traced_query, traced_transaction

    instrument(conn)                                  # every statement on conn becomes a span
    rows = traced_query(conn, "SELECT * FROM pitches WHERE id = %s", (pid,))

    @traced_query(table="pitches")                    # its span parents the query spans
    def get_pitch_with_details(conn, pid): ...

    with traced_transaction(conn) as tx: ...          # or @traced_transaction

Query spans are named ``"{operation} {table}"`` (kind client) and carry OpenTelemetry
database attributes: ``db.system.name``, ``db.namespace``, ``db.operation.name``,
``db.collection.name``, ``db.query.text`` (normalised: literals replaced by ``?``),
``server.address``/``server.port``, row counts and ``db.response.status_code`` (SQLSTATE)
on errors. Parameter values are recorded only when opted in. Slow queries get a
``slow_query`` event and a WARNING on the ``pitchey_trace.db`` logger; accesses to sensitive
tables emit audit records. See ``docs/database.md``.

Needs the ``postgres`` extra (``pip install 'pitchey-trace[postgres]'``).
"""

from __future__ import annotations

try:
    import psycopg as _psycopg  # noqa: F401  (import guard)
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    from pitchey_trace.exceptions import IntegrationUnavailable

    raise IntegrationUnavailable("pitchey_trace.db", "postgres") from _exc

from pitchey_trace.db._api import traced_query, traced_transaction
from pitchey_trace.db._instrument import instrument, instrument_async, is_instrumented, uninstrument
from pitchey_trace.db._ops import logger
from pitchey_trace.db._options import DEFAULT_SENSITIVE_TABLES, DbOptions, configure
from pitchey_trace.db._transaction import AsyncTracedTransaction, TracedTransaction

__all__ = [
    "DEFAULT_SENSITIVE_TABLES",
    "AsyncTracedTransaction",
    "DbOptions",
    "TracedTransaction",
    "configure",
    "instrument",
    "instrument_async",
    "is_instrumented",
    "logger",
    "traced_query",
    "traced_transaction",
    "uninstrument",
]
