"""psycopg2's ``with conn:`` block and ``conn.reset()`` against a real server.

``with conn:`` ends the transaction through ``self.commit()`` / ``self.rollback()`` (psycopg2's
C ``__exit__`` looks them up on the instance), so on a connection of a Python subclass it
makes the same ``COMMIT`` / ``ROLLBACK`` spans as direct calls; the C type itself stays
untraced (nothing can be set on it). ``reset()`` aborts a two-phase transaction in C: its span
ends there, and later ``commit()`` calls are spans again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from pitchey_trace.db import instrument, uninstrument
from pitchey_trace.testing import capture_spans

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class P2Connection(psycopg2.extensions.connection):  # type: ignore[misc]
    """A Python subclass of psycopg2's connection: its instances have a ``__dict__``."""


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        setup.execute("CREATE TABLE parent (id int PRIMARY KEY)")
        setup.execute("CREATE TABLE child (pid int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    return pg_dsn


@pytest.fixture
def p2conn(dsn: str) -> Iterator[Any]:
    c = psycopg2.connect(dsn, connection_factory=P2Connection)
    try:
        yield instrument(c)
    finally:
        c.close()


def _run(conn: Any, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)


def _ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as c:
        return [int(row[0]) for row in c.execute("SELECT id FROM ledger ORDER BY id")]


def _ends(mem: Any) -> list[tuple[str, str, Any, Any]]:
    """(name, status, outcome, SQLSTATE) of each COMMIT / ROLLBACK span, in order."""
    return [
        (
            s["name"],
            s["status"],
            s["attributes"].get("db.transaction.outcome"),
            s["attributes"].get("db.response.status_code"),
        )
        for s in mem.spans()
        if s["name"] in ("COMMIT", "ROLLBACK")
    ]


def test_with_conn_block_on_subclass_makes_commit_and_rollback_spans(p2conn: Any, dsn: str) -> None:
    c = p2conn
    with capture_spans() as mem:
        with c:
            _run(c, "INSERT INTO ledger VALUES (1)")
        with pytest.raises(KeyError), c:
            _run(c, "INSERT INTO ledger VALUES (2)")
            raise KeyError("app")
        with pytest.raises(psycopg2.errors.ForeignKeyViolation) as info, c:
            _run(c, "INSERT INTO child VALUES (9)")  # checked at COMMIT
        assert info.value.pgcode == "23503"
        with pytest.raises(psycopg2.errors.DivisionByZero), c:
            _run(c, "SELECT 1 / 0")
        with c:  # nothing sent inside: psycopg2 sends no COMMIT
            pass
        c.autocommit = True
        with c:  # psycopg2 >= 2.9 begins a transaction here even in autocommit mode
            _run(c, "INSERT INTO ledger VALUES (3)")
    assert type(c) is P2Connection
    assert c.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert _ids(dsn) == [1, 3]
    assert _ends(mem) == [
        ("COMMIT", "unset", "commit", None),
        ("ROLLBACK", "unset", "rollback", None),
        ("COMMIT", "error", "rollback", "23503"),
        ("ROLLBACK", "unset", "rollback", None),
        ("COMMIT", "unset", "commit", None),
    ]
    insert = next(s for s in mem.spans() if s["name"] == "INSERT ledger")
    commit = next(s for s in mem.spans() if s["name"] == "COMMIT")
    assert insert["end_time_unix_nano"] <= commit["start_time_unix_nano"]


def test_with_conn_block_on_the_c_type_still_commits_untraced(dsn: str) -> None:
    # The C type: no __dict__, so commit()/rollback() cannot be wrapped (documented limit).
    c = psycopg2.connect(dsn)
    try:
        instrument(c)
        with capture_spans() as mem:
            with c:
                _run(c, "INSERT INTO ledger VALUES (1)")
    finally:
        c.close()
    assert _ids(dsn) == [1]
    assert [s["name"] for s in mem.spans()] == ["INSERT ledger"]


def test_reset_during_two_phase_transaction_ends_its_span(p2conn: Any, dsn: str) -> None:
    # psycopg2's reset() aborts the 2PC transaction in C; the span must not stay open and keep
    # later commit() calls untraced (they were taken for refused 2PC-time calls).
    c = p2conn
    with capture_spans() as mem:
        c.tpc_begin(c.xid(1, "session19", "reset"))
        _run(c, "INSERT INTO ledger VALUES (1)")
        c.reset()
        _run(c, "INSERT INTO ledger VALUES (2)")
        c.commit()
    assert _ids(dsn) == [2]
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    assert tx["attributes"]["db.transaction.rollback_reason"] == "abandoned"
    assert _ends(mem) == [("COMMIT", "unset", "commit", None)]
    uninstrument(c)
    assert "reset" not in vars(c)
    c.reset()  # the class's own again


def test_reset_keeps_the_drivers_errors(p2conn: Any) -> None:
    c = p2conn
    c.close()
    with pytest.raises(psycopg2.InterfaceError):
        c.reset()
