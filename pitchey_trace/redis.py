"""Redis: every command a ``redis-py`` client sends is a CLIENT span (extra ``redis``).

    from pitchey_trace.redis import instrument_redis
    instrument_redis()          # sync and asyncio clients, cluster clients, pipelines, Pub/Sub

A command is a span named after it (``GET``, ``HSET``) with ``db.system.name=redis``,
``db.operation.name``, ``db.namespace`` (the database number), ``server.address`` /
``server.port`` and ``db.query.text``: the command with every argument replaced by ``?``
(``SET ? ?``, at most :data:`MAX_TEXT_ARGUMENTS` of them, then ``...``), because keys and values
often carry personal data; ``capture_keys=True`` also records the key (the first argument, and
never for commands whose first argument is no key: ``AUTH``, ``EVAL``, ``ECHO``...) as
``db.redis.key``, which goes through the sanitizer like any attribute. A pipeline is one
``PIPELINE`` span (``MULTI`` for a transaction) with ``db.operation.batch.size`` (from two
commands: the conventions' batches) and the commands' texts (``INCRBY ? ?; GET ?``); in a
transaction with ``WATCH`` (``r.transaction(fn, *keys)``), ``WATCH`` and the commands sent before ``multi()``
are spans of their own. Errors (``WRONGTYPE``, connection
failures) are recorded and re-raised unchanged: ``db.response.status_code`` is a server error's
prefix (``ERR``, ``WRONGTYPE``); the message keeps its first line, without the arguments the
server quotes (``unknown command 'X', with args beginning with: ?``) or redis-py's pipeline
error shows. Nothing is recorded under
:func:`pitchey_trace.suppress_tracing` or on the SDK's own threads.

Cluster clients (``redis.cluster.RedisCluster``, ``redis.asyncio.cluster.RedisCluster``, their
pipelines, transactions with ``WATCH`` and ``pubsub()``) give the same spans without
``server.address`` / ``server.port``
(redis-py picks the node per command, from the key's slot, replicas and redirections, and does
not say which) and without ``db.namespace`` (always 0). The commands redis-py sends to the nodes
on a cluster command's behalf (``COMMAND GETKEYS``, a topology refresh after ``MOVED``, retries
of a pipeline's commands) belong to its span: one command, one span.

Pub/Sub: the commands a ``PubSub`` object sends (``SUBSCRIBE``, ``PSUBSCRIBE``, ``UNSUBSCRIBE``,
``PING``) are spans like any other, channel names shown as ``?``; the span times the sending only,
the server's confirmation arrives as a message. Received messages (``get_message``, ``listen``)
make no spans: a subscriber would emit one per message, unbounded and with no caller to attach
to. ``PUBLISH`` is an ordinary command of the publishing client.
"""

from __future__ import annotations

import functools
import importlib
import re
import traceback
from contextvars import ContextVar
from types import FunctionType, ModuleType
from typing import Any

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable

try:
    import redis.asyncio.client as _async_client
    import redis.client as _sync_client
    from redis.exceptions import ResponseError as _ResponseError
except ImportError as _exc:
    raise IntegrationUnavailable("pitchey_trace.redis", "redis") from _exc

__all__ = ["instrument_redis", "uninstrument_redis"]


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # an old or trimmed redis-py: plain clients are traced all the same
        return None


_sync_cluster = _optional_module("redis.cluster")
_async_cluster = _optional_module("redis.asyncio.cluster")

_CLIENT = SpanKind.CLIENT
_start_span = get_tracer().start_span
_WRAPPED = "__pitchey_trace_wrapped__"
#: Commands shown in a pipeline span's text (the count is always exact).
MAX_PIPELINE_TEXT = 50
#: Placeholders shown in a command's text; more arguments show as ``...`` (an MSET of 100,000
#: pairs would otherwise build, and cache, a 400 kB text).
MAX_TEXT_ARGUMENTS = 100
_patched: list[tuple[type, str, Any]] = []
_capture_keys = False
_OTEL_REDIS = "opentelemetry.instrumentation.redis"


