"""OpenTelemetry's psycopg, psycopg2 and redis instrumentations (through ``pitchey_trace.otel``)
on beside pitchey's own, in both orders, against a real PostgreSQL and a real redis-server:
what each query or command records, and the warning that says so (counted as misuse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import pytest
import redis
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor

import pitchey_trace as pt
from pitchey_trace.db import instrument, uninstrument
from pitchey_trace.otel import install
from pitchey_trace.redis import instrument_redis, uninstrument_redis
from pitchey_trace.testing import capture_spans
from tests.support.otel_global import _otel_global_provider_restored  # noqa: F401 (autouse)
from tests.support.pgserver import postgres_server, scratch_schema
from tests.support.redisserver import redis_server

pytestmark = pytest.mark.integration

DRIVERS = pytest.mark.parametrize(
    ("instrumentor", "driver"),
    [(PsycopgInstrumentor, psycopg), (Psycopg2Instrumentor, psycopg2)],
    ids=["psycopg", "psycopg2"],
)


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    with postgres_server() as server, scratch_schema(server.dsn) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_server() as port:
        yield port


def _scope(span: dict[str, Any]) -> str | None:
    return span["attributes"].get("otel.scope.name")


def _query(conn: Any) -> None:
    try:
        cur = conn.cursor()
        cur.execute("select 1")
        cur.fetchall()
        cur.execute("select 2")
    finally:
        conn.close()


def _duplicates() -> dict[str, int]:
    return {k: v for k, v in pt.stats().items() if k.startswith("misuse.otel.duplicate_instrumentation.")}


@DRIVERS
@pytest.mark.parametrize("otel", ["instrument", "instrument_connection"])
def test_otel_db_instrumentation_first_then_pitchey_two_sibling_spans_and_a_warning(
    instrumentor: Any, driver: Any, otel: str, pg_dsn: str
) -> None:
    """OpenTelemetry's cursor class is the connection's cursor factory when pitchey's
    instrument(conn) comes: pitchey's traced cursor derives from it, so each query is two client
    spans with the same parent; instrument() says so, once per connection (not per query)."""
    with capture_spans() as mem:
        tp = install()
        if otel == "instrument":
            instrumentor().instrument(tracer_provider=tp, skip_dep_check=True)
        try:
            with pt.span("request") as request:
                for _ in range(2):  # two connections
                    conn = driver.connect(pg_dsn)
                    if otel == "instrument_connection":
                        instrumentor.instrument_connection(conn, tracer_provider=tp)
                    instrument(conn)
                    instrument(conn)  # (again: only updates the overrides, no second warning)
                    _query(conn)
        finally:
            if otel == "instrument":
                instrumentor().uninstrument()
        pt.force_flush()
        spans = [s for s in mem.spans() if s["kind"] == "client"]
    library = driver.__name__
    theirs = [s for s in spans if _scope(s) == f"opentelemetry.instrumentation.{library}"]
    ours = [s for s in spans if _scope(s) is None]
    assert [s["name"] for s in theirs] == ["select"] * 4
    assert [s["name"] for s in ours] == ["SELECT"] * 4
    # side by side: neither is the other's parent
    assert {s["parent_span_id"] for s in spans} == {f"{request.span_id:016x}"}
    assert _duplicates() == {f"misuse.otel.duplicate_instrumentation.{library}": 2}


@DRIVERS
def test_pitchey_first_then_otel_instrument_connection_leaves_otels_query_spans_only(
    instrumentor: Any, driver: Any, pg_dsn: str
) -> None:
    """The other order: OpenTelemetry's instrument_connection() replaces the cursor factory
    pitchey's instrument(conn) set, so queries are OpenTelemetry's spans only (documented; no
    duplicate, no warning)."""
    with capture_spans() as mem:
        tp = install()
        conn = instrument(driver.connect(pg_dsn))
        instrumentor.instrument_connection(conn, tracer_provider=tp)
        _query(conn)
        pt.force_flush()
        spans = [s for s in mem.spans() if s["kind"] == "client" and s["name"].lower() == "select"]
    assert [_scope(s) for s in spans] == [f"opentelemetry.instrumentation.{driver.__name__}"] * 2
    assert _duplicates() == {}


def test_pitchey_db_instrumentation_alone_no_warning(pg_dsn: str) -> None:
    with capture_spans() as mem:
        for driver in (psycopg, psycopg2):
            conn: Any = instrument(driver.connect(pg_dsn))
            _query(conn)
            uninstrument(conn)
        pt.force_flush()
        assert [s["name"] for s in mem.spans()].count("SELECT") == 4
    assert _duplicates() == {}


def _redis_work(port: int) -> Callable[[], list[dict[str, Any]]]:
    def work() -> list[dict[str, Any]]:
        with capture_spans() as mem:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                with pt.span("request"):
                    client.set("k", "v")
                    client.get("k")
                    pipe = client.pipeline()
                    pipe.get("k")
                    pipe.get("k")
                    pipe.execute()
            finally:
                client.close()
            pt.force_flush()
            return [s for s in mem.spans() if s["kind"] == "client"]

    return work


def test_redis_otel_first_then_pitchey_two_spans_per_command_and_a_warning(redis_port: int) -> None:
    """OpenTelemetry's instrument() first: pitchey's wrapper calls OpenTelemetry's (bound to the
    client: unbound, it named its span after the client's repr) and instrument_redis() says so
    at once, then once more at the pool's first command."""
    RedisInstrumentor().instrument(tracer_provider=install())
    try:
        instrument_redis()
        try:
            assert _duplicates() == {"misuse.otel.duplicate_instrumentation.redis": 1}
            spans = _redis_work(redis_port)()
        finally:
            uninstrument_redis()
    finally:
        RedisInstrumentor().uninstrument()
    theirs = [s for s in spans if _scope(s) == "opentelemetry.instrumentation.redis"]
    ours = [s for s in spans if _scope(s) is None]
    assert [s["name"] for s in ours] == ["SET", "GET", "MULTI"]
    assert [s["name"] for s in theirs] == ["SET", "GET", "GET GET"]
    assert theirs[0]["attributes"]["db.statement"] == "SET ? ?"
    assert theirs[0]["attributes"]["db.redis.args_length"] == 3  # (not 4: the client is no argument)
    # pitchey's span is not made current: the two are side by side
    assert len({s["parent_span_id"] for s in spans}) == 1
    assert _duplicates() == {"misuse.otel.duplicate_instrumentation.redis": 2}


