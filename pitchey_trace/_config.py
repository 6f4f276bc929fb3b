"""configure() / shutdown() / force_flush() / stats(), and the environment variables.

Explicit arguments win over the environment; the environment wins over defaults.

=================================  ==========================================================
variable                           meaning
=================================  ==========================================================
``PITCHEY_TRACE_SERVICE``          service name (also ``OTEL_SERVICE_NAME``)
``PITCHEY_TRACE_ENVIRONMENT``      deployment environment (default ``development``)
``PITCHEY_TRACE_SAMPLE_RATE``      head-sampling ratio 0..1 (parent-based, consistent)
``PITCHEY_TRACE_DISABLED``         ``true`` turns tracing off (also ``OTEL_SDK_DISABLED``)
``PITCHEY_TRACE_KEEP_ERRORS``      tail-keep traces with errors (default ``true``)
``PITCHEY_TRACE_SLOW_THRESHOLD_MS`` tail-keep traces with a span this slow (default 1000)
``PITCHEY_TRACE_EXPORTER``         ``console``, ``console-pretty``, ``otlp``, ``zipkin``,
                                   ``archive`` (a local archive in ``PITCHEY_TRACE_ARCHIVE``) or
                                   ``none`` when no exporters are passed
``PITCHEY_TRACE_FLUSH_ON_SIGTERM`` ``true``: SIGTERM exports what is buffered first (see
                                   ``configure(flush_on_sigterm=)``)
``PITCHEY_TRACE_RESOURCE_DETECTION`` ``false``: no detected resource attributes (container,
                                   Kubernetes, cloud, ``service.instance.id``)
``PITCHEY_TRACE_EXPORT_SPOOL_DIR`` the OTLP and Zipkin exporters named by the variables keep
                                   undeliverable requests under ``<dir>/otlp`` / ``<dir>/zipkin``
``OTEL_TRACES_SAMPLER`` / ``_ARG`` OpenTelemetry sampler names (used when no sampler or
                                   sample rate is given)
=================================  ==========================================================

OpenTelemetry's SDK variables are read too, so a service configured for an OpenTelemetry SDK
keeps its settings: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; a comma list;
``otlp`` is configured by the ``OTEL_EXPORTER_OTLP_*`` variables), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_PROPAGATORS``, ``OTEL_BSP_SCHEDULE_DELAY`` / ``_MAX_QUEUE_SIZE`` /
``_MAX_EXPORT_BATCH_SIZE`` and ``OTEL_[SPAN_]ATTRIBUTE_COUNT_LIMIT`` /
``OTEL_SPAN_EVENT_COUNT_LIMIT`` / ``OTEL_SPAN_LINK_COUNT_LIMIT``. A ``PITCHEY_TRACE_*`` variable
wins over its OpenTelemetry counterpart, an argument over both. docs/configuration.md has the
full table.
"""

from __future__ import annotations

import _thread
import atexit
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pitchey_trace import _safety, _stats
from pitchey_trace._batch import (
    DEFAULT_EXPORT_BATCH_SIZE,
    DEFAULT_EXPORTER_QUEUE_SIZE,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SCHEDULE_DELAY_S,
    Pipeline,
    Processor,
)
from pitchey_trace._span import Limits
from pitchey_trace._tail import TailKeeper
from pitchey_trace._tracer import _TRACER
from pitchey_trace._validate import MAX_INT_SETTING, finite, list_of, not_async, positive_int
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.records import CategoryThresholds, Record
from pitchey_trace.sampling import (
    ParentBased,
    Sampler,
    TraceIdRatio,
    bind_service,
    per_trace,
    sampler_from_env,
)

__all__ = ["configure", "force_flush", "is_configured", "shutdown", "stats"]

# Reentrant: pt.shutdown() in a signal handler may interrupt the main thread inside
# configure() or shutdown() (the flush at exit, say), and must not wait for its own thread.
_lock = threading.RLock()
_DEFAULT: Any = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value is not None and value.strip() != "" else None