def _is_otel(method: Any) -> bool:
    """Whether ``method`` (a class's or client's attribute) is OpenTelemetry's redis wrapper (a
    wrapt wrapper whose wrapper function is its), under pitchey's own or not."""
    for candidate in (method, getattr(method, _WRAPPED, None)):
        wrapper = getattr(candidate, "_self_wrapper", None)
        if str(getattr(wrapper, "__module__", "")).startswith(_OTEL_REDIS):
            return True
    return False


def _warn_doubled() -> None:
    _safety.warn_once(
        "otel.duplicate_instrumentation.redis",
        "pitchey_trace: both OpenTelemetry's redis instrumentation and "
        "pitchey_trace.redis's instrument_redis() are on: each command is recorded as two "
        "client spans; turn one of them off",
    )


def _otel_on(client: Any) -> bool:
    """Whether OpenTelemetry's redis instrumentation wraps ``client``'s commands too: its
    ``instrument()`` (a wrapper on the class, above or below pitchey's) or its
    ``instrument_client()`` (a flag it sets on the client)."""
    if getattr(client, "_is_instrumented_by_opentelemetry", False) is True:
        return True
    base = _async_client.Redis if isinstance(client, _async_client.Redis) else _sync_client.Redis
    return _is_otel(base.__dict__.get("execute_command"))


def _name(command: Any) -> str:
    if isinstance(command, bytes):
        command = command.decode("latin-1")
    return str(command).upper()


