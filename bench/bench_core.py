"""Core span cost: pitchey-trace beside OpenTelemetry's SDK and the physical floor, same process.

    .venv/bin/python bench/bench_core.py            # tight loops
    .venv/bin/python bench/bench_core.py --io       # each op around a socket round trip too

Cases (us per op; "op" = one span with 3 attributes, or 3 nested spans for nested3):
  floor_*        bare __slots__ class: contextvar set/reset, random ids, clock, deque append
  otel_*         TracerProvider + BatchSpanProcessor(no-op exporter), not installed globally
  pt_*           pitchey_trace.configure(exporters=[no-op exporter]) with the defaults
                 (sanitizer and rollups on, tail keeping on) unless the case says otherwise
  pt_via_otel_api_nested3  otel_nested3's code (the OpenTelemetry API) recording pitchey-trace
                 spans through pitchey_trace.otel
Targets (issue 2): sampled span <= 1/8 of OTel (never worse than 1/4), nested3 likewise;
unsampled with tail keeping off <= 1.5x floor; unsampled with tail on <= a sampled span.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import itertools
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, report
from anchors_suite_pitchey import _attrs3, _nested3

import pitchey_trace as pt

_rep = itertools.repeat


# -- floor (same as ../shared/bench-anchors/suite_floor.py floor_slots_attrs3) ----------------
_cv: contextvars.ContextVar[object] = contextvars.ContextVar("floor", default=None)
_buf: collections.deque[tuple[object, ...]] = collections.deque(maxlen=2048)


class FloorSpan:
    __slots__ = ("attributes", "name", "parent_id", "span_id", "start", "token", "trace_id")

    def __init__(self, name: str) -> None:
        self.name = name
        self.attributes: dict[str, object] = {}

    def set_attribute(self, k: str, v: object) -> None:
        self.attributes[k] = v

    def __enter__(self) -> FloorSpan:
        parent = _cv.get()
        if parent is None:
            self.trace_id = random.getrandbits(128)
            self.parent_id = 0
        else:
            self.trace_id = parent.trace_id  # type: ignore[attr-defined]
            self.parent_id = parent.span_id  # type: ignore[attr-defined]
        self.span_id = random.getrandbits(64)
        self.start = time.time_ns()
        self.token = _cv.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        end = time.time_ns()
        _cv.reset(self.token)
        _buf.append((self.trace_id, self.span_id, self.parent_id, self.name, self.start, end))


def floor_attrs3(n: int) -> None:
    for _ in _rep(None, n):
        with FloorSpan("op") as s:
            s.set_attribute("http.method", "GET")
            s.set_attribute("http.status_code", 200)
            s.set_attribute("user.id", "u-123")


def floor_plain(n: int) -> None:
    for _ in _rep(None, n):
        with FloorSpan("op"):
            pass


# -- pitchey-trace ---------------------------------------------------------------------------
class NoopExporter:
    name = "noop"

    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: list[dict[str, object]]) -> bool:
        self.exported += len(batch)
        return True


def pt_setup(**kw: object) -> NoopExporter:
    exp = NoopExporter()
    pt.configure(service="bench", exporters=[exp], **kw)  # type: ignore[arg-type]
    return exp


# The span bodies are shared with the reference-harness suite, so both measure the same code.
pt_attrs3 = _attrs3
pt_nested3 = _nested3


# -- OpenTelemetry ---------------------------------------------------------------------------
def otel_tracer(sampler: object = None) -> tuple[object, Callable[[], None], Callable[[], object]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Noop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tp = TracerProvider(**({"sampler": sampler} if sampler is not None else {}))  # type: ignore[arg-type]
    tp.add_span_processor(BatchSpanProcessor(Noop()))
    return tp.get_tracer("bench"), tp.shutdown, tp.force_flush


def otel_attrs3(tracer: object) -> Callable[[int], None]:
    start = tracer.start_as_current_span  # type: ignore[attr-defined]

    def run(n: int) -> None:
        for _ in _rep(None, n):
            with start("op") as s:
                s.set_attribute("http.method", "GET")
                s.set_attribute("http.status_code", 200)
                s.set_attribute("user.id", "u-123")

    return run


def otel_nested3(tracer: object) -> Callable[[int], None]:
    start = tracer.start_as_current_span  # type: ignore[attr-defined]

    def run(n: int) -> None:
        for _ in _rep(None, n):
            with start("a") as a:
                a.set_attribute("http.method", "GET")
                a.set_attribute("http.status_code", 200)
                a.set_attribute("user.id", "u-123")
                with start("b") as b:
                    b.set_attribute("http.method", "GET")
                    b.set_attribute("http.status_code", 200)
                    b.set_attribute("user.id", "u-123")
                    with start("c") as c:
                        c.set_attribute("http.method", "GET")
                        c.set_attribute("http.status_code", 200)
                        c.set_attribute("user.id", "u-123")

    return run


# -- cases -----------------------------------------------------------------------------------
#: Ops between flushes inside a timed run. A producer that does nothing but make spans
#: outruns any export worker that shares its GIL; without these flushes the bounded queue
#: (20,000 spans) would drop most spans and the figure would leave out the worker's cost
#: for them. With them every span is exported and the worker's whole cost is in the timing.
FLUSH_EVERY = 4_000
#: Spans the SDK dropped per case during the run (must stay 0 for the figures to count).
DROPPED: dict[str, int] = collections.defaultdict(int)


def chunked(body: Callable[[int], None], flush: Callable[[], object]) -> Callable[[int], None]:
    """``body(n)`` in steps of FLUSH_EVERY ops, flushing the exporter pipeline after each."""

    def run(n: int) -> None:
        done = 0
        while done < n:
            step = min(FLUSH_EVERY, n - done)
            body(step)
            flush()
            done += step

    run.body = body  # type: ignore[attr-defined]
    run.flush = flush  # type: ignore[attr-defined]
    return run


def with_pt(setup: dict[str, object], body: Callable[[int], None], name: str = "") -> Callable[[int], None]:
    """Configure pitchey-trace for this case only (each case has its own settings).

    Flushes are inside the timing (every FLUSH_EVERY ops and at the end): the worker's cost
    (records, sanitizer, rollups, routing) is charged to the case for every span, and a span
    dropped at the full queue is counted in DROPPED (reported after the table).
    """
    flushed = chunked(body, pt.force_flush)

    def run(n: int) -> None:
        pt_setup(**setup)
        before = pt.stats()["dropped"]
        try:
            flushed(n)
        finally:
            pt.shutdown()
            DROPPED[name] += pt.stats()["dropped"] - before

    run.body = body  # type: ignore[attr-defined]
    run.setup = setup  # type: ignore[attr-defined]
    run.flush = pt.force_flush  # type: ignore[attr-defined]
    run.case_name = name  # type: ignore[attr-defined]
    return run


def via_otel_api(body_for: Callable[[object], Callable[[int], None]], name: str) -> Callable[[int], None]:
    """The OpenTelemetry-API code of ``body_for`` recording pitchey-trace spans through
    ``pitchey_trace.otel`` (defaults as the pt_* cases). The bridge wraps OpenTelemetry's runtime
    context; the wrap is active only while this case runs, so the otel_* cases measure
    OpenTelemetry's own context."""
    from opentelemetry import context as otel_context

    from pitchey_trace.otel import TracerProvider

    original = otel_context._RUNTIME_CONTEXT
    tracer = TracerProvider().get_tracer("bench")
    synced = otel_context._RUNTIME_CONTEXT
    otel_context._RUNTIME_CONTEXT = original
    inner = with_pt({"sample_rate": 1.0}, body_for(tracer), name)

    def run(n: int) -> None:
        otel_context._RUNTIME_CONTEXT = synced
        try:
            inner(n)
        finally:
            otel_context._RUNTIME_CONTEXT = original

    return run


