"""Query errors against a real server: recorded with SQLSTATE, re-raised unchanged, values
never exported; and the SDK's own failures never break a query."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest
from psycopg import errors

from pitchey_trace.db import _ops, instrument, traced_query
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def _error_event(span: dict[str, Any]) -> dict[str, Any]:
    (event,) = [e for e in span["events"] if e["name"] == "exception"]
    return dict(event["attributes"])


def test_syntax_error_recorded_and_reraised_unchanged(conn: Conn) -> None:
    instrument(conn)
    raised: list[BaseException] = []
    with capture_spans() as mem:
        try:
            conn.execute("SELEC 1 FROM pitches")
        except errors.SyntaxError as exc:
            raised.append(exc)
    (exc,) = raised
    assert exc.sqlstate == "42601"
    assert str(exc).startswith('syntax error at or near "SELEC"')  # the user's error is intact
    (span,) = mem.spans()
    assert span["status"] == "error"
    assert span["attributes"]["db.response.status_code"] == "42601"
    assert span["attributes"]["error.type"] == "42601"
    event = _error_event(span)
    assert event["exception.type"] == "psycopg.errors.SyntaxError"
    assert event["exception.message"] == "syntax error at or near ?"
    assert r"\"SELEC\"" not in json.dumps(span)  # the quoted fragment of the message


def test_unique_violation_never_exports_the_duplicate_value(conn: Conn) -> None:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE)")
    conn.execute("INSERT INTO accounts VALUES (1, 'dup-4471@example.org')")
    instrument(conn)
    with capture_spans() as mem, pytest.raises(errors.UniqueViolation) as info:
        conn.execute("INSERT INTO accounts VALUES (2, 'dup-4471@example.org')")
    assert "dup-4471@example.org" in str(info.value)  # psycopg's message has the value...
    (span,) = mem.spans("INSERT accounts")
    assert span["attributes"]["db.response.status_code"] == "23505"
    assert span["status_message"] == (
        "psycopg.errors.UniqueViolation: duplicate key value violates unique constraint ?"
    )
    assert "dup-4471" not in json.dumps(mem.records)  # ...the exported records do not


def test_serialization_failure_in_transaction(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE stock (id int PRIMARY KEY, qty int)")
        setup.execute("INSERT INTO stock VALUES (1, 10)")
    with (
        psycopg.connect(pg_dsn) as a,
        psycopg.connect(pg_dsn, autocommit=True) as b,
        capture_spans() as mem,
    ):
        instrument(a)
        a.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

        def reserve() -> None:
            with a.transaction():
                a.execute("SELECT qty FROM stock WHERE id = 1").fetchone()
                b.execute("UPDATE stock SET qty = qty - 1 WHERE id = 1")  # a concurrent writer
                a.execute("UPDATE stock SET qty = qty - 5 WHERE id = 1")

        with pytest.raises(errors.SerializationFailure):
            reserve()
    (update,) = mem.spans("UPDATE stock")
    assert update["attributes"]["db.response.status_code"] == "40001"
    assert update["status"] == "error"
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "psycopg.errors.SerializationFailure"
    assert tx["attributes"]["db.response.status_code"] == "40001"
    assert tx["attributes"]["db.transaction.statement_count"] == 2
    assert update["parent_span_id"] == tx["span_id"]


def test_deadlock_detected(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE locks (id int PRIMARY KEY)")
        setup.execute("INSERT INTO locks VALUES (1), (2)")
    barrier = threading.Barrier(2, timeout=30)
    outcomes: dict[str, str] = {}

    def worker(first: int, second: int) -> None:
        with psycopg.connect(pg_dsn) as c:
            instrument(c)
            c.execute("SET deadlock_timeout = '100ms'")
            c.commit()
            try:
                with c.transaction():
                    c.execute("SELECT id FROM locks WHERE id = %s FOR UPDATE", (first,))
                    barrier.wait()
                    c.execute("SELECT id FROM locks WHERE id = %s FOR UPDATE", (second,))
                outcomes[f"{first}"] = "ok"
            except errors.DeadlockDetected:
                outcomes[f"{first}"] = "deadlock"

    with capture_spans() as mem:
        threads = [threading.Thread(target=worker, args=p) for p in ((1, 2), (2, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(outcomes.values()) == ["deadlock", "ok"]
    failed = [s for s in mem.spans("SELECT locks") if s["status"] == "error"]
    assert [s["attributes"]["db.response.status_code"] for s in failed] == ["40P01"]
    txs = mem.spans("TRANSACTION")
    rollbacks = [s for s in txs if s["attributes"]["db.transaction.outcome"] == "rollback"]
    assert [s["attributes"]["db.response.status_code"] for s in rollbacks] == ["40P01"]


def test_invalid_input_value_is_scrubbed(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem, pytest.raises(errors.InvalidTextRepresentation):
        traced_query(conn, "SELECT %s::int", ("not-a-number-9931",))
    assert "not-a-number-9931" not in json.dumps(mem.records)
    (span,) = mem.spans()
    assert span["attributes"]["db.response.status_code"] == "22P02"


def test_client_side_error_passes_through(conn: Conn) -> None:
    instrument(conn)
    with capture_spans() as mem, pytest.raises(psycopg.ProgrammingError, match="placeholders"):
        conn.execute("SELECT %s, %s", (1,))
    (span,) = mem.spans()
    assert span["status"] == "error"
    assert span["attributes"]["error.type"] == "psycopg.ProgrammingError"


@pytest.mark.allow_internal_errors
def test_sdk_failure_never_breaks_a_query(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    instrument(conn)

    def broken(*args: object) -> str:
        raise RuntimeError("normaliser bug")

    monkeypatch.setattr(_ops, "normalize_sql", broken)
    with capture_spans() as mem:
        assert conn.execute("SELECT 'still works'").fetchone() == ("still works",)
        with pytest.raises(errors.DivisionByZero):  # and user errors still pass through
            conn.execute("SELECT 1 / 0")
    assert mem.spans() == []


@pytest.mark.allow_internal_errors
def test_sdk_failure_at_span_end_never_breaks_a_query(conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    instrument(conn)

    def broken(*args: object) -> None:
        raise RuntimeError("audit bug")

    monkeypatch.setattr(_ops, "audit", broken)
    conn.execute("CREATE TABLE users (id int)")
    with capture_spans():
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
