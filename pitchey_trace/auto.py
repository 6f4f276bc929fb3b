"""Automatic instrumentation: trace the libraries a process uses without changing its code.

    pitchey-trace run -- python app.py         # or: -- gunicorn app:app / uvicorn app:app / celery ...

    import pitchey_trace.auto                  # the same from code, first thing at startup
    pitchey_trace.auto.instrument_all()

:func:`instrument_all` configures tracing from the environment (``PITCHEY_TRACE_*`` and
``OTEL_*`` variables, see ``pitchey-trace config``) unless :func:`pitchey_trace.configure` was
already called, then instruments each supported library the moment it is imported (at once
when it already is):

========================  =====================================================================
library                   what happens
========================  =====================================================================
httpx, requests, urllib,  client spans and ``traceparent`` on every request (``urllib``: the
urllib3                   standard library's ``urllib.request``; ``urllib3``: also the
                          libraries built on it, a ``requests`` or AWS call staying one span)
aiohttp                   every ``web.Application`` traced as it starts (``init_aiohttp``),
                          client sessions too
flask                     every ``Flask`` app traced from its first request (``init_flask``)
starlette / fastapi       every app wrapped in ``ASGITracingMiddleware`` (Starlette: its
                          middleware stack; FastAPI: the whole app, outside its native
                          OpenTelemetry span); a request another pitchey middleware traces
                          (an app the program wrapped, a mounted app's parent) is left to it
django                    the WSGI / ASGI handler wrapped, ``PitcheyRouteMiddleware`` added
psycopg, psycopg2,        every connection opened by ``connect`` (pools and SQLAlchemy included)
asyncpg                   instrumented (``pitchey_trace.db.instrument``); psycopg2 without a
                          ``connection_factory`` connects with a subclass of its connection,
                          so ``commit()`` / ``rollback()`` / 2PC are traced too
redis                     every command, pipeline and Pub/Sub command a CLIENT span, cluster
                          clients too (``instrument_redis``)
botocore (boto3)          every AWS API call a CLIENT span (``instrument_botocore``)
grpc                      every server and channel made afterwards traced (``instrument_grpc``)
celery                    task send and run spans (``instrument_celery``)
pika, aio_pika            RabbitMQ publish and consume spans, trace context in the message
                          headers (``pitchey_trace.amqp``)
threading                 work handed to threads and thread pools runs in the span current
                          when it was handed over (``pitchey_trace.threads``); so do child
                          processes started by ``multiprocessing`` (``Process``, ``Pool``,
                          ``ProcessPoolExecutor``) under every start method, a pool's
                          workers in the span current when they were started
                          (docs/operations.md), and greenlets gevent spawns
logging                   records of WARNING and above (``PITCHEY_TRACE_LOG_EVENT_LEVEL``) logged
                          in a span become its ``log`` events (``instrument_logging``); with
                          ``PITCHEY_TRACE_EXPORT_LOGS=INFO`` (or OpenTelemetry's
                          ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``) every
                          record from that level is shipped as a ``log`` record
                          (``export_logs``)
========================  =====================================================================

An app the program instruments itself (``init_flask``, ``init_aiohttp``,
``add_middleware(ASGITracingMiddleware, ...)``, a Django handler wrapped by hand) keeps its
own options.

``PITCHEY_TRACE_AUTO_EXCLUDE`` (a comma list of the names in the first column, ``fastapi``
meaning ``starlette``) leaves libraries alone. A library that fails to instrument is logged on
the ``pitchey_trace`` logger and left as it was; the import itself always succeeds.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace.exceptions import ConfigurationError

__all__ = ["SUPPORTED", "instrument_all", "instrumented"]

_lock = threading.RLock()
Hook = Callable[[ModuleType], None]
# (library, module name) pairs whose hook ran
_done: set[tuple[str, str]] = set()
# module name -> the (library, hook) pairs waiting for it to be imported
_waiting: dict[str, list[tuple[str, Hook]]] = {}
_finder: _PostImportFinder | None = None


# -- what each library gets ----------------------------------------------------------------------
def _httpx(_: ModuleType) -> None:
    from pitchey_trace.web import instrument_httpx

    instrument_httpx()


def _urllib(_: ModuleType) -> None:
    from pitchey_trace.web import instrument_urllib

    instrument_urllib()


def _urllib3(_: ModuleType) -> None:
    from pitchey_trace.web import instrument_urllib3

    instrument_urllib3()


def _requests(_: ModuleType) -> None:
    from pitchey_trace.web import instrument_requests

    instrument_requests()


def _aiohttp(module: ModuleType) -> None:
    from pitchey_trace.web import init_aiohttp, instrument_aiohttp_client

    instrument_aiohttp_client()
    application = module.Application
    original = application.pre_freeze

    @functools.wraps(original)
    def pre_freeze(self: Any) -> None:
        # As the app starts: an app the program set up itself (init_aiohttp with its own
        # options) is left as it is. A sub-application gets the middleware too, which lets a
        # request its parent already traces through.
        if not getattr(self, "_pre_frozen", True):
            with _safety.guard("auto.aiohttp"):
                init_aiohttp(self)
        original(self)

    application.pre_freeze = pre_freeze


def _flask(module: ModuleType) -> None:
    from pitchey_trace.web import init_flask

    flask = module.Flask
    original = flask.__call__

    @functools.wraps(original)
    def __call__(self: Any, environ: Any, start_response: Any) -> Any:
        # At the first request: an app the program set up itself (init_flask with its own
        # options) is left as it is.
        if "pitchey_trace" not in self.extensions:
            with _lock, _safety.guard("auto.flask"):  # (two first requests at once: one init)
                init_flask(self)
        return original(self, environ, start_response)

    flask.__call__ = __call__


def _starlette(module: ModuleType) -> None:
    from pitchey_trace.web import ASGITracingMiddleware
    from pitchey_trace.web.asgi import _AutoTracingMiddleware

    starlette = module.Starlette
    original = starlette.build_middleware_stack

    @functools.wraps(original)
    def build_middleware_stack(self: Any) -> Any:
        app = original(self)
        try:
            # Outermost (outside Starlette's error middleware, as the docs recommend), unless
            # the app already added the middleware itself; a mounted app's, or one the program
            # wrapped itself, steps aside for the request its parent traces (per request).
            if isinstance(app, ASGITracingMiddleware) or _adds_middleware(self):
                return app
            return _AutoTracingMiddleware(app)
        except Exception as exc:
            _safety.report("auto.starlette", exc)
            return app

    starlette.build_middleware_stack = build_middleware_stack


def _adds_middleware(app: Any) -> bool:
    from pitchey_trace.web import ASGITracingMiddleware

    return any(getattr(m, "cls", None) is ASGITracingMiddleware for m in app.user_middleware)


_FASTAPI_MIDDLEWARE = "_pitchey_trace_middleware"


def _fastapi(module: ModuleType) -> None:
    # FastAPI overrides build_middleware_stack without calling Starlette's (the Starlette hook
    # alone left every FastAPI app untraced), and starts its native OpenTelemetry server span
    # in __call__, before its middleware stack: the middleware goes around __call__, so that
    # its span is the request's server span (FastAPI's gives way to it: pitchey_trace.otel).
    from pitchey_trace.web.asgi import _AutoTracingMiddleware

    fastapi = module.FastAPI
    original = fastapi.__call__

    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        made = self.__dict__.get(_FASTAPI_MIDDLEWARE)
        if made is None or made[0] is not self:  # (a copy of an app: its own)
            app: Any = functools.partial(original, self)
            try:
                if not _adds_middleware(self):
                    app = _AutoTracingMiddleware(app)
            except Exception as exc:
                _safety.report("auto.fastapi", exc)
            made = self.__dict__[_FASTAPI_MIDDLEWARE] = (self, app)  # (made once per app)
        if self.root_path:  # (as FastAPI does first: excluded paths are matched below it)
            scope["root_path"] = self.root_path
        await made[1](scope, receive, send)

    fastapi.__call__ = __call__


def _django_middleware(module: ModuleType) -> None:
    route_middleware = "pitchey_trace.web.django.PitcheyRouteMiddleware"
    load = module.BaseHandler.load_middleware

    @functools.wraps(load)
    def load_middleware(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _safety.guard("auto.django"):
            from django.conf import settings

            current = list(settings.MIDDLEWARE)
            if route_middleware not in current:
                settings.MIDDLEWARE = [route_middleware, *current]
        return load(self, *args, **kwargs)

    module.BaseHandler.load_middleware = load_middleware


# Django's handlers are wrapped in the tracing middleware, unless the program already wrapped
# them (its middleware's request is current by the time Django's handler runs).
def _django_wsgi(module: ModuleType) -> None:
    from pitchey_trace.web import WSGITracingMiddleware
    from pitchey_trace.web._common import REQUEST

    call = module.WSGIHandler.__call__

    @functools.wraps(call)
    def __call__(self: Any, environ: Any, start_response: Any) -> Any:
        if REQUEST.get() is not None:
            return call(self, environ, start_response)
        traced = self.__dict__.get("_pitchey_traced")
        if traced is None:
            traced = self._pitchey_traced = WSGITracingMiddleware(functools.partial(call, self))
        return traced(environ, start_response)

    module.WSGIHandler.__call__ = __call__


def _django_asgi(module: ModuleType) -> None:
    from pitchey_trace.web import ASGITracingMiddleware
    from pitchey_trace.web._common import REQUEST

    call = module.ASGIHandler.__call__

    @functools.wraps(call)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> Any:
        if REQUEST.get() is not None:
            return await call(self, scope, receive, send)
        traced = self.__dict__.get("_pitchey_traced")
        if traced is None:
            traced = self._pitchey_traced = ASGITracingMiddleware(functools.partial(call, self))
        return await traced(scope, receive, send)

    module.ASGIHandler.__call__ = __call__


def _instrument(conn: Any) -> None:
    from pitchey_trace.db import instrument

    with _safety.guard("auto.db"):
        instrument(conn)


def _psycopg(module: ModuleType) -> None:
    sync_cls, async_cls = module.Connection, module.AsyncConnection
    # classmethods (psycopg_pool calls cls.connect): called through their descriptors, not
    # their __func__, so a wrapper already there (OpenTelemetry's PsycopgInstrumentor, a wrapt
    # proxy of the classmethod) still runs; its __func__ was the bare function beneath it
    sync_orig = sync_cls.__dict__["connect"]
    async_orig = async_cls.__dict__["connect"]

    @functools.wraps(getattr(sync_orig, "__func__", sync_orig))
    def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        conn = sync_orig.__get__(None, cls)(*args, **kwargs)
        _instrument(conn)
        return conn

    @functools.wraps(getattr(async_orig, "__func__", async_orig))
    async def aconnect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        conn = await async_orig.__get__(None, cls)(*args, **kwargs)
        _instrument(conn)
        return conn

    sync_cls.connect = classmethod(connect)
    async_cls.connect = classmethod(aconnect)
    setattr(module, "connect", sync_cls.connect)  # noqa: B010  (psycopg.connect is the bound classmethod)


def _psycopg2_factory() -> Any:
    """The connection class to connect with when the program names none (None: leave it)."""
    try:
        from pitchey_trace.db._psycopg2 import connection
    except Exception as exc:
        _safety.report("auto.db", exc)
        return None
    return connection


def _psycopg2(module: ModuleType) -> None:
    original = module.connect

    @functools.wraps(original)
    def connect(*args: Any, **kwargs: Any) -> Any:
        # psycopg2's C connection type takes no attributes: without a factory of the program's
        # own, connect with a Python subclass of it, so that commit() / rollback() / `with conn:`
        # and 2PC are traced too. (connect(dsn, connection_factory, cursor_factory, **kwargs))
        given = args[1] if len(args) > 1 else kwargs.get("connection_factory")
        factory = _psycopg2_factory() if given is None else None
        if factory is not None:
            if len(args) > 1:
                args = (args[0], factory, *args[2:])
            else:
                kwargs["connection_factory"] = factory
        conn = original(*args, **kwargs)
        _instrument(conn)
        return conn

    setattr(module, "connect", connect)  # noqa: B010


def _asyncpg(module: ModuleType) -> None:
    import asyncpg.connection

    original = asyncpg.connection.connect

    @functools.wraps(original)
    async def connect(*args: Any, **kwargs: Any) -> Any:
        conn = await original(*args, **kwargs)
        _instrument(conn)
        return conn

    # what a pool calls (looked up when the pool is made), and the package's name for it
    setattr(asyncpg.connection, "connect", connect)  # noqa: B010
    setattr(module, "connect", connect)  # noqa: B010


def _redis(_: ModuleType) -> None:
    from pitchey_trace.redis import instrument_redis

    instrument_redis()


def _botocore(_: ModuleType) -> None:
    from pitchey_trace.botocore import instrument_botocore

    instrument_botocore()


def _grpc(_: ModuleType) -> None:
    from pitchey_trace.grpc import instrument_grpc

    instrument_grpc()


def _celery(_: ModuleType) -> None:
    from pitchey_trace.celery import instrument_celery

    instrument_celery()


# One library each: a program that imports only pika never imports aio-pika for it.
def _pika(_: ModuleType) -> None:
    from pitchey_trace import amqp

    amqp._instrument_pika()


def _aio_pika(_: ModuleType) -> None:
    from pitchey_trace import amqp

    amqp._instrument_aio_pika()


def _threading(_: ModuleType) -> None:
    from pitchey_trace.threads import instrument_threads

    instrument_threads()


def _multiprocessing(_: ModuleType) -> None:
    from pitchey_trace._mp import instrument_processes

    instrument_processes()


def _gevent(_: ModuleType) -> None:
    from pitchey_trace._gevent import instrument_gevent

    instrument_gevent()


def _level(text: str, variable: str) -> int | str:
    """A logging level from ``variable``'s value: a number, or a level name (any case)."""
    import logging

    text = text.strip().upper()
    if text.isdigit():
        return int(text)
    if not isinstance(logging.getLevelName(text), int):
        raise ConfigurationError(
            f"{variable}: unknown log level {text!r}; expected a level name "
            "(DEBUG, INFO, WARNING, ERROR, CRITICAL) or number"
        )
    return text


