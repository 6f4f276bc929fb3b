"""Tail keeping: head-unsampled traces are exported when they contain an error or a slow span."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace._span import Span, SpanKind, StatusCode
from pitchey_trace._tail import TailKeeper
from pitchey_trace.testing import capture_spans


def fail_inside() -> None:
    with pt.span("failing"):
        raise KeyError("boom")


def test_unsampled_trace_with_error_is_exported_whole() -> None:
    with capture_spans(sample_rate=0.0, rollups=None) as mem:
        with pt.span("ok_trace"), pt.span("child"):
            pass
        with pytest.raises(KeyError), pt.span("root") as root:
            with pt.span("db"):
                pass
            fail_inside()
    names = sorted(r["name"] for r in mem.spans())
    assert names == ["db", "failing", "root"]
    assert {r["trace_id"] for r in mem.spans()} == {root.trace_id_hex}
    assert not root.sampled  # it was head-unsampled, kept by the tail policy
    assert pt.stats()["tail.kept_traces"] == 1
    assert pt.stats()["tail.discarded"] == 2


def test_unsampled_slow_trace_is_exported() -> None:
    with capture_spans(sample_rate=0.0, slow_threshold_ms=50, rollups=None) as mem:
        with pt.span("fast_root"):
            pass
        with pt.span("slow_root"), pt.span("slow_child"):
            time.sleep(0.06)
    assert sorted(r["name"] for r in mem.spans()) == ["slow_child", "slow_root"]


def test_tail_off_means_unsampled_spans_are_noops() -> None:
    with capture_spans(sample_rate=0.0, keep_errors=False, slow_threshold_ms=None, rollups=None) as mem:
        with pytest.raises(ValueError), pt.span("root") as s:
            raise ValueError
    assert not s.is_recording
    assert mem.spans() == []


def _span(
    trace_id: int,
    span_id: int,
    parent: int,
    *,
    local_root: bool,
    error: bool = False,
    ms: float = 1.0,
    root: int | None = None,
) -> Span:
    """A finished span; ``root`` is its local root's span id (default: itself for a local
    root, else its parent)."""
    s = object.__new__(Span)
    s.name, s.kind, s.trace_id, s.span_id, s.parent_span_id = (
        "s",
        SpanKind.INTERNAL,
        trace_id,
        span_id,
        parent,
    )
    s.trace_flags, s.trace_state, s.baggage, s.attributes = 0, (), (), {}
    s.start_ns, s.end_ns, s.local_root = 1_000, 1_000 + int(ms * 1e6), local_root
    s.local_root_id = root if root is not None else span_id if local_root else parent
    s.events = s.links = None
    s.status, s.status_message = (StatusCode.ERROR if error else StatusCode.UNSET), None
    return s


def test_late_child_follows_decision_and_eviction_is_bounded() -> None:
    keeper = TailKeeper(keep_errors=True, slow_threshold_ms=100, max_pending=3)
    out: list[Span] = []
    # trace 1: child, error child, then root: all kept
    keeper.offer(_span(1, 11, 10, local_root=False), out)
    keeper.offer(_span(1, 12, 10, local_root=False, error=True), out)
    keeper.offer(_span(1, 10, 0, local_root=True), out)
    assert [s.span_id for s in out] == [11, 12, 10]
    # a late child of trace 1 (root already ended) is still kept
    keeper.offer(_span(1, 13, 10, local_root=False), out)
    assert out[-1].span_id == 13
    out.clear()
    # trace 2: root ends fine -> discarded; a late slow child alone is still kept
    keeper.offer(_span(2, 21, 20, local_root=False), out)
    keeper.offer(_span(2, 20, 0, local_root=True), out)
    assert out == []
    keeper.offer(_span(2, 22, 20, local_root=False, ms=500), out)
    assert [s.span_id for s in out] == [22]
    out.clear()
    # eviction: more pending spans than max_pending drops the oldest trace
    for tid in (3, 4, 5, 6):
        keeper.offer(_span(tid, tid * 10 + 1, tid * 10, local_root=False), out)
    assert keeper.pending_spans == 3
    keeper.offer(_span(3, 31, 30, local_root=False, error=True), out)
    assert [s.span_id for s in out] == [31]  # trace 3's buffered child was evicted
    keeper.expire(now=time.monotonic() + 3600)
    assert keeper.pending_spans == 0


def test_decisions_are_remembered_within_bounds() -> None:
    keeper = TailKeeper(keep_errors=True, slow_threshold_ms=None, remember=4)
    out: list[Span] = []
    for tid in range(1, 21):  # 20 traces decided "keep" (an erroring root each)
        keeper.offer_many([_span(tid, tid * 10, 0, local_root=True, error=True)], out)
    assert len(out) == 20
    assert len(keeper._decided) + len(keeper._decided_old) <= 2 * 4
    out.clear()
    # the most recent decisions are still known: a late child of trace 20 follows "keep"
    keeper.offer(_span(20, 201, 200, local_root=False), out)
    assert [s.span_id for s in out] == [201]
    # a long-forgotten trace is undecided again: its late child waits in the buffer
    keeper.offer(_span(1, 11, 10, local_root=False), out)
    assert len(out) == 1
    assert keeper.pending_spans == 1


def test_remote_unsampled_parent_with_error_is_kept() -> None:
    parent = pt.TraceContext(0xABC, 0xDEF, trace_flags=0)
    with capture_spans(sample_rate=1.0, rollups=None) as mem:
        with pt.span("server", kind=pt.SpanKind.SERVER, context=parent) as s:
            s.set_status("error", "upstream failed")
    [rec] = mem.spans()
    assert rec["trace_id"] == f"{0xABC:032x}"
    assert rec["parent_span_id"] == f"{0xDEF:016x}"
    assert rec["status"] == "error"


def test_slow_query_event_keeps_an_unsampled_trace() -> None:
    # An instrumentation's own threshold (PostgreSQL slow queries) marks the span with an event.
    with capture_spans(sample_rate=0.0, slow_threshold_ms=10_000, rollups=None) as mem:
        with pt.span("fast_root"):
            pass
        with pt.span("request"), pt.span("SELECT pitches", kind=pt.SpanKind.CLIENT) as q:
            q.add_event("slow_query", {"db.query.text": "SELECT ?"})
    assert sorted(r["name"] for r in mem.spans()) == ["SELECT pitches", "request"]


_SPAN_SPEC = st.tuples(
    st.integers(min_value=1, max_value=6),  # trace id
    st.integers(min_value=0, max_value=1),  # which of the trace's two local roots (requests)
    st.booleans(),  # local root
    st.booleans(),  # error
    st.sampled_from([0, 50, 500]),  # duration ms
    st.sampled_from([None, [], [("slow_query", 1, {})], [("other", 1, {})]]),  # events
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.lists(_SPAN_SPEC, max_size=12), min_size=1, max_size=6),
    keep_errors=st.booleans(),
    slow=st.sampled_from([None, 100.0]),
    max_pending=st.sampled_from([2, 5, 1000]),
    remember=st.sampled_from([1, 3, 1000]),
)
def test_c_offer_path_equals_the_python_one(
    monkeypatch: pytest.MonkeyPatch,
    chunks: list[list[tuple[int, int, bool, bool, int, Any]]],
    keep_errors: bool,
    slow: float | None,
    max_pending: int,
    remember: int,
) -> None:
    """The C accelerator's tail_offer() takes spans in order while they are common cases and
    stops where Python must act: the outcome is the same as Python alone, span for span."""
    from pitchey_trace import _accel, _stats
    from pitchey_trace import _tail as tail_module

    def run(fast: bool) -> tuple[Any, ...]:
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(_accel, "tail_offer", None)
            _stats.reset()
            keeper = tail_module.TailKeeper(
                keep_errors=keep_errors, slow_threshold_ms=slow, max_pending=max_pending, remember=remember
            )
            out: list[Span] = []
            sid = 0
            for chunk in chunks:
                spans = []
                for tid, request, root, error, ms, events in chunk:
                    sid += 1
                    root_id = tid * 10 + request  # its request's local root (the keeper reads no other id)
                    s = _span(tid, sid, 0 if root else 99, local_root=root, ms=ms, error=error, root=root_id)
                    s.events = list(events) if events is not None else None
                    spans.append(s)
                keeper.offer_many(spans, out)
            snap = {k: v for k, v in _stats.snapshot().items() if k.startswith("tail.")}
            return (
                [s.span_id for s in out],
                keeper.pending_spans,
                {t: [s.span_id for s in p.spans] for t, p in keeper._pending.items()},
                dict(keeper._decided),
                dict(keeper._decided_old),
                snap,
            )

    assert run(fast=True) == run(fast=False)


def test_decisions_are_per_local_root_not_per_trace() -> None:
    keeper = TailKeeper(keep_errors=True, slow_threshold_ms=None)
    out: list[Span] = []
    # one trace, two local roots (70 and 80: two requests of one unsampled caller)
    keeper.offer_many([_span(7, 71, 70, local_root=False), _span(7, 81, 80, local_root=False)], out)
    keeper.offer(_span(7, 70, 1, local_root=True), out)  # request 70 ends fine: only its spans go
    assert (out, keeper.pending_spans) == ([], 1)
    keeper.offer(_span(7, 82, 80, local_root=False, error=True), out)
    assert [s.span_id for s in out] == [81, 82]  # request 80 fails: kept whole, not "kept late"
    keeper.offer_many([_span(7, 80, 1, local_root=True), _span(7, 72, 70, local_root=False)], out)
    assert [s.span_id for s in out] == [81, 82, 80]  # each late span follows its own request
    assert keeper.pending_spans == 0


_UNSAMPLED_CALLER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}


def _request(name: str, *, fail: bool) -> None:
    with pt.span(name, kind=pt.SpanKind.SERVER, context=pt.extract(_UNSAMPLED_CALLER)) as server:
        with pt.span(f"{name}.db") as query:
            if fail:
                query.set_status(pt.StatusCode.ERROR, "timeout")
        with pt.span(f"{name}.render"):
            pass
        if fail:
            server.set_status(pt.StatusCode.ERROR)


def test_a_retried_request_keeps_its_whole_trace_when_it_fails() -> None:
    # The unsampled caller calls twice in one trace: the first request, fine, decides nothing
    # for the second.
    with capture_spans(sample_rate=1.0, rollups=None) as mem:
        _request("first", fail=False)
        pt.force_flush(5)
        _request("retry", fail=True)
    assert sorted(r["name"] for r in mem.spans()) == ["retry", "retry.db", "retry.render"]
    stats = pt.stats()
    assert (stats["tail.kept_traces"], stats["tail.discarded"], stats.get("tail.kept_late", 0)) == (1, 3, 0)


def test_concurrent_requests_of_one_trace_are_decided_apart() -> None:
    with capture_spans(sample_rate=1.0, rollups=None) as mem:
        caller = pt.extract(_UNSAMPLED_CALLER)
        a = pt.start_span("a", kind=pt.SpanKind.SERVER, context=caller)
        b = pt.start_span("b", kind=pt.SpanKind.SERVER, context=caller)
        pt.start_span("a.db", context=a).end()
        pt.start_span("b.db", context=b).end()
        pt.force_flush(5)  # both children wait in the tail buffer
        b.end()  # b ends fine while a still runs
        pt.force_flush(5)
        failing = pt.start_span("a.call", context=a)
        failing.set_status(pt.StatusCode.ERROR)
        failing.end()
        a.end()
    assert sorted(r["name"] for r in mem.spans()) == ["a", "a.call", "a.db"]


def test_spans_started_from_a_local_context_are_part_of_its_request() -> None:
    with capture_spans(sample_rate=0.0, rollups=None) as mem:
        with pt.span("root") as root:
            ctx = pt.current_context()
            assert ctx is not None
            assert not ctx.is_remote
            with pt.span("handoff", context=ctx) as handoff:
                pass
            with pt.use_context(ctx), pt.span("scoped") as scoped:
                pass
            with pt.span("step") as step:
                step_ctx = step.context
            with pt.span("from_step", context=step_ctx) as from_step:  # a span of the request is current
                pass
            with pt.set_baggage({"k": "v"}), pt.span("bagged") as bagged:
                pass
            with pt.span("err") as err:
                err.set_status(pt.StatusCode.ERROR)
    joined = (handoff, scoped, from_step, bagged)
    assert [s.local_root for s in joined] == [False] * 4
    assert {s.local_root_id for s in joined} == {root.span_id}
    names = sorted(r["name"] for r in mem.spans())
    assert names == ["bagged", "err", "from_step", "handoff", "root", "scoped", "step"]


def test_work_handed_to_a_thread_stays_part_of_its_request() -> None:
    made: dict[str, Any] = {}
    with capture_spans(sample_rate=0.0, rollups=None) as mem:
        with pt.span("root") as root:
            with pt.span("step") as step:

                def job() -> None:  # (a plain thread: no span is current in it)
                    with pt.span("by_context", context=root.context) as a:
                        pass
                    with pt.use_context(step), pt.span("in_step") as b:
                        pass
                    made.update(by_context=a, in_step=b)

                thread = threading.Thread(target=job)
                thread.start()
                thread.join()
            root.set_status(pt.StatusCode.ERROR)
    assert {s.local_root_id for s in made.values()} == {root.span_id}
    assert sorted(r["name"] for r in mem.spans()) == ["by_context", "in_step", "root", "step"]


def test_a_remote_context_still_starts_a_local_root() -> None:
    remote = pt.TraceContext(0xABC, 0xDEF, trace_flags=0)  # is_remote=True
    with capture_spans(sample_rate=0.0, rollups=None):
        with pt.span("server", context=remote) as server, pt.use_context(remote), pt.span("other") as other:
            pass
    assert [server.local_root, other.local_root] == [True, True]
    assert (server.local_root_id, other.local_root_id) == (server.span_id, other.span_id)
