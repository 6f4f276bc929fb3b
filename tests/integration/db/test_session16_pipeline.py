"""psycopg 3 pipeline mode against a real server: a statement's error arrives after its
execute() returned, yet its span carries it; statements the server skipped after it are
``pipeline_aborted``, not errors; no span outlives the pipeline block (broken connection,
cancelled task, an error in the block, a pipeline that never syncs)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace.db import _pipeline, instrument, traced_query, traced_transaction
from pitchey_trace.testing import capture_spans, swallowed_errors

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


@pytest.fixture
def items(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL CHECK (n > 0))")
    conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
    return instrument(conn)


def _events(span: dict[str, Any]) -> list[str]:
    return [e["name"] for e in span.get("events", [])]


def _by_text(mem: Any, name: str) -> list[dict[str, Any]]:
    return sorted(mem.spans(name), key=lambda s: s["start_time_unix_nano"])


def test_failing_statement_carries_its_error_and_later_ones_are_aborted(items: Conn) -> None:
    with swallowed_errors() as internal, capture_spans() as mem, pt.span("request") as root:
        with pytest.raises(errors.UniqueViolation), items.pipeline():
            items.execute("INSERT INTO items VALUES (1, 1)")
            items.execute("INSERT INTO items VALUES (1, 2)")  # duplicate: fails at the sync
            items.execute("INSERT INTO items VALUES (2, 2)")  # skipped by the server
            items.execute("SELECT * FROM items")  # skipped
    assert internal == []
    # psycopg reads results whenever they are there: the error may be raised by a later
    # execute() of the block (which then stops), or at its end. Either way:
    ok, failed, *skipped = _by_text(mem, "INSERT items")
    selects = mem.spans("SELECT items")
    for span in (ok, failed, *skipped, *selects):
        assert span["parent_span_id"] == root.span_id_hex
    assert ok["status"] == "unset"
    assert ok["attributes"]["db.response.affected_rows"] == 1
    assert failed["status"] == "error"
    assert failed["attributes"]["db.response.status_code"] == "23505"
    assert failed["attributes"]["error.type"] == "23505"
    (exc_event,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert exc_event["attributes"]["exception.type"].endswith("UniqueViolation")
    for span in (*skipped, *selects):  # the statement whose execute() raised it is not blamed
        assert span["status"] == "unset"
        assert _events(span) == ["pipeline_aborted"]
        assert "db.response.status_code" not in span["attributes"]
        assert "error.type" not in span["attributes"]
    # Still a working connection afterwards (and the plain path is unchanged).
    assert items.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_successful_pipeline_records_rows_and_ends_at_the_result(items: Conn) -> None:
    with capture_spans() as mem, items.pipeline() as p:
        items.execute("INSERT INTO items VALUES (1, 1), (2, 2)")
        cur = items.execute("SELECT * FROM items")
        p.sync()
        assert len(cur.fetchall()) == 2
    (ins,) = mem.spans("INSERT items")
    (sel,) = mem.spans("SELECT items")
    assert ins["attributes"]["db.response.affected_rows"] == 2
    assert sel["attributes"]["db.response.returned_rows"] == 2
    assert ins["status"] == sel["status"] == "unset"
    assert _events(ins) == _events(sel) == []


def test_error_raised_by_a_later_execute_is_not_that_statements(items: Conn) -> None:
    """psycopg raises an earlier statement's error from whichever call processes its result."""
    with capture_spans() as mem, items.pipeline() as p:
        items.execute("INSERT INTO items VALUES (1, 0)")  # check violation, raised later
        with pytest.raises(errors.CheckViolation):
            p.sync()
        items.execute("INSERT INTO items VALUES (3, 3)")
    first, second = _by_text(mem, "INSERT items")
    assert first["attributes"]["db.response.status_code"] == "23514"
    assert second["status"] == "unset"
    assert _events(second) == []


def test_executemany_riding_the_pipeline(items: Conn) -> None:
    with capture_spans() as mem, pytest.raises(errors.CheckViolation), items.pipeline():
        items.cursor().executemany("INSERT INTO items VALUES (%s, %s)", [(1, 1), (2, 0), (3, 3)])
        items.execute("SELECT 1")
    (many,) = mem.spans("INSERT items")
    assert many["attributes"]["db.operation.batch.size"] == 3
    assert many["attributes"]["db.response.status_code"] == "23514"
    # psycopg may read the failing result while executemany still sends (it then raises
    # there, and the SELECT never runs): either way, no other span has the error.
    for sel in mem.spans("SELECT"):
        assert _events(sel) == ["pipeline_aborted"]


