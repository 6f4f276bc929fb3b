"""``pitchey-trace run`` / ``pitchey_trace.auto``: unchanged programs, started by the command,
traced end to end over real servers (Flask under werkzeug, Starlette under uvicorn, aiohttp,
PostgreSQL through psycopg, psycopg2 and asyncpg) with the console exporter's NDJSON read back.

Everything runs in child processes: the instrumentation patches libraries process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.pgserver import asyncpg_args

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "pitchey_trace.cli"]

SYNC_PROGRAM = """
import sys, threading, time
import httpx, requests, psycopg, psycopg2
from flask import Flask
from werkzeug.serving import make_server
import pitchey_trace as pt

dsn = sys.argv[1]
app = Flask("auto_flask")

@app.get("/items/<int:item_id>")
def item(item_id):
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT %s::int AS id", (item_id,)).fetchone()
    other = psycopg2.connect(dsn)
    with other.cursor() as cur:
        cur.execute("SELECT 2 AS two")
    other.close()
    return {"id": item_id}

server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"
with pt.span("job"):
    first = requests.get(url + "/items/7", timeout=10)
    second = httpx.get(url + "/items/8", timeout=10)
print("STATUS", first.status_code, second.status_code, flush=True)
time.sleep(0.3)  # (the server thread ends its span just after the client has the response)
server.shutdown()
"""

ASYNC_PROGRAM = """
import asyncio, json, socket, sys
import aiohttp, asyncpg, httpx, uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import pitchey_trace as pt

connect_args = json.loads(sys.argv[1])

