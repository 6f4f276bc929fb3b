"""The optional C builder of span records gives exactly what the Python builder gives, sends
every span it does not handle to the Python builder, and can be turned off."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import _stats, sanitize
from pitchey_trace._span import Span
from pitchey_trace.records import (
    _DEFAULT_THRESHOLDS,
    _KIND_STR,
    _STATUS_STR,
    make_resource,
    span_record,
    span_template,
)
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans
from tests.unit.test_core_session16 import RESOURCE as DROPS_RESOURCE
from tests.unit.test_core_session16 import _spans_with_drops

RESOURCE = make_resource("svc", "prod", {"k": "v"})


def _c_plain_records(spans: list[Any], template: dict[str, Any], max_attributes: int = sys.maxsize) -> Any:
    """The C builder's records for ``spans`` without a sanitizer (failing if it hands any to
    Python)."""
    build = sanitize._build_span_records
    assert build is not None
    return build(
        spans,
        template,
        _DEFAULT_THRESHOLDS.table,
        _KIND_STR,
        _STATUS_STR,
        None,
        None,
        None,
        max_attributes,
        lambda span: pytest.fail("handed to Python"),
    )


def test_span_exit_reads_context_tokens_directly() -> None:
    # The C __exit__ takes what a reset makes current from the token's struct, the layout
    # checked once at import (it used to fail the check on every CPython, and each exit read
    # Token.old_value as an attribute).
    import contextvars

    from pitchey_trace import _speedups
    from pitchey_trace._context import CURRENT

    assert _speedups.token_layout() is (sys.implementation.name == "cpython" and sys.version_info < (3, 14))

    def first_span_in_a_fresh_context() -> tuple[Any, Any]:
        # CURRENT was never set here: the token's previous value is Token.MISSING
        with pt.span("outer") as outer:
            with pt.span("inner") as inner:
                pass
            assert pt.current_span() is outer
        after = CURRENT.get()
        with pt.span("next") as nxt:
            pass
        return (after, nxt.parent_span_id, inner.parent_span_id == outer.span_id)

    with capture_spans():
        after, parent, nested = contextvars.Context().run(first_span_in_a_fresh_context)
    assert after is None
    assert parent == 0  # ("next" is a root: 0, no parent)
    assert nested


def test_accelerator_is_built_and_loaded() -> None:
    # The project's install builds it (setup.py); a machine without a C compiler falls back to
    # Python, but this test environment must have it, or the C path would go untested.
    assert sanitize._build_span_records is not None, "pitchey_trace._speedups is not built (gcc?)"


def _spans(specs: list[tuple[str, dict[str, Any], bool, str | None]]) -> list[Span]:
    made: list[Span] = []
    with capture_spans(rollups=None):
        parent = pt.start_span("parent")
        for name, attrs, with_event, message in specs:
            span = pt.start_span(name, attributes=attrs, context=parent if len(made) % 2 else None)
            assert isinstance(span, Span)
            if with_event:
                span.add_event("retry", {"n": 1})
            if message is not None:
                span.set_status(pt.StatusCode.ERROR, message)
            span.end()
            made.append(span)
        parent.end()
    return made


def _python(san: Sanitizer, spans: list[Span]) -> list[dict[str, Any]]:
    return [san._span_record(s, "svc", "prod", RESOURCE, None) for s in spans]


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([4111111111111111, 10**12, 10**12 - 1, -(10**13), 200]),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["ada@example.org", "SELECT * FROM t WHERE a = 'x'", "GET", "x" * 600]),
    st.lists(st.sampled_from(["a", "1"]), max_size=2),
)
_SPEC = st.tuples(
    st.sampled_from(["GET /x", "mail ada@example.org", "op", "q" * 600]),
    st.dictionaries(
        st.sampled_from(["http.route", "user.id", "password", "db.query.text", "n", "card"]),
        _VALUES,
        max_size=6,
    ),
    st.booleans(),
    st.one_of(st.none(), st.just("boom")),
)


@settings(max_examples=120, deadline=None)
@given(specs=st.lists(_SPEC, min_size=1, max_size=12), cache_size=st.sampled_from([8192, 0]))
def test_c_builder_equals_python_builder(
    specs: list[tuple[str, dict[str, Any], bool, str | None]], cache_size: int
) -> None:
    spans = _spans(specs)
    san = Sanitizer(cache_size=cache_size)
    for _ in range(2):  # cold caches (mostly Python fallbacks), then warm (mostly C)
        got = san._span_records(spans, "svc", "prod", RESOURCE, None)
        assert got == _python(Sanitizer(cache_size=cache_size), spans)


@settings(max_examples=80, deadline=None)
@given(specs=st.lists(_SPEC, min_size=1, max_size=12))
def test_c_builder_without_a_sanitizer_equals_span_record(
    specs: list[tuple[str, dict[str, Any], bool, str | None]],
) -> None:
    from pitchey_trace.records import span_record

    spans = _spans(specs)
    with capture_spans(sanitizer=None, rollups=None) as exporter:  # the pipeline's own path
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        got = pipeline._plain_records(spans, "svc", "prod", RESOURCE, None)
        expected = [span_record(s, "svc", "prod", RESOURCE) for s in spans]
        assert got == expected
        assert [list(r) for r in got] == [list(r) for r in expected]  # same field order
        # the record shares the ended span's attribute map, as span_record does
        assert all(r["attributes"] is s.attributes for r, s in zip(got, spans, strict=True))
        with pt.span("exported", {"k": "v"}):
            pass
    (record,) = [r for r in exporter.records if r.get("name") == "exported"]
    assert record["attributes"] == {"k": "v"}


def test_c_builder_without_a_sanitizer_builds_plain_spans_itself() -> None:
    from pitchey_trace.records import span_record, span_template

    spans = _spans([("op", {"n": 10**15, "s": "ada@example.org"}, False, None)] * 3)
    out = _c_plain_records(spans, span_template("svc", "prod", RESOURCE))
    assert out == [span_record(s, "svc", "prod", RESOURCE) for s in spans]
    assert out[0]["attributes"] == {"n": 10**15, "s": "ada@example.org"}  # nothing masked


def _build(
    san: Sanitizer, spans: list[Any], slow: Any, resource: dict[str, Any] = RESOURCE
) -> list[dict[str, Any]]:
    build = sanitize._build_span_records
    assert build is not None
    return build(
        spans,
        san._template_for("svc", "prod", resource),
        _DEFAULT_THRESHOLDS.table,
        _KIND_STR,
        _STATUS_STR,
        san._key_cache,
        san._text_cache,
        san._sql_cache,
        san.max_attributes,
        slow,
    )


def test_spans_the_c_builder_does_not_handle_go_to_the_python_builder_in_order() -> None:
    plain = _spans([("op", {"n": 1}, False, None)] * 3)
    odd = _spans(
        [
            ("op", {"n": 1}, True, None),  # an event
            ("op", {"n": 1}, False, "boom"),  # a status message
            ("op", {"n": 10**15}, False, None),  # an int that may be a card number
            ("op", {"l": [1]}, False, None),  # a list value
        ]
    )
    weird = Span.__new__(Span)  # slots never set
    big = _spans([("op", {}, False, None)])[0]
    big.start_ns = big.end_ns = 2**70  # does not fit 64 bits
    san = Sanitizer()
    _python(san, plain)  # warm the caches
    handed: list[Any] = []

    def slow(span: Any) -> dict[str, Any]:
        handed.append(span)
        return {"slow": id(span)}

    chunk = [plain[0], *odd, weird, big, plain[1], "not a span", plain[2]]
    out = _build(san, chunk, slow)
    assert handed == [*odd, weird, big, "not a span"]
    assert [r.get("slow") for r in out] == [None, *map(id, [*odd, weird, big]), None, id("not a span"), None]
    assert out[0] == _python(san, [plain[0]])[0]


def test_an_error_in_the_python_builder_propagates_and_the_pipeline_falls_back_per_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(span: Any) -> dict[str, Any]:
        raise RuntimeError("builder bug")

    with pytest.raises(RuntimeError, match="builder bug"):
        _build(Sanitizer(), _spans([("op", {"n": 1}, True, None)]), explode)

    real = Sanitizer._span_records

    def failing(self: Sanitizer, *args: Any) -> Any:
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(Sanitizer, "_span_records", failing)
    with capture_spans(rollups=None) as mem:
        for i in range(5):
            with pt.span(f"op{i}"):
                pass
    assert sorted(r["name"] for r in mem.spans()) == [f"op{i}" for i in range(5)]
    assert _stats.snapshot().get("pipeline.chunk_fallbacks", 0) >= 1
    monkeypatch.setattr(Sanitizer, "_span_records", real)


def test_no_reference_leaks() -> None:
    spans = _spans([("leak-check", {"http.route": "/x", "n": 2, "ok": True, "f": 0.5}, False, None)] * 50)
    san = Sanitizer()
    _python(san, spans)
    route = san._text_cache["/x"]
    gc.collect()
    before = sys.getrefcount(route), sys.getrefcount(spans[0].name), sys.getrefcount(spans[0])
    for _ in range(200):
        _build(san, spans, lambda s: {})
    gc.collect()
    assert (sys.getrefcount(route), sys.getrefcount(spans[0].name), sys.getrefcount(spans[0])) == before
    tracemalloc.start()
    for _ in range(200):
        _build(san, spans, lambda s: {})
    first = tracemalloc.get_traced_memory()[0]
    for _ in range(2000):
        _build(san, spans, lambda s: {})
    grown = tracemalloc.get_traced_memory()[0] - first
    tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 2000 chunks"


def test_no_reference_leaks_starting_spans_under_a_remote_parent() -> None:
    state, bag = (("v", "1"),), (("k", "2"),)
    ctx = pt.TraceContext(0x1234, 0x5678, 0x01, state, bag)
    odd = pt.TraceContext(0x1234, 0x5678, 0x00, state, bag)  # not sampled: a no-op span
    with capture_spans(rollups=None, sample_rate=1.0):
        start = pt.get_tracer().start_span
        for _ in range(100):  # warm up
            start("s", {"a": 1}, pt.SpanKind.SERVER, ctx, None, 10)
        gc.collect()
        before = [sys.getrefcount(x) for x in (ctx, state, bag, ctx.trace_id, odd)]
        for i in range(2000):
            span = start("s", {"a": i}, pt.SpanKind.SERVER, ctx if i % 2 else odd, None, 10)
            del span  # never ended: nothing queued keeps a reference
        gc.collect()
        assert [sys.getrefcount(x) for x in (ctx, state, bag, ctx.trace_id, odd)] == before


def test_no_reference_leaks_building_audit_records() -> None:
    from pitchey_trace import _speedups
    from pitchey_trace.records import PENDING_AUDIT

    san = Sanitizer()
    action = "GET /leak/{id}"
    pending = (
        PENDING_AUDIT,
        "request",
        1,
        0xAB,
        0xCD,
        None,
        action,
        "/leak/{id}",
        "200",
        "GET",
        200,
        10,
        "1.2.3.4",
    )
    san._request_audit(pending, "s", "e")  # warm the caches
    args = (pending, "s", "e", san._key_cache, san._text_cache, san._sql_cache, 128)
    assert _speedups.build_audit_record(*args) is not None
    clean_action = san._text_cache[action]
    gc.collect()
    before = sys.getrefcount(pending), sys.getrefcount(clean_action)
    tracemalloc.start()
    for _ in range(200):
        _speedups.build_audit_record(*args)
    first = tracemalloc.get_traced_memory()[0]
    for _ in range(5000):
        _speedups.build_audit_record(*args)
    grown = tracemalloc.get_traced_memory()[0] - first
    tracemalloc.stop()
    assert (sys.getrefcount(pending), sys.getrefcount(clean_action)) == before
    assert grown < 16 * 1024, f"{grown} bytes kept after 5000 records"


async def _noop_send(message: Any) -> None:
    return None


def test_no_reference_leaks_in_the_c_request_start_and_finish() -> None:
    from pitchey_trace.web import _common

    begin, finish = _common.fast_begin, _common.fast_finish
    assert begin is not None and finish is not None  # noqa: PT018
    headers = [
        (b"user-agent", b"ua"),
        (b"content-length", b"5"),
        (b"traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"),
    ]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/p",
        "scheme": "http",
        "query_string": b"a=1",
        "headers": headers,
        "client": ("1.2.3.4", 5),
    }
    path, name = "/p", b"x-trace-id"

    class Route:
        path = "/p/{id}"

    scope["route"] = Route()

    def one() -> None:
        state, sender, client = begin(scope, path, 10, name, _noop_send)
        sender({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}).close()
        sender({"type": "http.response.body", "body": b"abc"}).close()
        assert (state.status, state.sent) == (200, 3)
        assert finish(state, 10, client, True) is True
        assert state.span.name == "GET /p/{id}"

    with capture_spans(rollups=None, max_queue_size=10**6, export_batch_size=10**6, schedule_delay_ms=10**7):
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        for _ in range(200):
            one()
        pipeline.queue.clear()
        gc.collect()
        before = [sys.getrefcount(x) for x in (scope, path, name, headers)]
        tracemalloc.start()
        for _ in range(200):
            one()
        pipeline.queue.clear()
        gc.collect()  # (which also empties the tuple free lists)
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(3000):
            one()
        pipeline.queue.clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - first
        tracemalloc.stop()
        gc.collect()
        assert [sys.getrefcount(x) for x in (scope, path, name, headers)] == before
        assert grown < 32 * 1024, f"{grown} bytes kept after 3000 requests"


def test_the_c_sender_is_collected_in_a_cycle_and_passes_odd_messages_through() -> None:
    from pitchey_trace.web import _common

    begin = _common.fast_begin
    assert begin is not None
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    def senders() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "Sender")

    with capture_spans(rollups=None):
        gc.collect()
        before = senders()
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        state, sender, _client = begin(scope, "/", 1, b"x-trace-id", send)
        scope["send"] = sender  # an app keeping it in the scope: a cycle through the state
        message = {"type": "http.response.start", "status": 201}
        sender(message).close()  # (the coroutine of this test's send is not run)
        sender("not a dict").close()
        with pytest.raises(TypeError):
            sender()
        assert state.status == 201
        assert "headers" not in message  # the app's message is never changed
        state.span.end()
        del state, sender, scope
        gc.collect()
        assert senders() == before


def test_pure_python_switch() -> None:
    code = (
        "import pitchey_trace as pt, pitchey_trace.sanitize as s\n"
        "from pitchey_trace.testing import capture_spans\n"
        "assert s._build_span_records is None\n"
        "with capture_spans() as mem:\n"
        "    with pt.span('op', attributes={'user.email': 'ada@example.org'}):\n"
        "        pass\n"
        "print(mem.spans()[0]['attributes'])\n"
    )
    env = dict(os.environ, PITCHEY_TRACE_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'user.email': '[EMAIL]'}"


def _slots(span: Span) -> dict[str, Any]:
    random_or_clock = (
        "span_id",
        "start_ns",
        "end_ns",
        "trace_id",
        "parent_span_id",
        "_pipe",
        "links",
        "local_root_id",
    )
    out = {name: getattr(span, name) for name in Span.__slots__ if name not in random_or_clock}
    out["links"] = [(k.context.trace_id, k.context.span_id, k.attributes) for k in span.links or ()]
    return out


def test_c_and_python_span_construction_agree() -> None:
    from pitchey_trace import _tracer

    tracer = _tracer.get_tracer()
    link = pt.TraceContext(trace_id=0xABC, span_id=0xDEF)
    made: dict[str, list[Span]] = {}
    for label, start in (("c", tracer.start_span), ("python", tracer._py_start_span)):  # type: ignore[attr-defined]
        with capture_spans(rollups=None):
            with start("parent", attributes={"a": 1}, kind=pt.SpanKind.SERVER) as parent:
                child = start("child", {"k": "v"}, kind=pt.SpanKind.CLIENT, links=[link], start_time_ns=5)
                assert isinstance(child, Span)
                assert isinstance(parent, Span)
                made[label] = [parent, child]
                child.end(9)
    for c_span, py_span in zip(made["c"], made["python"], strict=True):
        assert _slots(c_span) == _slots(py_span)
        assert bool(c_span.parent_span_id) == bool(py_span.parent_span_id)
    for spans in made.values():  # parent and child: one local root, the parent
        assert [s.local_root_id for s in spans] == [spans[0].span_id] * 2
    assert made["c"][1].links is not None
    assert made["c"][1].links[0].context.span_id == 0xDEF
    assert (made["c"][1].start_ns, made["c"][1].end_ns) == (5, 9)


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.integers(min_value=-5, max_value=10**12), min_size=1, max_size=60),
    names=st.lists(st.sampled_from(["a", "b", "GET /x"]), min_size=1, max_size=60),
    errors=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_c_rollup_summary_equals_python(durations: list[int], names: list[str], errors: list[bool]) -> None:
    from pitchey_trace import _accel
    from pitchey_trace.processors import Rollups

    assert _accel.rollup_chunk is not None
    spans: list[Span] = []
    with capture_spans(rollups=None):
        for i, d in enumerate(durations):
            # f-string names: equal text in distinct objects must still share a group
            span = pt.start_span(
                f"{names[i % len(names)]}", start_time_ns=1_700_000_000_000_000_000 + i * 10**9
            )
            assert isinstance(span, Span)
            if errors[i % len(errors)]:
                span.set_status(pt.StatusCode.ERROR)
            span.end(span.start_ns + d)  # negative: ends before it starts, counts as 0
            spans.append(span)
    rollups = Rollups(interval_s=7)
    got = _accel.rollup_chunk(spans, rollups._interval_ns, pt.StatusCode.ERROR, rollups._inv_log_gamma, 1e-6)
    want = rollups._summarize(spans)
    assert got.keys() == want.keys()
    for key, (count, errs, total, low, high, zeros, buckets, apart) in want.items():
        c_count, c_errs, c_total, c_low, c_high, c_zeros, c_buckets, c_apart = got[key]
        assert (c_count, c_errs, c_low, c_high, c_zeros, dict(c_buckets)) == (
            count,
            errs,
            low,
            high,
            zeros,
            dict(buckets),
        )
        assert c_total == pytest.approx(total, rel=1e-12, abs=1e-12)
        # the error spans apart: None without errors, else the same figures for them alone
        assert (c_apart is None) == (apart is None) == (errs == 0)
        if apart is not None and c_apart is not None:
            assert c_apart[1:5] == apart[1:5]
            assert (c_apart[5], dict(c_apart[6])) == (apart[5], dict(apart[6]))
            assert c_apart[0] == pytest.approx(apart[0], rel=1e-12, abs=1e-12)


def test_rollups_fall_back_to_python_for_unusual_spans() -> None:
    from pitchey_trace.processors import Rollups, merge_rollups

    with capture_spans(rollups=None):
        span = pt.start_span("op")
        assert isinstance(span, Span)
        span.end()
    # beyond 64 bits: the C summary refuses (set directly: start_span and end take them as now)
    span.start_ns, span.end_ns = 2**70, 2**70 + 5_000_000
    rollups = Rollups()
    rollups.bind(service="s", environment="e")
    rollups.observe_many([span])
    (record,) = merge_rollups(rollups.collect(0, force=True))
    assert (record["count"], record["duration_max_ms"]) == (1, 5.0)


@pytest.mark.parametrize("path", ["c", "python"])
def test_start_span_fast_path_agrees_with_the_sampling_rules(path: str) -> None:
    import functools

    from pitchey_trace import _tracer
    from pitchey_trace.sampling import TraceIdRatio

    assert type(_tracer.Tracer.start_span).__name__ == "method_descriptor"  # the C method
    start: Any = pt.start_span
    if path == "python":
        start = functools.partial(_tracer.Tracer._py_start_span, _tracer.get_tracer())  # type: ignore[attr-defined]
    bound = TraceIdRatio(0.3).bound
    low64 = (1 << 64) - 1
    with capture_spans(sample_rate=0.3, keep_errors=False, slow_threshold_ms=None, rollups=None):
        roots = [start("root", {"a": "x", "n": 1, "b": True}) for _ in range(400)]
        for root in roots:
            assert root.sampled == ((root.trace_id & low64) < bound)
            assert isinstance(root, Span) == root.sampled  # unsampled and nothing to record: no-op span
            if isinstance(root, Span):
                assert root.local_root
                assert root.parent_span_id == 0
                assert root.attributes == {"a": "x", "n": 1, "b": True}
                with root:
                    child = start("child", {"f": 0.5}, kind=pt.SpanKind.CLIENT)  # a float: general path
                    assert isinstance(child, Span)
                    assert (child.trace_id, child.parent_span_id) == (root.trace_id, root.span_id)
                    assert child.trace_flags == root.trace_flags
                    assert not child.local_root
                    assert child.attributes == {"f": 0.5}
                    assert child.kind is pt.SpanKind.CLIENT
                    child.end()
            root.end()
        assert {type(r) for r in roots} == {Span, pt.NonRecordingSpan}
        # keywords, explicit None and the general cases reach the same results
        s = start(name="kw", attributes={"k": "v"}, kind=pt.SpanKind.SERVER, context=None, links=None)
        if isinstance(s, Span):  # sampled (30%): recorded with what was passed
            assert (s.name, s.kind, s.attributes) == ("kw", pt.SpanKind.SERVER, {"k": "v"})
        with pytest.raises(TypeError):
            start("x", bogus=1)
    with capture_spans(sample_rate=0.0, rollups=None) as mem:  # record-only for tail keeping
        with pt.span("kept") as s:
            assert isinstance(s, Span)
            assert not s.sampled
            s.set_status("error")
    assert [r["name"] for r in mem.spans()] == ["kept"]


@pytest.mark.parametrize("path", ["c", "python"])
def test_start_span_sets_the_local_root_alike(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every span knows its local root (tail keeping decides per local root); the C method
    does it for a root, a span's child and a remote parent's child, the Python one for a local
    context (a TraceContext does not carry the local root)."""
    import functools

    from pitchey_trace import _tracer

    calls: list[str] = []
    py_start = _tracer.Tracer._py_start_span  # type: ignore[attr-defined]
    spy = lambda self, name, *a, **k: calls.append(name) or py_start(self, name, *a, **k)  # noqa: E731
    monkeypatch.setattr(_tracer.Tracer, "_py_start_span", spy)
    start: Any = pt.start_span
    if path == "python":
        start = functools.partial(py_start, _tracer.get_tracer())
    remote = pt.TraceContext(0xABC, 0x123, 0x00)
    with capture_spans(sample_rate=0.0, rollups=None):  # record-only spans: tail keeping on
        with start("root") as root, start("child") as child:
            grandchild = start("grandchild")
            by_context = start("by_context", context=child.context)  # (its request is current)
        server = start("server", context=remote)
        under = start("under", context=server)
        spans = [root, child, grandchild, by_context, server, under]
        for s in spans:
            assert isinstance(s, Span)
            s.end()
    assert [s.local_root for s in spans] == [True, False, False, False, True, False]
    assert [s.local_root_id for s in spans] == [root.span_id] * 4 + [server.span_id] * 2
    assert calls == (["by_context"] if path == "c" else [])


