"""asyncpg: nested ``async with conn.transaction()`` savepoints when the task is cancelled in
the middle of a query. Every block's span ends (no leak, nothing left current), as a
rollback whose reason is the cancellation, without error status; the query's span has the
``cancelled`` event; the connection is usable afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import pitchey_trace as pt
from pitchey_trace._context import CURRENT
from pitchey_trace.db import instrument
from pitchey_trace.testing import capture_spans, swallowed_errors
from tests.support.pgserver import asyncpg_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _cancel_nested(dsn: str, depth: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def main() -> None:
        conn = instrument(await asyncpg.connect(**asyncpg_args(dsn)))
        try:
            await conn.execute("CREATE TABLE t (id int)")

            async def work() -> None:
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (1)")
                    async with conn.transaction():
                        await conn.execute("INSERT INTO t VALUES (2)")
                        if depth == 3:
                            async with conn.transaction():
                                await conn.execute("SELECT pg_sleep(10)")
                        else:
                            await conn.execute("SELECT pg_sleep(10)")

            with pt.span("request"):
                before = CURRENT.get()
                task = asyncio.create_task(work())
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                seen["current_after"] = CURRENT.get() is before
            seen["in_tx"] = conn.is_in_transaction()
            seen["rows"] = await conn.fetchval("SELECT count(*) FROM t")
        finally:
            await conn.close()

    asyncio.run(main())
    return seen


@pytest.mark.parametrize("depth", [2, 3])
def test_cancelled_task_ends_every_savepoint_span(pg_dsn: str, depth: int) -> None:
    with swallowed_errors() as internal, capture_spans() as mem:
        seen = _cancel_nested(pg_dsn, depth)
    assert internal == []
    assert seen == {"current_after": True, "in_tx": False, "rows": 0}
    (tx,) = mem.spans("TRANSACTION")
    savepoints = mem.spans("SAVEPOINT")
    assert len(savepoints) == depth - 1
    for span in (tx, *savepoints):
        a = span["attributes"]
        assert a["db.transaction.outcome"] == "rollback"
        assert a["db.transaction.rollback_reason"].endswith("CancelledError")
        assert span["status"] == "unset"
    (sleep,) = mem.spans("SELECT")
    assert [e["name"] for e in sleep["events"]] == ["cancelled"]
    assert sleep["status"] == "unset"
    # Parents: the innermost block holds the sleep; each savepoint its enclosing block.
    ids = {s["span_id"]: s for s in (tx, *savepoints)}
    assert sleep["parent_span_id"] in ids
    for sp in savepoints:
        assert sp["parent_span_id"] in ids
    assert tx["attributes"]["db.transaction.statement_count"] == 3  # INSERT, INSERT, SELECT
