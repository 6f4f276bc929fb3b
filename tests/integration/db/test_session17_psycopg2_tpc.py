"""psycopg2 two-phase commit (``tpc_*``) against a real server started with
``max_prepared_transactions`` > 0: traced, with psycopg 3's span shapes, on a connection made
with a ``connection_factory`` that is a Python subclass (its instances have a ``__dict__``);
a connection of the C type itself keeps working, its 2PC calls untraced."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest
from psycopg2.pool import ThreadedConnectionPool

import pitchey_trace as pt
from pitchey_trace.db import _psycopg2 as p2
from pitchey_trace.db import instrument, is_instrumented, traced_transaction, uninstrument
from pitchey_trace.db._ops import ConnState
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.integration.db import test_session16_tpc as session16
from tests.support.pgserver import PgServer, scratch_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Session 16's fixtures: a server of this module's own with prepared transactions enabled, and
# per test a schema with its `acct` table (prepared transactions a failing test left behind are
# rolled back afterwards).
tpc_server = session16.tpc_server
tpc_dsn = session16.tpc_dsn

_TPC = ("tpc_begin", "tpc_prepare", "tpc_commit", "tpc_rollback", "tpc_recover")


class Connection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A Python subclass of psycopg2's connection: its instances have a ``__dict__``."""


@pytest.fixture
def tconn(tpc_dsn: str) -> Iterator[Any]:
    c = psycopg2.connect(tpc_dsn, connection_factory=Connection)  # not autocommit
    try:
        yield instrument(c)
    finally:
        c.close()


def _xid(conn: Any) -> Any:
    return conn.xid(1, f"pt-{uuid.uuid4().hex[:12]}", "b")


def _state(conn: Any) -> ConnState:
    state = p2._state(conn)
    assert state is not None
    return state


def _run(conn: Any, sql: str, params: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(sql, params)


def _count(dsn: str) -> Any:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*), coalesce(sum(n), 0) FROM acct").fetchone()


def test_methods_are_set_on_the_instance_and_removed_again(tconn: Any) -> None:
    assert type(tconn) is Connection  # the class is not switched
    assert all(name in vars(tconn) for name in _TPC)
    assert tconn.tpc_commit.__doc__ == psycopg2.extensions.connection.tpc_commit.__doc__
    uninstrument(tconn)
    assert not any(name in vars(tconn) for name in _TPC)
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "SELECT 1")
        tconn.tpc_commit()
    assert mem.spans() == []


def test_prepare_then_commit(tconn: Any, tpc_dsn: str) -> None:
    with swallowed_errors() as internal, capture_spans() as mem, pt.span("request") as root:
        xid = _xid(tconn)
        tconn.tpc_begin(xid)
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        _run(tconn, "UPDATE acct SET n = n + 1 WHERE id = 1")
        tconn.tpc_prepare()
        with psycopg2.connect(tpc_dsn) as other:
            assert xid.gtrid in [x.gtrid for x in other.tpc_recover()]
        other.close()
        tconn.tpc_commit()
    assert internal == []
    (tx,) = mem.spans("TRANSACTION")
    assert tx["kind"] == "internal"
    assert tx["parent_span_id"] == root.span_id_hex
    assert tx["attributes"]["db.operation.name"] == "TRANSACTION"
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
    assert commit["parent_span_id"] == root.span_id_hex
    assert commit["attributes"]["db.operation.name"] == "COMMIT PREPARED"
    assert commit["attributes"]["db.query.text"] == "COMMIT PREPARED ?"
    assert commit["attributes"]["db.transaction.outcome"] == "commit"
    assert commit["attributes"]["db.system.name"] == "postgresql"
    assert commit["status"] == "unset"
    assert commit["start_time_unix_nano"] >= tx["end_time_unix_nano"]
    assert _count(tpc_dsn) == (1, 11)
    state = _state(tconn)
    assert state.tx_stack == []
    assert state.tpc is None


def test_prepare_then_rollback(tconn: Any, tpc_dsn: str) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()
        tconn.tpc_rollback()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.transaction.outcome"] == "rollback"
    assert rb["attributes"]["db.query.text"] == "ROLLBACK PREPARED ?"
    assert _count(tpc_dsn) == (0, 0)