@pytest.mark.parametrize("otel", ["instrument", "instrument_client"])
def test_redis_pitchey_first_then_otel_nested_spans_and_a_warning(redis_port: int, otel: str) -> None:
    """pitchey's instrument_redis() first: OpenTelemetry's wrapper (on the class, or on the
    client) runs outside pitchey's and makes its span current, so pitchey's is its child; said
    once per connection pool, at its first command."""
    instrument_redis()
    try:
        assert _duplicates() == {}
        if otel == "instrument":
            RedisInstrumentor().instrument(tracer_provider=install())
            work = _redis_work(redis_port)
        else:
            install()

            def work() -> list[dict[str, Any]]:
                with capture_spans() as mem:
                    client = redis.Redis(host="127.0.0.1", port=redis_port)
                    RedisInstrumentor.instrument_client(client, tracer_provider=install())
                    try:
                        client.set("k", "v")
                        client.get("k")
                    finally:
                        client.close()
                    pt.force_flush()
                    return [s for s in mem.spans() if s["kind"] == "client"]

        try:
            spans = work()
        finally:
            if otel == "instrument":
                RedisInstrumentor().uninstrument()
    finally:
        uninstrument_redis()
    theirs = [s for s in spans if _scope(s) == "opentelemetry.instrumentation.redis"]
    ours = [s for s in spans if _scope(s) is None]
    assert [s["name"] for s in ours][:2] == ["SET", "GET"]
    assert len(theirs) == len(ours)
    for outer, inner in zip(theirs, ours, strict=True):
        assert inner["parent_span_id"] == outer["span_id"]
    assert _duplicates() == {"misuse.otel.duplicate_instrumentation.redis": 1}


def test_redis_pitchey_alone_no_warning(redis_port: int) -> None:
    instrument_redis()
    try:
        spans = _redis_work(redis_port)()
    finally:
        uninstrument_redis()
    assert [s["name"] for s in spans] == ["SET", "GET", "MULTI"]
    assert _duplicates() == {}


_AUTO_PROGRAM = """
import importlib, json, sys
import pitchey_trace as pt
import pitchey_trace.auto
from pitchey_trace.otel import install
from pitchey_trace.testing import capture_spans

order, name, dsn = sys.argv[1:4]
driver = importlib.import_module(name)
module = importlib.import_module("opentelemetry.instrumentation." + name)
instrumentor = getattr(module, "PsycopgInstrumentor" if name == "psycopg" else "Psycopg2Instrumentor")
with capture_spans() as mem:
    if order == "otel-first":
        instrumentor().instrument(tracer_provider=install(), skip_dep_check=True)
    pitchey_trace.auto.instrument_all(configure=False)
    if order == "pitchey-first":
        instrumentor().instrument(tracer_provider=install(), skip_dep_check=True)
    conn = driver.connect(dsn)
    conn.cursor().execute("select 1")
    conn.close()
    pt.force_flush()
    print(json.dumps({
        "spans": [[s["name"], s["attributes"].get("otel.scope.name")] for s in mem.spans()],
        "stats": {k: v for k, v in pt.stats().items() if k.startswith("misuse.otel")},
    }))
"""


@pytest.mark.parametrize(
    ("order", "name"),
    [
        ("pitchey-first", "psycopg"),
        ("pitchey-first", "psycopg2"),
        ("otel-first", "psycopg2"),
        # (auto-instrumentation called OpenTelemetry's connect wrapper's bare function: its
        # spans were silently gone)
        ("otel-first", "psycopg"),
    ],
)
def test_auto_instrumentation_beside_otel_db_instrumentation_warns(
    order: str, name: str, pg_dsn: str, tmp_path: Path
) -> None:
    """pitchey's auto-instrumentation instruments each connection connect() returns: with
    OpenTelemetry's instrument() on, that connection already has OpenTelemetry's cursor class,
    so the query is two spans and the warning says so (a process of its own: auto patches for
    good)."""
    script = tmp_path / "program.py"
    script.write_text(_AUTO_PROGRAM)
    proc = subprocess.run(
        [sys.executable, str(script), order, name, pg_dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    queries = [span for span in result["spans"] if span[0].lower() == "select"]
    assert queries == [["select", f"opentelemetry.instrumentation.{name}"], ["SELECT", None]]
    assert result["stats"] == {f"misuse.otel.duplicate_instrumentation.{name}": 1}
    assert "each query is recorded as two client spans" in proc.stderr
