"""pitchey_trace.db.configure and argument checking of the public entry points (no server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pitchey_trace import ConfigurationError
from pitchey_trace.db import (
    DEFAULT_SENSITIVE_TABLES,
    _options,
    configure,
    instrument,
    traced_query,
    traced_transaction,
    uninstrument,
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    _options.reset()


def test_defaults() -> None:
    opts = configure()
    assert opts.sensitive_tables == DEFAULT_SENSITIVE_TABLES == {"users", "payments", "auth_tokens"}
    assert opts.sql_comments is False
    assert opts.slow_threshold_ms == 1000.0
    assert opts.slow_ns == 1_000_000_000
    assert opts.capture_parameters is False


def test_configure_changes_only_what_is_given_and_bumps_generation() -> None:
    before = _options.OPTIONS.generation
    opts = configure(sensitive_tables=["Public.Users", " cards "], slow_threshold_ms=25)
    assert opts.sensitive_tables == {"public.users", "cards"}
    assert opts.slow_ns == 25_000_000
    assert opts.sql_comments is False
    assert opts.generation == before + 1
    configure(sensitive_tables=None, slow_threshold_ms=None)
    assert opts.sensitive_tables == frozenset()
    assert opts.slow_ns is None
    assert "sensitive_tables=[]" in repr(opts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sensitive_tables": "users"}, "not a string"),
        ({"sensitive_tables": ["users", " "]}, "empty name"),
        ({"sql_comments": "yes"}, "sql_comments"),
        ({"slow_threshold_ms": -1}, "slow_threshold_ms"),
        ({"slow_threshold_ms": True}, "slow_threshold_ms"),
        ({"capture_parameters": 1}, "capture_parameters"),
        ({"max_parameter_length": 0}, "max_parameter_length"),
    ],
)
def test_invalid_values_raise_configuration_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        configure(**kwargs)  # type: ignore[arg-type]
    assert isinstance(ConfigurationError(), ValueError)


def test_instrument_rejects_non_connections() -> None:
    with pytest.raises(TypeError, match="psycopg Connection"):
        instrument(object())  # type: ignore[type-var]
    with pytest.raises(TypeError, match="psycopg Connection"):
        uninstrument("dsn")  # type: ignore[type-var]


def test_traced_query_argument_errors() -> None:
    with pytest.raises(TypeError, match="traced_query"):
        traced_query("SELECT 1", "SELECT 1")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="missing"):
        traced_query(None, "SELECT 1")  # type: ignore[call-overload]


def test_traced_query_decorator_keeps_function_identity_and_result() -> None:
    @traced_query(table="pitches")
    def load(x: int) -> int:
        """Doc."""
        return x * 2

    @traced_query
    async def aload(x: int) -> int:
        return x

    assert load(21) == 42
    assert load.__name__ == "load"
    assert load.__doc__ == "Doc."
    assert aload.__name__ == "aload"


def test_traced_transaction_argument_errors() -> None:
    with pytest.raises(TypeError, match="database connection or a function"):
        traced_transaction(42)  # type: ignore[call-overload]

    @traced_transaction(name="x")
    def no_conn() -> None:
        pass

    with pytest.raises(TypeError, match="no database connection"):
        no_conn()
