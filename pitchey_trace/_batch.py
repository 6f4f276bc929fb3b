"""The export pipeline: a bounded queue filled by request threads, drained by worker threads.

Request threads only ``append`` finished spans to a bounded deque (drops counted, never
blocking). One pipeline worker turns spans into records, applies tail keeping, rollups, the
sanitizer, user processors and dataset routing; then each exporter has its own worker thread
and bounded queue, so a slow or hanging exporter only fills (and drops from) its own queue.

After ``os.fork()`` the child starts with empty queues and fresh threads; the parent is
untouched. Workers run with tracing suppressed, so instrumented libraries used by exporters
(HTTP clients, boto3) produce no spans of their own.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pitchey_trace import _accel, _safety, _stats
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, Span
from pitchey_trace._tail import TailKeeper
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace.records import (
    _DEFAULT_THRESHOLDS,
    _KIND_STR,
    _STATUS_STR,
    DATASET_OF_TYPE,
    NO_ITEMS,
    PENDING_AUDIT,
    CategoryThresholds,
    Record,
    last_span_template,
    make_resource,
    request_audit,
    span_record,
)
from pitchey_trace.sanitize import Sanitizer

#: Defaults, documented in docs/configuration.md.
DEFAULT_MAX_QUEUE_SIZE = 20_000
DEFAULT_SCHEDULE_DELAY_S = 0.5
DEFAULT_EXPORT_BATCH_SIZE = 512
DEFAULT_EXPORTER_QUEUE_SIZE = 20_000
#: Spans converted per step; between steps the worker yields the GIL (``sleep(0)``) so request
#: threads are not held up behind a long batch (the GIL would otherwise be held for up to the
#: interpreter's 5 ms switch interval).
_CHUNK = 512
#: Spans whose records are built per call of the record builder (see _deliver_spans).
_BUILD_STEP = 64
#: How long a thread that hands a full batch to an idle worker waits for it to be taken
#: (see Pipeline._handoff). Processing 512 spans takes about 1 ms.
_HANDOFF_TIMEOUT_S = 0.01

Processor = Callable[[Record], "Record | None"]


class _Latch:
    """Counts down to zero, then releases waiters."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.failed = False  # an exporter said its flush did not deliver everything
        if n <= 0:
            self.done.set()

    def count_down(self) -> None:
        with self._lock:
            self._n -= 1
            if self._n <= 0:
                self.done.set()


class _FlushMarker:
    __slots__ = ("deadline", "latch")

    def __init__(self, latch: _Latch, deadline: float) -> None:
        self.latch = latch
        self.deadline = deadline


_thread_delete: Callable[[threading.Thread], None] = getattr(threading.Thread, "_delete", lambda _: None)


class _Thread(threading.Thread):
    """The SDK's worker threads. gevent's ``monkey.patch_all()`` after one started (the SDK
    configured first: ``gunicorn --preload -k gevent``, an app importing it early) replaces
    ``threading.get_ident``, so the thread's own clean-up at its end looked itself up under
    another id: ``KeyError`` tracebacks on stderr as each worker stopped."""

    def _delete(self) -> None:
        try:
            _thread_delete(self)
        except KeyError:
            with getattr(threading, "_active_limbo_lock"):  # noqa: B009
                getattr(threading, "_active").pop(self.ident, None)  # noqa: B009

    def _set_tstate_lock(self) -> None:  # (Python < 3.13 only: gevent handles it on 3.13+)
        getattr(super(), "_set_tstate_lock")()  # noqa: B009
        # This class subclasses the original Thread when the SDK was imported before
        # patch_all(); a thread started after it is a greenlet, and the interpreter releases
        # this lock when a real thread ends, never a greenlet: join() waited out its whole
        # timeout (an exporter's shutdown helper: a gevent worker's exit took its whole exit
        # budget). Released when the greenlet ends instead, as gevent's own Thread does.
        gevent = sys.modules.get("gevent")
        if gevent is None:
            return
        try:
            current = gevent.getcurrent()
            if isinstance(current, gevent.Greenlet):  # (not a real thread's main greenlet)
                current.rawlink(self._greenlet_ended)
        except Exception as exc:  # (gevent half imported by another thread: join as before)
            _safety.report("thread.gevent", exc)

    def _greenlet_ended(self, _: object) -> None:
        lock = getattr(self, "_tstate_lock", None)
        if lock is not None and lock.locked():  # (not released already: gevent's Thread base)
            lock.release()
            getattr(self, "_stop")()  # noqa: B009


#: How long a thread told to stop is waited for when no time is left, once gevent patched
#: ``threading`` (see join_thread). Those threads end within milliseconds of being woken.
_GEVENT_STOP_GRACE_S = 0.05


def _gevent_patched_threading() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    try:
        return monkey is not None and bool(monkey.is_module_patched("threading"))
    except Exception:  # (a gevent without it: as if not patched)
        return False


