"""Fixtures for the PostgreSQL integration tests: one real server per test process (each
pytest-xdist worker starts its own), a private schema per test, and db options reset after
each test. ``PITCHEY_TEST_PG_DSN`` points the tests at an existing server instead."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pitchey_trace.db import _options
from tests.support.pgserver import PgServer, postgres_server, scratch_schema


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A DSN whose ``search_path`` is a fresh schema, dropped after the test."""
    with scratch_schema(pg_server.dsn) as dsn:
        yield dsn


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain (not instrumented) autocommit connection into the test's schema."""
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c


@pytest.fixture(autouse=True)
def _db_options_reset() -> Iterator[None]:
    yield
    _options.reset()
