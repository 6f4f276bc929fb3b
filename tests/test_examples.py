"""The runnable examples run: each one as a subprocess (its own throwaway PostgreSQL, or a
private schema on ``PITCHEY_TEST_PG_DSN``), and what it prints is checked: the result of the
operation and the trace tree its ``ConsoleExporter(pretty=True)`` draws.

Covered elsewhere: ``demo.py`` (and its ``_demo_app.py``) by ``tests/integration/test_demo.py``,
``w3c_test_service.py`` by ``tests/integration/test_w3c_service.py``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
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
        del stack[depth - 1:]
        assert len(stack) == depth - 1, f"tree line deeper than its parent: {line!r}"
        shown.append(Shown(trace_id, m.group("name"), m.group("kind"), bool(m.group("error")),
                           stack[-1] if stack else None))
        stack.append(m.group("name"))
    return shown


def trace_of(shown: list[Shown], root_name: str) -> list[Shown]:
    """The spans of the (one) trace that contains a span called ``root_name``."""
    ids = {s.trace_id for s in shown if s.name == root_name}
    assert len(ids) == 1, (root_name, ids)
    return [s for s in shown if s.trace_id in ids]


def assert_parents(spans: list[Shown], parents: dict[str, str | None]) -> None:
    """Each span is drawn under the expected parent (or at the top of a batch fragment)."""
    for s in spans:
        expected = parents[s.name]
        assert s.parent in (expected, None), f"{s.name} drawn under {s.parent}, expected {expected}"
        if expected is None:
            assert s.parent is None


def result_line(stdout: str, prefix: str) -> Any:
    """The Python literal the example prints after ``prefix``."""
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stdout
    return ast.literal_eval(lines[0][len(prefix):].strip())


def check_load_pitch(stdout: str) -> None:
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
    assert_parents(request, {"GET /pitches/{id}": None, "load_pitch": "GET /pitches/{id}",
                             **dict.fromkeys(queries, "load_pitch")})
    assert {s.name: s.kind for s in request}["GET /pitches/{id}"] == "server"
    assert all(s.kind == "client" for s in request if s.name in queries)
    # The seeding transaction is its own trace, its statements inside it.
    seed = trace_of(shown, "TRANSACTION")
    assert {"CREATE users", "INSERT users", "INSERT pitches", "INSERT comments"} <= {s.name for s in seed}
    assert_parents(seed, {s.name: None if s.name == "TRANSACTION" else "TRANSACTION" for s in seed})
    assert not any(s.error for s in shown)
    # The owner lookup reads the sensitive users table: audit records, never values.
    assert "type=audit  action=SELECT  target=users  outcome=success" in stdout
    assert "type=rollup  operation=load_pitch  count=1" in stdout


def check_search_pitches(stdout: str) -> None:
    found = result_line(stdout, "found:")
    assert found["term"] == "solar"
    assert found["page"] == 1
    assert found["total"] == 12  # 7 words, "solar" paired with each of the 6 others, both orders
    assert len(found["results"]) == 5
    assert all("solar" in title for title in found["results"])
    shown = parse_trees(stdout)
    request = trace_of(shown, "GET /search")
    names = ["GET /search", "SELECT pitches", "SELECT pitches", "search_pitches"]
    assert sorted(s.name for s in request) == names
    # The count and the page query ran in parallel: siblings under search_pitches.
    parents = {"GET /search": None, "search_pitches": "GET /search", "SELECT pitches": "search_pitches"}
    assert_parents(request, parents)
    assert not any(s.error for s in shown)
    assert "type=rollup  operation=SELECT pitches  count=2" in stdout


CHECKS: dict[str, Callable[[str], None]] = {
    "load_pitch.py": check_load_pitch,
    "search_pitches.py": check_search_pitches,
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
            [sys.executable, str(EXAMPLES / script)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=EXAMPLES.parent,
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    CHECKS[script](proc.stdout)
