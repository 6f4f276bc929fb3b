"""The export pipeline: bounded queues, flush/shutdown guarantees, failure isolation, routing."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _batch
from pitchey_trace._tracer import get_tracer
from pitchey_trace.testing import capture_spans


class SlowExporter:
    """Blocks in export() until released: a hung collector."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.records: list[dict[str, Any]] = []

    def export(self, batch: list[dict[str, Any]]) -> bool:
        self.entered.set()
        self.release.wait(30)
        self.records.extend(batch)
        return True


class RaisingExporter:
    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def export(self, batch: list[dict[str, Any]]) -> bool:
        self.calls += 1
        raise RuntimeError("collector exploded")


def test_shutdown_flushes_every_accepted_span() -> None:
    mem = pt.InMemoryExporter()
    # A queue big enough for the burst: this test is about shutdown delivering what was accepted.
    pt.configure(service="t", exporters=[mem], sample_rate=1.0, rollups=None, max_queue_size=100_000)
    for i in range(30_000):
        with pt.span("op", attributes={"i": i}):
            pass
    assert pt.shutdown(30)
    stats = pt.stats()
    assert stats["dropped"] == 0
    assert len(mem.records) == 30_000
    assert sorted(r["attributes"]["i"] for r in mem.records) == list(range(30_000))
    assert stats["exported.memory"] == 30_000


def test_force_flush_returns_after_delivery() -> None:
    with capture_spans() as mem:
        with pt.span("a"):
            pass
        assert pt.force_flush(5)
        assert [r["name"] for r in mem.spans()] == ["a"]


class BatchLog:
    """Records the size of every batch and when it arrived."""

    name = "log"

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []
        self.got = threading.Event()

    def export(self, batch: list[dict[str, Any]]) -> bool:
        self.batches.append((time.monotonic(), len(batch)))
        self.got.set()
        return True


def test_exporter_waits_for_a_full_batch_or_the_delay() -> None:
    # The pipeline worker hands over small chunks; the exporter thread is not woken for each
    # one: it exports once a batch is full, or when the schedule delay has passed.
    log = BatchLog()
    worker = _batch.ExporterWorker(log, queue_size=1_000, batch_size=10, delay_s=30.0)
    worker.start()
    try:
        for _ in range(3):
            worker.put([{"n": 1}] * 3)
        assert not log.got.wait(0.3)  # 9 records: below a batch, within the delay
        worker.put([{"n": 1}] * 3)  # 12: a full batch wakes it
        assert log.got.wait(5)
        assert sum(n for _, n in log.batches) == 12
        assert max(n for _, n in log.batches) == 10  # batches keep their size limit
    finally:
        worker.stop(5)

    log = BatchLog()
    worker = _batch.ExporterWorker(log, queue_size=1_000, batch_size=10, delay_s=0.2)
    worker.start()
    try:
        t0 = time.monotonic()
        worker.put([{"n": 1}] * 3)
        assert log.got.wait(5)  # a partial batch goes out once the delay has passed
        assert log.batches == [(log.batches[0][0], 3)]
        assert log.batches[0][0] - t0 < 5
    finally:
        worker.stop(5)


def test_full_queue_drops_and_counts_never_blocks() -> None:
    slow = SlowExporter()
    pt.configure(
        service="t",
        exporters=[slow],
        max_queue_size=100,
        exporter_queue_size=100,
        schedule_delay_ms=10_000,
        rollups=None,
    )
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    # Without the hand-off, the worker only runs when this thread lets go of the GIL, so the
    # pipeline's own queue fills up (with it, the drops would all be at the exporter's queue).
    pipeline._several_cpus = False
    n = 5_000
    for _ in range(n):
        with pt.span("x"):
            pass
    slow.release.set()
    pt.shutdown(10)
    stats = pt.stats()
    assert stats["dropped"] > 0
    assert stats["accepted"] + stats["dropped.queue_full"] == n
    assert len(slow.records) + stats.get("dropped.exporter_queue_full", 0) == stats["accepted"]