def test_one_phase_commit_and_rollback(tconn: Any, tpc_dsn: str) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_commit()  # no prepare: a plain COMMIT
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (2, 10)")
        tconn.tpc_rollback()
    first, second = sorted(mem.spans("TRANSACTION"), key=lambda s: s["start_time_unix_nano"])
    assert first["attributes"]["db.transaction.outcome"] == "commit"
    assert first["attributes"]["db.transaction.statement_count"] == 1
    assert second["attributes"]["db.transaction.outcome"] == "rollback"
    assert "db.transaction.rollback_reason" not in second["attributes"]
    assert first["status"] == second["status"] == "unset"
    assert mem.spans("COMMIT PREPARED") == mem.spans("ROLLBACK PREPARED") == []
    assert _count(tpc_dsn) == (1, 10)


def test_prepare_of_a_failed_transaction_is_a_rollback(tconn: Any) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()  # the server answers ROLLBACK: nothing is prepared
        with pytest.raises(psycopg2.errors.UndefinedObject):
            tconn.tpc_rollback()  # psycopg2 asks for ROLLBACK PREPARED anyway
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "failed_transaction"
    assert tx["attributes"]["db.transaction.statement_count"] == 2
    assert tx["status"] == "unset"  # the error is the statement's
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.response.status_code"] == "42704"
    assert rb["status"] == "error"


def test_failing_prepare_is_a_rollback_with_its_error(pg_server: PgServer) -> None:
    """On a server without prepared transactions PREPARE TRANSACTION fails (55000)."""
    with scratch_schema(pg_server.dsn) as dsn:
        c = instrument(psycopg2.connect(dsn, connection_factory=Connection))
        try:
            with capture_spans() as mem:
                c.tpc_begin(c.xid(1, "pt-fail", "b"))
                _run(c, "SELECT 1")
                with pytest.raises(psycopg2.OperationalError) as info:
                    c.tpc_prepare()
        finally:
            c.close()
    assert info.value.pgcode == "55000"
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.response.status_code"] == "55000"
    assert tx["attributes"]["db.transaction.statement_count"] == 1
    assert tx["status"] == "error"


def test_recovery_from_another_connection(tconn: Any, tpc_dsn: str) -> None:
    xid = _xid(tconn)
    with swallowed_errors() as internal, capture_spans() as mem:
        tconn.tpc_begin(xid)
        _run(tconn, "INSERT INTO acct VALUES (5, 50)")
        tconn.tpc_prepare()
        other = instrument(psycopg2.connect(tpc_dsn, connection_factory=Connection))
        try:
            with traced_transaction(other):
                _run(other, "SELECT 1")
            with pt.span("recover") as parent:
                recovered = [x for x in other.tpc_recover() if x.gtrid == xid.gtrid]
            assert len(recovered) == 1
            other.tpc_commit(recovered[0])  # commit what tconn prepared
            with pytest.raises(psycopg2.errors.UndefinedObject):
                other.tpc_rollback(recovered[0])  # already gone: 42704
            assert _state(other).tpc is None
            assert _state(other).tx_stack == []
        finally:
            other.close()
        # tconn: psycopg2 still thinks its transaction is prepared; committing it fails.
        with pytest.raises(psycopg2.errors.UndefinedObject):
            tconn.tpc_commit()
    assert internal == []
    (tx,) = [
        s for s in mem.spans("TRANSACTION") if s["attributes"].get("db.transaction.outcome") == "prepare"
    ]
    assert tx["attributes"]["db.transaction.statement_count"] == 1
    (other_tx,) = [s for s in mem.spans("TRANSACTION") if s is not tx]
    assert other_tx["attributes"]["db.transaction.outcome"] == "commit"
    assert other_tx["attributes"]["db.transaction.statement_count"] == 1
    (rec,) = mem.spans("SELECT pg_prepared_xacts")
    assert rec["kind"] == "client"
    assert rec["parent_span_id"] == parent.span_id_hex
    assert rec["attributes"]["db.query.text"] == (
        "SELECT gid, prepared, owner, database FROM pg_prepared_xacts"
    )
    assert rec["attributes"]["db.collection.name"] == "pg_prepared_xacts"
    assert rec["attributes"]["db.response.returned_rows"] >= 1
    commits = sorted(mem.spans("COMMIT PREPARED"), key=lambda s: s["start_time_unix_nano"])
    assert [c["status"] for c in commits] == ["unset", "error"]
    assert commits[0]["attributes"]["db.transaction.outcome"] == "commit"
    assert commits[1]["attributes"]["db.response.status_code"] == "42704"
    (rb,) = mem.spans("ROLLBACK PREPARED")
    assert rb["attributes"]["db.response.status_code"] == "42704"
    assert "db.transaction.outcome" not in rb["attributes"]
    assert _count(tpc_dsn) == (1, 50)


