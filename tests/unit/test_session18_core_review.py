"""Session 18 core review: the SDK never breaks its host (attribute maps and link lists that
change while a span reads them; pt.shutdown() / pt.stats() in a signal handler)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.testing import capture_spans

ROOT = Path(__file__).resolve().parents[2]


class _ChangingDict(dict[str, Any]):
    """A dict another thread writes to between two items the SDK reads (made deterministic:
    the write happens after each item)."""

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for pair in super().items():
            yield pair
            self[f"late{len(self)}"] = 1


class _ExpiringMapping(Mapping[str, Any]):
    """A mapping over a cache whose entries expire between being listed and being read."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        for key in list(self._data):
            yield key
            self._data.pop(key, None)


def test_set_attributes_of_a_dict_changed_meanwhile_does_not_raise() -> None:
    with capture_spans() as exporter:
        with pt.span("work") as sp:
            sp.set_attributes(_ChangingDict(a=1, b=2))  # RuntimeError: dict changed size
            sp.set_attribute("after", True)
    rec = exporter.spans()[0]
    assert rec["attributes"]["after"] is True
    assert pt.stats()["misuse.attributes_unreadable"] >= 1


def test_start_span_and_link_with_a_mapping_that_changes_while_read() -> None:
    with capture_spans() as exporter:
        with pt.span("work", attributes=_ExpiringMapping({"a": 1, "b": 2})) as sp:  # KeyError
            link = pt.Link(sp.context, _ExpiringMapping({"c": 3, "d": 4}))
            sp.add_event("e", _ExpiringMapping({"e": 5, "f": 6}))
        assert isinstance(link.attributes, dict)
    assert [r["name"] for r in exporter.spans()] == ["work"]


def test_set_attributes_while_another_thread_writes_the_dict() -> None:
    shared = {f"k{i}": i for i in range(200)}
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            shared[f"x{i % 50}"] = i
            shared.pop(f"x{(i + 25) % 50}", None)
            i += 1

    errors: list[BaseException] = []
    writer = threading.Thread(target=write)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    with capture_spans():
        writer.start()
        try:
            for _ in range(500):
                try:
                    pt.start_span("a").set_attributes(shared)
                except Exception as exc:
                    errors.append(exc)
        finally:
            stop.set()
            writer.join()
            sys.setswitchinterval(old)
    assert errors == []


class _NoisyLink(pt.Link):
    """A Link whose context, when read, queues another link in the list being read (a deque
    another thread appends to)."""

    __slots__ = ("_queue",)

    def __init__(self, context: Any, queue: deque[Any]) -> None:
        super().__init__(context)
        self._queue = queue

    def __getattribute__(self, name: str) -> Any:
        if name == "context":
            object.__getattribute__(self, "_queue").append(object())
        return object.__getattribute__(self, name)


def test_links_list_changed_while_read_does_not_raise() -> None:
    with capture_spans() as exporter:
        with pt.span("other") as other:
            pass
        links: deque[Any] = deque()
        links.append(_NoisyLink(other.context, links))
        with pt.span("work", links=links):  # RuntimeError: deque mutated during iteration
            pass
    work = next(r for r in exporter.spans() if r["name"] == "work")
    assert [link["span_id"] for link in work["links"]] == [other.span_id_hex]


def _run(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,  # (a deadlock would hang here for ever)
        env=env,
        cwd=str(ROOT),
    )


def test_stats_in_a_signal_handler_that_interrupts_a_count() -> None:
    # The handler runs on the main thread while it is inside _stats.incr() (holding its lock).
    proc = _run(
        """
        import os, signal, time
        import pitchey_trace as pt
        from pitchey_trace import _stats
        seen = []
        signal.signal(signal.SIGUSR1, lambda *a: seen.append(pt.stats()["misuse.x"]))
        _stats.incr("misuse.x")
        with _stats._lock:
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):
                if seen:
                    break
                time.sleep(0.001)
        print("handler saw", seen)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "handler saw [1]" in proc.stdout


def test_shutdown_in_a_sigterm_handler_during_the_flush_at_exit() -> None:
    # docs/operations.md: call pt.shutdown(timeout) in a SIGTERM handler. A SIGTERM that comes
    # while the exit flush runs (configure/shutdown's lock held by the main thread) must not
    # make the handler wait for its own thread.
    proc = _run(
        """
        import os, signal, sys, time
        import pitchey_trace as pt
        from pitchey_trace import _config

        class Slow:
            signalled = False
            def export(self, batch):
                if _config._exiting and not Slow.signalled:
                    Slow.signalled = True
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.3)
                return True
            def force_flush(self, timeout=None):
                return True
            def shutdown(self, timeout=None):
                pass

        def on_term(signum, frame):
            print("handler shutdown", pt.shutdown(2), flush=True)

        signal.signal(signal.SIGTERM, on_term)
        pt.configure(service="s", exporters=[Slow()], schedule_delay_ms=60_000)
        with pt.span("work"):
            pass
        print("main done", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["main done", "handler shutdown True"]


def test_counters_lock_is_reentrant_after_fork() -> None:
    _stats._reinit_after_fork()
    with _stats._lock:  # (what a signal handler's count inside incr() finds)
        assert _stats._lock.acquire(blocking=False)
        _stats._lock.release()
