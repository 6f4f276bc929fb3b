"""pitchey_trace.db where asyncpg is installed and psycopg is not (a separate process in which
importing psycopg fails), against a real PostgreSQL server."""

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

    with capture_spans() as mem:
        asyncio.run(main())
    print(json.dumps({
        "unavailable": unavailable,
        "psycopg_imported": sys.modules.get("psycopg") is not None,
        "spans": [[s["name"], s["span_id"], s["parent_span_id"]] for s in mem.spans()],
    }))
    """
)


def test_asyncpg_without_psycopg(pg_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(asyncpg_args(pg_dsn))],
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
    assert sorted(name for name, _, _ in out["spans"]) == [
        "SELECT pitches",  # the one-call form
        "SELECT pitches",  # inside load()
        "TRANSACTION",
        "UPDATE pitches",
        "load",
    ]
    spans = {name: (span_id, parent) for name, span_id, parent in out["spans"]}  # (the last SELECT)
    assert spans["SELECT pitches"][1] == spans["load"][0]
    assert spans["UPDATE pitches"][1] == spans["TRANSACTION"][0]
