"""The code blocks of the user docs run as written (``docs/*.md`` but ``performance.md`` and
``sanitizing.md``).

* Every ```python block runs in a subprocess of its own (so one block's ``pt.configure()`` or
  instrumentation never reaches another test), with the current directory and ``TMPDIR`` in a
  scratch directory. A block that uses names the reader provides (``conn``, ``app``, a
  ``url``) or that an earlier block of its page defined gets them from a small setup ``prefix``
  listed below, keyed by its page and its first line; a ``suffix`` then checks what the block
  did and what the page says it does. ``replace`` swaps a placeholder (``exporters=[...]``,
  ``"UPDATE ..."``) or a system path (``/etc/...``) for a working stand-in; each one must be
  found in the block. ``claims`` are expression lines whose ``# <value>`` comment states their
  value: the comment is parsed and asserted. Top-level ``await`` works (blocks written for an
  async context run in an event loop), and the run fails if the SDK swallowed an internal error.
* Blocks that need PostgreSQL use a throwaway server (``tests/support/pgserver.py``, one per test
  process, a private schema per block); the AWS ones moto's server (server mode, over HTTP);
  collectors, Redis and HTTP servers are started by the prefix in the block's process.
* The ```sh / ```bash blocks' commands are checked too: ``pitchey-trace`` command lines parse
  with the real argument parser, the archive commands run against an archive (local and in S3),
  ``pip`` extras exist, ``curl`` calls answer through the HTTP API, the OpenTelemetry
  environment of configuration.md gives what it says (``pitchey-trace config``) and the
  ``logpush setup`` output shown in exporters.md is the real one.
* ``EXCLUDED`` lists the blocks that cannot run here, each with its reason (none at present).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The user docs whose blocks are checked here.
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name not in ("performance.md", "sanitizing.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # first line of the code, 1-based
    lang: str
    code: str

    @property
    def key(self) -> tuple[str, str]:
        """(page, its first line): its first line, not counting a leading
        ``import pitchey_trace as pt`` (most blocks start with it)."""
        lines = [s.strip() for s in self.code.splitlines() if s.strip()]
        if len(lines) > 1 and lines[0] == "import pitchey_trace as pt":
            lines = lines[1:]
        return self.page, lines[0] if lines else ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: str) -> list[Block]:
    out: list[Block] = []
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, body = len(m.group("indent")), []
        j = i + 1
        while not lines[j].strip().startswith("```"):
            body.append(lines[j][indent:])
            j += 1
        out.append(Block(page, i + 2, m.group("lang"), "\n".join(body) + "\n"))
        i = j + 1
    return out


def all_blocks(*langs: str) -> list[Block]:
    return [b for page in PAGES for b in read_blocks(page) if b.lang in langs]


def d(text: str) -> str:
    """A piece of setup code written indented in the table below, dedented."""
    return textwrap.dedent(text).strip("\n") + "\n"


@dataclass(frozen=True)
class Setup:
    prefix: str = ""
    suffix: str = ""
    replace: tuple[tuple[str, str], ...] = ()
    claims: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # "pg" (PostgreSQL), "aws" (moto)
    private_tmp: bool = True  # TMPDIR in the test's own directory
    stdout: str = ""  # a pattern the block's output must contain


# ---------------------------------------------------------------------------------------------
# Setup pieces shared by several blocks
# ---------------------------------------------------------------------------------------------

MEMORY = """
import pitchey_trace as pt
from pitchey_trace.exporters import InMemoryExporter

memory = InMemoryExporter()
"""
CONFIGURED = MEMORY + 'pt.configure(service="docs", exporters=[memory])\n'
PLACEHOLDER_EXPORTERS = (("exporters=[...]", "exporters=[memory]"),)

# an OTLP collector (and any HTTP endpoint that takes POSTs): what it received, decoded
COLLECTOR = """
import os
from tests.integration.exporters.servers import RecordingServer

collector = RecordingServer()
os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
"""

# an HTTP server for outgoing calls: answers GET with 200, keeps the headers it got
HTTP_SERVER = """
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        received.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


_server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
threading.Thread(target=_server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{_server.server_port}/pitches/7"
"""

# PostgreSQL: a private schema holding the table the blocks query
PG = """
import os

import psycopg

dsn = os.environ["DOCS_PG_DSN"]
with psycopg.connect(dsn, autocommit=True) as _c:
    _c.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
    _c.execute("INSERT INTO pitches VALUES (1, 'Pitch')")
pid, title = 1, "Renamed"
"""

# the bucket the archive blocks write to, empty (moto's S3, through AWS_ENDPOINT_URL)
BUCKET = """
import boto3
import botocore.exceptions

s3 = boto3.client("s3")
try:
    s3.create_bucket(Bucket="pitchey-logs")
except botocore.exceptions.ClientError:
    pass
for _o in s3.list_objects_v2(Bucket="pitchey-logs").get("Contents", []):
    s3.delete_object(Bucket="pitchey-logs", Key=_o["Key"])


def keys():
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="pitchey-logs").get("Contents", []))
"""

# a traced gRPC server and a unary call to it, through `server` and `channel`
GRPC_CALL = """
import grpc

_echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("docs.Echo", {"Say": _echo}),))
server.start()
assert channel.unary_unary("/docs.Echo/Say")(b"hi") == b"hi"
channel.close()
server.stop(None)
pt.shutdown()
by_kind = {s["kind"]: s for s in memory.spans()}
assert by_kind["client"]["name"] == by_kind["server"]["name"] == "docs.Echo/Say", by_kind
assert by_kind["server"]["parent_span_id"] == by_kind["client"]["span_id"]
"""

FREE_PORT = """
import socket