def log_event_level() -> int | str:
    """The least level of the log records added to the current span as ``log`` events, from
    ``PITCHEY_TRACE_LOG_EVENT_LEVEL`` (a level name or number; default WARNING)."""
    given = os.environ.get("PITCHEY_TRACE_LOG_EVENT_LEVEL", "").strip()
    return _level(given, "PITCHEY_TRACE_LOG_EVENT_LEVEL") if given else "WARNING"


def export_logs_level() -> int | str | None:
    """The level from which the application's logs are shipped (``export_logs``), from
    ``PITCHEY_TRACE_EXPORT_LOGS`` (a level name or number; ``off``), else INFO when
    ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED`` is true; None: not shipped."""
    given = os.environ.get("PITCHEY_TRACE_EXPORT_LOGS", "").strip()
    if given:
        if given.lower() in ("off", "false", "0", "none"):
            return None
        return _level(given, "PITCHEY_TRACE_EXPORT_LOGS")
    from pitchey_trace._config import _otel_env_bool  # (only "true" is true; a typo is said once)

    return "INFO" if _otel_env_bool("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED") else None


def _logging(_: ModuleType) -> None:
    from pitchey_trace.web.logs import export_logs, instrument_logging

    # Each variable on its own: a bad one is logged (once) and only its part is left off.
    try:
        instrument_logging(log_event_level())
    except ConfigurationError as exc:
        _safety.warn_once("env.PITCHEY_TRACE_LOG_EVENT_LEVEL", "pitchey_trace: %s", exc)
    try:
        level = export_logs_level()
    except ConfigurationError as exc:
        _safety.warn_once("env.PITCHEY_TRACE_EXPORT_LOGS", "pitchey_trace: %s", exc)
        level = None
    if level is not None:
        export_logs(level)