@pytest.mark.parametrize("path", ["c", "python"])
def test_start_span_with_a_remote_parent_and_a_start_time_agrees(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    from pitchey_trace import _tracer

    start: Any = pt.start_span
    if path == "c":  # the server-span call of the middleware stays in C
        calls: list[Any] = []
        py_start = _tracer.Tracer._py_start_span  # type: ignore[attr-defined]
        spy = lambda *a, **k: calls.append(a) or py_start(*a, **k)  # noqa: E731
        monkeypatch.setattr(_tracer.Tracer, "_py_start_span", spy)
    if path == "python":
        start = functools.partial(_tracer.Tracer._py_start_span, _tracer.get_tracer())  # type: ignore[attr-defined]
    state = (("vendor", "x"),)
    bag = (("user.id", "7"),)
    sampled = pt.TraceContext(0xABC, 0x123, 0x01, state, bag)
    unsampled = pt.TraceContext(0xDEF, 0x456, 0x00, (), ())
    with capture_spans(sample_rate=1.0, keep_errors=False, slow_threshold_ms=None, rollups=None):
        s = start("GET", {"http.request.method": "GET"}, pt.SpanKind.SERVER, sampled, None, 5_000)
        assert isinstance(s, Span)
        assert (s.trace_id, s.parent_span_id, s.trace_flags) == (0xABC, 0x123, 0x01)
        assert (s.trace_state, s.baggage, s.start_ns, s.local_root) == (state, bag, 5_000, True)
        assert s.kind is pt.SpanKind.SERVER
        assert s.attributes == {"http.request.method": "GET"}
        # the caller's "not sampled" is honoured, whatever the local rate
        n = start("GET", None, pt.SpanKind.SERVER, context=unsampled, start_time_ns=7)
        assert isinstance(n, pt.NonRecordingSpan)
        assert (n.trace_id, n.trace_flags) == (0xDEF, 0x00)
        # a start time that is not an int is replaced by now (the Python method, counted), as
        # is no context at all
        s2 = start("x", None, pt.SpanKind.INTERNAL, None, None, "soon")
        assert isinstance(s2, Span)
        assert s2.start_ns > 10**18
        assert s2.parent_span_id == 0
        assert pt.stats()["misuse.start_time_invalid"] == 1
        # links still go through the general path, with the same result
        s3 = start("y", None, pt.SpanKind.SERVER, sampled, [unsampled], 9)
        assert isinstance(s3, Span)
        assert s3.trace_id == 0xABC
        assert len(s3.links or ()) == 1
        for span in (s, s2, s3):
            span.end()
    if path == "c":
        assert [call[1] for call in calls] == ["x", "y"]


def test_c_records_are_untracked_until_a_container_goes_in() -> None:
    spans = _spans([("op", {"n": 1}, False, None)] * 3)
    san = Sanitizer()
    _python(san, spans)  # warm the caches: the C builder takes them all
    records = _build(san, spans, lambda s: pytest.fail("unexpected fallback"))
    assert not any(gc.is_tracked(r) for r in records)  # nothing for the cycle collector to find
    records[0]["extra"] = [records[0]]  # a consumer making a cycle: the dict is tracked again
    assert gc.is_tracked(records[0])
    del records
    assert gc.collect() >= 1  # and the cycle is collected


def test_records_without_events_share_one_read_only_empty_list() -> None:
    import copy
    import json
    import pickle

    from pitchey_trace.records import NO_ITEMS

    spans = _spans([("op", {"n": 1}, False, None)] * 2)
    san = Sanitizer()
    python = _python(san, spans)
    built = _build(san, spans, lambda s: pytest.fail("unexpected fallback"))
    for record in [*built, *python]:  # the C and the Python builders alike
        assert record["events"] is NO_ITEMS
        assert record["links"] is NO_ITEMS
    assert not gc.is_tracked(NO_ITEMS)  # (so records holding it are untracked too)
    assert not gc.is_tracked(built[0])
    # an empty list in every way but one
    assert NO_ITEMS == []
    assert isinstance(NO_ITEMS, list)
    assert not NO_ITEMS
    assert len(NO_ITEMS) == 0
    assert json.dumps(built[0]["events"]) == "[]"
    changes = [
        lambda e: e.append({"name": "late"}),
        lambda e: e.extend([1]),
        lambda e: e.insert(0, 1),
        lambda e: e.__setitem__(slice(0, 0), [1]),
        lambda e: e.__iadd__([1]),
        lambda e: e.__imul__(2),
        lambda e: e.__init__(),
    ]
    for change in changes[:-1]:
        with pytest.raises(TypeError, match="shared"):
            change(built[0]["events"])
    changes[-1](NO_ITEMS)  # (re-initialising leaves it empty)
    assert NO_ITEMS == []
    # copies are plain lists; a record gets more events by assigning a new list
    for copied in (
        copy.copy(NO_ITEMS),
        copy.deepcopy(built[0])["events"],
        pickle.loads(pickle.dumps(NO_ITEMS)),  # noqa: S301  (our own bytes)
    ):
        assert type(copied) is list
        copied.append(1)
    built[0]["events"] = [*built[0]["events"], {"name": "late"}]
    assert built[0]["events"] == [{"name": "late"}]
    assert built[1]["events"] == []


def test_finished_spans_are_untracked_unless_still_current() -> None:
    from pitchey_trace import _speedups

    with capture_spans(rollups=None):
        with pt.span("op") as s:
            assert gc.is_tracked(s)  # current: its context token refers back to it
            s.end()  # ended while still current: stays tracked until it leaves the context
            assert gc.is_tracked(s)
        plain = pt.start_span("plain")
        plain.end()
        assert not gc.is_tracked(plain)  # queued for export: nothing for the collector
        with pt.span("exited") as e:
            pass
        assert not gc.is_tracked(e)
    records: list[Any] = [
        {"type": "audit", "n": 1, "attributes": {"a": "x", "b": 2}},  # atomic: untracked
        {"type": "x", "attributes": {"a": [1]}},  # a list inside: stays tracked
        {"type": "x", "items": [1, 2]},  # a list: stays tracked
        "not a dict",
    ]
    assert all(gc.is_tracked(r) for r in records[:3])
    assert _speedups.untrack_records(records) == 1
    assert [gc.is_tracked(r) for r in records[:3]] == [False, True, True]
    assert not gc.is_tracked(records[0]["attributes"])
    records[0]["more"] = [records[0]]  # a consumer making a cycle: the record is tracked again
    assert gc.is_tracked(records[0])
    with pytest.raises(TypeError):
        _speedups.untrack_records(())  # type: ignore[arg-type]


def test_c_record_of_a_span_whose_clock_went_back() -> None:
    with capture_spans(rollups=None):
        span = pt.start_span("op", {"n": 1}, start_time_ns=2_000)
        assert isinstance(span, Span)
        span.end(1_000)  # ends "before" it started
    san = Sanitizer()
    _python(san, [span])
    (record,) = _build(san, [span], lambda s: pytest.fail("unexpected fallback"))
    assert record == _python(san, [span])[0]
    assert (record["start_time_unix_nano"], record["end_time_unix_nano"], record["duration_ms"]) == (
        2_000,
        2_000,
        0.0,
    )


def test_take_chunk_pops_and_sorts_like_the_python_loop() -> None:
    from collections import deque

    from pitchey_trace import _accel

    assert _accel.take_chunk is not None
    with capture_spans(sample_rate=0.0, rollups=None):
        unsampled = pt.start_span("u")
        unsampled.end()
    sampled = _spans([("s", {}, False, None)])[0]
    record = {"type": "audit"}
    q: deque[Any] = deque([sampled, record, unsampled, sampled])
    taken, observed, spans, record_only, ready = _accel.take_chunk(q.popleft, 10, True)
    assert (taken, observed, spans, record_only, ready) == (
        4,
        [sampled, unsampled, sampled],
        [sampled, sampled],
        [unsampled],
        [record],
    )
    assert not q
    q.extend([unsampled, sampled])
    assert _accel.take_chunk(q.popleft, 1, False) == (1, [unsampled], [], [], [])  # tail off
    assert list(q) == [sampled]


@pytest.mark.allow_internal_errors
def test_c_end_behaves_like_the_python_end() -> None:
    assert Span.end is not Span._py_end  # type: ignore[attr-defined]
    with capture_spans(rollups=None) as mem:
        a = pt.start_span("a", start_time_ns=1_000)
        a.end(5_000)  # positional
        b = pt.start_span("b", start_time_ns=1_000)
        b.end(end_time_ns=6_000)  # keyword: the Python method
        c = pt.start_span("c")
        c.end(1.5)  # type: ignore[arg-type]  # not an int: now
        c.end()  # twice: warned once and ignored
        d = pt.start_span("d")
        d.end(None)
    got = {r["name"]: r["end_time_unix_nano"] for r in mem.spans()}
    assert (got["a"], got["b"]) == (5_000, 6_000)
    assert got["c"] > 10**18
    assert got["d"] > 10**18
    assert len(mem.spans()) == 4


def test_c_methods_on_a_span_with_unset_slots_raise_attribute_error_not_crash() -> None:
    bare = Span.__new__(Span)  # no slot set: the Python methods would raise AttributeError too
    for call in (
        lambda: bare.set_attribute("a", 1),
        bare.end,
        lambda: bare.__exit__(None, None, None),
    ):
        with pytest.raises(AttributeError):
            call()


def test_the_c_request_end_resolves_the_route_as_python_does() -> None:
    from pitchey_trace.web import _common

    begin, end = _common.fast_begin, _common.fast_finish
    assert begin is not None and end is not None  # noqa: PT018

    class Route:
        def __init__(self, path: str) -> None:
            self.path = path

    cached, fresh = Route("/a/{id}"), Route("/b/{id}")
    assert _common.route_template({"route": cached}) == "/a/{id}"  # now in the cache
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({}, None),  # no route matched: the method alone
        ({"route": None}, None),
        ({"route": cached}, None),  # from the cache
        ({"route": fresh}, None),  # not cached yet: route_template() is called
        ({"route": cached}, "/set/{x}"),  # set_route() wins
    ]
    with capture_spans(rollups=None) as exporter:
        for extra, set_to in cases:
            scope = {"type": "http", "method": "GET", "path": "/p", "headers": [], **extra}
            state, sender, client = begin(scope, "/p", 10, None, _noop_send)
            expected = state.resolve_route() if set_to is None else set_to
            if set_to is not None:
                state.route = set_to
            sender({"type": "http.response.start", "status": 200}).close()
            assert end(state, 10, client, True) is True
            assert state.span.name == ("GET" if expected is None else f"GET {expected}")
            assert state.span.attributes.get("http.route") == expected
    assert len(exporter.spans()) == len(cases)


