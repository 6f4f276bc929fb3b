"""Real HTTP servers on 127.0.0.1 for the middleware tests: uvicorn (ASGI), werkzeug's
threaded WSGI server and aiohttp's own server, each on a free port in a background thread of
the test process."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import uvicorn
from werkzeug.serving import make_server

pytestmark = pytest.mark.integration


class RunningServer:
    """A started server: its base URL and a ``stop()``."""

    def __init__(self, url: str, stop: Callable[[], None]) -> None:
        self.url = url
        self.stop = stop


@contextmanager
def run_uvicorn(app: Any, **config: Any) -> Iterator[RunningServer]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a socket bound to a free port beforehand, so
    parallel test workers never race for one) until the block exits."""
    # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (else ~40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config.setdefault("log_level", "warning")
    config.setdefault("log_config", None)  # leave the test process's logging setup alone
    config.setdefault("lifespan", "off")
    config.setdefault("ws", "websockets-sansio")
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    try:
        yield RunningServer(f"http://127.0.0.1:{port}", stop)
    finally:
        stop()


@contextmanager
def run_wsgi(app: Any) -> Iterator[RunningServer]:
    """Serve ``app`` with werkzeug's threaded WSGI server on 127.0.0.1 until the block exits."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(10)
        server.server_close()

    try:
        yield RunningServer(f"http://127.0.0.1:{server.server_port}", stop)
    finally:
        stop()


@contextmanager
def run_aiohttp(app: Any) -> Iterator[RunningServer]:
    """Serve an ``aiohttp.web.Application`` on 127.0.0.1 from its own event loop in a
    background thread until the block exits."""
    from aiohttp import web

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        if loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sock.close()

    try:
        yield RunningServer(f"http://127.0.0.1:{port}", stop)
    finally:
        stop()


class RecordCollector(logging.Handler):
    """Keeps every record it sees (after its filters ran)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collect_logs(logger_name: str, *filters: logging.Filter) -> Iterator[RecordCollector]:
    """Collect the records of ``logger_name`` through a handler carrying ``filters``."""
    handler = RecordCollector()
    for f in filters:
        handler.addFilter(f)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def serve_asgi() -> Iterator[Callable[..., str]]:
    """``serve_asgi(app, **uvicorn_config) -> base URL``; servers stop after the test."""
    with ExitStack() as stack:
        yield lambda app, **config: stack.enter_context(run_uvicorn(app, **config)).url


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """``serve_wsgi(app) -> base URL`` (werkzeug, threaded); servers stop after the test."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(run_wsgi(app)).url


@pytest.fixture
def serve_aiohttp() -> Iterator[Callable[[Any], str]]:
    """``serve_aiohttp(app) -> base URL`` (its own loop and thread); servers stop after the test."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(run_aiohttp(app)).url


@pytest.fixture
def logs() -> Iterator[Callable[..., RecordCollector]]:
    """``logs(logger_name, *filters) -> collector`` of that logger's records."""
    with ExitStack() as stack:
        yield lambda name, *filters: stack.enter_context(collect_logs(name, *filters))


def _wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Flush the pipeline until ``predicate()`` is truthy (a server thread ends its span just
    after the client got the last byte); returns that value, fails after ``timeout``."""
    import pitchey_trace as pt

    deadline = time.monotonic() + timeout
    while True:
        pt.force_flush(5.0)
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached: records were not exported in time")
        time.sleep(0.02)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=15)``: flush until the predicate holds; returns its value."""
    return _wait_for
