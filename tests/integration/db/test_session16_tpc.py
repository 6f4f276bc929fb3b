"""Two-phase commit (psycopg 3 ``tpc_*``, sync and async) against a real server started with
``max_prepared_transactions`` > 0: the TRANSACTION span ends at the prepare / one-phase commit
/ rollback with its outcome, COMMIT/ROLLBACK PREPARED are spans of their own, and recovery
from another connection leaves the transaction tracking alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

import pitchey_trace as pt
from pitchey_trace.db import instrument, traced_transaction
from pitchey_trace.db._instrument import state_of
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support.pgserver import PgServer, postgres_server, scratch_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def tpc_server() -> Iterator[PgServer]:
    """A server of its own with prepared transactions enabled (the shared one has 0)."""
    with postgres_server(settings={"max_prepared_transactions": "10"}) as server:
        with psycopg.connect(server.dsn) as c:
            row = c.execute("SHOW max_prepared_transactions").fetchone()
        assert row is not None, "SHOW max_prepared_transactions gave nothing"
        assert int(row[0]) > 0, "the server has max_prepared_transactions = 0 (PITCHEY_TEST_PG_DSN?)"
        yield server


@pytest.fixture
def tpc_dsn(tpc_server: PgServer) -> Iterator[str]:
    with scratch_schema(tpc_server.dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL)")
        try:
            yield dsn
        finally:
            # A prepared transaction left by a failing test holds its locks: the schema could
            # not be dropped.
            with psycopg.connect(tpc_server.dsn, autocommit=True) as c:
                for (gid,) in c.execute("SELECT gid FROM pg_prepared_xacts").fetchall():
                    c.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


@pytest.fixture
def tconn(tpc_dsn: str) -> Iterator[Conn]:
    c = psycopg.connect(tpc_dsn)  # not autocommit: 2PC needs a transaction
    try:
        yield instrument(c)
    finally:
        c.close()  # (not `with`: its commit() is refused while psycopg thinks a 2PC is open)


def _xid(conn: Conn) -> Any:
    return conn.xid(1, f"pt-{uuid.uuid4().hex[:12]}", "b")


def test_prepare_then_commit(tconn: Conn, tpc_dsn: str) -> None:
    with swallowed_errors() as internal, capture_spans() as mem, pt.span("request") as root:
        xid = _xid(tconn)
        tconn.tpc_begin(xid)
        tconn.execute("INSERT INTO acct VALUES (1, 10)")
        tconn.execute("UPDATE acct SET n = n + 1 WHERE id = 1")
        tconn.tpc_prepare()
        with psycopg.connect(tpc_dsn) as other:
            assert xid.gtrid in [x.gtrid for x in other.tpc_recover()]
        tconn.tpc_commit()
    assert internal == []
    (tx,) = mem.spans("TRANSACTION")
    assert tx["parent_span_id"] == root.span_id_hex
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert tx["attributes"]["db.transaction.statement_count"] == 2
    assert tx["status"] == "unset"
    for name in ("INSERT acct", "UPDATE acct"):
        (span,) = mem.spans(name)
        assert span["parent_span_id"] == root.span_id_hex  # siblings: the span is not current
        assert span["start_time_unix_nano"] >= tx["start_time_unix_nano"]
        assert span["end_time_unix_nano"] <= tx["end_time_unix_nano"]
    (commit,) = mem.spans("COMMIT PREPARED")
    assert commit["kind"] == "client"
    assert commit["attributes"]["db.transaction.outcome"] == "commit"
    assert commit["status"] == "unset"
    assert commit["start_time_unix_nano"] >= tx["end_time_unix_nano"]
    with psycopg.connect(tpc_dsn) as c:
        assert c.execute("SELECT n FROM acct").fetchone() == (11,)
    assert state_of(tconn).tx_stack == []  # type: ignore[union-attr]


def test_prepare_then_rollback(tconn: Conn, tpc_dsn: str) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        tconn.execute("INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()
        tconn.tpc_rollback()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.transaction.outcome"] == "rollback"
    with psycopg.connect(tpc_dsn) as c:
        assert c.execute("SELECT count(*) FROM acct").fetchone() == (0,)


def test_one_phase_commit_and_rollback(tconn: Conn) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        tconn.execute("INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_commit()  # no prepare: a plain COMMIT
        tconn.tpc_begin(_xid(tconn))
        tconn.execute("INSERT INTO acct VALUES (2, 10)")
        tconn.tpc_rollback()
    first, second = sorted(mem.spans("TRANSACTION"), key=lambda s: s["start_time_unix_nano"])
    assert first["attributes"]["db.transaction.outcome"] == "commit"
    assert second["attributes"]["db.transaction.outcome"] == "rollback"
    assert "db.transaction.rollback_reason" not in second["attributes"]
    assert first["status"] == second["status"] == "unset"
    assert mem.spans("COMMIT PREPARED") == mem.spans("ROLLBACK PREPARED") == []


def test_prepare_of_a_failed_transaction_is_a_rollback(tconn: Conn) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        tconn.execute("INSERT INTO acct VALUES (1, 10)")
        with pytest.raises(errors.UniqueViolation):
            tconn.execute("INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()  # the server answers ROLLBACK: nothing is prepared
        with pytest.raises(errors.UndefinedObject):
            tconn.tpc_rollback()  # psycopg asks for ROLLBACK PREPARED anyway
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "failed_transaction"
    assert tx["attributes"]["db.transaction.statement_count"] == 2
    assert tx["status"] == "unset"  # the error is the statement's
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.response.status_code"] == "42704"


def test_failing_prepare_is_a_rollback_with_its_error(tpc_dsn: str, pg_server: PgServer) -> None:
    """On a server without prepared transactions PREPARE TRANSACTION fails (55000)."""
    del tpc_dsn
    with scratch_schema(pg_server.dsn) as dsn, psycopg.connect(dsn) as c:
        instrument(c)
        with capture_spans() as mem:
            c.tpc_begin(c.xid(1, "pt-fail", "b"))
            c.execute("SELECT 1")
            with pytest.raises(psycopg.NotSupportedError):
                c.tpc_prepare()
        c._tpc = None  # (psycopg keeps thinking it is prepared; let the block's commit run)
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["status"] == "error"


def test_recovery_from_another_connection(tconn: Conn, tpc_dsn: str) -> None:
    xid = _xid(tconn)
    with capture_spans() as mem:
        tconn.tpc_begin(xid)
        tconn.execute("INSERT INTO acct VALUES (5, 50)")
        tconn.tpc_prepare()
        with instrument(psycopg.connect(tpc_dsn)) as other:
            with traced_transaction(other):
                other.execute("SELECT 1")
            recovered = [x for x in other.tpc_recover() if x.gtrid == xid.gtrid]
            assert len(recovered) == 1
            other.tpc_commit(recovered[0])  # commit what tconn prepared
            with pytest.raises(errors.UndefinedObject):
                other.tpc_rollback(recovered[0])  # already gone: 42704
            assert state_of(other).tpc is None  # type: ignore[union-attr]
            assert state_of(other).tx_stack == []  # type: ignore[union-attr]
        # tconn: psycopg still thinks its transaction is prepared; committing it fails.
        with pytest.raises(errors.UndefinedObject):
            tconn.tpc_commit()
    (tx,) = [
        s for s in mem.spans("TRANSACTION") if s["attributes"].get("db.transaction.outcome") == "prepare"
    ]
    assert tx["attributes"]["db.transaction.statement_count"] == 1
    (other_tx,) = [s for s in mem.spans("TRANSACTION") if s is not tx]
    assert other_tx["attributes"]["db.transaction.outcome"] == "commit"
    assert other_tx["attributes"]["db.transaction.statement_count"] == 1
    commits = sorted(mem.spans("COMMIT PREPARED"), key=lambda s: s["start_time_unix_nano"])
    assert [c["status"] for c in commits] == ["unset", "error"]
    assert commits[0]["attributes"]["db.transaction.outcome"] == "commit"
    assert commits[1]["attributes"]["db.response.status_code"] == "42704"
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.response.status_code"] == "42704"
    assert "db.transaction.outcome" not in rb["attributes"]


def test_abandoned_transaction_span_ends(tpc_dsn: str) -> None:
    import gc

    with capture_spans() as mem:
        c = instrument(psycopg.connect(tpc_dsn))
        c.tpc_begin(_xid(c))
        c.execute("SELECT 1")
        c.close()
        del c
        gc.collect()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "abandoned"


def test_a_refused_second_tpc_begin_leaves_the_open_transaction_traced(tconn: Conn) -> None:
    # psycopg refuses a tpc_begin while the 2PC transaction goes on; that transaction is then
    # prepared and committed, and its span says so (it used to end as "abandoned", with an
    # error span for the refused call).
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        tconn.execute("SELECT 1")
        with pytest.raises(psycopg.ProgrammingError):
            tconn.tpc_begin(_xid(tconn))
        tconn.tpc_prepare()
        tconn.tpc_commit()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["status"] == "unset"
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert "db.transaction.rollback_reason" not in tx["attributes"]
    assert [s["name"] for s in mem.spans("COMMIT PREPARED")] == ["COMMIT PREPARED"]
    assert state_of(tconn).tx_stack == []  # type: ignore[union-attr]


def test_tpc_begin_refused_is_recorded(tconn: Conn) -> None:
    tconn.autocommit = True
    with capture_spans() as mem, pytest.raises(psycopg.ProgrammingError):
        tconn.tpc_begin(_xid(tconn))
    (tx,) = mem.spans("TRANSACTION")
    assert tx["status"] == "error"
    assert state_of(tconn).tx_stack == []  # type: ignore[union-attr]


async def _async_flow(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        instrument(aconn)
        xid = aconn.xid(1, f"pt-{uuid.uuid4().hex[:12]}", "b")
        await aconn.tpc_begin(xid)
        await aconn.execute("INSERT INTO acct VALUES (7, 70)")
        await aconn.tpc_prepare()
        await aconn.tpc_commit()


def test_async_two_phase(tpc_dsn: str) -> None:
    with capture_spans() as mem:
        asyncio.run(_async_flow(tpc_dsn))
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert tx["attributes"]["db.transaction.statement_count"] == 1
    (commit,) = mem.spans("COMMIT PREPARED")
    assert commit["attributes"]["db.transaction.outcome"] == "commit"
