"""Process-wide options of the PostgreSQL instrumentation (``pitchey_trace.db.configure``).

Read on the hot path as attributes of one object; every change bumps ``generation`` so that
per-connection statement caches (which bake some options in) rebuild themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pitchey_trace.exceptions import ConfigurationError

__all__ = ["DEFAULT_SENSITIVE_TABLES", "OPTIONS", "DbOptions", "configure"]

#: Tables whose every access emits an audit record unless configured otherwise.
DEFAULT_SENSITIVE_TABLES = frozenset({"users", "payments", "auth_tokens"})

_KEEP: Any = object()


class DbOptions:
    """Current settings; see :func:`configure` for their meaning."""

    __slots__ = (
        "capture_parameters",
        "generation",
        "max_parameter_length",
        "sensitive_tables",
        "slow_ns",
        "slow_threshold_ms",
        "sql_comments",
    )

    def __init__(self) -> None:
        self.sensitive_tables: frozenset[str] = DEFAULT_SENSITIVE_TABLES
        self.sql_comments = False
        self.slow_threshold_ms: float | None = 1000.0
        self.slow_ns: int | None = 1_000_000_000
        self.capture_parameters = False
        self.max_parameter_length = 256
        self.generation = 0

    def __repr__(self) -> str:
        return (
            f"DbOptions(sensitive_tables={sorted(self.sensitive_tables)!r}, "
            f"sql_comments={self.sql_comments!r}, slow_threshold_ms={self.slow_threshold_ms!r}, "
            f"capture_parameters={self.capture_parameters!r}, "
            f"max_parameter_length={self.max_parameter_length!r})"
        )


#: The one options object (mutated in place by :func:`configure`).
OPTIONS = DbOptions()


def configure(
    *,
    sensitive_tables: Iterable[str] | None = _KEEP,
    sql_comments: bool = _KEEP,
    slow_threshold_ms: float | None = _KEEP,
    capture_parameters: bool = _KEEP,
    max_parameter_length: int = _KEEP,
) -> DbOptions:
    """Change how database calls are traced (process-wide). Arguments left out keep their value.

    Args:
        sensitive_tables: table names (case-insensitive; ``schema.table`` or bare ``table``)
            whose every access emits an audit record (dataset ``audit``, category
            ``data_access``). Default ``users``, ``payments``, ``auth_tokens``; ``None`` or an
            empty list turns auditing off.
        sql_comments: prefix each statement with ``/*traceparent='00-...'*/`` so PostgreSQL
            logs and ``pg_stat_activity`` can be joined to traces (default off). ``COPY`` and
            statements run with ``prepare=True`` (or on a connection with
            ``prepare_threshold=0``) are left unchanged. Because the comment differs per
            query, psycopg's automatic preparation never triggers for commented statements.
        slow_threshold_ms: a query at least this slow gets a ``slow_query`` span event and a
            WARNING on the ``pitchey_trace.db`` logger (default 1000; ``None`` turns it off).
        capture_parameters: record query parameter values as ``db.query.parameter.<i>`` (or
            ``.<name>``) attributes (default off; they still pass the export sanitizer).
        max_parameter_length: captured string values are cut to this many characters.

    Returns:
        The updated options.

    Raises:
        ConfigurationError: for an invalid value.
    """
    if sensitive_tables is not _KEEP:
        if isinstance(sensitive_tables, str):
            raise ConfigurationError("sensitive_tables must be an iterable of table names, not a string")
        names = frozenset(str(t).strip().lower() for t in (sensitive_tables or ()))
        if any(not n for n in names):
            raise ConfigurationError("sensitive_tables contains an empty name")
        OPTIONS.sensitive_tables = names
    if sql_comments is not _KEEP:
        if not isinstance(sql_comments, bool):
            raise ConfigurationError(f"sql_comments must be a bool, got {sql_comments!r}")
        OPTIONS.sql_comments = sql_comments
    if slow_threshold_ms is not _KEEP:
        if slow_threshold_ms is None:
            OPTIONS.slow_threshold_ms = None
            OPTIONS.slow_ns = None
        elif (
            isinstance(slow_threshold_ms, bool)
            or not isinstance(slow_threshold_ms, (int, float))
            or (slow_threshold_ms < 0)
        ):
            raise ConfigurationError(f"slow_threshold_ms must be >= 0 or None, got {slow_threshold_ms!r}")
        else:
            OPTIONS.slow_threshold_ms = float(slow_threshold_ms)
            OPTIONS.slow_ns = int(slow_threshold_ms * 1_000_000)
    if capture_parameters is not _KEEP:
        if not isinstance(capture_parameters, bool):
            raise ConfigurationError(f"capture_parameters must be a bool, got {capture_parameters!r}")
        OPTIONS.capture_parameters = capture_parameters
    if max_parameter_length is not _KEEP:
        if (
            isinstance(max_parameter_length, bool)
            or not isinstance(max_parameter_length, int)
            or (max_parameter_length <= 0)
        ):
            raise ConfigurationError(
                f"max_parameter_length must be a positive int, got {max_parameter_length!r}"
            )
        OPTIONS.max_parameter_length = max_parameter_length
    OPTIONS.generation += 1
    return OPTIONS


def reset() -> None:
    """Restore the defaults (tests)."""
    configure(
        sensitive_tables=DEFAULT_SENSITIVE_TABLES,
        sql_comments=False,
        slow_threshold_ms=1000.0,
        capture_parameters=False,
        max_parameter_length=256,
    )
