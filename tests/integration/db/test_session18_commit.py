"""Direct ``conn.commit()`` / ``conn.rollback()`` on an instrumented connection (what Django's
outermost ``atomic()``, SQLAlchemy and plain DB-API code call): a client span ``COMMIT`` /
``ROLLBACK`` when a transaction is in progress, with the failing COMMIT's SQLSTATE
(serialization failure, deferred constraint), against a real server. psycopg 3 sync and async,
psycopg2 on a Python connection subclass; no span when nothing is sent, none inside
``conn.transaction()`` / ``traced_transaction`` blocks, none under ``suppress_tracing()``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace import db
from pitchey_trace.db import _psycopg2 as p2
from pitchey_trace.db import instrument, is_instrumented, traced_transaction, uninstrument
from pitchey_trace.db._ops import ConnState
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support.pgserver import PgServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Conn = psycopg.Connection[Any]


@pytest.fixture
def tx_conn(pg_dsn: str) -> Iterator[Conn]:
    """An instrumented connection with autocommit off (psycopg's default) and a ``ledger``."""
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount int NOT NULL)")
        setup.execute("CREATE TABLE parent (id int PRIMARY KEY)")
        setup.execute("CREATE TABLE child (pid int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    c = psycopg.connect(pg_dsn)
    try:
        yield instrument(c)
    finally:
        c.close()


def _count(dsn: str, table: str = "ledger") -> int:
    with psycopg.connect(dsn) as c:
        row = c.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        assert row is not None
        return int(row[0])


def _names(mem: Any) -> list[str]:
    return [s["name"] for s in mem.spans()]


def _spans(mem: Any, name: str) -> list[dict[str, Any]]:
    """The spans called ``name`` in the order they started (export order may differ)."""
    return sorted(mem.spans(name), key=lambda s: s["start_time_unix_nano"])


# -- psycopg 3, sync --------------------------------------------------------------------------


def test_commit_is_a_client_span_with_the_connection_attributes(
    tx_conn: Conn, pg_dsn: str, pg_server: PgServer
) -> None:
    with capture_spans() as mem, pt.span("request") as root:
        tx_conn.execute("INSERT INTO ledger VALUES (1, 5)")
        tx_conn.commit()
    assert _count(pg_dsn) == 1
    (span,) = mem.spans("COMMIT")
    assert span["kind"] == "client"
    assert span["parent_span_id"] == root.span_id_hex
    assert span["status"] == "unset"
    attrs = span["attributes"]
    assert attrs["db.system.name"] == "postgresql"
    assert attrs["db.namespace"] == tx_conn.info.dbname
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == pg_server.port
    assert attrs["db.operation.name"] == "COMMIT"
    assert attrs["db.query.text"] == "COMMIT"
    assert attrs["db.transaction.outcome"] == "commit"
    assert "db.transaction.rollback_reason" not in attrs
    assert "error.type" not in attrs
    insert = mem.spans("INSERT ledger")[0]
    assert insert["end_time_unix_nano"] <= span["start_time_unix_nano"]


def test_rollback_is_a_client_span(tx_conn: Conn, pg_dsn: str) -> None:
    with capture_spans() as mem:
        tx_conn.execute("INSERT INTO ledger VALUES (1, 5)")
        tx_conn.rollback()
    assert _count(pg_dsn) == 0
    (span,) = mem.spans("ROLLBACK")
    attrs = span["attributes"]
    assert span["kind"] == "client"
    assert span["status"] == "unset"
    assert attrs["db.operation.name"] == "ROLLBACK"
    assert attrs["db.query.text"] == "ROLLBACK"
    assert attrs["db.transaction.outcome"] == "rollback"
    assert "db.transaction.rollback_reason" not in attrs
    assert not mem.spans("COMMIT")


def test_serialization_failure_at_commit(pg_dsn: str) -> None:
    # Write skew under SERIALIZABLE: each transaction reads what the other writes; the second
    # to commit fails with 40001 at COMMIT (not at a statement).
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE doctors (name text PRIMARY KEY, on_call bool NOT NULL)")
        setup.execute("INSERT INTO doctors VALUES ('a', true), ('b', true)")
    serializable = psycopg.IsolationLevel.SERIALIZABLE
    with (
        psycopg.connect(pg_dsn) as c1,
        psycopg.connect(pg_dsn) as c2,
        capture_spans() as mem,
    ):
        instrument(c1)
        instrument(c2)
        c1.isolation_level = serializable
        c2.isolation_level = serializable
        c1.execute("SELECT count(*) FROM doctors WHERE on_call")
        c2.execute("SELECT count(*) FROM doctors WHERE on_call")
        c1.execute("UPDATE doctors SET on_call = false WHERE name = 'a'")
        c2.execute("UPDATE doctors SET on_call = false WHERE name = 'b'")
        c1.commit()
        with pytest.raises(errors.SerializationFailure) as info:
            c2.commit()
        assert info.value.sqlstate == "40001"
        assert c2.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    ok, failed = _spans(mem, "COMMIT")
    assert ok["attributes"]["db.transaction.outcome"] == "commit"
    assert ok["status"] == "unset"
    attrs = failed["attributes"]
    assert failed["status"] == "error"
    assert attrs["db.response.status_code"] == "40001"
    assert attrs["error.type"] == "40001"
    assert attrs["db.transaction.outcome"] == "rollback"
    assert attrs["db.transaction.rollback_reason"] == "psycopg.errors.SerializationFailure"
    (event,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "psycopg.errors.SerializationFailure"


def test_deferred_foreign_key_violation_at_commit(tx_conn: Conn, pg_dsn: str) -> None:
    with capture_spans() as mem:
        tx_conn.execute("INSERT INTO child VALUES (%s)", (42,))  # checked only at COMMIT
        with pytest.raises(errors.ForeignKeyViolation) as info:
            tx_conn.commit()
    # The exception is psycopg's own, message untouched (the span's message is scrubbed).
    assert "42" in str(info.value)
    assert info.value.__traceback__ is not None
    assert _count(pg_dsn, "child") == 0
    (span,) = mem.spans("COMMIT")
    attrs = span["attributes"]
    assert span["status"] == "error"
    assert attrs["db.response.status_code"] == "23503"
    assert attrs["db.transaction.outcome"] == "rollback"
    assert attrs["db.transaction.rollback_reason"] == "psycopg.errors.ForeignKeyViolation"
    (event,) = [e for e in span["events"] if e["name"] == "exception"]
    assert "42" not in event["attributes"]["exception.message"]


def test_no_span_when_no_transaction_is_in_progress(tx_conn: Conn, pg_dsn: str) -> None:
    with capture_spans() as mem:
        tx_conn.commit()  # idle: psycopg sends nothing
        tx_conn.rollback()
        tx_conn.execute("SELECT 1")
        tx_conn.commit()
        tx_conn.commit()  # idle again
        with psycopg.connect(pg_dsn, autocommit=True) as auto:
            instrument(auto)
            auto.execute("SELECT 2")
            auto.commit()  # autocommit: never a transaction in progress
            auto.rollback()
    assert _names(mem).count("COMMIT") == 1
    assert "ROLLBACK" not in _names(mem)


def test_commit_of_a_failed_transaction_records_a_rollback(tx_conn: Conn) -> None:
    with capture_spans() as mem:
        with pytest.raises(errors.DivisionByZero):
            tx_conn.execute("SELECT 1 / 0")
        tx_conn.commit()  # the server answers ROLLBACK, without an error
    (span,) = mem.spans("COMMIT")
    attrs = span["attributes"]
    assert span["status"] == "unset"
    assert attrs["db.transaction.outcome"] == "rollback"
    assert attrs["db.transaction.rollback_reason"] == "failed_transaction"


def test_django_style_autocommit_off_then_commit(pg_dsn: str) -> None:
    # Django's outermost atomic(): set_autocommit(False), statements (nested blocks are
    # savepoint statements), connection.commit(), set_autocommit(True); on an error,
    # connection.rollback().
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        instrument(c)
        c.execute("CREATE TABLE pitches (id int PRIMARY KEY)")
        with capture_spans() as mem, pt.span("request") as root:
            c.autocommit = False
            c.execute("INSERT INTO pitches VALUES (1)")
            c.execute('SAVEPOINT "s1_x1"')
            c.execute("INSERT INTO pitches VALUES (2)")
            c.execute('RELEASE SAVEPOINT "s1_x1"')
            c.commit()
            c.autocommit = True
            c.autocommit = False
            with pytest.raises(errors.UniqueViolation):
                c.execute("INSERT INTO pitches VALUES (1)")
            c.rollback()
            c.autocommit = True
        assert c.execute("SELECT count(*) FROM pitches").fetchone() == (2,)
    names = _names(mem)
    assert "BEGIN" not in names
    assert names.count("COMMIT") == 1
    assert names.count("ROLLBACK") == 1
    commit = mem.spans("COMMIT")[0]
    assert commit["parent_span_id"] == root.span_id_hex
    assert commit["attributes"]["db.transaction.outcome"] == "commit"
    assert mem.spans("ROLLBACK")[0]["attributes"]["db.transaction.outcome"] == "rollback"


def test_no_double_span_in_transaction_blocks(tx_conn: Conn) -> None:
    with capture_spans() as mem:
        with tx_conn.transaction():
            tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        with traced_transaction(tx_conn):
            tx_conn.execute("INSERT INTO ledger VALUES (2, 1)")
        with pytest.raises(KeyError), tx_conn.transaction():
            tx_conn.execute("INSERT INTO ledger VALUES (3, 1)")
            raise KeyError("x")
        with tx_conn.transaction():
            # psycopg forbids it inside a block (nothing sent): no span, its error unchanged
            with pytest.raises(psycopg.ProgrammingError, match="forbidden within a Transaction"):
                tx_conn.commit()
            with pytest.raises(psycopg.ProgrammingError, match="forbidden within a Transaction"):
                tx_conn.rollback()
    names = _names(mem)
    assert names.count("TRANSACTION") == 4
    assert "COMMIT" not in names
    assert "ROLLBACK" not in names
    outcomes = [s["attributes"]["db.transaction.outcome"] for s in _spans(mem, "TRANSACTION")]
    assert outcomes == ["commit", "commit", "rollback", "commit"]


def test_connection_context_exit_commits_in_a_span(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (x int)")
    with capture_spans() as mem:
        with psycopg.connect(pg_dsn) as c:  # psycopg commits at the end of the block
            instrument(c)
            c.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(KeyError), psycopg.connect(pg_dsn) as c:  # ... or rolls back
            instrument(c)
            c.execute("INSERT INTO t VALUES (2)")
            raise KeyError("x")
    assert _count(pg_dsn, "t") == 1
    assert _names(mem).count("COMMIT") == 1
    assert _names(mem).count("ROLLBACK") == 1


def test_pool_connection_block_commits_in_a_span(tx_conn: Conn, pg_dsn: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(pg_dsn, configure=instrument, min_size=1, max_size=1, open=True) as pool:
        with capture_spans() as mem, pt.span("request") as root:
            with pool.connection() as c:  # psycopg_pool commits at the end of the block
                c.execute("INSERT INTO ledger VALUES (1, 1)")
            with pool.connection() as c:
                c.execute("SELECT 1")  # a read-only transaction is committed too
    assert _count(pg_dsn) == 1
    commits = mem.spans("COMMIT")
    assert len(commits) == 2
    assert {s["parent_span_id"] for s in commits} == {root.span_id_hex}


def test_slow_commit_is_logged_like_a_slow_query(tx_conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    db.configure(slow_threshold_ms=0)  # every call is "slow": the check itself is under test
    with capture_spans() as mem, caplog.at_level("WARNING", logger="pitchey_trace.db"):
        tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        tx_conn.commit()
    (span,) = mem.spans("COMMIT")
    assert [e["name"] for e in span["events"]] == ["slow_query"]
    assert any("statement=COMMIT" in r.getMessage() for r in caplog.records)


def test_pipeline_commit(tx_conn: Conn) -> None:
    with capture_spans() as mem:
        with tx_conn.pipeline():
            tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
            tx_conn.commit()
        with pytest.raises(errors.UniqueViolation), tx_conn.pipeline():
            tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
            # The INSERT's error is raised here (as the COMMIT is queued, or at its sync): the
            # INSERT's span has it.
            tx_conn.commit()
        # The COMMIT was skipped (or never sent): the transaction is still open, failed.
        assert tx_conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        tx_conn.rollback()
        with pytest.raises(errors.ForeignKeyViolation), tx_conn.pipeline():
            tx_conn.execute("INSERT INTO child VALUES (5)")
            tx_conn.commit()  # the COMMIT's own error (deferred constraint)
    ok, aborted, failed = _spans(mem, "COMMIT")
    assert failed["status"] == "error"
    assert failed["attributes"]["db.response.status_code"] == "23503"
    assert failed["attributes"]["db.transaction.outcome"] == "rollback"
    assert ok["attributes"]["db.transaction.outcome"] == "commit"
    attrs = aborted["attributes"]
    assert "db.transaction.outcome" not in attrs
    assert aborted["status"] == "unset"  # the INSERT failed, not the COMMIT
    assert "error.type" not in attrs
    (event,) = aborted["events"]
    assert event["name"] == "pipeline_aborted"
    assert event["attributes"]["exception.type"] == "psycopg.errors.UniqueViolation"
    (rollback,) = mem.spans("ROLLBACK")
    assert rollback["attributes"]["db.transaction.outcome"] == "rollback"
    failed_insert = _spans(mem, "INSERT ledger")[1]
    assert failed_insert["attributes"]["db.response.status_code"] == "23505"


def test_two_phase_commit_makes_no_commit_span(tx_conn: Conn) -> None:
    with capture_spans() as mem:
        tx_conn.tpc_begin(tx_conn.xid(1, "pt-commit-test", "b"))
        tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        with pytest.raises(psycopg.ProgrammingError):
            tx_conn.commit()  # refused during a 2PC: nothing sent
        tx_conn.tpc_commit()  # one phase: psycopg commits internally
    names = _names(mem)
    assert "COMMIT" not in names
    (span,) = mem.spans("TRANSACTION")
    assert span["attributes"]["db.transaction.outcome"] == "commit"


def test_tpc_recover_housekeeping_rollback_is_not_a_span(tx_conn: Conn, pg_dsn: str) -> None:
    # psycopg's tpc_recover() ends the transaction its own query began with self.rollback()
    # (psycopg2 does it from C): the query is a span, that rollback is not.
    async def arecover() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as c:
            instrument(c)
            assert await c.tpc_recover() == []
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            await c.execute("SELECT 1")
            await c.rollback()  # the application's own: a span

    with capture_spans() as mem:
        assert tx_conn.tpc_recover() == []
        assert tx_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        tx_conn.execute("SELECT 1")
        tx_conn.rollback()
        asyncio.run(arecover())
    names = _names(mem)
    assert names.count("SELECT pg_prepared_xacts") == 2
    assert names.count("ROLLBACK") == 2
    uninstrument(tx_conn)
    assert "tpc_recover" not in vars(tx_conn)


def test_nothing_under_suppress_tracing_or_without_configure(tx_conn: Conn, pg_dsn: str) -> None:
    tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
    tx_conn.commit()  # not configured
    with capture_spans() as mem:
        with pt.suppress_tracing():
            tx_conn.execute("INSERT INTO ledger VALUES (2, 1)")
            tx_conn.commit()
            tx_conn.execute("INSERT INTO ledger VALUES (3, 1)")
            tx_conn.rollback()
    assert mem.spans() == []
    assert _count(pg_dsn) == 2


def test_uninstrument_restores_the_methods(tx_conn: Conn) -> None:
    assert "commit" in vars(tx_conn)
    assert "rollback" in vars(tx_conn)
    assert tx_conn.commit.__doc__ == psycopg.Connection.commit.__doc__
    uninstrument(tx_conn)
    assert "commit" not in vars(tx_conn)
    assert "rollback" not in vars(tx_conn)
    assert tx_conn.commit.__func__ is psycopg.Connection.commit  # type: ignore[attr-defined]
    with capture_spans() as mem:
        tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        tx_conn.commit()
    assert mem.spans() == []
    instrument(tx_conn)  # and again
    with capture_spans() as mem:
        tx_conn.execute("INSERT INTO ledger VALUES (2, 1)")
        tx_conn.commit()
    assert len(mem.spans("COMMIT")) == 1


def test_an_internal_error_never_reaches_the_caller(
    tx_conn: Conn, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ConnState, query: Any, cur: Any) -> Any:
        raise RuntimeError("sdk bug")

    with capture_spans(), swallowed_errors() as seen:
        tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        monkeypatch.setattr(ConnState, "statement", broken)
        tx_conn.commit()
    assert _count(pg_dsn) == 1
    assert any(isinstance(exc, RuntimeError) for _, exc in seen)


def test_interrupted_commit_is_cancelled_not_failed(tx_conn: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Conn) -> None:
        raise KeyboardInterrupt

    with capture_spans() as mem:
        tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
        monkeypatch.setattr(psycopg.Connection, "commit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tx_conn.commit()
        monkeypatch.undo()
        tx_conn.rollback()
    span = _spans(mem, "COMMIT")[0]
    assert span["status"] == "unset"
    assert [e["name"] for e in span["events"]] == ["cancelled"]
    assert "db.transaction.outcome" not in span["attributes"]


def test_commit_from_another_thread_keeps_the_span_there(tx_conn: Conn) -> None:
    tx_conn.execute("INSERT INTO ledger VALUES (1, 1)")
    with capture_spans() as mem:

        def work() -> None:
            with pt.span("worker"):
                tx_conn.commit()

        t = threading.Thread(target=work)
        t.start()
        t.join()
    (worker,) = mem.spans("worker")
    (span,) = mem.spans("COMMIT")
    assert span["parent_span_id"] == worker["span_id"]


# -- psycopg 3, async -------------------------------------------------------------------------


def test_async_commit_and_rollback(tx_conn: Conn, pg_dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as c:
            instrument(c)
            assert "commit" in vars(c)
            await c.commit()  # idle: no span
            await c.execute("INSERT INTO ledger VALUES (1, 1)")
            await c.commit()
            await c.execute("INSERT INTO ledger VALUES (2, 1)")
            await c.rollback()
            await c.execute("INSERT INTO child VALUES (7)")
            with pytest.raises(errors.ForeignKeyViolation):
                await c.commit()
            async with c.transaction():
                await c.execute("INSERT INTO ledger VALUES (3, 1)")
            uninstrument(c)
            assert "commit" not in vars(c)

    with capture_spans() as mem:
        asyncio.run(main())
    assert _count(pg_dsn) == 2
    ok, failed = _spans(mem, "COMMIT")
    assert ok["attributes"]["db.transaction.outcome"] == "commit"
    assert failed["attributes"]["db.response.status_code"] == "23503"
    assert failed["attributes"]["db.transaction.outcome"] == "rollback"
    assert failed["status"] == "error"
    (rollback,) = mem.spans("ROLLBACK")
    assert rollback["attributes"]["db.transaction.outcome"] == "rollback"
    assert len(mem.spans("TRANSACTION")) == 1


# -- psycopg2 ---------------------------------------------------------------------------------


class P2Connection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A Python subclass of psycopg2's connection: its instances have a ``__dict__``."""


def _p2(conn: Any, sql: str, params: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(sql, params)


def test_psycopg2_connection_subclass(tx_conn: Conn, pg_dsn: str) -> None:
    c = psycopg2.connect(pg_dsn, connection_factory=P2Connection)
    try:
        instrument(c)
        assert {"commit", "rollback"} <= set(vars(c))
        assert c.commit.__doc__ == psycopg2.extensions.connection.commit.__doc__
        with capture_spans() as mem:
            c.commit()  # nothing begun: psycopg2 sends nothing
            _p2(c, "INSERT INTO ledger VALUES (1, 1)")
            c.commit()
            _p2(c, "INSERT INTO ledger VALUES (2, 1)")
            c.rollback()
            _p2(c, "INSERT INTO child VALUES (9)")
            with pytest.raises(psycopg2.errors.ForeignKeyViolation) as info:
                c.commit()
            assert info.value.pgcode == "23503"
            with pytest.raises(psycopg2.errors.DivisionByZero):
                _p2(c, "SELECT 1 / 0")
            c.commit()  # of a failed transaction: the server rolls back
            with traced_transaction(c):  # its own commit: no second span
                _p2(c, "INSERT INTO ledger VALUES (3, 1)")
            c.autocommit = True
            _p2(c, "BEGIN")
            c.commit()  # psycopg2 sends nothing in autocommit mode
        assert c.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        _p2(c, "ROLLBACK")
        uninstrument(c)
        assert not {"commit", "rollback"} & set(vars(c))
    finally:
        c.close()
    assert _count(pg_dsn) == 2
    commits = _spans(mem, "COMMIT")
    assert [s["attributes"]["db.transaction.outcome"] for s in commits] == ["commit", "rollback", "rollback"]
    ok, failed, aborted = commits
    assert ok["kind"] == "client"
    assert ok["attributes"]["db.system.name"] == "postgresql"
    assert ok["attributes"]["db.query.text"] == "COMMIT"
    assert ok["attributes"]["server.port"] == tx_conn.info.port
    assert failed["status"] == "error"
    assert failed["attributes"]["db.response.status_code"] == "23503"
    assert failed["attributes"]["db.transaction.rollback_reason"] == "psycopg2.errors.ForeignKeyViolation"
    assert aborted["attributes"]["db.transaction.rollback_reason"] == "failed_transaction"
    assert aborted["status"] == "unset"
    assert len(mem.spans("ROLLBACK")) == 1
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "commit"


def test_psycopg2_c_connection_commit_is_not_traced(tx_conn: Conn, pg_dsn: str) -> None:
    # The C type itself has no __dict__: its commit()/rollback() cannot be wrapped (documented).
    c = psycopg2.connect(pg_dsn)
    try:
        instrument(c)
        assert type(c) is psycopg2.extensions.connection
        assert p2.is_instrumented(c)
        assert is_instrumented(c)
        with capture_spans() as mem:
            _p2(c, "INSERT INTO ledger VALUES (1, 1)")
            c.commit()
    finally:
        c.close()
    assert _count(pg_dsn) == 1
    assert _names(mem) == ["INSERT ledger"]


def test_psycopg2_tpc_recover_housekeeping_rollback_is_not_a_span(tx_conn: Conn, pg_dsn: str) -> None:
    # psycopg2's C tpc_recover() calls self.rollback() (found on the instance: the traced one)
    # to end the transaction its query began.
    c = psycopg2.connect(pg_dsn, connection_factory=P2Connection)
    try:
        instrument(c)
        with capture_spans() as mem:
            assert c.tpc_recover() == []
            assert c.status == psycopg2.extensions.STATUS_READY
            _p2(c, "SELECT 1")
            c.rollback()  # the application's own: a span
    finally:
        c.close()
    names = _names(mem)
    assert names.count("SELECT pg_prepared_xacts") == 1
    assert names.count("ROLLBACK") == 1


def test_sqlalchemy_engines_commit_through_the_connection(tx_conn: Conn, pg_dsn: str) -> None:
    from sqlalchemy import create_engine, event, text

    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)  # (its options set the test's schema)
    base = f"{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    options = {"options": params["options"]}
    engines = [
        create_engine(f"postgresql+psycopg://{base}", connect_args=options),
        create_engine(
            f"postgresql+psycopg2://{base}", connect_args={**options, "connection_factory": P2Connection}
        ),
    ]
    for engine in engines:
        event.listen(engine, "connect", lambda dbapi_connection, _record: instrument(dbapi_connection))
    with capture_spans() as mem:
        for n, engine in enumerate(engines):
            with engine.begin() as c:
                c.execute(text("INSERT INTO ledger VALUES (:n, 1)"), {"n": n})
            with pytest.raises(KeyError), engine.begin() as c:
                c.execute(text("INSERT INTO ledger VALUES (:n, 1)"), {"n": n + 10})
                raise KeyError("x")
    for engine in engines:
        engine.dispose()
    assert _count(pg_dsn) == 2
    assert [s["attributes"]["db.transaction.outcome"] for s in _spans(mem, "COMMIT")] == ["commit", "commit"]
    assert [s["attributes"]["db.transaction.outcome"] for s in _spans(mem, "ROLLBACK")] == [
        "rollback",
        "rollback",
    ]
