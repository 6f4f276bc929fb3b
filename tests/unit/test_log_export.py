"""The application's logs shipped as ``log`` records (``export_logs``, ``LogExportHandler``):
trace ids of the current span, sanitized text, ``extra=`` fields, levels, what is not shipped,
and a program whose output stays the same."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.web import LogExportHandler, add_trace_ids, export_event, export_logs, stop_export_logs
from pitchey_trace.web._common import stamp_exception
from pitchey_trace.web.logs import MAX_LOG_BODY, severity_number


@pytest.fixture
def shipped() -> Iterator[InMemoryExporter]:
    exporter = InMemoryExporter()
    pt.configure(service="pitch-api", environment="test", exporters=[exporter])
    export_logs("INFO")
    export_logs("INFO")  # idempotent
    try:
        yield exporter
    finally:
        stop_export_logs()


def log_records(exporter: InMemoryExporter) -> list[dict[str, Any]]:
    assert pt.force_flush(10)
    return [r for r in exporter.records if r["type"] == "log"]


def app_logger(name: str = "pitch.app") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    return logger


def test_records_carry_the_current_trace_sanitized_text_and_extras(shipped: InMemoryExporter) -> None:
    log = app_logger()
    with pt.span("POST /orders") as span:
        log.info("order for %s placed", "ada@pitchey.example", extra={"order_id": 42, "password": "hunter2"})
        try:
            raise ValueError("card 4242424242424242 declined")
        except ValueError:
            log.exception("charge failed")
    log.warning("outside any span", extra={"obj": object(), "_private": 1})
    log.debug("below the level")
    placed, failed, outside = log_records(shipped)
    validator = Draft202012Validator(json_schema())
    for rec in (placed, failed, outside):
        assert not list(validator.iter_errors(rec))
    assert (placed["trace_id"], placed["span_id"]) == (span.trace_id_hex, f"{span.span_id:016x}")
    assert placed["trace_flags"] & 1
    assert (placed["service"], placed["environment"], placed["logger"]) == ("pitch-api", "test", "pitch.app")
    assert (placed["severity_number"], placed["severity_text"]) == (9, "INFO")
    assert placed["body"] == "order for [EMAIL] placed"
    attrs = placed["attributes"]
    assert attrs["order_id"] == 42
    assert attrs["password"] != "hunter2"
    assert attrs["code.function.name"] == "test_records_carry_the_current_trace_sanitized_text_and_extras"
    assert attrs["code.line.number"] > 0
    assert (failed["severity_number"], failed["severity_text"]) == (17, "ERROR")
    assert failed["attributes"]["exception.type"] == "ValueError"
    assert "4242424242424242" not in str(failed)
    assert "Traceback" in failed["attributes"]["exception.stacktrace"]
    assert (outside["trace_id"], outside["span_id"], outside["trace_flags"]) == (None, None, 0)
    assert "obj" not in outside["attributes"]
    assert "_private" not in outside["attributes"]


def test_an_exception_that_escaped_a_request_keeps_its_trace(shipped: InMemoryExporter) -> None:
    """The server logs an exception that escaped a traced request after the request's span
    ended (uvicorn's "Exception in ASGI application"): the record gets that request's ids."""
    with pt.span("GET /boom") as span:
        exc = RuntimeError("boom")
        stamp_exception(exc, span)  # (what the middleware does as the exception leaves)
    logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
    [rec] = log_records(shipped)
    assert (rec["trace_id"], rec["span_id"]) == (span.trace_id_hex, f"{span.span_id:016x}")
    assert rec["attributes"]["exception.type"] == "RuntimeError"


def test_what_is_not_shipped(shipped: InMemoryExporter) -> None:
    log = app_logger()
    logging.getLogger("pitchey_trace.anything").warning("the SDK's own")  # no feedback
    with pt.suppress_tracing():
        log.warning("suppressed")
    filtered = app_logger("pitch.filtered")
    rejecting = logging.Filter("nothing.matches")
    filtered.addFilter(rejecting)
    try:
        filtered.warning("rejected by the logger's filter")
    finally:
        filtered.removeFilter(rejecting)
    stop_export_logs()
    log.warning("after stop")
    assert log_records(shipped) == []


def test_loggers_without_handlers_or_propagation_are_shipped_too(shipped: InMemoryExporter) -> None:
    lone = app_logger("pitch.lone")
    lone.propagate = False
    try:
        lone.info("nobody prints me")
    finally:
        lone.propagate = True
    [rec] = log_records(shipped)
    assert rec["body"] == "nobody prints me"


def test_level_long_bodies_odd_formats_and_threads(shipped: InMemoryExporter) -> None:
    export_logs(logging.WARNING)  # a second call changes the level
    log = app_logger()
    log.info("now below the level")
    log.warning("x" * (MAX_LOG_BODY + 10))
    quiet = app_logger("pitch.quiet")  # (not propagated to pytest's handler, which would raise)
    quiet.propagate = False
    try:
        quiet.warning("%d pitches", "not a number")  # the template is kept, counted
    finally:
        quiet.propagate = True
    threads = [threading.Thread(target=log.error, args=(f"from thread {i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = log_records(shipped)
    assert len(records) == 6
    assert len(records[0]["body"]) == MAX_LOG_BODY
    assert records[0]["body"].endswith("\u2026")
    assert records[1]["body"] == "%d pitches"
    assert _stats.get("misuse.log_format") == 1
    assert sorted(r["body"] for r in records[2:]) == [f"from thread {i}" for i in range(4)]
    assert {r["attributes"]["thread.name"] for r in records[2:]} != {"MainThread"}


def test_handler_for_hand_made_configuration_and_nothing_before_configure() -> None:
    logger = app_logger("pitch.handler")
    logger.propagate = False
    handler = LogExportHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        logger.warning("before configure")  # nowhere to go: nothing, no error
        exporter = InMemoryExporter()
        pt.configure(service="pitch-api", exporters=[exporter])
        logger.info("below the handler's level")
        logger.error("shipped by the handler")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r["body"] for r in log_records(exporter)] == ["shipped by the handler"]


def test_severity_numbers() -> None:
    levels = [1, 10, 15, 19, 20, 25, 30, 40, 50, 55, 100]
    assert [severity_number(n) for n in levels] == [1, 5, 7, 8, 9, 11, 13, 17, 21, 23, 24]
    with pytest.raises(ValueError, match="level"):
        export_logs("LOUD")


def test_a_program_prints_what_it_printed_before() -> None:
    program = (
        "import logging, pitchey_trace as pt\n"
        "from pitchey_trace.exporters import InMemoryExporter\n"
        "from pitchey_trace.web import export_logs\n"
        "mem = InMemoryExporter()\n"
        "pt.configure(service='x', exporters=[mem])\n"
        "export_logs()\n"
        "logging.getLogger('app').warning('disk almost full')\n"
        "pt.force_flush()\n"
        "print(sum(r['type'] == 'log' for r in mem.records))\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "disk almost full" in proc.stderr  # logging's last resort still prints it
    assert proc.stdout.strip() == "1"


def test_structlog_events_shipped_by_the_processor() -> None:
    """structlog's own logger (PrintLogger): its events never reach logging; export_event
    ships them, with the span's ids, the method's level, the exception and scalar keys."""
    out = io.StringIO()
    exporter = InMemoryExporter()
    pt.configure(service="pitch-api", exporters=[exporter])
    structlog.configure(
        processors=[add_trace_ids, export_event, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        with pt.span("POST /orders") as span:
            log.warning("order refused", customer="ada@pitchey.example", order_id=7, obj=object())
            try:
                raise KeyError("sku-9")
            except KeyError:
                log.exception("lookup failed", logger="orders")
        log.info("idle")
    finally:
        structlog.reset_defaults()
    refused, failed, idle = log_records(exporter)
    assert (refused["trace_id"], refused["span_id"]) == (span.trace_id_hex, f"{span.span_id:016x}")
    assert (refused["severity_text"], refused["severity_number"], refused["logger"]) == (
        "WARNING",
        13,
        "structlog",
    )
    assert refused["body"] == "order refused"
    assert refused["attributes"]["customer"] == "[EMAIL]"
    assert refused["attributes"]["order_id"] == 7
    assert "obj" not in refused["attributes"]
    assert (failed["severity_text"], failed["logger"]) == ("ERROR", "orders")
    assert failed["attributes"]["exception.type"] == "KeyError"
    assert (idle["trace_id"], idle["body"]) == (None, "idle")
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert printed[0]["customer"] == "ada@pitchey.example"  # what the program prints is its own
    assert [p["event"] for p in printed] == ["order refused", "lookup failed", "idle"]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class UnprintableMessage:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_unprintable_exceptions_and_messages_are_shipped(shipped: InMemoryExporter) -> None:
    # Logging itself prints such an exception ("Unprintable: <exception str() failed>").
    log = app_logger("pitch.unprintable")
    log.propagate = False  # (pytest's capture handler fails the test on a message it cannot format)
    try:
        with pt.span("job"):
            try:
                raise Unprintable
            except Unprintable:
                log.exception("charge failed")
            log.warning(UnprintableMessage())
    finally:
        log.propagate = True
    failed, odd = log_records(shipped)
    assert failed["body"] == "charge failed"
    attrs = failed["attributes"]
    assert (attrs["exception.type"], attrs["exception.message"]) == (
        "Unprintable",
        "<exception str() failed>",
    )
    assert attrs["exception.stacktrace"].endswith("Unprintable: <exception str() failed>\n")
    assert odd["body"] == "<unprintable UnprintableMessage>"
    assert _stats.get("misuse.log_format") == 1


def test_structlog_unprintable_event_and_exception_are_shipped() -> None:
    exporter = InMemoryExporter()
    pt.configure(service="pitch-api", exporters=[exporter])
    event = {"event": UnprintableMessage(), "exc_info": Unprintable()}
    assert export_event(None, "error", event) is event
    [rec] = log_records(exporter)
    assert rec["body"] == "<unprintable UnprintableMessage>"
    assert rec["attributes"]["exception.message"] == "<exception str() failed>"
