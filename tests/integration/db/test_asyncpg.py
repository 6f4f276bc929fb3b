"""asyncpg connections and pools, traced against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import pitchey_trace as pt
from pitchey_trace import db
from pitchey_trace.db import (
    instrument,
    instrument_async,
    is_instrumented,
    traced_query,
    traced_transaction,
    uninstrument,
)
from pitchey_trace.testing import capture_spans
from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration


def run(pg_dsn: str, body: Callable[[Any], Awaitable[None]], *, traced: bool = True) -> None:
    """Run ``body(conn)`` on a fresh asyncpg connection (instrumented when ``traced``) that
    already has a ``pitches`` table with three rows."""

    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_args(pg_dsn))
        try:
            await conn.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
            await conn.execute("INSERT INTO pitches VALUES (1, 'a'), (2, 'b'), (3, 'c')")
            if traced:
                assert instrument(conn) is conn
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return span["attributes"]  # type: ignore[no-any-return]


def test_every_statement_method_is_a_client_span_under_the_current_span(pg_dsn: str) -> None:
    out = io.BytesIO()

    async def body(conn: Any) -> None:
        assert isinstance(conn, asyncpg.Connection)
        assert is_instrumented(conn)
        with pt.span("request"):
            assert await conn.execute("UPDATE pitches SET title = $1 WHERE id > $2", "z", 1) == "UPDATE 2"
            await conn.executemany("INSERT INTO pitches VALUES ($1, $2)", [(4, "d"), (5, "e")])
            assert len(await conn.fetch("SELECT * FROM pitches WHERE id > $1", 2)) == 3
            assert (await conn.fetchrow("SELECT title FROM pitches WHERE id = 1"))["title"] == "a"
            assert await conn.fetchrow("SELECT title FROM pitches WHERE id = 99") is None
            assert await conn.fetchval("SELECT count(*) FROM pitches") == 5
            many = await conn.fetchmany("SELECT id FROM pitches WHERE id = $1", [(1,), (2,)])
            assert [r["id"] for r in many] == [1, 2]
            assert await conn.copy_from_table("pitches", output=out) == "COPY 5"
            assert await conn.copy_records_to_table("pitches", records=[(6, "f")]) == "COPY 1"
            assert (
                await conn.copy_from_query("SELECT id FROM pitches WHERE id < $1", 3, output=io.BytesIO())
                == "COPY 2"
            )

    with capture_spans() as mem:
        run(pg_dsn, body)
    (root,) = mem.spans("request")
    spans = [s for s in mem.spans() if s["name"] != "request"]
    assert len(spans) == 11
    for span in spans:
        assert span["kind"] == "client"
        assert span["trace_id"] == root["trace_id"]
        assert span["parent_span_id"] == root["span_id"]
        assert attrs(span)["db.system.name"] == "postgresql"
        assert attrs(span)["server.address"] == "127.0.0.1"
        assert isinstance(attrs(span)["server.port"], int)
        assert attrs(span)["db.namespace"] == "postgres"
    update, insert = mem.spans("UPDATE pitches")[0], mem.spans("INSERT pitches")[0]
    assert attrs(update)["db.response.affected_rows"] == 2
    assert attrs(update)["db.query.text"] == "UPDATE pitches SET title = $1 WHERE id > $2"
    assert attrs(insert)["db.operation.batch.size"] == 2
    selects = mem.spans("SELECT pitches")
    assert [attrs(s).get("db.response.returned_rows") for s in selects] == [3, 1, 0, None, 2]
    assert attrs(selects[1])["db.query.text"] == "SELECT title FROM pitches WHERE id = ?"  # literal gone
    assert attrs(selects[4])["db.operation.batch.size"] == 2
    copies = [s for s in spans if attrs(s)["db.operation.name"] == "COPY"]
    assert [attrs(s)["db.query.text"] for s in copies] == [
        "COPY pitches TO STDOUT",
        "COPY pitches FROM STDIN",
        "COPY (SELECT id FROM pitches WHERE id < $1) TO STDOUT",
    ]
    assert [attrs(s)["db.response.affected_rows"] for s in copies] == [5, 1, 2]
    assert out.getvalue().count(b"\n") == 5  # the COPY itself still worked


def test_prepared_statements_and_cursors(pg_dsn: str) -> None:
    async def body(conn: Any) -> None:
        with pt.span("request"):
            stmt = await conn.prepare("SELECT title FROM pitches WHERE id = $1")
            assert await stmt.fetchval(2) == "b"
            assert [r["title"] for r in await stmt.fetch(3)] == ["c"]
            assert stmt.get_query() == "SELECT title FROM pitches WHERE id = $1"  # passed through
            async with conn.transaction():
                seen = [r["id"] async for r in conn.cursor("SELECT id FROM pitches ORDER BY id")]
                assert seen == [1, 2, 3]
                async for _ in conn.cursor("SELECT id FROM pitches WHERE id >= $1", 1, prefetch=1):
                    break  # stopping early is not an error
                cur = await conn.cursor("SELECT id FROM pitches ORDER BY id")
                await cur.forward(1)
                assert [r["id"] for r in await cur.fetch(5)] == [2, 3]
                assert await cur.fetchrow() is None

    with capture_spans() as mem:
        run(pg_dsn, body)
    prepared = [s for s in mem.spans("SELECT pitches") if "WHERE id = $1" in attrs(s)["db.query.text"]]
    assert [
        attrs(s)["db.response.returned_rows"] for s in prepared if "db.response.returned_rows" in attrs(s)
    ] == [1]
    assert len(prepared) == 2
    iterated = [s for s in mem.spans("SELECT pitches") if "ORDER BY" in attrs(s)["db.query.text"]]
    assert attrs(iterated[0])["db.response.returned_rows"] == 3  # the whole iteration: one span
    abandoned = [s for s in mem.spans("SELECT pitches") if ">=" in attrs(s)["db.query.text"]]
    assert len(abandoned) == 1
    assert abandoned[0]["status"] != "error"
    assert attrs(abandoned[0])["db.response.returned_rows"] == 1
    (move,) = mem.spans("MOVE pitches")
    fetches = mem.spans("FETCH pitches")
    assert [attrs(s)["db.response.returned_rows"] for s in fetches] == [2, 0]
    (tx,) = mem.spans("TRANSACTION")
    for span in (move, *fetches, *iterated):
        assert span["parent_span_id"] == tx["span_id"]
        assert attrs(span)["db.query.text"] == "SELECT id FROM pitches ORDER BY id"


def test_transactions_savepoints_and_their_outcomes(pg_dsn: str) -> None:
    async def body(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("UPDATE pitches SET title = 'x' WHERE id = 1")
            with pytest.raises(asyncpg.UniqueViolationError) as raised:
                async with conn.transaction():
                    await conn.execute("INSERT INTO pitches VALUES (7, 'new')")
                    await conn.execute("INSERT INTO pitches VALUES (1, 'secret-dup')")
            assert raised.value.sqlstate == "23505"
        tx = conn.transaction()
        await tx.start()
        await conn.execute("DELETE FROM pitches WHERE id = 3")
        await tx.rollback()
        async with traced_transaction(conn, name="checkout"):
            await conn.fetch("SELECT 1")
        assert await conn.fetchval("SELECT count(*) FROM pitches") == 3  # the DELETE was rolled back
        assert await conn.fetchval("SELECT title FROM pitches WHERE id = 1") == "x"

    with capture_spans() as mem:
        run(pg_dsn, body)
    names = [s["name"] for s in mem.spans()]
    assert not {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT __asyncpg"} & set(names)  # not statements
    outer, manual = mem.spans("TRANSACTION")
    (savepoint,) = mem.spans("SAVEPOINT")
    assert attrs(outer)["db.transaction.outcome"] == "commit"
    assert outer["status"] != "error"
    assert attrs(outer)["db.transaction.statement_count"] == 3
    assert savepoint["parent_span_id"] == outer["span_id"]
    assert attrs(savepoint)["db.transaction.outcome"] == "rollback"
    assert attrs(savepoint)["db.transaction.rollback_reason"] == "asyncpg.exceptions.UniqueViolationError"
    assert attrs(savepoint)["db.response.status_code"] == "23505"
    assert savepoint["status"] == "error"
    assert attrs(savepoint)["db.transaction.statement_count"] == 2
    assert attrs(manual)["db.transaction.outcome"] == "rollback"
    assert manual["status"] != "error"
    # start()/rollback() by hand: not made current (they may run in different tasks), so the
    # statement is a sibling, still counted
    (delete,) = mem.spans("DELETE pitches")
    assert delete["parent_span_id"] is None
    assert manual["parent_span_id"] is None
    assert attrs(manual)["db.transaction.statement_count"] == 1
    (checkout,) = mem.spans("checkout")
    assert attrs(checkout)["db.transaction.outcome"] == "commit"
    (failed,) = [s for s in mem.spans("INSERT pitches") if s["status"] == "error"]
    assert failed["parent_span_id"] == savepoint["span_id"]
    assert attrs(failed)["db.response.status_code"] == "23505"
    exported = json.dumps(mem.records)
    assert "secret-dup" not in exported
    assert "(id)=(1)" not in exported


def test_errors_are_recorded_and_re_raised_unchanged(pg_dsn: str) -> None:
    async def body(conn: Any) -> None:
        with pytest.raises(asyncpg.InvalidTextRepresentationError) as raised:
            await conn.fetch("SELECT * FROM pitches WHERE id = 'abc-secret'")
        assert "abc-secret" in str(raised.value)  # the user's exception keeps its message
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.execute("SELECT * FROM nowhere WHERE id = $1", 1)

    with capture_spans() as mem:
        run(pg_dsn, body)
    bad, missing = mem.spans("SELECT pitches")[0], mem.spans("SELECT nowhere")[0]
    assert bad["status"] == "error"
    assert attrs(bad)["db.response.status_code"] == "22P02"
    assert attrs(missing)["error.type"] == "42P01"
    (event,) = [e for e in bad["events"] if e["name"] == "exception"]
    assert "abc-secret" not in json.dumps(mem.records)
    assert event["attributes"]["exception.message"].startswith("invalid input syntax for type integer")


def test_pool_init_instruments_every_connection_and_release_is_silent(pg_dsn: str) -> None:
    async def main() -> None:
        async with asyncpg.create_pool(
            **asyncpg_args(pg_dsn), init=instrument_async, min_size=2, max_size=2
        ) as pool:
            await pool.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
            with pt.span("search"):
                counts = await asyncio.gather(
                    pool.fetchval("SELECT count(*) FROM pitches"),
                    pool.fetch("SELECT * FROM pitches WHERE title = $1", "a"),
                )
                assert counts[0] == 0
                async with pool.acquire() as conn:
                    assert is_instrumented(conn)
                    async with conn.transaction():
                        await conn.execute("INSERT INTO pitches VALUES (1, 'a')")

    with capture_spans() as mem:
        asyncio.run(main())
    (search,) = mem.spans("search")
    children = [s for s in mem.spans() if s["parent_span_id"] == search["span_id"]]
    assert sorted(s["name"] for s in children) == ["SELECT pitches", "SELECT pitches", "TRANSACTION"]
    # asyncpg's reset on release (RESET ALL, UNLISTEN *, ...) is not the application's work
    assert not [s for s in mem.spans() if "RESET" in attrs(s).get("db.query.text", "")]


def test_sensitive_tables_audit_slow_queries_and_parameters(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    db.configure(slow_threshold_ms=50)

    async def body(conn: Any) -> None:
        await conn.execute("CREATE TABLE users (id int, email text)")
        await conn.execute("INSERT INTO users VALUES ($1, $2)", 0, "not-captured@example.com")
        instrument(conn, capture_parameters=True)  # again: updates the option
        await conn.execute("INSERT INTO users VALUES ($1, $2)", 1, "ann@example.com")
        await conn.execute("SELECT pg_sleep(0.08)")

    with caplog.at_level(logging.WARNING, logger="pitchey_trace.db"), capture_spans() as mem:
        run(pg_dsn, body)
    plain, insert = mem.spans("INSERT users")
    assert not [k for k in attrs(plain) if k.startswith("db.query.parameter")]  # opt-in only
    # captured, then masked by the export sanitizer (its default for parameter values)
    assert attrs(insert)["db.query.parameter.0"] == attrs(insert)["db.query.parameter.1"] == "[REDACTED]"
    audits = [r for r in mem.records if r["type"] == "audit" and r.get("target") == "users"]
    assert sorted(a["action"] for a in audits) == ["CREATE", "INSERT", "INSERT"]
    assert all(a["trace_id"] for a in audits)
    (slow,) = [s for s in mem.spans() if "pg_sleep" in attrs(s)["db.query.text"]]
    assert [e["name"] for e in slow["events"]] == ["slow_query"]
    assert any("slow query" in r.getMessage() for r in caplog.records)


def test_traced_query_and_decorators(pg_dsn: str) -> None:
    @db.traced_query(table="pitches")
    async def titles(conn: Any, ids: list[int]) -> list[str]:
        return [r["title"] for r in await conn.fetch("SELECT title FROM pitches WHERE id = ANY($1)", ids)]

    @traced_transaction
    async def rename(conn: Any, pid: int) -> None:
        await conn.execute("UPDATE pitches SET title = 'renamed' WHERE id = $1", pid)

    async def body(conn: Any) -> None:
        rows = await traced_query(conn, "SELECT id FROM pitches WHERE id = $1", (2,))
        assert [r["id"] for r in rows] == [2]
        assert not is_instrumented(conn)  # the one-call form does not instrument
        await conn.fetch("SELECT 1")  # untraced
        assert await titles(conn, [1, 3]) == ["a", "c"]
        assert is_instrumented(conn)  # the decorator instrumented its argument
        await rename(conn, 1)
        uninstrument(conn)
        assert not is_instrumented(conn)
        assert type(conn) is asyncpg.Connection
        await conn.fetch("SELECT 2")  # untraced again

    with capture_spans() as mem:
        run(pg_dsn, body, traced=False)
    assert [attrs(s)["db.query.text"] for s in mem.spans() if s["kind"] == "client"] == [
        "SELECT id FROM pitches WHERE id = $1",
        "SELECT title FROM pitches WHERE id = ANY($1)",
        "UPDATE pitches SET title = ? WHERE id = $1",
    ]
    (fn,) = mem.spans(f"{test_traced_query_and_decorators.__qualname__}.<locals>.titles")
    assert mem.spans("SELECT pitches")[1]["parent_span_id"] == fn["span_id"]
    (tx,) = mem.spans("TRANSACTION")
    assert mem.spans("UPDATE pitches")[0]["parent_span_id"] == tx["span_id"]


def test_without_configure_queries_run_untraced(pg_dsn: str) -> None:
    async def body(conn: Any) -> None:
        assert await conn.fetchval("SELECT count(*) FROM pitches") == 3
        async with conn.transaction():
            await conn.execute("DELETE FROM pitches WHERE id = 1")
        assert await conn.fetchval("SELECT count(*) FROM pitches") == 2

    run(pg_dsn, body)
    assert pt.stats().get("internal_errors", 0) == 0


def test_misuse_is_a_clear_error_and_odd_states_are_harmless(pg_dsn: str) -> None:
    with pytest.raises(TypeError, match="asyncpg or psycopg2 connection"):
        instrument(object())  # type: ignore[type-var]

    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_args(pg_dsn))
        try:
            assert uninstrument(conn) is conn  # never instrumented: nothing to undo
            assert type(conn) is asyncpg.Connection
            with pytest.raises(TypeError, match="psycopg options"):
                traced_transaction(conn, force_rollback=True)
            instrument(conn)
            instrument(conn)  # again: harmless
            assert is_instrumented(conn)
        finally:
            await conn.close()
        async with asyncpg.create_pool(**asyncpg_args(pg_dsn), min_size=1, max_size=1) as pool:
            proxy = await pool.acquire()
            instrument(proxy)  # a pool's proxy: its connection is instrumented
            assert is_instrumented(proxy)
            await pool.release(proxy)
            assert not is_instrumented(proxy)  # released: no connection behind it any more

    with capture_spans():
        asyncio.run(main())


def test_statement_counts_of_nested_blocks_with_equal_counts(pg_dsn: str) -> None:
    async def body(conn: Any) -> None:
        async with conn.transaction():
            async with conn.transaction():  # closes with the same count (0) as the outer block
                pass
            await conn.execute("UPDATE pitches SET title = 'y' WHERE id = 2")

    with capture_spans() as mem:
        run(pg_dsn, body)
    (outer,) = mem.spans("TRANSACTION")
    (inner,) = mem.spans("SAVEPOINT")
    assert attrs(inner)["db.transaction.statement_count"] == 0
    assert attrs(outer)["db.transaction.statement_count"] == 1
