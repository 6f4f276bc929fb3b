"""Transaction blocks whose transaction ends behind their back, against a real server.

- psycopg2's ``set_isolation_level()``, ``set_client_encoding()`` (a new encoding), ``reset()``
  and ``close()`` roll back from C, with no ``rollback()`` call: a ``traced_transaction`` block
  around them records ``rollback`` with the method's name (it used to say ``commit``).
- psycopg 3's ``conn.close()`` inside ``conn.transaction()``: ``rollback``, reason ``close``.
- A psycopg2 connection garbage-collected with a block still open (entered, never exited):
  its span ends as ``rollback``, reason ``connection_garbage_collected`` (it used to be lost).
- OpenTelemetry's ``instrument_connection()`` after ``instrument(conn)`` replaces pitchey's
  cursor factory: said and counted; ``instrument(conn)`` again traces the connection anew.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import pytest
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

import pitchey_trace as pt
from pitchey_trace.db import instrument, traced_transaction
from pitchey_trace.testing import capture_spans
from tests.integration.db import test_session20_psycopg2_rollbacks as session20

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

P2Connection = session20.P2Connection
connect = session20.connect  # (instrumented connections of P2Connection, closed after the test)
_insert = session20._insert
_ids = session20._ids


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
    return pg_dsn


def _outcome(span: dict[str, Any]) -> tuple[Any, Any]:
    attrs = span["attributes"]
    return attrs.get("db.transaction.outcome"), attrs.get("db.transaction.rollback_reason")


CAUSES: dict[str, Callable[[Any], Any]] = {
    "set_isolation_level": lambda c: c.set_isolation_level(ext.ISOLATION_LEVEL_SERIALIZABLE),
    "set_client_encoding": lambda c: c.set_client_encoding("LATIN1"),
    "reset": lambda c: c.reset(),
}


@pytest.mark.parametrize("cause", list(CAUSES))
def test_psycopg2_block_records_a_silent_rollback(cause: str, connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        with traced_transaction(c):
            _insert(c, 1)
            CAUSES[cause](c)  # rolls back from C: row 1 is gone
            _insert(c, 2)  # a new transaction, which the block's end commits
    assert _ids(dsn) == [2]
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", cause)
    assert tx["status"] == "unset"
    assert tx["attributes"]["db.transaction.statement_count"] == 3  # (the ROLLBACK span too)
    (rollback,) = mem.spans("ROLLBACK")
    assert rollback["parent_span_id"] == tx["span_id"]


def test_psycopg2_block_records_close(connect: Callable[..., Any], dsn: str) -> None:
    c = connect()
    with capture_spans() as mem:
        with pytest.raises(psycopg2.InterfaceError), traced_transaction(c):
            _insert(c, 1)
            c.close()
    assert _ids(dsn) == []
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", "close")


def test_psycopg2_nested_blocks_after_a_silent_rollback(connect: Callable[..., Any], dsn: str) -> None:
    # Both blocks record the rollback. What they do at their end is unchanged: the savepoint
    # went with the transaction, so the inner block's RELEASE fails (as the same statements
    # written by hand would), and the outer block rolls back what ran after.
    c = connect()
    with capture_spans() as mem:
        with pytest.raises(psycopg2.errors.InvalidSavepointSpecification), traced_transaction(c):
            _insert(c, 1)
            with traced_transaction(c):
                _insert(c, 2)
                c.set_isolation_level(ext.ISOLATION_LEVEL_READ_COMMITTED)
                _insert(c, 3)
    assert _ids(dsn) == []
    (savepoint,) = mem.spans("SAVEPOINT")
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(savepoint) == ("rollback", "set_isolation_level")
    assert _outcome(tx) == ("rollback", "set_isolation_level")
    assert savepoint["attributes"]["db.response.status_code"] == "3B001"  # (the failed RELEASE)


def test_psycopg2_block_after_a_silent_rollback_commits(connect: Callable[..., Any], dsn: str) -> None:
    # Only the blocks open at the time are told: the next one commits as usual.
    c = connect()
    with capture_spans() as mem:
        with traced_transaction(c):
            _insert(c, 1)
            c.reset()
        with traced_transaction(c):
            _insert(c, 2)
    assert _ids(dsn) == [2]
    first, second = mem.spans("TRANSACTION")
    assert _outcome(first) == ("rollback", "reset")
    assert _outcome(second) == ("commit", None)


def test_psycopg2_connection_collected_with_a_block_open(dsn: str) -> None:
    with capture_spans() as mem:
        c = instrument(psycopg2.connect(dsn, connection_factory=P2Connection))
        block = traced_transaction(c)
        block.__enter__()  # (never exited: an abandoned block)
        _insert(c, 1)
        del block, c
        gc.collect()
    assert _ids(dsn) == []  # the server rolled it back when the session ended
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", "connection_garbage_collected")
    assert tx["attributes"]["db.transaction.statement_count"] == 1
    (insert,) = mem.spans("INSERT ledger")
    assert insert["end_time_unix_nano"] <= tx["end_time_unix_nano"]


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # (psycopg's, for the collected one)
def test_psycopg_connection_collected_with_a_block_open(dsn: str) -> None:
    with capture_spans() as mem:
        c = instrument(psycopg.connect(dsn))
        block = c.transaction()
        block.__enter__()  # (never exited: an abandoned block)
        c.execute("INSERT INTO ledger VALUES (1)")
        del block, c
        gc.collect()
    assert _ids(dsn) == []
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", "connection_garbage_collected")
    assert tx["attributes"]["db.transaction.statement_count"] == 1


def test_psycopg_block_records_close(dsn: str) -> None:
    with capture_spans() as mem:
        c = instrument(psycopg.connect(dsn))
        with c.transaction():
            c.execute("INSERT INTO ledger VALUES (1)")
            c.close()
    assert _ids(dsn) == []
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", "close")
    assert tx["status"] == "unset"


async def _async_close(dsn: str) -> None:
    c = await psycopg.AsyncConnection.connect(dsn)
    instrument(c)
    async with c.transaction():
        await c.execute("INSERT INTO ledger VALUES (1)")
        await c.close()


def test_async_psycopg_block_records_close(dsn: str) -> None:
    import asyncio

    with capture_spans() as mem:
        asyncio.run(_async_close(dsn))
    assert _ids(dsn) == []
    (tx,) = mem.spans("TRANSACTION")
    assert _outcome(tx) == ("rollback", "close")


def test_psycopg_commit_keeps_no_close_reason(dsn: str) -> None:
    with capture_spans() as mem:
        with psycopg.connect(dsn) as c:
            instrument(c)
            with c.transaction():
                c.execute("INSERT INTO ledger VALUES (1)")
            with c.transaction(force_rollback=True):
                c.execute("INSERT INTO ledger VALUES (2)")
    assert _ids(dsn) == [1]
    first, second = mem.spans("TRANSACTION")
    assert _outcome(first) == ("commit", None)
    assert _outcome(second) == ("rollback", "force_rollback")


def test_psycopg2_otel_instrument_connection_after_instrument(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # psycopg2.connect(dsn) with no cursor_factory: OpenTelemetry takes pitchey's (falsy)
    # stand-in for an unset factory as unset and replaces it with its own class.
    otel_psycopg2 = Psycopg2Instrumentor()
    c = instrument(psycopg2.connect(dsn))
    try:
        with capture_spans() as mem, caplog.at_level(logging.WARNING, logger="pitchey_trace"):
            otel_psycopg2.instrument_connection(c)
            with c.cursor() as cur:
                cur.execute("SELECT 1")  # pitchey no longer sees it
            assert pt.stats().get("misuse.otel.duplicate_instrumentation.psycopg2", 0) == 0
            with traced_transaction(c):
                pass
            assert pt.stats()["misuse.otel.duplicate_instrumentation.psycopg2"] == 1
            instrument(c)  # traces it anew, on top of OpenTelemetry's class
            with c.cursor() as cur:
                cur.execute("SELECT 2")
        assert "instrument_connection() replaced the cursor factory" in caplog.text
        assert [s["name"] for s in mem.spans() if s["name"] == "SELECT"] == ["SELECT"]
        (select,) = mem.spans("SELECT")
        assert select["attributes"]["db.query.text"] == "SELECT ?"
    finally:
        otel_psycopg2.uninstrument_connection(c)
        c.close()


def test_psycopg_otel_instrument_connection_after_instrument(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    otel = PsycopgInstrumentor()
    c = instrument(psycopg.connect(dsn, autocommit=True))
    try:
        with capture_spans() as mem, caplog.at_level(logging.WARNING, logger="pitchey_trace"):
            otel.instrument_connection(c)
            c.execute("SELECT 1")  # OpenTelemetry's cursor only
            with c.transaction():
                pass
            assert pt.stats()["misuse.otel.duplicate_instrumentation.psycopg"] == 1
            instrument(c)
            c.execute("SELECT 2")
        assert "instrument_connection() replaced the cursor factory" in caplog.text
        (select,) = mem.spans("SELECT")
        assert select["attributes"]["db.query.text"] == "SELECT ?"
    finally:
        otel.uninstrument_connection(c)
        c.close()


def test_psycopg2_otel_on_a_subclass_connection_keeps_pitcheys_spans(connect: Callable[..., Any]) -> None:
    # A connection with a __dict__ has pitchey's cursor() wrapper, which switches whatever class
    # the factory makes (OpenTelemetry's too) to a traced one: still traced, nothing to say.
    otel_psycopg2 = Psycopg2Instrumentor()
    c = connect()
    try:
        with capture_spans() as mem:
            otel_psycopg2.instrument_connection(c)
            with traced_transaction(c), c.cursor() as cur:
                cur.execute("SELECT 1")
            assert "misuse.otel.duplicate_instrumentation.psycopg2" not in pt.stats()
        assert [s["name"] for s in mem.spans()] == ["SELECT", "TRANSACTION"]
    finally:
        otel_psycopg2.uninstrument_connection(c)
