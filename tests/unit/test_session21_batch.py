"""Session 21: the batch inside a hung exporter's ``export()`` call when ``shutdown()``'s time
runs out. It was counted nowhere (2,000 spans: 1,488 in ``dropped.shutdown_timeout``, the 512
in flight missing), then as exported if the call returned later. Every record handed to an
exporter must be counted exactly once (docs/operations.md, "What to watch"): it is now counted
in ``dropped.shutdown_timeout[.<name>]`` when shutdown gives up; if the call returns after
all (the process lives on), what became of the batch replaces that count, and nothing more is
exported."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats

SPANS = 2000


class Hung:
    """Blocks in ``export()`` until ``release`` is set, then returns ``result``."""

    name = "hung"

    def __init__(self, result: Any) -> None:
        self.result = result
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.returned = 0

    def export(self, batch: list[dict[str, Any]]) -> Any:
        self.calls.append(len(batch))
        self.entered.set()
        self.release.wait()
        self.returned += 1
        if isinstance(self.result, _stats.PartlyFailed):  # (as the HTTP exporters count it)
            _stats.incr("dropped.export_failed", int(self.result))
            _stats.incr(f"dropped.export_failed.{self.name}", int(self.result))
        return self.result


@pytest.fixture
def exporters() -> Iterator[list[Hung]]:
    made: list[Hung] = []
    yield made
    for e in made:  # (no thread left blocked behind the test)
        e.release.set()


def counters() -> dict[str, int]:
    """The non-zero counters of records (none exported, none failed: absent)."""
    return {k: v for k, v in pt.stats().items() if v and k.startswith(("accepted", "exported", "dropped"))}


def worker_ended() -> None:
    """Wait until the exporter's worker thread ended (it counts, if at all, before it ends)."""
    for t in threading.enumerate():
        if t.name == "pitchey-trace-export-hung":
            t.join(30)
            assert not t.is_alive()


@pytest.mark.parametrize("result", [True, False, _stats.PartlyFailed(40)], ids=["ok", "failed", "partly"])
@pytest.mark.parametrize("batch_size", [512, 300])
def test_batch_in_a_hung_export_is_counted_once_at_shutdown(
    exporters: list[Hung], result: Any, batch_size: int
) -> None:
    hung = Hung(result)
    exporters.append(hung)
    pt.configure(service="s", exporters=[hung], rollups=None, keep_errors=False, export_batch_size=batch_size)
    for _ in range(SPANS):
        with pt.span("x"):
            pass
    assert hung.entered.wait(30)  # (a full batch queued: the worker is woken at once)
    assert pt.shutdown(1.0) is False
    assert hung.calls == [batch_size]  # (one call, stuck; with 300 the worker held 212 more)
    lost = {
        "accepted": SPANS,
        "dropped": SPANS,
        "dropped.shutdown_timeout": SPANS,
        "dropped.shutdown_timeout.hung": SPANS,
    }
    assert counters() == lost  # the call never returns: all counted, once
    hung.release.set()
    worker_ended()
    assert hung.returned == 1
    assert hung.calls == [batch_size]  # nothing more handed to the shut-down exporter
    # Returned late: its outcome replaces its share of the count, each record still once.
    late = {
        "dropped.shutdown_timeout": SPANS - batch_size,
        "dropped.shutdown_timeout.hung": SPANS - batch_size,
    }
    if result is True:
        late |= {"exported": batch_size, "exported.hung": batch_size}
    elif result is False:
        late |= {"dropped.export_failed": batch_size, "dropped.export_failed.hung": batch_size}
    else:
        late |= {
            "exported": batch_size - 40,
            "exported.hung": batch_size - 40,
            "dropped.export_failed": 40,
            "dropped.export_failed.hung": 40,
        }
    late |= {"accepted": SPANS, "dropped": SPANS - late.get("exported", 0)}
    assert counters() == late


def test_export_that_returns_in_time_is_counted_as_exported(exporters: list[Hung]) -> None:
    hung = Hung(True)
    exporters.append(hung)
    hung.release.set()
    pt.configure(service="s", exporters=[hung], rollups=None, keep_errors=False)
    for _ in range(SPANS):
        with pt.span("x"):
            pass
    assert pt.shutdown(10) is True
    worker_ended()
    assert sum(hung.calls) == SPANS
    assert counters() == {"accepted": SPANS, "exported": SPANS, "exported.hung": SPANS}
