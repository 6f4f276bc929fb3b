"""Session 18 review of the PostgreSQL instrumentation, against the real server of the fixtures:
batch sizes as the conventions count them, server-side cursor round trips interrupted by the
application, connections with unusual cursor factories or subclasses, transactions on closed
connections, and asyncpg argument errors that quoted the argument's value."""

from __future__ import annotations

import asyncio
import json
import signal
from types import FrameType
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest

from pitchey_trace.db import instrument, is_instrumented, traced_transaction, uninstrument
from pitchey_trace.testing import capture_spans
from tests.support.pgserver import asyncpg_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SLOW_CURSOR = "SELECT pg_sleep(0.01) FROM generate_series(1, 2000)"  # about 20 s of rows


def _spans(exporter: Any, name: str) -> list[dict[str, Any]]:
    return [r for r in exporter.records if r["type"] == "span" and r["name"] == name]


# -- db.operation.batch.size: "SHOULD never be 1" ---------------------------------------------


def _batch_sizes(exporter: Any) -> list[object]:
    return [r["attributes"].get("db.operation.batch.size") for r in _spans(exporter, "INSERT t")]


def test_psycopg_executemany_batch_size_counts_from_two(pg_dsn: str) -> None:
    with capture_spans() as exporter, instrument(psycopg.connect(pg_dsn, autocommit=True)) as conn:
        conn.execute("CREATE TABLE t (id int)")
        cur = conn.cursor()
        cur.executemany("INSERT INTO t VALUES (%s)", [(1,)])
        cur.executemany("INSERT INTO t VALUES (%s)", [])
        cur.executemany("INSERT INTO t VALUES (%s)", [(2,), (3,)])
        cur.executemany("INSERT INTO t VALUES (%s) RETURNING id", [(4,)], returning=True)
    assert _batch_sizes(exporter) == [None, None, 2, None]


def test_async_psycopg_executemany_of_one_set_has_no_batch_size(pg_dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            instrument(conn)
            await conn.execute("CREATE TABLE t (id int)")
            await conn.cursor().executemany("INSERT INTO t VALUES (%s)", [(1,)])
            await conn.cursor().executemany("INSERT INTO t VALUES (%s)", [(2,), (3,), (4,)])

    with capture_spans() as exporter:
        asyncio.run(main())
    assert _batch_sizes(exporter) == [None, 3]


def test_psycopg2_executemany_of_one_set_has_no_batch_size(pg_dsn: str) -> None:
    conn = instrument(psycopg2.connect(pg_dsn))
    try:
        with capture_spans() as exporter:
            cur = conn.cursor()
            cur.execute("CREATE TABLE t (id int)")
            cur.executemany("INSERT INTO t VALUES (%s)", [(1,)])
            cur.executemany("INSERT INTO t VALUES (%s)", [(2,), (3,)])
            conn.commit()
    finally:
        conn.close()
    assert _batch_sizes(exporter) == [None, 2]


def test_asyncpg_executemany_and_fetchmany_of_one_set_have_no_batch_size(pg_dsn: str) -> None:
    async def main() -> None:
        conn = instrument(await asyncpg.connect(**asyncpg_args(pg_dsn)))
        try:
            await conn.execute("CREATE TABLE t (id int)")
            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,)])
            await conn.executemany("INSERT INTO t VALUES ($1)", [(2,), (3,)])
            await conn.fetchmany("INSERT INTO t VALUES ($1) RETURNING id", [(5,)])
            stmt = await conn.prepare("INSERT INTO t VALUES ($1)")
            await stmt.executemany([(6,)])
        finally:
            await conn.close()

    with capture_spans() as exporter:
        asyncio.run(main())
    assert _batch_sizes(exporter) == [None, 2, None, None]


# -- a server-side cursor's FETCH interrupted in the application ------------------------------


