"""AsyncConnection, asyncio.gather parent/child correctness and psycopg_pool pools, against a
real server."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import pitchey_trace as pt
from pitchey_trace.db import instrument, instrument_async, is_instrumented, traced_query
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration

AConn = psycopg.AsyncConnection[Any]


def test_async_connection_every_entry_point(pg_dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
            instrument(c)
            await c.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
            async with c.cursor() as cur:
                await cur.executemany("INSERT INTO pitches VALUES (%s, %s)", [(1, "a"), (2, "b")])
                async with cur.copy("COPY pitches TO STDOUT") as copy:
                    rows = [r async for r in copy.rows()]
                assert len(rows) == 2
                assert [r async for r in cur.stream("SELECT id FROM pitches ORDER BY id")] == [(1,), (2,)]
            async with c.transaction(), c.cursor(name="named") as sc:
                await sc.execute("SELECT title FROM pitches ORDER BY id")
                assert await sc.fetchall() == [("a",), ("b",)]
            assert await traced_query(c, "SELECT title FROM pitches WHERE id = %s", (2,)) == [("b",)]

    with capture_spans() as mem:
        asyncio.run(main())
    names = [s["name"] for s in mem.spans()]
    assert names.count("SELECT pitches") == 3
    (fetch,) = mem.spans("FETCH pitches")  # the named cursor's one round trip after DECLARE
    assert fetch["attributes"]["db.response.returned_rows"] == 2
    assert fetch["parent_span_id"] == mem.spans("TRANSACTION")[0]["span_id"]
    assert {"CREATE pitches", "INSERT pitches", "COPY pitches", "TRANSACTION"} <= set(names)
    insert = mem.spans("INSERT pitches")[0]["attributes"]
    assert insert["db.operation.batch.size"] == 2
    assert insert["db.response.affected_rows"] == 2
    assert mem.spans("COPY pitches")[0]["attributes"]["db.response.affected_rows"] == 2


def test_gather_query_spans_are_siblings_under_the_right_parent(pg_dsn: str) -> None:
    @traced_query(table="pitches")
    async def search(pool: AsyncConnectionPool, tag: str) -> tuple[int, list[Any]]:
        async def count() -> int:
            async with pool.connection() as c:
                cur = await c.execute("SELECT count(*) FROM pg_class WHERE relname LIKE %s", (tag,))
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

        async def page() -> list[Any]:
            async with pool.connection() as c:
                cur = await c.execute("SELECT relname FROM pg_class ORDER BY relname LIMIT 3")
                return await cur.fetchall()

        return await asyncio.gather(count(), page())  # type: ignore[return-value]

    async def main() -> list[str]:
        pool = AsyncConnectionPool(pg_dsn, min_size=2, max_size=4, configure=instrument_async, open=False)
        async with pool:
            await pool.open(wait=True)
            roots = []

            async def request(i: int) -> None:
                with pt.span(f"request-{i}") as root:
                    roots.append(root.span_id_hex)
                    await search(pool, f"pg_%{i}")

            await asyncio.gather(*(request(i) for i in range(4)))
            return roots

    with capture_spans() as mem:
        roots = asyncio.run(main())
    searches = mem.spans("test_gather_query_spans_are_siblings_under_the_right_parent.<locals>.search")
    assert sorted(s["parent_span_id"] for s in searches) == sorted(roots)
    queries = mem.spans("SELECT pg_class")
    assert len(queries) == 8
    for s in searches:
        children = [q for q in queries if q["parent_span_id"] == s["span_id"]]
        assert len(children) == 2
        assert {q["trace_id"] for q in children} == {s["trace_id"]}
        assert sorted(q["attributes"]["db.query.text"] for q in children) == [
            "SELECT count(*) FROM pg_class WHERE relname LIKE %s",
            "SELECT relname FROM pg_class ORDER BY relname LIMIT ?",
        ]


def test_sync_pool_with_configure_instrument(pg_dsn: str) -> None:
    with ConnectionPool(pg_dsn, min_size=2, max_size=2, configure=instrument, open=True) as pool:
        pool.wait()
        results: list[Any] = []

        def worker(i: int) -> None:
            with pt.span(f"job-{i}"), pool.connection() as c:
                assert is_instrumented(c)
                results.append(c.execute("SELECT %s::int * 2", (i,)).fetchone())

        with capture_spans() as mem:
            threads = [threading.Thread(target=pt.wrap_context(worker), args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
    assert sorted(results) == [(i * 2,) for i in range(6)]
    jobs = {s["span_id"]: s["name"] for s in mem.spans() if s["name"].startswith("job-")}
    queries = mem.spans("SELECT")
    assert len(queries) == 6
    assert all(q["parent_span_id"] in jobs for q in queries)
    assert len({q["parent_span_id"] for q in queries}) == 6
