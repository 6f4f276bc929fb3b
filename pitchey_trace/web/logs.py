"""Log correlation: put the current trace and span ids on log records.

Standard logging (attach the filter to the handlers, so records from every logger get it)::

    import logging
    from pitchey_trace.web import TraceContextFilter, TraceFormatter
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(TraceFormatter())   # "... [trace_id=... span_id=...] message"

structlog::

    structlog.configure(processors=[add_trace_ids, structlog.processors.JSONRenderer()])

Outside a span the fields are empty strings (``missing``), so format strings never fail. A
record about an exception that escaped a traced request, logged by the server after the
request's span ended (uvicorn's "Exception in ASGI application"), gets that request's ids.

The other way round, :func:`instrument_logging` (or a :class:`LogEventHandler` in a logging
configuration) puts log records into the trace: each record of its level or above, logged while
a span is current, becomes a ``log`` event of that span, so a request's warnings show in its
waterfall::

    from pitchey_trace.web import instrument_logging
    instrument_logging()            # WARNING and above, every logger (handlers unchanged)
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from pitchey_trace import _safety, _stats
from pitchey_trace._context import CURRENT
from pitchey_trace.web._common import EXC_IDS_ATTR

__all__ = [
    "LogEventHandler",
    "TraceContextFilter",
    "TraceFormatter",
    "add_trace_ids",
    "instrument_logging",
    "trace_ids",
    "uninstrument_logging",
]

#: Longest message kept in a ``log`` event (the rest is cut, marked with an ellipsis).
MAX_LOG_MESSAGE = 2048


def _from_exception(exc: object) -> tuple[str, str] | None:
    try:
        ids = getattr(exc, EXC_IDS_ATTR, None)
    except Exception:  # an object whose __getattr__ fails: no ids (a filter must not raise)
        return None
    if isinstance(ids, tuple) and len(ids) == 2:
        return ids
    return None


def trace_ids(exc: object = None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span; else the ids of the traced request
    ``exc`` escaped from; else None."""
    cur = CURRENT.get()
    if cur is not None and cur.trace_id:
        return f"{cur.trace_id:032x}", f"{cur.span_id:016x}"
    if exc is not None:
        return _from_exception(exc)
    return None


def _record_exception(record: logging.LogRecord) -> object:
    # The logger always stores a 3-tuple or None; a record built by hand may hold anything,
    # and a filter that raises fails the application's logging call.
    info = record.exc_info
    return info[1] if isinstance(info, tuple) and len(info) == 3 else None


class TraceContextFilter(logging.Filter):
    """A logging filter that adds ``trace_id`` and ``span_id`` to every record (never drops
    one). Attach it to handlers. Values the record already has (``extra=``) are kept."""

    def __init__(self, name: str = "", *, missing: str = "") -> None:
        super().__init__(name)
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids; always True."""
        if "trace_id" not in record.__dict__:
            ids = trace_ids(_record_exception(record))
            if ids is None:
                record.trace_id = record.span_id = self.missing
            else:
                record.trace_id, record.span_id = ids
        return True


class TraceFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose records always have ``trace_id`` and ``span_id`` (added
    like :class:`TraceContextFilter` does), with a default format that shows them."""

    DEFAULT_FORMAT = (
        "%(asctime)s %(levelname)s %(name)s [trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s"
    )

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        validate: bool = True,
        *,
        missing: str = "",
    ) -> None:
        super().__init__(fmt or self.DEFAULT_FORMAT, datefmt, style, validate)
        self._filter = TraceContextFilter(missing=missing)

    def format(self, record: logging.LogRecord) -> str:
        """Add the ids, then format as ``logging.Formatter`` does."""
        self._filter.filter(record)
        return super().format(record)


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id`` and ``span_id`` when a span is current (or the
    logged exception escaped a traced request). Keys already present are kept."""
    if "trace_id" not in event_dict:
        exc = event_dict.get("exc_info")
        if exc.__class__ is tuple:
            exc = exc[1] if len(exc) > 1 else None
        ids = trace_ids(exc if isinstance(exc, BaseException) else None)
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def _add_log_event(record: logging.LogRecord) -> None:
    """Add ``record`` to the current span as a ``log`` event (when a recording span is current
    and the record is not the SDK's own). Never raises."""
    span = CURRENT.get()
    if span is None or not span.is_recording or record.name.startswith("pitchey_trace"):
        return
    try:
        try:
            message = record.getMessage()
        except Exception:  # the application's arguments do not fit its format: the template
            _stats.incr("misuse.log_format")
            message = str(record.msg)
        if len(message) > MAX_LOG_MESSAGE:
            message = message[: MAX_LOG_MESSAGE - 1] + "\u2026"
        attrs: dict[str, Any] = {
            "log.level": record.levelname,
            "log.logger": record.name,
            "log.message": message,
            "code.function.name": record.funcName,
            "code.file.path": record.pathname,
            "code.line.number": record.lineno,
        }
        exc = _record_exception(record)
        if isinstance(exc, BaseException):
            attrs["exception.type"] = type(exc).__qualname__
            attrs["exception.message"] = str(exc)[:MAX_LOG_MESSAGE]
        span.add_event("log", attrs, int(record.created * 1e9))
    except Exception as exc:
        _safety.report("logs.event", exc)


class LogEventHandler(logging.Handler):
    """A ``logging.Handler`` that adds each record (of ``level`` and above) logged while a
    recording span is current to that span as a ``log`` event, for logging set up by hand
    (``dictConfig``); :func:`instrument_logging` does the same without a handler.

    Event attributes: ``log.level`` (``WARNING``), ``log.logger``, ``log.message`` (the
    formatted message, at most :data:`MAX_LOG_MESSAGE` characters), ``code.function.name``,
    ``code.file.path``, ``code.line.number``, and ``exception.type`` / ``exception.message``
    when the record carries an exception. The event's time is the record's. Like every
    attribute they go through the sanitizer before export, and the span's event limit applies.
    Records of the SDK's own ``pitchey_trace`` loggers are skipped (no feedback). A record whose
    arguments do not fit its format keeps the unformatted template (counter
    ``misuse.log_format``); nothing here raises into the logging call.
    """

    def __init__(self, level: int | str = logging.WARNING) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        _add_log_event(record)


# instrument_logging() wraps the log record factory instead of adding a handler: a handler on
# the root logger would stop logging's last-resort output to stderr in a program that set no
# handler of its own, changing what that program prints.
_factory: list[Any] = []  # [the factory we wrapped, ours] while installed
_level = [logging.WARNING]


def instrument_logging(level: int | str = logging.WARNING) -> None:
    """Add every log record of ``level`` and above, from any logger, logged while a span is
    current to that span as a ``log`` event (attributes as for :class:`LogEventHandler`).
    It wraps the log record factory (``logging.setLogRecordFactory``), so handlers and what the
    program prints are unchanged; loggers' own levels still decide which records are made.
    Idempotent: a second call changes the level."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown logging level {level!r}")
    _level[0] = numeric
    if _factory:
        return
    previous = logging.getLogRecordFactory()

    def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.levelno >= _level[0] and _factory:
            _add_log_event(record)
        return record

    logging.setLogRecordFactory(record_factory)
    _factory[:] = [previous, record_factory]


def uninstrument_logging() -> None:
    """Undo :func:`instrument_logging` (if another factory wrapped ours since, ours stays in
    its chain but adds nothing)."""
    if not _factory:
        return
    previous, ours = _factory
    _factory.clear()
    if logging.getLogRecordFactory() is ours:
        logging.setLogRecordFactory(previous)