def test_c_ids_are_random_non_zero_and_not_repeated_in_a_forked_child() -> None:
    from pitchey_trace import _accel

    if _accel.install_tracer is None:  # pure-Python mode: ids come from random.getrandbits
        return
    with capture_spans(rollups=None):
        spans = [pt.start_span("s") for _ in range(2000)]
        trace_ids = {s.trace_id for s in spans}
        span_ids = {s.span_id for s in spans}
        assert len(trace_ids) == len(span_ids) == 2000
        assert 0 not in trace_ids
        assert 0 not in span_ids
        assert max(trace_ids) < 2**128
        assert max(span_ids) < 2**64
        # every bit varies: about half the ids have it set
        for bit in (0, 31, 63, 64, 127):
            share = sum((t >> bit) & 1 for t in trace_ids) / 2000
            assert 0.4 < share < 0.6, (bit, share)
        assert 0.4 < sum(s >> 63 for s in span_ids) / 2000 < 0.6
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next ids, then exit at once
            try:
                os.write(write, b"%d %d" % (pt.start_span("c").trace_id, pt.start_span("c").span_id))
            finally:
                os._exit(0)
        os.close(write)
        parent = pt.start_span("p")
        child = os.read(read, 200).split()
        os.close(read)
        os.waitpid(pid, 0)
        # without a new seed in the child, both would have drawn the same next numbers
        assert int(child[0]) != parent.trace_id
        assert int(child[1]) != parent.span_id


