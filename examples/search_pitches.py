"""Search pitches: the count and the page queries run in parallel (asyncio + a psycopg pool).

    .venv/bin/python examples/search_pitches.py              # starts a throwaway PostgreSQL
    DATABASE_URL=postgresql://... .venv/bin/python examples/search_pitches.py   # an empty database

With ``DATABASE_URL`` give it a scratch database: it creates and empties the table ``pitches``
(not the one of ``load_pitch.py``: run that one on another database).

The original platform traced this operation: a search runs ``SELECT count(*)`` for the total
and ``SELECT ... LIMIT/OFFSET`` for the page at the same time, on two pooled connections.
Pool connections are instrumented by ``configure=instrument_async``; ``@traced_query`` gives the
search one span, and the two query spans are its children (siblings of each other) even though
they run concurrently under ``asyncio.gather``. The trace prints as a tree on stdout.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

import pitchey_trace as pt
from pitchey_trace.db import instrument_async, traced_query, traced_transaction

PAGE_SIZE = 5


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """``DATABASE_URL`` when set, else a throwaway server from the installed binaries."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.pgserver import postgres_server

    with postgres_server() as server:
        yield server.dsn


@traced_transaction
async def seed(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS pitches (id serial PRIMARY KEY, title text NOT NULL)")
    await conn.execute("TRUNCATE pitches")
    words = ["solar", "kettle", "drone", "garden", "bike", "coffee", "robot"]
    titles = [(f"{a} {b}",) for a in words for b in words if a != b]
    async with conn.cursor() as cur:
        await cur.executemany("INSERT INTO pitches (title) VALUES (%s)", titles)


@traced_query(table="pitches", name="search_pitches")
async def search(pool: AsyncConnectionPool, term: str, page: int) -> dict[str, Any]:
    """Total and one page of matches, fetched concurrently."""
    pattern = f"%{term}%"

    async def count() -> int:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM pitches WHERE title ILIKE %s", (pattern,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def page_rows() -> list[str]:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT title FROM pitches WHERE title ILIKE %s ORDER BY title LIMIT %s OFFSET %s",
                (pattern, PAGE_SIZE, page * PAGE_SIZE),
            )
            return [r[0] for r in await cur.fetchall()]

    total, rows = await asyncio.gather(count(), page_rows())
    return {"term": term, "total": total, "page": page, "results": rows}


async def main() -> None:
    pt.configure(service="pitch-search", exporters=[pt.ConsoleExporter(pretty=True)])
    try:
        async with database() as dsn:
            pool = AsyncConnectionPool(dsn, min_size=2, max_size=4, configure=instrument_async, open=False)
            async with pool:
                async with pool.connection() as conn:
                    await seed(conn)
                with pt.span("GET /search", kind=pt.SpanKind.SERVER, attributes={"http.route": "/search"}):
                    found = await search(pool, "solar", 1)
        print("found:", found)
    finally:
        pt.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
