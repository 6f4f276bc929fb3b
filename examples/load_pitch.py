"""Load a pitch with its details: several queries under one span (psycopg 3, sync).

    .venv/bin/python examples/load_pitch.py                 # starts a throwaway PostgreSQL
    DATABASE_URL=postgresql://... .venv/bin/python examples/load_pitch.py   # an empty database

With ``DATABASE_URL`` give it a scratch database: it creates and empties the tables ``users``,
``pitches``, ``pitch_media`` and ``comments`` (``search_pitches.py`` has a ``pitches`` table of
its own: run it on another database).

The original platform traced this operation: the pitch page loads the pitch, its owner (from
the sensitive ``users`` table: each access leaves an audit record), its media and its comment
count. ``@traced_query`` gives the whole load one span that parents the query spans; the
connection is instrumented by ``instrument(conn)``. The trace prints as a tree on stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

import pitchey_trace as pt
from pitchey_trace.db import instrument, traced_query, traced_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
CREATE TABLE IF NOT EXISTS pitches (
    id int PRIMARY KEY, owner_id int REFERENCES users (id), title text NOT NULL, views int DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pitch_media (pitch_id int REFERENCES pitches (id), url text NOT NULL);
CREATE TABLE IF NOT EXISTS comments (pitch_id int REFERENCES pitches (id), body text NOT NULL);
"""


@contextmanager
def database() -> Iterator[str]:
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
def seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA)
    conn.execute("TRUNCATE comments, pitch_media, pitches, users")
    conn.execute("INSERT INTO users VALUES (1, 'Ada', 'ada@example.org')")
    conn.execute("INSERT INTO pitches (id, owner_id, title) VALUES (42, 1, 'Solar kettles')")
    media = [(42, "https://cdn.example/k1.png"), (42, "https://cdn.example/k2.png")]
    conn.cursor().executemany("INSERT INTO pitch_media VALUES (%s, %s)", media)
    conn.cursor().executemany("INSERT INTO comments VALUES (%s, %s)", [(42, "Love it"), (42, "How much?")])


@traced_query(table="pitches", name="load_pitch")
def get_pitch_with_details(conn: psycopg.Connection[Any], pitch_id: int) -> dict[str, Any] | None:
    """The page's data: four queries, one span."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT id, owner_id, title, views FROM pitches WHERE id = %s", (pitch_id,))
        pitch = cur.fetchone()
        if pitch is None:
            return None
        pitch["owner"] = cur.execute("SELECT name FROM users WHERE id = %s", (pitch["owner_id"],)).fetchone()
        pitch["media"] = [
            r["url"] for r in cur.execute("SELECT url FROM pitch_media WHERE pitch_id = %s", (pitch_id,))
        ]
        row = cur.execute("SELECT count(*) AS n FROM comments WHERE pitch_id = %s", (pitch_id,)).fetchone()
        pitch["comments"] = row["n"] if row else 0
    conn.execute("UPDATE pitches SET views = views + 1 WHERE id = %s", (pitch_id,))
    return pitch


def main() -> None:
    pt.configure(service="pitch-api", exporters=[pt.ConsoleExporter(pretty=True)])
    try:
        with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
            instrument(conn)
            seed(conn)
            route = {"http.route": "/pitches/{id}"}
            with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER, attributes=route):
                pitch = get_pitch_with_details(conn, 42)
            pt.force_flush()
            print("loaded:", pitch)
    finally:
        pt.shutdown()


if __name__ == "__main__":
    main()
