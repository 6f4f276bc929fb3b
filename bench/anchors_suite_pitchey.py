"""pitchey-trace cases for the reference harness in ../shared/bench-anchors (same method as the
figures quoted in the issues: fresh interpreter per case, interleaved rounds, ratio to FLOOR).

    .venv/bin/python ../shared/bench-anchors/bench.py floor otel bench/anchors_suite_pitchey.py \\
        --cases 'floor_slots_attrs3$|floor_nested3|otel_span_attrs3$|otel_nested3|pitchey_'

Every case runs pitchey-trace with its defaults (sanitizer, rollups, tail keeping) and a no-op
exporter; the worker runs concurrently and the run flushes every FLUSH_EVERY ops, so every span
is exported and its export cost is in the figure. ``info`` reports how many spans were exported
and dropped (0).
"""

from __future__ import annotations

import itertools

import pitchey_trace as pt

SUITE = "pitchey"
#: Ops between flushes (as bench/bench_core.py): nothing is dropped, every span is exported.
FLUSH_EVERY = 4_000
_rep = itertools.repeat


class _Noop:
    name = "noop"

    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: list[dict[str, object]]) -> bool:
        self.exported += len(batch)
        return True


def _spec(run, **config):  # type: ignore[no-untyped-def]
    exp = _Noop()
    pt.configure(service="bench", exporters=[exp], **config)
    counter = {"iters": 0}

    def counted(n: int) -> None:
        # Flush every FLUSH_EVERY ops inside the timing: a loop that only makes spans outruns
        # the export worker (they share the GIL), and without the flushes the bounded queue
        # would drop most spans, leaving their export cost out of the figure.
        counter["iters"] += n
        done = 0
        while done < n:
            step = min(FLUSH_EVERY, n - done)
            run(step)
            pt.force_flush()
            done += step

    def teardown() -> None:
        pt.shutdown(60)

    def info() -> dict[str, object]:
        stats = pt.stats()
        return {
            "iters": counter["iters"],
            "records_exported": exp.exported,
            "dropped": stats.get("dropped", 0),
        }

    return {"run": counted, "teardown": teardown, "info": info, "ops_per_iter": 1}


def _attrs3(n: int) -> None:
    span = pt.span
    for _ in _rep(None, n):
        with span("op") as s:
            s.set_attribute("http.method", "GET")
            s.set_attribute("http.status_code", 200)
            s.set_attribute("user.id", "u-123")


def _nested3(n: int) -> None:
    span = pt.span
    for _ in _rep(None, n):
        with span("a") as s1:
            s1.set_attribute("http.method", "GET")
            s1.set_attribute("http.status_code", 200)
            s1.set_attribute("user.id", "u-123")
            with span("b") as s2:
                s2.set_attribute("http.method", "GET")
                s2.set_attribute("http.status_code", 200)
                s2.set_attribute("user.id", "u-123")
                with span("c") as s3:
                    s3.set_attribute("http.method", "GET")
                    s3.set_attribute("http.status_code", 200)
                    s3.set_attribute("user.id", "u-123")


def _inject_extract(n: int) -> None:
    inject, extract = pt.inject, pt.extract
    with pt.span("parent"):
        for _ in _rep(None, n):
            carrier: dict[str, str] = {}
            inject(carrier)
            extract(carrier)


CASES = {
    "pitchey_span_attrs3": lambda: _spec(_attrs3, sample_rate=1.0),
    "pitchey_nested3": lambda: _spec(_nested3, sample_rate=1.0),
    "pitchey_span_attrs3_unsampled_tail_off": lambda: _spec(
        _attrs3, sample_rate=0.0, keep_errors=False, slow_threshold_ms=None, rollups=None
    ),
    "pitchey_span_attrs3_unsampled_tail_on": lambda: _spec(_attrs3, sample_rate=0.0),
    "pitchey_inject_extract": lambda: _spec(_inject_extract, sample_rate=1.0),
}

REFS = {
    "pitchey_span_attrs3": "otel_span_attrs3",
    "pitchey_nested3": "otel_nested3",
    "pitchey_span_attrs3_unsampled_tail_off": "floor_slots_attrs3",
    "pitchey_span_attrs3_unsampled_tail_on": "pitchey_span_attrs3",
    "pitchey_inject_extract": "floor_slots",
}


def versions() -> dict[str, str]:
    return {"pitchey_trace": pt.__version__}
