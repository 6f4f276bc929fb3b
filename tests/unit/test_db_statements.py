"""Statement cache, span templates, sensitive-table detection, error scrubbing, SQL comments and
traced cursor classes, with in-process fakes (the real-server tests are in tests/integration/db)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

import pitchey_trace as pt
from pitchey_trace.db import _options, configure
from pitchey_trace.db._cursors import is_traced_class, traced_class
from pitchey_trace.db._ops import (
    ConnState,
    capture_parameters,
    error_info,
    sensitive_tables_in,
    with_comment,
)
from pitchey_trace.testing import capture_spans


class FakeInfo:
    dbname = "pitchey"
    host = "db.internal"
    port = 6543


class FakeConn:
    info = FakeInfo()
    prepare_threshold = 5


class FakeCursor:
    connection = FakeConn()
    rowcount = 3


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    _options.reset()


@pytest.fixture
def state() -> ConnState:
    return ConnState(FakeConn())


def test_statement_template(state: ConnState) -> None:
    stmt = state.statement("select title from pitches where id = 42 and tag in ('a', 'b')", FakeCursor())
    assert stmt.name == "SELECT pitches"
    assert stmt.attrs == {
        "db.system.name": "postgresql",
        "db.namespace": "pitchey",
        "server.address": "db.internal",
        "server.port": 6543,
        "db.operation.name": "SELECT",
        "db.collection.name": "pitches",
        "db.query.text": "select title from pitches where id = ? and tag in (?)",
    }
    assert stmt.rows_key == "db.response.returned_rows"
    assert state.statement("select title from pitches where id = 42 and tag in ('a', 'b')", None) is stmt


def test_operation_kinds_and_quoted_tables(state: ConnState) -> None:
    cur = FakeCursor()
    assert state.statement('UPDATE "Pitches" SET views = 1', cur).name == "UPDATE Pitches"
    assert state.statement("INSERT INTO t VALUES (1)", cur).rows_key == "db.response.affected_rows"
    assert state.statement("CREATE INDEX i ON t (a)", cur).rows_key is None
    assert state.statement("SELECT now()", cur).name == "SELECT"
    assert state.statement("  ", cur).skip
    assert state.statement(";", cur).skip
    deleted = state.statement(b"DELETE FROM t WHERE a = 'x'", cur)
    assert deleted.attrs["db.query.text"] == "DELETE FROM t WHERE a = ?"
    composed = sql.SQL("SELECT * FROM {} WHERE a = {}").format(sql.Identifier("t"), sql.Literal("secret"))
    stmt = state.statement(composed, None)
    assert stmt.attrs["db.query.text"] == 'SELECT * FROM "t" WHERE a = ?'
    assert stmt.name == "SELECT t"


def test_cache_is_bounded_and_rebuilt_after_configure(state: ConnState) -> None:
    cur = FakeCursor()
    for i in range(600):
        state.statement(f"SELECT {i} FROM t{i}", cur)  # noqa: S608  (test data, never executed)
    assert len(state.cache) <= 512
    before = state.statement("SELECT * FROM users", cur)
    assert before.sensitive == ("users",)
    configure(sensitive_tables=["pitches"])
    after = state.statement("SELECT * FROM users", cur)
    assert after is not before
    assert after.sensitive == ()


def test_cache_does_not_keep_huge_statements(state: ConnState) -> None:
    cur = FakeCursor()
    huge = "SELECT a FROM t WHERE b = '" + "x" * 20_000 + "'"
    stmt = state.statement(huge, cur)
    assert stmt.attrs["db.query.text"] == "SELECT a FROM t WHERE b = ?"
    assert state.statement(huge.encode(), cur).name == "SELECT t"
    assert state.cache == {}
    long_text = "SELECT " + ", ".join(f"c{i}" for i in range(3000)) + " FROM t"  # noqa: S608
    assert state.cursor_statement(state.statement(long_text, cur), "FETCH").name == "FETCH t"
    assert state.cache == {}
    assert state.statement("SELECT 1", cur) is state.statement("SELECT 1", cur)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT * FROM users", ("users",)),
        ('SELECT * FROM "Users"', ("users",)),
        ("SELECT * FROM public.users u JOIN payments p ON p.uid = u.id", ("users", "payments")),
        ("SELECT * FROM pitches WHERE owner IN (SELECT id FROM auth_tokens)", ("auth_tokens",)),
        ("SELECT * FROM users_archive", ()),
        ("SELECT * FROM pitches WHERE note = ?", ()),
        ("SELECT * FROM ñusers", ()),
        ("SELECT * FROM x$users, _payments, ?users", ("users",)),
        ("SELECT * FROM éco.users JOIN ñ.payments ON true", ("users", "payments")),
    ],
)
def test_sensitive_tables_in(text: str, expected: tuple[str, ...]) -> None:
    assert sensitive_tables_in(text) == expected


def test_sensitive_tables_schema_qualified_entries() -> None:
    configure(sensitive_tables=["billing.cards"])
    assert sensitive_tables_in("SELECT * FROM billing.cards") == ("billing.cards",)
    assert sensitive_tables_in("SELECT * FROM cards") == ()


def test_error_info_drops_values() -> None:
    exc = errors.UniqueViolation(
        'duplicate key value violates unique constraint "users_email_key"\n'
        "DETAIL:  Key (email)=(a@b.c) already exists."
    )
    assert error_info(exc) == (
        "23505",
        "psycopg.errors.UniqueViolation",
        "duplicate key value violates unique constraint ?",
    )
    assert error_info(ValueError("bad 'x' value")) == (None, "ValueError", "bad ? value")


def test_with_comment() -> None:
    span = pt.NonRecordingSpan(0xABC, 0x12, 0x01)
    prefix = f"/*traceparent='00-{0xABC:032x}-{0x12:016x}-01'*/ "
    assert with_comment("SELECT 1", span) == prefix + "SELECT 1"
    assert with_comment(b"SELECT 1", span) == prefix.encode() + b"SELECT 1"
    composed = with_comment(sql.SQL("SELECT {}").format(sql.Literal(1)), span)
    assert isinstance(composed, sql.Composed)


def test_capture_parameters_values() -> None:
    configure(max_parameter_length=4)
    with capture_spans(sanitizer=None) as mem:
        with pt.span("q") as s:
            capture_parameters(s, ("abcdefgh", 3, 2.5, True, None, b"\x00\x01"))
        with pt.span("named") as s:
            capture_parameters(s, {"who": "me"})
    q, named = mem.spans()
    assert {k: v for k, v in q["attributes"].items() if k.startswith("db.query.parameter.")} == {
        "db.query.parameter.0": "abcd",
        "db.query.parameter.1": 3,
        "db.query.parameter.2": 2.5,
        "db.query.parameter.3": True,
        "db.query.parameter.4": "NULL",
        "db.query.parameter.5": "<2 bytes>",
    }
    assert named["attributes"]["db.query.parameter.who"] == "me"


def test_begin_done_fail_with_fake_cursor(state: ConnState, caplog: pytest.LogCaptureFixture) -> None:
    configure(slow_threshold_ms=0)
    cur = FakeCursor()
    state.tx_stack.append([0])
    with capture_spans() as mem:
        op = state.begin(cur, "SELECT * FROM users WHERE id = 7", None)
        assert op is not None
        state.done(op, 3)
        op = state.begin(cur, "UPDATE users SET a = 1", None)
        assert op is not None
        state.fail(op, errors.SerializationFailure("could not serialize"))
    assert state.tx_stack == [[2]]
    ok, failed = mem.spans()
    assert ok["kind"] == "client"
    assert ok["attributes"]["db.response.returned_rows"] == 3
    assert [e["name"] for e in ok["events"]] == ["slow_query"]
    assert failed["status"] == "error"
    assert failed["attributes"]["db.response.status_code"] == "40001"
    audits = mem.of_type("audit")
    assert [(a["action"], a["outcome"]) for a in audits] == [("SELECT", "success"), ("UPDATE", "error")]
    assert len([r for r in caplog.records if r.name == "pitchey_trace.db"]) == 2


def test_begin_returns_none_when_not_configured_or_suppressed(state: ConnState) -> None:
    assert state.begin(FakeCursor(), "SELECT 1", None) is None
    with capture_spans() as mem:
        with pt.suppress_tracing():
            assert state.begin(FakeCursor(), "SELECT 1", None) is None
        assert state.begin(FakeCursor(), "", None) is None
    assert mem.spans() == []


def test_comment_added_only_when_allowed(state: ConnState) -> None:
    configure(sql_comments=True)
    cur = FakeCursor()
    with capture_spans():
        op = state.begin(cur, "SELECT 1", None)
        assert op is not None
        assert op[3].startswith("/*traceparent='00-")
        state.done(op, 1)
        op = state.begin(cur, "SELECT 1", None, prepare=True)
        assert op is not None
        assert op[3] == "SELECT 1"
        state.done(op, 1)
        op = state.begin(cur, "COPY t FROM STDIN", None)
        assert op is not None
        assert op[3] == "COPY t FROM STDIN"
        state.done(op, 1)


@pytest.mark.parametrize(
    ("base", "method_owner"),
    [
        (psycopg.Cursor, "execute"),
        (psycopg.ClientCursor, "execute"),
        (psycopg.RawCursor, "execute"),
        (psycopg.ServerCursor, "execute"),
        (psycopg.AsyncCursor, "execute"),
        (psycopg.AsyncServerCursor, "execute"),
    ],
)
def test_traced_class(base: type, method_owner: str) -> None:
    cls = traced_class(base)
    assert issubclass(cls, base)
    assert is_traced_class(cls)
    assert not is_traced_class(base)
    assert traced_class(base) is cls
    assert traced_class(cls) is cls
    # No instance dict and no slot: an existing cursor's class can be switched to it.
    assert "__dict__" not in cls.__dict__
    assert cls.__dict__["__slots__"] == ()
    assert cls.__basicsize__ == base.__basicsize__
    assert getattr(cls, method_owner) is not getattr(base, method_owner)


def test_traced_class_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="not a psycopg cursor class"):
        traced_class(dict)