#: library -> the (module whose import triggers it, what is done with that module) pairs
SUPPORTED: dict[str, tuple[tuple[str, Hook], ...]] = {
    "httpx": (("httpx", _httpx),),
    "requests": (("requests", _requests),),
    "urllib": (("urllib.request", _urllib),),
    "urllib3": (("urllib3", _urllib3),),
    "aiohttp": (("aiohttp.web", _aiohttp),),
    "flask": (("flask", _flask),),
    "starlette": (("starlette.applications", _starlette), ("fastapi.applications", _fastapi)),
    "django": (
        ("django.core.handlers.base", _django_middleware),
        ("django.core.handlers.wsgi", _django_wsgi),
        ("django.core.handlers.asgi", _django_asgi),
    ),
    "psycopg": (("psycopg", _psycopg),),
    "psycopg2": (("psycopg2", _psycopg2),),
    "asyncpg": (("asyncpg", _asyncpg),),
    "redis": (("redis", _redis),),
    "botocore": (("botocore.client", _botocore),),
    "grpc": (("grpc", _grpc),),
    "celery": (("celery", _celery),),
    "pika": (("pika", _pika),),
    "aio_pika": (("aio_pika", _aio_pika),),
    "logging": (("logging", _logging),),
    # (one library: carrying the current span into threads and child processes)
    "threading": (
        ("threading", _threading),
        ("multiprocessing.process", _multiprocessing),
        ("gevent", _gevent),  # greenlets spawned in a span run under it
    ),
}


