"""A Django project set up as examples/django_settings_snippet.py and docs/middleware.md say
(``PitcheyRouteMiddleware`` first, ``LOGGING_WITH_TRACE_IDS``, queries traced from
``connection_created``, persistent connections), on a real PostgreSQL, served by waitress
(WSGI) and uvicorn (Django's ASGI handler) on 127.0.0.1. Django's settings are process-wide,
so the project runs in a process of its own and prints what it saw as JSON; its log lines
(the snippet's console handler) come on stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.support.pgserver import postgres_server, scratch_schema

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]

PROJECT = textwrap.dedent(
    """
    import json, logging, sys
    sys.path.insert(0, "examples")
    import django
    from django.conf import settings
    from django_settings_snippet import LOGGING_WITH_TRACE_IDS

    db = json.loads(sys.argv[1])
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
        MIDDLEWARE=[
            "pitchey_trace.web.django.PitcheyRouteMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            __name__ + ".failing_middleware",
        ],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db["dbname"], "USER": db["user"], "HOST": db["host"], "PORT": db["port"],
            "OPTIONS": {"options": db["options"]},
            "CONN_MAX_AGE": 60,
        }},
        LOGGING=LOGGING_WITH_TRACE_IDS,
        USE_TZ=True,
    )
    django.setup()

    import httpx
    from asgiref.sync import sync_to_async
    from django.contrib.auth import authenticate, login
    from django.contrib.auth.decorators import login_required
    from django.contrib.auth.models import User
    from django.core.asgi import get_asgi_application
    from django.core.exceptions import PermissionDenied
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from django.db import IntegrityError, connection, transaction
    from django.db.backends.signals import connection_created
    from django.http import Http404, JsonResponse
    from django.urls import include, path, re_path
    from django.views import View
    from django.views.decorators.http import require_POST
    from django_settings_snippet import trace_database_queries

    import pitchey_trace as pt
    from pitchey_trace.testing import capture_spans
    from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware, auth_failure
    from tests.integration.web.conftest import run_uvicorn, run_waitress

    connection_created.connect(trace_database_queries)

    def failing_middleware(get_response):
        def middleware(request):
            if request.path == "/mw-boom/":
                raise LookupError("from a middleware")
            return get_response(request)
        return middleware

    def do_login(request):
        user = authenticate(request, username=request.POST["u"], password=request.POST["p"])
        if user is None:
            return JsonResponse({}, status=401)
        login(request, user)
        return JsonResponse({"id": user.pk})

    def boom(request):
        User.objects.filter(username="nobody").exists()
        raise ValueError("kaboom")

    async def aboom(request):
        await sync_to_async(User.objects.filter(username="nobody").exists)()
        raise RuntimeError("async kaboom")

    def missing(request):
        raise Http404("no such user")

    def forbidden(request):
        if not request.user.is_superuser:
            auth_failure("not_staff")  # the view's own security event: who was refused
            raise PermissionDenied
        return JsonResponse({})

    @login_required
    async def amine(request):
        user = await request.auser()
        names = User.objects.filter(pk=user.pk).values_list("username", flat=True)
        rows = await sync_to_async(list)(names)
        return JsonResponse({"id": user.pk, "rows": rows})

    class UserDetail(View):
        def get(self, request, pk=None, name=None):
            found = User.objects.filter(pk=pk) if name is None else User.objects.filter(username=name)
            user = found.first()
            with connection.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pid = cur.fetchone()[0]
            return JsonResponse({"user": user.username if user else None, "pid": pid})

    def create(request):
        name = request.GET["name"]
        with transaction.atomic():
            User.objects.create(username=name)
            try:
                with transaction.atomic():
                    User.objects.create(username=name)  # the same name again: IntegrityError
            except IntegrityError:
                pass
        return JsonResponse({})

    users = [
        path("<int:pk>/", UserDetail.as_view(), name="detail"),
        re_path(r"^by-name/(?P<name>[a-z]+)/$", UserDetail.as_view(), name="by_name"),
        path("create/", create),
        path("missing/", missing),
        path("forbidden/", forbidden),
        path("mine/", amine),
        path("only-post/", require_POST(missing)),
    ]
    urlpatterns = [
        path("users/", include((users, "users"), namespace="users")),
        path("login/", do_login),
        path("boom/", boom),
        path("aboom/", aboom),
        path("mw-boom/", boom),
    ]

    with capture_spans() as mem:
        call_command("migrate", verbosity=0)
        User.objects.create_user("ann", password="pw")
        ann = User.objects.get(username="ann").pk
        connection.close()  # requests open their own (persistent) connection
        pt.force_flush()
        mem.clear()
        out = {"ann": ann}
        servers = [
            # one waitress thread: one (persistent, thread-local) Django connection
            ("wsgi", run_waitress(WSGITracingMiddleware(get_wsgi_application()), threads=1)),
            ("asgi", run_uvicorn(ASGITracingMiddleware(get_asgi_application()))),
        ]
        for kind, server in servers:
            with server as running, httpx.Client(base_url=running.url) as client:
                seen = out[kind] = {}
                def call(key, method, url, **kw):
                    r = client.request(method, url, **kw)
                    body = r.json() if r.headers.get("content-type") == "application/json" else None
                    trace_id = r.headers.get("x-trace-id")
                    seen[key] = {"status": r.status_code, "trace_id": trace_id, "body": body}
                call("detail", "GET", f"/users/{ann}/")
                call("detail_again", "GET", f"/users/{ann}/")
                call("by_name", "GET", "/users/by-name/ann/")
                call("nomatch", "GET", "/no/such/page/")
                call("missing", "GET", "/users/missing/")
                call("only_post", "GET", "/users/only-post/")
                call("boom", "GET", "/boom/")
                call("aboom", "GET", "/aboom/")
                call("mw_boom", "GET", "/mw-boom/")
                call("create", "GET", "/users/create/?name=" + kind)
                call("mine_anon", "GET", "/users/mine/")
                call("login", "POST", "/login/", data={"u": "ann", "p": "pw"})
                call("mine", "GET", "/users/mine/")
                call("forbidden", "GET", "/users/forbidden/")
    out["spans"] = mem.spans()  # (capture_spans flushed every record on exit)
    out["records"] = mem.records
    print(json.dumps(out))
    """
)


def _run(program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``program`` run by a fresh interpreter in the repository (Django's settings are
    process-wide), with ``args``; its output as text."""
    argv = [sys.executable, "-c", program, *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def django_run() -> dict[str, Any]:
    with postgres_server() as server, scratch_schema(server.dsn) as dsn:
        params = conninfo_to_dict(dsn)
        db = {k: str(params[k]) for k in ("dbname", "user", "host", "port", "options")}
        done = _run(PROJECT, json.dumps(db), timeout=300)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    out["log"] = done.stderr
    return out


KINDS = ("wsgi", "asgi")


def _trace(run: dict[str, Any], kind: str, key: str) -> list[dict[str, Any]]:
    trace_id = run[kind][key]["trace_id"]
    assert trace_id, run[kind][key]
    return [s for s in run["spans"] if s["trace_id"] == trace_id]


def _server(spans: list[dict[str, Any]]) -> dict[str, Any]:
    (server,) = [s for s in spans if s["kind"] == "server"]
    return server


def _audit(run: dict[str, Any], kind: str, key: str) -> list[dict[str, Any]]:
    trace_id = run[kind][key]["trace_id"]
    return [r for r in run["records"] if r.get("type") == "audit" and r.get("trace_id") == trace_id]


@pytest.mark.parametrize("kind", KINDS)
def test_span_names_come_from_the_resolver(django_run: dict[str, Any], kind: str) -> None:
    run = django_run
    ann = run["ann"]
    assert run[kind]["detail"]["body"]["user"] == "ann"
    detail = _server(_trace(run, kind, "detail"))
    assert detail["name"] == "GET /users/<int:pk>/"  # include() prefix joined, never the raw path
    assert detail["attributes"]["http.route"] == "/users/<int:pk>/"
    assert f"/{ann}/" in detail["attributes"]["url.path"]
    by_name = _server(_trace(run, kind, "by_name"))
    assert by_name["name"] == "GET /users/by-name/(?P<name>[a-z]+)/"  # re_path without anchors
    nomatch = _server(_trace(run, kind, "nomatch"))
    assert (nomatch["name"], run[kind]["nomatch"]["status"]) == ("GET", 404)
    assert "http.route" not in nomatch["attributes"]
    missing = _server(_trace(run, kind, "missing"))  # Http404 is an answer, not a failure
    assert missing["name"] == "GET /users/missing/"
    assert missing["status"] == "unset"
    assert not [e for e in missing["events"] if e["name"] == "exception"]
    only_post = _server(_trace(run, kind, "only_post"))  # 405 from require_POST
    assert (only_post["name"], run[kind]["only_post"]["status"]) == ("GET /users/only-post/", 405)
    assert only_post["status"] == "unset"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("key", "exc_type", "message"),
    [("boom", "ValueError", "kaboom"), ("aboom", "RuntimeError", "async kaboom")],
)
def test_view_exception_recorded_once_with_the_500(
    django_run: dict[str, Any], kind: str, key: str, exc_type: str, message: str
) -> None:
    run = django_run
    answer = run[kind][key]
    assert answer["status"] == 500
    spans = _trace(run, kind, key)
    server = _server(spans)
    assert server["name"] == f"GET /{key}/"
    assert server["status"] == "error"
    assert server["status_message"] == f"{exc_type}: {message}"
    assert server["attributes"]["error.type"] == exc_type
    assert server["attributes"]["http.response.status_code"] == 500
    events = [e for e in server["events"] if e["name"] == "exception"]
    assert len(events) == 1
    assert events[0]["attributes"]["exception.type"].endswith(exc_type)
    assert events[0]["attributes"]["exception.message"] == message
    (query,) = [s for s in spans if s["kind"] == "client"]  # the ORM query before it raised
    assert query["parent_span_id"] == server["span_id"]
    # Django's error log line carries the 500's trace id (the snippet's LOGGING)
    logged = re.findall(
        rf"ERROR django.request \[trace_id=(\w+) span_id=(\w+)\] Internal Server Error: /{key}/", run["log"]
    )
    assert (answer["trace_id"], server["span_id"]) in logged


