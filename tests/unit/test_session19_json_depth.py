"""Records holding a value nested thousands deep, or a container holding itself: the encoders
keep the record (the too-deep part as a marker) or refuse it cleanly, never a RecursionError,
also when called from a deep stack."""

from __future__ import annotations

import enum
import io
import json
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import pitchey_trace as pt
from pitchey_trace import _json, _stats
from pitchey_trace.exporters._archive import encode_line

ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "dumps": _json.dumps,  # orjson, which refuses > 254 levels, then the stdlib
    "lenient_dumps": _json.lenient_dumps,  # the stdlib path (also: no orjson installed)
    "encode_line": encode_line,  # the archive / logpush exporters
    "encode_ndjson": lambda r: _json.encode_ndjson([r]),
}


def nested_lists(levels: int) -> list[Any]:
    top: list[Any] = []
    cur = top
    for _ in range(levels - 1):
        inner: list[Any] = []
        cur.append(inner)
        cur = inner
    cur.append("bottom")
    return top


def nested_dicts(levels: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    cur = top
    for _ in range(levels - 1):
        inner: dict[str, Any] = {}
        cur["k"] = inner
        cur = inner
    cur["k"] = "bottom"
    return top


def levels_until(value: Any) -> tuple[int, Any]:
    """How many containers deep the chain goes, and what it ends with."""
    n = 0
    while isinstance(value, (list, dict)):
        value = value[0] if isinstance(value, list) else value["k"]
        n += 1
    return n, value


def on_deep_stack(fn: Callable[[], Any], spare: int = 40) -> Any:
    """``fn()`` called with only about ``spare`` frames left below the recursion limit."""

    def down(n: int) -> Any:
        return fn() if n <= 0 else down(n - 1)

    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame = frame.f_back
        depth += 1
    return down(sys.getrecursionlimit() - depth - spare)


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("make", [nested_lists, nested_dicts])
def test_a_value_nested_5000_deep_keeps_the_record_with_a_marker(
    name: str, make: Callable[[int], Any]
) -> None:
    before = _stats.get("dropped.encode_error")
    record = {"type": "log", "body": "hello", "attributes": {"payload": make(5000), "ok": 1}}
    line = ENCODERS[name](record)  # was: RecursionError, the record dropped
    assert _stats.get("dropped.encode_error") == before
    got = json.loads(line)
    assert got["body"] == "hello"
    assert got["attributes"]["ok"] == 1
    # the record's own 2 levels + MAX_DEPTH - 2 of the payload; then the marker
    assert levels_until(got["attributes"]["payload"]) == (_json.MAX_DEPTH - 2, _json.DEPTH_MARKER)
    assert orjson.dumps(orjson.loads(line)) == line.rstrip(b"\n")  # readable and re-encodable


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoding_from_a_deep_stack_keeps_every_record(name: str) -> None:
    encode = ENCODERS[name]
    plain = {"type": "span", "name": "op", "attributes": {"a": [1, 2.5, None, True], "b": {"c": "d"}}}
    deep = {"type": "log", "attributes": {"payload": nested_lists(300)}}
    odd = {"n": float("nan"), "big": 1 << 70, "s": "x\ud800", "t": (1, 2), 3: {4}}
    shallow = [encode(plain), encode(odd)]
    got = on_deep_stack(lambda: [encode(plain), encode(odd), encode(deep)])
    assert got[:2] == shallow  # the same bytes as from a shallow stack
    assert levels_until(json.loads(got[2])["attributes"]["payload"])[1] in ("bottom", _json.DEPTH_MARKER)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_a_container_holding_itself_is_refused_cleanly_from_any_stack(name: str) -> None:
    encode = ENCODERS[name]
    loop: list[Any] = [1]
    loop.append(loop)
    me: dict[str, Any] = {"nan": float("nan")}  # (NaN: the stdlib path's second try, too)
    me["me"] = me
    for record in ({"type": "custom", "v": loop}, {"type": "custom", "v": me}):
        before = _stats.get("dropped.encode_error")
        if name == "encode_ndjson":  # left out and counted, the others kept
            assert encode(record) == b""
            assert _stats.get("dropped.encode_error") == before + 1
            assert on_deep_stack(lambda r=record: encode(r)) == b""  # type: ignore[misc]
            assert _stats.get("dropped.encode_error") == before + 2
            continue
        with pytest.raises(ValueError, match="Circular reference"):
            encode(record)
        with pytest.raises(ValueError, match="Circular reference"):
            on_deep_stack(lambda r=record: encode(r))  # type: ignore[misc]


def test_the_stackless_encoder_writes_what_the_stdlib_writes() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Num(float):
        pass

    shared = [1, 2]  # (seen twice, not a cycle)
    samples: list[Any] = [
        {"s": 'é\n"q"\\', "i": -(1 << 70), "f": 1.5e-7, "b": [True, False, None], "e": []},
        {"nan": float("nan"), "inf": [float("inf")], float("nan"): 1, 2.5: 2, True: 3, None: 4, 7: 5},
        {"set": {3}, "tuple": (1, (2, 3)), "bytes": b"\xffab", "enum": Color.RED, "num": Num(2.5)},
        {(1, 2): "tuple key", b"k": "bytes key", Color.RED: "enum key", "obj": object.__name__},
        {"a": shared, "b": shared, "empty": {}, "lone": "\ud800x"},
        [],
        "text",
        5,
    ]
    for obj in samples:
        text = _json._bounded_encode(obj)
        assert _json.valid_text(text).encode("utf-8") == _json.lenient_dumps(obj), obj


def test_a_deep_custom_record_goes_out_through_the_pipeline() -> None:
    # No sanitizer (or one of the user's): the record reaches the encoder as it was emitted.
    out = io.StringIO()
    pt.configure(service="s", sanitizer=None, exporters=[pt.ConsoleExporter(stream=out)], rollups=None)
    pipeline = pt.get_tracer().pipeline
    assert pipeline is not None
    pipeline.emit({"type": "audit", "schema": 1, "details": nested_dicts(5000), "n": 1})
    pipeline.emit({"type": "audit", "schema": 1, "n": 2})
    assert pt.force_flush(5)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["n"] for r in lines] == [1, 2]
    assert levels_until(lines[0]["details"]) == (_json.MAX_DEPTH - 1, _json.DEPTH_MARKER)
    assert pt.stats().get("dropped.encode_error", 0) == 0