def test_prepare_error_is_the_prepared_statements_own(items: Conn) -> None:
    with capture_spans() as mem, pytest.raises(errors.UndefinedTable), items.pipeline():
        items.execute("SELECT * FROM missing_table", prepare=True)
        items.execute("SELECT 1")
    (bad,) = mem.spans("SELECT missing_table")
    assert bad["attributes"]["db.response.status_code"] == "42P01"
    for after in mem.spans("SELECT"):  # (absent when psycopg raised before it ran)
        assert _events(after) == ["pipeline_aborted"]


def test_client_side_error_ends_at_once(items: Conn) -> None:
    with capture_spans() as mem, items.pipeline():
        with pytest.raises(psycopg.ProgrammingError):
            items.execute("SELECT %s, %s", (1,))  # wrong parameter count: nothing queued
        items.execute("SELECT 2")
    (bad,) = [s for s in mem.spans("SELECT") if s["status"] == "error"]
    assert bad["attributes"]["error.type"].endswith("ProgrammingError")
    assert len(mem.spans("SELECT")) == 2


def test_error_in_the_block_still_resolves_the_statements(items: Conn) -> None:
    with capture_spans() as mem, pytest.raises(KeyError), items.pipeline():
        items.execute("INSERT INTO items VALUES (1, 0)")
        raise KeyError("app")
    (span,) = mem.spans("INSERT items")
    assert span["attributes"]["db.response.status_code"] == "23514"


def test_terminated_backend_leaves_no_span_without_outcome(items: Conn, pg_dsn: str) -> None:
    pid = items.info.backend_pid
    with capture_spans() as mem, psycopg.connect(pg_dsn, autocommit=True) as killer:
        with pytest.raises(psycopg.OperationalError), items.pipeline() as p:
            items.execute("INSERT INTO items VALUES (1, 1)")
            items.execute("SELECT pg_sleep(0)")
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            p.sync()
    spans = mem.spans("INSERT items") + mem.spans("SELECT")
    assert len(spans) == 2
    for span in spans:  # each: its result, its error, or skipped after an error
        assert span["status"] == "error" or _events(span) in ([], ["pipeline_aborted"])


def test_closed_connection_ends_waiting_spans_with_the_error(items: Conn) -> None:
    with capture_spans() as mem, pytest.raises(psycopg.OperationalError), items.pipeline():
        items.execute("INSERT INTO items VALUES (1, 1)")
        items.execute("SELECT 1")
        items.close()  # their results never come
    spans = mem.spans("INSERT items") + mem.spans("SELECT")
    assert len(spans) == 2
    for span in spans:
        assert span["status"] == "error"
        assert span["attributes"]["error.type"] == "psycopg.OperationalError"


def test_unsynced_pipeline_is_bounded(items: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pipeline, "MAX_OPEN", 5)
    with capture_spans() as mem, items.pipeline():
        for i in range(12):
            items.execute("INSERT INTO items VALUES (%s, 1)", (i + 1,))
        pt.force_flush(5.0)
        early = mem.spans("INSERT items")
        assert len(early) == 7  # the oldest beyond 5 waiting ended at once
        assert all(_events(s) == ["pipeline_unresolved"] for s in early)
    assert len(mem.spans("INSERT items")) == 12
    assert items.execute("SELECT count(*) FROM items").fetchone() == (12,)


def test_statement_counted_in_the_transaction_it_was_queued_in(items: Conn) -> None:
    with capture_spans() as mem, items.pipeline():
        items.execute("INSERT INTO items VALUES (9, 9)")
        with traced_transaction(items):
            items.execute("INSERT INTO items VALUES (1, 1)")
            items.execute("INSERT INTO items VALUES (2, 2)")
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.statement_count"] == 2
    assert tx["attributes"]["db.transaction.outcome"] == "commit"
    inside = [s for s in mem.spans("INSERT items") if s["parent_span_id"] == tx["span_id"]]
    assert len(inside) == 2


def test_transaction_failing_in_pipeline(items: Conn) -> None:
    with capture_spans() as mem, items.pipeline():
        with pytest.raises(errors.CheckViolation), traced_transaction(items):
            items.execute("INSERT INTO items VALUES (1, 1)")
            items.execute("INSERT INTO items VALUES (2, 0)")
            items.execute("INSERT INTO items VALUES (3, 3)")
    (tx,) = mem.spans("TRANSACTION")
    assert tx["attributes"]["db.transaction.outcome"] == "rollback"
    ok, bad, *skipped = _by_text(mem, "INSERT items")  # (the 3rd: unless raised before it)
    assert ok["status"] == "unset"
    assert _events(ok) == []
    assert bad["attributes"]["db.response.status_code"] == "23514"
    assert all(_events(s) == ["pipeline_aborted"] for s in skipped)