def _split(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments as redis-py sends them: a command given with arguments in one string
    (``execute_command("SET key value")``, ``"AUTH password"``) is split on whitespace, so that
    those arguments are hidden like any other."""
    first = args[0] if args else None
    if isinstance(first, (str, bytes)) and first.split(maxsplit=1) != [first]:
        words = first.split()
        if words:
            return (*words, *args[1:])
    return args


def _text(args: tuple[Any, ...]) -> str:
    """``SET ? ?``; multi-word commands such as ``CLIENT SETNAME`` keep their second word."""
    args = _split(args)
    if not args:
        return ""
    name = _name(args[0])
    rest = args[1:]
    words = [name]
    if " " not in name and rest and name in _SUBCOMMANDS:
        words.append(_name(rest[0]))
        rest = rest[1:]
    shown = min(len(rest), MAX_TEXT_ARGUMENTS)
    words.extend("?" * shown)
    if len(rest) > shown:
        words.append("...")
    return " ".join(words)


def _key(args: tuple[Any, ...]) -> str | None:
    args = _split(args)
    if len(args) < 2 or _name(args[0]) in _SUBCOMMANDS or _name(args[0]) in _KEYLESS:
        return None
    key = args[1]
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


# Commands whose first argument is a sub-command, not a key.
_SUBCOMMANDS = frozenset(
    (
        *("ACL", "CLIENT", "CONFIG", "CLUSTER", "COMMAND", "DEBUG", "FUNCTION", "LATENCY", "MEMORY"),
        *("MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO"),
    )
)


# Commands whose first argument is not a key: a password (AUTH), a script (EVAL), a message
# (ECHO, PING), a host (MIGRATE), a number of keys (ZUNION), a keyword (XREAD, BITOP)...
# capture_keys must not record it.
_KEYLESS = frozenset(
    (
        *("AUTH", "HELLO", "MIGRATE", "ECHO", "PING", "SELECT", "SWAPDB", "WAIT", "WAITAOF"),
        *("EVAL", "EVAL_RO", "EVALSHA", "EVALSHA_RO", "FCALL", "FCALL_RO", "BITOP", "SCAN"),
        *("XREAD", "XREADGROUP", "ZUNION", "ZINTER", "ZDIFF", "ZINTERCARD", "SINTERCARD"),
        *("LMPOP", "BLMPOP", "ZMPOP", "BZMPOP", "FLUSHDB", "FLUSHALL", "SHUTDOWN", "FAILOVER"),
        *("REPLICAOF", "SLAVEOF", "QUIT", "RESET"),
    )
)


def _cacheable(command: Any) -> bool:
    """Whether a command's text depends only on the command and its number of arguments: not
    for a bare sub-command container (``CLIENT``: the text shows its first argument), nor for a
    command string holding arguments (``"SET key value"``: those would stay in memory, one
    entry each). ``"CONFIG GET"`` as redis-py sends it is."""
    words = _split((command,))
    if len(words) == 1:
        return _name(command) not in _SUBCOMMANDS
    return len(words) == 2 and _name(words[0]) in _SUBCOMMANDS


def _base_attributes(client: Any) -> dict[str, Any]:
    """The attributes every span of ``client``'s connection pool shares (computed once per pool)."""
    pool = client.connection_pool
    cached: dict[str, Any] | None = getattr(pool, "_pitchey_trace_attrs", None)
    if cached is not None:
        return cached
    attrs: dict[str, Any] = {"db.system.name": "redis"}
    # Once per pool, here rather than per command: OpenTelemetry's instrument() may have come
    # after instrument_redis() (its wrapper above ours), or instrument_client() on this client.
    try:
        if _otel_on(client):
            _warn_doubled()
    except Exception as exc:
        _safety.report("redis.start", exc)
    try:
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            attrs["server.address"] = kwargs["path"]
        else:
            attrs["server.address"] = kwargs.get("host", "localhost")
            attrs["server.port"] = int(kwargs.get("port", 6379))
        attrs["db.namespace"] = str(kwargs.get("db", 0))
    except Exception:  # noqa: S110  (a pool of another kind, e.g. a cluster's: no address)
        pass
    try:
        pool._pitchey_trace_attrs = attrs
    except Exception:  # noqa: S110  (a pool that takes no attributes: computed each time)
        pass
    return attrs


# (command, number of arguments) -> db.query.text; bounded, commands are few
_texts: dict[tuple[Any, int], str] = {}
_MAX_TEXTS = 1024


def _start_command(client: Any, args: tuple[Any, ...], base: dict[str, Any] | None = None) -> AnySpan | None:
    if CURRENT.get() is SUPPRESSED or not args:
        return None
    try:
        command = args[0]
        # (every length past the placeholders shown has the same text: one entry)
        text_key = (command, min(len(args), MAX_TEXT_ARGUMENTS + 2))
        text = _texts.get(text_key)
        if text is None:
            text = _text(args)
            if _cacheable(command):
                if len(_texts) >= _MAX_TEXTS:
                    _texts.clear()
                _texts[text_key] = text
        name = text.partition(" ")[0]
        if base is None:
            base = _base_attributes(client)
        attrs = {**base, "db.operation.name": name, "db.query.text": text}
        if _capture_keys:
            key = _key(args)
            if key is not None:
                attrs["db.redis.key"] = key
        return _start_span(name, attrs, _CLIENT)
    except Exception as exc:
        _safety.report("redis.start", exc)
        return None


def _is_transaction(pipeline: Any) -> bool:
    """Whether ``execute`` wraps the queue in MULTI/EXEC, as redis-py decides it."""
    # redis.asyncio keeps the flag in is_transaction: its .transaction is Redis.transaction, a
    # method (always truthy). Checked first: a pipeline class may derive from both kinds.
    if isinstance(pipeline, _async_client.Pipeline):
        flag = getattr(pipeline, "is_transaction", False)
    else:
        flag = getattr(pipeline, "transaction", False)
    return flag is True or getattr(pipeline, "explicit_transaction", False) is True


def _start_pipeline(pipeline: Any) -> AnySpan | None:
    if CURRENT.get() is SUPPRESSED:
        return None
    try:
        stack = pipeline.command_stack
        if not stack:
            return None
        operation = "MULTI" if _is_transaction(pipeline) else "PIPELINE"
        attrs = {**_base_attributes(pipeline), "db.operation.name": operation}
        if len(stack) > 1:  # (the conventions: a batch has two or more, its size is never 1)
            attrs["db.operation.batch.size"] = len(stack)
        attrs["db.query.text"] = "; ".join(_text(tuple(args)) for args, _ in stack[:MAX_PIPELINE_TEXT])
        return _start_span(operation, attrs, _CLIENT)
    except Exception as exc:
        _safety.report("redis.start", exc)
        return None


# A cluster span names no node (redis-py picks it per command and does not say which) and no
# database (a cluster has only database 0).
_CLUSTER_ATTRIBUTES: dict[str, Any] = {"db.system.name": "redis"}


def _start_cluster_command(client: Any, args: tuple[Any, ...]) -> AnySpan | None:
    # A cluster pipeline keeps RedisCluster.execute_command bound (parent_execute_command):
    # after uninstrument_redis() the wrapper may still be called, and must then record nothing.
    if not _patched:
        return None
    return _start_command(client, args, _CLUSTER_ATTRIBUTES)


def _cluster_queue(pipeline: Any) -> tuple[list[Any], bool]:
    """The queued commands (objects with ``.args``) of a cluster pipeline, and whether it is a
    transaction."""
    strategy = getattr(pipeline, "_execution_strategy", None)
    if strategy is not None:  # redis-py >= 6: the queue lives in the execution strategy
        return strategy._command_queue, type(strategy).__name__ == "TransactionStrategy"
    stack = getattr(pipeline, "command_stack", None)  # redis-py 5, sync
    if stack is None:
        stack = pipeline._command_stack  # redis-py 5, asyncio
    return stack, False


def _start_cluster_pipeline(pipeline: Any) -> AnySpan | None:
    if CURRENT.get() is SUPPRESSED or not _patched:
        return None
    try:
        queue, transaction = _cluster_queue(pipeline)
        if not queue:
            return None
        operation = "MULTI" if transaction else "PIPELINE"
        attrs = {**_CLUSTER_ATTRIBUTES, "db.operation.name": operation}
        if len(queue) > 1:
            attrs["db.operation.batch.size"] = len(queue)
        attrs["db.query.text"] = "; ".join(_text(tuple(c.args)) for c in queue[:MAX_PIPELINE_TEXT])
        return _start_span(operation, attrs, _CLIENT)
    except Exception as exc:
        _safety.report("redis.start", exc)
        return None


# redis-server quotes the arguments it echoes ("unknown command 'X', with args beginning with:
# 'alice@example.com' 's3cr3t'"); redis-py names a failed pipeline command with its arguments.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PIPELINE_ERROR = re.compile(r"Command # (\d+) \((\S*).*\) of pipeline caused error: ", re.DOTALL)
_ERROR_PREFIX = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
# (redis.asyncio shows the error's args tuple there: "('WRONGTYPE Operation ...',)")
_ARGS_TUPLE = re.compile(r"\((['\"])(.*)\1,\)", re.DOTALL)


def _error_info(exc: Exception) -> tuple[str | None, str]:
    """(the Redis error prefix, for a server's error reply; the message without any value of
    the command's). Only the first line: a script's error may go on with its source."""
    message = str(exc)
    annotated = _PIPELINE_ERROR.match(message)
    if annotated is not None:
        message = message[annotated.end() :]
        args = _ARGS_TUPLE.fullmatch(message)
        if args is not None:
            message = args[2]
    message = _QUOTED.sub("?", message.strip().split("\n", 1)[0])[:512]
    prefix = None
    if isinstance(exc, _ResponseError):
        code = getattr(exc, "status_code", None)  # (redis-py >= 8: the prefix it took off)
        if isinstance(code, str) and _ERROR_PREFIX.fullmatch(code):
            prefix = code
        else:
            first = message.partition(" ")[0]
            prefix = first if _ERROR_PREFIX.fullmatch(first) else None
    if annotated is not None:
        message = f"Command # {annotated[1]} ({annotated[2]}) of pipeline caused error: {message}"
    return prefix, message


def _record_error(span: AnySpan, exc: Exception) -> None:
    prefix, message = _error_info(exc)
    type_name = type(exc).__qualname__
    span.set_attribute("error.type", type_name)
    if prefix is not None:
        span.set_attribute("db.response.status_code", prefix)
    # The exception's own message (and the traceback's last line) would repeat the values.
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__, limit=-32)))
    stack = f"Traceback (most recent call last):\n{frames}{type(exc).__module__}.{type_name}: {message}"
    span.record_exception(exc, {"exception.message": message, "exception.stacktrace": stack[-8192:]})
    span.set_status("error", f"{type(exc).__name__}: {message}")


