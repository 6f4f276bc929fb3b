"""psycopg2.extras' connection classes (``DictConnection``, ``RealDictConnection``,
``NamedTupleConnection``, ``LoggingConnection``, ``MinTimeLoggingConnection``) choose their own
cursor class in ``cursor()`` (``self.cursor_factory or DictCursor``): after ``instrument`` they
give exactly the rows and cursor behaviour they gave before (client and named cursors, an
explicit ``cursor_factory=``), their statements are spans, logging connections still log, and
``uninstrument`` puts everything back. Against a real PostgreSQL server."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras as ex
import pytest

import pitchey_trace as pt
from pitchey_trace.db import _psycopg2, instrument, is_instrumented, traced_query, uninstrument
from pitchey_trace.testing import capture_spans

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: Each connection class, the cursor class its ``cursor()`` makes and the class of its rows.
CASES: list[tuple[type, type, str]] = [
    (ex.DictConnection, ex.DictCursor, "DictRow"),
    (ex.RealDictConnection, ex.RealDictCursor, "RealDictRow"),
    (ex.NamedTupleConnection, ex.NamedTupleCursor, "Record"),
    (ex.LoggingConnection, ex.LoggingCursor, "tuple"),
    (ex.MinTimeLoggingConnection, ex.MinTimeLoggingCursor, "tuple"),
]
IDS = [case[0].__name__ for case in CASES]


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    """The test's schema, with a ``pitches`` table of five rows."""
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
            cur.executemany("INSERT INTO pitches VALUES (%s, %s)", [(i, f"p{i}") for i in range(1, 6)])
        conn.commit()
    finally:
        conn.close()
    return pg_dsn