def test_c_enqueue_and_emit_keep_the_queue_bound_and_count_what_they_refuse() -> None:
    from pitchey_trace.web import _common

    begin, end = _common.fast_begin, _common.fast_finish
    assert begin is not None and end is not None  # noqa: PT018

    def request() -> None:
        scope = {"type": "http", "method": "GET", "path": "/p", "headers": []}
        state, sender, client = begin(scope, "/p", 10, None, _noop_send)
        sender({"type": "http.response.start", "status": 200}).close()
        assert end(state, 10, client, True) is True

    with capture_spans(rollups=None, max_queue_size=4, export_batch_size=10**6, schedule_delay_ms=10**7):
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        pipeline._several_cpus = False  # (no hand-off to the worker at wake_at: the queue fills)
        request()  # its audit and its span: 2 queued
        pt.start_span("a").end()
        assert len(pipeline.queue) == 3
        request()  # the audit fits, the span does not
        pt.start_span("b").end()  # does not fit either
        assert len(pipeline.queue) == 4
        assert _stats.get("dropped.queue_full") == 2
        pipeline.queue.clear()
        pipeline.shutdown(5.0)
        request()  # audit and span refused after shutdown
        assert _stats.get("dropped.after_shutdown") == 2
        assert len(pipeline.queue) == 0