async def main():
    pool = await asyncpg.create_pool(**connect_args, min_size=1, max_size=2)

    async def inner(request):
        n = int(request.match_info["n"])
        async with pool.acquire() as conn:
            value = await conn.fetchval("SELECT $1::int * 2", n)
        return web.json_response({"value": value})

    inner_app = web.Application()
    inner_app.router.add_get("/inner/{n}", inner)
    runner = web.AppRunner(inner_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    inner_url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def outer(request):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{inner_url}/inner/{request.path_params['n']}") as r:
                return JSONResponse(await r.json())

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/outer/{n}", outer)]),
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    with pt.span("job"):
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{sock.getsockname()[1]}/outer/21")
    print("BODY", r.text, flush=True)
    server.should_exit = True
    await serving
    await runner.cleanup()
    await pool.close()

asyncio.run(main())
"""


def run(program: str, tmp_path: Path, *args: str, cli: tuple[str, ...] = (), **env: str) -> Any:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    environ.update(env)
    return subprocess.run(
        [*CLI, "run", "--exporter", "console", *cli, "--", sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=tmp_path,
    )


def spans_of(stdout: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [r for r in records if r["type"] == "span"]


def children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_span_id"] == parent["span_id"]]


def test_sync_program_traced_without_code(pg_dsn: str, tmp_path: Path) -> None:
    proc = run(SYNC_PROGRAM, tmp_path, pg_dsn, cli=("--service", "auto-sync"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STATUS 200 200" in proc.stdout
    spans = spans_of(proc.stdout)
    [job] = [s for s in spans if s["name"] == "job"]
    assert {s["trace_id"] for s in spans} == {job["trace_id"]}  # one trace, both clients
    assert {s["service"] for s in spans} == {"auto-sync"}
    clients = children(spans, job)
    assert sorted(c["kind"] for c in clients) == ["client", "client"]  # requests, then httpx
    for client in clients:
        [server] = children(spans, client)
        assert server["name"] == "GET /items/<int:item_id>"
        assert server["kind"] == "server"
        queries = children(spans, server)
        # psycopg 3's SELECT and the COMMIT ending its `with psycopg.connect()` block; psycopg2's
        # SELECT and the ROLLBACK of close() with that SELECT's transaction open
        assert sorted(q["name"] for q in queries) == ["COMMIT", "ROLLBACK", "SELECT", "SELECT"]
        assert {q["attributes"]["db.system.name"] for q in queries} == {"postgresql"}
        assert {q["kind"] for q in queries} == {"client"}


def test_async_program_traced_without_code(pg_dsn: str, tmp_path: Path) -> None:
    proc = run(ASYNC_PROGRAM, tmp_path, json.dumps(asyncpg_args(pg_dsn)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'BODY {"value":42}' in proc.stdout
    spans = spans_of(proc.stdout)
    [job] = [s for s in spans if s["name"] == "job"]
    assert {s["trace_id"] for s in spans} == {job["trace_id"]}
    [httpx_call] = children(spans, job)
    [outer] = children(spans, httpx_call)
    assert (outer["name"], outer["kind"]) == ("GET /outer/{n}", "server")
    [aiohttp_call] = children(spans, outer)
    assert aiohttp_call["kind"] == "client"
    [inner] = children(spans, aiohttp_call)
    assert (inner["name"], inner["kind"]) == ("GET /inner/{n}", "server")  # one span, not two
    [query] = children(spans, inner)
    assert query["attributes"]["db.system.name"] == "postgresql"
    assert query["attributes"]["db.query.text"] == "SELECT $1::int * ?"


def test_exclusions_chaining_and_already_imported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.USER_SITE_RAN = True\n")
    program = """
    import builtins, sys
    import requests
    import pitchey_trace.auto as auto
    import boto3
    import celery
    import redis
    print("USER_SITE", getattr(builtins, "USER_SITE_RAN", False))
    print("INSTRUMENTED", ",".join(sorted(auto.instrumented())))
    print("PATCHED", requests.adapters.HTTPAdapter.send.__qualname__)
    """
    proc = run(program, tmp_path, cli=("--exclude", "requests"), PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "USER_SITE True" in proc.stdout  # the program's own sitecustomize still runs
    assert "INSTRUMENTED botocore,celery,logging,redis,threading,urllib,urllib3\n" in proc.stdout
    assert "PATCHED HTTPAdapter.send" in proc.stdout  # excluded: not patched
    # the same from code, with requests imported before: instrumented at once
    direct = subprocess.run(
        [
            sys.executable,
            "-c",
            "import requests, pitchey_trace.auto as a; a.instrument_all(); "
            "print(sorted(a.instrumented()), requests.adapters.HTTPAdapter.send.__qualname__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert direct.returncode == 0, direct.stderr
    assert (
        direct.stdout.strip()
        == "['logging', 'requests', 'threading', 'urllib', 'urllib3'] instrument_requests.<locals>.send"
    )


LOGGING_PROGRAM = """
import logging
from concurrent.futures import ThreadPoolExecutor
import pitchey_trace as pt
with pt.span("job"), ThreadPoolExecutor(2) as pool:
    logging.getLogger("app").warning("disk %s almost full", "/var")
    logging.getLogger("app").error("backup failed")
    pool.submit(lambda: pt.span("resize").__enter__().end()).result()
"""


def test_log_records_and_thread_pools_under_run(tmp_path: Path) -> None:
    def events(*cli: str, **env: str) -> list[str]:
        proc = run(LOGGING_PROGRAM, tmp_path, cli=cli, **env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        spans = {s["name"]: s for s in spans_of(proc.stdout)}
        job, resize = spans["job"], spans["resize"]
        threaded.append(resize["parent_span_id"] == job["span_id"])
        return [e["attributes"]["log.message"] for e in job["events"] if e["name"] == "log"]

    threaded: list[bool] = []

    assert events() == ["disk /var almost full", "backup failed"]
    assert events(PITCHEY_TRACE_LOG_EVENT_LEVEL="error") == ["backup failed"]
    assert events("--exclude", "logging,threading") == []
    # the pool's span joins the job's trace, unless threading is excluded
    assert threaded == [True, True, False]


def test_run_refuses_bad_input(tmp_path: Path) -> None:
    missing = subprocess.run([*CLI, "run"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "give the program to start" in missing.stderr
    unknown = subprocess.run(
        [*CLI, "run", "--exclude", "mongo", "--", "true"], capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 2
    assert "unknown libraries ['mongo']" in unknown.stderr
    absent = subprocess.run(
        [*CLI, "run", "--", str(tmp_path / "no-such-program")], capture_output=True, text=True, timeout=60
    )
    assert absent.returncode == 127
    assert "cannot start" in absent.stderr


def test_a_failing_instrumentation_never_breaks_the_import(tmp_path: Path) -> None:
    program = """
    import pitchey_trace.auto as auto
    from pitchey_trace import _stats

    def broken(module):
        raise RuntimeError("instrumentation bug")

    auto.SUPPORTED["httpx"] = (("httpx", broken),)
    auto.instrument_all(configure=False)
    import httpx
    print("IMPORTED", httpx.__name__, sorted(auto.instrumented()), _stats.get("internal_errors.auto.httpx"))
    """
    script = tmp_path / "p.py"
    script.write_text(textwrap.dedent(program))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED httpx ['logging', 'threading', 'urllib'] 1" in proc.stdout
    assert "instrumentation bug" in proc.stderr  # logged on the pitchey_trace logger


EXPLICIT_PROGRAM = """
import asyncio, threading, time
import httpx
from aiohttp import web
from flask import Flask
from werkzeug.serving import make_server
from pitchey_trace.web import init_aiohttp, init_flask

def serve_flask(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"

plain, own = Flask("plain"), Flask("own")
for app in (plain, own):
    app.get("/hello")(lambda: "hi")
init_flask(own, trace_id_header="X-Request-Trace")
for app in (plain, own):
    server, url = serve_flask(app)
    r = httpx.get(url + "/hello")
    print("FLASK", app.name, "x-trace-id" in r.headers, "x-request-trace" in r.headers)
    time.sleep(0.3)  # (the server thread ends its span just after the client has the response)
    server.shutdown()

async def aio():
    async def leaf(request):
        return web.Response(text="leaf")
    for explicit in (False, True):
        parent, child = web.Application(), web.Application()
        child.router.add_get("/leaf/{n}", leaf)
        parent.add_subapp("/sub", child)
        if explicit:
            init_aiohttp(parent, trace_id_header=None)
        runner = web.AppRunner(parent, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{runner.addresses[0][1]}/sub/leaf/1")
        print("AIOHTTP", explicit, r.text, r.headers.get("x-trace-id") is not None)
        await runner.cleanup()

asyncio.run(aio())
"""


def test_explicit_setup_wins_and_sub_applications_make_one_span(tmp_path: Path) -> None:
    proc = run(EXPLICIT_PROGRAM, tmp_path, cli=("--exclude", "httpx"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FLASK plain True False" in proc.stdout  # auto: the default header
    assert "FLASK own False True" in proc.stdout  # the program's own options
    assert "AIOHTTP False leaf True" in proc.stdout
    assert "AIOHTTP True leaf False" in proc.stdout
    spans = spans_of(proc.stdout)
    assert sorted(s["name"] for s in spans) == [
        "GET /hello",
        "GET /hello",
        "GET /sub/leaf/{n}",
        "GET /sub/leaf/{n}",
    ]
    assert {s["parent_span_id"] for s in spans} == {None}


DJANGO_PROGRAM = """
import json, sys, threading, time
import django
from django.conf import settings

db = json.loads(sys.argv[1])
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test-only",
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db["dbname"], "USER": db["user"], "HOST": db["host"], "PORT": db["port"],
        "OPTIONS": {"options": db["options"]},
    }},
)
django.setup()

