"""Regressions: attribute values of str/int/float subclasses whose conversions fail, and
baggage values or entries set_baggage / inject / emit_audit must cope with."""

from __future__ import annotations

import enum
import logging
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace import propagation as prop
from pitchey_trace._span import TraceContext
from pitchey_trace.testing import capture_spans

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _BadStr(str):
    def __str__(self) -> str:
        raise RuntimeError("str")


class _BadInt(int):
    def __int__(self) -> int:
        raise RuntimeError("int")

    def __index__(self) -> int:
        raise RuntimeError("index")


class _BadFloat(float):
    def __float__(self) -> float:
        raise RuntimeError("float")


class _OddInt(int):
    def __int__(self) -> int:
        return 999


class _Color(enum.Enum):
    RED = _BadStr("red")


# -- bug 1: a subclass's failing conversion never reaches user code -------------------------------
def test_regression_attribute_subclasses_with_failing_conversions_never_raise() -> None:
    bad: dict[str, Any] = {"s": _BadStr("a"), "i": _BadInt(3), "f": _BadFloat(1.5), "e": _Color.RED}
    with capture_spans(rollups=None) as mem:
        with pt.span("s", attributes=bad) as s:
            for key, value in bad.items():
                s.set_attribute("set." + key, value)
            s.set_attributes({"many." + k: v for k, v in bad.items()})
            s.add_event("ev", bad)
            s.add_link(TraceContext(1, 2), bad)
            s.record_exception(ValueError("x"), bad)
        pt.start_span("started", attributes=bad).end()
    (span,) = mem.spans("s")
    plain = {"s": "a", "i": 3, "f": 1.5, "e": "red"}
    for prefix in ("", "set.", "many."):
        got = {k[len(prefix) :]: v for k, v in span["attributes"].items() if k.startswith(prefix)}
        if prefix == "":
            got = {k: v for k, v in got.items() if "." not in k}
        assert got == plain
        assert all(type(got[k]) is type(plain[k]) for k in plain)
    assert span["events"][0]["attributes"] == plain
    assert mem.spans("started")[0]["attributes"] == plain


def test_regression_subclass_values_keep_their_base_value_not_the_override() -> None:
    with capture_spans(rollups=None) as mem:
        with pt.span("s") as s:
            s.set_attribute("n", _OddInt(5))
    assert mem.spans("s")[0]["attributes"] == {"n": 5}


def test_regression_subclass_value_that_cannot_convert_is_dropped_and_counted() -> None:
    class Broken(int):
        pass

    class BadEnum(enum.Enum):
        X = 1

        @property
        def value(self) -> Any:  # type: ignore[override]
            raise RuntimeError("value")

    with capture_spans(rollups=None) as mem:
        with pt.span("s") as s:
            s.set_attribute("e", BadEnum.X)
            s.set_attribute("ok", Broken(2))
    assert mem.spans("s")[0]["attributes"] == {"ok": 2}
    assert pt.stats()["dropped.attribute_invalid"] == 1


# -- bug 2: the audit actor and baggage values are plain str -------------------------------------
def test_regression_audit_actor_from_str_subclass_baggage_is_plain_text() -> None:
    class UserId(str):
        pass

    with capture_spans(rollups=None) as mem:
        with pt.span("req"), prop.set_baggage({"user.id": UserId("u-17")}):
            assert prop.get_baggage("user.id").__class__ is str
            pt.emit_audit("view", "pitch", "success")
        ctx = TraceContext(1, 2, baggage=(("user.id", UserId("u-18")),))  # type: ignore[arg-type]
        with pt.span("child", context=ctx):
            pt.emit_audit("view", "pitch", "success")
    assert [r["actor"] for r in mem.of_type("audit")] == ["u-17", "u-18"]


# -- bug 3: a value that is not UTF-8 encodable loses only its own member -------------------------
def test_regression_baggage_lone_surrogate_skips_only_that_member() -> None:
    assert prop.format_baggage((("bad", "\ud800"), ("ok", "1"))) == "ok=1"
    assert pt.stats().get("errors.propagation.inject", 0) == 0
    with capture_spans(rollups=None):
        with pt.span("s"):
            with prop.set_baggage({"bad": "x\udfff", "ok": "1"}):
                assert prop.get_baggage("bad") is None
                headers: dict[str, str] = {}
                pt.inject(headers)
    assert headers["baggage"] == "ok=1"
    assert pt.stats()["misuse.baggage_invalid"] >= 1
    assert not [k for k in pt.stats() if k.startswith("errors.")]


# -- bug 4: set_baggage with something that is not a mapping warns, never raises -----------------
@pytest.mark.parametrize("entries", ["abc", 5, b"ab", [1, 2], object()])
def test_regression_set_baggage_non_mapping_warns_and_is_ignored(
    entries: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with capture_spans(rollups=None):
        with pt.span("s"), caplog.at_level(logging.WARNING):
            with prop.set_baggage(entries, tenant="acme"):
                assert prop.baggage_entries() == {"tenant": "acme"}
    assert pt.stats()["misuse.baggage_invalid"] == 1
    assert "baggage" in caplog.text
    _stats.reset()