def test_recover_counts_in_an_open_transaction_and_is_untraced_when_refused(tconn: Any) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        assert tconn.tpc_recover() == []  # a SELECT of the 2PC transaction
        tconn.tpc_prepare()
        with pytest.raises(psycopg2.ProgrammingError):
            tconn.tpc_recover()  # refused while prepared: no query, no span
        tconn.tpc_rollback()
    (rec,) = mem.spans("SELECT pg_prepared_xacts")
    assert rec["attributes"]["db.response.returned_rows"] == 0
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.statement_count"] == 1


def test_recover_failure_is_recorded(tconn: Any) -> None:
    with capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        with pytest.raises(psycopg2.errors.DivisionByZero):
            _run(tconn, "SELECT 1 / 0")
        with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
            tconn.tpc_recover()
        tconn.tpc_rollback()
    (rec,) = mem.spans("SELECT pg_prepared_xacts")
    assert rec["status"] == "error"
    assert rec["attributes"]["db.response.status_code"] == "25P02"
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.statement_count"] == 2


def test_abandoned_transaction_span_ends(tpc_dsn: str) -> None:
    with capture_spans() as mem:
        c = instrument(psycopg2.connect(tpc_dsn, connection_factory=Connection))
        c.tpc_begin(_xid(c))
        _run(c, "SELECT 1")
        c.close()
        del c
        gc.collect()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "abandoned"
    assert tx["attributes"]["db.transaction.statement_count"] == 1


def test_a_refused_second_tpc_begin_leaves_the_open_transaction_traced(tconn: Any) -> None:
    # psycopg2 refuses a tpc_begin while the 2PC transaction goes on; that transaction is
    # then prepared and committed: its span says so (it used to end as "abandoned", with an
    # error span for the refused call).
    with capture_spans() as mem:
        xid = _xid(tconn)
        tconn.tpc_begin(xid)
        tconn.cursor().execute("SELECT 1")
        with pytest.raises(psycopg2.ProgrammingError):
            tconn.tpc_begin(_xid(tconn))  # psycopg2: already in a transaction
        tconn.tpc_prepare()
        tconn.tpc_commit()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["status"] == "unset"
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert "db.transaction.rollback_reason" not in tx["attributes"]
    assert [s["name"] for s in mem.spans("COMMIT PREPARED")] == ["COMMIT PREPARED"]
    assert _state(tconn).tx_stack == []


def test_tpc_begin_refused_is_recorded(tconn: Any) -> None:
    tconn.autocommit = True
    with capture_spans() as mem, pytest.raises(psycopg2.ProgrammingError):
        tconn.tpc_begin(_xid(tconn))
    (tx,) = mem.spans("TRANSACTION")
    assert tx["status"] == "error"
    assert _state(tconn).tx_stack == []


def test_same_spans_as_psycopg3(tpc_dsn: str) -> None:
    """The same 2PC flow through both drivers: identical span names, kinds, statuses and
    attributes (ids and times aside)."""

    def shape(spans: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(s["name"], s["kind"], s["status"], s["attributes"]) for s in spans]

    def flow(conn: Any, execute: Any, row: int) -> None:
        with pt.span("request"):
            conn.tpc_begin(conn.xid(1, f"pt-same-{row}", "b"))
            execute("INSERT INTO acct VALUES (%s, 1)", (row,))
            conn.tpc_prepare()
            conn.tpc_commit()
            conn.tpc_begin(conn.xid(1, f"pt-same-{row + 1}", "b"))
            conn.tpc_rollback()
            assert [x for x in conn.tpc_recover() if x.gtrid.startswith("pt-same-")] == []
            with pytest.raises((psycopg.errors.UndefinedObject, psycopg2.errors.UndefinedObject)):
                conn.tpc_rollback(conn.xid(1, "pt-missing", "b"))

    c3 = instrument(psycopg.connect(tpc_dsn))
    try:
        with capture_spans() as mem3:
            flow(c3, c3.execute, 1)
    finally:
        c3.close()
    c2 = instrument(psycopg2.connect(tpc_dsn, connection_factory=Connection))
    try:
        with capture_spans() as mem2:
            flow(c2, lambda q, p: _run(c2, q, p), 3)
    finally:
        c2.close()
    three, two = shape(mem3.spans()), shape(mem2.spans())
    for spans in (three, two):
        assert [s[0] for s in spans] == [
            "INSERT acct",
            "TRANSACTION",
            "COMMIT PREPARED",
            "TRANSACTION",
            "SELECT pg_prepared_xacts",
            "ROLLBACK PREPARED",
            "request",
        ]
    assert two == three


