"""pitchey_trace.db where asyncpg and psycopg2 are installed and psycopg 3 is not (a separate
process in which importing psycopg fails), against a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.modules["psycopg"] = None  # import psycopg now raises ImportError

    import asyncpg
    import pitchey_trace as pt
    from pitchey_trace import db
    from pitchey_trace.exceptions import IntegrationUnavailable
    from pitchey_trace.testing import capture_spans

    try:
        db.TracedTransaction
    except IntegrationUnavailable as exc:
        unavailable = str(exc)

    @db.traced_query(table="pitches")
    async def load(conn, pid):
        return await conn.fetchrow("SELECT title FROM pitches WHERE id = $1", pid)

    @db.traced_transaction
    async def rename(conn, pid):
        await conn.execute("UPDATE pitches SET title = 'b' WHERE id = $1", pid)

    async def main():
        conn = await asyncpg.connect(**json.loads(sys.argv[1]))
        await conn.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
        await conn.execute("INSERT INTO pitches VALUES (1, 'a')")
        rows = await db.traced_query(conn, "SELECT count(*) FROM pitches", ())
        assert not db.is_instrumented(conn)
        assert (await load(conn, 1))["title"] == "a"
        await rename(conn, 1)
        await conn.close()

    import psycopg2

    @db.traced_transaction
    def insert2(conn, pid):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO pitches VALUES (%s, 'psycopg2')", (pid,))

    def main2():
        conn = psycopg2.connect(sys.argv[2])
        try:
            insert2(conn, 2)  # instruments conn
            assert db.is_instrumented(conn)
            assert db.traced_query(conn, "SELECT id FROM pitches WHERE id = %s", (2,)) == [(2,)]
        finally:
            conn.close()

    with capture_spans() as mem:
        asyncio.run(main())
        main2()
    print(json.dumps({
        "unavailable": unavailable,
        "psycopg_imported": sys.modules.get("psycopg") is not None,
        "spans": [[s["name"], s["span_id"], s["parent_span_id"]] for s in mem.spans()],
    }))
    """
)


def test_asyncpg_without_psycopg(pg_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(asyncpg_args(pg_dsn)), pg_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "pitchey-trace[postgres]" in out["unavailable"]
    assert out["psycopg_imported"] is False
    names = [name for name, _, _ in out["spans"]]
    assert names == [
        "SELECT pitches",  # asyncpg: the one-call form
        "SELECT pitches",  # inside load()
        "load",
        "UPDATE pitches",
        "TRANSACTION",
        "INSERT pitches",  # psycopg2
        "TRANSACTION",
        "SELECT pitches",
    ]
    ids = [span_id for _, span_id, _ in out["spans"]]
    parents = [parent for _, _, parent in out["spans"]]
    assert parents[1] == ids[2]  # the query inside load()
    assert parents[3] == ids[4]
    assert parents[5] == ids[6]  # psycopg2: the INSERT inside the decorator's transaction
