"""Query spans against a real PostgreSQL server: names, kinds, every attribute, all entry points."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

import pitchey_trace as pt
from pitchey_trace.db import instrument, is_instrumented, traced_query, uninstrument
from pitchey_trace.testing import capture_spans
from tests.support.pgserver import PgServer

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def _setup_pitches(conn: Conn) -> None:
    conn.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text NOT NULL, views int DEFAULT 0)")
    conn.execute("INSERT INTO pitches (id, title) VALUES (1, 'one'), (2, 'two'), (3, 'three')")


def test_select_span_has_every_attribute(conn: Conn, pg_server: PgServer) -> None:
    _setup_pitches(conn)
    instrument(conn)
    with capture_spans() as mem:
        rows = conn.execute("SELECT id, title FROM pitches WHERE id IN (1, 2, 3) AND title <> 'x'").fetchall()
    assert len(rows) == 3
    (span,) = mem.spans("SELECT pitches")
    assert span["kind"] == "client"
    assert span["status"] == "unset"
    assert span["attributes"] == {
        "db.system.name": "postgresql",
        "db.namespace": "postgres",
        "server.address": "127.0.0.1",
        "server.port": pg_server.port,
        "db.operation.name": "SELECT",
        "db.collection.name": "pitches",
        "db.query.text": "SELECT id, title FROM pitches WHERE id IN (?) AND title <> ?",
        "db.response.returned_rows": 3,
    }
    assert span["duration_ms"] > 0


def test_dml_spans_record_affected_rows(conn: Conn) -> None:
    _setup_pitches(conn)
    instrument(conn)
    with capture_spans() as mem:
        conn.execute("INSERT INTO pitches (id, title) VALUES (%s, %s)", (4, "four"))
        conn.execute("UPDATE pitches SET views = views + 1 WHERE id <= %s", (3,))
        conn.execute("DELETE FROM pitches WHERE id = 4")
    by_name = {s["name"]: s["attributes"] for s in mem.spans()}
    assert by_name["INSERT pitches"]["db.response.affected_rows"] == 1
    assert by_name["INSERT pitches"]["db.query.text"] == "INSERT INTO pitches (id, title) VALUES (%s, %s)"
    assert by_name["UPDATE pitches"]["db.response.affected_rows"] == 3
    assert by_name["UPDATE pitches"]["db.operation.name"] == "UPDATE"
    assert by_name["DELETE pitches"]["db.response.affected_rows"] == 1
    assert by_name["DELETE pitches"]["db.query.text"] == "DELETE FROM pitches WHERE id = ?"


def test_unix_socket_connection_attributes(pg_server: PgServer, pg_dsn: str) -> None:
    assert pg_server.dsn_unix is not None
    assert pg_server.socket_dir is not None
    options = psycopg.conninfo.conninfo_to_dict(pg_dsn)["options"]
    with psycopg.connect(pg_server.dsn_unix, options=options, autocommit=True) as conn:
        instrument(conn)
        with capture_spans() as mem:
            conn.execute("SELECT 1").fetchone()
    (span,) = mem.spans("SELECT")
    assert span["attributes"]["server.address"] == pg_server.socket_dir
    assert span["attributes"]["network.transport"] == "unix"
    assert span["attributes"]["server.port"] == pg_server.port


def test_cursor_executemany_and_custom_cursor_factory(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("CREATE TABLE tags (name text)")
        instrument(conn)
        with capture_spans() as mem, conn.cursor() as cur:
            assert isinstance(cur, psycopg.ClientCursor)
            cur.executemany("INSERT INTO tags (name) VALUES (%s)", [("a",), ("b",), ("c",)])
            cur.execute("SELECT count(*) FROM tags")
            assert cur.fetchone() == (3,)
    insert = mem.spans("INSERT tags")[0]["attributes"]
    assert insert["db.operation.batch.size"] == 3
    assert insert["db.response.affected_rows"] == 3
    assert mem.spans("SELECT tags")[0]["attributes"]["db.response.returned_rows"] == 1


def test_server_side_cursor(conn: Conn) -> None:
    _setup_pitches(conn)
    instrument(conn)
    with capture_spans() as mem, conn.transaction(), conn.cursor(name="big_scan") as cur:
        assert isinstance(cur, psycopg.ServerCursor)
        cur.execute("SELECT id FROM pitches WHERE id > %s ORDER BY id", (0,))
        assert cur.fetchmany(2) == [(1,), (2,)]
        assert cur.fetchall() == [(3,)]
    (span,) = mem.spans("SELECT pitches")
    assert span["attributes"]["db.query.text"] == "SELECT id FROM pitches WHERE id > %s ORDER BY id"
    (tx,) = mem.spans("TRANSACTION")
    assert span["parent_span_id"] == tx["span_id"]
    # The rows come from the server at FETCH time: each round trip is a span of its own.
    fetches = mem.spans("FETCH pitches")
    assert [f["attributes"]["db.response.returned_rows"] for f in fetches] == [2, 1]
    for f in fetches:
        assert f["parent_span_id"] == tx["span_id"]
        assert f["kind"] == "client"
        assert f["attributes"]["db.operation.name"] == "FETCH"
        assert f["attributes"]["db.collection.name"] == "pitches"
        assert f["attributes"]["db.query.text"] == span["attributes"]["db.query.text"]
        assert f["start_time_unix_nano"] >= span["end_time_unix_nano"]
    assert fetches[0]["end_time_unix_nano"] <= fetches[1]["start_time_unix_nano"]


def test_server_side_cursor_iteration_scroll_and_fetchone(conn: Conn) -> None:
    conn.execute("CREATE TABLE seq (n int)")
    conn.execute("INSERT INTO seq SELECT generate_series(1, 7)")
    instrument(conn)
    with capture_spans() as mem, conn.transaction(), conn.cursor(name="pages") as cur:
        cur.itersize = 3
        cur.execute("SELECT n FROM seq ORDER BY n")
        assert cur.fetchone() == (1,)
        cur.scroll(1)  # skips 2
        assert [n for (n,) in cur] == [3, 4, 5, 6, 7]  # pages of 3: 3 rows, then 2
        assert cur.fetchone() is None
    assert [s["name"] for s in mem.spans() if s["name"].split()[0] in ("FETCH", "MOVE")] == [
        "FETCH seq",
        "MOVE seq",
        "FETCH seq",
        "FETCH seq",
        "FETCH seq",
    ]
    rows = [f["attributes"]["db.response.returned_rows"] for f in mem.spans("FETCH seq")]
    assert rows == [1, 3, 2, 0]
    (move,) = mem.spans("MOVE seq")
    assert "db.response.returned_rows" not in move["attributes"]


def test_server_side_cursor_fetch_error_is_recorded_and_raised(conn: Conn) -> None:
    _setup_pitches(conn)
    instrument(conn)
    with capture_spans() as mem, conn.cursor(name="bad") as cur:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            # DECLARE plans the query; the division runs, and fails, when the rows are fetched.
            cur.execute("SELECT 10 / (id - 2) FROM pitches ORDER BY id")
            assert cur.fetchone() == (-10,)
            cur.fetchall()
    declare, *_ = mem.spans("SELECT pitches")
    assert declare["status"] == "unset"
    ok, failed = mem.spans("FETCH pitches")
    assert ok["status"] == "unset"
    assert failed["status"] == "error"
    assert failed["attributes"]["db.response.status_code"] == "22012"


def test_server_side_cursor_declared_untraced_fetches_untraced(conn: Conn) -> None:
    _setup_pitches(conn)
    with capture_spans() as mem, conn.transaction():
        with conn.cursor(name="before") as cur:
            cur.execute("SELECT id FROM pitches ORDER BY id")
            instrument(conn)  # the cursor class is already chosen: nothing to trace
            assert cur.fetchall() == [(1,), (2,), (3,)]
        with conn.cursor(name="after") as cur:  # made after: DECLARE and FETCH traced
            cur.execute("SELECT id FROM pitches ORDER BY id")
            assert cur.fetchall() == [(1,), (2,), (3,)]
        uninstrument(conn)
    assert len(mem.spans("SELECT pitches")) == 1
    assert [f["attributes"]["db.response.returned_rows"] for f in mem.spans("FETCH pitches")] == [3]


def test_copy_in_and_out(conn: Conn) -> None:
    conn.execute("CREATE TABLE events (id int, kind text)")
    instrument(conn)
    with capture_spans() as mem, conn.cursor() as cur:
        with cur.copy("COPY events (id, kind) FROM STDIN") as copy:
            for i in range(5):
                copy.write_row((i, f"k{i}"))
        with cur.copy("COPY events TO STDOUT") as copy:
            out = list(copy.rows())
    assert len(out) == 5
    spans = mem.spans("COPY events")
    assert [s["attributes"]["db.query.text"] for s in spans] == [
        "COPY events (id, kind) FROM STDIN",
        "COPY events TO STDOUT",
    ]
    assert [s["attributes"]["db.response.affected_rows"] for s in spans] == [5, 5]


def test_stream_counts_rows_and_early_stop_is_not_an_error(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem, conn.cursor() as cur:
        assert sum(1 for _ in cur.stream("SELECT generate_series(1, 10)")) == 10
        gen = cur.stream("SELECT generate_series(1, 1000)")
        assert next(gen) == (1,)
        gen.close()
        assert conn.execute("SELECT 42").fetchone() == (42,)  # the connection is usable
    spans = mem.spans("SELECT")
    assert [s["attributes"].get("db.response.returned_rows") for s in spans] == [10, 1, 1]
    assert all(s["status"] == "unset" for s in spans)


def test_composed_and_bytes_queries(conn: Conn) -> None:
    _setup_pitches(conn)
    instrument(conn)
    with capture_spans() as mem:
        q = sql.SQL("SELECT {} FROM {} WHERE id = {}").format(
            sql.Identifier("title"), sql.Identifier("pitches"), sql.Literal(2)
        )
        assert conn.execute(q).fetchone() == ("two",)
        assert conn.execute(b"SELECT title FROM pitches WHERE id = 3").fetchone() == ("three",)
    texts = [s["attributes"]["db.query.text"] for s in mem.spans("SELECT pitches")]
    assert texts == ['SELECT "title" FROM "pitches" WHERE id = ?', "SELECT title FROM pitches WHERE id = ?"]


def test_traced_query_one_shot_on_plain_connection_and_cursor(conn: Conn) -> None:
    _setup_pitches(conn)
    assert not is_instrumented(conn)
    with capture_spans() as mem:
        rows = traced_query(conn, "SELECT title FROM pitches WHERE id = %s", (1,))
        with conn.cursor() as cur:
            assert traced_query(cur, "UPDATE pitches SET views = 7 WHERE id = %s", (1,)) == []
        conn.execute("SELECT 1")  # not instrumented: not traced
    assert rows == [("one",)]
    assert not is_instrumented(conn)
    assert [s["name"] for s in mem.spans()] == ["SELECT pitches", "UPDATE pitches"]
    assert mem.spans("UPDATE pitches")[0]["attributes"]["db.response.affected_rows"] == 1


def test_decorator_span_parents_query_spans_and_instruments_argument(conn: Conn) -> None:
    _setup_pitches(conn)

    @traced_query(table="pitches")
    def get_pitch_with_details(c: Conn, pid: int) -> dict[str, Any]:
        title = c.execute("SELECT title FROM pitches WHERE id = %s", (pid,)).fetchone()
        views = c.execute("SELECT views FROM pitches WHERE id = %s", (pid,)).fetchone()
        return {"title": title, "views": views}

    with capture_spans() as mem, pt.span("GET /pitches/{id}") as root:
        assert get_pitch_with_details(conn, 2) == {"title": ("two",), "views": (0,)}
    assert is_instrumented(conn)
    (fn_span,) = [s for s in mem.spans() if s["name"].endswith("<locals>.get_pitch_with_details")]
    assert fn_span["parent_span_id"] == root.span_id_hex
    assert fn_span["kind"] == "internal"
    assert fn_span["attributes"]["db.collection.name"] == "pitches"
    queries = mem.spans("SELECT pitches")
    assert len(queries) == 2
    assert {q["parent_span_id"] for q in queries} == {fn_span["span_id"]}
    assert {q["trace_id"] for q in queries} == {root.trace_id_hex}


def test_decorator_with_cursor_argument_and_custom_name(conn: Conn) -> None:
    @traced_query(name="count_rows")
    def count(cur: psycopg.Cursor[Any]) -> int:
        cur.execute("SELECT count(*) FROM generate_series(1, 5)")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    with capture_spans() as mem, conn.cursor() as cur:
        assert count(cur) == 5
        assert isinstance(cur, psycopg.Cursor)
    (fn_span,) = mem.spans("count_rows")
    (query,) = mem.spans("SELECT")
    assert query["parent_span_id"] == fn_span["span_id"]


def test_uninstrument_stops_tracing_even_for_existing_cursors(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        uninstrument(conn)
        cur.execute("SELECT 2")
        conn.execute("SELECT 3")
        with conn.transaction():
            conn.execute("SELECT 4")
    assert len(mem.spans()) == 1
    assert type(conn.cursor()) is psycopg.Cursor
    assert not is_instrumented(conn)


def test_not_configured_means_untouched_results(conn: Conn) -> None:
    instrument(conn)
    assert not pt.is_configured()
    assert conn.execute("SELECT 'value', 2").fetchone() == ("value", 2)
    assert traced_query(conn, "SELECT %s::int + 1", (41,)) == [(42,)]


def test_empty_statement_is_not_a_span(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem:
        conn.execute("")
        conn.execute("SELECT 1")
    assert [s["name"] for s in mem.spans()] == ["SELECT"]


def test_pipeline_mode_queries_are_traced(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem, conn.pipeline():
        c1 = conn.execute("SELECT 1")
        c2 = conn.execute("SELECT 2")
    assert (c1.fetchone(), c2.fetchone()) == ((1,), (2,))
    assert len(mem.spans("SELECT")) == 2