with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    _free_port = _s.getsockname()[1]
"""

SETUPS: dict[tuple[str, str], Setup] = {
    # ---------------------------------------------------------------------- quickstart.md
    ("quickstart.md", "pt.configure("): Setup(
        suffix="""
        assert pt.is_configured()
        with pt.span("load_pitch"):
            pass
        pt.shutdown()  # the console exporter prints the rollup of every span (before sampling)
        """,
        stdout='^{"schema":1,"type":"rollup","record_id":"[0-9a-f]{16}","service":"pitch-api",'
        '"environment":"production","operation":"load_pitch",',
    ),
    ("quickstart.md", 'with pt.span("load_pitch", attributes={"pitch.id": 42}) as s:'): Setup(
        prefix=CONFIGURED,
        suffix="""
        import asyncio

        asyncio.run(fetch_user(17))
        charge({"id": 3})
        pt.shutdown()
        spans = {s["name"]: s for s in memory.spans()}
        assert spans["load_pitch"]["attributes"] == {"pitch.id": 42}
        assert [e["name"] for e in spans["load_pitch"]["events"]] == ["cache_miss"]
        assert spans["render"]["parent_span_id"] == spans["load_pitch"]["span_id"]
        assert spans["__main__.fetch_user"]["kind"] == "internal"
        assert spans["charge"]["kind"] == "client"
        """,
    ),
    ("quickstart.md", "headers = {}"): Setup(
        prefix=CONFIGURED
        + d("""
        class request:  # the incoming request of a web framework
            headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        """),
        suffix="""
        assert headers == {}  # no span was current: nothing to send
        assert pt.extract({"traceparent": "00-not-a-valid-traceparent"}) is None
        assert pt.extract({}) is None
        pt.shutdown()
        [server] = memory.spans()
        assert (server["trace_id"], server["parent_span_id"], server["kind"]) == (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            "server",
        )
        """,
    ),
    ("quickstart.md", "from pitchey_trace.testing import capture_spans"): Setup(
        prefix="""
        import pitchey_trace as pt


        @pt.traced(name="charge", kind=pt.SpanKind.CLIENT)
        def charge():
            pass


        def checkout():
            with pt.span("checkout"):
                charge()
        """,
        suffix="test_checkout()",
    ),
    # ---------------------------------------------------------------------- configuration.md
    ("configuration.md", "from pitchey_trace.otel import install"): Setup(
        prefix=MEMORY,
        replace=PLACEHOLDER_EXPORTERS,
        suffix="""
        from opentelemetry import trace

        with trace.get_tracer("pitch-lib", "1.2").start_as_current_span("lib work"):
            with pt.span("own work"):
                pass
        pt.shutdown()
        spans = {s["name"]: s for s in memory.spans()}
        assert spans["lib work"]["attributes"]["otel.scope.name"] == "pitch-lib"
        assert spans["own work"]["parent_span_id"] == spans["lib work"]["span_id"]
        """,
    ),
    # ---------------------------------------------------------------------- exporters.md
    (
        "exporters.md",
        "from pitchey_trace.exporters import LogpushExporter, LocalArchiveExporter, OTLPExporter",
    ): Setup(
        needs=("aws",),
        prefix=BUCKET
        + COLLECTOR
        + d("""
        with open("logpush.toml", "w") as _f:
            _f.write('region = "us-east-1"\\nbucket = "pitchey-logs"\\n')
        """),
        replace=(
            ("/etc/pitchey-trace/logpush.toml", "logpush.toml"),
            ("/var/spool/pitchey-trace", "spool"),
            ('OTLPExporter("http://otel-collector:4318")', "OTLPExporter(collector.url)"),
        ),
        suffix="""
        with pt.span("checkout"):  # an error: kept whatever the 10% sampling decided
            try:
                with pt.span("charge"):
                    raise ValueError("card declined")
            except ValueError:
                pass
        assert pt.shutdown()
        assert any(k.startswith("traces/") for k in keys()), keys()
        assert any(k.startswith("performance/") for k in keys()), keys()
        assert {r.path for r in collector.requests} == {"/v1/traces"}
        """,
    ),
    ("exporters.md", "from pitchey_trace.processors import Router, audit_category"): Setup(
        needs=("aws",),
        prefix=BUCKET
        + d("""
        import pitchey_trace as pt
        from pitchey_trace.exporters import LogpushExporter
        """),
        suffix="""
        pt.emit_audit("login", "users", "denied", category="security")
        assert pt.shutdown()
        assert [k.split("/")[0] for k in keys()] == ["audit", "security"], keys()
        """,
    ),
    (
        "exporters.md",
        'OTLPExporter("http://collector:4318", spool_dir="/var/lib/pitch-api/otlp-spool")',
    ): Setup(
        prefix="from pitchey_trace.exporters import OTLPExporter",
        replace=(("/var/lib/pitch-api/otlp-spool", "otlp-spool"),),
        suffix="""
        import os
        import stat

        assert stat.S_IMODE(os.stat("otlp-spool").st_mode) == 0o700
        """,
    ),
    ("exporters.md", "from pitchey_trace.exporters import OTLPExporter, OTLPMetricsExporter"): Setup(
        prefix="import pitchey_trace as pt\n" + COLLECTOR,
        suffix="""
        with pt.span("GET /pitches/{id}"):
            pass
        assert pt.shutdown()
        assert "/v1/metrics" in [r.path for r in collector.requests]
        """,
    ),
    ("exporters.md", "from pitchey_trace.exporters import OTLPExporter, OTLPLogExporter"): Setup(
        prefix="import pitchey_trace as pt\n" + COLLECTOR,
        suffix="""
        pt.emit_audit("login", "users", "success")
        with pt.span("GET /pitches/{id}"):
            pass
        assert pt.shutdown()
        assert sorted(r.path for r in collector.requests) == ["/v1/logs", "/v1/traces"]
        """,
    ),
    ("exporters.md", "from pitchey_trace.exporters import ZipkinExporter"): Setup(
        prefix="import pitchey_trace as pt\n" + COLLECTOR,
        replace=(('"http://zipkin:9411/api/v2/spans"', 'collector.url + "/api/v2/spans"'),),
        suffix="""
        with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER):
            pass
        assert pt.shutdown()
        [request] = collector.requests
        assert request.path == "/api/v2/spans"
        [span] = request.json()
        assert (span["name"], span["kind"], span["localEndpoint"]) == (
            "GET /pitches/{id}",
            "SERVER",
            {"serviceName": "pitch-api"},
        )
        """,
    ),
    # ---------------------------------------------------------------------- database.md
    ("database.md", "from pitchey_trace.db import instrument, traced_query, traced_transaction"): Setup(
        needs=("pg",),
        prefix=PG + MEMORY + "conn = psycopg.connect(dsn)\n",
        replace=PLACEHOLDER_EXPORTERS,
        suffix="""
        assert rows == [(1, "Pitch")]
        get_pitch_with_details(conn, pid)
        pt.shutdown()
        names = [s["name"] for s in memory.spans()]
        # (the SELECT opened a transaction on this non-autocommit connection: the block is a savepoint)
        assert names == ["SELECT pitches", "SAVEPOINT", "get_pitch_with_details"], names
        """,
    ),
    ("database.md", "with traced_transaction(conn) as tx:  # tx is psycopg's Transaction"): Setup(
        needs=("pg",),
        prefix=PG
        + CONFIGURED
        + d("""
        from pitchey_trace.db import traced_transaction

        conn = psycopg.connect(dsn)
        aconn = await psycopg.AsyncConnection.connect(dsn)
        """),
        replace=(
            ('"UPDATE ..."', '"UPDATE pitches SET title = %s WHERE id = %s", (title, pid)'),
            ('"INSERT ..."', "\"INSERT INTO pitches VALUES (2, 'Second')\""),
        ),
        suffix="""
        transfer(conn, 10)
        assert isinstance(tx, psycopg.Transaction)
        assert conn.execute("SELECT count(*) FROM pitches").fetchone() == (2,)
        pt.shutdown()
        spans = memory.spans()
        by_name = {s["name"]: s for s in spans}
        outer = next(s for s in spans if s["name"] == "TRANSACTION")
        assert by_name["SAVEPOINT"]["parent_span_id"] == outer["span_id"]
        assert by_name["INSERT pitches"]["parent_span_id"] == by_name["SAVEPOINT"]["span_id"]
        assert by_name["checkout"]["attributes"]["db.transaction.outcome"] == "commit"
        assert [s["name"] for s in spans].count("TRANSACTION") == 2  # the block and transfer()
        """,
    ),
    ("database.md", "from psycopg_pool import AsyncConnectionPool, ConnectionPool"): Setup(
        needs=("pg",),
        prefix=PG + CONFIGURED + "conninfo = dsn\n",
        suffix="""
        with pool.connection() as c:
            c.execute("SELECT title FROM pitches")
        async with apool.connection() as c:
            await c.execute("SELECT id FROM pitches")
        pool.close()
        await apool.close()
        pt.shutdown()
        # each pool.connection() block ends with the pool's commit: a COMMIT span
        names = sorted(s["name"] for s in memory.spans())
        assert names == ["COMMIT", "COMMIT", "SELECT pitches", "SELECT pitches"]
        """,
    ),
    (
        "database.md",
        "import asyncpg",
    ): Setup(
        needs=("pg",),
        prefix=PG + CONFIGURED + 'dsn = os.environ["DOCS_PG_URL"]  # asyncpg takes URLs\n',
        suffix="""
        assert [tuple(r) for r in rows] == [(1, "Pitch")]
        async with pool.acquire() as c:
            assert await c.fetchval("SELECT count(*) FROM pitches") == 1
        await pool.close()
        await conn.close()
        pt.shutdown()
        names = [s["name"] for s in memory.spans()]
        assert names == ["SELECT pitches", "checkout", "SELECT pitches"], names
        """,
    ),
    ("database.md", "import psycopg2"): Setup(
        needs=("pg",),
        prefix=PG + CONFIGURED,
        suffix="""
        assert rows == [(1, "Renamed")]
        pt.shutdown()
        spans = {s["name"]: s for s in memory.spans()}
        assert spans["UPDATE pitches"]["parent_span_id"] == spans["TRANSACTION"]["span_id"]
        assert spans["TRANSACTION"]["attributes"]["db.transaction.outcome"] == "commit"
        assert spans["SELECT pitches"]["parent_span_id"] is None
        """,
    ),
    ("database.md", "from sqlalchemy import create_engine, event"): Setup(
        needs=("pg",),
        prefix=CONFIGURED + "import os\n",
        replace=(
            (
                '"postgresql+psycopg://..."',
                'os.environ["DOCS_PG_BASE_URL"].replace("postgresql:", "postgresql+psycopg:")',
            ),
            (
                '"postgresql+asyncpg://..."',
                'os.environ["DOCS_PG_BASE_URL"].replace("postgresql:", "postgresql+asyncpg:")',
            ),
        ),
        suffix="""
        from sqlalchemy import text

        with engine.connect() as c:
            assert c.execute(text("SELECT 1")).scalar() == 1
        async with aengine.connect() as c:
            assert (await c.execute(text("SELECT 2"))).scalar() == 2
        await aengine.dispose()
        engine.dispose()
        pt.shutdown()
        texts = [s["attributes"].get("db.query.text") for s in memory.spans()]
        assert texts.count("SELECT ?") == 2, texts
        """,
    ),
    ("database.md", "from django.db.backends.signals import connection_created"): Setup(
        needs=("pg",),
        prefix=PG
        + CONFIGURED
        + d("""
        import django
        from django.conf import settings
        from psycopg.conninfo import conninfo_to_dict

        _p = conninfo_to_dict(dsn)
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "HOST": _p["host"],
                    "PORT": _p["port"],
                    "USER": _p["user"],
                    "PASSWORD": _p.get("password", ""),
                    "NAME": _p["dbname"],
                    "OPTIONS": {"options": _p["options"]},
                }
            }
        )
        django.setup()
        """),
        suffix="""
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SELECT title FROM pitches WHERE id = %s", [pid])
            assert cur.fetchall() == [("Pitch",)]
        pt.shutdown()
        assert "SELECT pitches" in [s["name"] for s in memory.spans()]
        """,
    ),
    ("database.md", "from pitchey_trace import db"): Setup(
        suffix="""
        options = db.configure()
        assert options.sensitive_tables == {"users", "payments", "auth_tokens"}
        assert (options.sql_comments, options.capture_parameters) == (False, False)
        assert (options.slow_threshold_ms, options.max_parameter_length) == (1000, 256)
        """,
    ),
    ("database.md", "from tests.support.pgserver import postgres_server, scratch_schema"): Setup(
        # (as root the server runs as the postgres user, who cannot enter pytest's directories)
        private_tmp=False,
        suffix="""
        assert server.dsn and server.port
        assert "search_path" in dsn
        """,
    ),
    ("database.md", "from pitchey_trace.redis import instrument_redis"): Setup(
        prefix=CONFIGURED,
        suffix="""
        import redis

        from tests.support.redisserver import redis_server

        with redis_server() as port:
            client = redis.Redis(port=port)
            client.set("session:u-17", "token")
            assert client.get("session:u-17") == b"token"
        pt.shutdown()
        assert [(s["name"], s["attributes"]["db.query.text"]) for s in memory.spans()] == [
            ("SET", "SET ? ?"),
            ("GET", "GET ?"),
        ]
        """,
    ),
    # ---------------------------------------------------------------------- middleware.md
    (
        "middleware.md",
        "from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware, init_aiohttp, "
        "init_flask",
    ): Setup(
        prefix=MEMORY
        + d("""
        from aiohttp import web
        from flask import Flask
        from starlette.applications import Starlette

        app = Starlette()
        flask_app = Flask("pitch_api")
        aiohttp_app = web.Application()


        @flask_app.get("/pitches/<int:pitch_id>")
        def pitch(pitch_id):
            return {"id": pitch_id}


        def application(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        """),
        replace=PLACEHOLDER_EXPORTERS,
        suffix="""
        from werkzeug.test import Client

        plain = Client(application).get("/orders/7")
        assert plain.data == b"ok"
        plain.close()
        flask = flask_app.test_client().get("/pitches/3")
        assert flask.json == {"id": 3}
        pt.shutdown()
        spans = {s["name"]: s for s in memory.spans()}
        assert sorted(spans) == ["GET", "GET /pitches/<int:pitch_id>"], spans
        assert plain.headers["X-Trace-Id"] == spans["GET"]["trace_id"]
        assert flask.headers["X-Trace-Id"] == spans["GET /pitches/<int:pitch_id>"]["trace_id"]
        """,
    ),
    ("middleware.md", "import urllib.request"): Setup(
        prefix=CONFIGURED + HTTP_SERVER,
        suffix="""
        pt.shutdown()
        [span] = memory.spans()
        assert (span["name"], span["kind"]) == ("GET", "client")
        assert span["attributes"]["http.response.status_code"] == 200
        [headers] = received
        assert headers["traceparent"].split("-")[1:3] == [span["trace_id"], span["span_id"]]
        """,
    ),
    (
        "middleware.md",
        "from pitchey_trace.web import instrument_httpx, instrument_requests, instrument_urllib, "
        "instrument_urllib3",
    ): Setup(
        prefix=CONFIGURED + HTTP_SERVER,
        suffix="""
        import urllib.request

        import httpx
        import requests
        import urllib3

        assert httpx.get(url).status_code == 200
        assert requests.get(url, timeout=10).status_code == 200
        assert urllib.request.urlopen(url).status == 200
        assert urllib3.PoolManager().request("GET", url).status == 200
        pt.shutdown()
        spans = memory.spans()
        assert [(s["kind"], s["attributes"]["http.response.status_code"]) for s in spans] == [
            ("client", 200)
        ] * 4
        assert sorted(h["traceparent"].split("-")[2] for h in received) == sorted(
            s["span_id"] for s in spans
        )
        """,
    ),
    ("middleware.md", "from pitchey_trace.botocore import sqs_message_context"): Setup(
        needs=("aws",),
        prefix=CONFIGURED
        + d("""
        import boto3

        from pitchey_trace.botocore import instrument_botocore

        instrument_botocore()
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="docs-orders")["QueueUrl"]
        with pt.span("place order") as sent:
            sqs.send_message(QueueUrl=url, MessageBody='{"order": 17}')
        handled = []


        def handle(message):
            handled.append(pt.current_span().trace_id_hex)
        """),
        suffix="assert handled == [sent.trace_id_hex], handled",
    ),
    ("middleware.md", "from pitchey_trace.grpc import instrument_grpc"): Setup(
        prefix=CONFIGURED,
        suffix=d("""
        from concurrent import futures

        import grpc

        server = grpc.server(futures.ThreadPoolExecutor(2))
        channel = grpc.insecure_channel(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        """)
        + GRPC_CALL,
    ),
    ("middleware.md", "import grpc"): Setup(
        prefix=CONFIGURED
        + FREE_PORT
        + d("""
        from concurrent import futures

        pool = futures.ThreadPoolExecutor(2)
        target = f"127.0.0.1:{_free_port}"
        """),
        suffix="server.add_insecure_port(target)\n" + GRPC_CALL,
    ),
    ("middleware.md", "from pitchey_trace.amqp import instrument_amqp"): Setup(
        prefix="""
        import aio_pika
        import pika.adapters.blocking_connection

        def publishers():
            return pika.adapters.blocking_connection.BlockingChannel.basic_publish, aio_pika.Exchange.publish


        plain = publishers()
        """,
        suffix="""
        from pitchey_trace.amqp import uninstrument_amqp

        traced = publishers()
        assert traced[0] is not plain[0]
        assert traced[1] is not plain[1]
        uninstrument_amqp()
        assert publishers() == plain
        """,
    ),
    ("middleware.md", "from pitchey_trace.celery import instrument_celery"): Setup(
        prefix=MEMORY,
        replace=PLACEHOLDER_EXPORTERS,
        suffix="""
        from celery import Celery

        tasks = Celery("pitch_worker", broker="memory://")


        @tasks.task
        def notify(pitch_id):
            return pitch_id


        with pt.span("POST /pitches") as request:
            notify.delay(7)
        assert notify.apply(args=(7,)).get() == 7
        pt.shutdown()
        spans = {s["name"]: s for s in memory.spans()}
        send, run = spans["send pitch_worker.notify"], spans["run pitch_worker.notify"]
        assert (send["kind"], send["parent_span_id"]) == ("producer", request.span_id_hex)
        assert run["kind"] == "consumer"
        """,
    ),
    ("middleware.md", "import logging"): Setup(
        prefix=CONFIGURED,
        suffix="""
        import io

        handler.setStream(io.StringIO())
        log = logging.getLogger("pitch_api")
        log.addHandler(handler)
        log.propagate = False
        with pt.span("GET /pitches/{id}") as span:
            log.warning("pitch %s not found", 7)
        log.warning("no request")
        first, second = handler.stream.getvalue().splitlines()
        assert first.endswith(f"[trace_id={span.trace_id_hex} span_id={span.span_id_hex}] pitch 7 not found")
        assert second.endswith("[trace_id= span_id=] no request"), second
        """,
    ),
    ("middleware.md", "import structlog"): Setup(
        prefix=CONFIGURED,
        suffix="""
        import io
        import json

        out = io.StringIO()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
        with pt.span("checkout") as span:
            structlog.get_logger().info("paid", order=17)
        event = json.loads(out.getvalue())
        assert (event["event"], event["order"]) == ("paid", 17)
        assert (event["trace_id"], event["span_id"]) == (span.trace_id_hex, span.span_id_hex)
        """,
    ),
    ("middleware.md", "from pitchey_trace.web import instrument_logging"): Setup(
        prefix=CONFIGURED,
        suffix="""
        import logging

        log = logging.getLogger("pitch_api")
        log.setLevel(logging.DEBUG)
        with pt.span("render"):
            log.info("cache cold")
            log.debug("below the level")
        pt.shutdown()
        [span] = memory.spans()
        events = [(e["name"], e["attributes"]["log.message"]) for e in span["events"]]
        assert events == [("log", "cache cold")]
        """,
    ),
    ("middleware.md", "from pitchey_trace.exporters import OTLPExporter, OTLPLogExporter"): Setup(
        prefix=COLLECTOR,
        suffix="""
        import logging

        log = logging.getLogger("pitch_api")
        log.setLevel(logging.INFO)
        with pt.span("POST /pay"):
            log.info("receipt sent to bob@example.com")
        assert pt.shutdown()
        [logs] = [r for r in collector.requests if r.path == "/v1/logs"]
        assert b"receipt sent to [EMAIL]" in logs.body and b"bob@example.com" not in logs.body
        """,
    ),
    # ---------------------------------------------------------------------- propagation.md
    ("propagation.md", "from pitchey_trace import propagation"): Setup(
        prefix=CONFIGURED
        + 'request_headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}\n',
        suffix="""
        assert headers == {}  # no current span
        assert ctx.trace_id_hex == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.is_remote
        pt.shutdown()
        [span] = memory.spans()
        assert (span["trace_id"], span["parent_span_id"]) == (ctx.trace_id_hex, "00f067aa0ba902b7")
        """,
    ),
    ("propagation.md", "ctx = span.context"): Setup(
        prefix=CONFIGURED
        + d("""
        from pitchey_trace import propagation

        headers = {}
        span = pt.start_span("publish", kind=pt.SpanKind.PRODUCER)
        """),
        suffix="""
        assert headers["tracestate"] == f"pitchey={span.span_id_hex}"
        assert headers["traceparent"].split("-")[1:3] == [span.trace_id_hex, span.span_id_hex]
        """,
    ),
    (
        "propagation.md",
        'with propagation.set_baggage({"user.id": "u-17"}, tenant="acme"):  # None removes a key',
    ): Setup(
        prefix=CONFIGURED + "from pitchey_trace import propagation\n",
        claims=('propagation.get_baggage("tenant")', "propagation.baggage_entries()"),
        suffix="""
        with pt.span("request"):
            with propagation.set_baggage({"user.id": "u-17"}, tenant="acme"):
                headers = {}
                propagation.inject(headers)
        assert headers["baggage"] == "user.id=u-17,tenant=acme"
        """,
    ),
    ("propagation.md", "from pitchey_trace import propagation as p"): Setup(
        prefix=CONFIGURED,
        suffix="""
        with pt.span("call"):
            p.inject(headers := {})
        assert headers == {}  # propagation off
        p.set_propagators(p.propagators_from_names("tracecontext,baggage,b3multi"))
        with pt.span("call") as span:
            p.inject(headers := {})
        assert (headers["x-b3-traceid"], headers["x-b3-spanid"]) == (span.trace_id_hex, span.span_id_hex)
        """,
    ),
    # ---------------------------------------------------------------------- analysis.md
    ("analysis.md", "from pitchey_trace.analysis import Archive, S3Source"): Setup(
        needs=("aws",),
        prefix=BUCKET
        + d("""
        from pitchey_trace.exporters import InMemoryExporter, LocalArchiveExporter
        from tests.support.analysis_data import make_traces

        data = make_traces()
        exporter = InMemoryExporter()  # what an InMemoryExporter holds after the run
        exporter.export(data.records)
        _local = LocalArchiveExporter("var/archive")
        _local.export(data.records)
        _local.shutdown()
        with open("logpush.toml", "w") as _f:
            _f.write('region = "us-east-1"\\nbucket = "pitchey-logs"\\n')
        trace_id = data.orders
        """),
        replace=(("/var/cache/pitchey", "cache"),),
        suffix="""
        assert [t["trace_id"] for t in Archive("var/archive").search(sort="duration")] == [
            data.orders,
            data.payment,
            data.hostile,
        ]
        assert archive.resolve(trace_id[:8]) == [trace_id]
        assert archive.trace(trace_id)["span_count"] == len(data.spans(trace_id))
        assert archive.analyze(trace_id)["bottleneck"]["name"] == "render"
        assert archive.trace("4bf92f3577b34da6a3ce929d0e0e4736") is None
        assert [g["exception_type"] for g in archive.errors(since="24h")] == ["ValueError"]
        """,
    ),
    ("analysis.md", "from pitchey_trace.analysis import Archive"): Setup(
        prefix="""
        from pitchey_trace.exporters import LocalArchiveExporter
        from tests.support.analysis_data import make_traces

        data = make_traces()
        _local = LocalArchiveExporter("var/archive")
        _local.export(data.records)
        _local.shutdown()
        """,
        suffix="""
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pages") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            found = (await client.get("/api/search", params={"name": "SELECT *"})).json()
            assert [t["trace_id"] for t in found] == [data.orders]
        """,
    ),
}

#: Blocks that cannot run in a unit test, with the reason. Keep it short and honest.
EXCLUDED: dict[tuple[str, str], str] = {}

# ---------------------------------------------------------------------------------------------
# Running a block
# ---------------------------------------------------------------------------------------------

RUNNER = """
import ast, asyncio, inspect, sys
from pitchey_trace import _safety
swallowed = []
_safety.swallowed_hook = lambda kind, exc: swallowed.append((kind, exc))
path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    code = compile(f.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if inspect.iscoroutine(result):
    asyncio.run(result)
import pitchey_trace
pitchey_trace.shutdown(10.0)
if swallowed:
    raise SystemExit(f"the SDK swallowed {len(swallowed)} internal error(s): {swallowed!r}")
"""


def with_claims(block: Block, claims: tuple[str, ...]) -> str:
    """The block with each claimed expression line turned into an assertion of the value its
    ``# <value>`` comment states."""
    lines = block.code.splitlines()
    for expr in claims:
        hits = [i for i, line in enumerate(lines) if line.split("  #")[0].strip() == expr]
        assert len(hits) == 1, f"{block.id}: claim {expr!r} found {len(hits)} times"
        line = lines[hits[0]]
        stated = line.split("  #", 1)[1].strip()
        ast.literal_eval(stated)  # (the comment must be a value)
        indent = line[: len(line) - len(line.lstrip())]
        lines[hits[0]] = f"{indent}assert ({expr}) == {stated}, ({expr!r}, {expr})"
    return "\n".join(lines) + "\n"


def program(block: Block, setup: Setup) -> str:
    code = with_claims(block, setup.claims)
    for old, new in setup.replace:
        assert old in code, f"{block.id}: {old!r} is no longer in the block"
        code = code.replace(old, new)
    return (
        textwrap.dedent(setup.prefix).strip()
        + f"\n\n# ----- docs/{block.page}, line {block.line} -----\n"
        + code
        + "# ----- checks -----\n"
        + textwrap.dedent(setup.suffix).strip()
        + "\n"
    )


def subprocess_env(tmp_path: Path | None, extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PITCHEY_TRACE_", "OTEL_", "AWS_")) or k == "PITCHEY_TRACE_PURE_PYTHON"
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **extra)
    if tmp_path is not None:
        env["TMPDIR"] = str(tmp_path)
    return env


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    from tests.support.pgserver import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_env(pg_server: Any) -> Iterator[dict[str, str]]:
    """A private schema on the server, as the DSNs the blocks take."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.support.pgserver import scratch_schema

    with scratch_schema(pg_server.dsn) as dsn:
        p = conninfo_to_dict(dsn)
        auth = str(p["user"]) + (f":{p['password']}" if p.get("password") else "")
        base = f"postgresql://{auth}@{p['host']}:{p['port']}/{p['dbname']}"
        schema = str(p["options"]).split("search_path=")[1]
        yield {"DOCS_PG_DSN": dsn, "DOCS_PG_URL": f"{base}?search_path={schema}", "DOCS_PG_BASE_URL": base}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    import logging

    from tests.integration.exporters.servers import start_moto

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str) -> dict[str, str]:
    from tests.integration.exporters.servers import S3_ENV

    return {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}


def python_blocks() -> list[Any]:
    params = []
    for block in all_blocks("python", "py"):
        if block.key in EXCLUDED:
            continue
        needs = SETUPS.get(block.key, Setup()).needs
        marks = [pytest.mark.integration] if needs else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", python_blocks())
def test_python_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    setup = SETUPS.get(block.key, Setup())
    extra: dict[str, str] = {}
    for need in setup.needs:
        extra.update(request.getfixturevalue({"pg": "pg_env", "aws": "aws_env"}[need]))
    source = program(block, setup)
    script = tmp_path / "snippet.py"
    script.write_text(source, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(script)],
        cwd=work,
        env=subprocess_env(tmp_path if setup.private_tmp else None, extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(source.splitlines(), 1))
    assert proc.returncode == 0, (
        f"docs/{block.page} line {block.line} failed (exit {proc.returncode})\n"
        f"--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}\n"
        f"--- program ---\n{numbered}"
    )
    assert re.search(setup.stdout, proc.stdout, re.MULTILINE), proc.stdout


def test_setups_and_exclusions_name_real_blocks() -> None:
    """Every entry points at a block that exists (a changed first line must update the entry),
    and a block's key is unique in its page."""
    keys = [b.key for b in all_blocks("python", "py")]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert not (set(SETUPS) | set(EXCLUDED)) - set(keys), (set(SETUPS) | set(EXCLUDED)) - set(keys)
    assert not set(SETUPS) & set(EXCLUDED)
    assert len(keys) > 30  # (the extraction finds the blocks)


def test_json_blocks_are_json() -> None:
    blocks = all_blocks("json")
    assert blocks
    for block in blocks:
        json.loads(block.code)


# ---------------------------------------------------------------------------------------------
# Shell blocks
# ---------------------------------------------------------------------------------------------

ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    where: str
    env: dict[str, str]
    argv: list[str]


def shell_commands(trace_id: str = "4bf92f3577b34da6a3ce929d0e0e4736") -> list[Command]:
    out: list[Command] = []
    for block in all_blocks("sh", "bash"):
        text = block.code.replace("<trace id>", trace_id).replace("\\\n", " ")
        for n, line in enumerate(text.splitlines()):
            words = shlex.split(line, comments=True)
            env = {}
            while words and ENV_ASSIGNMENT.match(words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words:
                out.append(Command(f"{block.id} (+{n})", env, words))
    return out


def test_shell_blocks_use_real_commands_flags_and_extras(tmp_path: Path) -> None:
    """Every command of the sh/bash blocks parses: ``pitchey-trace`` with the real parser (no
    unknown subcommand or flag), ``pip install`` with extras the package has; nothing else is
    there but ``curl`` calls of the HTTP API and the configuration page's ``python app.py``
    (both run in tests below)."""
    from pitchey_trace.cli import build_parser

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    kinds: dict[str, int] = {}
    for cmd in shell_commands():
        kinds[cmd.argv[0]] = kinds.get(cmd.argv[0], 0) + 1
        if cmd.argv[0] == "pitchey-trace":
            try:
                build_parser().parse_args(cmd.argv[1:])
            except SystemExit as exc:
                pytest.fail(f"{cmd.where}: {shlex.join(cmd.argv)} is refused (exit {exc.code})")
        elif cmd.argv[:2] == ["pip", "install"]:
            for spec in cmd.argv[2:]:
                m = re.fullmatch(r"pitchey-trace\[([\w,-]+)\]", spec)
                assert m, f"{cmd.where}: {spec}"
                assert set(m.group(1).split(",")) <= extras, f"{cmd.where}: {spec}"
        else:
            assert cmd.argv[0] in ("curl", "python"), f"{cmd.where}: unknown command {cmd.argv}"
    assert kinds["pitchey-trace"] > 20
    assert set(kinds) == {"pitchey-trace", "pip", "curl", "python"}


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, Any]:
    from pitchey_trace.exporters import LocalArchiveExporter
    from tests.support.analysis_data import make_traces

    data = make_traces()
    exporter = LocalArchiveExporter(tmp_path / "archive")
    assert exporter.export(data.records)
    exporter.shutdown()
    return tmp_path / "archive", data


ARCHIVE_COMMANDS = ("search", "show", "perf", "errors", "deps", "logs", "overview", "audit")


@pytest.mark.integration
def test_archive_commands_of_the_docs_run(
    archive: tuple[Path, Any],
    tmp_path: Path,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The archive commands of quickstart.md and analysis.md run (exit 0) on an archive
    directory, and on the same records in S3 for the ``--s3-config`` lines; ``show`` prints
    what analysis.md shows."""
    import boto3

    from pitchey_trace.cli import main
    from pitchey_trace.exporters import LogpushExporter

    root, data = archive
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    bucket = "docs-cli-archive"
    boto3.client("s3").create_bucket(Bucket=bucket)
    config = tmp_path / "logpush.toml"
    config.write_text(f'region = "us-east-1"\nbucket = "{bucket}"\n')
    logpush = LogpushExporter.from_config(config, spool_dir=tmp_path / "spool")
    assert logpush.export(data.records)
    logpush.shutdown()

    ran = 0
    for cmd in shell_commands(trace_id=data.orders):
        if cmd.argv[0] != "pitchey-trace" or cmd.argv[1] not in ARCHIVE_COMMANDS:
            continue
        # (the docs' service is the test archive's: a service the window lacks gets a note)
        argv = [
            {"var/archive": str(root), "logpush.toml": str(config), "pitch-api": "shop-api"}.get(
                a, a
            ).replace("4bf92f3577b34da6a3ce929d0e0e4736", data.orders)
            for a in cmd.argv[1:]
        ]
        argv = [str(tmp_path / "cache") if a.startswith("~/") else a for a in argv]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), f"{cmd.where}: {shlex.join(cmd.argv)}\n{out}{err}"
        ran += 1
        if argv[0] == "show":
            lines = out.splitlines()
            assert re.fullmatch(
                rf"trace {data.orders}  [\d.]+ms  11 spans  0 errors  services: shop-api", lines[0]
            )
            assert lines[1].endswith("   (* critical path, ! error)")
            assert "bottleneck: render (shop-api): 48.0ms of its own time, 40% of the trace" in lines
            assert "database: 6 queries, 48.0ms" in lines
    assert ran >= 15


def test_shown_waterfall_matches_the_doc_sample(
    archive: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """analysis.md's sample of ``show``: the same lines, in the same layout."""
    from pitchey_trace.cli import main

    [sample] = [b.code for b in read_blocks("analysis.md") if b.code.startswith("trace ")]
    root, data = archive
    assert main(["show", data.hostile, "-a", str(root)]) == 0
    shown = capsys.readouterr().out.splitlines()
    expected = sample.splitlines()
    assert len(shown[0].split("  ")) == len(expected[0].split("  "))  # trace, time, spans, errors, services
    assert shown[1].split("   ")[1] == expected[1].split("   ")[1]
    bar = re.compile(r"^\|[# ]{40}\|  [* ] ")
    assert all(bar.match(line) for line in expected[3:6])
    assert all(bar.match(line) for line in shown[3:5])
    assert re.fullmatch(r"bottleneck: .+ \(.+\): [\d.]+ms of its own time, \d+% of the trace", expected[7])
    assert [line for line in shown if line.startswith("bottleneck: ")] == [
        "bottleneck: <img src=x onerror=alert(1)> (shop-api): 2.00ms of its own time, 50% of the trace"
    ]


def test_curl_calls_of_the_http_api_answer(archive: tuple[Path, Any]) -> None:
    """analysis.md's ``curl`` calls answer 200 with a list of traces."""
    import asyncio

    import httpx

    from pitchey_trace.analysis import Archive
    from pitchey_trace.analysis.api import create_app

    root, data = archive
    urls = [c.argv[1] for c in shell_commands() if c.argv[0] == "curl"]
    assert urls
    assert all(u.startswith("http://127.0.0.1:8080/api/") for u in urls), urls

    async def get_all(paths: list[str]) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(Archive(root)))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            return [await client.get(path) for path in paths]

    probe = "/api/search?attr=db.system.name=postgresql&sort=duration"
    *answers, found = asyncio.run(get_all([*urls, probe]))
    for url, answer in zip(urls, answers, strict=True):
        assert answer.status_code == 200, (url, answer.text)
        assert isinstance(answer.json(), list)
    assert [t["trace_id"] for t in found.json()] == [data.orders]


def test_opentelemetry_environment_of_configuration_md(tmp_path: Path) -> None:
    """configuration.md's ``OTEL_* ... python app.py``: ``pitchey-trace config`` (what a plain
    ``pt.configure()`` makes of that environment) says what the page says."""
    [cmd] = [c for c in shell_commands() if c.argv[0] == "python"]
    assert cmd.where.startswith("configuration.md")
    assert cmd.argv == ["python", "app.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pitchey_trace.cli", "config", "--json"],
        env=subprocess_env(tmp_path, cmd.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["service"], info["environment"]) == ("pitch-api", "prod")
    assert info["resource"]["service.version"] == "2.4.1"
    assert [(e["type"], e["endpoint"]) for e in info["exporters"]] == [
        ("OTLPExporter", "http://collector:4318/v1/traces")
    ]
    assert info["propagators"] == ["TraceContextPropagator", "BaggagePropagator", "B3Propagator"]


@pytest.mark.integration
def test_logpush_setup_prints_what_exporters_md_shows(
    tmp_path: Path,
    aws_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """exporters.md's TOML file (its R2 endpoint replaced by moto's) gives the ``logpush setup``
    output shown there; a second run changes nothing and ``verify`` passes."""
    import boto3

    from pitchey_trace.cli import main
    from pitchey_trace.exporters import LogpushExporter

    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    blocks = read_blocks("exporters.md")
    [toml] = [b.code for b in blocks if b.lang == "toml"]
    [shown] = [b.code for b in blocks if b.code.startswith("$ pitchey-trace logpush setup")]
    command, *expected = shown.splitlines()
    # (moto refuses a CreateBucket without location constraint at region "auto", which R2 takes)
    toml = toml.replace("https://<account>.r2.cloudflarestorage.com", aws_env["AWS_ENDPOINT_URL"])
    toml = toml.replace('region = "auto"', 'region = "us-east-1"')
    config = tmp_path / "logpush.toml"
    config.write_text(toml)
    s3 = boto3.client("s3")
    for b in s3.list_buckets()["Buckets"]:  # a fresh start: the doc shows the bucket created
        if b["Name"] == "pitchey-logs":
            for o in s3.list_objects_v2(Bucket="pitchey-logs").get("Contents", []):
                s3.delete_object(Bucket="pitchey-logs", Key=o["Key"])
            s3.delete_bucket(Bucket="pitchey-logs")
    argv = shlex.split(command.removeprefix("$ "))[1:]
    argv[argv.index("logpush.toml")] = str(config)
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "created" not in again
    assert again.count("(unchanged)") == 4
    assert main(["logpush", "verify", "--config", str(config)]) == 0
    capsys.readouterr()
    exporter = LogpushExporter.from_config(config, spool_dir=tmp_path / "spool")
    assert exporter.datasets == {"traces", "audit", "performance", "logs"}
    exporter.shutdown()


# ---------------------------------------------------------------------------------------------
# Examples in docstrings the docs point to
# ---------------------------------------------------------------------------------------------


def test_testing_module_docstring_example() -> None:
    """``pitchey_trace.testing``'s example, with a ``checkout`` that calls ``charge``: records
    arrive as spans end, children first."""
    import pitchey_trace as pt
    import pitchey_trace.testing

    example = textwrap.dedent(pitchey_trace.testing.__doc__.split("\n\n", 1)[1])

    def charge() -> None:
        with pt.span("charge"):
            pass

    def checkout() -> None:
        with pt.span("checkout"):
            charge()

    namespace: dict[str, Any] = {"checkout": checkout}
    exec(compile(example, "pitchey_trace/testing.py", "exec"), namespace)  # noqa: S102
    namespace["test_checkout"]()
