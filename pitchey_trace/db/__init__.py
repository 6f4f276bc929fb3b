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

Also traces asyncpg and psycopg2: ``instrument(conn)`` and the other functions here accept an
``asyncpg.Connection`` (``asyncpg.create_pool(..., init=instrument_async)`` for pools) and a
psycopg2 connection.

Needs the ``postgres`` extra (``pip install 'pitchey-trace[postgres]'``) or, for the other
drivers alone, the ``asyncpg`` / ``psycopg2`` extra. Without psycopg 3, its classes
(``TracedTransaction``, ``AsyncTracedTransaction``) raise ``IntegrationUnavailable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitchey_trace.exceptions import IntegrationUnavailable

try:
    import psycopg as _psycopg  # noqa: F401  (import guard)

    _HAVE_PSYCOPG = True
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    import importlib.util

    if not any(importlib.util.find_spec(name) for name in ("asyncpg", "psycopg2")):
        raise IntegrationUnavailable("pitchey_trace.db", "postgres") from _exc
    _HAVE_PSYCOPG = False

from pitchey_trace.db._ops import logger
from pitchey_trace.db._options import DEFAULT_SENSITIVE_TABLES, DbOptions, configure

if TYPE_CHECKING or _HAVE_PSYCOPG:
    from pitchey_trace.db._api import traced_query, traced_transaction
    from pitchey_trace.db._instrument import instrument, instrument_async, is_instrumented, uninstrument
    from pitchey_trace.db._transaction import AsyncTracedTransaction, TracedTransaction
else:  # asyncpg / psycopg2 only (tested in tests/integration/db/test_asyncpg_only.py)
    from pitchey_trace.db._drivers import (
        instrument,
        instrument_async,
        is_instrumented,
        uninstrument,
    )
    from pitchey_trace.db._drivers import query_api as traced_query
    from pitchey_trace.db._drivers import transaction_api as traced_transaction

    def __getattr__(name: str) -> Any:
        if name in ("AsyncTracedTransaction", "TracedTransaction"):
            raise IntegrationUnavailable(f"pitchey_trace.db.{name}", "postgres")
        raise AttributeError(f"module 'pitchey_trace.db' has no attribute {name!r}")


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