def test_middleware_exception_recorded_with_the_500(django_run: dict[str, Any]) -> None:
    # Raised by another middleware, not the view: Django's got_request_exception signal.
    run = django_run
    assert run["wsgi"]["mw_boom"]["status"] == 500
    server = _server(_trace(run, "wsgi", "mw_boom"))
    assert server["attributes"]["error.type"] == "LookupError"
    events = [e for e in server["events"] if e["name"] == "exception"]
    assert [e["attributes"]["exception.message"] for e in events] == ["from a middleware"]


@pytest.mark.parametrize("kind", KINDS)
def test_authenticated_user_in_audit_records(django_run: dict[str, Any], kind: str) -> None:
    run = django_run
    ann = str(run["ann"])
    anon = run[kind]["mine_anon"]
    assert anon["status"] == 302  # login_required redirects: not a security event
    (record,) = _audit(run, kind, "mine_anon")
    assert (record["category"], record["actor"]) == ("request", None)
    assert run[kind]["login"]["status"] == 200
    (login_record,) = _audit(run, kind, "login")
    assert login_record["actor"] == ann  # request.user set by login()


@pytest.mark.parametrize("kind", KINDS)
def test_async_view_user_from_auser(django_run: dict[str, Any], kind: str) -> None:
    # ``await request.auser()`` (login_required on an async view too) leaves request.user
    # unloaded: the user is recorded as auser() returns it.
    run = django_run
    ann = str(run["ann"])
    assert run[kind]["mine"]["body"] == {"id": run["ann"], "rows": ["ann"]}
    spans = _trace(run, kind, "mine")
    mine = _server(spans)
    assert mine["attributes"]["user.id"] == ann
    assert all(q["parent_span_id"] == mine["span_id"] for q in spans if q["kind"] == "client")
    (mine_record,) = _audit(run, kind, "mine")
    assert mine_record["actor"] == ann


