"""SQL comment propagation seen by PostgreSQL (pg_stat_activity), prepared statements and COPY
unaffected; parameter capture opt-in; and no literal from any query text in any exported record."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace import db
from pitchey_trace.db import instrument, traced_query, traced_transaction
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def test_traceparent_comment_visible_in_pg_stat_activity_of_the_session(conn: Conn) -> None:
    db.configure(sql_comments=True)
    instrument(conn)
    with capture_spans() as mem:
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    (span,) = mem.spans("SELECT pg_stat_activity")
    traceparent = f"00-{span['trace_id']}-{span['span_id']}-"
    assert row[0].startswith(f"/*traceparent='{traceparent}")
    assert "SELECT query FROM pg_stat_activity" in row[0]
    # The exported statement is the user's, without the comment.
    text = span["attributes"]["db.query.text"]
    assert text == "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"


def test_traceparent_comment_visible_from_another_session(pg_dsn: str) -> None:
    db.configure(sql_comments=True)
    seen: list[str] = []
    with psycopg.connect(pg_dsn, autocommit=True) as watcher, psycopg.connect(pg_dsn, autocommit=True) as app:
        instrument(app)
        app_pid = app.info.backend_pid

        def watch() -> None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not seen:
                row = watcher.execute(
                    "SELECT query FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (app_pid,)
                ).fetchone()
                if row and "pg_sleep" in row[0]:
                    seen.append(row[0])
                time.sleep(0.01)

        with capture_spans() as mem, pt.span("slow-handler") as handler:
            t = threading.Thread(target=watch)
            t.start()
            app.execute("SELECT pg_sleep(0.5)")
            t.join()
    (query,) = seen
    (span,) = mem.spans("SELECT")
    assert span["parent_span_id"] == handler.span_id_hex
    assert query.startswith(f"/*traceparent='00-{handler.trace_id_hex}-{span['span_id']}-")


def test_comments_leave_prepared_statements_and_copy_alone(pg_dsn: str) -> None:
    db.configure(sql_comments=True)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        instrument(conn)
        conn.execute("CREATE TABLE items (id int)")
        with capture_spans():
            for i in range(3):
                conn.execute("INSERT INTO items VALUES (%s)", (i,), prepare=True)
            with conn.cursor() as cur, cur.copy("COPY items (id) FROM STDIN") as copy:
                copy.write_row((10,))
        prepared = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert len(prepared) == 1
        assert prepared[0][0] == "INSERT INTO items VALUES ($1)"  # prepared once, reused
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (4,)
    with psycopg.connect(pg_dsn, autocommit=True, prepare_threshold=0) as conn:
        instrument(conn)
        with capture_spans():
            for _ in range(3):
                conn.execute("SELECT count(*) FROM items").fetchone()
        statements = [r[0] for r in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        assert "SELECT count(*) FROM items" in statements
        assert not [s for s in statements if s.startswith("/*")]


def test_comments_off_by_default(conn: Conn) -> None:
    instrument(conn)
    with capture_spans():
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    assert not row[0].startswith("/*")


def test_comments_per_connection_override(conn: Conn) -> None:
    instrument(conn, sql_comments=True)
    with capture_spans():
        row = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    assert row[0].startswith("/*traceparent=")


def test_parameters_recorded_only_when_opted_in(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem:
        conn.execute("SELECT %s::text, %s::int", ("param-3391", 7))
    assert "param-3391" not in json.dumps(mem.records)
    db.configure(capture_parameters=True, max_parameter_length=8)
    with capture_spans() as mem:  # the default sanitizer still sees them on export
        conn.execute("SELECT %s::text", ("param-3391",))
    assert "param-33" not in json.dumps(mem.records)
    with capture_spans(sanitizer=None) as mem:
        conn.execute("SELECT %s::text, %s::int, %s::text", ("param-3391", 7, None))
        conn.execute("SELECT %(name)s::text", {"name": "x"})
    first, second = mem.spans("SELECT")
    assert first["attributes"]["db.query.parameter.0"] == "param-33"
    assert first["attributes"]["db.query.parameter.1"] == 7
    assert first["attributes"]["db.query.parameter.2"] == "NULL"
    assert second["attributes"]["db.query.parameter.name"] == "x"


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


LITERALS = [
    "lit-alpha-6612",
    "lit-o''brien-6613",
    "6614.25",
    "661500",
    "lit-dollar-6616",
    "lit-escape-6617",
    "lit-in-6618",
    "lit-in-6619",
    "lit-json-6620",
    "lit-dup-6621",
    "lit-copy-6622",
    "lit-cast-6623",
    "lit-sensitive-6624",
]


def test_no_literal_from_any_query_appears_in_any_exported_record(conn: Conn) -> None:
    conn.execute("CREATE TABLE users (id serial PRIMARY KEY, name text UNIQUE, score numeric, doc jsonb)")
    conn.execute("CREATE TABLE notes (body text)")
    instrument(conn)
    db.configure(slow_threshold_ms=0)  # every query also logs and gets a slow_query event

    @traced_transaction
    def insert_twice(c: Conn) -> None:
        c.execute("INSERT INTO users (name) VALUES ('lit-dup-6621')")
        c.execute("INSERT INTO users (name) VALUES ('lit-dup-6621')")

    @traced_query(table="users")
    def run_all(c: Conn) -> None:
        c.execute("INSERT INTO users (name, score) VALUES ('lit-alpha-6612', 6614.25)")
        c.execute("INSERT INTO users (name, score) VALUES ('lit-o''brien-6613', 661500)")
        c.execute("SELECT * FROM users WHERE name = $$lit-dollar-6616$$").fetchall()
        c.execute("SELECT * FROM users WHERE name = E'lit-escape-6617\\n'").fetchall()
        c.execute("SELECT * FROM users WHERE name IN ('lit-in-6618', 'lit-in-6619')").fetchall()
        c.execute("""UPDATE users SET doc = '{"k": "lit-json-6620"}' WHERE id = 1""")
        with pytest.raises(errors.UniqueViolation):
            c.execute("INSERT INTO users (name) VALUES ('lit-alpha-6612')")
        with pytest.raises(errors.UniqueViolation):
            insert_twice(c)
        with pytest.raises(errors.InvalidTextRepresentation):
            c.execute("SELECT 'lit-cast-6623'::int")
        with c.cursor() as cur, cur.copy("COPY notes (body) FROM STDIN") as copy:
            copy.write_row(("lit-copy-6622",))
        c.execute("DELETE FROM users WHERE name = 'lit-sensitive-6624'")

    with capture_spans() as mem:
        run_all(conn)
    # Every string in every record (numbers such as timestamps could contain the digits of a
    # numeric literal by chance; the statement text and messages are strings).
    dumped = json.dumps(_strings(mem.records))
    assert len(mem.spans()) >= 12
    assert mem.of_type("audit")
    for literal in LITERALS:
        for fragment in {literal, literal.replace("''", "'")}:
            assert fragment not in dumped, fragment
