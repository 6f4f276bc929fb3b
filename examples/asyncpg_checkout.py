"""Back a pitch with asyncpg: a transaction, a savepoint that fails, a prepared statement and a
cursor, all traced.

    .venv/bin/python examples/asyncpg_checkout.py              # starts a throwaway PostgreSQL
    DATABASE_URL=postgresql://user@host:5432/db .venv/bin/python examples/asyncpg_checkout.py

Outside the repository checkout (no ``tests/support``) ``DATABASE_URL`` must be set, as a URL.

``asyncpg.create_pool(init=instrument_async)`` instruments every pooled connection. The
checkout is one ``TRANSACTION`` span: the backing is inserted, then a second backing by the same
backer breaks a unique constraint inside a nested block (a ``SAVEPOINT`` span marked as an error
with its SQLSTATE, rolled back alone) and the outer transaction still commits. The report reads
the pitch's totals through a prepared statement and the backers through a cursor. The traces
print as trees on stdout; the backer's e-mail address never appears in them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

import pitchey_trace as pt
from pitchey_trace.db import instrument_async, traced_query


@asynccontextmanager
async def pool() -> AsyncIterator[Any]:
    """A pool on ``DATABASE_URL`` when set, else on a throwaway server."""
    url = os.environ.get("DATABASE_URL")
    if url and url.startswith(("postgresql://", "postgres://")):
        async with asyncpg.create_pool(url, init=instrument_async, min_size=1, max_size=2) as p:
            yield p
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:  # the repository's test helper: keyword DSNs and throwaway servers
        from tests.support.pgserver import asyncpg_args, postgres_server
    except ImportError:
        raise SystemExit("outside the repository checkout: set DATABASE_URL=postgresql://...") from None
    if url:  # a libpq keyword DSN: "host=... port=... user=... dbname=..."
        async with asyncpg.create_pool(
            **asyncpg_args(url), init=instrument_async, min_size=1, max_size=2
        ) as p:
            yield p
        return
    with postgres_server() as server:
        args = asyncpg_args(server.dsn)
        async with asyncpg.create_pool(**args, init=instrument_async, min_size=1, max_size=2) as p:
            yield p


async def checkout(conn: Any, pitch_id: int, email: str, amount: int) -> bool:
    """Back a pitch twice in one transaction; the second backing is refused (one per backer)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO backings (pitch_id, email, amount) VALUES ($1, $2, $3)", pitch_id, email, amount
        )
        try:
            async with conn.transaction():  # a savepoint: only this part is rolled back
                await conn.execute(
                    "INSERT INTO backings (pitch_id, email, amount) VALUES ($1, $2, $3)",
                    pitch_id,
                    email,
                    amount,
                )
        except asyncpg.UniqueViolationError:
            return False
    return True


@traced_query(table="backings", name="pitch_report")
async def report(conn: Any, pitch_id: int) -> dict[str, Any]:
    totals = await conn.prepare("SELECT count(*), coalesce(sum(amount), 0) FROM backings WHERE pitch_id = $1")
    count, total = await totals.fetchrow(pitch_id)
    async with conn.transaction():  # asyncpg cursors live in a transaction
        amounts = [
            r["amount"]
            async for r in conn.cursor("SELECT amount FROM backings WHERE pitch_id = $1", pitch_id)
        ]
    return {"pitch": pitch_id, "backings": count, "total": total, "amounts": amounts}


async def main() -> None:
    pt.configure(service="pitch-backing", exporters=[pt.ConsoleExporter(pretty=True)])
    try:
        async with pool() as p:
            await p.execute(
                "CREATE TABLE IF NOT EXISTS backings"
                " (pitch_id int, email text, amount int, UNIQUE (pitch_id, email))"
            )
            await p.execute("TRUNCATE backings")
            async with p.acquire() as conn:
                with pt.span("POST /pitches/{id}/back", kind=pt.SpanKind.SERVER):
                    second_accepted = await checkout(conn, 7, "ann@example.com", 25)
                with pt.span("GET /pitches/{id}/report", kind=pt.SpanKind.SERVER):
                    summary = await report(conn, 7)
        print("second backing accepted:", second_accepted)
        print("report:", summary)
    finally:
        pt.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
