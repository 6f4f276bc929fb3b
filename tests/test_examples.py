"""The runnable examples run: each one as a subprocess (the database examples start their own
throwaway PostgreSQL, or use a private schema on ``PITCHEY_TEST_PG_DSN``; the web examples'
``--demo`` serves on a free port and calls itself), and what it prints is checked: the
results, the trace trees its ``ConsoleExporter(pretty=True)`` draws, audit lines and logs.

``asyncpg_checkout.py`` runs on asyncpg. ``find_slow_traces.py`` records into a temporary
archive and reads it back with the analysis engine; ``opentelemetry_api.py`` mixes spans of
the OpenTelemetry API and pitchey-trace.
Covered elsewhere: ``demo.py`` (and its ``_demo_app.py``) by ``tests/integration/test_demo.py``,
``w3c_test_service.py`` by ``tests/integration/test_w3c_service.py``;
``django_settings_snippet.py`` is a settings fragment, not a program.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.pgserver import ENV_DSN, scratch_schema

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# "  SELECT pitches  0.35 ms  [client, fast]" (two spaces per level; " !" marks an error)
SPAN_LINE = re.compile(
    r"^(?P<indent>(?:  )+)(?P<name>\S.*?)  [\d.]+ ms  \[(?P<kind>\w+), \w+\](?P<error> !)?$"
)


@dataclass
class Shown:
    """One span line of the tree, with the span the tree draws it under (None: a root)."""

    trace_id: str
    name: str
    kind: str
    error: bool
    parent: str | None


def parse_trees(stdout: str) -> list[Shown]:
    """Every span line of the pretty trees. The exporter draws one tree per trace and export
    batch, so a trace split over two batches shows as two fragments: a span drawn at the top
    of a fragment has ``parent`` None, every other one the name of the span it is drawn under."""
    shown: list[Shown] = []
    trace_id = ""
    stack: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("trace "):
            trace_id, stack = line.split()[1], []
            continue
        m = SPAN_LINE.match(line)
        if m is None or not trace_id:
            continue
        depth = len(m.group("indent")) // 2
        del stack[depth - 1 :]
        assert len(stack) == depth - 1, f"tree line deeper than its parent: {line!r}"
        shown.append(
            Shown(
                trace_id,
                m.group("name"),
                m.group("kind"),
                bool(m.group("error")),
                stack[-1] if stack else None,
            )
        )
        stack.append(m.group("name"))
    return shown


def trace_of(shown: list[Shown], root_name: str) -> list[Shown]:
    """The spans of the (one) trace that contains a span called ``root_name``."""
    ids = {s.trace_id for s in shown if s.name == root_name}
    assert len(ids) == 1, (root_name, ids)
    return [s for s in shown if s.trace_id in ids]


def assert_parents(spans: list[Shown], parents: Mapping[str, str | set[str | None] | None]) -> None:
    """Each span is drawn under an expected parent (or at the top of a batch fragment); a
    span expected at the top is always at the top."""
    for s in spans:
        expected = parents[s.name]
        allowed = expected if isinstance(expected, set) else {expected}
        assert s.parent in allowed | {None}, f"{s.name} drawn under {s.parent}, expected {expected}"
        if expected is None:
            assert s.parent is None


def result_line(stdout: str, prefix: str) -> Any:
    """The Python literal the example prints after ``prefix``."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stdout
    return ast.literal_eval(lines[0][len(prefix) :].strip())


def check_load_pitch(stdout: str, stderr: str) -> None:
    pitch = result_line(stdout, "loaded:")
    assert pitch["id"] == 42
    assert pitch["title"] == "Solar kettles"
    assert pitch["owner"] == {"name": "Ada"}
    assert len(pitch["media"]) == 2
    assert pitch["comments"] == 2
    shown = parse_trees(stdout)
    request = trace_of(shown, "GET /pitches/{id}")
    queries = ["SELECT pitches", "SELECT users", "SELECT pitch_media", "SELECT comments", "UPDATE pitches"]
    assert sorted(s.name for s in request) == sorted(["GET /pitches/{id}", "load_pitch", *queries])
    # Several queries under one span: load_pitch parents every statement of the page.
    assert_parents(
        request,
        {
            "GET /pitches/{id}": None,
            "load_pitch": "GET /pitches/{id}",
            **dict.fromkeys(queries, "load_pitch"),
        },
    )
    assert {s.name: s.kind for s in request}["GET /pitches/{id}"] == "server"
    assert all(s.kind == "client" for s in request if s.name in queries)
    # The seeding transaction is its own trace, its statements inside it.
    seed = trace_of(shown, "TRANSACTION")
    assert {"CREATE users", "INSERT users", "INSERT pitches", "INSERT comments"} <= {s.name for s in seed}
    assert_parents(seed, {s.name: None if s.name == "TRANSACTION" else "TRANSACTION" for s in seed})
    assert not any(s.error for s in shown)
    assert "Traceback" not in stderr
    # The owner lookup reads the sensitive users table: audit records, never values.
    assert "type=audit  action=SELECT  target=users  outcome=success" in stdout
    assert "type=rollup  operation=load_pitch  count=1" in stdout