def _env_bool(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def _otel_env_bool(name: str) -> bool | None:
    """An OpenTelemetry boolean variable, as its specification says: only "true" (any case)
    is true; anything else is false (unexpected values logged once). Never extended to 1/yes/on."""
    value = _env(name)
    if value is None:
        return None
    low = value.lower()
    if low not in ("true", "false"):
        _safety.warn_once(
            f"env.{name}", "pitchey_trace: %s=%r is not true or false; treated as false", name, value
        )
    return low == "true"


_N = TypeVar("_N", int, float)


def _env_number(name: str, kind: type[_N]) -> _N | None:
    value = _env(name)
    if value is None:
        return None
    try:
        # (ASCII digits only: int() and float() also take "1_000" and other scripts' digits)
        if not value.isascii() or "_" in value:
            raise ValueError(value)
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigurationError(f"{name} must be {what}, got {value!r}") from None


def _env_float(name: str) -> float | None:
    return _env_number(name, float)


def _env_int(name: str) -> int | None:
    return _env_number(name, int)


def _int_setting(value: int | None, default: int, *names: str) -> int:
    """An argument, else the first of these variables that is set (a positive integer), else
    the default."""
    if value is not None:
        return value
    for name in names:
        env = _env_int(name)
        if env is not None:
            if not 1 <= env <= MAX_INT_SETTING:
                raise ConfigurationError(
                    f"{name} must be a positive integer (at most {MAX_INT_SETTING}), got {env}"
                )
            return env
    return default


def _resource_from_env() -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,key2=value2``, values percent-encoded), as the
    OpenTelemetry specification reads it: an entry that is not ``key=value`` makes the whole
    variable ignored (with a warning), not half of it applied."""
    raw = _env("OTEL_RESOURCE_ATTRIBUTES")
    out: dict[str, str] = {}
    if raw is None:
        return out
    for item in raw.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        decoded = _percent_decoded(value.strip())
        if not eq or not key or _BAD_KEY.search(key) or decoded is None:
            _safety.warn_once(
                "otel_resource_attributes",
                "OTEL_RESOURCE_ATTRIBUTES: %r is not key=value (a key without spaces or control "
                "characters, a value percent-encoded as UTF-8): the variable is ignored",
                item.strip(),
            )
            return {}
        out[key] = decoded
    return out


# (a key is a W3C baggage token: never spaces or control characters)
_BAD_KEY = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _percent_decoded(value: str) -> str | None:
    """A percent-encoded value decoded; None when it cannot be (``%ZZ``, a lone ``%``, bytes
    that are not UTF-8): the specification has the whole variable discarded then."""
    if _BAD_ESCAPE.search(value):
        return None
    try:
        return urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None


_EXPORTER_NAMES = ("console", "console-pretty", "otlp", "zipkin", "archive", "none")


def _exporters_from_env() -> list[Any]:
    """The exporters named by ``PITCHEY_TRACE_EXPORTER``, else ``OTEL_TRACES_EXPORTER`` (a comma
    list); none when neither is set."""
    variable = "PITCHEY_TRACE_EXPORTER"
    names = _env(variable)
    if names is None:
        variable = "OTEL_TRACES_EXPORTER"
        names = _env(variable)
    out: list[Any] = []
    seen: set[str] = set()
    for raw in (names or "none").split(","):
        name = raw.strip().lower()
        if not name:  # (an empty member: "otlp," or "otlp,,console", as the other lists allow)
            continue
        if name not in _EXPORTER_NAMES:
            raise ConfigurationError(
                f"{variable}: unknown exporter {raw.strip()!r}; known: {', '.join(_EXPORTER_NAMES)}"
            )
        if name in seen or name == "none":
            continue
        seen.add(name)
        spool = _env("PITCHEY_TRACE_EXPORT_SPOOL_DIR")  # (one folder per exporter under it)
        spool_dir = os.path.join(spool, name) if spool else None
        if name == "otlp":
            from pitchey_trace.exporters import OTLPExporter

            out.append(OTLPExporter(spool_dir=spool_dir))  # configured by the OTEL_EXPORTER_OTLP_* variables
        elif name == "archive":
            from pitchey_trace.exporters import LocalArchiveExporter

            out.append(LocalArchiveExporter(_archive_dir(variable)))
        elif name == "zipkin":
            from pitchey_trace.exporters import ZipkinExporter
            from pitchey_trace.exporters.zipkin import DEFAULT_URL

            out.append(
                ZipkinExporter(_env("OTEL_EXPORTER_ZIPKIN_ENDPOINT") or DEFAULT_URL, spool_dir=spool_dir)
            )
        else:
            from pitchey_trace.exporters import ConsoleExporter

            out.append(ConsoleExporter(pretty=name == "console-pretty"))
    return out


def _archive_dir(variable: str) -> str:
    """The directory the ``archive`` exporter name writes to: ``PITCHEY_TRACE_ARCHIVE``, the
    one the ``pitchey-trace`` archive commands read, made absolute (a program that changes its
    working directory keeps writing where it started)."""
    directory = _env("PITCHEY_TRACE_ARCHIVE")
    if directory is None:
        raise ConfigurationError(
            f"{variable}: the archive exporter writes to PITCHEY_TRACE_ARCHIVE (a directory): not set"
        )
    return os.path.abspath(directory)


def _metrics_exporters_from_env() -> list[Any]:
    """``OTEL_METRICS_EXPORTER=otlp``: the rollups go out as OTLP metrics too
    (``OTLPMetricsExporter``, configured by the ``OTEL_EXPORTER_OTLP_[METRICS_]*`` variables).
    Other names belong to an OpenTelemetry metrics SDK the application may run beside this one:
    they are left to it (warned about once), not an error."""
    out: list[Any] = []
    for raw in (_env("OTEL_METRICS_EXPORTER") or "none").split(","):
        name = raw.strip().lower()
        if name == "otlp" and not out:
            from pitchey_trace.exporters import OTLPMetricsExporter

            out.append(OTLPMetricsExporter())
        elif name not in ("otlp", "none", ""):
            _safety.warn_once(
                "otel_metrics_exporter",
                "OTEL_METRICS_EXPORTER=%s: not an exporter of this SDK (ignored)",
                name,
            )
    return out


def _logs_exporters_from_env() -> list[Any]:
    """``OTEL_LOGS_EXPORTER=otlp``: the audit records go out as OTLP log records too
    (``OTLPLogExporter``, configured by the ``OTEL_EXPORTER_OTLP_[LOGS_]*`` variables). Other
    names belong to an OpenTelemetry logs SDK the application may run beside this one."""
    out: list[Any] = []
    for raw in (_env("OTEL_LOGS_EXPORTER") or "none").split(","):
        name = raw.strip().lower()
        if name == "otlp" and not out:
            from pitchey_trace.exporters import OTLPLogExporter

            spool = _env("PITCHEY_TRACE_EXPORT_SPOOL_DIR")
            out.append(OTLPLogExporter(spool_dir=os.path.join(spool, "otlp_logs") if spool else None))
        elif name not in ("otlp", "none", ""):
            _safety.warn_once(
                "otel_logs_exporter", "OTEL_LOGS_EXPORTER=%s: not an exporter of this SDK (ignored)", name
            )
    return out


def _check_resource_detection_env() -> None:
    """``PITCHEY_TRACE_RESOURCE_DETECTION`` parsed as the other switches are, so a typo
    (``flase``) is a ConfigurationError rather than detection silently left on. The value
    itself is read where the resource is built (:func:`pitchey_trace._resource.enabled`)."""
    _env_bool("PITCHEY_TRACE_RESOURCE_DETECTION")


def _propagators_from_env() -> None:
    """Apply ``OTEL_PROPAGATORS`` unless the code chose its propagators (``set_propagators``
    with a list, even the default one). Read again at every configure(): a value applied by an
    earlier call is replaced, or undone when the variable is gone."""
    from pitchey_trace import propagation

    if propagation._chosen_by_code:
        return
    names = _env("OTEL_PROPAGATORS")
    try:
        chosen = None if names is None else propagation.propagators_from_names(names)
    except ValueError as exc:
        raise ConfigurationError(f"OTEL_PROPAGATORS: {exc}") from None
    propagation._install(chosen)


# Longer than a year between worker wake-ups is a mistake (and threading cannot wait forever:
# an infinite or huge wait killed the worker). Benchmarks use days to keep the worker asleep.
_MAX_DELAY_MS = 365 * 86_400_000.0


def _default_sanitizer() -> Callable[[Record], Record] | None:
    from pitchey_trace.sanitize import Sanitizer

    return Sanitizer()


def _default_rollups() -> Any:
    from pitchey_trace.processors import Rollups

    return Rollups()


def configure(
    *,
    service: str | None = None,
    environment: str | None = None,
    exporters: Iterable[Any] | None = None,
    sample_rate: float | None = None,
    sampler: Sampler | None = None,
    keep_errors: bool | None = None,
    slow_threshold_ms: float | None = _DEFAULT,
    sanitizer: Callable[[Record], Record] | None = _DEFAULT,
    processors: Sequence[Processor] | None = (),
    rollups: Any = _DEFAULT,
    router: Callable[[Record], Iterable[str]] | None = None,
    category_thresholds: CategoryThresholds | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    max_queue_size: int | None = None,
    schedule_delay_ms: float | None = None,
    export_batch_size: int | None = None,
    exporter_queue_size: int = DEFAULT_EXPORTER_QUEUE_SIZE,
    max_attributes: int | None = None,
    max_events: int | None = None,
    max_links: int | None = None,
    disabled: bool | None = None,
    flush_on_sigterm: bool | None = None,
) -> None:
    """Set up tracing for this process. Call once at startup (calling again replaces the
    previous setup after flushing it).

    Args:
        service: service name in every record (env ``PITCHEY_TRACE_SERVICE`` /
            ``OTEL_SERVICE_NAME`` / ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``; default
            ``unknown_service``).
        environment: deployment environment (env ``PITCHEY_TRACE_ENVIRONMENT`` /
            ``deployment.environment[.name]`` in ``OTEL_RESOURCE_ATTRIBUTES``; default
            ``development``).
        exporters: where records go (console, HTTP analytics, logpush, OTLP...). Each gets its
            own worker thread and bounded queue. An exporter with a ``datasets`` attribute only
            receives those datasets (``traces``, ``audit``, ``performance``). Default: the ones
            ``PITCHEY_TRACE_EXPORTER`` or ``OTEL_TRACES_EXPORTER`` name, else none.
        sample_rate: head-sampling ratio in [0, 1]; consistent across services and
            parent-based. Ignored when ``sampler`` is given.
        sampler: a custom head sampler (see :mod:`pitchey_trace.sampling`).
        keep_errors: tail keeping: export head-unsampled traces that contain an error
            (default True).
        slow_threshold_ms: tail keeping: export head-unsampled traces with a span at least this
            slow (default 1000; None disables). Also the ``slow`` category boundary.
        sanitizer: callable applied to every record before export (default
            :class:`pitchey_trace.Sanitizer`; None disables - not recommended).
        processors: callables ``record -> record | None`` run on the worker after the
            sanitizer (None drops the record).
        rollups: per-minute RED metrics computed from every span before sampling (default on;
            None disables).
        router: callable ``record -> dataset names`` deciding which datasets a record joins
            (default: by record type: span -> ``traces``, audit -> ``audit``, rollup ->
            ``performance``); see :class:`pitchey_trace.processors.Router`.
        category_thresholds: fast/normal/slow/very_slow boundaries per span kind.
        resource_attributes: extra resource attributes for every record (added to, and
            winning over, those of ``OTEL_RESOURCE_ATTRIBUTES``).
        max_queue_size: spans waiting for the worker; beyond it spans are dropped and counted
            (env ``OTEL_BSP_MAX_QUEUE_SIZE``; default 20,000).
        schedule_delay_ms: how often the worker wakes when the queue is not filling fast (env
            ``OTEL_BSP_SCHEDULE_DELAY``; default 500).
        export_batch_size: records per ``export()`` call (env ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``;
            default 512).
        exporter_queue_size: records waiting per exporter.
        max_attributes / max_events / max_links: per-span bounds (extra ones are counted and
            dropped; env ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` or ``OTEL_ATTRIBUTE_COUNT_LIMIT``,
            ``OTEL_SPAN_EVENT_COUNT_LIMIT``, ``OTEL_SPAN_LINK_COUNT_LIMIT``; default 128 each).
        disabled: turn everything off (env ``PITCHEY_TRACE_DISABLED`` / ``OTEL_SDK_DISABLED``).
        flush_on_sigterm: on SIGTERM, export what is buffered (within 10 s) before the process
            ends as the signal's default action would end it (exit status 143; env
            ``PITCHEY_TRACE_FLUSH_ON_SIGTERM``; default off, on under ``pitchey-trace run``).
            SIGTERM skips the flush at interpreter exit. Only where SIGTERM still has its default
            action and configure() runs in the main thread: an application's own handler is
            left alone. The flush runs on a thread of its own; a second SIGTERM ends the process
            at once. The handler runs when the main thread next runs bytecode (not while it is
            stuck in C code); forked children do not keep it.

    Raises:
        ConfigurationError (a ValueError) or TypeError for invalid arguments.
    """
    if disabled is None:
        # PITCHEY_TRACE_DISABLED=false wins over OTEL_SDK_DISABLED=true, as every PITCHEY_TRACE_*
        # variable over its OpenTelemetry counterpart.
        env_disabled = _env_bool("PITCHEY_TRACE_DISABLED")
        disabled = bool(_otel_env_bool("OTEL_SDK_DISABLED") if env_disabled is None else env_disabled)
    elif not isinstance(disabled, int) or disabled not in (0, 1):  # (bools, and the 0/1 some code passes)
        raise TypeError(f"disabled must be True, False or None, got {disabled!r}")
    if flush_on_sigterm is None:
        flush_on_sigterm = bool(_env_bool("PITCHEY_TRACE_FLUSH_ON_SIGTERM"))
    elif not isinstance(flush_on_sigterm, int) or flush_on_sigterm not in (0, 1):
        raise TypeError(f"flush_on_sigterm must be True, False or None, got {flush_on_sigterm!r}")
    env_resource = _resource_from_env()
    # (service and environment have their own record fields: not repeated as extra attributes)
    env_service = env_resource.pop("service.name", None)
    env_environment = env_resource.pop("deployment.environment.name", None)
    env_environment = env_resource.pop("deployment.environment", None) or env_environment
    # The same keys in the resource_attributes argument (which wins over the environment).
    arg_service = arg_environment = None
    if isinstance(resource_attributes, Mapping):
        resource_attributes = dict(resource_attributes)
        arg_service = resource_attributes.pop("service.name", None)
        arg_environment = resource_attributes.pop("deployment.environment.name", None)
        arg_environment = resource_attributes.pop("deployment.environment", None) or arg_environment
    service = (
        service
        or arg_service
        or _env("PITCHEY_TRACE_SERVICE")
        or _env("OTEL_SERVICE_NAME")
        or env_service
        or "unknown_service"
    )
    environment = (
        environment
        or arg_environment
        or _env("PITCHEY_TRACE_ENVIRONMENT")
        or env_environment
        or "development"
    )
    for label, text in (("service", service), ("environment", environment)):
        if not isinstance(text, str):
            raise TypeError(f"{label} must be a string, got {text!r}")

    if sampler is None:
        label = "sample_rate"
        if sample_rate is None:
            sample_rate = _env_float("PITCHEY_TRACE_SAMPLE_RATE")
            label = "PITCHEY_TRACE_SAMPLE_RATE"
        if isinstance(sample_rate, bool):
            raise ConfigurationError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
        if sample_rate is not None:
            try:
                sampler = ParentBased(TraceIdRatio(sample_rate))
            except ConfigurationError:  # (1.5, nan, inf, "0.5": the message names what was wrong)
                raise ConfigurationError(f"{label} must be a number in [0, 1], got {sample_rate!r}") from None
        else:  # (OTEL_TRACES_SAMPLER: unknown values warn and fall back, as the spec says)
            sampler = sampler_from_env() or ParentBased(TraceIdRatio(1.0))
    elif not hasattr(sampler, "should_sample"):
        raise TypeError(f"sampler must have should_sample(), got {sampler!r}")
    else:
        sampler = per_trace(sampler)
    bind_service(sampler, service)

    if keep_errors is None:
        env_keep = _env_bool("PITCHEY_TRACE_KEEP_ERRORS")
        keep_errors = True if env_keep is None else env_keep
    if not isinstance(keep_errors, int) or keep_errors not in (0, 1):  # (bools, and 0/1)
        raise TypeError(f"keep_errors must be True, False or None, got {keep_errors!r}")
    keep_errors = bool(keep_errors)
    if slow_threshold_ms is _DEFAULT:
        slow_threshold_ms = _env_float("PITCHEY_TRACE_SLOW_THRESHOLD_MS")
        if slow_threshold_ms is None:
            slow_threshold_ms = 1000.0
        elif not 0.0 <= slow_threshold_ms <= 1e12:  # (also nan, inf)
            raise ConfigurationError(
                f"PITCHEY_TRACE_SLOW_THRESHOLD_MS must be a number from 0 to 1e12, got {slow_threshold_ms}"
            )
    slow_threshold_ms = finite("slow_threshold_ms", slow_threshold_ms, 0.0, 1e12, none_ok=True)

    max_queue_size = _int_setting(max_queue_size, DEFAULT_MAX_QUEUE_SIZE, "OTEL_BSP_MAX_QUEUE_SIZE")
    export_batch_size = _int_setting(
        export_batch_size, DEFAULT_EXPORT_BATCH_SIZE, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
    )
    max_attributes = _int_setting(
        max_attributes, 128, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"
    )
    max_events = _int_setting(max_events, 128, "OTEL_SPAN_EVENT_COUNT_LIMIT")
    max_links = _int_setting(max_links, 128, "OTEL_SPAN_LINK_COUNT_LIMIT")
    if schedule_delay_ms is None:
        schedule_delay_ms = _env_float("OTEL_BSP_SCHEDULE_DELAY")
        if schedule_delay_ms is not None and not 0 < schedule_delay_ms <= _MAX_DELAY_MS:
            raise ConfigurationError(
                f"OTEL_BSP_SCHEDULE_DELAY must be > 0 ms and at most a year, got {schedule_delay_ms}"
            )
        if schedule_delay_ms is None:
            schedule_delay_ms = DEFAULT_SCHEDULE_DELAY_S * 1000
    if exporters is None:
        # (disabled: none are made, so an exporter's own variables cannot fail a switched-off SDK)
        exporters = (
            []
            if disabled
            else _exporters_from_env() + _metrics_exporters_from_env() + _logs_exporters_from_env()
        )
    exporters = list_of("exporters", exporters)
    processors = list_of("processors", () if processors is None else processors)
    for exp in exporters:
        if not callable(getattr(exp, "export", None)):
            raise TypeError(f"exporter {exp!r} has no export(batch) method")
        not_async(f"exporter {type(exp).__name__}.export", exp.export)
        valid_datasets(getattr(exp, "datasets", None))  # (checked here: before the old setup stops)
    for proc in processors:
        if not callable(proc):
            raise TypeError(f"processor {proc!r} is not callable")
        not_async("a processor", proc)
    if sanitizer is _DEFAULT:
        sanitizer = _default_sanitizer()
    elif sanitizer is not None and not callable(sanitizer):
        raise TypeError("sanitizer must be callable (record -> record) or None")
    if sanitizer is not None:
        not_async("sanitizer", sanitizer)
    if router is not None and not callable(router):
        raise TypeError("router must be callable (record -> iterable of dataset names)")
    if router is not None:
        not_async("router", router)
    if rollups is _DEFAULT:
        rollups = _default_rollups()
    if rollups is not None:
        for method in ("observe", "collect"):
            if not callable(getattr(rollups, method, None)):
                raise TypeError(f"rollups must have {method}()")
        configure_rollups = getattr(rollups, "bind", None)
        if configure_rollups is not None:
            configure_rollups(service=service, environment=environment)

    for label, value in (
        ("max_queue_size", max_queue_size),
        ("export_batch_size", export_batch_size),
        ("exporter_queue_size", exporter_queue_size),
        ("max_attributes", max_attributes),
        ("max_events", max_events),
        ("max_links", max_links),
    ):
        positive_int(label, value)
    schedule_delay = finite("schedule_delay_ms", schedule_delay_ms, 0.0, _MAX_DELAY_MS)
    if not schedule_delay:
        raise ConfigurationError("schedule_delay_ms must be > 0")
    if resource_attributes is not None and not isinstance(resource_attributes, Mapping):
        raise TypeError(f"resource_attributes must be a mapping, got {resource_attributes!r}")
    if category_thresholds is not None and not isinstance(category_thresholds, CategoryThresholds):
        raise TypeError(f"category_thresholds must be a CategoryThresholds, got {category_thresholds!r}")
    if category_thresholds is None:
        slow = float(slow_threshold_ms) if slow_threshold_ms is not None else 1000.0
        category_thresholds = CategoryThresholds(fast_ms=min(100.0, slow), slow_ms=slow)

    tail = TailKeeper(keep_errors=keep_errors, slow_threshold_ms=slow_threshold_ms)
    _check_resource_detection_env()
    _propagators_from_env()  # (after every check: a refused configure() changes nothing)
    with _lock:
        # Exporters passed again (e.g. to change the sample rate) are flushed, not shut down.
        _shutdown_locked(timeout=5.0, keep=() if disabled else exporters)
        if disabled:
            _TRACER.install(None, _TRACER.sampler, False)
            return
        Limits.max_attributes = max_attributes
        Limits.max_events = max_events
        Limits.max_links = max_links
        pipeline = Pipeline(
            service=service,
            environment=environment,
            exporters=exporters,
            resource_attributes={**env_resource, **(resource_attributes or {})},
            sanitizer=sanitizer,
            processors=processors,
            tail=tail if tail.enabled else None,
            rollups=rollups,
            router=router,
            thresholds=category_thresholds,
            max_queue_size=max_queue_size,
            schedule_delay_s=schedule_delay / 1000.0,
            export_batch_size=export_batch_size,
            exporter_queue_size=exporter_queue_size,
        )
        pipeline.start()
        _TRACER.install(pipeline, sampler, record_unsampled=tail.enabled or rollups is not None)
    _register_atexit()
    if flush_on_sigterm:
        _flush_on_sigterm()


def is_configured() -> bool:
    """True when ``configure()`` set up a recording pipeline."""
    return _TRACER.pipeline is not None


def force_flush(timeout: float | None = None) -> bool:
    """Export everything accepted so far. Returns True when every exporter confirmed within
    ``timeout`` seconds (default 30); False when one did not, or gave records up since the last
    flush (``dropped.export_failed``), or still keeps some in its spool to send later. Never
    raises."""
    pipeline = _TRACER.pipeline
    if pipeline is None:
        return True
    try:
        return pipeline.force_flush(_timeout(timeout))
    except Exception as exc:
        _safety.report("force_flush", exc)
        return False


def _timeout(value: Any) -> float | None:
    """A flush or shutdown timeout: seconds >= 0 (at most a year), or None for the default; a
    value that is not a number is the default (warned about once), not an internal error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        _safety.warn_once("timeout_type", "timeout must be seconds (a number) or None, got %s", type(value))
        return None
    return max(0.0, min(float(value), 365 * 86_400.0))


def _shutdown_locked(timeout: float | None, keep: Sequence[object] = ()) -> bool:
    pipeline = _TRACER.pipeline
    _TRACER.install(None, _TRACER.sampler, False)
    if pipeline is None:
        return True
    try:
        return pipeline.shutdown(timeout, keep=keep)
    except Exception as exc:
        _safety.report("shutdown", exc)
        return False


def shutdown(timeout: float | None = None) -> bool:
    """Flush every accepted record, stop the workers and the exporters; tracing becomes a
    no-op afterwards. Runs automatically at interpreter exit. Never raises."""
    with _lock:
        return _shutdown_locked(_timeout(timeout))


def stats() -> dict[str, int]:
    """Counters: ``accepted``, ``exported``, ``dropped`` (and ``dropped.<reason>``),
    ``retried``, ``spooled``, ``internal_errors`` and per-exporter details."""
    return _stats.snapshot()


#: The budget of the flush at exit (docs/operations.md): a slow collector cannot hold it longer.
_EXIT_TIMEOUT_S = 10.0
_atexit_registered = False


def _shutdown_at_exit() -> None:
    global _exiting
    with _end_lock:  # (a SIGTERM's flush thread must not end the process under this flush)
        _exiting = True
    try:
        shutdown(timeout=_EXIT_TIMEOUT_S)
    finally:
        _release_sigterm()


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_shutdown_at_exit)
    if "multiprocessing" in sys.modules:  # (never imported for an app that does not use it)
        _register_multiprocessing_exit()


class _Anchor:
    """What multiprocessing's after-fork registry is keyed on (it holds it weakly)."""


_mp_anchor: _Anchor | None = None


def _register_multiprocessing_exit() -> None:
    """multiprocessing's fork and forkserver children leave through ``os._exit()``, past
    atexit: flush at their exit through multiprocessing's own finalizers instead. Its
    ``Process._bootstrap`` clears the finalizers it inherited and then runs the after-fork
    callbacks, so the callback (inherited by every child) is what makes the child's finalizer.
    Once per process (a forked child inherits the registration and the flag together). A
    spawn child runs no after-fork callbacks: ``_before_process_bootstrap`` does it there."""
    global _mp_anchor
    if _mp_anchor is not None:
        return
    try:
        import multiprocessing.util

        anchor = _Anchor()
        multiprocessing.util.register_after_fork(anchor, _in_multiprocessing_child)
        _mp_anchor = anchor
    except Exception as exc:
        _safety.report("multiprocessing.register", exc)


def _before_process_bootstrap(process: Any) -> None:
    """In every multiprocessing child, just before ``process._bootstrap()`` (``_mp`` calls it):
    give a ``spawn`` child what a ``fork`` child gets. A spawn child's bootstrap runs no
    after-fork callbacks (``SpawnProcess._after_fork`` does nothing, also for a ``Process`` of
    a spawn default context), so ``_in_multiprocessing_child`` never ran there: its Pool
    workers died on ``terminate()`` with their spans unsent. And configured on its own (``run``'s
    ``sitecustomize``) it kept the flush-first SIGTERM handler while its target ran, which
    ``_after_fork_in_child`` takes from a fork child: ``terminate()`` of a child stuck in C code
    waited for that code. In a fork child this changes nothing: the finalizer made here is
    cleared by its bootstrap and made again by the callback, the worker is watched once."""
    try:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _flush_then_die
        ):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Exception as exc:
        _safety.report("multiprocessing.sigterm", exc)
    if _atexit_registered:  # (configured in this process: it has something to flush)
        _register_multiprocessing_exit()  # (for the children it forks)
        _flush_at_child_exit(process)


def _in_multiprocessing_child(_anchor: Any) -> None:
    """The after-fork callback: ``Process._bootstrap`` of a fork or forkserver child."""
    import multiprocessing

    _flush_at_child_exit(multiprocessing.current_process())


def _flush_at_child_exit(process: Any) -> None:
    try:
        import multiprocessing.util

        # lowest priority: after the child's other finalizers and the join of its own children;
        # runs when the child's target returns or raises (a Pool worker: when it gets the pool's
        # sentinel; terminate()'s SIGTERM is handled by _watch_pool_worker)
        multiprocessing.util.Finalize(None, _shutdown_at_exit, exitpriority=-1000)
    except Exception as exc:
        _safety.report("multiprocessing.finalize", exc)
    try:
        _watch_pool_worker(process)
    except Exception as exc:
        _safety.report("multiprocessing.pool_worker", exc)


def _watch_pool_worker(proc: Any) -> None:
    """In a ``multiprocessing.Pool`` worker (``proc``, about to run
    ``multiprocessing.pool.worker``): wrap its task queue, so that a SIGTERM from
    ``Pool.terminate()`` (also what leaving ``with Pool() as pool:`` does) that finds it
    waiting for a task, or leaving after its last one, lets it export its spans first (within
    the exit budget), and then ends it as before. Once (a fork child gets here twice)."""
    # (a Pool's worker has it imported: by the parent before a fork, by unpickling the target)
    worker = getattr(sys.modules.get("multiprocessing.pool"), "worker", None)
    args = getattr(proc, "_args", None)
    if (
        worker is not None
        and getattr(proc, "_target", None) is worker
        and isinstance(args, tuple)
        and len(args) >= 2
        and not isinstance(args[0], _PoolQueue)
        and threading.current_thread() is threading.main_thread()  # (signal handlers live there)
    ):
        proc._args = (_PoolInbox(args[0]), _PoolOutbox(args[1]), *args[2:])


def _arm(on: bool = True) -> None:
    """Install ``_flush_then_die`` for SIGTERM where it has its default action (``on``), or put
    the default back where it is ours. Never raises into the pool's worker loop."""
    try:
        current = signal.getsignal(signal.SIGTERM)
        if on and current is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_then_die)
        elif not on and current is _flush_then_die:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Exception as exc:  # (not the main thread, say)
        _safety.report("multiprocessing.sigterm", exc)


class _PoolQueue:
    """One of a Pool worker's queues. From the moment a task's result is sent until the
    next task arrives (and after the sentinel that ends the worker), SIGTERM flushes first
    (``_flush_then_die``); while a task runs it keeps its default action, so a task stuck in C
    code is still ended at once. An app's own SIGTERM handler (set by the pool's
    ``initializer``, say) is left alone."""

    __slots__ = ("_queue",)

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def __getattr__(self, name: str) -> Any:  # (the worker closes the queues' unused ends)
        return getattr(self._queue, name)


# How long an idle Pool worker blocks in C at most before its main thread is back in Python,
# where a SIGTERM already received runs its (Python-level) handler.
_WAIT_SLICE_S = 0.2


class _PoolInbox(_PoolQueue):
    __slots__ = ()

    def get(self) -> Any:
        _arm()
        task = self._receive()
        if task is not None:
            _arm(False)
        return task

    def _receive(self) -> Any:
        """``SimpleQueue.get()`` waiting in slices. While ``_flush_then_die`` is armed, a
        SIGTERM that lands just before the worker blocks in C (on the queue's read lock, held
        for good by ``terminate()``'s ``_help_stuff_finish``, or on its pipe) only marks the
        handler as due: with one unbounded wait it never ran and the worker outlived
        ``terminate()``, whose ``join()`` hung. Another queue type: its own ``get()``."""
        queue = self._queue
        queues = sys.modules.get("multiprocessing.queues")
        rlock = getattr(queue, "_rlock", None)
        reader = getattr(queue, "_reader", None)
        if queues is None or type(queue) is not queues.SimpleQueue or rlock is None or reader is None:
            return queue.get()
        from multiprocessing.reduction import ForkingPickler

        while not rlock.acquire(True, _WAIT_SLICE_S):
            pass
        try:
            while not reader.poll(_WAIT_SLICE_S):
                pass
            data = reader.recv_bytes()
        finally:
            rlock.release()
        return ForkingPickler.loads(data)  # (after the release, as SimpleQueue.get does)


class _PoolOutbox(_PoolQueue):
    __slots__ = ()

    def put(self, obj: Any) -> None:
        _arm()  # (before the result goes out: the pool may terminate the moment it has it)
        self._queue.put(obj)


# A SIGTERM sent to a child before it first runs (terminate() of a Pool worker just forked, by
# the parent or a forkserver, on a loaded machine) is taken at its first instruction by the
# Python-level handler it inherited, and CPython drops every signal caught before its after-fork
# reset: the child never saw it (a worker then waited for a task forever, terminate()'s join()
# with it). So a process with ``_flush_then_die`` forks with SIGTERM blocked; the child goes
# back to the default action first, then unblocks: a SIGTERM already there ends it at once.
_sigterm_held_over_fork: set[int] = set()  # the threads forking with it blocked by us


def _hold_sigterm_over_fork() -> None:
    try:
        if signal.getsignal(signal.SIGTERM) is _flush_then_die:
            before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            if signal.SIGTERM not in before:  # (blocked by the application: left to it)
                _sigterm_held_over_fork.add(threading.get_ident())
    except Exception as exc:
        _safety.report("fork.sigterm", exc)


def _release_sigterm_after_fork(child: bool) -> None:
    ident = threading.get_ident()  # (the forking thread's, in the child too)
    if ident not in _sigterm_held_over_fork:
        return
    if child:
        _sigterm_held_over_fork.clear()  # (no other thread came along)
    else:
        _sigterm_held_over_fork.discard(ident)
    try:
        if child and signal.getsignal(signal.SIGTERM) is _flush_then_die:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (as _after_fork_in_child does)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    except Exception as exc:
        _safety.report("fork.sigterm", exc)


if hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
    os.register_at_fork(
        before=_hold_sigterm_over_fork,
        after_in_parent=lambda: _release_sigterm_after_fork(False),
        after_in_child=lambda: _release_sigterm_after_fork(True),
    )


_exiting = False  # the flush at exit runs: a SIGTERM meanwhile lets it finish (it is bounded)
_pending_signal = 0  # a SIGTERM that came during the flush at exit: raised again after it
_end_lock = threading.Lock()  # (never taken in a signal handler)


def _flush_on_sigterm() -> None:
    """``configure(flush_on_sigterm=True)``: SIGTERM flushes first (``_flush_then_die``), where
    it still has its default action. Only the main thread can set a handler; elsewhere, or
    where the application has its own, nothing changes (the application decides)."""
    try:
        if threading.current_thread() is not threading.main_thread():
            _safety.warn_once(
                "sigterm_thread",
                "flush_on_sigterm: configure() ran outside the main thread: SIGTERM left as is",
            )
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_then_die)
    except Exception as exc:
        _safety.report("sigterm", exc)


def _flush_then_die(signum: int, _frame: Any) -> None:
    """SIGTERM where it had its default action (``flush_on_sigterm``, a Pool worker between
    tasks): export what is buffered, then end the process by the signal, as without tracing.

    It runs on the main thread wherever that thread was interrupted, possibly inside the SDK
    holding a lock the flush needs (an ``Event``'s): so nothing here takes a lock. The default
    action comes back first (a second SIGTERM ends the process at once), the flush runs on a
    thread of its own (``_thread``: no lock to start it) and the main thread goes on until it
    ends the process; another thread ends it anyway once the flush's budget is over. Called by
    an application's handler it chained to, it only starts the flush: that handler decides."""
    global _pending_signal
    try:
        ours = signal.getsignal(signum) is _flush_then_die
        if ours:
            signal.signal(signum, signal.SIG_DFL)
    except Exception:  # (not the main thread: an application calling it from elsewhere)
        ours = False
    if _exiting:  # the flush at exit runs (bounded): the signal is raised again after it
        _pending_signal = signum
        return
    try:
        _thread.start_new_thread(_flush_and_end, (signum, ours))
        if ours:
            _thread.start_new_thread(_end_after, (signum, _EXIT_TIMEOUT_S + 1.0))
    except Exception:  # (no thread to be had: end it now, as without tracing)
        if ours:
            os.kill(os.getpid(), signum)


def _flush_and_end(signum: int, end: bool) -> None:
    try:
        force_flush(_EXIT_TIMEOUT_S)
    finally:
        if end:
            _end(signum)


def _end_after(signum: int, delay: float) -> None:
    time.sleep(delay)
    _end(signum)


def _end(signum: int) -> None:
    """End the process by ``signum`` (its default action is back), unless the flush at exit has
    begun meanwhile (the program went on and returned): that one then raises it once done."""
    global _pending_signal
    with _end_lock:
        if _exiting:
            _pending_signal = signum
            return
        os.kill(os.getpid(), signum)


def _release_sigterm() -> None:
    """After the flush at exit: SIGTERM's default action back (an exit hook of the application
    that hangs stays killable), and a SIGTERM that came during the flush raised again."""
    try:
        if signal.getsignal(signal.SIGTERM) is _flush_then_die:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Exception:  # noqa: S110  (not the main thread: a multiprocessing finalizer's)
        pass
    if _pending_signal:
        os.kill(os.getpid(), _pending_signal)


def _after_fork_in_child() -> None:
    global _lock, _end_lock, _pending_signal
    _end_lock = threading.Lock()  # (as _lock below)
    _pending_signal = 0
    # A child (multiprocessing's, a bare os.fork()) does not keep the handler it inherited:
    # SIGTERM (Process.terminate()) must end it at once, even in C code, which a Python-level
    # handler cannot (a Pool's worker arms it between tasks only, see _PoolQueue).
    try:
        if signal.getsignal(signal.SIGTERM) is _flush_then_die:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Exception as exc:
        _safety.report("fork.sigterm", exc)
    # (a thread of the parent may have held it at fork time: the child's exit must not wait for it)
    _lock = threading.RLock()
    # multiprocessing imported after configure(): register before its child bootstraps
    if _atexit_registered and "multiprocessing.util" in sys.modules:
        _register_multiprocessing_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
