"""Review against a real server: lost connections, cancelled queries, batches with
``returning=True``, and the current span after every failure."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace.db import instrument
from pitchey_trace.testing import capture_spans
from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration


def _no_current_span() -> bool:
    return pt.current_span().span_id == 0


def test_executemany_returning_counts_the_rows_of_every_parameter_set(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn, capture_spans() as mem:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        instrument(conn)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO items VALUES (%s) RETURNING id", [(i,) for i in range(5)], returning=True
            )
            ids = []
            while True:  # the results are intact for the application
                ids.extend(row[0] for row in cur.fetchall())
                if not cur.nextset():
                    break
            assert ids == [0, 1, 2, 3, 4]
            cur.executemany("INSERT INTO items VALUES (%s)", [(i,) for i in range(10, 13)])
    returning, plain = mem.spans("INSERT items")
    assert returning["attributes"]["db.response.affected_rows"] == 5  # was 1: the first result's
    assert returning["attributes"]["db.operation.batch.size"] == 5
    assert plain["attributes"]["db.response.affected_rows"] == 3


def test_async_executemany_returning_counts_the_rows_of_every_parameter_set(pg_dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            instrument(conn)
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO items VALUES (%s) RETURNING id", [(i,) for i in range(4)], returning=True
                )
                assert await cur.fetchone() == (0,)

    with capture_spans() as mem:
        asyncio.run(main())
    (span,) = mem.spans("INSERT items")
    assert span["attributes"]["db.response.affected_rows"] == 4


def test_backend_terminated_mid_query_fails_the_query_and_its_transaction(pg_dsn: str) -> None:
    with (
        psycopg.connect(pg_dsn) as conn,
        psycopg.connect(pg_dsn, autocommit=True) as killer,
        capture_spans() as mem,
    ):
        instrument(conn)
        pid = conn.info.backend_pid
        timer = threading.Timer(0.3, lambda: killer.execute("SELECT pg_terminate_backend(%s)", (pid,)))
        timer.start()
        with pytest.raises(errors.AdminShutdown), pt.span("request"), conn.transaction():
            conn.execute("SELECT pg_sleep(5)")
        timer.join()
        assert _no_current_span()
        assert conn.closed
    (query,) = mem.spans("SELECT")
    (tx,) = mem.spans("TRANSACTION")
    for span in (query, tx):
        assert span["status"] == "error"
        assert span["attributes"]["db.response.status_code"] == "57P01"
        assert span["attributes"]["error.type"] == "57P01"
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert query["parent_span_id"] == tx["span_id"]


def test_statement_timeout_and_cancel_are_query_canceled_errors(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn, capture_spans() as mem:
        instrument(conn)
        conn.execute("SET statement_timeout = 100")
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        conn.execute("SET statement_timeout = 0")
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is still usable
        assert _no_current_span()
    timed_out, cancelled, _ = mem.spans("SELECT")
    for span in (timed_out, cancelled):
        assert span["status"] == "error"
        assert span["attributes"]["db.response.status_code"] == "57014"


def test_asyncpg_task_cancellation_and_lost_connection(pg_dsn: str) -> None:
    async def main() -> None:
        conn = instrument(await asyncpg.connect(**asyncpg_args(pg_dsn)))
        killer = await asyncpg.connect(**asyncpg_args(pg_dsn))
        try:

            async def slow() -> None:
                async with conn.transaction():
                    await conn.fetch("SELECT pg_sleep(5)")

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _no_current_span()
            assert await conn.fetchval("SELECT 1") == 1  # asyncpg cancelled it on the server
            assert not conn.is_in_transaction()

            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("SET statement_timeout = 100; SELECT pg_sleep(5)")

            pid = conn.get_server_pid()

            async def kill() -> None:
                await asyncio.sleep(0.3)
                await killer.execute("SELECT pg_terminate_backend($1)", pid)

            killing = asyncio.ensure_future(kill())
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
                await conn.fetch("SELECT pg_sleep(5)")
            await killing
            assert _no_current_span()
        finally:
            await killer.close()
            conn.terminate()

    with capture_spans() as mem:
        asyncio.run(main())
    (tx,) = mem.spans("TRANSACTION")
    cancelled, _, killed = mem.spans("SELECT")
    # A cancelled query is not a failure of the query: no error status, a "cancelled" event.
    assert cancelled["status"] == "unset"
    assert [e["name"] for e in cancelled["events"]] == ["cancelled"]
    assert cancelled["parent_span_id"] == tx["span_id"]
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "asyncio.exceptions.CancelledError"
    (timed_out,) = mem.spans("SET")
    assert timed_out["attributes"]["db.response.status_code"] == "57014"
    assert killed["status"] == "error"
    assert killed["attributes"]["error.type"]


def _parent_names(mem: Any) -> dict[str, str]:
    spans = mem.spans()
    by_id = {s["span_id"]: s for s in spans}
    return {s["span_id"]: by_id[s["parent_span_id"]]["name"] for s in spans if s.get("parent_span_id")}


def test_many_concurrent_asyncpg_queries_on_a_pool_have_their_own_parents(pg_dsn: str) -> None:
    from pitchey_trace.db import instrument_async

    async def main() -> None:
        pool = await asyncpg.create_pool(
            **asyncpg_args(pg_dsn), init=instrument_async, min_size=4, max_size=4
        )
        try:

            async def job(i: int) -> None:
                with pt.span(f"job {i}"):
                    await asyncio.sleep(0.001 * (i % 3))
                    await pool.fetchval(f"SELECT $1::int AS job{i}, pg_sleep(0.01)", i)

            await asyncio.gather(*(job(i) for i in range(24)))
        finally:
            await pool.close()

    with capture_spans() as mem:
        asyncio.run(main())
    parents = _parent_names(mem)
    queries = mem.spans("SELECT")
    assert len(queries) == 24
    for span in queries:
        job = span["attributes"]["db.query.text"].split("AS job", 1)[1].split(",", 1)[0]
        assert parents[span["span_id"]] == f"job {job}"


def test_quoted_table_name_with_a_doubled_quote(conn: psycopg.Connection[Any]) -> None:
    conn.execute('CREATE TABLE "odd""name" (id int)')
    instrument(conn)
    with capture_spans() as mem:
        conn.execute('SELECT id FROM "odd""name"')
    (span,) = mem.spans()
    assert span["attributes"]["db.collection.name"] == 'odd"name'  # was oddname
    assert span["name"] == 'SELECT odd"name'