@pytest.mark.parametrize("kind", KINDS)
def test_view_auth_failure_names_the_signed_in_user(django_run: dict[str, Any], kind: str) -> None:
    # The user is recorded when the view loads it, before the view's own auth_failure(); the
    # 403 that follows is not a second security event.
    run = django_run
    ann = str(run["ann"])
    assert run[kind]["forbidden"]["status"] == 403
    records = _audit(run, kind, "forbidden")
    security = [r for r in records if r["category"] == "security"]
    assert [(r["outcome"], r["actor"]) for r in security] == [("not_staff", ann)]
    assert [r["actor"] for r in records if r["category"] == "request"] == [ann]


@pytest.mark.parametrize("kind", KINDS)
def test_orm_queries_and_atomic_blocks_under_the_request(django_run: dict[str, Any], kind: str) -> None:
    run = django_run
    spans = _trace(run, kind, "create")
    server = _server(spans)
    queries = sorted((s for s in spans if s["kind"] == "client"), key=lambda s: s["start_time_unix_nano"])
    assert all(q["parent_span_id"] == server["span_id"] for q in queries)
    assert [q["attributes"]["db.operation.name"] for q in queries] == [
        "INSERT",
        "SAVEPOINT",
        "INSERT",
        "ROLLBACK",
        "RELEASE",
        "COMMIT",  # the outermost atomic()'s connection.commit()
    ]
    texts = [q["attributes"]["db.query.text"] for q in queries]
    assert all(kind not in t for t in texts)  # no literal (the user name) in any text
    failed = queries[2]
    assert (failed["status"], failed["attributes"]["db.response.status_code"]) == ("error", "23505")
    assert server["status"] == "unset"  # a savepoint rolled back is handled by the view