def request_thread_only(body: Callable[[int], None]) -> Callable[[int], None]:
    """What the application thread pays: span start/attributes/end and the hand-off to the
    queue. The worker is kept asleep during the loop and the queue is discarded after it, so
    record building, sanitizing, rollups and export (worker-side) are excluded here; the
    ``pt_*`` cases above include them."""

    def run(n: int) -> None:
        pt_setup(
            sample_rate=1.0,
            max_queue_size=10**9,
            export_batch_size=10**9,
            schedule_delay_ms=10**9,
        )
        try:
            pipe = pt.get_tracer().pipeline
            assert pipe is not None
            # Discard the queue every 1,000 ops, as a draining worker would (a queue holding
            # every span of the run would make the GC, not the SDK, dominate the figure).
            done = 0
            while done < n:
                step = min(1_000, n - done)
                body(step)
                pipe.queue.clear()
                done += step
        finally:
            pt.shutdown()

    return run


def io_wrapped(case: Callable[[int], None]) -> Callable[[int], None]:
    """Each op followed by a loopback socket round trip, so caches are as cold as in a service."""
    a, b = socket.socketpair()
    body = getattr(case, "body", case)
    setup = getattr(case, "setup", None)
    flush = getattr(case, "flush", None)
    name = getattr(case, "case_name", "") + "+io"

    def run(n: int) -> None:
        if setup is not None:
            pt_setup(**setup)
        before = pt.stats()["dropped"]
        try:
            for i in range(n):
                a.sendall(b"x" * 64)
                b.recv(64)
                b.sendall(b"y" * 64)
                a.recv(64)
                body(1)
                if flush is not None and i % FLUSH_EVERY == FLUSH_EVERY - 1:
                    flush()
            if flush is not None:
                flush()
        finally:
            if setup is not None:
                pt.shutdown()
                DROPPED[name] += pt.stats()["dropped"] - before

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--io", action="store_true", help="also run every case around a socket round trip")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    otel_on, otel_on_close, otel_on_flush = otel_tracer()
    otel_off, otel_off_close, otel_off_flush = otel_tracer(ALWAYS_OFF)
    # pitchey-trace keeps one global provider; each case reconfigures it around its own loop
    # (configure() costs ~1 ms, amortised over >= 0.2 s repeats).
    cases: dict[str, Callable[[int], None]] = {
        "floor_attrs3": floor_attrs3,
        # OpenTelemetry gets the same flush cadence (its BatchSpanProcessor drops at 2,048).
        "otel_attrs3": chunked(otel_attrs3(otel_on), otel_on_flush),
        "otel_attrs3_always_off": chunked(otel_attrs3(otel_off), otel_off_flush),
        "otel_nested3": chunked(otel_nested3(otel_on), otel_on_flush),
        "pt_attrs3": with_pt({"sample_rate": 1.0}, pt_attrs3, "pt_attrs3"),
        "pt_nested3": with_pt({"sample_rate": 1.0}, pt_nested3, "pt_nested3"),
        "pt_via_otel_api_nested3": via_otel_api(otel_nested3, "pt_via_otel_api_nested3"),
        "pt_attrs3_unsampled_tail_off": with_pt(
            {"sample_rate": 0.0, "keep_errors": False, "slow_threshold_ms": None, "rollups": None},
            pt_attrs3,
            "pt_attrs3_unsampled_tail_off",
        ),
        "pt_attrs3_unsampled_tail_on": with_pt(
            {"sample_rate": 0.0}, pt_attrs3, "pt_attrs3_unsampled_tail_on"
        ),
        "pt_attrs3_request_thread": request_thread_only(pt_attrs3),
        "pt_nested3_request_thread": request_thread_only(pt_nested3),
    }
    if args.io:
        for name in list(cases):
            if "request_thread" not in name:
                cases[name + "+io"] = io_wrapped(cases[name])
    results = measure(cases, rounds=args.rounds)
    pairs = [
        ("sampled span / otel (target <= 0.125)", "pt_attrs3", "otel_attrs3"),
        ("nested3 / otel (target <= 0.125)", "pt_nested3", "otel_nested3"),
        ("OpenTelemetry API code: on pitchey / on otel sdk", "pt_via_otel_api_nested3", "otel_nested3"),
        ("unsampled tail off / floor (<= 1.5)", "pt_attrs3_unsampled_tail_off", "floor_attrs3"),
        ("unsampled tail on / sampled (<= 1.0)", "pt_attrs3_unsampled_tail_on", "pt_attrs3"),
        ("request thread: span / otel (<= 0.125)", "pt_attrs3_request_thread", "otel_attrs3"),
        ("request thread: nested3 / otel", "pt_nested3_request_thread", "otel_nested3"),
        ("sampled span / floor", "pt_attrs3", "floor_attrs3"),
        ("otel / floor", "otel_attrs3", "floor_attrs3"),
    ]
    if args.io:
        pairs += [
            ("io: sampled span / otel", "pt_attrs3+io", "otel_attrs3+io"),
            ("io: nested3 / otel", "pt_nested3+io", "otel_nested3+io"),
        ]
    report("core span cost", results, pairs)
    lost = {name: n for name, n in DROPPED.items() if n}
    print(f"  spans dropped by pitchey-trace during the runs: {lost or 'none'}")
    otel_on_close()
    otel_off_close()


if __name__ == "__main__":
    main()
