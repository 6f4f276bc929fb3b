"""psycopg2 connections traced against a real PostgreSQL server."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest
from sqlalchemy import create_engine, event, text

import pitchey_trace as pt
from pitchey_trace.db import instrument, is_instrumented, traced_query, traced_transaction, uninstrument
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration


@pytest.fixture
def conn2(pg_dsn: str) -> Iterator[Any]:
    """A psycopg2 connection (not autocommit) with a ``pitches`` table of five rows."""
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
        cur.executemany("INSERT INTO pitches VALUES (%s, %s)", [(i, f"p{i}") for i in range(1, 6)])
    conn.commit()
    try:
        yield conn
    finally:
        conn.close()


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return span["attributes"]  # type: ignore[no-any-return]


def test_statements_copy_and_row_factories(conn2: Any) -> None:
    with capture_spans() as mem:
        assert instrument(conn2) is conn2
        assert is_instrumented(conn2)
        with pt.span("request"), conn2.cursor() as cur:
            cur.execute("UPDATE pitches SET title = %s WHERE id > %s", ("z", 3))
            cur.execute("SELECT * FROM pitches WHERE id = 1")
            assert cur.fetchall() == [(1, "p1")]
            cur.executemany(
                "INSERT INTO pitches VALUES (%(id)s, %(t)s)", [{"id": 6, "t": "a"}, {"id": 7, "t": "b"}]
            )
            out = io.StringIO()
            cur.copy_expert("COPY pitches TO STDOUT", out)
            assert out.getvalue().count("\n") == 7
            cur.copy_from(io.StringIO("8\tc\n9\td\n"), "pitches")
            cur.copy_to(io.StringIO(), "pitches")
        conn2.commit()
    (root,) = mem.spans("request")
    spans = [s for s in mem.spans() if s is not root]
    assert [s["name"] for s in spans] == [
        "UPDATE pitches",
        "SELECT pitches",
        "INSERT pitches",
        "COPY pitches",
        "COPY pitches",
        "COPY pitches",
    ]
    for span in spans:
        assert span["parent_span_id"] == root["span_id"]
        assert span["kind"] == "client"
        assert attrs(span)["db.system.name"] == "postgresql"
        assert attrs(span)["server.address"] == "127.0.0.1"
    update, select, insert, copy_out, copy_in, copy_to = spans
    assert attrs(update)["db.response.affected_rows"] == 2
    assert attrs(select)["db.query.text"] == "SELECT * FROM pitches WHERE id = ?"
    assert attrs(select)["db.response.returned_rows"] == 1
    assert attrs(insert)["db.operation.batch.size"] == 2
    assert attrs(copy_out)["db.query.text"] == "COPY pitches TO STDOUT"
    assert attrs(copy_in)["db.response.affected_rows"] == 2
    assert attrs(copy_to)["db.response.affected_rows"] == 9


def test_callproc(conn2: Any) -> None:
    with conn2.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION add_pitch(pid int, t text) RETURNS int LANGUAGE sql AS "
            "$$ INSERT INTO pitches VALUES (pid, t) RETURNING pid $$"
        )
    conn2.commit()
    with capture_spans() as mem:
        instrument(conn2)
        with conn2.cursor() as cur:
            cur.callproc("add_pitch", (40, "forty"))
            assert cur.fetchall() == [(40,)]
            cur.callproc("add_pitch", {"pid": 41, "t": "forty-one"})
            assert cur.fetchall() == [(41,)]
            with pytest.raises(psycopg2.errors.UndefinedFunction):
                cur.callproc("no_such_function", [1])
        conn2.rollback()
    positional, named, missing = mem.spans()
    assert attrs(positional)["db.query.text"] == "SELECT * FROM add_pitch(%s, %s)"
    assert [s["name"] for s in (positional, named, missing)] == [
        "SELECT add_pitch",
        "SELECT add_pitch",
        "SELECT no_such_function",
    ]
    assert attrs(named)["db.stored_procedure.name"] == "add_pitch"
    assert attrs(named)["db.query.text"] == "SELECT * FROM add_pitch(pid := %(pid)s, t := %(t)s)"
    assert attrs(positional)["db.response.returned_rows"] == 1
    assert "forty" not in json.dumps(positional) + json.dumps(named)
    assert missing["status"] == "error"
    assert attrs(missing)["db.response.status_code"] == "42883"


def test_the_connections_row_factory_keeps_working(pg_dsn: str) -> None:
    conn = psycopg2.connect(pg_dsn, cursor_factory=psycopg2.extras.RealDictCursor)
    try:
        with capture_spans() as mem:
            instrument(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT 1 AS one, 'a' AS letter")
                assert cur.fetchall() == [{"one": 1, "letter": "a"}]
                assert isinstance(cur, psycopg2.extras.RealDictCursor)
        uninstrument(conn)
        assert conn.cursor_factory is psycopg2.extras.RealDictCursor
        assert not is_instrumented(conn)
    finally:
        conn.close()
    (span,) = mem.spans("SELECT")
    assert attrs(span)["db.response.returned_rows"] == 1


def test_server_side_cursor_round_trips(conn2: Any) -> None:
    with capture_spans() as mem:
        instrument(conn2)
        with pt.span("export"), conn2.cursor(name="pages") as cur:
            cur.itersize = 2
            cur.execute("SELECT id FROM pitches ORDER BY id")
            assert [r[0] for r in cur] == [1, 2, 3, 4, 5]
        with conn2.cursor(name="by_hand", scrollable=True) as cur:
            cur.execute("SELECT id FROM pitches ORDER BY id")
            cur.scroll(2)
            assert cur.fetchone() == (3,)
            assert cur.fetchmany(5) == [(4,), (5,)]
        conn2.commit()
    fetches = mem.spans("FETCH pitches")
    assert [attrs(s)["db.response.returned_rows"] for s in fetches] == [2, 2, 1, 0, 1, 2]
    (export,) = mem.spans("export")
    assert [s["parent_span_id"] for s in fetches[:4]] == [export["span_id"]] * 4
    assert all(attrs(s)["db.query.text"] == "SELECT id FROM pitches ORDER BY id" for s in fetches)
    (move,) = mem.spans("MOVE pitches")
    assert attrs(move)["db.operation.name"] == "MOVE"
    assert len(mem.spans("SELECT pitches")) == 2  # the two DECLAREs


def test_transactions_savepoints_and_rollbacks(conn2: Any) -> None:
    @traced_transaction(name="rename")
    def rename(conn: Any, pid: int) -> None:
        with conn.cursor() as cur:
            cur.execute("UPDATE pitches SET title = 'renamed' WHERE id = %s", (pid,))

    with capture_spans() as mem:
        with traced_transaction(conn2):
            with conn2.cursor() as cur:
                cur.execute("DELETE FROM pitches WHERE id = 5")
            with pytest.raises(psycopg2.errors.UniqueViolation), traced_transaction(conn2):
                with conn2.cursor() as cur:
                    cur.execute("INSERT INTO pitches VALUES (1, 'secret-dup')")
        with traced_transaction(conn2, force_rollback=True), conn2.cursor() as cur:
            cur.execute("DELETE FROM pitches")
        rename(conn2, 1)
        conn2.autocommit = True
        with pytest.raises(KeyError), traced_transaction(conn2), conn2.cursor() as cur:
            cur.execute("DELETE FROM pitches WHERE id = 2")
            raise KeyError("boom")
    with conn2.cursor() as cur:
        cur.execute("SELECT id, title FROM pitches ORDER BY id")
        assert cur.fetchall() == [(1, "renamed"), (2, "p2"), (3, "p3"), (4, "p4")]
    outer, forced, autocommit = mem.spans("TRANSACTION")
    (savepoint,) = mem.spans("SAVEPOINT")
    assert attrs(outer)["db.transaction.outcome"] == "commit"
    assert attrs(outer)["db.transaction.statement_count"] == 2
    assert savepoint["parent_span_id"] == outer["span_id"]
    assert attrs(savepoint)["db.transaction.outcome"] == "rollback"
    assert attrs(savepoint)["db.response.status_code"] == "23505"
    assert attrs(savepoint)["db.transaction.savepoint_name"].startswith("pitchey_sp_")
    assert attrs(forced)["db.transaction.rollback_reason"] == "force_rollback"
    assert forced["status"] != "error"
    assert attrs(autocommit)["db.transaction.outcome"] == "rollback"
    assert attrs(autocommit)["db.transaction.rollback_reason"] == "KeyError"
    (renamed,) = mem.spans("rename")
    assert attrs(renamed)["db.transaction.outcome"] == "commit"
    assert mem.spans("UPDATE pitches")[0]["parent_span_id"] == renamed["span_id"]
    names = {s["name"] for s in mem.spans()}
    assert not {"BEGIN", "COMMIT", "ROLLBACK", "RELEASE"} & names  # the blocks' own statements
    assert "secret-dup" not in json.dumps(mem.records)


def test_errors_traced_query_and_sql_comments(conn2: Any) -> None:
    with capture_spans() as mem:
        rows = traced_query(conn2, "SELECT title FROM pitches WHERE id = %s", (2,))
        assert rows == [("p2",)]
        assert not is_instrumented(conn2)
        instrument(conn2, sql_comments=True)
        with conn2.cursor() as cur:
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            (seen,) = cur.fetchone()
            with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as raised:
                cur.execute("SELECT * FROM pitches WHERE id = 'abc-secret'")
        assert "abc-secret" in str(raised.value)
        conn2.rollback()
    assert seen.startswith("/*traceparent='00-")  # the server saw the comment
    assert attrs(mem.spans("SELECT pg_stat_activity")[0])["db.query.text"].startswith("SELECT query")
    (bad,) = [s for s in mem.spans("SELECT pitches") if s["status"] == "error"]
    assert attrs(bad)["db.response.status_code"] == "22P02"
    assert "abc-secret" not in json.dumps(mem.records)


def test_sqlalchemy_psycopg2_dialect(pg_dsn: str) -> None:
    params = dict(p.split("=", 1) for p in pg_dsn.replace("'", "").split(" ", 4)[:4])
    search_path = pg_dsn.split("search_path=")[1].rstrip("'")
    url = f"postgresql+psycopg2://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    engine = create_engine(url, connect_args={"options": f"-c search_path={search_path}"})
    assert engine.dialect.driver == "psycopg2"

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        instrument(dbapi_connection)

    with capture_spans() as mem:
        with pt.span("request"), engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id int)"))
            conn.execute(text("INSERT INTO t VALUES (:id)"), [{"id": 1}, {"id": 2}])
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    engine.dispose()
    (root,) = mem.spans("request")
    names = [s["name"] for s in mem.spans() if s["parent_span_id"] == root["span_id"]]
    assert names == ["CREATE t", "INSERT t", "SELECT t"]


def test_explicit_cursor_factory_and_uninstrumented_connection(conn2: Any) -> None:
    with capture_spans() as mem:
        instrument(conn2)
        with conn2.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:  # bypasses the factory
            cur.execute("SELECT 1")
            assert cur.fetchone()["?column?"] == 1
        uninstrument(conn2)
        uninstrument(conn2)  # again: harmless
        with conn2.cursor() as cur:
            cur.execute("SELECT 2")
        assert traced_query(conn2, "SELECT %s::int AS n", (3,)) == [(3,)]  # traced, still not instrumented
        assert not is_instrumented(conn2)
    assert [s["name"] for s in mem.spans()] == ["SELECT"]
    assert attrs(mem.spans()[0])["db.query.text"] == "SELECT %s::int AS n"


def test_statement_counts_of_nested_blocks_with_equal_counts(conn2: Any) -> None:
    with capture_spans() as mem:
        with traced_transaction(conn2):
            with traced_transaction(conn2):  # closes with the same count (0) as the outer block
                pass
            with conn2.cursor() as cur:
                cur.execute("UPDATE pitches SET title = 'y' WHERE id = 2")
    (outer,) = mem.spans("TRANSACTION")
    (inner,) = mem.spans("SAVEPOINT")
    assert attrs(inner)["db.transaction.statement_count"] == 0
    assert attrs(outer)["db.transaction.statement_count"] == 1


def test_nested_blocks_without_tracing_keep_their_semantics(conn2: Any) -> None:
    # No configure(): nothing is recorded, but an inner block is still a savepoint, so the
    # outer block's rollback undoes it (an inner COMMIT would have kept row 10).
    with pytest.raises(RuntimeError), traced_transaction(conn2):
        with traced_transaction(conn2), conn2.cursor() as cur:
            cur.execute("INSERT INTO pitches VALUES (10, 'kept?')")
        raise RuntimeError("undo everything")
    with conn2.cursor() as cur:
        cur.execute("SELECT count(*) FROM pitches WHERE id = 10")
        assert cur.fetchone() == (0,)