import httpx
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.http import JsonResponse
from django.urls import path
from werkzeug.serving import make_server

def pitch(request, pitch_id):
    with connection.cursor() as cur:
        cur.execute("SELECT %s + 1", [pitch_id])
        value = cur.fetchone()[0]
    return JsonResponse({"value": value})

urlpatterns = [path("pitches/<int:pitch_id>/", pitch)]

if sys.argv[2] == "asgi":  # async Django under uvicorn: the route middleware runs async
    import socket, uvicorn
    from django.core.asgi import get_asgi_application
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(get_asgi_application(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    def stop():  # a graceful shutdown: the request's span has ended when it returns
        server.should_exit = True
        thread.join(10)
    port = sock.getsockname()[1]
else:
    application = get_wsgi_application()
    if sys.argv[2] == "wrapped":  # the program wrapped it itself, as the settings snippet says
        from pitchey_trace.web import WSGITracingMiddleware
        application = WSGITracingMiddleware(application, trace_id_header="X-Own-Trace")
    server = make_server("127.0.0.1", 0, application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    def stop():  # (the server thread ends the span just after the client has the response)
        time.sleep(0.3)
        server.shutdown()
    port = server.server_port
r = httpx.get(f"http://127.0.0.1:{port}/pitches/41/")
print("DJANGO", r.status_code, r.text, sorted(h for h in r.headers if "trace" in h), flush=True)
stop()
"""


@pytest.mark.parametrize("setup", ["none", "wrapped", "asgi"])
def test_django_project_traced_without_settings(pg_dsn: str, tmp_path: Path, setup: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(pg_dsn)
    db = json.dumps({k: str(params[k]) for k in ("dbname", "user", "host", "port", "options")})
    proc = run(DJANGO_PROGRAM, tmp_path, db, setup, cli=("--exclude", "httpx"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = "x-own-trace" if setup == "wrapped" else "x-trace-id"
    assert f"""DJANGO 200 {{"value": 42}} ['{header}']""" in proc.stdout
    spans = spans_of(proc.stdout)
    [server] = [s for s in spans if s["kind"] == "server"]  # one, wrapped by hand or not
    assert server["name"] == "GET /pitches/<int:pitch_id>/"
    # (Django opens its connection in the request: its set_config query comes first)
    queries = {q["attributes"]["db.query.text"]: q for q in children(spans, server)}
    assert queries["SELECT %s + ?"]["attributes"]["db.system.name"] == "postgresql"


GUNICORN_APP = """
import os
import psycopg
from flask import Flask

app = Flask("prefork")

@app.get("/work/<int:n>")
def work(n):
    with psycopg.connect(os.environ["APP_DSN"]) as conn:
        conn.execute("SELECT %s::int", (n,)).fetchone()
    return {"pid": os.getpid(), "n": n}
"""


def test_prefork_gunicorn_workers_trace_after_fork(pg_dsn: str, tmp_path: Path) -> None:
    import signal
    import socket
    import time

    import httpx

    (tmp_path / "prefork_app.py").write_text(textwrap.dedent(GUNICORN_APP))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    environ["APP_DSN"] = pg_dsn
    server = subprocess.Popen(
        [
            *CLI,
            "run",
            "--exporter",
            "console",
            "--service",
            "prefork",
            "--",
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "prefork_app:app",
        ],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        pids = set()
        with httpx.Client() as client:
            n = 0
            while len(pids) < 2 or n < 8:  # until both workers have answered
                try:
                    r = client.get(f"http://127.0.0.1:{port}/work/{n}", headers={"Connection": "close"})
                    pids.add(r.json()["pid"])
                    n += 1
                except httpx.TransportError:
                    time.sleep(0.1)
                assert time.monotonic() < deadline, "gunicorn did not answer from two workers"
        time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: each worker flushes at exit
        out, err = server.communicate(timeout=60)
    spans = spans_of(out)
    servers = [s for s in spans if s["kind"] == "server"]
    assert len(servers) == n, err[-2000:]
    assert {s["resource"]["process.pid"] for s in servers} == pids  # traced in each forked worker
    for server_span in servers:
        # the SELECT and the COMMIT ending the view's `with psycopg.connect()` block
        query, commit = sorted(children(spans, server_span), key=lambda s: s["start_time_unix_nano"])
        assert query["attributes"]["db.system.name"] == "postgresql"
        assert commit["name"] == "COMMIT"
    assert len({s["span_id"] for s in spans}) == len(spans)  # nothing exported twice


def test_exclude_given_as_one_comma_separated_text() -> None:
    """``instrument_all(exclude="requests, urllib3")`` excludes those two libraries, as the
    variable does; it took the text for its letters ("unknown libraries ['e', 'q', ...]")."""
    code = (
        "import requests, pitchey_trace.auto as a; a.instrument_all(exclude='requests, urllib3'); "
        "print(sorted(a.instrumented()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['logging', 'threading', 'urllib']"