def connect(dsn: str, factory: type, **kwargs: Any) -> Any:
    conn = psycopg2.connect(dsn, connection_factory=factory, **kwargs)
    if isinstance(conn, ex.LoggingConnection):
        conn.initialize(io.StringIO())  # (psycopg2 refuses cursor() before initialize())
    return conn


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Connections a test opened, closed after it."""
    conns: list[Any] = []
    yield conns
    for conn in conns:
        conn.close()


def own_class(cur: Any) -> type:
    """The class of ``cur`` that is not ours (a traced cursor's class is a subclass of it)."""
    mro = type(cur).__mro__
    return next(
        c for c in mro if not getattr(c, "_pitchey_traced", False) and c.__module__ != _psycopg2.__name__
    )


def row_view(row: Any) -> tuple[str, str]:
    return type(row).__name__, repr(row)


def observe(conn: Any) -> dict[str, Any]:
    """Everything the application sees of the connection's cursors and rows."""
    seen: dict[str, Any] = {}
    with conn.cursor() as cur:
        seen["class"] = own_class(cur)
        cur.execute("SELECT id, title FROM pitches WHERE id <= %s ORDER BY id", (3,))
        seen["one"] = row_view(cur.fetchone())
        seen["many"] = [row_view(r) for r in cur.fetchmany(1)]
        seen["all"] = [row_view(r) for r in cur.fetchall()]
        cur.execute("SELECT id FROM pitches ORDER BY id")
        seen["iterated"] = [row_view(r) for r in cur]
    with conn.cursor("pages") as cur:
        seen["named_class"] = own_class(cur)
        seen["named_name"] = cur.name
        cur.itersize = 2
        cur.execute("SELECT id, title FROM pitches ORDER BY id")
        seen["named_iterated"] = [row_view(r) for r in cur]
    with conn.cursor("by_hand", scrollable=True) as cur:
        cur.execute("SELECT id, title FROM pitches ORDER BY id")
        cur.scroll(1)
        seen["named_one"] = row_view(cur.fetchone())
        seen["named_many"] = [row_view(r) for r in cur.fetchmany(2)]
        seen["named_all"] = [row_view(r) for r in cur.fetchall()]
    conn.rollback()
    return seen


@pytest.mark.parametrize(("factory", "cursor_class", "row_class"), CASES, ids=IDS)
def test_rows_and_cursors_are_the_same_before_and_after_instrument(
    dsn: str, opened: list[Any], factory: type, cursor_class: type, row_class: str
) -> None:
    conn = connect(dsn, factory)
    opened.append(conn)
    before = observe(conn)
    assert before["class"] is cursor_class
    assert before["named_class"] is cursor_class
    assert before["one"][0] == row_class
    with capture_spans() as mem:
        instrument(conn)
        with pt.span("request"):
            after = observe(conn)
        with conn.cursor() as cur, conn.cursor("n") as named:
            assert isinstance(cur, cursor_class)
            assert isinstance(named, cursor_class)
            assert getattr(type(cur), "_pitchey_traced", False)
            assert getattr(type(named), "_pitchey_traced", False)
    assert after == before
    (root,) = mem.spans("request")
    selects = mem.spans("SELECT pitches")
    assert len(selects) == 4  # two client statements, two DECLAREs
    assert all(s["parent_span_id"] == root["span_id"] for s in selects)
    fetches = mem.spans("FETCH pitches")
    # "pages": itersize 2 over five rows (2, 2, 1, then the empty page); "by_hand": 1, 2, 1.
    assert [s["attributes"]["db.response.returned_rows"] for s in fetches] == [2, 2, 1, 0, 1, 2, 1]
    (move,) = mem.spans("MOVE pitches")
    assert move["parent_span_id"] == root["span_id"]


@pytest.mark.parametrize(("factory", "cursor_class", "row_class"), CASES, ids=IDS)
def test_uninstrument_puts_everything_back(
    dsn: str, opened: list[Any], factory: type, cursor_class: type, row_class: str
) -> None:
    conn = connect(dsn, factory)
    opened.append(conn)
    attrs_before = dict(conn.__dict__)
    with capture_spans() as mem:
        instrument(conn)
        assert is_instrumented(conn)
        uninstrument(conn)
        assert not is_instrumented(conn)
        assert conn.cursor_factory is None
        assert conn.__dict__ == attrs_before  # (no `cursor` of ours left on the instance)
        with conn.cursor() as cur, conn.cursor("n") as named:
            assert type(cur) is cursor_class
            assert type(named) is cursor_class
            cur.execute("SELECT 1 AS one")
            assert type(cur.fetchone()).__name__ == row_class
        conn.rollback()
    assert mem.spans() == []


def test_a_cursor_made_while_instrumented_stops_tracing_after_uninstrument(
    dsn: str, opened: list[Any]
) -> None:
    conn = connect(dsn, ex.RealDictConnection)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        cur = conn.cursor()
        cur.execute("SELECT 1 AS one")
        uninstrument(conn)
        cur.execute("SELECT 2 AS two")
        assert cur.fetchall() == [{"two": 2}]
        cur.close()
    assert [s["attributes"]["db.query.text"] for s in mem.spans()] == ["SELECT ? AS one"]


def test_logging_connections_still_log(dsn: str, opened: list[Any]) -> None:
    records: list[Any] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.msg)  # (the query as psycopg2 sent it: bytes)

    logger = logging.getLogger("tests.session17.psycopg2_extras")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    try:
        to_logger = psycopg2.connect(dsn, connection_factory=ex.LoggingConnection)
        opened.append(to_logger)
        to_logger.initialize(logger)
        to_file = psycopg2.connect(dsn, connection_factory=ex.MinTimeLoggingConnection)
        opened.append(to_file)
        logfile = io.StringIO()
        to_file.initialize(logfile, mintime=-1)  # (log every statement, however fast)
        with capture_spans() as mem:
            for conn in (to_logger, to_file):
                instrument(conn)
                with conn.cursor() as cur:
                    cur.execute("SELECT title FROM pitches WHERE id = %s", (2,))
                    assert cur.fetchone() == ("p2",)
                with conn.cursor("logged") as cur:
                    cur.execute("SELECT id FROM pitches WHERE id < %s", (3,))
                    assert cur.fetchall() == [(1,), (2,)]
                conn.rollback()
    finally:
        logger.removeHandler(handler)
    assert records == [
        b"SELECT title FROM pitches WHERE id = 2",
        b'DECLARE "logged" CURSOR WITHOUT HOLD FOR SELECT id FROM pitches WHERE id < 3',
    ]
    lines = logfile.getvalue().splitlines()
    assert lines[0] == "SELECT title FROM pitches WHERE id = 2"
    assert lines[1].startswith("  (execution time: ")
    assert lines[2] == 'DECLARE "logged" CURSOR WITHOUT HOLD FOR SELECT id FROM pitches WHERE id < 3'
    assert len(lines) == 4
    assert len(mem.spans("SELECT pitches")) == 4
    assert len(mem.spans("FETCH pitches")) == 2


def test_logging_connection_still_refuses_a_cursor_before_initialize(dsn: str, opened: list[Any]) -> None:
    conn = psycopg2.connect(dsn, connection_factory=ex.LoggingConnection)
    opened.append(conn)
    with capture_spans():
        instrument(conn)
        with pytest.raises(psycopg2.ProgrammingError, match="initialize"):
            conn.cursor()