def join_thread(thread: threading.Thread, timeout: float) -> None:
    """``thread.join(timeout)``. With no time left, skipped: gevent's ``join`` of a thread
    started before ``monkey.patch_all()`` reads a timeout of 0 as none and waits for ever
    (shutdown hung at exit behind a stuck exporter). But after ``patch_all()`` the thread
    still gets a short moment to end: an SDK thread that made a gevent hub and was still
    running when the interpreter finalized (its stop not waited for) crashed the final
    garbage collection in greenlet (a segfault at exit, in about half the runs)."""
    if timeout <= 0:
        if not _gevent_patched_threading():
            return
        timeout = _GEVENT_STOP_GRACE_S
    thread.join(timeout)


def _suppressed_thread(target: Callable[[], None], name: str) -> threading.Thread:
    def run() -> None:
        CURRENT.set(SUPPRESSED)
        target()

    return _Thread(target=run, name=name, daemon=True)


def _call_with_timeout(fn: Callable[[], Any], timeout: float, kind: str) -> None:
    """Run ``fn`` on a helper thread and wait at most ``timeout`` (a hanging exporter's
    ``shutdown`` must not hang the application's exit)."""

    def run() -> None:
        with _safety.guard(kind):
            fn()

    t = _suppressed_thread(run, f"pitchey-trace-{kind}")
    if start_thread(t):
        join_thread(t, timeout)
    else:
        run()  # (at interpreter exit: no timeout, but the exporter is shut down)


def start_thread(thread: threading.Thread) -> bool:
    """Start ``thread``; False when the interpreter refuses a new thread: from Python 3.12 on,
    ``atexit`` handlers (where the SDK's exit flush runs) cannot start threads (``RuntimeError:
    can't create new thread at interpreter shutdown``). The caller then does the work inline."""
    try:
        thread.start()
    except RuntimeError:
        return False
    return True


def several_cpus() -> bool:
    """Whether this process may run on more than one CPU (the hand-off below only matters then:
    on one CPU a thread that releases the GIL leaves the CPU, and a waiter gets the GIL)."""
    try:
        return len(os.sched_getaffinity(0)) > 1
    except (AttributeError, OSError):  # (no affinity API: macOS, Windows)
        return (os.cpu_count() or 1) > 1


def handoff(
    wake: threading.Event, done: threading.Event, idle: bool, worker: threading.Thread | None
) -> None:
    """Wake an idle worker for a full batch and wait, without the GIL, until ``done`` is set
    (the pipeline worker: it processed the batch; an exporter worker: it took the GIL).

    Why: a woken worker must take the GIL. Beside a busy thread that releases the GIL often
    (every socket call, ``os.urandom``), CPython wakes the waiter at each release and it
    loses the race each time. It then restarts its 5 ms wait, so it never forces a switch: it
    starves, and every release costs the busy thread a futex wake and a cross-CPU hand-off
    (+10 us per span measured on 2 CPUs, bench/diag_gil_wait.py). Waiting here lets the
    worker have the GIL at once. The price: this thread pauses while the batch is processed,
    once per batch (about 1 ms for 512 spans), instead of paying on every GIL release. The
    callers pass ``idle`` False on one CPU, where there is no such race (and the pause only
    made the 99th percentile of the middleware benchmark 2 ms longer)."""
    if not idle or worker is None or worker is threading.current_thread() or not worker.is_alive():
        wake.set()
        return
    done.clear()
    wake.set()
    done.wait(_HANDOFF_TIMEOUT_S)