def test_c_enqueue_hands_spans_to_a_pipeline_without_hot_state_through_its_enqueue() -> None:
    class Sink:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def enqueue(self, span: Any) -> None:
            self.got.append(span)

    sink = Sink()
    with capture_spans(rollups=None):
        span = pt.start_span("custom")
        assert isinstance(span, Span)
        span._pipe = sink  # type: ignore[assignment]
        span.end()
    assert sink.got == [span]


def test_c_builder_builds_records_with_dropped_counts_itself() -> None:
    spans = _spans_with_drops()
    out = _c_plain_records(spans, span_template("svc", "prod", DROPS_RESOURCE), 10**6)
    expected = [span_record(s, "svc", "prod", DROPS_RESOURCE) for s in spans]
    assert out == expected
    assert [list(r) for r in out] == [list(r) for r in expected]


def test_c_builder_hands_spans_over_the_sanitizer_limit_to_python_which_counts_the_drop() -> None:
    # (session 16: the sanitizer's own drops in the record's dropped_attributes_count)
    san = Sanitizer(max_attributes=2)
    spans = _spans(
        [("op", {"a": 1, "b": 2}, False, None), ("op", {"a": 1, "b": 2, "c": 3, "d": 4}, False, None)]
    )
    handed: list[Any] = []

    def slow(span: Any) -> dict[str, Any]:
        handed.append(span)
        return san._span_record(span, "svc", "prod", RESOURCE, None)

    for _ in range(2):  # (cold, then warm caches: the first span built in C)
        handed.clear()
        first, second = _build(san, spans, slow)
        assert "dropped_attributes_count" not in first
        assert second["dropped_attributes_count"] == 2
        assert len(second["attributes"]) == 2
    assert handed == [spans[1]]