@pytest.mark.parametrize("named", [False, True], ids=["client", "named"])
def test_an_explicit_cursor_factory_is_kept_and_traced(dsn: str, opened: list[Any], named: bool) -> None:
    conn = connect(dsn, ex.DictConnection)
    opened.append(conn)
    name = "explicit" if named else None
    with capture_spans() as mem:
        instrument(conn)
        with conn.cursor(name, cursor_factory=ex.RealDictCursor) as cur:
            assert own_class(cur) is ex.RealDictCursor
            cur.execute("SELECT id, title FROM pitches WHERE id = %s", (4,))
            assert cur.fetchall() == [{"id": 4, "title": "p4"}]
            assert type(cur.fetchall()) is list
        with conn.cursor(name, cursor_factory=ex.NamedTupleCursor) as cur:
            cur.execute("SELECT id FROM pitches WHERE id = %s", (5,))
            (row,) = cur.fetchall()
            assert row._fields == ("id",)
            assert row.id == 5
        conn.rollback()
    assert len(mem.spans("SELECT pitches")) == 2
    assert len(mem.spans("FETCH pitches")) == (3 if named else 0)


def test_a_factory_set_on_the_connection_still_wins_over_its_default(dsn: str, opened: list[Any]) -> None:
    conn = connect(dsn, ex.DictConnection, cursor_factory=ex.NamedTupleCursor)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        with conn.cursor() as cur:
            assert own_class(cur) is ex.NamedTupleCursor
            cur.execute("SELECT id FROM pitches WHERE id = 1")
            assert cur.fetchone().id == 1
        conn.rollback()
        uninstrument(conn)
        assert conn.cursor_factory is ex.NamedTupleCursor
    assert len(mem.spans("SELECT pitches")) == 1


def test_traced_query_returns_the_connections_own_rows(dsn: str, opened: list[Any]) -> None:
    conn = connect(dsn, ex.RealDictConnection)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        rows = traced_query(conn, "SELECT id, title FROM pitches WHERE id = %s", (1,))
        conn.rollback()
    assert rows == [{"id": 1, "title": "p1"}]
    assert type(rows[0]) is ex.RealDictRow
    assert len(mem.spans("SELECT pitches")) == 1


class CountingConnection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A subclass whose ``cursor()`` chooses no class of its own (the connection's factory)."""

    made = 0

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self.made += 1
        return super().cursor(*args, **kwargs)


def test_a_subclass_cursor_without_a_default_is_still_traced(dsn: str, opened: list[Any]) -> None:
    conn = psycopg2.connect(dsn, connection_factory=CountingConnection)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        with conn.cursor() as cur:
            assert own_class(cur) is psycopg2.extensions.cursor
            cur.execute("SELECT id FROM pitches WHERE id = 3")
            assert cur.fetchall() == [(3,)]
        conn.rollback()
    assert conn.made == 1
    assert len(mem.spans("SELECT pitches")) == 1


def test_an_unset_factory_still_reads_as_unset(dsn: str, opened: list[Any]) -> None:
    # Application code that picks its own default the way psycopg2.extras does keeps it.
    conn = psycopg2.connect(dsn)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        assert not conn.cursor_factory
        with conn.cursor(cursor_factory=conn.cursor_factory or ex.RealDictCursor) as cur:
            cur.execute("SELECT id FROM pitches WHERE id = 2")
            assert cur.fetchall() == [{"id": 2}]
        with conn.cursor() as cur:  # (still traced: the factory is one of ours)
            cur.execute("SELECT id FROM pitches WHERE id = 1")
            assert cur.fetchall() == [(1,)]
        conn.rollback()
        uninstrument(conn)
        assert conn.cursor_factory is None
    assert [s["attributes"]["db.query.text"] for s in mem.spans()] == ["SELECT id FROM pitches WHERE id = ?"]


def test_a_function_as_the_cursor_factory(dsn: str, opened: list[Any]) -> None:
    def factory(conn: Any, name: Any = None) -> Any:
        return ex.DictCursor(conn, name)

    conn = psycopg2.connect(dsn, cursor_factory=factory)
    opened.append(conn)
    with capture_spans() as mem:
        instrument(conn)
        for name in (None, "fn"):
            with conn.cursor(name) as cur:
                cur.execute("SELECT id, title FROM pitches WHERE id = 5")
                (row,) = cur.fetchall()
                assert type(row) is ex.DictRow
                assert row["title"] == "p5"
        conn.rollback()
        uninstrument(conn)
        assert conn.cursor_factory is factory
    assert len(mem.spans("SELECT pitches")) == 2
    assert len(mem.spans("FETCH pitches")) == 1
