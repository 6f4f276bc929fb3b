"""Regressions of the PostgreSQL instrumentation, each against the real server: server cursors
as decorator arguments, asyncpg ``async with tx`` semantics, nested block comments, comments on
always-prepared ``executemany``, connections freed without the cycle collector, the statement
cache and huge texts, ``psycopg.Rollback(outer)`` through a savepoint, identifiers that merely
end with a sensitive table's name."""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
import warnings
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

import pitchey_trace as pt
from pitchey_trace.db import instrument, is_instrumented, traced_query, traced_transaction
from pitchey_trace.db._instrument import state_of
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return span["attributes"]  # type: ignore[no-any-return]


@pytest.fixture
def pitches(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
    conn.execute("INSERT INTO pitches VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    return conn


# -- 1. a server-side (named) cursor among a decorated function's arguments --------------------
def test_traced_transaction_takes_a_server_cursor_argument(pitches: Conn, pg_dsn: str) -> None:
    @traced_transaction
    def export_rows(cur: Any) -> list[Any]:
        cur.execute("SELECT id FROM pitches ORDER BY id")
        return cur.fetchall()  # type: ignore[no-any-return]

    with capture_spans() as mem, swallowed_errors() as swallowed, psycopg.connect(pg_dsn) as other:
        with other.cursor(name="export") as cur:
            assert export_rows(cur) == [(1,), (2,), (3,)]
        assert is_instrumented(other)
    assert swallowed == []
    (tx,) = mem.spans("TRANSACTION")
    assert attrs(tx)["db.transaction.outcome"] == "commit"
    (declare,) = mem.spans("SELECT pitches")
    (fetch,) = mem.spans("FETCH pitches")
    assert declare["parent_span_id"] == tx["span_id"]
    assert fetch["parent_span_id"] == tx["span_id"]
    assert attrs(fetch)["db.response.returned_rows"] == 3


def test_traced_query_instruments_every_argument_after_a_server_cursor(pitches: Conn, pg_dsn: str) -> None:
    @traced_query(name="load")
    def load(cur: Any, conn: Conn) -> Any:
        cur.execute("SELECT id FROM pitches")
        rows = cur.fetchall()
        conn.execute("SELECT title FROM pitches WHERE id = 1")
        return rows

    with (
        capture_spans() as mem,
        swallowed_errors() as swallowed,
        psycopg.connect(pg_dsn) as first,
        psycopg.connect(pg_dsn, autocommit=True) as second,
    ):
        with first.cursor(name="c") as cur:
            assert len(load(cur, second)) == 3
        assert is_instrumented(first)
        assert is_instrumented(second)
    assert swallowed == []
    (root,) = mem.spans("load")
    spans = mem.spans("SELECT pitches")
    assert len(spans) == 2
    assert {s["parent_span_id"] for s in (*spans, *mem.spans("FETCH pitches"))} == {root["span_id"]}


def test_async_server_cursor_argument(pitches: Conn, pg_dsn: str) -> None:
    @traced_transaction
    async def export_rows(cur: Any) -> list[Any]:
        await cur.execute("SELECT id FROM pitches ORDER BY id")
        return await cur.fetchall()  # type: ignore[no-any-return]

    async def main() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as aconn, aconn.cursor(name="x") as cur:
            return await export_rows(cur)

    with capture_spans() as mem, swallowed_errors() as swallowed:
        assert asyncio.run(main()) == [(1,), (2,), (3,)]
    assert swallowed == []
    (tx,) = mem.spans("TRANSACTION")
    assert {s["parent_span_id"] for s in mem.spans("FETCH pitches")} == {tx["span_id"]}


# -- 2. asyncpg: `async with tx` is asyncpg's own managed block ---------------------------------
def _asyncpg_misuse(pg_dsn: str, traced: bool) -> tuple[str, int, str]:
    async def main() -> tuple[str, int, str]:
        conn = await asyncpg.connect(**asyncpg_args(pg_dsn))
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS mc (id int)")
            await conn.execute("TRUNCATE mc")
            if traced:
                instrument(conn)
            stray = ""
            tx = conn.transaction()
            try:
                async with tx:
                    await conn.execute("INSERT INTO mc VALUES (1)")
                    await tx.commit()  # asyncpg refuses a manual commit inside `async with`
                    await conn.execute("INSERT INTO mc VALUES (2)")
            except asyncpg.InterfaceError as exc:
                stray = f"{type(exc).__name__}: {exc}"
            rows = await conn.fetchval("SELECT count(*) FROM mc")
            reentered = ""
            tx = conn.transaction()
            try:
                async with tx:
                    async with tx:
                        pass
            except asyncpg.InterfaceError as exc:
                reentered = f"{type(exc).__name__}: {exc}"
            assert not conn.is_in_transaction()
            return stray, rows, reentered
        finally:
            await conn.close()

    return asyncio.run(main())


def test_asyncpg_transaction_block_keeps_asyncpg_semantics(pg_dsn: str) -> None:
    plain = _asyncpg_misuse(pg_dsn, traced=False)
    assert plain[1] == 0
    assert "manually commit" in plain[0]
    with capture_spans() as mem, swallowed_errors() as swallowed:
        assert _asyncpg_misuse(pg_dsn, traced=True) == plain
    assert swallowed == []
    first, second = mem.spans("TRANSACTION")
    for span in (first, second):  # each block's span ends with the block: a rollback on error
        assert attrs(span)["db.transaction.outcome"] == "rollback"
        assert attrs(span)["db.transaction.rollback_reason"] == "asyncpg.exceptions._base.InterfaceError"
        assert span["status"] == "error"
    assert attrs(first)["db.transaction.statement_count"] == 1
    (insert,) = mem.spans("INSERT mc")
    assert insert["parent_span_id"] == first["span_id"]


def test_asyncpg_transaction_block_commits_and_manual_form_still_works(pg_dsn: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_args(pg_dsn))
        try:
            await conn.execute("CREATE TABLE mc (id int)")
            instrument(conn)
            async with conn.transaction() as entered:
                assert entered is None  # as asyncpg's own __aenter__
                await conn.execute("INSERT INTO mc VALUES (1)")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO mc VALUES (2)")
            await tx.commit()
            assert await conn.fetchval("SELECT count(*) FROM mc") == 2
        finally:
            await conn.close()

    with capture_spans() as mem:
        asyncio.run(main())
    block, manual = mem.spans("TRANSACTION")
    assert attrs(block)["db.transaction.outcome"] == "commit"
    assert attrs(manual)["db.transaction.outcome"] == "commit"


# -- 3. nested block comments ------------------------------------------------------------------
def test_nested_block_comment_does_not_leak_into_the_query_text(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem:
        rows = conn.execute("SELECT 1 /* reset for /* ticket */ new password hunter2 */ AS one").fetchall()
        with pytest.raises(psycopg.errors.SyntaxError, match="unterminated /\\* comment"):
            conn.execute("SELECT 2 /* outer /* never closed */ password hunter2")
    assert rows == [(1,)]
    texts = [attrs(s)["db.query.text"] for s in mem.spans("SELECT")]
    assert texts == ["SELECT ? AS one", "SELECT ?"]
    assert "hunter2" not in repr(mem.records)


# -- 4. sql_comments and executemany (always prepared by psycopg) -------------------------------
def _prepared_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def test_executemany_is_not_commented_so_psycopg_prepares_it_once(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn, capture_spans() as mem:
        instrument(conn, sql_comments=True)
        conn.execute("CREATE TABLE em (a int, b text)")
        cur = conn.cursor()
        for _ in range(30):
            cur.executemany("INSERT INTO em VALUES (%s, %s)", [(j, "x") for j in range(3)])
        assert _prepared_count(conn) == 1  # plain psycopg: the one INSERT
    spans = mem.spans("INSERT em")
    assert len(spans) == 30
    assert attrs(spans[0])["db.operation.batch.size"] == 3


def test_async_executemany_is_not_commented(pg_dsn: str) -> None:
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as aconn:
            instrument(aconn, sql_comments=True)
            await aconn.execute("CREATE TABLE em (a int)")
            cur = aconn.cursor()
            for _ in range(30):
                await cur.executemany("INSERT INTO em VALUES (%s)", [(1,), (2,)])
            cur = await aconn.execute("SELECT count(*) FROM pg_prepared_statements")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    with capture_spans():
        assert asyncio.run(main()) == 1


def test_client_cursor_executemany_is_still_commented(pg_dsn: str) -> None:
    # ClientCursor never prepares: its statements keep the traceparent comment.
    with (
        psycopg.connect(pg_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn,
        capture_spans() as mem,
    ):
        instrument(conn, sql_comments=True)
        cur = conn.cursor()
        cur.executemany("SELECT current_query() WHERE %s = %s", [(1, 1)], returning=True)
        row = cur.fetchone()
    assert row is not None
    (span,) = mem.spans("SELECT")
    assert row[0].startswith(f"/*traceparent='00-{span['trace_id']}-{span['span_id']}-")


# -- 5. instrument(conn) makes no reference cycle -----------------------------------------------
def _backend_alive(monitor: Conn, pid: int) -> bool:
    deadline = time.monotonic() + 5
    while True:
        row = monitor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert row is not None
        if not row[0] or time.monotonic() > deadline:
            return bool(row[0])
        time.sleep(0.02)


@pytest.fixture
def gc_disabled() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # psycopg: connection not closed
            yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_dropped_instrumented_connection_closes_without_the_cycle_collector(
    conn: Conn, pg_dsn: str, kind: str, gc_disabled: None
) -> None:
    async def open_async() -> int:
        aconn = await psycopg.AsyncConnection.connect(pg_dsn)
        instrument(aconn)
        async with aconn.transaction():
            await aconn.execute("SELECT 1")
        pid = aconn.info.backend_pid
        del aconn  # dropped without close(): only its reference count can free it
        return pid

    with capture_spans():
        if kind == "sync":
            dropped = psycopg.connect(pg_dsn)
            instrument(dropped)
            with dropped.transaction():
                dropped.execute("SELECT 1")
            pid = dropped.info.backend_pid
            del dropped
        else:
            pid = asyncio.run(open_async())
        assert not _backend_alive(conn, pid)


def test_transaction_method_of_instrumented_connection_still_works(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as c, capture_spans() as mem:
        plain = inspect.signature(c.transaction)
        instrument(c)
        assert inspect.signature(c.transaction) == plain
        with c.transaction(savepoint_name="sp", force_rollback=True) as tx:
            assert isinstance(tx, psycopg.Transaction)
            c.execute("SELECT 1")
    (span,) = mem.spans("TRANSACTION")
    assert attrs(span)["db.transaction.rollback_reason"] == "force_rollback"


# -- 6. the statement cache does not keep huge texts ---------------------------------------------
def test_statement_cache_skips_huge_statements(pitches: Conn) -> None:
    instrument(pitches)
    state = state_of(pitches)
    assert state is not None
    huge = "SELECT id, '" + "x" * 100_000 + "' AS payload FROM pitches WHERE id = 1"
    with capture_spans() as mem:
        pitches.execute("SELECT id FROM pitches WHERE id = 1").fetchall()
        assert pitches.execute(huge).fetchall() == [(1, "x" * 100_000)]
        with pitches.transaction(), pitches.cursor(name="big") as cur:
            columns = ", ".join(f"id AS c{i}" for i in range(1500))  # long even once normalised
            cur.execute(f"SELECT {columns} FROM pitches")  # noqa: S608
            assert len(cur.fetchall()) == 3
    assert "SELECT id FROM pitches WHERE id = 1" in state.cache
    assert huge not in state.cache
    assert max(len(k) if isinstance(k, str) else len(k[1]) for k in state.cache) <= 8192
    assert (
        attrs(mem.spans("SELECT pitches")[1])["db.query.text"]
        == "SELECT id, ? AS payload FROM pitches WHERE id = ?"
    )
    (fetch,) = mem.spans("FETCH pitches")
    assert attrs(fetch)["db.response.returned_rows"] == 3


# -- 7. psycopg.Rollback(outer) through a savepoint ---------------------------------------------
def test_rollback_of_outer_transaction_is_no_error_on_the_savepoint(pitches: Conn) -> None:
    instrument(pitches)
    with capture_spans() as mem, pt.span("request"):
        with pitches.transaction() as outer:
            pitches.execute("UPDATE pitches SET title = 'x' WHERE id = 1")
            with pitches.transaction():
                pitches.execute("UPDATE pitches SET title = 'y' WHERE id = 2")
                raise psycopg.Rollback(outer)
    assert pitches.execute("SELECT title FROM pitches ORDER BY id").fetchall() == [("a",), ("b",), ("c",)]
    (tx,) = mem.spans("TRANSACTION")
    (savepoint,) = mem.spans("SAVEPOINT")
    for span in (tx, savepoint):
        assert span["status"] == "unset"
        assert attrs(span)["db.transaction.outcome"] == "rollback"
        assert attrs(span)["db.transaction.rollback_reason"] == "psycopg.Rollback"
        assert "error.type" not in attrs(span)
        assert not span["events"]


def test_async_rollback_of_outer_transaction_is_no_error_on_the_savepoint(pg_dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as aconn:
            instrument(aconn)
            async with aconn.transaction() as outer, traced_transaction(aconn, name="inner"):
                await aconn.execute("SELECT 1")
                raise psycopg.Rollback(outer)

    with capture_spans() as mem:
        asyncio.run(main())
    (inner,) = mem.spans("inner")
    assert inner["status"] == "unset"
    assert attrs(inner)["db.transaction.outcome"] == "rollback"
    assert attrs(inner)["db.transaction.rollback_reason"] == "psycopg.Rollback"


# -- 8. sensitive tables: a name that only ends like one ------------------------------------------
def test_identifier_ending_with_a_sensitive_name_is_not_audited(conn: Conn) -> None:
    conn.execute('CREATE TABLE "ñusers" (id int)')
    conn.execute("CREATE TABLE users (id int)")
    instrument(conn)
    with capture_spans() as mem:
        conn.execute("SELECT * FROM ñusers").fetchall()
        conn.execute("SELECT * FROM users").fetchall()
    assert [(a["action"], a["target"]) for a in mem.of_type("audit")] == [("SELECT", "users")]
