"""Log correlation: the logging filter and formatter, and the structlog processor."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import TraceContextFilter, TraceFormatter, add_trace_ids, trace_ids
from pitchey_trace.web._common import EXC_IDS_ATTR


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceContextFilter(missing="-"))
    handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s %(message)s"))
    log = logging.getLogger("pitchey_trace_test_logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)


def test_filter_adds_the_current_ids(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    with capture_spans():
        log.info("before")
        with pt.span("work") as span:
            log.info("inside")
        log.info("extra wins", extra={"trace_id": "mine", "span_id": "also-mine"})
    lines = stream.getvalue().splitlines()
    assert lines == [
        "- - before",
        f"{span.trace_id:032x} {span.span_id:016x} inside",
        "mine also-mine extra wins",
    ]


def test_unsampled_spans_still_correlate(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    with capture_spans(sample_rate=0.0), pt.span("dropped") as span:
        log.info("x")
    assert stream.getvalue().split()[0] == f"{span.trace_id:032x}"


def test_exception_from_a_finished_request_keeps_its_ids(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    error = RuntimeError("late log")
    setattr(error, EXC_IDS_ATTR, ("a" * 32, "b" * 16))
    try:
        raise error
    except RuntimeError:
        log.exception("server saw it")
    assert stream.getvalue().startswith(f"{'a' * 32} {'b' * 16} server saw it")


def test_formatter_shows_ids_without_a_filter() -> None:
    record = logging.LogRecord("n", logging.WARNING, __file__, 1, "msg %s", ("arg",), None)
    with capture_spans(), pt.span("work") as span:
        text = TraceFormatter().format(record)
    assert f"[trace_id={span.trace_id:032x} span_id={span.span_id:016x}] msg arg" in text
    plain = logging.LogRecord("n", logging.WARNING, __file__, 1, "no span", (), None)
    assert "[trace_id= span_id=] no span" in TraceFormatter().format(plain)
    custom = TraceFormatter("%(trace_id)s|%(message)s", missing="none")
    assert custom.format(logging.LogRecord("n", logging.INFO, __file__, 1, "m", (), None)) == "none|m"


def test_trace_ids_helper() -> None:
    assert trace_ids() is None
    assert trace_ids(ValueError("unrelated")) is None
    with capture_spans(), pt.span("s") as span:
        assert trace_ids() == (f"{span.trace_id:032x}", f"{span.span_id:016x}")


def test_structlog_processor_in_a_real_pipeline() -> None:
    out = io.StringIO()
    structlog.configure(
        processors=[add_trace_ids, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        with capture_spans():
            log.info("outside")
            with pt.span("work") as span:
                log.info("inside", user="u1")
                log.info("kept", trace_id="explicit")
    finally:
        structlog.reset_defaults()
    outside, inside, kept = (json.loads(line) for line in out.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside == {
        "event": "inside",
        "user": "u1",
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
    }
    assert kept["trace_id"] == "explicit"


def test_structlog_processor_reads_exc_info() -> None:
    error = KeyError("k")
    setattr(error, EXC_IDS_ATTR, ("c" * 32, "d" * 16))
    try:
        raise error
    except KeyError:
        as_tuple = add_trace_ids(None, "error", {"event": "e", "exc_info": sys.exc_info()})
    as_exc = add_trace_ids(None, "error", {"event": "e", "exc_info": error})
    as_true = add_trace_ids(None, "error", {"event": "e", "exc_info": True})
    assert as_tuple["trace_id"] == as_exc["trace_id"] == "c" * 32
    assert as_exc["span_id"] == "d" * 16
    assert "trace_id" not in as_true


def test_filter_never_raises_on_odd_records() -> None:
    # A filter that raises fails the application's logging call: hand-built records may carry
    # anything as exc_info, and exceptions may refuse attribute reads.
    class Refusing(Exception):
        def __getattribute__(self, name: str) -> Any:
            if name == EXC_IDS_ATTR:
                raise RuntimeError("no")
            return super().__getattribute__(name)

    f = TraceContextFilter(missing="-")
    for exc_info in (1, "x", True, (1, 2), (ValueError, Refusing(), None)):
        record = logging.LogRecord("n", logging.ERROR, "p", 1, "m", None, None)
        record.exc_info = exc_info  # type: ignore[assignment]
        assert f.filter(record) is True
        assert record.trace_id == "-"  # type: ignore[attr-defined]


# -- log records as span events -------------------------------------------------------------------
def test_log_records_become_events_of_the_current_span() -> None:
    from pitchey_trace.web import instrument_logging, uninstrument_logging

    logger = logging.getLogger("pitch.billing")
    logger.setLevel(logging.DEBUG)
    handlers = list(logging.getLogger().handlers)
    instrument_logging("error")
    instrument_logging(logging.WARNING)  # idempotent: the level moves
    assert logging.getLogger().handlers == handlers  # no handler added: what prints is unchanged
    try:
        with capture_spans() as mem:
            logger.warning("outside any span")  # nothing to attach it to
            with pt.span("charge"):
                logger.info("below the level")
                logger.warning("card %s declined, password=%s", "4111 1111 1111 1111", "hunter2")
                try:
                    raise ValueError("gateway timeout")
                except ValueError:
                    logger.exception("charge failed")
                logging.getLogger("pitchey_trace.test").warning("the SDK's own records are skipped")
                logger.warning("x" * 5000)
            with pt.suppress_tracing():
                logger.warning("suppressed")
    finally:
        uninstrument_logging()
    with capture_spans() as after, pt.span("later"):
        logger.warning("not instrumented any more")
    assert after.spans()[0]["events"] == []
    (span,) = mem.spans()
    events = span["events"]
    assert [e["name"] for e in events] == ["log", "log", "log"]
    declined, failed, long = (e["attributes"] for e in events)
    assert declined["log.level"] == "WARNING"
    assert declined["log.logger"] == "pitch.billing"
    assert declined["code.function.name"] == "test_log_records_become_events_of_the_current_span"
    assert declined["code.file.path"] == __file__
    assert isinstance(declined["code.line.number"], int)
    # the sanitizer ran over the message like over any attribute
    assert "4111" not in declined["log.message"]
    assert "hunter2" not in declined["log.message"]
    assert declined["log.message"].startswith("card ")
    assert (failed["log.level"], failed["exception.type"], failed["exception.message"]) == (
        "ERROR",
        "ValueError",
        "gateway timeout",
    )
    assert len(long["log.message"]) == 2048
    assert span["status"] == "unset"  # logging an error does not fail the span
    assert events[0]["time_unix_nano"] >= span["start_time_unix_nano"]
    with pytest.raises(ValueError, match="unknown logging level"):
        instrument_logging("LOUD")


def test_log_event_handler_for_hand_made_logging_configuration() -> None:
    from pitchey_trace.web import LogEventHandler

    logger = logging.getLogger("pitch.handmade")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = LogEventHandler(logging.INFO)
    logger.addHandler(handler)
    try:
        with capture_spans() as mem, pt.span("job"):
            logger.debug("below its level")
            logger.info("started %s", "nightly")
            # a record whose arguments do not fit its format keeps the template, counted
            logger.info("%d pitches", "x")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    messages = [e["attributes"]["log.message"] for e in mem.spans()[0]["events"]]
    assert messages == ["started nightly", "%d pitches"]
    assert _stats.get("misuse.log_format") == 1


def test_a_program_without_logging_setup_still_prints_its_warnings() -> None:
    import subprocess

    program = (
        "import logging, pitchey_trace as pt\n"
        "from pitchey_trace.web import instrument_logging\n"
        "pt.configure(service='x', exporters=[])\n"
        "instrument_logging()\n"
        "with pt.span('job'):\n"
        "    logging.getLogger('app').warning('disk almost full')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "disk almost full" in proc.stderr  # logging's last resort still prints it


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class _UnprintableMessage:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_unprintable_exceptions_and_messages_become_events() -> None:
    from pitchey_trace.web import instrument_logging, uninstrument_logging

    logger = logging.getLogger("pitch.unprintable")
    logger.propagate = False  # (pytest's capture handler fails the test on a message it cannot format)
    instrument_logging()
    try:
        with capture_spans() as mem, pt.span("job"):
            try:
                raise _Unprintable
            except _Unprintable:
                logger.exception("charge failed")
            logger.warning(_UnprintableMessage())
    finally:
        uninstrument_logging()
        logger.propagate = True
    failed, odd = (e["attributes"] for e in mem.spans()[0]["events"])
    assert (failed["log.message"], failed["exception.type"], failed["exception.message"]) == (
        "charge failed",
        "_Unprintable",
        "<exception str() failed>",
    )
    assert odd["log.message"] == "<unprintable _UnprintableMessage>"
