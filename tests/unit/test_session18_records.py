"""Records and their JSON with hostile values: strict JSON, the same on every encoder path,
and valid against the shipped schema."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from pitchey_trace import _json
from pitchey_trace.records import app_log_record, json_schema
from pitchey_trace.testing import capture_spans
from pitchey_trace.web.logs import LogExportHandler


def _strict(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(data.decode("utf-8", "strict"), parse_constant=refuse)


class _Float(float):
    """A float subclass, as numpy.float64 is."""


class _Color(enum.Enum):
    RED = "red"


NAN = float("nan")
BIG = 2**70  # beyond 64 bits: orjson refuses it, the lenient stdlib path takes over


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": {NAN}, "b": BIG}, {"a": [None], "b": BIG}),
        ({NAN: 1, "b": BIG}, {"null": 1, "b": BIG}),
        ({float("inf"): 1}, {"null": 1}),
        ({(1, 2): "t", "b": BIG}, {"(1, 2)": "t", "b": BIG}),
        ({b"k\xff": 1, "b": BIG}, {"k\ufffd": 1, "b": BIG}),
        ({_Color.RED: 1, "b": BIG}, {"red": 1, "b": BIG}),
        ({"a": frozenset([float("-inf")]), "b": BIG}, {"a": [None], "b": BIG}),
    ],
)
def test_hostile_values_are_strict_json_on_every_path(value: Any, expected: Any) -> None:
    assert _strict(_json.dumps(value)) == expected
    assert _strict(_json.lenient_dumps(value)) == expected
    line = _json.encode_ndjson([value])
    assert line.endswith(b"\n")  # (not left out as unencodable)
    assert _strict(line) == expected


@pytest.mark.parametrize("big", [1, BIG])  # the orjson path, and the stdlib fallback
def test_float_subclasses_and_enums_encode_as_their_values_on_both_paths(big: int) -> None:
    value = {"f": _Float(1.5), "n": _Float(NAN), "e": _Color.RED, "big": big}
    expected = {"f": 1.5, "n": None, "e": "red", "big": big}
    assert _strict(_json.dumps(value)) == expected
    assert _strict(_json.lenient_dumps(value)) == expected
    assert _strict(_json.encode_ndjson([value])) == expected


def test_app_log_record_leaves_out_non_finite_floats() -> None:
    rec = app_log_record(
        time_unix_nano=1,
        severity_number=9,
        severity_text="INFO",
        logger="x",
        body="b",
        service="s",
        environment="e",
        attributes={"nan": NAN, "inf": float("inf"), "ok": 2.5, "n": 3, "t": "x"},
    )
    assert rec["attributes"] == {"ok": 2.5, "n": 3, "t": "x"}
    jsonschema.Draft202012Validator(json_schema()).validate(_strict(_json.dumps(rec)))


@pytest.fixture
def shipping_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test_session18_records")
    handler = LogExportHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)


def test_log_records_with_hostile_extras_validate_against_the_schema(shipping_logger: logging.Logger) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    # (the lone surrogates in extras only: pytest captures the message, and pytest-xdist cannot
    # send a test report holding a lone surrogate to its controller)
    with capture_spans(rollups=None) as mem:
        shipping_logger.info(
            "hello %s",
            "x\x00",
            extra={"nanx": NAN, "infx": float("-inf"), "bigx": BIG, "sx": "\udcff", "okx": 0.5},
        )
    [rec] = mem.of_type("log")
    doc = _strict(_json.encode_ndjson([rec]))
    validator.validate(doc)
    assert "nanx" not in doc["attributes"]
    assert "infx" not in doc["attributes"]
    assert doc["attributes"]["bigx"] == BIG
    assert doc["attributes"]["okx"] == 0.5
    assert doc["attributes"]["sx"] == "\ufffd"
    assert doc["body"] == "hello x\x00"


def test_a_log_record_made_by_hand_has_no_null_code_attribute() -> None:
    """``logging.makeLogRecord`` (and ``Logger.makeRecord`` without ``func``) leave ``funcName``
    None: the shipped record left a null attribute, which the schema refuses."""
    validator = jsonschema.Draft202012Validator(json_schema())
    with capture_spans(rollups=None) as mem:
        LogExportHandler().handle(logging.makeLogRecord({"msg": "by hand", "levelno": logging.WARNING}))
    [rec] = mem.of_type("log")
    doc = _strict(_json.encode_ndjson([rec]))
    validator.validate(doc)
    assert "code.function.name" not in doc["attributes"]
    assert doc["body"] == "by hand"