def check_search_pitches(stdout: str, stderr: str) -> None:
    found = result_line(stdout, "found:")
    assert found["term"] == "solar"
    assert found["page"] == 1
    assert found["total"] == 12  # 7 words, "solar" paired with each of the 6 others, both orders
    assert len(found["results"]) == 5
    assert all("solar" in title for title in found["results"])
    shown = parse_trees(stdout)
    request = trace_of(shown, "GET /search")
    # (each `async with pool.connection()` block ends with the pool's commit: a COMMIT span)
    names = ["COMMIT", "COMMIT", "GET /search", "SELECT pitches", "SELECT pitches", "search_pitches"]
    assert sorted(s.name for s in request) == names
    # The count and the page query ran in parallel: siblings under search_pitches.
    parents = {
        "GET /search": None,
        "search_pitches": "GET /search",
        "SELECT pitches": "search_pitches",
        "COMMIT": "search_pitches",
    }
    assert_parents(request, parents)
    assert not any(s.error for s in shown)
    assert "Traceback" not in stderr
    assert "type=rollup  operation=SELECT pitches  count=2" in stdout


def check_asyncpg_checkout(stdout: str, stderr: str) -> None:
    assert result_line(stdout, "second backing accepted:") is False
    assert result_line(stdout, "report:") == {"pitch": 7, "backings": 1, "total": 25, "amounts": [25]}
    shown = parse_trees(stdout)
    back = trace_of(shown, "POST /pitches/{id}/back")
    assert sorted(s.name for s in back) == [
        "INSERT backings",
        "INSERT backings",
        "POST /pitches/{id}/back",
        "SAVEPOINT",
        "TRANSACTION",
    ]
    by_name = {s.name: s for s in back}
    assert by_name["SAVEPOINT"].parent == "TRANSACTION"
    assert by_name["SAVEPOINT"].error  # the refused backing, rolled back alone
    assert not by_name["TRANSACTION"].error  # the outer transaction committed
    assert [s.error for s in back if s.name == "INSERT backings"] == [False, True]
    report = trace_of(shown, "pitch_report")
    assert_parents(
        report,
        {
            "GET /pitches/{id}/report": None,
            "pitch_report": "GET /pitches/{id}/report",
            "TRANSACTION": "pitch_report",
            "SELECT backings": {"pitch_report", "TRANSACTION"},  # the prepared one, the cursor
        },
    )
    assert [s.name for s in report].count("SELECT backings") == 2
    assert "ann@example.com" not in stdout
    assert "Traceback" not in stderr


# "GET /me          -> 401  X-Trace-Id: 52a9defec63503c2e512619ea579ac41" (``-``: not traced)
CALL_LINE = re.compile(
    r"^GET (?P<path>\S+) +-> (?P<status>\d{3})  X-Trace-Id: (?P<trace>[0-9a-f]{32}|-)$", re.M
)


def calls(stdout: str) -> list[tuple[str, int, str]]:
    """(path, status, trace id) of every call a web example's ``--demo`` made."""
    return [(m["path"], int(m["status"]), m["trace"]) for m in CALL_LINE.finditer(stdout)]


def spans_of(shown: list[Shown], trace_id: str) -> list[Shown]:
    return [s for s in shown if s.trace_id == trace_id]


