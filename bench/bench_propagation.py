"""Benchmark: inject + extract of W3C headers, pitchey-trace vs OpenTelemetry, same process.

    .venv/bin/python bench/bench_propagation.py [--rounds 7] [--ops 20000]

Cases (each op = inject the current context into a new dict, then extract it back):
  * traceparent + tracestate   (OTel: TraceContextTextMapPropagator)
  * + baggage (2 entries)      (OTel: CompositePropagator(TraceContext, W3CBaggage))
Each case runs in a tight loop and in an I/O loop (a socketpair round trip between ops, a
fresh trace id every op), since caches are colder in a real service. Figures are medians of
per-round means in microseconds; the ratio is ours / OpenTelemetry's (target <= 0.25).
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator as OtelComposite
from opentelemetry.trace import NonRecordingSpan as OtelNonRecordingSpan
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import pitchey_trace as pt
from pitchey_trace import propagation

TRACESTATE = (("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"))
BAGGAGE = (("user.id", "u-17"), ("tenant", "acme corp"))


def ours_op(with_baggage: bool) -> tuple[Callable[[], None], Callable[[int], None]]:
    """(op, set_ids): op injects the current context and extracts it."""
    state = {"scope": None}

    def set_ids(trace_id: int) -> None:
        if state["scope"] is not None:
            state["scope"].__exit__(None, None, None)
        ctx = pt.TraceContext(
            trace_id, random.getrandbits(64) | 1, 1, TRACESTATE, BAGGAGE if with_baggage else ()
        )
        scope = pt.use_context(ctx)
        scope.__enter__()
        state["scope"] = scope  # type: ignore[assignment]

    inject = propagation.inject
    extract = propagation.extract

    def op() -> None:
        carrier: dict[str, str] = {}
        inject(carrier)
        if extract(carrier) is None:
            raise AssertionError("extract failed")

    return op, set_ids


def otel_op(with_baggage: bool) -> tuple[Callable[[], None], Callable[[int], None]]:
    prop = (
        OtelComposite([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        if with_baggage
        else TraceContextTextMapPropagator()
    )
    state: dict[str, object] = {"token": None}

    def set_ids(trace_id: int) -> None:
        if state["token"] is not None:
            otel_context.detach(state["token"])  # type: ignore[arg-type]
        span_ctx = SpanContext(
            trace_id,
            random.getrandbits(64) | 1,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState(list(TRACESTATE)),
        )
        ctx = otel_trace.set_span_in_context(OtelNonRecordingSpan(span_ctx))
        if with_baggage:
            for k, v in BAGGAGE:
                ctx = otel_baggage.set_baggage(k, v, ctx)
        state["token"] = otel_context.attach(ctx)

    def op() -> None:
        carrier: dict[str, str] = {}
        prop.inject(carrier)
        ctx = prop.extract(carrier)
        if not otel_trace.get_current_span(ctx).get_span_context().is_valid:
            raise AssertionError("extract failed")

    return op, set_ids


def tight(op: Callable[[], None], set_ids: Callable[[int], None], ops: int) -> float:
    set_ids(random.getrandbits(128) | 1)
    t0 = time.perf_counter_ns()
    for _ in range(ops):
        op()
    return (time.perf_counter_ns() - t0) / ops / 1000


def io_loop(op: Callable[[], None], set_ids: Callable[[int], None], ops: int) -> float:
    """Between ops: a 64-byte socketpair round trip and a new trace; only the op is timed."""
    a, b = socket.socketpair()
    payload = b"x" * 64
    total = 0
    clock = time.perf_counter_ns
    try:
        for _ in range(ops):
            a.sendall(payload)
            b.recv(64)
            set_ids(random.getrandbits(128) | 1)
            t0 = clock()
            op()
            total += clock() - t0
    finally:
        a.close()
        b.close()
    return total / ops / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=20000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.ops} ops, medians in us/op")
    print(f"{'case':44} {'pitchey':>9} {'otel':>9} {'ratio':>7}")
    worst = 0.0
    for with_baggage in (False, True):
        label = "traceparent+tracestate" + ("+baggage" if with_baggage else "")
        for mode, runner in (("tight", tight), ("io loop", io_loop)):
            ours_fn, ours_ids = ours_op(with_baggage)
            otel_fn, otel_ids = otel_op(with_baggage)
            ours_t: list[float] = []
            otel_t: list[float] = []
            for _ in range(args.rounds):  # interleaved so drift hits both alike
                ours_t.append(runner(ours_fn, ours_ids, args.ops))
                otel_t.append(runner(otel_fn, otel_ids, args.ops))
            mine = statistics.median(ours_t)
            theirs = statistics.median(otel_t)
            ratio = mine / theirs
            worst = max(worst, ratio)
            print(f"{label + ' (' + mode + ')':44} {mine:9.2f} {theirs:9.2f} {ratio:7.3f}")
    print(f"worst ratio {worst:.3f} (target <= 0.25)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
