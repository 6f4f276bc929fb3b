"""Typed usage of the public API, checked with ``mypy --strict tests/typing/usage.py``.

Never executed (pytest does not collect it; tests/unit/test_typing_usage.py runs mypy on it).
``assert_type`` pins the types users get back; each ``# type: ignore[code]`` pins a misuse
mypy must reject (``--strict`` includes ``--warn-unused-ignores``, so an accepted misuse fails).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from typing_extensions import assert_type

import pitchey_trace as pt
from pitchey_trace.exporters import ConsoleExporter, InMemoryExporter
from pitchey_trace.propagation import extract, inject
from pitchey_trace.records import CategoryThresholds, Record, json_schema
from pitchey_trace.sampling import Sampler, sampler_from_name
from pitchey_trace.testing import capture_spans
from pitchey_trace.typing import SpanExporter


# -- decorated functions keep their signatures ----------------------------------------------------
@pt.traced
def load_pitch(pitch_id: int, *, fresh: bool = False) -> dict[str, int]:
    return {"id": pitch_id}


@pt.traced(name="billing.charge", kind=pt.SpanKind.CLIENT, attributes={"peer.service": "billing"})
def charge(amount_cents: int) -> bool:
    return amount_cents > 0


@pt.traced
async def fetch_user(uid: str) -> str:
    return uid


@pt.traced
def rows(n: int) -> Iterator[int]:
    yield from range(n)


@pt.traced
async def stream_rows(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


class PitchRepo:
    @pt.traced
    def get(self, pitch_id: int) -> str:
        return str(pitch_id)

    @staticmethod
    @pt.traced
    def table() -> str:
        return "pitches"


async def decorated_calls() -> None:
    assert_type(load_pitch(1, fresh=True), dict[str, int])
    assert_type(charge(100), bool)
    assert_type(await fetch_user("u1"), str)
    assert_type(list(rows(3)), list[int])
    assert_type([i async for i in stream_rows(2)], list[int])
    assert_type(PitchRepo().get(5), str)
    assert_type(PitchRepo.table(), str)
    load_pitch("1")  # type: ignore[arg-type]
    charge()  # type: ignore[call-arg]


def traced_options_are_checked() -> None:
    pt.traced(name=1)  # type: ignore[call-overload]


# -- spans ------------------------------------------------------------------------------------------
def spans(error: Exception) -> None:
    with pt.span("load_pitch", attributes={"pitch.id": 42, "tags": ["a", "b"]}) as s:
        assert_type(s, pt.Span | pt.NonRecordingSpan)
        s.set_attribute("cache.hit", False)
        s.set_attribute("ratio", 0.5)
        s.set_attribute("ids", [1, 2, 3])
        s.set_attributes({"a": "b"})
        s.add_event("cache_miss", {"cache.key": "k"})
        s.add_event("explicit", timestamp_ns=1)
        s.add_link(pt.TraceContext(1, 2), {"reason": "batch"})
        s.set_status("error", "message")
        s.set_status(pt.StatusCode.OK)
        s.record_exception(error)
        s.update_name("renamed")
        assert_type(s.context, pt.TraceContext)
        assert_type(s.trace_id, int)
        assert_type(s.span_id_hex, str)
        assert_type(s.is_recording, bool)
        if isinstance(s, pt.Span):
            assert_type(s.duration_ns, int)
            assert_type(s.status, pt.StatusCode)
            assert_type(s.kind, pt.SpanKind)
            assert_type(s.is_ended, bool)
        s.set_attribute("bad", object())  # type: ignore[arg-type]
        s.set_status(3.5)  # type: ignore[arg-type]
    with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER, context=s.context):
        pass
    pt.span(42)  # type: ignore[arg-type]
    pt.span("x", kind="server")  # type: ignore[arg-type]

    manual = pt.start_span("manual", start_time_ns=0, links=[pt.Link(s.context), s.context, s])
    manual.end(end_time_ns=10)


def context_helpers(work: Callable[[int], str]) -> None:
    assert_type(pt.current_span(), pt.Span | pt.NonRecordingSpan)
    assert_type(pt.current_context(), pt.TraceContext | None)
    assert_type(pt.INVALID_SPAN, pt.NonRecordingSpan)
    ctx = pt.TraceContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, trace_flags=1)
    assert_type(ctx.traceparent, str)
    assert_type(ctx.sampled, bool)
    assert_type(pt.TraceContext.from_traceparent(ctx.traceparent), pt.TraceContext | None)
    assert_type(ctx.with_baggage((("user.id", "7"),)), pt.TraceContext)
    with pt.use_context(ctx) as remote:
        assert_type(remote, pt.NonRecordingSpan)
    with pt.suppress_tracing():
        pass
    wrapped = pt.wrap_context(work)
    assert_type(wrapped(1), str)
    wrapped("one")  # type: ignore[arg-type]
    with pt.ContextThreadPoolExecutor(max_workers=2) as pool:
        assert_type(pool.submit(work, 1), Future[str])


def propagation(headers: dict[str, str]) -> None:
    inject(headers)
    assert_type(extract(headers), pt.TraceContext | None)


# -- configuration and pipeline ---------------------------------------------------------------------
class HeadOnly:
    """A custom sampler: satisfies the Sampler protocol structurally."""

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> pt.Decision:
        return pt.Decision.RECORD_AND_SAMPLE if parent is None else pt.Decision.DROP


class ListExporter:
    """A custom exporter: satisfies the SpanExporter protocol structurally."""

    name = "list"

    def __init__(self) -> None:
        self.batches: list[Sequence[Record]] = []

    def export(self, batch: Sequence[Record]) -> bool:
        self.batches.append(batch)
        return True


def drop_health(record: Record) -> Record | None:
    return None if record.get("name") == "GET /health" else record


def configuration() -> None:
    sampler: Sampler = HeadOnly()
    exporter: SpanExporter = ListExporter()
    pt.configure(
        service="pitch-api",
        environment="dev",
        exporters=[ConsoleExporter(pretty=True), exporter, InMemoryExporter(datasets=["audit"])],
        sampler=pt.ParentBased(sampler, remote_sampled=pt.AlwaysOn()),
        keep_errors=True,
        slow_threshold_ms=500,
        processors=[drop_health],
        category_thresholds=CategoryThresholds(per_kind={"client": (5, 500, 2000)}),
        resource_attributes={"service.version": "1.0"},
        max_attributes=64,
    )
    pt.configure(sample_rate=0.1)
    pt.configure(sampler=pt.RuleBased([pt.Rule(0.0, name="GET /health")], default=1.0))
    pt.configure(sampler=pt.RateLimited(10, inner=pt.TraceIdRatio(0.5)))
    pt.configure(sampler=sampler_from_name("parentbased_traceidratio", "0.25"))
    pt.configure(sample_rate="high")  # type: ignore[arg-type]
    pt.configure(bogus=True)  # type: ignore[call-arg]
    pt.configure("pitch-api")  # type: ignore[call-arg]
    assert_type(pt.is_configured(), bool)
    assert_type(pt.force_flush(5.0), bool)
    assert_type(pt.stats(), dict[str, int])
    assert_type(pt.shutdown(), bool)
    pt.emit_audit("login", "session", "success", actor="u1", category="security", attributes={"n": 1})
    pt.emit_audit("login", "session", "success", "u1")  # type: ignore[call-arg]
    assert_type(json_schema(), dict[str, Any])


def testing_helpers() -> None:
    with capture_spans(service="svc") as mem:
        assert_type(mem, InMemoryExporter)
    assert_type(mem.spans("op"), list[dict[str, Any]])
    assert_type(mem.of_type("audit"), list[dict[str, Any]])
    assert_type(mem.records, list[dict[str, Any]])


def errors() -> None:
    try:
        pt.configure(sample_rate=2.0)
    except pt.ConfigurationError as exc:
        assert_type(exc, pt.ConfigurationError)
        as_value_error: ValueError = exc
        as_base: pt.PitcheyTraceError = exc
        del as_value_error, as_base