def check_fastapi_app(stdout: str, stderr: str) -> None:
    made = calls(stdout)
    assert [(p, st) for p, st, _ in made] == [
        ("/pitches/42", 200),
        ("/me", 200),
        ("/me", 401),
        ("/feed", 200),
        ("/boom", 500),
        ("/healthz", 200),
    ]
    ids = {(p, st): t for p, st, t in made}
    assert ids[("/healthz", 200)] == "-"  # excluded from tracing
    shown = parse_trees(stdout)
    # Each response's X-Trace-Id is the trace of its client span (root) and server span.
    route = {
        "/pitches/42": "GET /pitches/{pitch_id}",
        "/me": "GET /me",
        "/feed": "GET /feed",
        "/boom": "GET /boom",
    }
    for path, status, trace_id in made[:-1]:
        trace = spans_of(shown, trace_id)
        server = [s for s in trace if s.name == route[path]]
        assert len(server) == 1, (path, trace)
        assert server[0].parent in ("GET", None)
        assert server[0].error == (status == 500)
    # /feed calls /pitches/1 on the same service: one trace, four levels deep.
    feed = spans_of(shown, ids[("/feed", 200)])
    names = ["GET", "GET", "GET /feed", "GET /pitches/{pitch_id}", "load_pitch"]
    assert sorted(s.name for s in feed) == names
    assert_parents(
        feed,
        {
            "GET": {None, "GET /feed"},
            "GET /feed": "GET",
            "GET /pitches/{pitch_id}": "GET",
            "load_pitch": "GET /pitches/{pitch_id}",
        },
    )
    # Audit: one record per traced request, a security event for the auth failure, none for /healthz.
    assert "type=audit  action=GET /me  target=/me  outcome=missing_user" in stdout
    assert "type=audit  action=GET /boom  target=/boom  outcome=500" in stdout
    assert "action=GET /healthz" not in stdout
    assert not any(s.name == "GET /healthz" for s in shown)
    # Logs carry the trace ids: the handler's line, and the server's error log for the 500.
    assert f"[trace_id={ids[('/pitches/42', 200)]} " in next(
        line for line in stderr.splitlines() if "loading pitch 42" in line
    )
    assert f"ERROR uvicorn.error [trace_id={ids[('/boom', 500)]} " in stderr


def check_flask_app(stdout: str, stderr: str) -> None:
    made = calls(stdout)
    assert [(p, st) for p, st, _ in made] == [
        ("/pitches/42", 200),
        ("/me", 200),
        ("/me", 401),
        ("/export", 200),
        ("/feed", 200),
        ("/boom", 500),
    ]
    ids = {(p, st): t for p, st, t in made}
    shown = parse_trees(stdout)
    # The demo's own calls are not traced: each server span is the root of its trace.
    route = {
        "/pitches/42": "GET /pitches/<int:pitch_id>",
        "/me": "GET /me",
        "/export": "GET /export",
        "/feed": "GET /feed",
        "/boom": "GET /boom",
    }
    for path, status, trace_id in made:
        server = [s for s in spans_of(shown, trace_id) if s.name == route[path]]
        assert len(server) == 1, path
        assert server[0].parent is None
        assert server[0].error == (status == 500)
    # A streamed response: the rows are rendered inside the request span.
    export = spans_of(shown, ids[("/export", 200)])
    assert sorted(s.name for s in export) == ["GET /export", "render_row", "render_row", "render_row"]
    assert_parents(export, {"GET /export": None, "render_row": "GET /export"})
    feed = spans_of(shown, ids[("/feed", 200)])
    assert sorted(s.name for s in feed) == ["GET", "GET /feed", "GET /pitches/<int:pitch_id>", "load_pitch"]
    assert_parents(
        feed,
        {
            "GET /feed": None,
            "GET": "GET /feed",
            "GET /pitches/<int:pitch_id>": "GET",
            "load_pitch": "GET /pitches/<int:pitch_id>",
        },
    )
    # The 401: a request record and a security record.
    assert stdout.count("type=audit  action=GET /me  target=/me  outcome=401") == 2
    assert f"ERROR pitch_web [trace_id={ids[('/boom', 500)]} " in stderr


def check_aiohttp_app(stdout: str, stderr: str) -> None:
    made = calls(stdout)
    assert [(p, st) for p, st, _ in made] == [
        ("/pitches/42", 200),
        ("/me", 200),
        ("/me", 401),
        ("/feed", 200),
        ("/boom", 500),
    ]
    ids = {(p, st): t for p, st, t in made}
    shown = parse_trees(stdout)
    route = {
        "/pitches/42": "GET /pitches/{pitch_id}",
        "/me": "GET /me",
        "/feed": "GET /feed",
        "/boom": "GET /boom",
    }
    for path, status, trace_id in made:
        server = [s for s in spans_of(shown, trace_id) if s.name == route[path]]
        assert len(server) == 1, path
        assert server[0].parent is None
        assert server[0].error == (status == 500)
    feed = spans_of(shown, ids[("/feed", 200)])
    assert sorted(s.name for s in feed) == ["GET", "GET /feed", "GET /pitches/{pitch_id}", "load_pitch"]
    assert_parents(
        feed,
        {
            "GET /feed": None,
            "GET": "GET /feed",
            "GET /pitches/{pitch_id}": "GET",
            "load_pitch": "GET /pitches/{pitch_id}",
        },
    )
    assert stdout.count("type=audit  action=GET /me  target=/me  outcome=401") == 2
    assert f"INFO pitch_aio [trace_id={ids[('/pitches/42', 200)]} " in stderr
    assert f"ERROR aiohttp.server [trace_id={ids[('/boom', 500)]} " in stderr
    assert "Warning" not in stderr