def test_records_built_in_place_equal_those_of_other_templates() -> None:
    """The C builder writes the values of a template copy's own keys in place: a template
    whose copies are laid out otherwise (another key order, a deleted key, keys missing)
    gives the same records through PyDict_SetItem."""
    from pitchey_trace.records import span_record, span_template

    spans = _spans([("op", {"n": 1, "s": "x"}, False, None)] * 4)

    def built(template: dict[str, Any]) -> list[dict[str, Any]]:
        return _c_plain_records(spans, template)

    template = span_template("svc", "prod", RESOURCE)
    expected = [span_record(s, "svc", "prod", RESOURCE) for s in spans]
    reordered = dict(reversed(list(template.items())))
    holed = {"scratch": 1, **template}
    del holed["scratch"]  # a deleted entry: copies are compacted, not cloned
    partial = {k: v for k, v in template.items() if k not in ("name", "links")}
    for t in (template, reordered, holed, partial, template):
        got = built(t)
        assert got == expected
        # the template's keys in its order, then the ones it lacks
        assert [list(r) for r in got] == [list(t) + [k for k in e if k not in t] for e in expected]
    # the template itself is never written to, and what the copies replaced is released
    assert template == span_template("svc", "prod", RESOURCE)
    empty = template["attributes"]
    before = sys.getrefcount(empty)
    for _ in range(50):
        built(template)
    assert sys.getrefcount(empty) == before


