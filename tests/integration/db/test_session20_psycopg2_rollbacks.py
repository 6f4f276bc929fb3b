"""psycopg2's silent rollbacks against a real server.

psycopg2's C code ends a transaction in progress without ``rollback()``:
``set_isolation_level()`` and ``set_client_encoding()`` (a new encoding) send ROLLBACK first,
``reset()`` sends ABORT, and ``close()`` ends the session, so the server rolls back. On an
instrumented connection with a ``__dict__`` each is a ``ROLLBACK`` span like ``rollback()``'s,
``db.transaction.rollback_reason`` naming the method. Each case is checked on the server: the
transaction's insert is gone. The ``autocommit`` / ``set_session`` setters refuse inside a
transaction: it goes on, no span."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import pytest

from pitchey_trace.db import instrument, uninstrument
from pitchey_trace.db._psycopg2 import connection as AutoConnection
from pitchey_trace.testing import capture_spans
from tests.integration.db import test_session16_tpc as session16

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class P2Connection(ext.connection):  # type: ignore[misc]
    """A Python subclass of psycopg2's connection: its instances have a ``__dict__``."""


# A server with prepared transactions enabled (the shared one has 0), for every test here.
tpc_server = session16.tpc_server
tpc_dsn = session16.tpc_dsn


@pytest.fixture
def dsn(tpc_dsn: str) -> str:
    with psycopg.connect(tpc_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
    return tpc_dsn


@pytest.fixture
def connect(dsn: str) -> Iterator[Callable[..., Any]]:
    """Instrumented connections of a Python subclass, closed after the test."""
    made: list[Any] = []

    def make(factory: Any = P2Connection) -> Any:
        c = psycopg2.connect(dsn, connection_factory=factory)
        made.append(c)
        return instrument(c)

    yield make
    for c in made:
        type(c).close(c)  # (the class's own: an open transaction ends with the session)


def _insert(conn: Any, value: int) -> None:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO ledger VALUES (%s)", (value,))


def _ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as c:
        return [int(row[0]) for row in c.execute("SELECT id FROM ledger ORDER BY id")]


def _rollbacks(mem: Any) -> list[dict[str, Any]]:
    return [s for s in mem.spans() if s["name"] == "ROLLBACK"]


CAUSES: dict[str, Callable[[Any], Any]] = {
    "set_isolation_level": lambda c: c.set_isolation_level(ext.ISOLATION_LEVEL_SERIALIZABLE),
    "set_client_encoding": lambda c: c.set_client_encoding("LATIN1"),
    "reset": lambda c: c.reset(),
    "close": lambda c: c.close(),
}


@pytest.mark.parametrize("cause", list(CAUSES))
def test_silent_rollback_is_a_rollback_span(cause: str, connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        _insert(c, 1)
        CAUSES[cause](c)
        if not c.closed:
            assert c.status == ext.STATUS_READY
            c.commit()  # nothing left to commit: no span
    assert _ids(dsn) == []  # rolled back on the server
    (span,) = _rollbacks(mem)
    attrs = span["attributes"]
    assert attrs["db.transaction.outcome"] == "rollback"
    assert attrs["db.transaction.rollback_reason"] == cause
    assert attrs["db.query.text"] == "ROLLBACK"
    assert span["kind"] == "client"
    assert span["status"] == "unset"
    (insert,) = mem.spans("INSERT ledger")
    assert insert["end_time_unix_nano"] <= span["start_time_unix_nano"] <= span["end_time_unix_nano"]
    assert not [s for s in mem.spans() if s["name"] == "COMMIT"]


def test_silent_rollback_span_has_rollbacks_attributes(connect: Callable[..., Any]) -> None:
    c = connect()
    with capture_spans() as mem:
        _insert(c, 1)
        c.rollback()
        _insert(c, 2)
        c.set_isolation_level(ext.ISOLATION_LEVEL_REPEATABLE_READ)
    explicit, implicit = _rollbacks(mem)
    assert explicit["attributes"]["db.transaction.outcome"] == "rollback"
    assert "db.transaction.rollback_reason" not in explicit["attributes"]
    expected = {**explicit["attributes"], "db.transaction.rollback_reason": "set_isolation_level"}
    assert implicit["attributes"] == expected
    assert implicit["parent_span_id"] == explicit["parent_span_id"]


@pytest.mark.parametrize("cause", list(CAUSES))
def test_no_transaction_no_span(cause: str, connect: Callable[..., Any]) -> None:
    c = connect()
    with capture_spans() as mem:
        CAUSES[cause](c)
    assert mem.spans() == []


def test_calls_that_end_nothing_make_no_span(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        _insert(c, 1)
        c.set_client_encoding("utf-8")  # the current encoding: psycopg2 sends nothing
        with pytest.raises(ValueError, match="between 0 and 4"):
            c.set_isolation_level(7)  # refused before the ROLLBACK
        with pytest.raises(TypeError):
            c.set_client_encoding()
        for setter in (
            lambda: setattr(c, "autocommit", True),
            lambda: setattr(c, "readonly", True),
            lambda: c.set_session(isolation_level="SERIALIZABLE"),
        ):
            with pytest.raises(psycopg2.ProgrammingError, match="inside a transaction"):
                setter()
        assert c.status == ext.STATUS_BEGIN
        c.commit()
    assert _ids(dsn) == [1]  # the transaction went on to its commit
    assert [s["name"] for s in mem.spans()] == ["INSERT ledger", "COMMIT"]


def test_failing_set_client_encoding_after_its_rollback(connect: Callable[..., Any], dsn: str) -> None:
    # psycopg2 rolls back first, then the server refuses the encoding: the error is raised
    # unchanged and recorded, and the transaction has ended all the same.
    c = connect()
    with capture_spans() as mem:
        _insert(c, 1)
        with pytest.raises(psycopg2.errors.InvalidParameterValue):
            c.set_client_encoding("NO_SUCH_ENCODING")
        assert c.status == ext.STATUS_READY
    assert _ids(dsn) == []
    (span,) = _rollbacks(mem)
    assert span["status"] == "error"
    assert span["attributes"]["db.transaction.outcome"] == "rollback"
    assert span["attributes"]["db.transaction.rollback_reason"] == "set_client_encoding"
    assert span["attributes"]["db.response.status_code"] == "22023"


def test_close_rolls_back_an_applications_begin_in_autocommit(connect: Callable[..., Any], dsn: str) -> None:
    # psycopg2's own status says READY (it did not begin this transaction); libpq's says
    # INTRANS, and the server rolls it back when the session ends.
    c = connect()
    c.autocommit = True
    with capture_spans() as mem:
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO ledger VALUES (1)")
        assert c.status == ext.STATUS_READY
        c.close()
    assert _ids(dsn) == []
    (span,) = _rollbacks(mem)
    assert span["attributes"]["db.transaction.rollback_reason"] == "close"


def test_close_of_a_failed_transaction(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        _insert(c, 1)
        with pytest.raises(psycopg2.errors.DivisionByZero), c.cursor() as cur:
            cur.execute("SELECT 1 / 0")
        c.close()
    assert _ids(dsn) == []
    (span,) = _rollbacks(mem)
    assert span["attributes"]["db.transaction.outcome"] == "rollback"
    assert span["attributes"]["db.transaction.rollback_reason"] == "close"


def test_auto_instrumentation_connection_class(connect: Callable[..., Any], dsn: str) -> None:
    # What auto-instrumentation connects with when the program names no connection_factory.
    c = connect(AutoConnection)
    with capture_spans() as mem:
        _insert(c, 1)
        c.set_isolation_level(ext.ISOLATION_LEVEL_AUTOCOMMIT)
        _insert(c, 2)  # autocommit: kept
        c.close()
    assert _ids(dsn) == [2]
    (span,) = _rollbacks(mem)
    assert span["attributes"]["db.transaction.rollback_reason"] == "set_isolation_level"


def test_two_phase_isolation_change_rolls_back_the_work_and_the_xid_goes_on(
    connect: Callable[..., Any], dsn: str
) -> None:
    # psycopg2 rolls the work back and keeps the xid: the next statements begin a fresh
    # transaction that tpc_prepare() prepares. Its TRANSACTION span goes on; commit() is still
    # refused (no COMMIT span).
    c = connect()
    with capture_spans() as mem:
        c.tpc_begin(c.xid(1, "session20", "iso"))
        _insert(c, 1)
        c.set_isolation_level(ext.ISOLATION_LEVEL_SERIALIZABLE)
        _insert(c, 2)
        with pytest.raises(psycopg2.ProgrammingError, match="two-phase"):
            c.commit()
        c.tpc_prepare()
        c.tpc_commit()
    assert _ids(dsn) == [2]
    (span,) = _rollbacks(mem)
    assert span["attributes"]["db.transaction.rollback_reason"] == "set_isolation_level"
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "prepare"
    assert [s["name"] for s in mem.spans() if s["name"].startswith("COMMIT")] == ["COMMIT PREPARED"]


def test_close_during_two_phase_transaction_ends_its_span(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        c.tpc_begin(c.xid(1, "session20", "close"))
        _insert(c, 1)
        c.close()
    assert _ids(dsn) == []
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "abandoned"
    assert _rollbacks(mem) == []  # one record of the end: the transaction's span


def test_close_after_prepare_keeps_the_prepared_transaction(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    xid = c.xid(1, "session20", "prepared")
    with capture_spans() as mem:
        c.tpc_begin(xid)
        _insert(c, 1)
        c.tpc_prepare()
        c.close()  # a prepared transaction outlives its session: nothing rolled back
    other = psycopg2.connect(dsn)
    try:
        other.tpc_commit(xid)
    finally:
        other.close()
    assert _ids(dsn) == [1]
    assert _rollbacks(mem) == []


def test_uninstrument_restores_the_methods(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    uninstrument(c)
    assert not {"set_isolation_level", "set_client_encoding", "reset", "close"} & set(vars(c))
    with capture_spans() as mem:
        _insert(c, 1)
        c.close()
    assert _ids(dsn) == []
    assert [s["name"] for s in mem.spans()] == []


def test_lost_connection_error_is_recorded_and_raised_unchanged(
    connect: Callable[..., Any], dsn: str
) -> None:
    # The session is gone (terminated on the server): psycopg2's ROLLBACK fails, the error is
    # psycopg2's, unchanged, and the span has it, as a failing rollback() would.
    c = connect()
    _insert(c, 1)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (c.get_backend_pid(),))
    with capture_spans() as mem:
        with pytest.raises(psycopg2.OperationalError):
            c.set_isolation_level(ext.ISOLATION_LEVEL_SERIALIZABLE)
    assert c.closed
    assert _ids(dsn) == []
    (span,) = _rollbacks(mem)
    assert span["status"] == "error"
    assert span["attributes"]["db.transaction.outcome"] == "rollback"
    assert span["attributes"]["db.transaction.rollback_reason"] == "set_isolation_level"