def test_connection_of_the_c_type_works_untraced(tpc_dsn: str) -> None:
    """``psycopg2.connect(dsn)`` makes an instance of the C type: no ``__dict__``, and its
    class cannot be switched. Its statements are traced; its 2PC calls run untraced."""
    c = instrument(psycopg2.connect(tpc_dsn))
    try:
        assert type(c) is psycopg2.extensions.connection
        assert is_instrumented(c)
        with swallowed_errors() as internal, capture_spans() as mem:
            c.tpc_begin(_xid(c))
            _run(c, "INSERT INTO acct VALUES (9, 90)")
            c.tpc_prepare()
            c.tpc_commit()
        assert internal == []
        assert [s["name"] for s in mem.spans()] == ["INSERT acct"]
        assert _count(tpc_dsn) == (1, 90)
        with pytest.raises((AttributeError, TypeError)):
            c.tpc_begin = None  # what rules out wrapping it on the instance
        with pytest.raises(TypeError):
            c.__class__ = Connection  # and switching its class
    finally:
        c.close()


def test_untraced_when_not_configured_or_suppressed(tconn: Any, tpc_dsn: str) -> None:
    with capture_spans() as mem, pt.suppress_tracing():
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()
        tconn.tpc_commit()
        assert tconn.tpc_recover() == []
    assert mem.spans() == []
    assert _state(tconn).tx_stack == []
    tconn.tpc_begin(_xid(tconn))  # (no capture_spans: nothing configured)
    _run(tconn, "INSERT INTO acct VALUES (2, 10)")
    tconn.tpc_prepare()
    tconn.tpc_commit()
    assert _count(tpc_dsn) == (2, 20)
    assert _state(tconn).tx_stack == []


def test_tracing_failure_never_reaches_the_application(
    tconn: Any,
    tpc_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: ConnState, nested: bool, name: str | None) -> Any:
        raise RuntimeError("tracing bug")

    monkeypatch.setattr(ConnState, "transaction_span", broken)
    with swallowed_errors() as internal, capture_spans() as mem:
        tconn.tpc_begin(_xid(tconn))
        _run(tconn, "INSERT INTO acct VALUES (1, 10)")
        tconn.tpc_prepare()
        tconn.tpc_commit()
    assert _count(tpc_dsn) == (1, 10)
    assert [kind for kind, _ in internal] == ["db.tpc"]
    assert isinstance(internal[0][1], RuntimeError)
    assert mem.spans("TRANSACTION") == []
    assert [s["name"] for s in mem.spans()] == ["INSERT acct", "COMMIT PREPARED"]


def test_pool_connections_with_the_factory(tpc_dsn: str) -> None:
    """psycopg2's pools pass ``connection_factory`` on to ``connect``."""
    pool = ThreadedConnectionPool(1, 2, tpc_dsn, connection_factory=Connection)
    try:
        c = instrument(pool.getconn())
        with capture_spans() as mem:
            c.tpc_begin(_xid(c))
            _run(c, "INSERT INTO acct VALUES (4, 40)")
            c.tpc_prepare()
            c.tpc_commit()
        pool.putconn(c)
    finally:
        pool.closeall()
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert [s["name"] for s in mem.spans()] == ["INSERT acct", "TRANSACTION", "COMMIT PREPARED"]
    assert _count(tpc_dsn) == (1, 40)


def test_asynchronous_connection_refuses_and_is_recorded(tpc_dsn: str) -> None:
    c = psycopg2.connect(tpc_dsn, async_=True, connection_factory=Connection)
    try:
        psycopg2.extras.wait_select(c)
        instrument(c)
        with capture_spans() as mem:
            with pytest.raises(psycopg2.ProgrammingError):
                c.tpc_begin(_xid(c))
            with pytest.raises(psycopg2.ProgrammingError):
                c.tpc_recover()  # refused before any query: no span
        (tx,) = mem.spans("TRANSACTION")
        assert tx["status"] == "error"
        assert [s["name"] for s in mem.spans()] == ["TRANSACTION"]
        assert _state(c).tx_stack == []
    finally:
        c.close()