@pytest.mark.allow_internal_errors
def test_raising_exporter_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bad = RaisingExporter()
    mem = pt.InMemoryExporter()
    pt.configure(service="t", exporters=[bad, mem], rollups=None)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        for _ in range(10):
            with pt.span("ok"):
                pass
        assert not pt.force_flush(5)  # (the raising exporter's batch was lost: the flush says so)
    assert len(mem.spans()) == 10  # the healthy exporter got everything
    stats = pt.stats()
    assert stats["dropped.export_failed.raising"] == 10
    # the total counts each lost record once (not again for its per-exporter split)
    assert stats["dropped"] == stats["dropped.export_failed"] == 10
    assert stats["internal_errors"] >= 1
    # logged once per kind, not once per batch
    assert sum("export.raising" in r.getMessage() for r in caplog.records) == 1


def test_hanging_exporter_does_not_block_the_application() -> None:
    slow = SlowExporter()
    mem = pt.InMemoryExporter()
    pt.configure(service="t", exporters=[slow, mem], schedule_delay_ms=5)
    with pt.span("first"):
        pass
    assert slow.entered.wait(5)  # the exporter thread is now stuck
    done = threading.Event()

    def app() -> None:
        for _ in range(2_000):
            with pt.span("req"):
                pass
        done.set()

    t = threading.Thread(target=app)
    t.start()
    # The app thread finishes long before the collector would ever answer (30 s).
    assert done.wait(10)
    assert pt.force_flush(0.5) is False  # honest: the hung exporter did not confirm
    assert len(mem.spans("req")) == 2_000
    slow.release.set()
    t.join()


def test_processors_and_datasets_routing() -> None:
    traces = pt.InMemoryExporter(datasets={"traces"})
    audit = pt.InMemoryExporter(datasets={"audit"})

    def drop_health(rec: dict[str, Any]) -> dict[str, Any] | None:
        return None if rec.get("name") == "health" else rec

    def tag(rec: dict[str, Any]) -> dict[str, Any]:
        return {**rec, "environment": "tagged"}

    pt.configure(service="t", exporters=[traces, audit], processors=[drop_health, tag], rollups=None)
    with pt.span("health"):
        pass
    with pt.span("work"):
        pt.emit_audit("read", "pitches", "success", actor="u1")
    pt.shutdown(5)
    assert [r["name"] for r in traces.records] == ["work"]
    assert traces.records[0]["environment"] == "tagged"
    assert [(r["action"], r["actor"], r["trace_id"]) for r in audit.records] == [
        ("read", "u1", traces.records[0]["trace_id"])
    ]
    assert pt.stats()["filtered"] == 1


def test_custom_router_sends_to_several_datasets() -> None:
    traces = pt.InMemoryExporter(datasets={"traces"})
    slow = pt.InMemoryExporter(datasets={"slow"})

    def router(rec: dict[str, Any]) -> list[str]:
        return ["traces", "slow"] if rec.get("name", "").startswith("slow") else ["traces"]

    pt.configure(service="t", exporters=[traces, slow], router=router, rollups=None)
    for name in ("slow_a", "fast_b"):
        with pt.span(name):
            pass
    pt.shutdown(5)
    assert sorted(r["name"] for r in traces.records) == ["fast_b", "slow_a"]
    assert [r["name"] for r in slow.records] == ["slow_a"]


