"""traced_transaction and conn.transaction() against a real server: outcome, rollback reason,
statement count, savepoints as child spans, decorator forms."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace.db import instrument, traced_transaction
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


@pytest.fixture
def ledger(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE ledger (id serial PRIMARY KEY, amount int NOT NULL CHECK (amount <> 0))")
    return conn


def _count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM ledger").fetchone()
    assert row is not None
    return int(row[0])


def test_commit(ledger: Conn) -> None:
    with capture_spans() as mem, pt.span("request") as root, traced_transaction(ledger) as tx:
        assert isinstance(tx, psycopg.Transaction)
        ledger.execute("INSERT INTO ledger (amount) VALUES (5)")
        ledger.execute("INSERT INTO ledger (amount) VALUES (7)")
    assert _count(ledger) == 2
    (span,) = mem.spans("TRANSACTION")
    assert span["parent_span_id"] == root.span_id_hex
    assert span["kind"] == "internal"
    attrs = span["attributes"]
    assert attrs["db.transaction.outcome"] == "commit"
    assert attrs["db.transaction.statement_count"] == 2
    assert attrs["db.system.name"] == "postgresql"
    assert "db.transaction.rollback_reason" not in attrs
    assert span["status"] == "unset"
    assert {s["parent_span_id"] for s in mem.spans("INSERT ledger")} == {span["span_id"]}


def test_rollback_on_error_records_reason_and_sqlstate(ledger: Conn) -> None:
    def book() -> None:
        with traced_transaction(ledger):
            ledger.execute("INSERT INTO ledger (amount) VALUES (5)")
            ledger.execute("INSERT INTO ledger (amount) VALUES (0)")

    with capture_spans() as mem, pytest.raises(errors.CheckViolation):
        book()
    assert _count(ledger) == 0
    (span,) = mem.spans("TRANSACTION")
    attrs = span["attributes"]
    assert attrs["db.transaction.outcome"] == "rollback"
    assert attrs["db.transaction.rollback_reason"] == "psycopg.errors.CheckViolation"
    assert attrs["db.response.status_code"] == "23514"
    assert attrs["db.transaction.statement_count"] == 2
    assert span["status"] == "error"


def test_rollback_on_application_error(ledger: Conn) -> None:
    def checkout() -> None:
        with traced_transaction(ledger, name="checkout"):
            ledger.execute("INSERT INTO ledger (amount) VALUES (5)")
            raise KeyError("cart")

    with capture_spans() as mem, pytest.raises(KeyError):
        checkout()
    assert _count(ledger) == 0
    (span,) = mem.spans("checkout")
    assert span["attributes"]["db.transaction.outcome"] == "rollback"
    assert span["attributes"]["db.transaction.rollback_reason"] == "KeyError"
    assert "db.response.status_code" not in span["attributes"]


def test_explicit_rollback_and_force_rollback_are_not_errors(ledger: Conn) -> None:
    with capture_spans() as mem:
        with traced_transaction(ledger):
            ledger.execute("INSERT INTO ledger (amount) VALUES (1)")
            raise psycopg.Rollback()
        with traced_transaction(ledger, force_rollback=True):
            ledger.execute("INSERT INTO ledger (amount) VALUES (2)")
    assert _count(ledger) == 0
    first, second = mem.spans("TRANSACTION")
    assert first["attributes"]["db.transaction.rollback_reason"] == "psycopg.Rollback"
    assert second["attributes"]["db.transaction.rollback_reason"] == "force_rollback"
    for span in (first, second):
        assert span["attributes"]["db.transaction.outcome"] == "rollback"
        assert span["status"] == "unset"


def test_nested_transactions_are_savepoint_child_spans(ledger: Conn) -> None:
    with capture_spans() as mem, traced_transaction(ledger):
        ledger.execute("INSERT INTO ledger (amount) VALUES (1)")
        with ledger.transaction():
            ledger.execute("INSERT INTO ledger (amount) VALUES (2)")
            with ledger.transaction(savepoint_name="inner_most"):
                ledger.execute("INSERT INTO ledger (amount) VALUES (3)")
        with pytest.raises(errors.CheckViolation), ledger.transaction():
            ledger.execute("INSERT INTO ledger (amount) VALUES (0)")
        ledger.execute("INSERT INTO ledger (amount) VALUES (4)")
    assert _count(ledger) == 4
    (top,) = mem.spans("TRANSACTION")
    savepoints = mem.spans("SAVEPOINT")
    assert len(savepoints) == 3
    by_id = {s["span_id"]: s for s in savepoints}
    inner_most = next(
        s for s in savepoints if s["attributes"].get("db.transaction.savepoint_name") == "inner_most"
    )
    middle = by_id[inner_most["parent_span_id"]]
    failed = next(s for s in savepoints if s["attributes"]["db.transaction.outcome"] == "rollback")
    assert middle["parent_span_id"] == top["span_id"]
    assert failed["parent_span_id"] == top["span_id"]
    assert middle["attributes"]["db.transaction.outcome"] == "commit"
    assert middle["attributes"]["db.transaction.statement_count"] == 2
    assert inner_most["attributes"]["db.transaction.statement_count"] == 1
    assert failed["attributes"]["db.response.status_code"] == "23514"
    assert top["attributes"]["db.transaction.outcome"] == "commit"
    assert top["attributes"]["db.transaction.statement_count"] == 5
    (insert3,) = [s for s in mem.spans("INSERT ledger") if s["parent_span_id"] == inner_most["span_id"]]
    assert insert3["attributes"]["db.response.affected_rows"] == 1


def test_instrumented_connection_traces_plain_transaction_blocks(ledger: Conn) -> None:
    instrument(ledger)
    with capture_spans() as mem, ledger.transaction():
        ledger.execute("INSERT INTO ledger (amount) VALUES (3)")
    (span,) = mem.spans("TRANSACTION")
    assert span["attributes"]["db.transaction.outcome"] == "commit"
    assert span["attributes"]["db.transaction.statement_count"] == 1


def test_commit_failure_is_a_rollback(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE parents (id int PRIMARY KEY);"
        "CREATE TABLE children (pid int REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with capture_spans() as mem, pytest.raises(errors.ForeignKeyViolation), traced_transaction(conn):
        conn.execute("INSERT INTO children VALUES (99)")  # checked only at COMMIT
    (span,) = mem.spans("TRANSACTION")
    assert span["attributes"]["db.transaction.outcome"] == "rollback"
    assert span["attributes"]["db.response.status_code"] == "23503"
    assert span["status"] == "error"


def test_decorator_sync(ledger: Conn) -> None:
    @traced_transaction
    def transfer(c: Conn, amount: int) -> None:
        c.execute("INSERT INTO ledger (amount) VALUES (%s)", (-amount,))
        c.execute("INSERT INTO ledger (amount) VALUES (%s)", (amount,))

    @traced_transaction(name="bad_transfer")
    def bad(c: Conn) -> None:
        c.execute("INSERT INTO ledger (amount) VALUES (0)")

    with capture_spans() as mem:
        transfer(ledger, 10)
        with pytest.raises(errors.CheckViolation):
            bad(ledger)
    assert _count(ledger) == 2
    (ok,) = mem.spans("TRANSACTION")
    (failed,) = mem.spans("bad_transfer")
    assert ok["attributes"]["db.transaction.statement_count"] == 2
    assert failed["attributes"]["db.transaction.outcome"] == "rollback"


def test_decorator_without_connection_argument_is_a_type_error() -> None:
    @traced_transaction
    def nothing(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="no database connection"):
        nothing(1)


def test_async_transaction_and_decorator(pg_dsn: str) -> None:
    @traced_transaction
    async def add(c: psycopg.AsyncConnection[Any], amount: int) -> None:
        await c.execute("INSERT INTO ledger (amount) VALUES (%s)", (amount,))

    async def main() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
            await c.execute("CREATE TABLE ledger (id serial PRIMARY KEY, amount int CHECK (amount <> 0))")
            async with traced_transaction(c) as tx:
                assert isinstance(tx, psycopg.AsyncTransaction)
                await c.execute("INSERT INTO ledger (amount) VALUES (1)")
                async with c.transaction():
                    await c.execute("INSERT INTO ledger (amount) VALUES (2)")
            await add(c, 3)
            with pytest.raises(errors.CheckViolation):
                await add(c, 0)
            cur = await c.execute("SELECT amount FROM ledger ORDER BY id")
            return await cur.fetchall()

    with capture_spans() as mem:
        assert asyncio.run(main()) == [(1,), (2,), (3,)]
    txs = mem.spans("TRANSACTION")
    assert [t["attributes"]["db.transaction.outcome"] for t in txs] == ["commit", "commit", "rollback"]
    assert [t["attributes"]["db.transaction.statement_count"] for t in txs] == [2, 1, 1]
    (sp,) = mem.spans("SAVEPOINT")
    assert sp["parent_span_id"] == txs[0]["span_id"]
    assert txs[2]["attributes"]["db.response.status_code"] == "23514"


def test_statement_counts_of_nested_blocks_with_equal_counts(conn: psycopg.Connection[Any]) -> None:
    with capture_spans() as mem:
        with traced_transaction(conn):
            with conn.transaction():  # closes with the same count (0) as the outer block
                pass
            conn.execute("SELECT 1")
    (outer,) = mem.spans("TRANSACTION")
    (inner,) = mem.spans("SAVEPOINT")
    assert inner["attributes"]["db.transaction.statement_count"] == 0
    assert outer["attributes"]["db.transaction.statement_count"] == 1
