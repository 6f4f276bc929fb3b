"""OTLP partial success: reading a collector's successful answer (JSON and binary, whatever its
content type says, hostile bodies), and what the exporters do with it (counters, one warning
a minute, the collector's message made safe), without a network."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import OTLPExporter, _http
from pitchey_trace.exporters._http import HttpResult, note_partial_success
from pitchey_trace.exporters._otlp_proto import (
    MAX_ANSWER_BYTES,
    PartialSuccess,
    loggable,
    parse_partial_success,
)
from tests.support.otlp import partial_success_answer

JSON = "application/json"
PROTO = "application/x-protobuf"
GRPC = "application/grpc"
KEYS = {"traces": "rejectedSpans", "logs": "rejectedLogRecords", "metrics": "rejectedDataPoints"}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})  # (each test sees its first warning)


def _json(partial: Any) -> bytes:
    return json.dumps({"partialSuccess": partial}).encode()


# -- the parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_each_signal_in_both_encodings(signal: str, encoding: str) -> None:
    body = partial_success_answer(signal, 7, "too old", encoding)
    content_type = JSON if encoding == "json" else PROTO
    assert parse_partial_success(body, content_type, KEYS[signal]) == PartialSuccess(7, "too old")
    # (another signal's count is not this one's: the message alone remains, a warning)
    other = next(k for s, k in KEYS.items() if s != signal)
    if encoding == "json":
        assert parse_partial_success(body, content_type, other) == PartialSuccess(0, "too old")


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ({"rejectedSpans": "3", "errorMessage": "bad"}, PartialSuccess(3, "bad")),  # int64 as a string
        ({"rejectedSpans": 3, "errorMessage": "bad"}, PartialSuccess(3, "bad")),  # as a number
        ({"rejectedSpans": 3.0}, PartialSuccess(3, "")),  # an integral number
        ({"rejectedSpans": " 12 "}, PartialSuccess(12, "")),
        ({"rejected_spans": "4", "error_message": "snake"}, PartialSuccess(4, "snake")),  # proto names
        ({"rejectedSpans": "9223372036854775807"}, PartialSuccess((1 << 63) - 1, "")),  # int64 max
        ({"errorMessage": "only a warning"}, PartialSuccess(0, "only a warning")),
        ({"rejectedSpans": "-3", "errorMessage": "negative"}, PartialSuccess(0, "negative")),
        ({"rejectedSpans": -3, "errorMessage": "negative"}, PartialSuccess(0, "negative")),
        ({"rejectedSpans": "9223372036854775808", "errorMessage": "x"}, PartialSuccess(0, "x")),  # > int64
        ({"rejectedSpans": 1 << 70, "errorMessage": "x"}, PartialSuccess(0, "x")),
        ({"rejectedSpans": "1" * 5000, "errorMessage": "x"}, PartialSuccess(0, "x")),  # (no int() DoS)
        ({"rejectedSpans": 2.5, "errorMessage": "x"}, PartialSuccess(0, "x")),
        ({"rejectedSpans": True, "errorMessage": "x"}, PartialSuccess(0, "x")),
        ({"rejectedSpans": "3e2", "errorMessage": "x"}, PartialSuccess(0, "x")),
        ({"rejectedSpans": [3], "errorMessage": 5}, None),  # neither is usable: nothing said
        ({"rejectedSpans": "0", "errorMessage": ""}, None),  # a full success
        ({}, None),
        (None, None),
        ("rejected", None),
    ],
)
def test_json_answers(partial: Any, expected: PartialSuccess | None) -> None:
    assert parse_partial_success(_json(partial), JSON) == expected


def test_protobuf_answers() -> None:
    assert parse_partial_success(partial_success_answer("traces", 300, "x" * 200), PROTO) == PartialSuccess(
        300, "x" * 200
    )
    # gRPC answers are protobuf
    assert parse_partial_success(partial_success_answer("traces", 2), GRPC) == PartialSuccess(2, "")
    # a negative int64 (ten-byte varint) and uint64's max (-1 as int64): nothing counted
    assert parse_partial_success(partial_success_answer("traces", -5, "neg"), PROTO) == PartialSuccess(
        0, "neg"
    )
    assert parse_partial_success(b"\x0a\x0b\x08" + b"\xff" * 9 + b"\x01", PROTO) is None
    # unknown fields are skipped; repeated partial_success fields merge (the last value wins)
    body = b"\x12\x03abc" + b"\x0a\x02\x08\x05" + b"\x0a\x05\x12\x03why" + b"\x0a\x02\x08\x06"
    assert parse_partial_success(body, PROTO) == PartialSuccess(6, "why")
    # invalid UTF-8 in the message: replaced, not an error
    assert parse_partial_success(b"\x0a\x05\x08\x01\x12\x01\xff", PROTO) == PartialSuccess(1, "\ufffd")
    # an empty answer or an empty partial_success: a full success
    assert parse_partial_success(b"", PROTO) is None
    assert parse_partial_success(b"\x0a\x00", PROTO) is None


def test_the_message_is_bounded() -> None:
    partial = parse_partial_success(
        partial_success_answer("logs", 1, "m" * 100_000), PROTO, "rejectedLogRecords"
    )
    assert partial is not None
    assert partial.message == "m" * 4096
    partial = parse_partial_success(_json({"rejectedSpans": 1, "errorMessage": "j" * 100_000}), JSON)
    assert partial is not None
    assert partial.message == "j" * 4096


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff",
        b"\x0a\x05\x08",  # truncated
        b"\x0a\x02\x08\x80",  # a varint cut short
        b"\x0f",  # a wire type protobuf does not have
        b"\x80" * 20,  # a varint too long
        b"\x08\x05",  # partial_success as a varint
        b"\x0a\x02\x0a\x00",  # the count as a message
        b"\x0a\x02\x10\x01",  # the message as a varint
        b"\x02" * 5000,  # a field number 0
        b"\x10\x01" * 5000,  # too many fields to be an answer
        b"OK",
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"partialSuccess": {"rejectedSpans": 3',  # JSON cut short
        b"[" * 100_000,  # nested too deep for a parser
        b'"just a string"',
        b"\xfe\xff\x00{",
        b'{"partialSuccess": {"rejectedSpans": 3, "errorMessage": "\xff\xfe"}}',  # not UTF-8
        b"\x00" * 10,
    ],
)
@pytest.mark.parametrize("content_type", [JSON, PROTO, GRPC, None, "text/plain"])
def test_garbage_is_nothing_and_never_raises(garbage: bytes, content_type: str | None) -> None:
    assert parse_partial_success(garbage, content_type) is None
    partial = parse_partial_success(garbage, content_type, "rejectedSpans")
    assert (0 if partial is None else partial.rejected) == 0


def test_an_answer_in_the_other_encoding_than_its_content_type_says_is_read() -> None:
    binary = partial_success_answer("traces", 2, "binary")
    text = _json({"rejectedSpans": "3", "errorMessage": "json"})
    assert parse_partial_success(binary, JSON) == PartialSuccess(2, "binary")
    assert parse_partial_success(text, PROTO) == PartialSuccess(3, "json")
    assert parse_partial_success(text, "application/x-protobuf; charset=utf-8") == PartialSuccess(3, "json")
    assert parse_partial_success(binary, "application/json; charset=utf-8") == PartialSuccess(2, "binary")
    # no content type, or another one: what the body looks like
    for content_type in (None, "", "text/plain", "application/octet-stream"):
        assert parse_partial_success(binary, content_type) == PartialSuccess(2, "binary")
        assert parse_partial_success(b"  \n" + text, content_type) == PartialSuccess(3, "json")
    # gRPC carries protobuf only
    assert parse_partial_success(text, GRPC) is None


def _padded(body: bytes, total: int) -> bytes:
    """``body`` with an unknown field 2 (bytes) after it, ``total`` bytes in all."""
    for size in range(total - len(body) - 2, 0, -1):
        field = b"\x12"
        n = size
        while n > 0x7F:
            field += bytes(((n & 0x7F) | 0x80,))
            n >>= 7
        field += bytes((n,))
        if len(body) + len(field) + size == total:
            return body + field + b"x" * size
    raise AssertionError("no such padding")


def test_an_answer_beyond_the_bound_is_not_read() -> None:
    body = partial_success_answer("traces", 2, "big")
    assert parse_partial_success(_padded(body, MAX_ANSWER_BYTES), PROTO) == PartialSuccess(2, "big")
    assert parse_partial_success(_padded(body, MAX_ANSWER_BYTES + 1), PROTO) is None
    huge = _json({"rejectedSpans": 1, "errorMessage": "y" * MAX_ANSWER_BYTES})
    assert parse_partial_success(huge, JSON) is None


def test_loggable_escapes_what_is_not_printable_and_bounds_the_length() -> None:
    assert loggable("span too old") == "span too old"
    assert loggable("ünïcode 日本 ok") == "ünïcode 日本 ok"
    assert loggable("a\nFAKE LOG LINE\r\x1b[31mred\x00") == "a\\nFAKE LOG LINE\\r\\x1b[31mred\\x00"
    assert loggable("left\u202eright\u2028\ud800") == "left\\u202eright\\u2028\\ud800"
    out = loggable("x" * 10_000)
    assert out == "x" * 256 + "..."
    assert len(loggable("\x01" * 10_000)) <= 256 + 4 + 3
    assert "\n" not in loggable("\n" * 500)


# -- counting and warning --------------------------------------------------------------------------
def _ok(body: bytes, content_type: str | None = PROTO) -> HttpResult:
    return HttpResult(True, 200, body, 1, content_type=content_type)


def _note(result: HttpResult, items: int = 10) -> int:
    return note_partial_success(
        result,
        counter="otlp",
        count_key="rejectedSpans",
        noun="spans",
        items=items,
        url="http://c:4318/v1/traces",
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "pitchey_trace" and r.levelno == logging.WARNING
    ]


def test_rejections_are_counted_and_warned_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    assert _note(_ok(partial_success_answer("traces", 3, "span too old\n\x1b[2Jforged line"))) == 3
    assert _note(_ok(partial_success_answer("traces", 4, "again"))) == 4
    assert _stats.get("otlp.partial_rejected") == 7
    [line] = _warnings(caplog)  # (the second within the minute: counted, not logged)
    assert "rejected 3 of its 10 spans" in line
    assert "http://c:4318/v1/traces" in line
    assert "span too old\\n\\x1b[2Jforged line" in line
    assert "\n" not in line
    assert "\x1b" not in line
    assert _stats.get("otlp.partial_warning") == 0


def test_a_count_beyond_what_was_sent_counts_what_was_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    assert _note(_ok(_json({"rejectedSpans": "9000"}), JSON), items=5) == 5
    assert _stats.get("otlp.partial_rejected") == 5
    [line] = _warnings(caplog)
    assert "rejected 5 of its 5 spans" in line
    assert "(no message)" in line


def test_a_message_alone_is_a_warning_nothing_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    for _ in range(3):
        assert _note(_ok(_json({"rejectedSpans": "0", "errorMessage": "deprecated field"}), JSON)) == 0
    assert _stats.get("otlp.partial_warning") == 3
    assert _stats.get("otlp.partial_rejected") == 0
    assert pt.stats()["dropped"] == 0
    [line] = _warnings(caplog)
    assert "with a warning: deprecated field" in line


def test_a_full_success_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitchey_trace")
    for body in (b"", b"{}", partial_success_answer("traces", 0), b"garbage", b"\x0a\x00"):
        assert _note(_ok(body)) == 0
        assert _note(_ok(body, JSON)) == 0
        assert _note(_ok(body, None)) == 0
    assert _warnings(caplog) == []
    assert not [k for k in pt.stats() if "partial" in k]


@pytest.mark.allow_internal_errors
def test_a_bug_in_reading_an_answer_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> PartialSuccess:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(_http, "parse_partial_success", broken)
    assert _note(_ok(b"\x0a\x02\x08\x01")) == 0
    assert _stats.get("internal_errors.partial_success.otlp") == 1


# -- the exporter's accounting, without a network --------------------------------------------------
class _Answers:
    """Stands in for an exporter's sender: answers each send with the next result, recording
    the payloads (what a real collector would have received)."""

    def __init__(self, *results: HttpResult) -> None:
        self.results = list(results)
        self.payloads: list[bytes] = []

    def __call__(self, payload: bytes, retry: Any = None, **_: Any) -> HttpResult:
        self.payloads.append(payload)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


def _span_records(n: int) -> list[dict[str, Any]]:
    return [
        {"type": "span", "trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}", "name": f"s{i}"}
        for i in range(n)
    ]


def test_exported_and_rejected_add_up_to_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", max_spans_per_request=4, name="collector")
    answers = _Answers(
        _ok(partial_success_answer("traces", 1, "one")),
        _ok(_json({"rejectedSpans": 2}), JSON),
        _ok(b""),
    )
    monkeypatch.setattr(exp._sender, "send", answers)
    pt.configure(service="svc", exporters=[exp])
    for _ in range(10):
        with pt.span("work"):
            pass
    assert pt.force_flush(10)
    stats = pt.stats()
    assert len(answers.payloads) == 3  # 4 + 4 + 2 spans, each sent once
    assert stats["otlp.spans"] == 10  # (in requests the collector took)
    assert stats["otlp.partial_rejected"] == 3
    assert stats["dropped.rejected"] == stats["dropped.rejected.collector"] == 3
    assert stats["exported"] == stats["exported.collector"] == 7
    assert stats["exported.collector"] + stats["dropped.rejected.collector"] == 10
    assert stats.get("dropped.export_failed", 0) == 0


def test_when_a_chunk_is_given_up_only_its_items_are_failed_and_the_rest_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exp = OTLPExporter("http://127.0.0.1:9/v1/traces", max_spans_per_request=2)
    answers = _Answers(_ok(partial_success_answer("traces", 1)), HttpResult(False, 503, b"", 1, "HTTP 503"))
    monkeypatch.setattr(exp._sender, "send", answers)
    result = exp.export(_span_records(4))
    # the first request went (one of its 2 spans rejected), the second was given up: the worker
    # counts 4 - 3 = 1 exported, and the next flush reports the loss
    assert result.__class__ is _stats.PartlyFailed
    assert result == 3
    assert _stats.get("otlp.partial_rejected") == 1
    assert _stats.get("dropped.rejected") == 1
    assert _stats.get("dropped.export_failed") == _stats.get("dropped.export_failed.otlp") == 2
