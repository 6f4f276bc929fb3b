"""Real HTTP servers on 127.0.0.1 for the middleware tests: uvicorn (ASGI), werkzeug's
threaded WSGI server and aiohttp's own server, each on a free port in a background thread of
the test process."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
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
def run_waitress(app: Any, **options: Any) -> Iterator[RunningServer]:
    """Serve ``app`` with waitress on 127.0.0.1 (``options`` for ``create_server``; its loop in
    a background thread) until the block exits."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop() -> None:
        server.task_dispatcher.shutdown()
        server.close()
        server.asyncore.close_all(server._map)
        thread.join(10)

    try:
        yield RunningServer(f"http://127.0.0.1:{server.effective_port}", stop)
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


@contextmanager
def run_hypercorn(app: Any, probe: str | None = None) -> Iterator[RunningServer]:
    """Serve ``app`` with hypercorn on 127.0.0.1 (a socket bound beforehand; its own loop in a
    background thread) until the block exits. Started once a GET of the path ``probe``
    answers, or without one, once a TCP connection is accepted."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]  # (hypercorn closes the one it is given)
    config.loglevel = "WARNING"
    config.accesslog = None
    config.errorlog = None
    loop = asyncio.new_event_loop()
    stop_event = asyncio.Event()

    def run() -> None:
        loop.run_until_complete(serve(app, config, shutdown_trigger=stop_event.wait))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    not_yet: type[Exception] = OSError if probe is None else httpx.TransportError
    deadline = time.monotonic() + 20
    while True:
        try:
            if probe is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            else:
                httpx.get(f"{url}{probe}", timeout=1)
            break
        except not_yet:
            if time.monotonic() > deadline:
                raise RuntimeError("hypercorn did not start") from None
            time.sleep(0.05)

    def stop() -> None:
        loop.call_soon_threadsafe(stop_event.set)
        thread.join(10)
        loop.close()
        sock.close()

    try:
        yield RunningServer(url, stop)
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


@pytest.fixture(params=["accelerated", "python"])
def path_kind(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both request paths of the ASGI middleware: the C start and finish (when compiled), and
    the Python ones (the reference)."""
    from pitchey_trace.web import asgi as asgi_module

    if request.param == "python":
        monkeypatch.setattr(asgi_module, "fast_begin", None)
        monkeypatch.setattr(asgi_module, "fast_finish", None)
    else:  # (the C path: CI builds it; not built is a setup failure, not a skip)
        assert asgi_module.fast_begin is not None, "the C accelerator is not built"
    return str(request.param)
