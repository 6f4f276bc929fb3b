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

And the application's logs themselves, shipped beside its spans: :func:`export_logs` (or a
:class:`LogExportHandler`) turns each record of its level or above into a ``log`` record
(dataset ``logs``) with the trace and span current when it was logged, sanitized like every
record, for the exporters that take the dataset (``OTLPLogExporter`` to any OpenTelemetry
log backend, the archives, the console)::

    from pitchey_trace.web import export_logs
    export_logs("INFO")
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from pitchey_trace import _safety, _stats
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, Limits, _format_tb, _safe_str
from pitchey_trace._tracer import get_tracer
from pitchey_trace.records import app_log_record
from pitchey_trace.web._common import EXC_IDS_ATTR

__all__ = [
    "LogEventHandler",
    "LogExportHandler",
    "TraceContextFilter",
    "TraceFormatter",
    "add_trace_ids",
    "export_event",
    "export_logs",
    "instrument_logging",
    "stop_export_logs",
    "trace_ids",
    "uninstrument_logging",
]

#: Longest message kept in a ``log`` event (the rest is cut, marked with an ellipsis).
MAX_LOG_MESSAGE = 2048
#: Longest body of an exported ``log`` record, and of a text value taken from ``extra=``.
MAX_LOG_BODY = 8192  # (the sanitizer's default max_value_length: longer text it cuts anyway)
MAX_LOG_EXTRA_TEXT = 1024


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
    #: The default format for ``style="{"`` and ``style="$"`` (same fields).
    DEFAULT_FORMATS: dict[str, str] = {
        "%": DEFAULT_FORMAT,
        "{": "{asctime} {levelname} {name} [trace_id={trace_id} span_id={span_id}] {message}",
        "$": "${asctime} ${levelname} ${name} [trace_id=${trace_id} span_id=${span_id}] ${message}",
    }

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        validate: bool = True,
        *,
        missing: str = "",
    ) -> None:
        if not fmt:  # (the default in the given style: ``style="{"`` alone must not fail)
            fmt = self.DEFAULT_FORMATS.get(style, self.DEFAULT_FORMAT) if isinstance(style, str) else None
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
    logged exception escaped a traced request: ``exc_info`` as an exception, a tuple, or
    ``True`` / the ``exception`` method, read from ``sys.exc_info()``). Keys already present
    are kept."""
    if "trace_id" not in event_dict:
        exc = event_dict.get("exc_info")
        if exc is True or (exc is None and method_name == "exception"):
            exc = sys.exc_info()[1]  # (structlog's ``exception()`` and ``exc_info=True``)
        elif exc.__class__ is tuple:
            exc = exc[1] if len(exc) > 1 else None
        ids = trace_ids(exc if isinstance(exc, BaseException) else None)
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def _text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


def _message(record: logging.LogRecord, limit: int) -> str:
    """The formatted message, cut at ``limit`` characters (a record whose arguments do not fit
    its format: the template, counted; a message object whose ``str()`` fails: a placeholder)."""
    try:
        message = record.getMessage()
    except Exception:
        _stats.incr("misuse.log_format")
        message = _safe_str(record.msg)
    return _text(message, limit)


def _is_sdk_record(record: logging.LogRecord) -> bool:
    # (``logging.makeLogRecord()`` leaves ``name`` None; a handler must not fail on it)
    name = record.name
    return isinstance(name, str) and name.startswith("pitchey_trace")


def _code(record: logging.LogRecord) -> dict[str, Any]:
    # (a record made by hand, Logger.makeRecord without func or logging.makeLogRecord, has
    # None there: an attribute is never null)
    code = {
        "code.function.name": record.funcName,
        "code.file.path": record.pathname,
        "code.line.number": record.lineno,
    }
    return {k: v for k, v in code.items() if v is not None}


def _add_log_event(record: logging.LogRecord) -> None:
    """Add ``record`` to the current span as a ``log`` event (when a recording span is current
    and the record is not the SDK's own). Never raises."""
    span = CURRENT.get()
    if span is None or not span.is_recording or _is_sdk_record(record):
        return
    try:
        attrs: dict[str, Any] = {
            "log.level": record.levelname,
            "log.logger": record.name,
            "log.message": _message(record, MAX_LOG_MESSAGE),
            **_code(record),
        }
        exc = _record_exception(record)
        if isinstance(exc, BaseException):
            attrs["exception.type"] = type(exc).__qualname__
            attrs["exception.message"] = _safe_str(exc)[:MAX_LOG_MESSAGE]
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


class _Hook:
    """Calls ``action(record)`` for every log record of ``level`` and above, from any logger,
    without adding a handler: a handler on the root logger would stop logging's last-resort
    output to stderr in a program that set no handler of its own, changing what it prints.

    ``at_creation``: as the record is made (it wraps the log record factory), so ``action``
    runs before the logger's filters; else as the logger hands the record to its handlers
    (it wraps ``logging.Logger.callHandlers``): after the filters, with ``extra=`` set."""

    def __init__(self, action: Callable[[logging.LogRecord], None], *, at_creation: bool) -> None:
        self.action = action
        self.at_creation = at_creation
        self.level = logging.WARNING
        self.installed: tuple[Any, Any] | None = None  # (what we wrapped, ours)

    def _see(self, record: logging.LogRecord) -> None:
        try:
            if self.installed is not None and record.levelno >= self.level:
                self.action(record)
        except Exception as exc:  # (a record made by hand with an odd level)
            _safety.report("logs.hook", exc)

    def install(self, level: int | str) -> None:
        numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        if not isinstance(numeric, int) or isinstance(numeric, bool):
            raise ValueError(f"unknown logging level {level!r}")
        self.level = numeric
        if self.installed is not None:
            return
        previous: Any
        if self.at_creation:
            previous = logging.getLogRecordFactory()

            def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record: logging.LogRecord = previous(*args, **kwargs)
                self._see(record)
                return record

            logging.setLogRecordFactory(make)
            self.installed = (previous, make)
        else:
            previous = logging.Logger.callHandlers

            def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
                self._see(record)
                previous(logger, record)

            logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign,assignment]
            self.installed = (previous, call_handlers)

    def uninstall(self) -> None:
        # (if another layer wrapped ours since, ours stays in its chain but does nothing)
        if self.installed is None:
            return
        previous, ours = self.installed
        self.installed = None
        if self.at_creation:
            if logging.getLogRecordFactory() is ours:
                logging.setLogRecordFactory(previous)
        elif logging.Logger.__dict__.get("callHandlers") is ours:
            logging.Logger.callHandlers = previous  # type: ignore[method-assign]