def test_fetch_of_a_cancelled_task_is_cancelled_not_a_query_error(pg_dsn: str) -> None:
    """psycopg cancels the query on the server and reads its 57014 answer before re-raising
    the task's cancellation: the FETCH span must say cancelled (as an execute's does), not
    record that 57014 as the query's error. A statement_timeout's 57014 stays an error."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            instrument(conn)
            async with conn.cursor(name="slow") as cur:
                await cur.execute(SLOW_CURSOR)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(cur.fetchall(), 0.3)
            await conn.rollback()
            seen["usable"] = await (await conn.execute("SELECT 42")).fetchone()
            await conn.execute("SET statement_timeout = 200")
            async with conn.cursor(name="timed_out") as cur:
                await cur.execute(SLOW_CURSOR)
                with pytest.raises(psycopg.errors.QueryCanceled):
                    await cur.fetchall()

    with capture_spans() as exporter:
        asyncio.run(main())
    assert seen["usable"] == (42,)
    cancelled, timed_out = _spans(exporter, "FETCH")
    assert cancelled["status"] == "unset"
    assert "error.type" not in cancelled["attributes"]
    assert "db.response.status_code" not in cancelled["attributes"]
    assert [(e["name"], e["attributes"]["exception.type"]) for e in cancelled["events"]] == [
        ("cancelled", "CancelledError")
    ]
    assert timed_out["status"] == "error"
    assert timed_out["attributes"]["db.response.status_code"] == "57014"


def test_fetch_interrupted_by_ctrl_c_is_cancelled_not_a_query_error(pg_dsn: str) -> None:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with capture_spans() as exporter, instrument(psycopg.connect(pg_dsn)) as conn:
            cur = conn.cursor(name="slow")
            cur.execute(SLOW_CURSOR)
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                cur.fetchall()
            conn.rollback()
            assert conn.execute("SELECT 7").fetchone() == (7,)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    (fetch,) = _spans(exporter, "FETCH")
    assert fetch["status"] == "unset"
    assert "error.type" not in fetch["attributes"]
    assert [(e["name"], e["attributes"]["exception.type"]) for e in fetch["events"]] == [
        ("cancelled", "KeyboardInterrupt")
    ]


# -- unusual connections: instrument() never raises into the caller ---------------------------


def test_instrument_with_a_function_cursor_factory(pg_dsn: str) -> None:
    """psycopg calls ``cursor_factory``; a function returning cursors is valid. instrument()
    used to raise ``TypeError: issubclass() arg 1 must be a class`` (and so did a pool's
    ``configure=instrument`` and ``traced_transaction``)."""
    made: list[Any] = []

    def factory(conn: Any, **kwargs: Any) -> Any:
        cur = psycopg.ClientCursor(conn, **kwargs)
        made.append(cur)
        return cur

    with capture_spans() as exporter, psycopg.connect(pg_dsn, cursor_factory=factory) as conn:  # type: ignore[arg-type]
        assert instrument(conn) is conn
        assert is_instrumented(conn)
        with traced_transaction(conn):
            assert conn.execute("SELECT %s", (1,)).fetchone() == (1,)
        assert isinstance(made[-1], psycopg.ClientCursor)
        uninstrument(conn)
        assert conn.cursor_factory is factory
        conn.execute("SELECT 2")
    names = [r["name"] for r in exporter.records if r["type"] == "span"]
    assert names == ["SELECT", "TRANSACTION"]
    (select,) = _spans(exporter, "SELECT")
    assert select["attributes"]["db.query.text"] == "SELECT %s"  # (client-side binding: still the text)


def test_instrument_a_subclass_whose_transaction_is_a_property(pg_dsn: str) -> None:
    class Connection(psycopg.Connection[Any]):
        @property
        def transaction(self) -> Any:
            return super().transaction

    with capture_spans() as exporter, Connection.connect(pg_dsn) as conn:
        assert instrument(conn) is conn
        with conn.transaction():
            conn.execute("SELECT 1")
        uninstrument(conn)
    assert [r["name"] for r in exporter.records if r["type"] == "span"] == ["SELECT"]


def test_transaction_on_a_closed_connection_is_not_named_savepoint(pg_dsn: str) -> None:
    with capture_spans() as exporter:
        conn = instrument(psycopg.connect(pg_dsn))
        conn.close()
        with pytest.raises(psycopg.OperationalError), traced_transaction(conn):
            pass
    (span,) = [r for r in exporter.records if r["type"] == "span"]
    assert span["name"] == "TRANSACTION"
    assert span["attributes"]["db.operation.name"] == "TRANSACTION"
    assert span["status"] == "error"


# -- asyncpg's client-side argument errors -----------------------------------------------------


def test_asyncpg_argument_error_does_not_export_the_argument(pg_dsn: str) -> None:
    """asyncpg's DataError quotes the argument's repr, unquoted for numbers and lists
    (``invalid input for query argument $1: 1099511627776 (value out of int32 range)``)."""

    async def main() -> None:
        conn = instrument(await asyncpg.connect(**asyncpg_args(pg_dsn)))
        try:
            with pytest.raises(asyncpg.DataError, match="1099511627776"):
                await conn.fetch("SELECT $1::int", 1099511627776)
            with pytest.raises(asyncpg.DataError, match="8675309"):
                await conn.fetch("SELECT $1::int[]", [8675309, "x"])
            with pytest.raises(asyncpg.DataError, match="5551234"):
                await conn.executemany("SELECT $1::text", [("a",), (5551234,)])
        finally:
            await conn.close()

    with capture_spans() as exporter:
        asyncio.run(main())
    spans = [r for r in exporter.records if r["type"] == "span" and r["status"] == "error"]
    assert len(spans) == 3
    exported = json.dumps(exporter.records)
    for value in ("1099511627776", "8675309", "5551234"):
        assert value not in exported
    messages = [s["events"][0]["attributes"]["exception.message"] for s in spans]
    assert messages == [
        "invalid input for query argument $1: ? (value out of int32 range)",
        "invalid input for query argument $1: ? (invalid array element at index 1: ? object cannot be "
        "interpreted as an integer)",
        "invalid input for query argument $1 in element #1 of executemany() sequence: ? (expected str, "
        "got int)",
    ]
