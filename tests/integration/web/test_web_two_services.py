"""Two services, two processes, one trace.

Service A (Starlette under uvicorn, in this process) calls service B (Flask under werkzeug,
a subprocess: ``service_b.py``) with an instrumented httpx client; B reads PostgreSQL (a real
server started for the test) through an instrumented psycopg connection. A's records are
captured in memory, B's are read from the NDJSON file it writes: together they must form one
trace with the right parent of every span.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pitchey_trace.testing import capture_spans
from pitchey_trace.web import ASGITracingMiddleware, instrument_httpx, uninstrument_httpx
from tests.support.pgserver import postgres_server, scratch_schema

pytestmark = pytest.mark.integration

SERVICE_B = Path(__file__).with_name("service_b.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pitches_dsn() -> Iterator[str]:
    with postgres_server() as server, scratch_schema(server.dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text NOT NULL)")
            conn.execute("INSERT INTO pitches VALUES (7, 'Solar kettles'), (8, 'Quiet drums')")
        yield dsn


@pytest.fixture
def service_b(pitches_dsn: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    out = tmp_path / "service_b.ndjson"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(SERVICE_B), pitches_dsn, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"service B did not start (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(line)}", proc, out
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


def service_a(b_url: str) -> ASGITracingMiddleware:
    async def show(request: Request) -> Response:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{b_url}/pitches/{request.path_params['pitch_id']}")
        return JSONResponse(r.json(), status_code=r.status_code)

    return ASGITracingMiddleware(Starlette(routes=[Route("/api/pitches/{pitch_id:int}", show)]))


def stop_and_read(proc: subprocess.Popen[str], out: Path) -> list[dict[str, Any]]:
    proc.terminate()  # service B flushes its pipeline on SIGTERM
    assert proc.wait(30) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_one_trace_across_two_processes_and_postgres(
    service_b: tuple[str, subprocess.Popen[str], Path], serve_asgi: Any, wait_for: Any
) -> None:
    b_url, proc, out = service_b
    instrument_httpx()
    try:
        with capture_spans(service="service-a") as exporter:
            a_url = serve_asgi(service_a(b_url))
            started = time.time_ns()
            # urllib: the test's own call is not instrumented, so A's server span is the root.
            with urllib.request.urlopen(f"{a_url}/api/pitches/7", timeout=30) as r:  # noqa: S310
                status, body, trace_id = r.status, json.loads(r.read()), r.headers["X-Trace-Id"]
            a_server = wait_for(lambda: [s for s in exporter.spans() if s["kind"] == "server"])[0]
            a_spans = exporter.spans()
    finally:
        uninstrument_httpx()
    b_records = stop_and_read(proc, out)

    assert status == 200
    assert body == {"id": 7, "title": "Solar kettles"}

    [a_client] = [s for s in a_spans if s["kind"] == "client"]
    b_spans = [rec for rec in b_records if rec["type"] == "span"]
    [b_server] = [s for s in b_spans if s["kind"] == "server"]
    [b_query] = [s for s in b_spans if s["kind"] == "client"]

    # One trace, four spans, each with the right parent, in two processes.
    for span in (a_server, a_client, b_server, b_query):
        assert span["trace_id"] == trace_id
    assert a_server["parent_span_id"] is None
    assert a_client["parent_span_id"] == a_server["span_id"]
    assert b_server["parent_span_id"] == a_client["span_id"]
    assert b_query["parent_span_id"] == b_server["span_id"]
    assert a_server["service"] == a_client["service"] == "service-a"
    assert b_server["service"] == b_query["service"] == "service-b"
    assert a_server["resource"]["process.pid"] == os.getpid()
    assert b_server["resource"]["process.pid"] == proc.pid

    assert a_server["name"] == "GET /api/pitches/{pitch_id:int}"
    assert b_server["name"] == "GET /pitches/<int:pitch_id>"
    assert b_query["name"] == "SELECT pitches"
    assert b_query["attributes"]["db.system.name"] == "postgresql"
    assert "Solar" not in json.dumps(b_query)  # the row's value is never recorded
    # Nesting in time as well: each child inside its parent.
    assert started <= a_server["start_time_unix_nano"] <= a_client["start_time_unix_nano"]
    assert a_client["start_time_unix_nano"] <= b_server["start_time_unix_nano"]
    # B's server span ends after its last byte is written, which can be a moment after A has
    # read the response: only A's own spans are ordered at the end.
    assert a_client["end_time_unix_nano"] <= a_server["end_time_unix_nano"]

    b_audit = [rec for rec in b_records if rec["type"] == "audit" and rec["category"] == "request"]
    assert [(a["action"], a["outcome"], a["trace_id"]) for a in b_audit] == [
        ("GET /pitches/<int:pitch_id>", "200", trace_id)
    ]