def test_persistent_connection_instrumented_once(django_run: dict[str, Any]) -> None:
    # CONN_MAX_AGE=60: the WSGI requests reuse one connection; each query is one span.
    run = django_run
    first, again = run["wsgi"]["detail"]["body"], run["wsgi"]["detail_again"]["body"]
    assert first["pid"] == again["pid"]
    for key in ("detail", "detail_again"):
        spans = _trace(run, "wsgi", key)
        names = sorted(s["name"] for s in spans if s["kind"] == "client")
        assert names == ["SELECT", "SELECT auth_user"]


PROPAGATING = textwrap.dedent(
    """
    import json
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False, DEBUG_PROPAGATE_EXCEPTIONS=True, ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__, SECRET_KEY="test-only",
        MIDDLEWARE=["pitchey_trace.web.django.PitcheyRouteMiddleware"],
    )
    django.setup()

    import httpx
    from django.core.wsgi import get_wsgi_application
    from django.urls import path

    from pitchey_trace.testing import capture_spans
    from pitchey_trace.web import WSGITracingMiddleware
    from tests.integration.web.conftest import run_waitress

    def boom(request):
        raise ValueError("kaboom")

    urlpatterns = [path("boom/", boom)]
    with capture_spans() as mem:
        with run_waitress(WSGITracingMiddleware(get_wsgi_application())) as running:
            status = httpx.get(running.url + "/boom/").status_code
    print(json.dumps({"status": status, "spans": mem.spans()}))
    """
)


def test_propagated_exception_recorded_once() -> None:
    # DEBUG_PROPAGATE_EXCEPTIONS: Django re-raises, the WSGI middleware records the exception
    # as it escapes; the Django middleware does not record it a second time.
    done = _run(PROPAGATING, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == 500  # (waitress's own)
    (server,) = out["spans"]
    assert server["name"] == "GET /boom/"
    assert server["attributes"]["error.type"] == "ValueError"
    assert len([e for e in server["events"] if e["name"] == "exception"]) == 1
