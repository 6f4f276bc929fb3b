"""Real Celery worker processes for the tests: a task module written to a directory, a worker
process running it, the same module imported in the test process, and the worker's spans
read back from ``worker-spans.jsonl`` in that directory.

    with celery_worker(base, "tasks", TASKS, "q", pool="solo", concurrency=1) as tasks: ...
    with redis_celery_worker(base, "tasks", TASKS, "q") as tasks: ...   # over a throwaway Redis

The task module reads the directory from ``PT_CELERY_DIR`` (a Redis worker's app is
``redis_app(name, queue)``), and calls ``export_worker_spans(service)`` before
``instrument_celery()``."""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

import pitchey_trace as pt
from tests.support.redisserver import redis_server

ROOT = Path(__file__).resolve().parents[2]


class FileExporter:
    """Appends every exported record to ``worker-spans.jsonl`` in ``base``, a JSON object a line."""

    def __init__(self, base: str) -> None:
        self.base = base

    def export(self, batch: list[dict[str, Any]]) -> bool:
        with open(self.base + "/worker-spans.jsonl", "a") as f:
            for record in batch:
                f.write(json.dumps(record) + "\n")
        return True


def redis_app(name: str, queue: str) -> Celery:
    """In a task module: the Celery app over the Redis in ``PT_REDIS_URL`` (broker and result
    backend), sending to ``queue``, its worker taking one message at a time."""
    url = os.environ["PT_REDIS_URL"]
    app = Celery(name, broker=url, backend=url)
    app.conf.update(
        task_default_queue=queue,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
    )
    return app


def export_worker_spans(service: str) -> None:
    """In a task module: in the worker process (``PT_ROLE=worker``), trace everything as
    ``service`` and export it to ``worker-spans.jsonl`` in ``PT_CELERY_DIR``."""
    if os.environ.get("PT_ROLE") == "worker":
        pt.configure(service=service, exporters=[FileExporter(os.environ["PT_CELERY_DIR"])], sample_rate=1.0)


@contextmanager
def celery_worker(
    base: Path,
    module: str,
    source: str,
    queue: str,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    on_output: Callable[[str], None] | None = None,
) -> Iterator[Any]:
    """Writes ``source`` to ``base/<module>.py``, starts a worker running it on ``queue`` and
    yields the module imported here. ``PT_CELERY_DIR`` (``base``) and ``env`` are set in both
    processes, ``worker_env`` in the worker's alone. On exit the module is forgotten, the
    environment restored and the worker stopped; ``on_output`` gets what it printed."""
    shared = {"PT_CELERY_DIR": str(base), **(env or {})}
    (base / f"{module}.py").write_text(source)
    full_env = {
        **os.environ,
        **shared,
        "PT_ROLE": "worker",
        "PYTHONPATH": os.pathsep.join([str(base), str(ROOT)]),
        **(worker_env or {}),
    }
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", "-Q", queue, "--loglevel=WARNING"]
    argv += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import {module}; {module}.app.worker_main({argv!r})"],
        cwd=base,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    os.environ.update(shared)
    sys.path.insert(0, str(base))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(base))
        sys.modules.pop(module, None)
        for name in shared:
            os.environ.pop(name, None)
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        if on_output is not None:
            on_output(out)


@contextmanager
def redis_celery_worker(base: Path, module: str, source: str, queue: str) -> Iterator[Any]:
    """``celery_worker`` (two prefork pool processes) over a throwaway Redis broker and result
    backend (its URL in ``PT_REDIS_URL``), ready once it answers a ping."""
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        with celery_worker(base, module, source, queue, env={"PT_REDIS_URL": url}) as tasks:
            try:
                # Ready once it answers a ping: a revoke broadcast before the worker listens
                # for control messages would be lost (and the revoked task run).
                deadline = time.monotonic() + 60
                while not tasks.app.control.ping(timeout=0.5):
                    assert time.monotonic() < deadline, "the Celery worker did not start"
                yield tasks
            finally:
                # (results dropped while Redis still answers: their __del__ unsubscribes)
                gc.collect()
                tasks.app.close()


def worker_spans(base: Path, wanted: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The worker's spans once ``wanted(spans)`` is true (or the timeout passed)."""
    path = base / "worker-spans.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        spans = [json.loads(line) for line in lines if '"type": "span"' in line]
        if wanted(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def runs_of(spans: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    """The ``run`` spans of the task ``task_id``."""
    return [
        s
        for s in spans
        if s["name"].startswith("run ") and s["attributes"].get("messaging.message.id") == task_id
    ]