class ExporterWorker:
    """One exporter, its bounded queue and its thread."""

    def __init__(self, exporter: Any, queue_size: int, batch_size: int, delay_s: float = 1.0) -> None:
        self.exporter = exporter
        self.name = getattr(exporter, "name", None) or type(exporter).__name__
        # (a custom exporter's datasets = "traces" would be its letters: a TypeError at configure)
        self.datasets: frozenset[str] | None = valid_datasets(getattr(exporter, "datasets", None))
        self.queue_size = queue_size
        self.batch_size = batch_size
        # Woken when a full batch is queued (or on flush / stop); smaller amounts wait at most
        # delay_s. Waking it for every chunk the pipeline hands over cost a thread switch and
        # a GIL hand-over each time, on the application's CPU (measured: docs/performance.md).
        self.delay_s = delay_s
        self.wake_at = max(1, min(batch_size, queue_size // 2))
        self._reset()

    def _reset(self) -> None:
        # Chunks (lists of records) and flush markers; ``_pending`` counts queued records.
        self.queue: deque[list[Record] | _FlushMarker] = deque()
        self._pending = 0
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._idle = False  # waiting for work (see handoff)
        self._taken = threading.Event()
        self._several_cpus = several_cpus()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lost = False  # a batch was given up since the last flush marker
        self._abandoned = False  # shutdown's time ran out: records handed over are counted lost
        self._inflight = 0  # records in the exporter's export() call now (see abandon)
        self._abandoned_inflight = 0  # of those, counted lost by abandon() (see _export)
        # An exporter's optional poll(): called when the worker wakes with nothing to export.
        self._poll: Callable[[], object] | None = getattr(self.exporter, "poll", None)

    def accepts(self, dataset: str) -> bool:
        """Whether records of ``dataset`` go to this exporter."""
        return self.datasets is None or dataset in self.datasets

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = _suppressed_thread(self._run, f"pitchey-trace-export-{self.name}")
            self._thread.start()

    def put(self, records: list[Record]) -> None:
        """Queue a chunk of records (called by the pipeline worker, which hands over the list);
        overflow is dropped and counted."""
        with self._lock:
            if self._abandoned:
                # (the pipeline worker outlived shutdown's deadline: no one takes these now)
                _stats.incr("dropped.shutdown_timeout", len(records))
                _stats.incr(f"dropped.shutdown_timeout.{self.name}", len(records))
                return
            room = self.queue_size - self._pending
            if room < len(records):
                lost = len(records) - max(room, 0)
                _stats.incr("dropped.exporter_queue_full", lost)
                _stats.incr(f"dropped.exporter_queue_full.{self.name}", lost)
                records = records[: max(room, 0)]
            if records:
                self._pending += len(records)
                self.queue.append(records)
            full = self._pending >= self.wake_at
        if full:
            handoff(self.wake, self._taken, self._idle and self._several_cpus, self._thread)

    def put_marker(self, marker: _FlushMarker) -> None:
        """Queue a flush marker (always accepted)."""
        self.queue.append(marker)
        self.wake.set()

    def _export(self, batch: list[Record]) -> None:
        with self._lock:
            if self._abandoned:  # (counted by abandon(): this worker outlived shutdown)
                return
            self._pending -= len(batch)
            self._inflight = len(batch)
        ok: Any = False
        try:
            ok = self.exporter.export(batch)
        except Exception as exc:
            _safety.report(f"export.{self.name}", exc)
        # Counted under the lock, with the batch no longer in flight: a shutdown that gives up
        # meanwhile finds it counted, never counts it too (or misses it when it returns).
        with self._lock:
            if self._abandoned:
                # Shutdown gave up on this call and counted the batch lost. It returned after
                # all (the process lives on): what became of it replaces that count, so the
                # totals stay exact (the exporter may have counted part of it already).
                counted, self._abandoned_inflight = self._abandoned_inflight, 0
                if counted:
                    _stats.incr("dropped.shutdown_timeout", -counted)
                    _stats.incr(f"dropped.shutdown_timeout.{self.name}", -counted)
                    self._count(batch, ok)
                return
            self._inflight = 0
            self._count(batch, ok)

    def _count(self, batch: list[Record], ok: Any) -> None:
        """Count what became of a batch ``export()`` returned ``ok`` for."""
        if ok is False:
            self._lost = True  # (the next flush says so)
            _stats.incr("dropped.export_failed", len(batch))
            _stats.incr(f"dropped.export_failed.{self.name}", len(batch))
        else:
            n = len(batch)
            cls = ok.__class__
            if cls is _stats.PartlyRejected or cls is _stats.PartlyFailed:
                n = max(0, n - ok)  # (the exporter counted those as dropped)
                if cls is _stats.PartlyFailed:
                    self._lost = True  # (some were given up: the next flush says so)
            _stats.incr("exported", n)
            _stats.incr(f"exported.{self.name}", n)

    def _run(self) -> None:
        q = self.queue
        size = self.batch_size
        while True:
            self._idle = True
            self.wake.wait(self.delay_s)
            self._idle = False
            self._taken.set()  # (holding the GIL: the thread that woke us may go on)
            self.wake.clear()
            batch: list[Record] = []
            while True:
                try:
                    item = q.popleft()
                except IndexError:
                    break
                if item.__class__ is _FlushMarker:
                    marker: _FlushMarker = item
                    if batch:
                        self._export(batch)
                        batch = []
                    flush = getattr(self.exporter, "force_flush", None)
                    if flush is not None:
                        with _safety.guard(f"flush.{self.name}"):
                            if flush(max(0.0, marker.deadline - time.monotonic())) is False:
                                self._lost = True
                    if self._lost:  # a batch given up since the last flush, or this one failed
                        marker.latch.failed = True
                        self._lost = False
                    marker.latch.count_down()
                    continue
                batch.extend(item)  # type: ignore[arg-type]
                while len(batch) >= size:
                    self._export(batch[:size])
                    batch = batch[size:]
            if batch:
                self._export(batch)
            elif self._poll is not None:  # idle: the exporter may have work of its own (a spool)
                with _safety.guard(f"poll.{self.name}"):
                    self._poll()
            if self._stop and not q:
                return

    def stop(self, timeout: float) -> None:
        """Stop the thread after it drained its queue (waits at most ``timeout``)."""
        self._stop = True
        self.wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            join_thread(t, timeout)

    def abandon(self) -> int:
        """After shutdown's time ran out: count the records not delivered yet as dropped
        (``dropped.shutdown_timeout[.<name>]``) and release their flush waiters. The thread is
        stuck in an export (or too slow) and, a daemon, dies with the process: uncounted, they
        would vanish from ``stats()``. Counted: the records queued, those the worker took but
        has not exported, and the batch inside an unfinished ``export()`` call (if that call
        returns later, its outcome replaces that count; nothing more is exported). Records
        handed over from now on (by a pipeline worker that outlived the deadline) are counted
        the same way. Returns the number dropped."""
        with self._lock:
            # _pending covers what is queued and what the worker popped but did not export,
            # whichever thread holds it now: taking it under the lock counts each once.
            self._abandoned = True
            lost = self._pending + self._inflight
            self._abandoned_inflight = self._inflight  # (recounted if that call returns)
            self._pending = self._inflight = 0
        q = self.queue
        while True:
            try:
                item = q.popleft()
            except IndexError:
                break
            if item.__class__ is _FlushMarker:
                marker: _FlushMarker = item
                marker.latch.failed = True
                marker.latch.count_down()
        if lost:
            _stats.incr("dropped.shutdown_timeout", lost)
            _stats.incr(f"dropped.shutdown_timeout.{self.name}", lost)
        return lost

    def after_fork(self, start: bool = True) -> None:
        """In a forked child: empty queue, and unless ``start`` is False (see
        :meth:`Pipeline.after_fork`) :meth:`start_after_fork`."""
        self._reset()
        if start:
            self.start_after_fork()

    def start_after_fork(self) -> None:
        """Let the exporter reset itself (it may start threads of its own), start the thread."""
        hook = getattr(self.exporter, "after_fork", None)
        if hook is not None:
            with _safety.guard(f"after_fork.{self.name}"):
                hook()
        self.start()


_live_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()


class Pipeline:
    """Everything between ``span.end()`` and the exporters for one configured provider."""

    def __init__(
        self,
        *,
        service: str,
        environment: str,
        exporters: Iterable[Any],
        resource_attributes: dict[str, Any] | None = None,
        sanitizer: Callable[[Record], Record] | None = None,
        processors: Sequence[Processor] = (),
        tail: TailKeeper | None = None,
        rollups: Any = None,
        router: Callable[[Record], Iterable[str]] | None = None,
        thresholds: CategoryThresholds | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        schedule_delay_s: float = DEFAULT_SCHEDULE_DELAY_S,
        export_batch_size: int = DEFAULT_EXPORT_BATCH_SIZE,
        exporter_queue_size: int = DEFAULT_EXPORTER_QUEUE_SIZE,
    ) -> None:
        self.service = service
        self.environment = environment
        self._resource_extra = dict(resource_attributes or {})
        self.resource = make_resource(service, environment, self._resource_extra)
        self.sanitizer = sanitizer
        # The built-in sanitizer builds span records sanitized in one pass; a subclass or any
        # other callable gets the plain record, then is called on it.
        self._fused = sanitizer._span_record if type(sanitizer) is Sanitizer else None
        self._fused_many = sanitizer._span_records if type(sanitizer) is Sanitizer else None
        self._fused_audit = sanitizer._request_audit if type(sanitizer) is Sanitizer else None
        self._fused_audits = sanitizer._request_audits if type(sanitizer) is Sanitizer else None
        self.processors = list(processors)
        self.tail = tail
        self.rollups = rollups
        self.router = router
        self.thresholds = thresholds
        self.max_queue_size = max_queue_size
        self.schedule_delay_s = schedule_delay_s
        self.export_batch_size = export_batch_size  # (the resolved value, also with no exporter)
        self.workers = [
            ExporterWorker(e, exporter_queue_size, export_batch_size, schedule_delay_s) for e in exporters
        ]
        self._route_cache: dict[str, list[ExporterWorker]] = {}
        self.wake_at = max(1, min(max_queue_size // 2, export_batch_size))
        self._shutdown = False
        self._restart_after_fork = False  # (see after_fork)
        self._init_runtime()
        _live_pipelines.add(self)

    def _init_runtime(self) -> None:
        # queue / wake / wake_at / max_queue_size are read by Span.__exit__ directly (hot path).
        self.queue: deque[Span | Record | tuple[Any, ...]] = deque()
        self.wake = threading.Event()
        self._idle = False  # waiting for work (see handoff)
        self._drained = threading.Event()
        self._several_cpus = several_cpus()
        self._flush_requests: deque[tuple[_Latch, float]] = deque()
        self._refresh_hot()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _refresh_hot(self) -> None:
        # What the C accelerator's enqueue/emit read, in one attribute lookup instead of four.
        # Kept current wherever these change (start, fork, shutdown).
        self._hot = (self.queue.append, self.queue, self.max_queue_size, self.wake_at, self._handoff)

    # -- request-thread side -----------------------------------------------------------------
    def enqueue(self, span: Span) -> None:
        """Hand a finished span to the worker. Never blocks; drops (counted) when full."""
        q = self.queue
        if len(q) < self.max_queue_size:
            q.append(span)
            if len(q) == self.wake_at:
                self._handoff()
        else:
            self.drop()

    def drop(self) -> None:
        """Count a span refused because the queue is full (or the pipeline shut down)."""
        _stats.incr("dropped.after_shutdown" if self._shutdown else "dropped.queue_full")

    def emit(self, record: Record | tuple[Any, ...]) -> None:
        """Hand a ready-made record (audit, custom) to the worker, like :meth:`enqueue`. (A
        tuple is a request audit the middleware left to the worker: ``records.request_audit``.)"""
        if self._shutdown:
            _stats.incr("dropped.after_shutdown")
            return
        q = self.queue
        if len(q) < self.max_queue_size:
            q.append(record)
        else:
            self.drop()

    def _handoff(self) -> None:
        """A full batch is queued: wake the worker (see :func:`handoff`)."""
        handoff(self.wake, self._drained, self._idle and self._several_cpus, self._thread)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pipeline worker and every exporter worker. An exporter with
        ``bind_resource(resource)`` is told this process's resource first (metrics exporters
        label their series with it)."""
        for w in self.workers:
            bind = getattr(w.exporter, "bind_resource", None)
            if bind is not None:
                with _safety.guard(f"bind_resource.{w.name}"):
                    bind(dict(self.resource))
            w.start()
        if self._thread is None or not self._thread.is_alive():
            self._thread = _suppressed_thread(self._run, "pitchey-trace-pipeline")
            self._thread.start()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Export everything accepted so far; True when every exporter confirmed in time."""
        timeout = 30.0 if timeout is None else max(0.0, timeout)
        if self._thread is None or not self._thread.is_alive():
            if self._shutdown:
                return True
            self.start()
        deadline = time.monotonic() + timeout
        latch = _Latch(len(self.workers) + 1)
        self._flush_requests.append((latch, deadline))
        self.wake.set()
        return latch.done.wait(timeout) and not latch.failed

    def shutdown(self, timeout: float | None = None, keep: Sequence[object] = ()) -> bool:
        """Flush, stop the workers, shut the exporters down. Idempotent.

        Exporters in ``keep`` (by identity: the ones a new ``configure()`` reuses) are
        flushed but left open for the next pipeline."""
        if self._shutdown:
            return True
        timeout = 30.0 if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + timeout
        ok = self.force_flush(timeout)
        self._shutdown = True
        # From now on spans that end (started before shutdown) are refused and counted.
        self.max_queue_size = 0
        self._refresh_hot()
        self._stop = True
        self.wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            join_thread(self._thread, deadline - time.monotonic())
            if self._thread.is_alive():
                self._abandon_queue()
        for w in self.workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        kept = {id(e) for e in keep}
        for w in self.workers:
            if id(w.exporter) in kept:
                continue  # (its records were flushed above; the next pipeline uses it)
            shut = getattr(w.exporter, "shutdown", None)
            if shut is not None:
                remaining = max(0.1, deadline - time.monotonic())
                _call_with_timeout(functools.partial(shut, remaining), remaining, f"shutdown.{w.name}")
        for w in self.workers:
            w.abandon()  # (what a stuck or slow exporter did not take by now is counted lost)
        shut_rollups = getattr(self.rollups, "shutdown", None)
        if shut_rollups is not None:
            with _safety.guard("shutdown.rollups"):
                shut_rollups()
        return ok

    def _abandon_queue(self) -> None:
        """After shutdown's time ran out with the worker still busy (a slow processor or
        exporter hand-over): the spans and records it has not taken yet are counted in
        ``dropped.shutdown_timeout`` (and ``.pipeline``), not left to vanish with the daemon
        thread. Each item is popped by one thread only: one the worker takes meanwhile is
        counted by it (``accepted``, then delivered or counted by an abandoned exporter queue)."""
        q = self.queue
        lost = 0
        while True:
            try:
                q.popleft()
            except IndexError:
                break
            lost += 1
        if lost:
            _stats.incr("dropped.shutdown_timeout", lost)
            _stats.incr("dropped.shutdown_timeout.pipeline", lost)

    def after_fork(self, start: bool = True) -> None:
        """In a forked child: fresh, empty queues and new threads; the parent is unaffected.
        With ``start`` False the threads (and the exporters' own ``after_fork``, which may
        start threads) wait for :meth:`start_after_fork`, called by a later fork hook."""
        was_running = self._thread is not None and not self._shutdown
        self._init_runtime()
        self.resource = make_resource(self.service, self.environment, self._resource_extra)
        if self.tail is not None:
            self.tail.clear()
        clear = getattr(self.rollups, "clear", None)
        if clear is not None:
            with _safety.guard("after_fork.rollups"):
                clear()
        if was_running:
            for w in self.workers:
                w.after_fork(start=False)
            self._restart_after_fork = True
            if start:
                self.start_after_fork()

    def start_after_fork(self) -> None:
        """The second half of :meth:`after_fork`: the exporters' hooks and the new threads."""
        if not self._restart_after_fork:
            return
        self._restart_after_fork = False
        for w in self.workers:
            w.start_after_fork()
        self.start()

    # -- worker side ---------------------------------------------------------------------------
    def _run(self) -> None:
        last_periodic = time.monotonic()
        while True:
            # A backlog that built up during the last drain is taken at once; otherwise sleep
            # until 512 spans are queued (the producer sets ``wake``) or the delay passes.
            if len(self.queue) < self.wake_at:
                self._idle = True
                self.wake.wait(self.schedule_delay_s)
                self._idle = False
            self.wake.clear()
            with _safety.guard("pipeline"):
                self._drain()
            self._drained.set()  # (the thread that handed the batch over may go on)
            now = time.monotonic()
            if now - last_periodic >= self.schedule_delay_s:
                last_periodic = now
                with _safety.guard("pipeline.periodic"):
                    self._periodic(force=False)
            while self._flush_requests:
                latch, deadline = self._flush_requests.popleft()
                with _safety.guard("pipeline.flush"):
                    self._drain()
                    self._periodic(force=True)
                for w in self.workers:
                    w.put_marker(_FlushMarker(latch, deadline))
                latch.count_down()
            if self._stop:
                with _safety.guard("pipeline"):
                    self._drain()
                return

    def _periodic(self, force: bool) -> None:
        if self.tail is not None:
            self.tail.expire()
        rollups = self.rollups
        if rollups is not None:
            recs = rollups.collect(time.time_ns(), force)
            if recs:
                self._deliver(list(recs))

    def _drain(self) -> None:
        # Take only what is queued now: spans that arrive meanwhile wait for the next wake-up
        # (512 queued, or the schedule delay). Chasing them would turn the worker into a
        # span-at-a-time consumer that ping-pongs the GIL with the request thread and loses
        # all batching (measured: +10 us per database query instead of +4).
        q = self.queue
        popleft = q.popleft
        remaining = len(q)
        take = _accel.take_chunk
        while remaining > 0:
            spans: list[Span] = []
            observed: list[Span] = []
            unsampled: list[Span] = []
            ready: list[Record] = []
            n = 0
            rollups = self.rollups
            tail = self.tail
            if take is not None:  # the C accelerator pops and sorts the chunk
                n, observed, spans, unsampled, ready = take(popleft, min(_CHUNK, remaining), tail is not None)
            while n < _CHUNK and n < remaining and take is None:
                try:
                    item = popleft()
                except IndexError:
                    break
                n += 1
                if item.__class__ is Span:
                    span: Span = item
                    observed.append(span)
                    if span.trace_flags & 1:
                        spans.append(span)
                    elif tail is not None:
                        unsampled.append(span)
                else:
                    ready.append(item)  # type: ignore[arg-type]
            if rollups is not None and observed:
                self._observe(rollups, observed)
            observed.clear()  # (so _deliver_spans can free each span once its record is built)
            if unsampled and tail is not None:
                tail.offer_many(unsampled, spans)
            if n == 0:
                break
            remaining -= n
            _stats.incr("accepted", n)
            if spans:
                self._deliver_spans(spans)
            if ready:
                self._deliver(ready)
            if remaining > 0:  # (after the last chunk the worker goes to sleep anyway)
                time.sleep(0)

    def _deliver_spans(self, spans: list[Span]) -> None:
        """Build the spans' records and deliver them. With the built-in sanitizer the record is
        built sanitized in one pass; with no processors and no router every span record goes to
        the ``traces`` exporters as one chunk (no per-record routing)."""
        out: list[Record] = []
        service, env, res, thr = self.service, self.environment, self.resource, self.thresholds
        fused = self._fused
        many: Callable[..., list[Record]] | None = self._fused_many
        if fused is None:
            many = self._plain_records if self.sanitizer is None and _accel.build_span_records else None
        build = span_record if fused is None else fused
        # In parts, each released once its records are built (the caller's lists no longer
        # hold the spans): a drain's spans are freed while its records are made, not after,
        # so fewer objects are alive at once and this thread triggers fewer cycle collections
        # (measured under uvicorn with gc.callbacks: docs/performance.md).
        step = _BUILD_STEP if many is not None else max(1, len(spans))
        parts: list[list[Span] | None] = [spans[i : i + step] for i in range(0, len(spans), step)]
        spans.clear()
        for k, part in enumerate(parts):
            parts[k] = None
            assert part is not None
            if many is not None:
                try:
                    out.extend(many(part, service, env, res, thr))
                    continue
                except Exception:
                    # Fall back span by span: only the span that fails is lost (and reported).
                    _stats.incr("pipeline.chunk_fallbacks")
            for span in part:
                try:
                    out.append(build(span, service, env, res, thr))
                except Exception as exc:
                    _stats.incr("dropped.encode_error" if fused is None else "dropped.sanitize_error")
                    _safety.report("span_record" if fused is None else "sanitize", exc)
        if not out:
            return
        if (fused is None and self.sanitizer is not None) or self.processors or self.router is not None:
            self._deliver(out, sanitized=fused is not None)
            return
        self._put(self._targets("traces"), out)

    def _plain_records(
        self, spans: list[Span], service: str, env: str, res: dict[str, Any], thr: CategoryThresholds | None
    ) -> list[Record]:
        """``span_record`` of each span, through the C builder (no sanitizer configured): it
        builds the common spans and calls ``span_record`` for the others."""
        build = _accel.build_span_records
        assert build is not None
        return build(
            spans,
            last_span_template(service, env, res),
            (thr or _DEFAULT_THRESHOLDS).table,
            _KIND_STR,
            _STATUS_STR,
            None,
            None,
            None,
            sys.maxsize,
            functools.partial(span_record, service=service, environment=env, resource=res, thresholds=thr),
        )

    @staticmethod
    def _observe(rollups: Any, spans: list[Span]) -> None:
        """Feed rollups every recorded span (sampled or not), a chunk at a time when it can."""
        try:
            observe_many = getattr(rollups, "observe_many", None)
            if observe_many is not None:
                observe_many(spans)
            else:
                for span in spans:
                    rollups.observe(span)
        except Exception as exc:
            _safety.report("rollups", exc)

    def _targets(self, dataset: str) -> list[ExporterWorker]:
        """Workers subscribed to ``dataset`` (cached: datasets are few)."""
        targets = self._route_cache.get(dataset)
        if targets is None:
            targets = self._route_cache[dataset] = [w for w in self.workers if w.accepts(dataset)]
        return targets

    @staticmethod
    def _dataset_of(rec: Record) -> str | None:
        """The dataset of a record a processor (or a custom sanitizer) may have changed: its
        ``dataset`` or else by its ``type``; None, counted and warned about once, when either
        is not a str (a mistake that must cost that record only, not the batch)."""
        ds = rec.get("dataset")
        kind = rec.get("type")
        if isinstance(ds, str) and ds:
            return ds
        if (ds is None or isinstance(ds, str)) and (kind is None or isinstance(kind, str)):
            return DATASET_OF_TYPE.get(kind, "traces") if kind is not None else "traces"
        _stats.incr("dropped.processor_error")
        _safety.warn_once(
            "record_dataset",
            "a record's dataset and type must be str, got %s and %s: record dropped",
            type(ds),
            type(kind),
        )
        return None

    def _deliver(self, records: list[Any], sanitized: bool = False) -> None:
        """Sanitize (unless already done), run processors, route to the exporters' queues."""
        sanitizer = None if sanitized else self.sanitizer
        processors = self.processors
        router = self.router
        routed: dict[int, list[Record]] = {id(w): [] for w in self.workers}
        type_dataset = DATASET_OF_TYPE
        fused_audit = self._fused_audit if sanitizer is not None else None
        if fused_audit is not None and not processors and router is None:
            # The usual chunk of ready items: the request audits the middleware queued. Built
            # sanitized in one pass and handed to the "audit" exporters together.
            try:
                audits, rest = self._fused_audits(records, self.service, self.environment)  # type: ignore[misc]
            except Exception as exc:  # the one-by-one path below still gets every item
                _safety.report("request_audits", exc)
                audits, rest = [], records
            others: list[Any] = []
            for rec in rest:
                if rec.__class__ is tuple and rec[0] == PENDING_AUDIT:
                    try:
                        audits.append(fused_audit(rec, self.service, self.environment))
                    except Exception as exc:
                        _stats.incr("dropped.encode_error")
                        _safety.report("request_audit", exc)
                else:
                    others.append(rec)
            if audits:
                self._put(self._targets(DATASET_OF_TYPE["audit"]), audits)
            if not others:
                return
            records = others
        for rec in records:
            clean = sanitizer is None
            if rec.__class__ is tuple:  # a request audit the middleware deferred to this thread
                try:
                    if rec[0] != PENDING_AUDIT:
                        raise TypeError("not a record: a tuple")
                    if fused_audit is not None:  # built and sanitized in one pass
                        rec = fused_audit(rec, self.service, self.environment)
                        clean = True
                    else:
                        rec = request_audit(rec, self.service, self.environment)
                except Exception as exc:
                    _stats.incr("dropped.encode_error")
                    _safety.report("request_audit", exc)
                    continue
            if not clean:
                try:
                    rec = sanitizer(rec)  # type: ignore[misc]
                except Exception as exc:
                    # Never export what could not be sanitized.
                    _stats.incr("dropped.sanitize_error")
                    _safety.report("sanitize", exc)
                    continue
                if not isinstance(rec, dict):  # a custom sanitizer's mistake: this record only
                    _stats.incr("dropped.sanitize_error")
                    _safety.warn_once(
                        "sanitizer_result", "the sanitizer returned %s, not a record", type(rec)
                    )
                    continue
            if processors:
                # Processors may add events or links in place: they get lists of their own
                # instead of the shared read-only empty one (the record is this delivery's).
                if rec.get("events") is NO_ITEMS:
                    rec["events"] = []
                if rec.get("links") is NO_ITEMS:
                    rec["links"] = []
                result: Record | None = rec
                for proc in processors:
                    try:
                        result = proc(result)  # type: ignore[arg-type]
                    except Exception as exc:
                        _stats.incr("dropped.processor_error")
                        _safety.report("processor", exc)
                        result = None
                    if not isinstance(result, dict):  # None (filtered) or a processor's mistake
                        break
                if result is None:
                    _stats.incr("filtered")
                    continue
                if not isinstance(result, dict):  # a processor's mistake: this record only
                    _stats.incr("dropped.processor_error")
                    _safety.warn_once(
                        "processor_result", "a processor returned %s, not a record or None", type(result)
                    )
                    continue
                rec = result
            if router is None:
                ds = rec.get("dataset")
                kind = rec.get("type")
                if ds is None and kind.__class__ is str:  # the SDK's records
                    ds = type_dataset.get(kind, "traces")
                else:
                    ds = self._dataset_of(rec)
                    if ds is None:
                        continue
                for w in self._targets(ds):
                    routed[id(w)].append(rec)
                continue
            try:
                names = set(router(rec))
            except Exception as exc:
                _stats.incr("dropped.router_error")
                _safety.report("router", exc)
                continue
            for w in self.workers:
                if w.datasets is None or not names.isdisjoint(w.datasets):
                    routed[id(w)].append(rec)
        untrack = _accel.untrack_records
        for w in self.workers:
            recs = routed[id(w)]
            if recs:
                if untrack is not None:
                    untrack(recs)  # they wait in the exporter's queue: no work for the collector
                w.put(recs)

    @staticmethod
    def _put(targets: list[ExporterWorker], records: list[Record]) -> None:
        """Hand one list of records to several exporter workers (each gets its own list)."""
        untrack = _accel.untrack_records
        if untrack is not None:
            untrack(records)
        last = len(targets) - 1
        for i, w in enumerate(targets):
            w.put(records if i == last else records.copy())


#: Whether _start_after_fork_in_child is registered (see _before_fork).
_late_fork_hook = False


def _before_fork() -> None:
    """gevent's ``monkey.patch_all()`` registers an at-fork hook of its own that requires the
    child to have one thread only (``assert len(active) == 1``); it runs after this module's
    hook (registered at import, earlier), which started the new worker threads: the
    assertion failed ("Exception ignored ... AssertionError" on stderr) and gevent's own
    clean-up of the child's threading state was skipped. Once gevent patched ``threading``,
    a second hook, registered now (after gevent's), starts the threads instead. (Registering
    from a ``before`` hook is allowed: CPython runs a copy of each hook list, and the child
    runs the ``after_in_child`` list as it is after the ``before`` hooks ran.)"""
    global _late_fork_hook
    if _late_fork_hook or not _gevent_patched_threading():
        return
    with _safety.guard("before_fork"):
        os.register_at_fork(after_in_child=_start_after_fork_in_child)
        _late_fork_hook = True


def _after_fork_in_child() -> None:
    start = not _late_fork_hook  # (else _start_after_fork_in_child starts the threads)
    for p in list(_live_pipelines):
        try:
            p.after_fork(start=start)
        except Exception as exc:  # pragma: no cover - defensive
            _safety.report("after_fork", exc)


def _start_after_fork_in_child() -> None:
    for p in list(_live_pipelines):
        try:
            p.start_after_fork()
        except Exception as exc:  # pragma: no cover - defensive
            _safety.report("after_fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