def check_grpc_service(stdout: str, stderr: str) -> None:
    assert "Get 42  -> Quiet drums" in stdout
    assert "Get 99  -> NOT_FOUND no pitch 99" in stdout
    assert "List    -> 42, 7" in stdout
    trace_ids = set(re.findall(r"^trace ([0-9a-f]{32})$", stdout, re.M))
    assert len(trace_ids) == 1  # the job, both ends of its calls and the handlers' spans
    (trace_id,) = trace_ids
    shown = spans_of(parse_trees(stdout), trace_id)
    counts: dict[tuple[str, str, bool], int] = {}
    for s in shown:
        counts[(s.name, s.kind, s.error)] = counts.get((s.name, s.kind, s.error), 0) + 1
    get, listing = "pitches.v1.Pitches/Get", "pitches.v1.Pitches/List"
    assert counts == {
        ("nightly_digest", "internal", False): 1,
        (get, "client", False): 1,
        (get, "client", True): 1,  # NOT_FOUND is an error for the caller...
        (get, "server", False): 2,  # ...and the server's answer, not its failure
        ("load_pitch", "internal", False): 2,
        (listing, "client", False): 1,
        (listing, "server", False): 1,
        ("render_item", "internal", False): 2,
    }
    for s in shown:
        if s.kind in ("client", "server"):
            expected = "nightly_digest" if s.kind == "client" else s.name
            assert s.parent in (expected, None), (s.name, s.kind, s.parent)
    assert_parents(
        [s for s in shown if s.kind == "internal"],
        {"nightly_digest": None, "load_pitch": get, "render_item": listing},
    )
    assert stderr == ""


def check_find_slow_traces(stdout: str, stderr: str) -> None:
    # The recorded workload has a slow render in about one request in five, and an N+1.
    assert re.search(r"^traces with a span of 20 ms or more: [1-5] shown$", stdout, re.M)
    assert re.search(r"^  bottleneck: render \(\d+\.\d ms of its own, \d+% of the trace\)$", stdout, re.M)
    assert "  N+1: 6x 'SELECT * FROM comments WHERE id = ?' under GET /pitches/{id}" in stdout
    counts = dict(re.findall(r"^  (SELECT comments|SELECT pitches) +(\d+)  p50", stdout, re.M))
    assert counts == {"SELECT comments": "180", "SELECT pitches": "30"}
    assert "  x3  charge card: PaymentDeclined: card declined for order <n>" in stdout
    assert stderr == ""


def check_opentelemetry_api(stdout: str, stderr: str) -> None:
    assert "charged: ch_0001" in stdout
    assert "refused: amount over the limit" in stdout
    shown = parse_trees(stdout)
    assert len({s.trace_id for s in shown}) == 2  # one trace per checkout, both APIs in it
    for trace_id in {s.trace_id for s in shown}:
        spans = [s for s in shown if s.trace_id == trace_id]
        assert_parents(
            spans,
            {
                "checkout": None,
                "reserve_stock": "checkout",
                "payments.charge": "checkout",  # an OpenTelemetry span under a pitchey one
                "payments.fraud_check": "payments.charge",
            },
        )
    charges = [s for s in shown if s.name == "payments.charge"]
    assert sorted(s.error for s in charges) == [False, True]  # the refused charge is an error
    assert all(s.kind == "client" for s in charges)
    assert "card as exported: '[REDACTED]'" in stdout
    assert "instrumentation scope: payments" in stdout
    assert "4111" not in stdout
    assert stderr == ""


CHECKS: dict[str, Callable[[str, str], None]] = {
    "find_slow_traces.py": check_find_slow_traces,
    "opentelemetry_api.py": check_opentelemetry_api,
    "load_pitch.py": check_load_pitch,
    "search_pitches.py": check_search_pitches,
    "asyncpg_checkout.py": check_asyncpg_checkout,
    "fastapi_app.py --demo": check_fastapi_app,
    "flask_app.py --demo": check_flask_app,
    "aiohttp_app.py --demo": check_aiohttp_app,
    "grpc_service.py --demo": check_grpc_service,
}


@contextmanager
def example_env() -> Iterator[dict[str, str]]:
    """The environment to run an example in: with ``PITCHEY_TEST_PG_DSN`` a private schema on
    that server (``DATABASE_URL``), else none, so the example starts its own server."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    external = os.environ.get(ENV_DSN, "").strip()
    if not external:
        yield env
        return
    with scratch_schema(external) as dsn:
        yield {**env, "DATABASE_URL": dsn}


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_example_runs(script: str) -> None:
    with example_env() as env:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / script.split()[0]), *script.split()[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=EXAMPLES.parent,
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    CHECKS[script](proc.stdout, proc.stderr)