def test_the_c_attribute_limit_follows_limits_changes() -> None:
    from pitchey_trace._span import Limits

    saved = Limits.max_attributes
    try:
        with capture_spans(rollups=None) as exporter:
            with pt.span("a", {"k0": 0}) as span:
                span.set_attribute("k1", 1)
            Limits.max_attributes = 2
            with pt.span("b", {"k0": 0}) as span:
                span.set_attribute("k1", 1)
                span.set_attribute("k2", 2)  # over the limit: dropped
            Limits.max_attributes = 3
            with pt.span("c", {"k0": 0}) as span:
                span.set_attribute("k1", 1)
                span.set_attribute("k2", 2)
        by_name = {r["name"]: r["attributes"] for r in exporter.records}
        assert by_name["a"] == {"k0": 0, "k1": 1}
        assert by_name["b"] == {"k0": 0, "k1": 1}
        assert by_name["c"] == {"k0": 0, "k1": 1, "k2": 2}
    finally:
        Limits.max_attributes = saved


@settings(max_examples=200, deadline=None)
@given(
    trace_id=st.one_of(
        st.integers(1, 2**128 - 1), st.sampled_from([1, 2**64 - 1, 2**64, 2**127, 2**128 - 1])
    ),
    span_id=st.one_of(st.integers(1, 2**64 - 1), st.sampled_from([1, 2**63, 2**64 - 1])),
)
def test_c_hex_ids_equal_the_python_ones(trace_id: int, span_id: int) -> None:
    from pitchey_trace.records import span_record, span_template

    (span,) = _spans([("op", {}, False, None)])
    span.trace_id, span.span_id, span.parent_span_id = trace_id, span_id, span_id ^ 1
    (got,) = _c_plain_records([span], span_template("svc", "prod", RESOURCE))
    assert got == span_record(span, "svc", "prod", RESOURCE)
    assert got["trace_id"] == f"{trace_id:032x}"