_events = _Hook(_add_log_event, at_creation=True)


def instrument_logging(level: int | str = logging.WARNING) -> None:
    """Add every log record of ``level`` and above, from any logger, logged while a span is
    current to that span as a ``log`` event (attributes as for :class:`LogEventHandler`).
    It wraps the log record factory (``logging.setLogRecordFactory``), so handlers and what the
    program prints are unchanged; loggers' own levels still decide which records are made.
    Idempotent: a second call changes the level."""
    _events.install(level)


def uninstrument_logging() -> None:
    """Undo :func:`instrument_logging` (if another factory wrapped ours since, ours stays in
    its chain but adds nothing)."""
    _events.uninstall()


# -- the application's logs as records ---------------------------------------------------------------
_tracer = get_tracer()
# The attributes every LogRecord has (and those formatters and our filter add): the rest came
# from ``extra=`` and goes along as attributes.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "trace_id", "span_id", "taskName"}
)
_MAX_EXTRA = 32


def severity_number(levelno: int) -> int:
    """OpenTelemetry's severity number (1-24) of a ``logging`` level: DEBUG 5, INFO 9,
    WARNING 13, ERROR 17, CRITICAL 21; levels between them take the steps between."""
    if levelno < logging.DEBUG:
        return 1  # TRACE
    if levelno >= logging.CRITICAL:
        return min(24, 21 + (levelno - 50) * 4 // 10)
    return 5 + 4 * ((levelno - 10) // 10) + (levelno % 10) * 4 // 10


def _add_extras(attrs: dict[str, Any], fields: Mapping[Any, Any], keys: Iterable[Any]) -> None:
    """The scalar fields among ``keys`` as attributes (text cut; objects left out: their text
    could be anything, and costly to make), at most ``_MAX_EXTRA``."""
    extra = 0
    for key in keys:
        if key.__class__ is not str or key.startswith("_") or extra >= _MAX_EXTRA:
            continue
        value = fields[key]
        if value.__class__ is str:
            value = _text(value, MAX_LOG_EXTRA_TEXT)
        elif value.__class__ not in (int, float, bool):
            continue
        attrs.setdefault(key, value)
        extra += 1


def _ship(
    logger: str, levelno: int, level: str, message: str, when_ns: int, exc: object, attrs: dict[str, Any]
) -> None:
    """Hand one log line to the pipeline as a ``log`` record (with the current span's ids, or
    those of the traced request ``exc`` escaped from). Never raises."""
    span = CURRENT.get()
    pipeline = _tracer.pipeline
    if span is SUPPRESSED or pipeline is None:
        return  # (an export thread, suppress_tracing(), or tracing not configured)
    try:
        if isinstance(exc, BaseException):
            attrs["exception.type"] = type(exc).__qualname__
            attrs["exception.message"] = _text(_safe_str(exc), MAX_LOG_BODY)
            attrs["exception.stacktrace"] = _format_tb(exc)
        if len(attrs) > Limits.max_attributes:
            _stats.incr("dropped.attribute_limit", len(attrs) - Limits.max_attributes)
            attrs = dict(list(attrs.items())[: Limits.max_attributes])
        if span is not None and span.trace_id:
            ids = (span.trace_id, span.span_id, span.trace_flags)
        else:  # an exception that escaped a traced request, logged by the server afterwards
            stamped = _from_exception(exc)
            ids = (int(stamped[0], 16), int(stamped[1], 16), 0) if stamped is not None else (0, 0, 0)
        pipeline.emit(
            app_log_record(
                time_unix_nano=when_ns,
                severity_number=severity_number(levelno),
                severity_text=level,
                logger=logger,
                body=_text(message, MAX_LOG_BODY),
                service=pipeline.service,
                environment=pipeline.environment,
                trace_id=ids[0],
                span_id=ids[1],
                trace_flags=ids[2] & 0xFF,
                attributes=attrs,
            )
        )
    except Exception as internal:
        _safety.report("logs.export", internal)


def _export_log(record: logging.LogRecord) -> None:
    """Ship ``record`` (see :class:`LogExportHandler`). Never raises."""
    if _is_sdk_record(record) or CURRENT.get() is SUPPRESSED:
        return  # the SDK's own (no feedback), or an export thread / suppress_tracing()
    try:
        attrs = _code(record)
        if record.threadName:
            attrs["thread.name"] = record.threadName
        fields = record.__dict__
        _add_extras(attrs, fields, sorted(fields.keys() - _STANDARD))  # (extra=: usually few)
        message = _message(record, MAX_LOG_BODY)
        when = int(record.created * 1e9)
        name = record.name if isinstance(record.name, str) else _safe_str(record.name)
    except Exception as exc:
        _safety.report("logs.export", exc)
        return
    _ship(name, record.levelno, record.levelname, message, when, _record_exception(record), attrs)


# structlog method names -> (logging level, OpenTelemetry-style name)
_STRUCTLOG_LEVELS = {
    "debug": (logging.DEBUG, "DEBUG"),
    "info": (logging.INFO, "INFO"),
    "msg": (logging.INFO, "INFO"),
    "warning": (logging.WARNING, "WARNING"),
    "warn": (logging.WARNING, "WARNING"),
    "error": (logging.ERROR, "ERROR"),
    "exception": (logging.ERROR, "ERROR"),
    "critical": (logging.CRITICAL, "CRITICAL"),
    "fatal": (logging.CRITICAL, "CRITICAL"),
}
# Keys structlog's own processors add or read: not shipped as attributes.
_STRUCTLOG_KEYS = frozenset(
    ("event", "level", "logger", "logger_name", "timestamp", "exc_info", "exception", "stack_info", "stack")
)


def export_event(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ship each event as a ``log`` record, as :func:`export_logs` does for
    the standard library's records (for structlog's own loggers, ``PrintLogger`` and the like,
    whose events never reach ``logging``; events routed through ``logging`` are shipped by
    ``export_logs`` instead, so use one of the two). The message is the ``event``, the level
    the method's (``exception`` is ERROR), the logger name ``logger`` or ``logger_name`` (else
    ``structlog``), ``exc_info`` is recorded as the exception, and the other keys with text,
    number or boolean values are attributes (``trace_id`` / ``span_id`` too, when
    :func:`add_trace_ids` ran). Put it before the renderer; the event dict is returned
    unchanged.
    """
    try:
        name = event_dict.get("logger") or event_dict.get("logger_name")
        if isinstance(name, str) and name.startswith("pitchey_trace"):
            return event_dict
        levelno, level = _STRUCTLOG_LEVELS.get(method_name, (logging.INFO, "INFO"))
        exc: object = event_dict.get("exc_info")
        if exc is True or (method_name == "exception" and exc is None):
            exc = sys.exc_info()[1]
        elif isinstance(exc, tuple):
            exc = exc[1] if len(exc) > 1 else None
        attrs: dict[str, Any] = {}
        # (text keys only: sorting mixed key types fails, and only text keys are attributes)
        keys = sorted(k for k in event_dict if k.__class__ is str and k not in _STRUCTLOG_KEYS)
        _add_extras(attrs, event_dict, keys)
        message = _text(_safe_str(event_dict.get("event", "")), MAX_LOG_BODY)
    except Exception as internal:
        _safety.report("logs.export", internal)
        return event_dict
    _ship(
        name if isinstance(name, str) and name else "structlog",
        levelno,
        level,
        message,
        time.time_ns(),
        exc,
        attrs,
    )
    return event_dict


class LogExportHandler(logging.Handler):
    """A ``logging.Handler`` that ships each record (of ``level`` and above) as a ``log``
    record, for logging set up by hand (``dictConfig``); :func:`export_logs` does the same
    without a handler.

    The record: ``time_unix_nano`` (the record's), ``severity_number`` (OpenTelemetry's:
    :func:`severity_number`) and ``severity_text`` (``WARNING``), ``logger``, ``body`` (the
    formatted message, at most :data:`MAX_LOG_BODY` characters), the ``trace_id`` / ``span_id``
    / ``trace_flags`` of the span current when it was logged (outside one: the ids of the traced
    request the record's exception escaped from, as the server's "Exception in ASGI
    application" has; else None), and attributes:
    ``code.function.name``, ``code.file.path``, ``code.line.number``, ``thread.name``,
    ``exception.type`` / ``.message`` / ``.stacktrace`` when it carries an exception, and the
    ``extra=`` fields whose values are text, numbers or booleans. Everything goes through the
    sanitizer before export. The SDK's own ``pitchey_trace`` records, records logged on its
    export threads or under :func:`pitchey_trace.suppress_tracing`, and all records before
    tracing is configured are not shipped; nothing here raises into the logging call. The
    records share the pipeline's bounded queue with the spans (a full queue drops and counts,
    ``dropped.queue_full``).
    """

    def __init__(self, level: int | str = logging.INFO) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        _export_log(record)


_exported = _Hook(_export_log, at_creation=False)


def export_logs(level: int | str = logging.INFO) -> None:
    """Ship every log record of ``level`` and above, from any logger, as a ``log`` record
    (dataset ``logs``; fields as for :class:`LogExportHandler`) to the exporters that take the
    dataset: :class:`~pitchey_trace.exporters.OTLPLogExporter` sends them to an OpenTelemetry
    log backend linked to their traces. It takes each record as a logger hands it to its
    handlers (it wraps ``logging.Logger.callHandlers``): after the logger's level and filters,
    whatever handlers there are (none, or ``propagate=False``), and the program's handlers and
    output are unchanged. Idempotent: a second call changes the level."""
    _exported.install(level)


def stop_export_logs() -> None:
    """Undo :func:`export_logs`."""
    _exported.uninstall()
