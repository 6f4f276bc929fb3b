"""Auto-instrumentation and plain ``psycopg2.connect()``: COMMIT / ROLLBACK and 2PC spans.

psycopg2's C connection type takes no attributes, so the traced ``commit()`` / ``rollback()`` /
``tpc_*`` can only be set on instances of a Python subclass. Under ``pitchey-trace run`` /
``instrument_all()``, ``psycopg2.connect`` without a ``connection_factory`` (or with None) now
connects with such a subclass (:class:`pitchey_trace.db._psycopg2.connection`); everything a
program can see of its connection stays psycopg2's. Each program runs in a child process
against the real PostgreSQL of the tests: the instrumentation patches psycopg2 process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.integration.db import test_session16_tpc as session16

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# A server of session 16's with prepared transactions enabled, a schema with its `acct` table.
tpc_server = session16.tpc_server
tpc_dsn = session16.tpc_dsn

CLI = [sys.executable, "-m", "pitchey_trace.cli"]


def _environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PITCHEY_TRACE_", "OTEL_"))}
    if os.environ.get("PITCHEY_TRACE_PURE_PYTHON"):  # (the run's own choice, kept for the child)
        environ["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    environ.update(extra)
    return environ


def _run_cli(program: str, tmp_path: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    """Run ``program`` under ``pitchey-trace run`` (console exporter): its spans, in start
    order, and its stdout."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program))
    proc = subprocess.run(
        [*CLI, "run", "--exporter", "console", "--", sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=_environ(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    spans = [r for r in records if r["type"] == "span"]
    return sorted(spans, key=lambda s: s["start_time_unix_nano"]), proc.stdout


def _run_python(program: str, tmp_path: Path, *args: str) -> Any:
    """Run ``program`` with plain Python; the JSON it prints last."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=_environ(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ends(spans: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in spans if s["name"] in ("COMMIT", "ROLLBACK", "COMMIT PREPARED")]


PLAIN_PROGRAM = """
import sys
import psycopg2, psycopg2.extensions as ext
from psycopg2.extras import RealDictCursor
import pitchey_trace as pt

dsn = sys.argv[1]

def run(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)

with pt.span("job"):
    c = psycopg2.connect(dsn)                      # the DSN by position
    run(c, "INSERT INTO acct VALUES (1, 10)")
    c.commit()
    run(c, "INSERT INTO acct VALUES (2, 20)")
    c.rollback()
    with c:                                        # psycopg2's own block: commit()
        run(c, "INSERT INTO acct VALUES (3, 30)")
    c.tpc_begin(c.xid(1, "pt-auto-plain", "b"))
    run(c, "INSERT INTO acct VALUES (4, 40)")
    c.tpc_prepare()
    c.tpc_commit()
    print("TYPE", type(c).__name__, isinstance(c, ext.connection), flush=True)
    c.close()
    k = psycopg2.connect(**ext.parse_dsn(dsn))     # keyword arguments only
    run(k, "INSERT INTO acct VALUES (5, 50)")
    k.commit()
    k.close()
    p = psycopg2.connect(dsn, None, RealDictCursor)  # connection_factory None, by position
    with p.cursor() as cur:
        cur.execute("SELECT id FROM acct ORDER BY id")
        rows = cur.fetchall()
    p.rollback()
    p.close()
print("ROWS", [dict(r) for r in rows], flush=True)
"""


def test_plain_connect_under_run_traces_commit_rollback_and_2pc(tpc_dsn: str, tmp_path: Path) -> None:
    spans, stdout = _run_cli(PLAIN_PROGRAM, tmp_path, tpc_dsn)
    assert "TYPE connection True" in stdout
    assert "ROWS [{'id': 1}, {'id': 3}, {'id': 4}, {'id': 5}]" in stdout  # cursor_factory kept
    [job] = [s for s in spans if s["name"] == "job"]
    # commit(), rollback(), `with c:`, the prepared commit; the keyword connection's commit();
    # the rollback() ending the positional-None connection's SELECT
    assert _ends(spans) == ["COMMIT", "ROLLBACK", "COMMIT", "COMMIT PREPARED", "COMMIT", "ROLLBACK"]
    ends = [s for s in spans if s["name"] in ("COMMIT", "ROLLBACK")]
    assert {s["attributes"]["db.transaction.outcome"] for s in ends} == {"commit", "rollback"}
    assert {s["kind"] for s in ends} == {"client"}
    assert any(s["name"] == "TRANSACTION" for s in spans)  # tpc_begin ... tpc_prepare
    assert {s["trace_id"] for s in spans} == {job["trace_id"]}


COMPAT_PROGRAM = """
import gc, io, json, pickle, sys, uuid, weakref
import pitchey_trace.auto as auto
auto.instrument_all(configure=False)
import psycopg2, psycopg2.extensions as ext, psycopg2.extras as extras, psycopg2.pool
from pitchey_trace.testing import capture_spans

dsn = sys.argv[1]
out = {}
with capture_spans() as mem:
    c = psycopg2.connect(dsn)
    out["isinstance"] = isinstance(c, ext.connection)
    out["name"] = type(c).__name__
    out["repr"] = repr(c).startswith("<connection object at ")
    try:
        pickle.dumps(c)
    except TypeError:
        out["pickle"] = "TypeError"
    cur = c.cursor()
    cur.execute("CREATE EXTENSION IF NOT EXISTS hstore")
    c.commit()
    extras.register_uuid(None, c)
    extras.register_hstore(c)
    extras.register_default_json(c)
    cur.execute("CREATE TABLE t (id uuid, doc json, tags hstore, n int)")
    ids = [uuid.UUID(int=1), uuid.UUID(int=2)]
    extras.execute_values(
        cur, "INSERT INTO t VALUES %s", [(ids[0], '{"a": 1}', {"k": "v"}, 1), (ids[1], "[2]", {}, 2)]
    )
    rd = c.cursor(cursor_factory=extras.RealDictCursor)  # a cursor factory per cursor
    rd.execute("SELECT id, doc, tags, n FROM t ORDER BY n")
    out["rows"] = [[type(r["id"]).__name__, r["doc"], r["tags"], r["n"]] for r in rd.fetchall()]
    c.commit()
    out["committed"] = c.status == ext.STATUS_READY
    c.close()

    lg = psycopg2.connect(dsn, connection_factory=extras.LoggingConnection)  # explicit: kept
    lg.initialize(io.StringIO())
    rdc = psycopg2.connect(dsn, extras.RealDictConnection)  # explicit, by position: kept
    cur = rdc.cursor()
    cur.execute("SELECT 1 AS one")
    out["explicit"] = [type(lg).__name__, type(rdc).__name__, cur.fetchone()]
    lg.close()
    rdc.close()

    own = psycopg2.connect(dsn, connection_factory=ext.connection)  # the C type, asked for
    pool = psycopg2.pool.SimpleConnectionPool(1, 1, dsn)  # psycopg2's pools call connect()
    pooled = pool.getconn()
    with pooled:
        pooled.cursor().execute("SELECT 1")
    out["types"] = [type(own) is ext.connection, type(pooled).__module__]
    own.close()
    pool.closeall()

    a = psycopg2.connect(dsn, async_=1)
    extras.wait_select(a)
    acur = a.cursor()
    acur.execute("SELECT 7")
    extras.wait_select(a)
    try:
        a.commit()
    except psycopg2.ProgrammingError as exc:
        refused = str(exc)
    out["async"] = [type(a).__name__, a.async_, acur.fetchone()[0], refused]
    a.close()

    gc.disable()  # freed when the last reference goes, as the C type's instances are
    w = psycopg2.connect(dsn)
    ref = weakref.ref(w)
    with w:
        w.cursor().execute("SELECT 1")
    del w
    out["freed"] = ref() is None
    gc.enable()
names = [s["name"] for s in mem.spans()]
out["traced_cursor"] = names.count("SELECT t")  # the RealDictCursor's: an explicit factory too
out["spans"] = [name for name in names if name in ("COMMIT", "ROLLBACK")]
print(json.dumps(out))
"""


def test_auto_connection_keeps_psycopg2_behaviour(pg_dsn: str, tmp_path: Path) -> None:
    out = _run_python(COMPAT_PROGRAM, tmp_path, pg_dsn)
    assert out["isinstance"] is True
    assert out["name"] == "connection"  # the C type's name; only its module differs
    assert out["repr"] is True
    assert out["pickle"] == "TypeError"
    assert out["rows"] == [["UUID", {"a": 1}, {"k": "v"}, 1], ["UUID", [2], {}, 2]]
    assert out["committed"] is True
    assert out["explicit"] == ["LoggingConnection", "RealDictConnection", {"one": 1}]
    assert out["types"] == [True, "pitchey_trace.db._psycopg2"]
    assert out["traced_cursor"] == 1
    assert out["async"] == ["connection", True, 7, "commit cannot be used in asynchronous mode"]
    assert out["freed"] is True
    # the extension; the ROLLBACK register_hstore() ends its own oid query with; the table and
    # rows; the ROLLBACK of closing the RealDictConnection with its SELECT's transaction open;
    # the pooled connection's `with` block, the `with w:` block (the async commit was refused)
    assert out["spans"] == ["COMMIT", "ROLLBACK", "COMMIT", "ROLLBACK", "COMMIT", "COMMIT"]


SQLALCHEMY_PROGRAM = """
import json, sys
import pitchey_trace.auto as auto
auto.instrument_all(configure=False)
from sqlalchemy import create_engine, text
from pitchey_trace.testing import capture_spans

url, options = sys.argv[1], sys.argv[2]
engine = create_engine(url, connect_args={"options": options})
with capture_spans() as mem:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE s (id int)"))
        conn.execute(text("INSERT INTO s VALUES (1)"))
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO s VALUES (2)"))
        conn.rollback()
        kind = type(conn.connection.dbapi_connection).__name__
        count = conn.execute(text("SELECT count(*) FROM s")).scalar()
engine.dispose()
names = [s["name"] for s in mem.spans()]
print(json.dumps({"kind": kind, "count": count, "names": names}))
"""


def test_sqlalchemy_psycopg2_dialect_gets_commit_and_rollback_spans(pg_dsn: str, tmp_path: Path) -> None:
    p = conninfo_to_dict(pg_dsn)
    url = f"postgresql+psycopg2://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"
    out = _run_python(SQLALCHEMY_PROGRAM, tmp_path, url, str(p["options"]))
    assert out["kind"] == "connection"
    assert out["count"] == 1
    names = out["names"]
    assert names.count("INSERT s") == 2
    first, second = (i for i, name in enumerate(names) if name == "INSERT s")
    assert names[first + 1] == "COMMIT"  # the end of engine.begin()
    assert names[second + 1] == "ROLLBACK"  # the explicit rollback()


DJANGO_PROGRAM = """
import json, sys
sys.modules["psycopg"] = None  # Django's backend then uses psycopg2
import django
from django.conf import settings

db = json.loads(sys.argv[1])
settings.configure(
    INSTALLED_APPS=[],
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db["dbname"], "USER": db["user"], "HOST": db["host"], "PORT": db["port"],
        "OPTIONS": {"options": db["options"]},
    }},
)
django.setup()
from django.db import connection, transaction
from django.db.backends.postgresql.psycopg_any import is_psycopg3
import pitchey_trace as pt

with pt.span("job"):
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE d (id int)")
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO d VALUES (1)")
    try:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("INSERT INTO d VALUES (2)")
            raise KeyError("app")
    except KeyError:
        pass
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM d")
        count = cur.fetchone()[0]
print("DJANGO", is_psycopg3, type(connection.connection).__name__, count, flush=True)
"""


def test_django_psycopg2_backend_gets_commit_and_rollback_spans(pg_dsn: str, tmp_path: Path) -> None:
    params = conninfo_to_dict(pg_dsn)
    db = json.dumps({k: str(params[k]) for k in ("dbname", "user", "host", "port", "options")})
    spans, stdout = _run_cli(DJANGO_PROGRAM, tmp_path, db)
    assert "DJANGO False connection 1" in stdout
    [job] = [s for s in spans if s["name"] == "job"]
    ends = [s for s in spans if s["name"] in ("COMMIT", "ROLLBACK")]
    # atomic() blocks end with connection.commit() / rollback() (Django runs in autocommit
    # mode otherwise: nothing else to end)
    assert [s["name"] for s in ends] == ["COMMIT", "ROLLBACK"]
    assert [s["parent_span_id"] for s in ends] == [job["span_id"], job["span_id"]]
