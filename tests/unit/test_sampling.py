"""Head samplers: ratio (consistent on the trace id), parent-based, rules, rate limit, OTel names;
and the three outcomes (drop, record-only, record-and-sample) as the tracer applies them."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, sampler_from_name
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())
SAMPLE = pt.Decision.RECORD_AND_SAMPLE
DROP = pt.Decision.DROP
LOW64 = (1 << 64) - 1


@contextmanager
def captured(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """capture_spans, then check every exported record against the JSON Schema."""
    with capture_spans(**configure_kwargs) as mem:
        yield mem
    for rec in mem.records:
        _VALIDATOR.validate(rec)


def decide(sampler: Any, trace_id: int, name: str = "op", parent: Any = None) -> pt.Decision:
    result: pt.Decision = sampler.should_sample(parent, trace_id, name, pt.SpanKind.INTERNAL, None)
    return result


def tid(low64: int, high64: int = 0xABCDEF) -> int:
    """A trace id with the given low 64 bits (the part the ratio rule looks at)."""
    return (high64 << 64) | low64


# -- TraceIdRatio -------------------------------------------------------------------------------
def test_ratio_same_trace_id_same_decision() -> None:
    rng = random.Random(1234)
    ids = [rng.getrandbits(128) or 1 for _ in range(500)]
    for rate in (0.1, 0.5, 0.9):
        first = [decide(pt.TraceIdRatio(rate), t) for t in ids]
        again = [decide(pt.TraceIdRatio(rate), t) for t in ids]
        assert first == again
        assert SAMPLE in first
        assert DROP in first


def test_ratio_decisions_are_nested_across_rates() -> None:
    # A trace sampled at a low rate is sampled at every higher rate (same rule everywhere).
    rng = random.Random(99)
    low, high = pt.TraceIdRatio(0.2), pt.TraceIdRatio(0.6)
    for _ in range(2000):
        t = rng.getrandbits(128) or 1
        if decide(low, t) is SAMPLE:
            assert decide(high, t) is SAMPLE


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_ratio_sampled_fraction_is_close_to_the_rate(rate: float) -> None:
    n = 20_000
    rng = random.Random(int(rate * 1000))
    sampler = pt.TraceIdRatio(rate)
    hits = sum(decide(sampler, rng.getrandbits(128) or 1) is SAMPLE for _ in range(n))
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) < 5 * sigma


@pytest.mark.parametrize("rate", [0.0, 1e-6, 0.1, 0.5, 0.999, 1.0])
def test_ratio_bound_follows_the_opentelemetry_rule(rate: float) -> None:
    sampler = pt.TraceIdRatio(rate)
    bound = round(rate * 2**64)
    assert sampler.bound == bound
    if bound > 0:
        assert decide(sampler, tid(bound - 1)) is SAMPLE
        assert decide(sampler, tid(0)) is SAMPLE
    if bound <= LOW64:
        assert decide(sampler, tid(bound)) is DROP
        assert decide(sampler, tid(LOW64)) is DROP
    # Only the low 64 bits count.
    assert decide(sampler, tid(bound // 2, 0)) is decide(sampler, tid(bound // 2, LOW64))


def test_ratio_edges() -> None:
    rng = random.Random(5)
    ids = [rng.getrandbits(128) or 1 for _ in range(1000)] + [tid(0), tid(LOW64), (1 << 128) - 1]
    assert all(decide(pt.TraceIdRatio(1.0), t) is SAMPLE for t in ids)
    assert all(decide(pt.TraceIdRatio(0.0), t) is DROP for t in ids)
    assert all(decide(pt.TraceIdRatio(1), t) is SAMPLE for t in ids)


@pytest.mark.parametrize("rate", [-0.1, 1.01, 2, float("nan"), float("inf"), "abc", None])
def test_invalid_rates_raise_configuration_error(rate: Any) -> None:
    with pytest.raises(pt.ConfigurationError) as info:
        pt.TraceIdRatio(rate)
    assert isinstance(info.value, ValueError)


def test_tracer_ratio_decisions_match_the_sampler() -> None:
    # The tracer inlines the ratio check for speed; it must agree with TraceIdRatio exactly.
    sampler = pt.TraceIdRatio(0.3)
    with captured(sample_rate=0.3):
        spans = [pt.start_span("op") for _ in range(3000)]
        decisions = [s.sampled for s in spans]
        assert decisions == [decide(sampler, s.trace_id) is SAMPLE for s in spans]
        assert 0 < sum(decisions) < len(decisions)


# -- ParentBased --------------------------------------------------------------------------------
@pytest.mark.parametrize(("remote", "sampled"), [(True, True), (True, False), (False, True), (False, False)])
def test_parent_based_default_follows_the_parent(remote: bool, sampled: bool) -> None:
    parent = pt.TraceContext(tid(5), 7, 0x01 if sampled else 0x00, is_remote=remote)
    sampler = pt.ParentBased(pt.TraceIdRatio(0.0) if sampled else pt.TraceIdRatio(1.0))
    assert decide(sampler, parent.trace_id, parent=parent) is (SAMPLE if sampled else DROP)


def test_parent_based_root_uses_the_root_sampler() -> None:
    assert decide(pt.ParentBased(ALWAYS_OFF), tid(0)) is DROP
    assert decide(pt.ParentBased(ALWAYS_ON), tid(LOW64)) is SAMPLE
    ratio = pt.ParentBased(pt.TraceIdRatio(0.5))
    assert decide(ratio, tid(0)) is SAMPLE
    assert decide(ratio, tid(LOW64)) is DROP


class Fixed:
    """A sampler that always answers ``decision`` and remembers what it was asked."""

    def __init__(self, decision: pt.Decision) -> None:
        self.decision = decision
        self.calls: list[tuple[Any, int, str, Any, Mapping[str, Any] | None]] = []

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> pt.Decision:
        self.calls.append((parent, trace_id, name, kind, attributes))
        return self.decision


def test_parent_based_delegates_by_parent_kind() -> None:
    rs, rn, ls, ln = Fixed(DROP), Fixed(SAMPLE), Fixed(DROP), Fixed(pt.Decision.RECORD_ONLY)
    sampler = pt.ParentBased(
        ALWAYS_ON, remote_sampled=rs, remote_not_sampled=rn, local_sampled=ls, local_not_sampled=ln
    )
    assert not sampler.follows_parent_exactly
    cases = [
        (pt.TraceContext(1, 1, 1, is_remote=True), DROP, rs),
        (pt.TraceContext(1, 1, 0, is_remote=True), SAMPLE, rn),
        (pt.TraceContext(1, 1, 1, is_remote=False), DROP, ls),
        (pt.TraceContext(1, 1, 0, is_remote=False), pt.Decision.RECORD_ONLY, ln),
    ]
    for parent, expected, delegate in cases:
        assert decide(sampler, 1, "child", parent=parent) is expected
        assert delegate.calls[-1][0] is parent
        assert delegate.calls[-1][2] == "child"
    assert all(len(d.calls) == 1 for d in (rs, rn, ls, ln))


def test_parent_based_custom_delegate_through_the_tracer() -> None:
    remote = pt.TraceContext(tid(1), 9, 0x01)
    sampler = pt.ParentBased(ALWAYS_ON, remote_sampled=ALWAYS_OFF)
    with captured(sampler=sampler, keep_errors=False, slow_threshold_ms=None, rollups=None) as mem:
        with pt.span("from remote", context=remote) as s:
            assert not s.sampled
            assert not s.is_recording
        with pt.span("local root") as root, pt.span("local child") as child:
            assert root.sampled
            assert child.sampled
    assert sorted(r["name"] for r in mem.spans()) == ["local child", "local root"]


def test_custom_sampler_decides_per_trace_children_follow() -> None:
    # configure() wraps a custom sampler in ParentBased: it sees the root only, and the
    # children follow the root's decision (a trace is never cut in half).
    sampler = Fixed(SAMPLE)
    root_attrs = {"a": 1}
    with captured(sampler=sampler) as mem:
        root = pt.start_span("root", root_attrs, pt.SpanKind.SERVER)
        pt.start_span("child", context=root).end()
        root.end()
    assert len(mem.spans()) == 2
    [(p0, t0, n0, k0, a0)] = sampler.calls
    assert (p0, n0, k0, dict(a0 or {})) == (None, "root", pt.SpanKind.SERVER, {"a": 1})
    assert t0 == root.trace_id
    assert isinstance(pt.get_tracer().sampler, ParentBased)


@pytest.mark.allow_internal_errors
def test_raising_sampler_drops_and_never_raises() -> None:
    class Broken:
        def should_sample(self, *args: Any) -> pt.Decision:
            raise RuntimeError("sampler bug")

    no_tail: dict[str, Any] = {"keep_errors": False, "slow_threshold_ms": None, "rollups": None}
    with captured(sampler=Broken(), **no_tail) as mem, pt.span("op") as s:
        assert not s.sampled
    assert mem.spans() == []
    assert pt.stats()["internal_errors.sampler"] == 1


# -- RuleBased ----------------------------------------------------------------------------------
def test_rule_based_glob_patterns_first_match_and_default() -> None:
    sampler = pt.RuleBased(
        [
            pt.Rule(0.0, name="GET /health*"),
            pt.Rule(0.0, name="db.?ql"),
            pt.Rule(1.0, name="GET /health"),  # shadowed by the first rule
            pt.Rule(1.0, name="[ab]*"),
        ],
        default=0.0,
    )
    # tid(0) is sampled by any rate > 0; tid(LOW64) only by rate 1.
    assert decide(sampler, tid(0), "GET /health") is DROP
    assert decide(sampler, tid(0), "GET /healthz") is DROP
    assert decide(sampler, tid(0), "db.sql") is DROP
    assert decide(sampler, tid(LOW64), "alpha") is SAMPLE
    assert decide(sampler, tid(LOW64), "beta") is SAMPLE
    assert decide(sampler, tid(0), "gamma") is DROP  # default 0.0
    assert decide(sampler, tid(0), "db.mysql") is DROP  # default: ? is one character
    assert decide(sampler, tid(0), "GET /users") is DROP


def test_rule_based_rates_are_consistent_on_the_trace_id() -> None:
    sampler = pt.RuleBased([pt.Rule(0.5, name="checkout*")], default=1.0)
    assert decide(sampler, tid(0), "checkout") is SAMPLE
    assert decide(sampler, tid((1 << 63) - 1), "checkout.pay") is SAMPLE
    assert decide(sampler, tid(1 << 63), "checkout") is DROP
    assert decide(sampler, tid(1 << 63), "browse") is SAMPLE
    # Cached per name: asking again gives the same answers.
    assert decide(sampler, tid(1 << 63), "checkout") is DROP


def test_rule_based_service_patterns_and_sampler_default() -> None:
    sampler = pt.RuleBased([pt.Rule(1.0, service="pitch-*")], default=ALWAYS_OFF, service="pitch-api")
    other = pt.RuleBased([pt.Rule(1.0, service="pitch-*")], default=ALWAYS_OFF, service="billing")
    assert decide(sampler, tid(LOW64), "anything") is SAMPLE
    assert decide(other, tid(0), "anything") is DROP


def test_rule_validation() -> None:
    with pytest.raises(pt.ConfigurationError):
        pt.Rule(1.5, name="x")
    with pytest.raises(pt.ConfigurationError):
        pt.RuleBased([object()])  # type: ignore[list-item]
    with pytest.raises(pt.ConfigurationError):
        pt.RuleBased([], default=-1.0)


def test_rule_based_under_parent_based_through_the_tracer() -> None:
    rules = pt.RuleBased([pt.Rule(0.0, name="GET /health")], default=1.0)
    with captured(sampler=pt.ParentBased(rules), keep_errors=False) as mem:
        with pt.span("GET /health"), pt.span("health child"):
            pass
        with pt.span("GET /pitches"), pt.span("pitch child"):
            pass
    assert sorted(r["name"] for r in mem.spans()) == ["GET /pitches", "pitch child"]


# -- RateLimited --------------------------------------------------------------------------------
def test_rate_limited_burst_samples_about_the_limit() -> None:
    sampler = pt.RateLimited(10)
    started = time.monotonic()
    sampled = sum(decide(sampler, tid(i + 1)) is SAMPLE for i in range(1000))
    elapsed = time.monotonic() - started
    # A full bucket gives 10; whatever refilled during the loop (10 per second) may add a few.
    assert 10 <= sampled <= 10 + math.ceil(elapsed * 10) + 1


def test_rate_limited_is_thread_safe() -> None:
    sampler = pt.RateLimited(10)
    counts: list[int] = []
    lock = threading.Lock()

    def burst() -> None:
        n = sum(decide(sampler, tid(i + 1)) is SAMPLE for i in range(250))
        with lock:
            counts.append(n)

    started = time.monotonic()
    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert 10 <= sum(counts) <= 10 + math.ceil(elapsed * 10) + 1


def test_rate_limited_refills_over_time() -> None:
    sampler = pt.RateLimited(10)
    assert sum(decide(sampler, tid(i + 1)) is SAMPLE for i in range(100)) >= 10
    sampler._last -= 1.0  # one second passes (no sleeping in unit tests)
    started = time.monotonic()
    refilled = sum(decide(sampler, tid(i + 1)) is SAMPLE for i in range(100))
    elapsed = time.monotonic() - started
    assert 10 <= refilled <= 10 + math.ceil(elapsed * 10) + 1


def test_rate_limited_respects_the_inner_sampler() -> None:
    off = pt.RateLimited(1000, inner=ALWAYS_OFF)
    assert all(decide(off, tid(i + 1)) is DROP for i in range(50))
    half = pt.RateLimited(1000, inner=pt.TraceIdRatio(0.5))
    assert decide(half, tid(LOW64)) is DROP
    assert decide(half, tid(0)) is SAMPLE
    # Drops by the inner sampler consume no tokens.
    small = pt.RateLimited(2, inner=pt.TraceIdRatio(0.5))
    assert [decide(small, tid(LOW64)) for _ in range(5)] == [DROP] * 5
    assert [decide(small, tid(0)) for _ in range(2)] == [SAMPLE, SAMPLE]


def test_rate_limited_zero_never_samples_and_invalid_limits_raise() -> None:
    zero = pt.RateLimited(0)
    assert all(decide(zero, tid(i + 1)) is DROP for i in range(20))
    with pytest.raises(pt.ConfigurationError):
        pt.RateLimited(-1)
    with pytest.raises(pt.ConfigurationError):
        pt.RateLimited("10")  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), True, None])
def test_rate_limited_refuses_a_rate_that_is_not_a_finite_number(rate: object) -> None:
    with pytest.raises(pt.ConfigurationError):
        pt.RateLimited(rate)  # type: ignore[arg-type]


def test_rate_limited_refuses_an_inner_that_is_not_a_sampler() -> None:
    with pytest.raises(TypeError, match="RateLimited inner"):
        pt.RateLimited(10, inner=5)  # type: ignore[arg-type]


# -- OpenTelemetry names ------------------------------------------------------------------------
def test_sampler_from_name_for_every_opentelemetry_name() -> None:
    assert sampler_from_name("always_on") is ALWAYS_ON
    assert sampler_from_name("always_off") is ALWAYS_OFF
    ratio = sampler_from_name("traceidratio", "0.25")
    assert isinstance(ratio, pt.TraceIdRatio)
    assert ratio.rate == 0.25
    pb_on = sampler_from_name("parentbased_always_on")
    assert isinstance(pb_on, pt.ParentBased)
    assert pb_on.root is ALWAYS_ON
    assert pb_on.follows_parent_exactly
    pb_off = sampler_from_name("parentbased_always_off")
    assert isinstance(pb_off, pt.ParentBased)
    assert pb_off.root is ALWAYS_OFF
    pb_ratio = sampler_from_name("parentbased_traceidratio", "0.1")
    assert isinstance(pb_ratio, pt.ParentBased)
    assert isinstance(pb_ratio.root, pt.TraceIdRatio)
    assert pb_ratio.root.rate == 0.1


def test_sampler_from_name_defaults_and_normalisation() -> None:
    for arg in (None, ""):
        ratio = sampler_from_name("traceidratio", arg)
        assert isinstance(ratio, pt.TraceIdRatio)
        assert ratio.rate == 1.0
    spaced = sampler_from_name("  ParentBased_TraceIdRatio ", "0.5")
    assert isinstance(spaced, pt.ParentBased)
    assert isinstance(spaced.root, pt.TraceIdRatio)
    assert spaced.root.rate == 0.5
    assert sampler_from_name("ALWAYS_ON", "ignored") is ALWAYS_ON


@pytest.mark.parametrize(
    ("name", "arg"),
    [
        ("jaeger_remote", None),
        ("parentbased_jaeger_remote", None),
        ("xray", None),
        ("", None),
        ("always", None),
        ("traceidratio", "abc"),
        ("traceidratio", "1.5"),
        ("parentbased_traceidratio", "-0.1"),
        ("parentbased_traceidratio", "nan"),
    ],
)
def test_sampler_from_name_errors(name: str, arg: str | None) -> None:
    with pytest.raises(pt.ConfigurationError):
        sampler_from_name(name, arg)


# -- outcomes through the tracer ----------------------------------------------------------------
def test_drop_with_tail_keeping_is_record_only_and_exported_only_on_error() -> None:
    with captured(sampler=ALWAYS_OFF, keep_errors=True) as mem:
        with pt.span("quiet") as quiet, pt.span("quiet child"):
            assert quiet.is_recording
            assert not quiet.sampled
        with pytest.raises(ValueError), pt.span("failing root"), pt.span("failing child"):
            raise ValueError("boom")
    assert sorted(r["name"] for r in mem.spans()) == ["failing child", "failing root"]
    root = next(r for r in mem.spans() if r["name"] == "failing root")
    assert root["status"] == "error"


def test_drop_with_tail_keeping_keeps_slow_traces() -> None:
    with captured(sampler=ALWAYS_OFF, keep_errors=False, slow_threshold_ms=1000) as mem:
        slow = pt.start_span("slow", start_time_ns=time.time_ns() - 2_000_000_000)
        pt.start_span("fast").end()
        slow.end()
    assert [r["name"] for r in mem.spans()] == ["slow"]


def test_drop_without_tail_keeping_or_rollups_is_a_noop_span() -> None:
    def work() -> None:
        with pt.span("op") as s:
            assert not s.is_recording
            assert isinstance(s, pt.NonRecordingSpan)
            raise ValueError("not kept")

    no_tail: dict[str, Any] = {"keep_errors": False, "slow_threshold_ms": None, "rollups": None}
    with captured(sampler=ALWAYS_OFF, **no_tail) as mem, pytest.raises(ValueError):
        work()
    assert mem.records == []


def test_record_only_decision_records_without_sampling() -> None:
    with captured(sampler=Fixed(pt.Decision.RECORD_ONLY), keep_errors=True) as mem:
        with pt.span("kept only on error") as s:
            assert s.is_recording
            assert not s.sampled
            s.set_status("error", "bad")
        with pt.span("dropped at the end"):
            pass
    assert [r["name"] for r in mem.spans()] == ["kept only on error"]


def test_delegates_that_are_not_samplers_are_refused_when_made() -> None:
    # Accepted, they made should_sample fail on every span: each span dropped, an internal error.
    from pitchey_trace.sampling import ParentBased, Rule, RuleBased

    for bad in (None, 0.5, "always_on", object()):
        if not isinstance(bad, float):
            with pytest.raises(TypeError, match="must be a sampler"):
                ParentBased(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="must be a sampler"):
                RuleBased([], default=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="local_sampled"):
            ParentBased(ALWAYS_ON, local_sampled=bad)  # type: ignore[arg-type]
    assert RuleBased([Rule(name="x", rate=0.0)], default=0.5).default.should_sample is not None
    with pytest.raises(TypeError):
        RuleBased([], default=True)  # type: ignore[arg-type]