@pytest.mark.parametrize("client", ["1.2.3.4", "", None])
def test_c_request_audits_in_a_chunk_equal_the_python_ones_field_for_field(client: Any) -> None:
    from pitchey_trace.records import PENDING_AUDIT, request_audit

    san = Sanitizer()
    items = [
        (PENDING_AUDIT, "request", i, 0xAB + i, 0xCD, None, "GET /a", "/a", "200", "GET", 200, 10 * i, client)
        for i in range(1, 6)
    ]
    san._request_audit(items[0], "s", "e")  # warm the caches
    audits, rest = san._request_audits(items, "s", "e")
    assert rest == []
    expected = [san(request_audit(p, "s", "e")) for p in items]
    # equal but for the random record ids (each one new)
    assert [{**a, "record_id": ""} for a in audits] == [{**e, "record_id": ""} for e in expected]
    assert len({a["record_id"] for a in [*audits, *expected]}) == 2 * len(items)
    assert [(list(a), list(a["attributes"])) for a in audits] == [
        (list(e), list(e["attributes"])) for e in expected
    ]
    assert not any(gc.is_tracked(a) or gc.is_tracked(a["attributes"]) for a in audits)


# -- session 17: event / link dropped counts, the resource beyond max_attributes --------------------
def test_c_builder_hands_spans_with_event_or_link_drops_to_python_and_the_records_agree() -> None:
    from tests.unit.test_core_session16 import BIG_RESOURCE, _item_keys, _spans_with_item_drops

    spans = _spans_with_item_drops()
    san = Sanitizer(max_attributes=2)
    python = [Sanitizer(max_attributes=2)._span_record(s, "svc", "prod", BIG_RESOURCE, None) for s in spans]
    handed: list[Any] = []

    def slow(span: Any) -> dict[str, Any]:
        handed.append(span)
        return san._span_record(span, "svc", "prod", BIG_RESOURCE, None)

    for _ in range(2):  # (cold, then warm caches)
        handed.clear()
        got = _build(san, spans, slow, BIG_RESOURCE)
        assert got == python
        assert [list(r) for r in got] == [list(r) for r in python]
        assert _item_keys(got) == _item_keys(python)
    # the second round, warm: only the spans with events or links went to Python
    assert handed == [s for s in spans if s.events or s.links]
    assert len(handed) == 4
    assert [e.get("dropped_attributes_count") for e in got[1]["events"]] == [3, None]


def test_c_builder_builds_spans_itself_with_a_resource_over_the_sanitizer_limit() -> None:
    from tests.unit.test_core_session16 import BIG_RESOURCE

    san = Sanitizer(max_attributes=3)
    spans = _spans([("op", {"a": 1, "b": "x"}, False, None)] * 3)
    _python(san, spans)  # warm the caches
    template = san._template_for("svc", "prod", BIG_RESOURCE)
    assert list(template["resource"]) == list(BIG_RESOURCE)  # the whole resource
    got = _c_sanitized(san, spans, BIG_RESOURCE)
    expected = [Sanitizer(max_attributes=3)._span_record(s, "svc", "prod", BIG_RESOURCE, None) for s in spans]
    assert got == expected
    assert [list(r) for r in got] == [list(r) for r in expected]
    assert all(r["resource"] is template["resource"] for r in got)  # (shared, sanitized once)
    assert all("dropped_attributes_count" not in r for r in got)


def _c_sanitized(san: Sanitizer, spans: list[Any], resource: dict[str, Any]) -> Any:
    """The C builder's sanitized records (failing if it hands any span to Python)."""
    return _build(san, spans, lambda span: pytest.fail("handed to Python"), resource)


def test_the_c_sender_hands_a_pathsend_message_to_the_request_state(tmp_path: Any) -> None:
    """``http.response.pathsend`` (session 17): the C Sender calls
    ``RequestState.response_pathsend`` (the Python sender's code), which counts the file and
    times the last byte once the server took it; without the extension offered it is not
    counted. No reference to the message is kept."""
    import asyncio

    from pitchey_trace.web import _common

    begin = _common.fast_begin
    assert begin is not None
    data = tmp_path / "f.bin"
    data.write_bytes(b"p" * 4321)
    taken: list[Any] = []

    async def send(message: Any) -> None:
        taken.append(message)

    async def drive(offered: bool) -> Any:
        scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
        if offered:
            scope["extensions"] = {"http.response.pathsend": {}}
        state, sender, _client = begin(scope, "/", 1, None, send)
        message = {"type": "http.response.pathsend", "path": str(data)}
        before = sys.getrefcount(message)
        await sender(message)
        assert taken.pop() is message
        assert sys.getrefcount(message) == before
        state.span.end()
        return state

    with capture_spans(rollups=None):
        offered = asyncio.run(drive(True))
        assert (offered.sent, offered.size_unknown) == (4321, False)
        assert offered.last_byte_ns > 0
        not_offered = asyncio.run(drive(False))
        assert (not_offered.sent, not_offered.last_byte_ns) == (0, 0)


def test_the_c_request_end_leaves_a_file_of_unknown_size_to_python() -> None:
    """A file sent by path whose size could not be read: the C finish changes nothing and
    hands the request to Python, which leaves ``http.response.body.size`` out."""
    from pitchey_trace.web import _common

    begin, end = _common.fast_begin, _common.fast_finish
    assert begin is not None and end is not None  # noqa: PT018
    with capture_spans(rollups=None) as exporter:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        state, _sender, client = begin(scope, "/", 1, None, _noop_send)
        assert state.size_unknown is False
        state.status, state.last_byte_ns, state.size_unknown = 200, 5, True
        assert end(state, 1, client, True) is NotImplemented
        assert state.span.is_ended is False
        state.size_unknown = False
        assert end(state, 1, client, True) is True
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 0
