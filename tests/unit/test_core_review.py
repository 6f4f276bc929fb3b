"""Core span API, propagation and sampling review: one test per defect, plus guards for the
misuse cases checked and found fine. The suite runs with and without the C accelerator."""

from __future__ import annotations

import decimal

import pytest

import pitchey_trace as pt
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.sampling import Rule, RuleBased, TraceIdRatio
from pitchey_trace.testing import capture_spans


@pytest.mark.parametrize("status", [True, False, 1.0, 2.0, b"error"])
def test_set_status_refuses_bools_and_floats(status: object) -> None:
    # StatusCode(True) / StatusCode(1.0) is OK: a bool or a float used to set a final "ok".
    with capture_spans() as mem, pt.span("op") as s:
        s.set_status(status)  # type: ignore[arg-type]
        s.set_status("error", "boom")
    assert mem.spans("op")[0]["status"] == "error"
    assert pt.stats()["misuse.status_invalid"] == 1


def test_set_status_still_takes_codes_ints_and_names() -> None:
    with capture_spans():
        for status, code in ((pt.StatusCode.ERROR, 2), (2, 2), ("Error", 2), (0, 0), ("ok", 1)):
            s = pt.start_span("op")
            s.set_status(status)
            assert s.status == code
            s.end()
    assert "misuse.status_invalid" not in pt.stats()


@pytest.mark.parametrize("attributes", ["abc", ["ab"], 5, [("a", 1)]])
def test_link_with_attributes_that_are_not_a_mapping(attributes: object) -> None:
    # dict("abc") raised ValueError (and dict([("a", 1)]) made attributes from a list).
    link = pt.Link(pt.TraceContext(1, 1), attributes)  # type: ignore[arg-type]
    assert link.attributes == {}
    assert pt.stats()["misuse.attributes_type"] == 1
    with capture_spans() as mem, pt.span("op", links=[link]):
        pass
    assert mem.spans("op")[0]["links"][0]["attributes"] == {}


@pytest.mark.parametrize("rate", [True, False, "0.5", b"1"])
def test_sample_rate_refuses_bools_and_text(rate: object) -> None:
    # configure(sample_rate=True) was refused but TraceIdRatio(True) sampled everything.
    with pytest.raises(ConfigurationError, match="must be a number"):
        TraceIdRatio(rate)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be a number"):
        Rule(rate)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        pt.configure(sample_rate=rate, exporters=[])  # type: ignore[arg-type]


def test_sample_rate_edges_and_other_numbers() -> None:
    top = (1 << 128) - 1
    assert TraceIdRatio(0).should_sample(None, 1, "x", None, None) == pt.Decision.DROP
    assert TraceIdRatio(1).should_sample(None, top, "x", None, None) == pt.Decision.RECORD_AND_SAMPLE
    assert TraceIdRatio(decimal.Decimal("0.5")).rate == 0.5
    assert RuleBased([], default=0).default.should_sample(None, 1, "x", None, None) == pt.Decision.DROP
    # the same trace id gets the same decision in every process (low 64 bits vs the bound)
    tid = 0x4BF92F3577B34DA6_23CE929D0E0E4736
    assert {TraceIdRatio(0.25).should_sample(None, tid, n, None, None) for n in "abc"} == {
        pt.Decision.RECORD_AND_SAMPLE
    }
    assert pt.sampling.sampler_from_name("traceidratio", "0.5").rate == 0.5  # type: ignore[attr-defined]


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_odd_attribute_values_are_dropped_and_counted_never_raised() -> None:
    def gen() -> object:
        yield 1

    odd = {
        "dec": decimal.Decimal("1.5"),
        "bytes": b"ab",
        "nan": float("nan"),
        "inf": float("-inf"),
        "nested": [[1], [2]],
        "set": {1, 2},
        "gen": gen(),
        "bad": _BadStr(),
        "mixed": [1, "a"],
        "bool_int": [True, 1],
        "none": None,
    }
    with capture_spans() as mem:
        with pt.span("start", attributes=odd):
            pass
        with pt.span("set") as s:
            for key, value in odd.items():
                s.set_attribute(key, value)  # type: ignore[arg-type]
            s.set_attribute(1, 1)  # type: ignore[arg-type]
            s.set_attribute("", 1)
            s.set_attribute("huge", 1 << 70)
            s.set_attribute("tuple", (1, 2))
    assert mem.spans("start")[0]["attributes"] == {}
    assert mem.spans("set")[0]["attributes"] == {"huge": 1 << 70, "tuple": [1, 2]}
    assert pt.stats()["dropped.attribute_invalid"] == 2 * len(odd) + 2


def test_end_twice_before_start_and_calls_after_end() -> None:
    with capture_spans() as mem:
        s = pt.start_span("op", start_time_ns=2_000_000_000_000_000_000)
        s.end(1_000_000_000_000_000_000)
        s.end()
        s.set_attribute("a", 1)
        s.set_attribute("b", 1.5)
        s.add_event("e")
        s.set_status("error")
        s.record_exception(ValueError("x"))
    (record,) = mem.spans("op")
    assert record["attributes"] == {}
    assert record["status"] == "unset"
    assert s.duration_ns == 0
    stats = pt.stats()
    assert stats["misuse.end_twice"] == 1
    assert stats["misuse.after_end.set_attribute"] == 2


def test_record_exception_without_traceback_or_not_an_exception() -> None:
    with capture_spans() as mem, pt.span("op") as s:
        s.record_exception(ValueError("no traceback"))
        s.record_exception("not an exception")  # type: ignore[arg-type]
        s.record_exception(ValueError)  # type: ignore[arg-type]
    events = mem.spans("op")[0]["events"]
    assert [e["name"] for e in events] == ["exception"]
    assert pt.stats()["misuse.record_exception_type"] == 2


def test_events_and_links_beyond_limits_are_counted() -> None:
    with capture_spans(max_events=2, max_links=2) as mem, pt.span("op") as s:
        for i in range(3):
            s.add_event(f"e{i}")
            s.add_link(pt.TraceContext(i + 1, 1))
        s.record_exception(ValueError())
        s.add_link(pt.INVALID_SPAN)
    record = mem.spans("op")[0]
    assert len(record["events"]) == 2
    assert len(record["links"]) == 2
    stats = pt.stats()
    assert stats["dropped.event_limit"] == 2
    assert stats["dropped.link_limit"] == 1
    assert stats["dropped.link_invalid"] == 1
