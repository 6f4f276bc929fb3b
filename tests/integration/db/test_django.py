"""A Django project (settings from examples/django_settings_snippet.py) on PostgreSQL, served by
a real WSGI server on 127.0.0.1 and called over HTTP. It runs in its own process: Django's
settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"

PROJECT = textwrap.dedent(
    """
    import json, sys, threading
    sys.path.insert(0, "examples")
    import django
    from django.conf import settings

    db = json.loads(sys.argv[1])
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        INSTALLED_APPS=[],
        MIDDLEWARE=["django_settings_snippet.PitcheyRouteMiddleware"],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db["dbname"], "USER": db["user"], "HOST": db["host"], "PORT": db["port"],
            "OPTIONS": {"options": db["options"]},
        }},
    )
    django.setup()

    import httpx
    from django.db import connection
    from django.db.backends.signals import connection_created
    from django.http import JsonResponse
    from django.urls import path
    from werkzeug.serving import make_server

    import pitchey_trace as pt
    from django_settings_snippet import trace_database_queries
    from pitchey_trace.testing import capture_spans
    from pitchey_trace.web import WSGITracingMiddleware

    connection_created.connect(trace_database_queries)

    def pitch(request, pitch_id):
        with connection.cursor() as cur:
            cur.execute("SELECT title FROM pitches WHERE id = %s AND title <> 'secret'", [pitch_id])
            row = cur.fetchone()
        return JsonResponse({"id": pitch_id, "title": row[0] if row else None})

    def boom(request):
        with connection.cursor() as cur:
            cur.execute("SELECT * FROM nowhere")

    urlpatterns = [path("pitches/<int:pitch_id>/", pitch), path("boom/", boom)]

    from django.core.wsgi import get_wsgi_application

    with capture_spans() as mem:
        with connection.cursor() as cur:  # set-up, before any request
            cur.execute("CREATE TABLE pitches (id int PRIMARY KEY, title text)")
            cur.execute("INSERT INTO pitches VALUES (42, 'Solar kettles')")
        server = make_server("127.0.0.1", 0, WSGITracingMiddleware(get_wsgi_application()), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        ok = httpx.get(base + "/pitches/42/", headers={"traceparent": sys.argv[2]})
        failed = httpx.get(base + "/boom/")
        server.shutdown()
    print(json.dumps({
        "ok": [ok.status_code, ok.json(), ok.headers.get("x-trace-id")],
        "failed": [failed.status_code, failed.headers.get("x-trace-id")],
        "spans": mem.spans(),
    }))
    """
)


def test_django_project_requests_and_queries(pg_dsn: str) -> None:
    params = conninfo_to_dict(pg_dsn)
    db = {k: str(params[k]) for k in ("dbname", "user", "host", "port", "options")}
    traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    done = subprocess.run(
        [sys.executable, "-c", PROJECT, json.dumps(db), traceparent],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] == [200, {"id": 42, "title": "Solar kettles"}, TRACE_ID]
    assert out["failed"][0] == 500
    spans = {s["name"]: s for s in out["spans"]}
    server = spans["GET /pitches/<int:pitch_id>/"]  # the URL pattern, not the raw path
    assert server["trace_id"] == TRACE_ID
    assert server["parent_span_id"] == "b7ad6b7169203331"
    query = spans["SELECT pitches"]
    assert query["parent_span_id"] == server["span_id"]
    assert query["attributes"]["db.query.text"] == "SELECT title FROM pitches WHERE id = %s AND title <> ?"
    assert query["attributes"]["db.response.returned_rows"] == 1
    boom = spans["GET /boom/"]
    assert boom["status"] == "error"
    assert out["failed"][1] == boom["trace_id"]
    missing = spans["SELECT nowhere"]
    assert missing["parent_span_id"] == boom["span_id"]
    assert missing["attributes"]["db.response.status_code"] == "42P01"
    assert "CREATE pitches" in spans  # queries outside requests are traced too (root spans)
