"""SQLAlchemy engines on top of traced drivers (the recipe in docs/database.md): the async engine
over asyncpg and the sync engine over psycopg, ORM sessions, against a real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import String, create_engine, event, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pitchey_trace as pt
from pitchey_trace.db import instrument
from pitchey_trace.testing import capture_spans
from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration


class Base(DeclarativeBase):
    pass


class Pitch(Base):
    __tablename__ = "pitches"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


def _url(pg_dsn: str, driver: str) -> tuple[str, dict[str, str]]:
    args = asyncpg_args(pg_dsn)
    url = f"postgresql+{driver}://{args['user']}@{args['host']}:{args['port']}/{args['database']}"
    return url, args.get("server_settings", {})


def _tree(mem: Any) -> dict[str, list[str]]:
    """Span name -> names of its parents' spans (None for roots), in export order."""
    names = {s["span_id"]: s["name"] for s in mem.spans()}
    tree: dict[str, list[str]] = {}
    for s in mem.spans():
        tree.setdefault(s["name"], []).append(names.get(s["parent_span_id"], "-"))
    return tree


def test_async_engine_over_asyncpg(pg_dsn: str) -> None:
    url, settings = _url(pg_dsn, "asyncpg")

    async def main() -> None:
        engine = create_async_engine(url, connect_args={"server_settings": settings})

        @event.listens_for(engine.sync_engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            instrument(dbapi_connection.driver_connection)

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        with pt.span("request"):
            async with AsyncSession(engine) as session:
                async with session.begin():
                    session.add_all(
                        [Pitch(id=1, title="Solar kettles"), Pitch(id=2, title="4111 1111 1111 1111")]
                    )
                found = (await session.scalars(select(Pitch).where(Pitch.id > 0).order_by(Pitch.id))).all()
                assert [p.title for p in found] == ["Solar kettles", "4111 1111 1111 1111"]
            with pt.span("after"):
                pass
        await engine.dispose()

    with capture_spans() as mem:
        asyncio.run(main())
    tree = _tree(mem)
    assert tree["INSERT pitches"] == ["request"]
    assert tree["SELECT pitches"] == ["request"]
    assert tree["after"] == ["request"]  # no transaction span left current after the session
    (insert,) = mem.spans("INSERT pitches")
    assert insert["attributes"]["db.query.text"].startswith("INSERT INTO pitches (id, title) VALUES ($1")
    (select_span,) = mem.spans("SELECT pitches")
    assert select_span["attributes"]["db.response.returned_rows"] == 2
    outcomes = [s["attributes"]["db.transaction.outcome"] for s in mem.spans("TRANSACTION")]
    assert outcomes.count("commit") >= 2  # create_all's block and the session's begin()
    assert "4111 1111 1111 1111" not in json.dumps(mem.records)  # parameters are not recorded


def test_sync_engine_over_psycopg(pg_dsn: str) -> None:
    url, settings = _url(pg_dsn, "psycopg")
    engine = create_engine(url, connect_args={"options": f"-c search_path={settings['search_path']}"})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        instrument(dbapi_connection)

    Base.metadata.create_all(engine)
    with capture_spans() as mem:
        with pt.span("request"), Session(engine) as session, session.begin():
            session.add(Pitch(id=1, title="Solar kettles"))
            session.flush()
            assert session.scalars(select(Pitch.title)).all() == ["Solar kettles"]
    engine.dispose()
    tree = _tree(mem)
    assert tree["INSERT pitches"] == ["request"]
    assert tree["SELECT pitches"] == ["request"]
    (insert,) = mem.spans("INSERT pitches")
    assert (
        insert["attributes"]["db.query.text"]
        == "INSERT INTO pitches (id, title) VALUES (%(id)s::INTEGER, %(title)s::VARCHAR)"
    )