# -- post-import hooks ---------------------------------------------------------------------------
class _Loader(importlib.abc.Loader):
    """The real loader, then the waiting instrumentation (the module is put back on its own
    loader afterwards, so nothing of ours stays visible)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None:
            spec.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        # A hook runs before the import system binds a submodule on its package: hooks use the
        # module they are given, or importlib.import_module(name), never ``package.submodule``.
        _imported(module.__name__, module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self.loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _imported(module_name: str, module: ModuleType) -> None:
    with _lock:
        waiting = _waiting.pop(module_name, [])
    for library, hook in waiting:
        _apply(library, module_name, hook, module)


def _apply(library: str, module_name: str, hook: Hook, module: ModuleType) -> None:
    with _lock:
        if (library, module_name) in _done:
            return
        _done.add((library, module_name))
    try:
        hook(module)
    except Exception as exc:
        _done.discard((library, module_name))
        _safety.report(f"auto.{library}", exc)


def instrumented() -> frozenset[str]:
    """The libraries :func:`instrument_all` has instrumented in this process so far."""
    return frozenset(library for library, _ in _done)


def _excluded(exclude: Sequence[str] | str) -> set[str]:
    """The libraries to leave alone: ``PITCHEY_TRACE_AUTO_EXCLUDE`` and ``exclude``."""
    if isinstance(exclude, str):  # (not its letters: "redis" is one library)
        exclude = exclude.split(",")
    skipped: set[str] = set()
    for where, names in (
        ("PITCHEY_TRACE_AUTO_EXCLUDE: ", os.environ.get("PITCHEY_TRACE_AUTO_EXCLUDE", "").split(",")),
        ("", exclude),
    ):
        given = {name.strip().lower() for name in names}
        given = {"starlette" if name == "fastapi" else name for name in given if name}
        unknown = given - set(SUPPORTED)
        if unknown:
            raise ConfigurationError(
                f"{where}unknown libraries {sorted(unknown)}; known: {', '.join(SUPPORTED)}"
            )
        skipped |= given
    return skipped


def instrument_all(*, exclude: Sequence[str] | str = (), configure: bool = True) -> None:
    """Instrument every supported library, now or when it is imported (see the module doc).

    Args:
        exclude: libraries to leave alone (added to ``PITCHEY_TRACE_AUTO_EXCLUDE``): names, or
            one comma-separated text as in the variable (``"redis,celery"``).
        configure: call :func:`pitchey_trace.configure` with the environment's settings when
            tracing is not configured yet.

    Idempotent. Raises ``ConfigurationError`` (a ``ValueError``) for a library name it does
    not know, and when ``configure()`` refuses the environment.
    """
    global _finder
    skipped = _excluded(exclude)
    if configure:
        from pitchey_trace import _config

        if not _config.is_configured():
            _config.configure()
    ready: list[tuple[str, str, Hook, ModuleType]] = []
    with _lock:
        for library, hooks in SUPPORTED.items():
            for module_name, hook in hooks:
                if library in skipped or (library, module_name) in _done:
                    continue
                module = sys.modules.get(module_name)
                waiting = _waiting.setdefault(module_name, [])
                if module is not None:
                    ready.append((library, module_name, hook, module))
                elif (library, hook) not in waiting:
                    waiting.append((library, hook))
                if not waiting:
                    del _waiting[module_name]
        if _waiting and _finder is None:
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)
    for library, module_name, hook, module in ready:
        _apply(library, module_name, hook, module)


def _check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigurationError`` (a ``ValueError``) with the message for what
    :func:`instrument_all` would refuse in a process started with ``environ`` (default: this
    one's): the variables ``configure()`` reads, ``PITCHEY_TRACE_AUTO_EXCLUDE``,
    ``PITCHEY_TRACE_LOG_EVENT_LEVEL`` and ``PITCHEY_TRACE_EXPORT_LOGS``. What ``pitchey-trace
    run`` checks before it starts the program, which would otherwise run untraced.

    Leaves this process as it was: its environment, and its tracing (``configure()`` is tried
    only when it was not called yet, then shut down; its warnings are left to the program)."""
    from pitchey_trace import _config

    saved = None
    if environ is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    quiet, _safety.logger.disabled = _safety.logger.disabled, True
    try:
        _excluded(())
        log_event_level()
        export_logs_level()
        if not _config.is_configured():
            # (the variable checked on its own: no SIGTERM handler is installed here)
            _config._env_bool("PITCHEY_TRACE_FLUSH_ON_SIGTERM")
            _config.configure(flush_on_sigterm=False)
            _config.shutdown(1.0)
    finally:
        _safety.logger.disabled = quiet
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)


def _start_from_environment() -> None:
    """What ``pitchey-trace run``'s ``sitecustomize`` calls in the new interpreter."""
    try:
        instrument_all()
    except ConfigurationError as exc:
        # A bad variable (set after the command checked them, or in a child's environment):
        # one clear line, as the command would have said it; the program runs untraced.
        sys.stderr.write(f"pitchey-trace run: tracing not started: {exc}\n")
    except Exception as exc:  # never stop the application
        _safety.report("auto.start", exc)