def _end(span: AnySpan, exc: BaseException | None) -> None:
    try:
        if exc is not None and isinstance(exc, Exception):
            _record_error(span, exc)
        span.end()
    except Exception as internal:
        _safety.report("redis.end", internal)


def _unbound(original: Any) -> Any:
    """``original`` (a class's attribute) as a function called with the instance first: itself
    for a plain function; else bound first. Another instrumentation's wrapper there (OpenTelemetry's
    wrapt wrapper) called unbound would see no instance and take the client for the command's
    first argument (its span named after the client's repr)."""
    # (type(), not isinstance(): a wrapt proxy passes for the function it wraps)
    if type(original) is FunctionType or not hasattr(original, "__get__"):
        return original

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call


def _wrap_sync(original: Any, start: Any) -> Any:
    call = _unbound(original)

    @functools.wraps(original)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = start(self, args) if start is _start_command else start(self)
        if span is None:
            return call(self, *args, **kwargs)
        try:
            result = call(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        try:
            span.end()
        except Exception as internal:
            _safety.report("redis.end", internal)
        return result

    setattr(traced, _WRAPPED, original)
    return traced


def _wrap_async(original: Any, start: Any) -> Any:
    call = _unbound(original)

    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = start(self, args) if start is _start_command else start(self)
        if span is None:
            return await call(self, *args, **kwargs)
        try:
            result = await call(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        _end(span, None)
        return result

    setattr(traced, _WRAPPED, original)
    return traced


def _wrap_cluster_sync(original: Any, start: Any) -> Any:
    """:func:`_wrap_sync` for cluster clients: while the span is open, the commands redis-py
    sends through per-node ``Redis`` clients (``COMMAND GETKEYS``, ``CLUSTER SLOTS``, a
    pipeline's retried commands) record nothing, so one command stays one span."""
    command = start is _start_cluster_command
    call = _unbound(original)

    @functools.wraps(original)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = start(self, args) if command else start(self)
        if span is None:
            return call(self, *args, **kwargs)
        token = CURRENT.set(SUPPRESSED)
        try:
            result = call(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        finally:
            CURRENT.reset(token)
        _end(span, None)
        return result

    setattr(traced, _WRAPPED, original)
    return traced


def _wrap_cluster_async(original: Any, start: Any) -> Any:
    """:func:`_wrap_cluster_sync` for asyncio cluster clients (tasks they start inherit the
    suppression with the context)."""
    command = start is _start_cluster_command
    call = _unbound(original)

    @functools.wraps(original)
    async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = start(self, args) if command else start(self)
        if span is None:
            return await call(self, *args, **kwargs)
        token = CURRENT.set(SUPPRESSED)
        try:
            result = await call(self, *args, **kwargs)
        except BaseException as exc:
            _end(span, exc)
            raise
        finally:
            CURRENT.reset(token)
        _end(span, None)
        return result

    setattr(traced, _WRAPPED, original)
    return traced


# A cluster transaction in WATCH mode (``transaction(fn, *keys)``, ``watch()`` on a
# ``pipeline(transaction=True)``, in a redis-py that has cluster transactions): its
# TransactionStrategy sends WATCH and the commands after it until multi() at once, through its
# private ``_immediate_execute_command`` (on the watching connection, not through
# execute_command), and queues the others. Both kinds first find the command's slot, which for
# some commands (ZUNIONSTORE, EVAL) asks a node (COMMAND GETKEYS) through a node's Redis
# client. So the sync strategy's execute_command records nothing itself and traces nothing
# inside, keeping here the span current where the command was issued; a command sent at once
# starts its span under that one. (The asyncio strategy finds the slot on node connections of
# its own, which are not traced, and returns the coroutine of ``_immediate_execute_command``,
# which runs where the caller awaits it: wrapped as any asyncio cluster command.)
_ISSUED_UNDER: ContextVar[tuple[AnySpan | None] | None] = ContextVar(
    "pitchey_trace_redis_issued_under", default=None
)


def _wrap_transaction_command(original: Any, start: Any) -> Any:
    call = _unbound(original)

    @functools.wraps(original)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        current = CURRENT.get()
        if current is SUPPRESSED or not _patched:
            return call(self, *args, **kwargs)
        token = CURRENT.set(SUPPRESSED)
        issued = _ISSUED_UNDER.set((current,))
        try:
            return call(self, *args, **kwargs)
        finally:
            _ISSUED_UNDER.reset(issued)
            CURRENT.reset(token)

    setattr(traced, _WRAPPED, original)
    return traced


def _wrap_watched_sync(original: Any, start: Any) -> Any:
    """:func:`_wrap_cluster_sync` for a command a sync cluster transaction sends at once: its
    span starts under the span current where it was issued."""
    inner = _wrap_cluster_sync(original, start)

    @functools.wraps(original)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        issued = _ISSUED_UNDER.get()
        if issued is None:  # (not called through the strategy's execute_command)
            return inner(self, *args, **kwargs)
        token = CURRENT.set(issued[0])
        try:
            return inner(self, *args, **kwargs)
        finally:
            CURRENT.reset(token)

    setattr(traced, _WRAPPED, original)
    return traced


def _cluster_targets() -> list[tuple[type, str, Any, Any]]:
    targets: list[tuple[type, str, Any, Any]] = []
    for module, wrap in ((_sync_cluster, _wrap_cluster_sync), (_async_cluster, _wrap_cluster_async)):
        if module is None:
            continue
        sync = module is _sync_cluster
        watched = _wrap_watched_sync if sync else wrap
        entries: list[tuple[str, str, Any, Any]] = [
            ("RedisCluster", "execute_command", wrap, _start_cluster_command),
            ("ClusterPipeline", "execute", wrap, _start_cluster_pipeline),
            ("ClusterPubSub", "execute_command", wrap, _start_cluster_command),
            # WATCH mode, see _ISSUED_UNDER (no TransactionStrategy: no cluster transactions)
            ("TransactionStrategy", "_immediate_execute_command", watched, _start_cluster_command),
        ]
        if sync:
            entries.append(("TransactionStrategy", "execute_command", _wrap_transaction_command, None))
        for class_name, name, wrapper, start in entries:
            owner = getattr(module, class_name, None)
            # Only a method the class defines itself: patching an inherited one would shadow
            # the base class's (PubSub's) patched method and give two spans per command.
            if isinstance(owner, type) and name in owner.__dict__:
                targets.append((owner, name, wrapper, start))
    return targets


def instrument_redis(*, capture_keys: bool = False) -> None:
    """Trace every command of ``redis.Redis``, ``redis.asyncio.Redis`` and cluster clients
    (existing ones too), their pipelines and Pub/Sub objects. Idempotent; ``capture_keys`` may
    be changed by calling it again.

    With OpenTelemetry's redis instrumentation on too, each command is two client spans: a
    warning says so once (counted as ``misuse.otel.duplicate_instrumentation.redis``), checked
    here and once per connection pool at its first command."""
    global _capture_keys
    _capture_keys = bool(capture_keys)
    if _patched:
        return
    targets = (
        (_sync_client.Redis, "execute_command", _wrap_sync, _start_command),
        (_sync_client.Pipeline, "execute", _wrap_sync, _start_pipeline),
        (_async_client.Redis, "execute_command", _wrap_async, _start_command),
        (_async_client.Pipeline, "execute", _wrap_async, _start_pipeline),
        # WATCH, and the commands sent after it until MULTI (r.transaction(fn, *keys)): sent
        # at once, not queued, and not through Redis.execute_command (Pipeline overrides it)
        (_sync_client.Pipeline, "immediate_execute_command", _wrap_sync, _start_command),
        (_async_client.Pipeline, "immediate_execute_command", _wrap_async, _start_command),
        (_sync_client.PubSub, "execute_command", _wrap_sync, _start_command),
        (_async_client.PubSub, "execute_command", _wrap_async, _start_command),
        *_cluster_targets(),
    )
    doubled = False
    for owner, name, wrap, start in targets:
        original = owner.__dict__[name]
        doubled = doubled or _is_otel(original)  # (OpenTelemetry's instrument() came first)
        setattr(owner, name, wrap(original, start))
        _patched.append((owner, name, original))
    if doubled:
        _warn_doubled()


def uninstrument_redis() -> None:
    """Undo :func:`instrument_redis`."""
    while _patched:
        owner, name, original = _patched.pop()
        setattr(owner, name, original)
