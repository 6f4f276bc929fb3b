"""The decorator forms of ``traced_query`` and ``traced_transaction``, for any driver: the
caller supplies how connections are found (and instrumented) among a call's arguments and
how a traced transaction is opened on one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pitchey_trace import _safety
from pitchey_trace._span import AnySpan, AttributeValue, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.db._ops import record_error

__all__ = ["decorate_query", "decorate_transaction"]

F = TypeVar("F", bound=Callable[..., Any])
#: Instruments the connections among ``(args, kwargs)`` and returns the first one (or None).
InstrumentArgs = Callable[[tuple[Any, ...], Mapping[str, Any]], Any]


def _enter_span(name: str, attrs: dict[str, AttributeValue]) -> AnySpan | None:
    try:
        tracer = get_tracer()
        if tracer.pipeline is None:
            return None
        span = tracer.start_span(name, attrs, SpanKind.INTERNAL)
        span.__enter__()
        return span
    except Exception as exc:
        _safety.report("db.traced_query", exc)
        return None


def _exit_span(span: AnySpan | None, exc: BaseException | None) -> None:
    if span is None:
        return
    try:
        if isinstance(exc, Exception):
            record_error(span, exc)  # values from the message never reach the span
    except Exception as internal:
        _safety.report("db.traced_query", internal)
    try:
        span.__exit__(None, None, None)
    except Exception as internal:
        _safety.report("db.traced_query", internal)


def decorate_query(
    func: F, table: str | None, name: str | None, operation: str | None, instrument_args: InstrumentArgs
) -> F:
    """``@traced_query``: each call in an internal span that parents its queries."""
    if not callable(func):
        raise TypeError("@traced_query decorates a function")
    span_name = name or func.__qualname__
    attrs: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "code.function.name": f"{func.__module__}.{func.__qualname__}",
    }
    if table:
        attrs["db.collection.name"] = table
    if operation:
        attrs["db.operation.name"] = operation

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            instrument_args(args, kwargs)
            span = _enter_span(span_name, attrs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                _exit_span(span, exc)
                raise
            _exit_span(span, None)
            return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        instrument_args(args, kwargs)
        span = _enter_span(span_name, attrs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _exit_span(span, exc)
            raise
        _exit_span(span, None)
        return result

    return wrapper  # type: ignore[return-value]


def decorate_transaction(func: F, instrument_args: InstrumentArgs, transaction: Callable[[Any], Any]) -> F:
    """``@traced_transaction``: each call inside ``transaction(conn)`` on the first connection
    among its arguments."""
    where = f"{func.__module__}.{func.__qualname__}"

    def connection_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        conn = instrument_args(args, kwargs)
        if conn is None:
            raise TypeError(f"@traced_transaction: no database connection among the arguments of {where}")
        return conn

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with transaction(connection_of(args, kwargs)):
                return await func(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with transaction(connection_of(args, kwargs)):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def query_entry(
    target: Any,
    sql: Any,
    params: Any,
    table: str | None,
    name: str | None,
    operation: str | None,
    *,
    is_target: Callable[[Any], bool],
    run: Callable[[Any, Any, Any], Any],
    instrument_args: InstrumentArgs,
) -> Any:
    """``traced_query``'s argument handling: one call (``run(target, sql, params)`` for a
    connection or cursor that ``is_target`` accepts) or one of the decorator forms."""
    if target is not None and not is_target(target):
        if callable(target) and sql is None and params is None:
            return decorate_query(target, table, name, operation, instrument_args)
        raise TypeError(
            "traced_query(conn_or_cursor, sql, params) or @traced_query(table=...); "
            f"got {type(target).__name__}"
        )
    if target is None:
        if sql is not None or params is not None:
            raise TypeError("traced_query: the connection or cursor is missing")
        return lambda fn: decorate_query(fn, table, name, operation, instrument_args)
    if sql is None:
        raise TypeError("traced_query(conn, sql, params): sql is missing")
    return run(target, sql, params)


def transaction_entry(
    target: Any,
    *,
    is_connection: Callable[[Any], bool],
    transaction: Callable[[Any], Any],
    instrument_args: InstrumentArgs,
) -> Any:
    """``traced_transaction``'s argument handling: ``transaction(conn)`` for a connection
    that ``is_connection`` accepts, or one of the decorator forms."""
    if target is None:
        return lambda fn: decorate_transaction(fn, instrument_args, transaction)
    if is_connection(target):
        return transaction(target)
    if callable(target):
        return decorate_transaction(target, instrument_args, transaction)
    raise TypeError(
        f"traced_transaction expects a database connection or a function, got {type(target).__name__}"
    )