@pytest.mark.allow_internal_errors
def test_sanitizer_failure_drops_the_record_never_exports_it_raw() -> None:
    def broken(rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("name") == "secret":
            raise ValueError("cannot sanitize")
        return rec

    with capture_spans(sanitizer=broken) as mem:
        for name in ("secret", "plain"):
            with pt.span(name):
                pass
    assert [r["name"] for r in mem.spans()] == ["plain"]
    assert pt.stats()["dropped.sanitize_error"] == 1


def test_spans_ending_after_shutdown_are_counted_not_lost_silently() -> None:
    mem = pt.InMemoryExporter()
    pt.configure(service="t", exporters=[mem])
    s = pt.start_span("straddles")
    pt.shutdown(5)
    s.end()
    assert pt.stats()["dropped.after_shutdown"] == 1
    assert mem.records == []


def test_exporter_shutdown_that_hangs_does_not_hang_shutdown() -> None:
    class HangOnShutdown(pt.InMemoryExporter):
        def shutdown(self, timeout: float | None = None) -> None:
            time.sleep(30)

    pt.configure(service="t", exporters=[HangOnShutdown()])
    t0 = time.monotonic()
    pt.shutdown(1.0)
    assert time.monotonic() - t0 < 10


def test_flush_at_interpreter_exit() -> None:
    code = (
        "import pitchey_trace as pt\n"
        "pt.configure(service='exit', exporters=[pt.ConsoleExporter()], schedule_delay_ms=60000)\n"
        "for i in range(500):\n"
        "    with pt.span('at_exit', attributes={'i': i}): pass\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if '"type":"span"' in line and '"at_exit"' in line]
    assert len(lines) == 500


def test_worker_threads_run_with_tracing_suppressed() -> None:
    seen: list[bool] = []

    class Probe:
        def export(self, batch: list[dict[str, Any]]) -> bool:
            # An instrumented client used by an exporter must not trace itself.
            seen.append(not pt.start_span("x").is_recording)
            return True

    with capture_spans(exporters=[Probe()]), pt.span("a"):
        pass
    assert seen
    assert all(seen)


def test_live_pipelines_registry_is_weak() -> None:
    before = len(_batch._live_pipelines)
    pt.configure(service="t", exporters=[])
    pt.shutdown()
    pt.configure(service="t", exporters=[])
    pt.shutdown()
    import gc

    gc.collect()
    assert len(_batch._live_pipelines) <= before + 1


@pytest.mark.allow_internal_errors
def test_queued_request_audits_reach_every_audit_exporter_and_bad_ones_are_counted() -> None:
    from pitchey_trace.records import PENDING_AUDIT

    audit_only = pt.InMemoryExporter(datasets=["audit"])
    traces_only = pt.InMemoryExporter(datasets=["traces"])
    with capture_spans(exporters=[audit_only, traces_only], rollups=None) as everything:
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None
        for i in range(3):
            pipeline.emit(
                (
                    PENDING_AUDIT,
                    "request",
                    5,
                    0xA,
                    0xB,
                    None,
                    "GET /x",
                    "/x",
                    "200",
                    "GET",
                    200,
                    2_000_000,
                    "bob@example.com",
                )
            )
            pipeline.emit((PENDING_AUDIT, "request"))  # malformed: dropped, counted
            pipeline.emit({"type": "audit", "schema": 1, "custom": i})  # a ready-made record: as before
    # (the middleware's audits go out in one list, ahead of other records of the same chunk)
    assert sorted(r.get("custom", -1) for r in everything.of_type("audit")) == [-1, -1, -1, 0, 1, 2]
    assert len(audit_only.of_type("audit")) == 6
    assert traces_only.records == []
    first = audit_only.of_type("audit")[0]
    assert first["attributes"]["client.address"] == "[EMAIL]"  # sanitized on the way
    assert first["attributes"]["duration_ms"] == 2.0
    assert pt.stats()["dropped.encode_error"] == 3


@pytest.mark.allow_internal_errors
def test_a_failing_chunk_audit_builder_falls_back_to_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from pitchey_trace.records import PENDING_AUDIT

    with capture_spans(rollups=None) as exporter:
        pipeline = pt.get_tracer().pipeline
        assert pipeline is not None

        def broken(*args: Any) -> Any:
            raise RuntimeError("chunk builder bug")

        monkeypatch.setattr(pipeline, "_fused_audits", broken)
        for i in range(4):
            pipeline.emit(
                (PENDING_AUDIT, "request", i, 0xA, 0xB, None, "GET /x", "/x", "200", "GET", 200, 10, None)
            )
    assert sorted(a["time_unix_nano"] for a in exporter.of_type("audit")) == [0, 1, 2, 3]
    assert pt.stats()["internal_errors"] >= 1


def test_span_records_are_built_in_parts_in_order_and_each_span_is_freed_once_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from pitchey_trace import _stats
    from pitchey_trace.sanitize import Sanitizer

    monkeypatch.setattr(_batch, "_BUILD_STEP", 2)
    real = Sanitizer._span_records
    parts: list[int] = []
    alive: list[int] = []

    def spy(self: Sanitizer, spans: list[Any], *args: Any) -> Any:
        parts.append(len(spans))
        # the part is the only list that holds its spans (the drain's lists were emptied), so
        # each span is freed once its part is built
        holders = {id(r) for span in spans for r in gc.get_referrers(span) if type(r) is list}
        alive.append(len(holders - {id(spans)}))
        if len(parts) == 2:
            raise RuntimeError("this part fails: its spans are built one by one")
        return real(self, spans, *args)

    monkeypatch.setattr(Sanitizer, "_span_records", spy)
    with capture_spans(rollups=None, schedule_delay_ms=60_000) as exporter:
        for i in range(5):
            pt.start_span(f"s{i}").end()
        gc.collect()
    assert parts == [2, 2, 1]
    assert [r["name"] for r in exporter.spans()] == ["s0", "s1", "s2", "s3", "s4"]
    assert _stats.get("pipeline.chunk_fallbacks") == 1
    assert alive == [0, 0, 0]


def test_processors_get_mutable_event_and_link_lists_exporters_the_shared_one() -> None:
    from pitchey_trace import _stats
    from pitchey_trace.records import NO_ITEMS

    def add_event(rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("type") == "span":
            rec["events"].append({"name": "from a processor", "time_unix_nano": 1, "attributes": {}})
            rec["links"].extend([])
        return rec

    with capture_spans(rollups=None, processors=[add_event]) as with_processor:
        pt.start_span("a").end()
    with capture_spans(rollups=None) as plain:
        pt.start_span("b").end()
    (a,) = with_processor.spans()
    (b,) = plain.spans()
    assert [e["name"] for e in a["events"]] == ["from a processor"]
    assert _stats.get("dropped.processor_error") == 0
    assert b["events"] is NO_ITEMS
    assert b["links"] is NO_ITEMS


def test_async_callables_are_refused_at_configure_time() -> None:
    # Called from the export worker's thread, an async function only returns a coroutine that
    # never runs: an async exporter's records were counted as exported and silently lost.
    class AsyncExporter:
        name = "async"

        async def export(self, batch: list[dict[str, Any]]) -> bool:
            return True

    class AsyncCallable:
        async def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
            return rec

    async def async_proc(rec: dict[str, Any]) -> dict[str, Any]:
        return rec

    for kwargs in (
        {"exporters": [AsyncExporter()]},
        {"processors": [async_proc]},
        {"processors": [AsyncCallable()]},
        {"sanitizer": async_proc},
        {"router": async_proc},
    ):
        with pytest.raises(TypeError, match="not async"):
            pt.configure(**kwargs)  # type: ignore[arg-type]
    assert not pt.is_configured()


def _not_a_record_for_odd(rec: dict[str, Any]) -> Any:
    return "not a record" if rec.get("name") == "odd" else rec


def _none_for_odd(rec: dict[str, Any]) -> Any:
    return None if rec.get("name") == "odd" else rec


@pytest.mark.parametrize(
    ("options", "counter"),
    [
        ({"processors": [_not_a_record_for_odd]}, "dropped.processor_error"),
        ({"sanitizer": _none_for_odd}, "dropped.sanitize_error"),
    ],
)
def test_a_processor_or_sanitizer_returning_a_non_record_costs_that_record_only(
    options: dict[str, Any], counter: str
) -> None:
    # Returning something else than a dict (or None, from a processor) once failed the worker's
    # whole drain.
    mem = pt.InMemoryExporter()
    pt.configure(exporters=[mem], rollups=None, **options)
    for name in ("a", "odd", "b"):
        with pt.span(name):
            pass
    assert pt.force_flush(5)
    assert [r["name"] for r in mem.spans()] == ["a", "b"]
    assert pt.stats()[counter] == 1
    assert pt.stats().get("internal_errors", 0) == 0


@pytest.mark.parametrize("several", [True, False])
def test_a_full_batch_is_handed_to_an_idle_worker_on_several_cpus(several: bool) -> None:
    # On several CPUs the thread that queues the batch's last span waits (without the GIL)
    # until the worker has processed the batch, so the worker never queues for the GIL beside
    # a busy thread (docs/performance.md, "Background threads and the GIL"). On one CPU it
    # only wakes the worker, as before.
    mem = pt.InMemoryExporter()
    pt.configure(service="t", exporters=[mem], export_batch_size=8, schedule_delay_ms=60_000)
    pipeline = get_tracer().pipeline
    assert pipeline is not None
    pipeline._several_cpus = several
    for worker in pipeline.workers:
        worker._several_cpus = several
    time.sleep(0.2)  # both workers are idle, waiting for work
    for i in range(8):
        with pt.span(f"s{i}"):
            pass
    queued = len(pipeline.queue)  # (no GIL release since the last span ended)
    if several:
        assert queued == 0  # processed before the 8th span's end returned
    else:
        assert queued == 8  # the worker was woken; it runs when this thread lets it
    assert pt.force_flush(5)
    assert len(mem.spans()) == 8


def test_several_cpus_is_a_bool() -> None:
    assert isinstance(_batch.several_cpus(), bool)