def test_traced_query_on_uninstrumented_connection(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with capture_spans() as mem, pytest.raises(errors.UniqueViolation), conn.pipeline():
        conn.execute("INSERT INTO t VALUES (1)")
        traced_query(conn, "INSERT INTO t VALUES (1) RETURNING id")  # raised at the sync
    (span,) = mem.spans("INSERT t")
    assert span["attributes"]["db.response.status_code"] == "23505"


def test_sensitive_table_audited_with_the_real_outcome(items: Conn) -> None:
    with capture_spans() as mem, pytest.raises(errors.UniqueViolation), items.pipeline():
        items.execute("INSERT INTO users VALUES (1)")
        items.execute("INSERT INTO users VALUES (1)")
        items.execute("INSERT INTO users VALUES (2)")
    outcomes = [r["outcome"] for r in mem.records if r.get("type") == "audit"]
    assert outcomes[0] == "success"
    assert outcomes[1:] in (["error"], ["error", "error"])  # (the 3rd ran unless raised before)


def test_plain_path_unaffected_after_pipeline(items: Conn) -> None:
    with capture_spans() as mem:
        with items.pipeline():
            items.execute("SELECT 1")
        with pytest.raises(errors.CheckViolation):
            items.execute("INSERT INTO items VALUES (1, 0)")
    (bad,) = mem.spans("INSERT items")
    assert bad["attributes"]["db.response.status_code"] == "23514"


# -- async -------------------------------------------------------------------------------------
async def _async_failing(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        instrument(aconn)
        await aconn.execute("CREATE TABLE a (id int PRIMARY KEY)")
        with pytest.raises(errors.UniqueViolation):
            async with aconn.pipeline():
                await aconn.execute("INSERT INTO a VALUES (1)")
                await aconn.execute("INSERT INTO a VALUES (1)")
                await aconn.execute("INSERT INTO a VALUES (2)")


def test_async_pipeline(pg_dsn: str) -> None:
    with capture_spans() as mem:
        asyncio.run(_async_failing(pg_dsn))
    ok, bad, *skipped = _by_text(mem, "INSERT a")
    assert ok["status"] == "unset"
    assert _events(ok) == []
    assert bad["attributes"]["db.response.status_code"] == "23505"
    assert all(_events(s) == ["pipeline_aborted"] for s in skipped)


async def _async_cancelled(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        instrument(aconn)

        async def work() -> None:
            async with aconn.pipeline() as p:
                await aconn.execute("SELECT pg_sleep(5)")
                await aconn.execute("SELECT 1")
                await p.sync()

        task = asyncio.create_task(work())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_async_pipeline_cancelled_ends_spans(pg_dsn: str) -> None:
    with capture_spans() as mem:
        asyncio.run(asyncio.wait_for(_async_cancelled(pg_dsn), 30))
    spans = mem.spans("SELECT")
    assert len(spans) == 2
    for span in spans:
        assert span["end_time_unix_nano"] >= span["start_time_unix_nano"]


def test_a_psycopg_whose_pipeline_internals_changed_gets_spans_ended_at_execute(
    items: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Guard for psycopg upgrades: the hooks wrap private methods; when their parameters are
    not the ones wrapped, nothing is wrapped, nothing raises, spans end at execute().)"""

    class Changed:
        def _process_results(self, queued: Any, results: Any, extra: Any) -> None: ...
        def _communicate_gen(self) -> None: ...
        def _fetch_gen(self, *, flush: bool) -> None: ...
        def _exit(self, exc: Any) -> None: ...

    assert not _pipeline._hookable(Changed)
    assert _pipeline._hookable(psycopg.Pipeline)
    assert _pipeline._hookable(psycopg.AsyncPipeline)
    monkeypatch.setitem(_pipeline._supported, psycopg.Pipeline, False)
    with swallowed_errors() as internal, capture_spans() as mem, items.pipeline() as p:
        items.execute("INSERT INTO items VALUES (1, 1)")
        assert not hasattr(p, _pipeline._ATTR)
    assert internal == []
    (ins,) = mem.spans("INSERT items")
    assert ins["status"] == "unset"
    assert items.execute("SELECT count(*) FROM items").fetchone() == (1,)
