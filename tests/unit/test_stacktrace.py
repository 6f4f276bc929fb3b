"""exception.stacktrace: at most 8192 characters, and a long message never costs the frames."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest

import pitchey_trace as pt
from pitchey_trace._span import _format_tb
from pitchey_trace.testing import capture_spans

LIMIT = 8192


def _deep(n: int, message: str) -> None:
    if n:
        _deep(n - 1, message)
    raise ValueError(message)


def _caught(fn: Callable[..., object], *args: object) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _handle_then_fail(first: str, second: str) -> None:
    try:
        _deep(3, first)
    except ValueError:
        _innermost_handler(second)


def _innermost_handler(message: str) -> None:
    raise KeyError(message)


def test_short_traceback_is_the_standard_one() -> None:
    exc = _caught(_deep, 3, "short")
    assert _format_tb(exc) == "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def test_long_message_keeps_the_frames() -> None:
    exc = _caught(_deep, 5, "payload: " + "x" * 9000)
    text = _format_tb(exc)
    assert len(text) <= LIMIT
    assert text.startswith("Traceback (most recent call last):\n")
    standard = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    frames = standard[: standard.index("ValueError: payload")]
    assert text.startswith(frames)  # every frame, as the standard traceback shows them
    assert "ValueError: payload: xxx" in text
    assert text.endswith("\u2026\n")  # the message, cut


def test_long_message_through_record_exception() -> None:
    with capture_spans() as mem, pytest.raises(ValueError), pt.span("op"):
        _deep(2, "payload: " + "x" * 9000)
    [event] = mem.spans("op")[0]["events"]
    text = event["attributes"]["exception.stacktrace"]
    assert len(text) <= LIMIT
    assert text.startswith("Traceback (most recent call last):\n")
    assert "in _deep" in text


def test_chained_exceptions_keep_each_ones_frames() -> None:
    exc = _caught(_handle_then_fail, "first " + "y" * 9000, "second " + "z" * 9000)
    text = _format_tb(exc)
    assert len(text) <= LIMIT
    assert text.startswith("Traceback (most recent call last):\n")
    assert "During handling of the above exception, another exception occurred:" in text
    assert "ValueError: first yyy" in text
    assert "KeyError: 'second zzz" in text
    cause, _, last = text.partition("During handling")
    assert cause.count(", in _deep\n") == 4
    assert "in _innermost_handler\n" in last


def _chain(left: int, depth: int, message: str) -> None:
    """``left + 1`` exceptions, each raised ``depth`` frames deep while handling the last."""
    try:
        _deep(depth, message)
    except ValueError:
        if left:
            _chain(left - 1, depth, message)
        else:
            _innermost_handler("last")


def test_too_many_frames_keep_the_outermost_and_the_innermost() -> None:
    # 12 chained exceptions of 32 frames each: frames alone are far over the limit.
    exc = _caught(_chain, 11, 40, "m" * 2000)
    text = _format_tb(exc)
    assert len(text) <= LIMIT
    assert text.startswith("Traceback (most recent call last):\n")
    assert text.endswith("KeyError: 'last'\n")
    assert "in _innermost_handler\n" in text
    assert "omitted]\n" in text
    # each exception's innermost frame (where it was raised) is kept
    assert text.count("raise ValueError(message)") >= 2


def test_deep_traceback_keeps_the_innermost_frames() -> None:
    exc = _caught(_deep, 60, "deep")
    text = _format_tb(exc)
    assert text.endswith("raise ValueError(message)\nValueError: deep\n")


def test_long_chain_keeps_the_latest_exceptions() -> None:
    exc = _caught(_chain, 200, 3, "m" * 300)
    text = _format_tb(exc)
    assert len(text) <= LIMIT
    assert text.startswith("[")
    assert "earlier exceptions omitted]\n\nDuring handling" in text
    assert text.endswith("raise KeyError(message)\nKeyError: 'last'\n")
    assert "ValueError: mmm" in text


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_unprintable_exception_reads_as_in_the_traceback() -> None:
    with capture_spans() as mem, pytest.raises(_Unprintable), pt.span("op"):
        raise _Unprintable
    [span] = mem.spans()
    attrs = span["events"][0]["attributes"]
    assert attrs["exception.message"] == "<exception str() failed>"
    assert attrs["exception.stacktrace"].endswith("_Unprintable: <exception str() failed>\n")
    assert span["status_message"] == "_Unprintable: <exception str() failed>"
