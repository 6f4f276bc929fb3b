"""The ``pitchey-trace`` command.

    pitchey-trace config                                 # what configure() makes of this environment
    pitchey-trace run -- python app.py                   # the program, its libraries instrumented
    pitchey-trace logpush setup  --config logpush.toml   # buckets + lifecycle rules, idempotent
    pitchey-trace logpush verify --config logpush.toml   # pass/fail table; exit 1 on failure
    pitchey-trace search --archive DIR --min-duration 1s --last 24h   # traces, newest first
    pitchey-trace show TRACE_ID --archive DIR            # waterfall, critical path, bottleneck
    pitchey-trace perf|errors|overview --archive DIR     # p50/p95/p99, error groups, totals
    pitchey-trace perf --compare --last 1h -a DIR        # the last hour against the hour before
    pitchey-trace deps --archive DIR --last 1h           # who calls whom: the service map
    pitchey-trace audit --archive DIR --category security --last 7d   # who did what
    pitchey-trace serve --archive DIR --port 8080        # HTTP API and waterfall page
    pitchey-trace serve --archive DIR --tls-cert C --tls-key K   # ... over HTTPS

The archive commands read ``--archive DIR`` (a local archive directory), ``--s3-config FILE``
(the logpush config: buckets, prefixes, endpoint) or ``$PITCHEY_TRACE_ARCHIVE``; ``--json``
prints the engine's answer as JSON.

Adding a command: write ``def _add_<name>(sub)`` that calls ``sub.add_parser(...)`` and sets
``func=<handler>`` with ``set_defaults``; the handler takes the parsed ``argparse.Namespace``
and returns the exit code. Then append the function to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pitchey_trace.exceptions import ConfigurationError, IntegrationUnavailable, PitcheyTraceError

__all__ = ["COMMANDS", "build_parser", "main"]

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing


def _logpush(args: argparse.Namespace) -> int:
    from pitchey_trace import logpush_config as lc

    cfg = lc.load_config(args.config)
    client = lc.client_for(cfg)
    rows = lc.setup(cfg, client) if args.action == "setup" else lc.verify(cfg, client)
    sys.stdout.write(lc.format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _mask_url(url: str) -> str:
    """`url` with its credentials masked (see `_validate.masked_url`): output ends up in CI logs."""
    from pitchey_trace._validate import masked_url

    return masked_url(url)


def _mask_urls(text: str) -> str:
    """`text` with every URL in it masked as `_mask_url` does."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", lambda m: _mask_url(m.group()), text)


def _exporter_summary(exporter: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": getattr(exporter, "name", None), "type": type(exporter).__name__}
    for attr in ("endpoint", "url", "protocol", "temporality", "datasets", "spool_dir"):
        value = getattr(exporter, attr, None)
        if value is not None and not callable(value):
            if attr in ("endpoint", "url") and isinstance(value, str):
                value = _mask_url(value)
            out[attr] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


#: The OpenTelemetry variables configure() and OTLPExporter read; `config` lists the others set.
_OTEL_READ = frozenset(
    {
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_PROPAGATORS",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_SPAN_EVENT_COUNT_LIMIT",
        "OTEL_SPAN_LINK_COUNT_LIMIT",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
        "OTEL_METRICS_EXPORTER",
        "OTEL_LOGS_EXPORTER",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    }
    | {
        f"OTEL_EXPORTER_OTLP_{signal}{setting}"
        for signal in ("", "TRACES_", "METRICS_", "LOGS_")
        for setting in (
            "ENDPOINT",
            "PROTOCOL",
            "HEADERS",
            "COMPRESSION",
            "TIMEOUT",
            "CERTIFICATE",
            "CLIENT_CERTIFICATE",
            "CLIENT_KEY",
            "INSECURE",
        )
    }
)


def _config(args: argparse.Namespace) -> int:
    import pitchey_trace as pt
    from pitchey_trace._span import Limits
    from pitchey_trace._tracer import get_tracer
    from pitchey_trace.auto import export_logs_level, log_event_level

    try:
        pt.configure()  # from the environment only, as a service calling configure() would
    except (PitcheyTraceError, ValueError) as exc:
        # The message can quote the variable's URL (`got 'https://user:password@...'`): mask it
        # as the output is, this too ends up in CI logs.
        raise ConfigurationError(_mask_urls(str(exc))) from None
    # OpenTelemetry variables set here that nothing reads (metrics, logs, other exporters'):
    # worth seeing when moving a service over from an OpenTelemetry SDK. (OTEL_PYTHON_* and
    # the instrumentation ones are read by OpenTelemetry's own packages, which still run.)
    unread = sorted(
        k
        for k in os.environ
        if k.startswith("OTEL_")
        and k not in _OTEL_READ
        and not k.startswith(("OTEL_PYTHON_", "OTEL_INSTRUMENTATION_", "OTEL_SEMCONV_"))
    )
    try:
        tracer = get_tracer()
        pipeline = tracer.pipeline
        info: dict[str, Any] = {"enabled": pipeline is not None, "unread_otel_variables": unread}
        if pipeline is not None:
            tail = pipeline.tail
            info.update(
                service=pipeline.service,
                environment=pipeline.environment,
                resource=pipeline.resource,
                sampler=repr(tracer.sampler),
                tail_keeping=(
                    {
                        "keep_errors": tail.keep_errors,
                        "slow_threshold_ms": None if tail.slow_ns is None else tail.slow_ns / 1e6,
                    }
                    if tail is not None
                    else None
                ),
                exporters=[_exporter_summary(w.exporter) for w in pipeline.workers],
                propagators=[type(p).__name__ for p in pt.get_propagators()],
                sanitizer=type(pipeline.sanitizer).__name__ if pipeline.sanitizer is not None else None,
                rollups=pipeline.rollups is not None,
                max_queue_size=pipeline.max_queue_size,
                schedule_delay_ms=pipeline.schedule_delay_s * 1000,
                export_batch_size=pipeline.export_batch_size,
                limits={
                    "attributes": Limits.max_attributes,
                    "events": Limits.max_events,
                    "links": Limits.max_links,
                },
                export_logs=export_logs_level(),
                log_event_level=log_event_level(),
            )
    finally:
        pt.shutdown(1.0)

    def text() -> str:
        not_read = [f"not read     {', '.join(unread)}"] if unread else []
        if not info["enabled"]:
            return (
                "\n".join(["tracing is disabled (PITCHEY_TRACE_DISABLED / OTEL_SDK_DISABLED)", *not_read])
                + "\n"
            )
        lines = [f"service      {info['service']}", f"environment  {info['environment']}"]
        lines.append(f"sampler      {info['sampler']}")
        tail = info["tail_keeping"]
        lines.append(
            "tail keeping "
            + (f"errors={tail['keep_errors']}, slow>={tail['slow_threshold_ms']} ms" if tail else "off")
        )
        if not info["exporters"]:
            lines.append("exporters    none (nothing leaves the process)")
        for i, exp in enumerate(info["exporters"]):
            where = exp.get("endpoint") or exp.get("url") or ""
            detail = f" {exp['protocol']}" if exp.get("protocol") else ""
            detail += f" {exp['temporality']}" if exp.get("temporality") else ""
            spool = f" (spool {exp['spool_dir']})" if exp.get("spool_dir") else ""
            lines.append(f"{'exporters' if i == 0 else '':<12} {exp['type']}{detail} {where}{spool}".rstrip())
        lines.append(f"propagators  {', '.join(info['propagators']) or 'none'}")
        lines.append(
            f"sanitizer    {info['sanitizer'] or 'OFF'}; rollups {'on' if info['rollups'] else 'off'}"
        )
        lines.append(
            f"batching     queue {info['max_queue_size']}, every {info['schedule_delay_ms']:g} ms, "
            f"batches of {info['export_batch_size']}"
        )
        lim = info["limits"]
        lines.append(
            f"limits       {lim['attributes']} attributes, {lim['events']} events, {lim['links']} links"
        )
        level = info["export_logs"]
        lines.append(
            "app logs     "
            + (f"shipped from {level} (under pitchey-trace run)" if level is not None else "not shipped")
        )
        extra = {
            k: v for k, v in info["resource"].items() if not k.startswith(("telemetry.", "process.", "host."))
        }
        lines.append("resource     " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
        return "\n".join([*lines, *not_read]) + "\n"

    _emit(args, info, text)
    return 0


def _add_config(sub: Subparsers) -> None:
    p = sub.add_parser(
        "config",
        help="what configure() sets up from this environment (PITCHEY_TRACE_* and OTEL_* variables)",
        description="Resolve the environment as pt.configure() with no arguments would, print the result, "
        "and exit 2 with the message when a variable is invalid.",
    )
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_config)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    command = list(args.program)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("run: give the program to start, e.g. pitchey-trace run -- python app.py")
    if args.exclude:
        from pitchey_trace.auto import SUPPORTED

        unknown = {n.strip() for n in args.exclude.split(",") if n.strip()} - {*SUPPORTED, "fastapi"}
        if unknown:
            raise ValueError(f"run: unknown libraries {sorted(unknown)}; known: {', '.join(SUPPORTED)}")
    _check_run_options(args)
    env = dict(os.environ)
    shim = str(Path(__file__).resolve().parent / "_autorun")
    env["PYTHONPATH"] = os.pathsep.join([shim, *filter(None, [env.get("PYTHONPATH")])])
    if args.service:
        env["PITCHEY_TRACE_SERVICE"] = args.service
    if args.exporter:
        env["PITCHEY_TRACE_EXPORTER"] = args.exporter
    if args.metrics:
        env["OTEL_METRICS_EXPORTER"] = args.metrics
    if args.logs:
        env["OTEL_LOGS_EXPORTER"] = args.logs
    if args.export_logs:
        env["PITCHEY_TRACE_EXPORT_LOGS"] = args.export_logs
    if args.exclude:
        env["PITCHEY_TRACE_AUTO_EXCLUDE"] = args.exclude
    # SIGTERM (docker stop, Kubernetes, systemd) skips the flush at exit: flush first
    if not env.get("PITCHEY_TRACE_FLUSH_ON_SIGTERM", "").strip():  # (an empty value is unset)
        env["PITCHEY_TRACE_FLUSH_ON_SIGTERM"] = "true"
    if env.get("PITCHEY_TRACE_ARCHIVE", "").strip():  # (where it started, whatever its cwd becomes)
        env["PITCHEY_TRACE_ARCHIVE"] = os.path.abspath(env["PITCHEY_TRACE_ARCHIVE"].strip())
    from pitchey_trace.auto import _check_environment

    # A variable the program's configure() would refuse: one line and exit 2 now, rather than
    # the program running untraced.
    _check_environment(env)
    try:
        os.execvpe(command[0], command, env)  # noqa: S606  (the user's own program, by design)
    except OSError as exc:
        sys.stderr.write(f"pitchey-trace: error: cannot start {command[0]!r}: {exc.strerror}\n")
        return 127
    return 0  # (not reached: exec replaced this process)


def _check_run_options(args: argparse.Namespace) -> None:
    """Refuse here, before the program starts, the values its ``configure()`` would refuse
    (the program would otherwise run untraced, with a traceback on its stderr) or ignore."""
    from pitchey_trace._config import _EXPORTER_NAMES
    from pitchey_trace.auto import _level

    if args.exporter is not None:
        names = [n.strip().lower() for n in args.exporter.split(",") if n.strip()]
        unknown = [n for n in names if n not in _EXPORTER_NAMES]
        if unknown or not names:
            raise ValueError(
                f"run: --exporter {args.exporter!r}: expected {', '.join(_EXPORTER_NAMES)} (comma-separated)"
            )
    # (the exporters the program will make, from --exporter or the environment)
    chosen = (
        args.exporter
        or os.environ.get("PITCHEY_TRACE_EXPORTER")
        or os.environ.get("OTEL_TRACES_EXPORTER")
        or ""
    )
    if "archive" in [n.strip().lower() for n in chosen.split(",")]:
        archive = os.environ.get("PITCHEY_TRACE_ARCHIVE", "").strip()
        if not archive:
            raise ValueError(
                "run: the archive exporter writes to $PITCHEY_TRACE_ARCHIVE (a directory): set it"
            )
        try:
            os.makedirs(archive, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"run: cannot use $PITCHEY_TRACE_ARCHIVE {archive!r}: {exc.strerror or exc}"
            ) from None
    for flag, value in (("--metrics", args.metrics), ("--logs", args.logs)):
        if value is not None and value.strip().lower() not in ("otlp", "none"):
            raise ValueError(f"run: {flag} {value!r}: expected otlp (or none)")
    if args.export_logs is not None and args.export_logs.strip().lower() not in ("off", "false", "0", "none"):
        _level(args.export_logs, "run: --export-logs")


def _add_run(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="start a Python program with its libraries instrumented (no code change)",
        description="Start PROGRAM (python, gunicorn, uvicorn, celery, ...) with tracing configured from "
        "the environment and its web frameworks, HTTP clients, database drivers and Celery instrumented "
        "(see pitchey_trace.auto). Child Python processes inherit it. The program's Python must "
        "have pitchey-trace installed (run it from the same virtualenv). A SIGTERM exports what is "
        "buffered before the program ends (PITCHEY_TRACE_FLUSH_ON_SIGTERM=false: not).",
    )
    p.add_argument("--service", help="service name (sets PITCHEY_TRACE_SERVICE)")
    p.add_argument(
        "--exporter",
        help="where spans go, comma-separated: console, console-pretty, otlp, zipkin, archive (a local "
        "archive in $PITCHEY_TRACE_ARCHIVE, which the archive commands read) or none "
        "(sets PITCHEY_TRACE_EXPORTER; default: OTEL_TRACES_EXPORTER, else none)",
    )
    p.add_argument(
        "--metrics",
        metavar="otlp",
        help="also send the rollups as OTLP metrics (sets OTEL_METRICS_EXPORTER)",
    )
    p.add_argument(
        "--logs",
        metavar="otlp",
        help="also send the audit records (and the logs --export-logs ships) as OTLP logs "
        "(sets OTEL_LOGS_EXPORTER)",
    )
    p.add_argument(
        "--export-logs",
        metavar="LEVEL",
        help="ship the program's log records from LEVEL (e.g. INFO) with their trace ids "
        "(sets PITCHEY_TRACE_EXPORT_LOGS)",
    )
    p.add_argument(
        "--exclude",
        help="libraries to leave alone, comma-separated (e.g. requests,celery; sets "
        "PITCHEY_TRACE_AUTO_EXCLUDE)",
    )
    p.add_argument("program", nargs=argparse.REMAINDER, help="the program and its arguments (after --)")
    p.set_defaults(func=_run)


def _add_logpush(sub: Subparsers) -> None:
    p = sub.add_parser(
        "logpush",
        help="S3/R2 archive buckets: retention setup and verification",
        description="Manage the buckets the LogpushExporter writes to (config format: docs/exporters.md).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("setup", "create missing buckets and put one expiration rule per dataset prefix (idempotent)"),
        ("verify", "check buckets, expiration rules and a write/read/delete round trip"),
    ):
        a = actions.add_parser(action, help=text, description=text)
        a.add_argument("--config", "-c", required=True, metavar="FILE", help="logpush config (TOML or .json)")
        a.set_defaults(func=_logpush)


# -- archive analysis ------------------------------------------------------------------------------
def _duration_ms(text: str) -> float:
    """``250ms``, ``1.5s``, ``2m``; a bare number is milliseconds (the analysis's own parser)."""
    from pitchey_trace.analysis._time import parse_duration_ms

    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _step_s(text: str) -> int:
    """``--step``: a duration of whole seconds, 1 s to 31 days (what ``Archive.series`` takes)."""
    ms = _duration_ms(text)
    seconds = round(ms / 1000)
    if not 1 <= seconds <= 31 * 86400 or abs(ms / 1000 - seconds) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"expected whole seconds from 1s to 31d (e.g. 1m, 5m, 1h; a bare number is ms), got {text!r}"
        )
    return seconds


def _age(text: str) -> str:
    """``--last``: an age, a number and a unit (``24h``). Without a unit ``parse_time`` reads
    digits as Unix nanoseconds, so ``--last 24`` would silently mean "since 1970"."""
    from pitchey_trace.analysis._time import is_relative

    if not is_relative(text):
        raise argparse.ArgumentTypeError(
            f"expected an age, a number and a unit (15m, 24h, 7d): a time goes to --since, got {text!r}"
        )
    return text


def _whole_number(text: str, low: int, high: int | None, expected: str) -> int:
    """An argparse value: a whole number in ``[low, high]``, else a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """``--limit``: a whole number from 1 (one check for every command)."""
    return _whole_number(text, 1, None, "a whole number from 1")


def _concurrency(text: str) -> int:
    """``--s3-concurrency``: 1 to 64."""
    return _whole_number(text, 1, 64, "a whole number from 1 to 64")


def _port(text: str) -> int:
    """``--port``: 0 to 65535 (0: any free port)."""
    return _whole_number(text, 0, 65535, "a port number 0-65535")


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _archive(args: argparse.Namespace) -> Any:
    from pitchey_trace.analysis import Archive, S3Source

    if args.s3_config:
        source = S3Source.from_config(
            args.s3_config, cache_dir=args.cache_dir, concurrency=args.s3_concurrency
        )
        return Archive(source, max_spans=args.max_spans, max_bytes=_mib(args))
    where = args.archive or os.environ.get("PITCHEY_TRACE_ARCHIVE")
    if isinstance(where, list):  # --archive given more than once: read as one archive
        where = where[0] if len(where) == 1 else where
    if not where:
        raise PitcheyTraceError(
            "no archive: give --archive DIR, --s3-config FILE or set PITCHEY_TRACE_ARCHIVE"
        )
    try:
        return Archive(where, max_spans=args.max_spans, max_bytes=_mib(args))
    except ValueError as exc:
        raise PitcheyTraceError(str(exc)) from None


def _mib(args: argparse.Namespace) -> int | None:
    """``--max-mib`` in bytes (None: not given)."""
    mib: int | None = getattr(args, "max_mib", None)
    return None if mib is None else mib << 20


def _window(args: argparse.Namespace) -> dict[str, Any]:
    since = args.since if args.since is not None else args.last
    return {"since": since, "until": args.until}


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns // 10**6 % 1000:03d}Z"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    return f"{value:.1f}ms" if value >= 10 else f"{value:.2f}ms"


def _clip(text: Any, width: int) -> str:
    s = "".join(c if c.isprintable() else "?" for c in str(text))  # no terminal control sequences
    return s if len(s) <= width else s[: width - 1] + "~"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(text())


def _why_empty(args: argparse.Namespace, archive: Any) -> None:
    """After an empty answer, say on stderr when the archive holds nothing at all (the wrong
    folder, such as ``archive/traces`` for ``archive``, or an empty bucket): otherwise that
    looks exactly like a search that matched nothing."""
    if archive._lists_nothing():
        where = archive._source.describe() if archive._source is not None else "memory"
        sys.stderr.write(
            f"pitchey-trace: note: the archive holds no objects ({_clip(where, 200)}); an archive"
            " directory has traces/, audit/, performance/ and logs/ folders under it\n"
        )
        return
    service = getattr(args, "service", None)
    if service and hasattr(args, "until"):
        # A misspelt --service answers like a quiet one: name the services the window has.
        known = [row["service"] for row in archive.overview(**_window(args))["services"]]
        if known and service not in known:
            names = ", ".join(_clip(k, 40) for k in known[:10]) + (", ..." if len(known) > 10 else "")
            sys.stderr.write(
                f"pitchey-trace: note: no span of service {_clip(service, 60)!r} in this window;"
                f" services in it: {names}\n"
            )


def _search(args: argparse.Namespace) -> int:
    archive = _archive(args)
    found = archive.search(
        service=args.service,
        name=args.name,
        min_duration_ms=args.min_duration,
        max_duration_ms=args.max_duration,
        status=args.status,
        attributes=dict(args.attr) if args.attr else None,
        log=args.log,
        sort=args.sort,
        limit=args.limit,
        **_window(args),
    )

    def text() -> str:
        if not found:
            return "no trace matches\n"
        rows = [
            [
                _when(t["start_time_unix_nano"]),
                _ms(t["duration_ms"]),
                str(t["span_count"]),
                str(t["error_count"]) if t["error_count"] else "",
                _clip(t["service"], 20),
                _clip(t["name"], 40),
                t["trace_id"],
            ]
            for t in found
        ]
        return _table(["start (UTC)", "duration", "spans", "errors", "service", "name", "trace id"], rows)

    _emit(args, found, text)
    if not found:
        _why_empty(args, archive)
    return 0


def _waterfall(view: dict[str, Any], analysis: dict[str, Any], width: int = 40) -> str:
    total = max(view["duration_ms"], 1e-9)
    out = [
        f"trace {view['trace_id']}  {_ms(view['duration_ms'])}  {view['span_count']} spans"
        f"  {view['error_count']} errors  services: {', '.join(view['services'])}",
        f"started {_when(view['start_time_unix_nano'])}   (* critical path, ! error)",
        "",
    ]
    for s in view["spans"]:  # (the first --limit of them: see _show)
        left = min(width - 1, int(s["offset_ms"] / total * width))
        length = max(1, round(s["duration_ms"] / total * width))
        bar = (" " * left + "#" * length)[:width].ljust(width)
        mark = ("!" if s.get("status") == "error" else " ") + ("*" if s["on_critical_path"] else " ")
        label = _clip("  " * min(s["depth"], 20) + str(s.get("name", "")), 48)
        out.append(f"|{bar}| {mark} {label:<48} {_ms(s['duration_ms']):>9}  self {_ms(s['self_time_ms'])}")
    hidden = view["span_count"] - len(view["spans"])
    if hidden > 0:
        out.append(f"... {hidden:,} more spans not shown (--limit N shows more, --all every one)")
    if view["missing_parents"]:
        out.append(
            f"\n{len(view['missing_parents'])} parent span(s) not in the archive (not sampled or lost)"
        )
    logs = view.get("logs") or []
    if logs:
        log_count = view.get("log_count", len(logs))
        out.append(f"\nlogs ({log_count}):")
        for log in logs:
            first = str(log["body"]).split("\n", 1)[0]
            out.append(
                f"  {'+' + _ms(log['offset_ms']):>10}  {_clip(log['severity_text'], 8):<8} "
                f"{_clip(log['logger'], 24):<24} {_clip(first, 90)}"
            )
        if log_count > len(logs):
            out.append(f"  ... {log_count - len(logs):,} more log lines not shown (--limit N, --all)")
    b = analysis["bottleneck"]
    if b:
        out.append(
            f"\nbottleneck: {_clip(b['name'], 60)} ({_clip(b['service'], 30)}): {_ms(b['self_time_ms'])} "
            f"of its own time, {b['share']:.0%} of the trace"
        )
    db = analysis["db"]
    if db["queries"]:
        out.append(f"database: {db['queries']} queries, {_ms(db['total_ms'])}")
    for g in analysis["n_plus_one"][:_SHOW_LINES]:
        out.append(
            f"N+1: {g['count']}x under {_clip(g['parent_name'], 40)} ({_ms(g['total_ms'])}): "
            f"{_clip(g['statement'], 80)}"
        )
    _more(out, analysis["n_plus_one"], "N+1 groups")
    for e in analysis["errors"][:_SHOW_LINES]:
        # as `errors` describes it: the exception, else the status message, else `HTTP 502`
        what = " ".join(filter(None, [_clip(e["exception_type"] or "", 40), _clip(e["message"] or "", 100)]))
        out.append(f"error in {_clip(e['name'], 40)}: {what or 'error'}")
    _more(out, analysis["errors"], "failed spans")
    return "\n".join(out) + "\n"


#: N+1 groups and failed spans listed under a waterfall (--json lists up to --limit).
_SHOW_LINES = 20
#: Spans (and log lines) ``show`` prints by default: a 50,000-span trace was 50,000 lines.
_SHOW_SPANS = 1000
#: Longest attribute value ``show --json`` prints whole (as the HTTP API's trace answer): a
#: 10,000-span trace of 100 kB values was a 1 GB answer.
_VALUE_CHARS = 4000


def _more(out: list[str], items: list[Any], what: str) -> None:
    if len(items) > _SHOW_LINES:
        out.append(f"... {len(items) - _SHOW_LINES:,} more {what} (--json lists them)")


def _cut_value(value: Any) -> tuple[Any, int | None]:
    """A value cut at :data:`_VALUE_CHARS` (a list or map as its JSON text) and its whole
    length, or ``(value, None)`` when it is not longer."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        return value, None
    return (text[:_VALUE_CHARS], len(text)) if len(text) > _VALUE_CHARS else (value, None)


def _cut_maps(record: Any, *fields: str) -> Any:
    """``record`` (a span, event, link or log line) with the long values of its attribute maps
    cut, and ``clipped``: ``{field: {key: whole length}}``, as the HTTP API answers a trace.
    The engine's dicts are not changed: a record with something cut is a copy."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    clipped: dict[str, dict[str, int]] = {}
    for field in fields:
        attrs = record.get(field)
        if not isinstance(attrs, dict):
            continue
        for key, value in attrs.items():
            short, length = _cut_value(value)
            if length is not None:
                if field not in clipped:
                    out[field] = dict(attrs)
                    clipped[field] = {}
                out[field][key] = short
                clipped[field][str(key)] = length
    for field in ("events", "links"):
        items = record.get(field)
        if isinstance(items, list):
            out[field] = [_cut_maps(item, "attributes") for item in items]
    if clipped:
        out["clipped"] = clipped
    return out


def _show(args: argparse.Namespace) -> int:
    archive = _archive(args)
    since = args.since if args.since is not None else args.last
    trace_id = args.trace_id.strip()
    if len(trace_id) < 8 or len(trace_id) > 32 or not re.fullmatch(r"[0-9a-fA-F]+", trace_id):
        raise PitcheyTraceError(
            f"a trace id is 32 hex characters (or the first 8 or more of them), got {trace_id!r}"
        )
    if 8 <= len(trace_id) < 32:  # a shortened id, as the pages and many logs show it
        try:
            matches = archive.resolve(trace_id, since=since)
        except ValueError as exc:
            raise PitcheyTraceError(str(exc)) from None
        if len(matches) > 1:
            sys.stderr.write(f"pitchey-trace: {trace_id} matches several traces:\n")
            sys.stderr.write("".join(f"  {m}\n" for m in matches))
            return 2
        if not matches:
            sys.stderr.write(f"pitchey-trace: no trace id in the archive starts with {trace_id}\n")
            _why_empty(args, archive)
            return 1
        trace_id = matches[0]
    limit = None if args.all else args.limit
    try:
        view = archive.trace(trace_id, since=since, limit=limit)
    except ValueError as exc:
        raise PitcheyTraceError(str(exc)) from None
    if view is None:
        sys.stderr.write(f"pitchey-trace: trace {trace_id} is not in the archive\n")
        _why_empty(args, archive)
        return 1
    analysis = archive.analyze(trace_id, since=since)
    if args.json:
        if not args.full_values:
            view["spans"] = [_cut_maps(s, "attributes", "resource") for s in view["spans"]]
            view["logs"] = [_cut_maps(r, "attributes") for r in view["logs"]]
        if limit is not None:  # (the analysis's lists as long as the spans shown at most)
            for key in ("critical_path", "by_operation", "n_plus_one", "errors"):
                analysis[key] = analysis[key][:limit]
            for g in analysis["n_plus_one"]:
                g["span_ids"] = g["span_ids"][:limit]
        hidden = view["span_count"] - len(view["spans"])
        if hidden > 0:  # (on stderr: stdout stays one JSON document)
            sys.stderr.write(
                f"pitchey-trace: note: {len(view['spans']):,} of {view['span_count']:,} spans"
                " printed (--limit N prints more, --all every one)\n"
            )
    _emit(args, {"trace": view, "analysis": analysis}, lambda: _waterfall(view, analysis))
    return 0


def _source_text(source: str) -> str:
    return "rollups (every span)" if source == "rollups" else "archived spans (kept ones only)"


def _series(args: argparse.Namespace) -> int:
    step_s: int = args.step if args.step is not None else 60
    archive = _archive(args)
    out = archive.series(service=args.service, operation=args.operation, step_s=step_s, **_window(args))

    def text() -> str:
        points = out["points"]
        if not points:
            return "no spans or rollups in this window\n"
        body = [
            [
                _when(p["start_unix_nano"]),
                str(p["count"]),
                f"{p['error_rate']:.1%}",
                _ms(p["p50_ms"]),
                _ms(p["p95_ms"]),
                _ms(p["p99_ms"]),
                _ms(p["max_ms"]),
            ]
            for p in points
        ]
        heads = [f"from (UTC), every {out['point_s']}s", "count", "errors", "p50", "p95", "p99", "max"]
        notes = [f"from {_source_text(out['source'])}"]
        if out["point_s"] != step_s:  # finer than the data: say what the points are
            minutes = out["point_s"] // 60
            notes.append(
                f"each point is {'one minute' if minutes == 1 else f'{minutes} minutes'}: the rollups "
                f"are per minute, so --step {_seconds(step_s)} is rounded up to whole minutes"
            )
        notes += _merged(args, out["operations"])
        return _table(heads, body) + "".join(f"{n}\n" for n in notes)

    _emit(args, out, text)
    if not out["points"]:
        _why_empty(args, archive)
    return 0


def _seconds(step_s: int) -> str:
    """A step as it would be typed: ``10s``, ``5m``, ``2h``."""
    for unit, n in (("h", 3600), ("m", 60)):
        if step_s % n == 0:
            return f"{step_s // n}{unit}"
    return f"{step_s}s"


def _merged(args: argparse.Namespace, operations: list[dict[str, Any]]) -> list[str]:
    """The lines that say which operations a series adds up, when it is more than one (their
    latencies mixed: an HTTP request's and a database query's in one p50)."""
    if len(operations) < 2:
        return []
    kinds = sorted({o["kind"] for o in operations})
    mixed = f"{', '.join(kinds)} spans mixed" if len(kinds) > 1 else f"{kinds[0]} spans"
    if args.operation is not None:
        which = ", ".join(_clip(f"{o['service']} {o['kind']}", 40) for o in operations[:6])
        more = f" and {len(operations) - 6} more" if len(operations) > 6 else ""
        return [
            f"{len(operations)} operations named {_clip(args.operation, 40)} together: {which}{more}"
            + ("" if len({o["service"] for o in operations}) < 2 else " (--service picks one service)")
        ]
    services = sorted({o["service"] for o in operations})
    of = f"of {len(services)} services" if len(services) > 1 else f"of {_clip(services[0], 30)}"
    return [
        f"all {len(operations)} operations {of} together ({mixed}); "
        "--operation NAME for one (perf without --step lists them)"
    ]


def _compare(args: argparse.Namespace) -> int:
    window = _window(args)
    if window["since"] is None:
        raise ValueError("--compare needs a window: --last 1h (compared with the hour before it)")
    rows = _archive(args).compare(service=args.service, **window)

    def change(r: dict[str, Any]) -> str:
        if r["p95_change"] is not None:
            return f"{r['p95_change']:+.0%}"
        return "new" if r["count"] else "gone"

    def text() -> str:
        if not rows:
            return "no spans or rollups in either window\n"
        body = [
            [
                _clip(r["service"], 20),
                _clip(r["operation"], 40),
                r["kind"],
                f"{r['baseline_count']} -> {r['count']}",
                _ms(r["baseline_p95_ms"]),
                _ms(r["p95_ms"]),
                change(r),
                "-" if r["error_rate"] is None else f"{r['error_rate']:.1%}",
            ]
            for r in rows[: args.limit]
        ]
        heads = ["service", "operation", "kind", "calls", "p95 before", "p95 now", "change", "errors now"]
        return (
            _table(heads, body)
            + f"the window against the one of the same length before it ({rows[0]['source']})\n"
        )

    _emit(args, rows[: args.limit], text)
    return 0


def _perf(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if args.operation or args.step is not None:
        return _series(args)
    archive = _archive(args)
    rows = archive.performance(service=args.service, **_window(args))

    def text() -> str:
        if not rows:
            return "no spans or rollups in this window\n"
        body = [
            [
                _clip(r["service"], 20),
                _clip(r["operation"], 40),
                r["kind"],
                str(r["count"]),
                f"{r['error_rate']:.1%}",
                _ms(r["p50_ms"]),
                _ms(r["p95_ms"]),
                _ms(r["p99_ms"]),
                _ms(r["max_ms"]),
            ]
            for r in rows[: args.limit]
        ]
        heads = ["service", "operation", "kind", "count", "errors", "p50", "p95", "p99", "max"]
        return _table(heads, body) + f"from {_source_text(rows[0]['source'])}\n"

    _emit(args, rows[: args.limit], text)
    if not rows:
        _why_empty(args, archive)
    return 0


def _errors(args: argparse.Namespace) -> int:
    archive = _archive(args)
    groups = archive.errors(service=args.service, limit=args.limit, **_window(args))

    def text() -> str:
        if not groups:
            return "no errors in this window\n"
        body = [
            [
                str(g["count"]),
                _clip(g["service"], 20),
                _clip(g["name"], 32),
                _clip(g["exception_type"] or "-", 24),
                _clip(g["message"], 50),
                _when(g["last_seen_unix_nano"]),
                g["trace_ids"][0],
            ]
            for g in groups
        ]
        return _table(["count", "service", "span", "exception", "message", "last seen", "a trace"], body)

    _emit(args, groups, text)
    if not groups:
        _why_empty(args, archive)
    return 0


def _deps(args: argparse.Namespace) -> int:
    archive = _archive(args)
    rows = archive.dependencies(service=args.service, **_window(args))

    def text() -> str:
        if not rows:
            return "no calls in this window\n"
        body = []
        for r in rows[: args.limit]:
            calls, errors = r["estimated_calls"], r["estimated_errors"]
            if calls is None or errors is None:  # no rollups to estimate from: the kept calls
                calls, errors = r["count"], r["errors"]
            body.append(
                [
                    _clip(r["caller"] or "(outside)", 24),
                    _clip(r["callee"], 36) + ("" if r["traced"] else " *"),
                    r["protocol"],
                    str(calls),
                    str(r["count"]),
                    f"{errors / calls if calls else 0.0:.1%}",
                    _ms(r["p50_ms"]),
                    _ms(r["p95_ms"]),
                    _ms(r["p99_ms"]),
                ]
            )
        heads = ["caller", "callee", "protocol", "calls", "kept", "errors", "p50", "p95", "p99"]
        return _table(heads, body) + (
            "calls: every call, estimated from the rollups where they count the operation; kept: those\n"
            "in the archive, which the latencies are of\n"
            "* not traced: named from the caller's span; times as the caller saw them\n"
        )

    _emit(args, rows[: args.limit], text)
    if not rows:
        _why_empty(args, archive)
    return 0


def _logs(args: argparse.Namespace) -> int:
    archive = _archive(args)
    found = archive.logs(
        service=args.service,
        level=args.level,
        text=args.grep,
        trace_id=args.trace_id,
        limit=args.limit,
        **_window(args),
    )

    def text() -> str:
        if not found:
            return "no log line matches\n"
        body = [
            [
                _when(r["time_unix_nano"]),
                _clip(str(r.get("severity_text") or ""), 8),
                _clip(str(r.get("service") or ""), 20),
                _clip(str(r.get("logger") or ""), 24),
                _clip(str(r.get("body") or "").split("\n", 1)[0], 80),
                _clip(r.get("trace_id") or "", 32),  # (whatever the archive holds, as text)
            ]
            for r in found
        ]
        return _table(["time (UTC)", "level", "service", "logger", "message", "trace id"], body)

    _emit(args, found, text)
    if not found:
        _why_empty(args, archive)
    return 0


def _audit(args: argparse.Namespace) -> int:
    archive = _archive(args)
    found = archive.audit(
        category=args.category,
        actor=args.actor,
        action=args.action,
        outcome=args.outcome,
        trace_id=args.trace_id,
        limit=args.limit,
        **_window(args),
    )

    def text() -> str:
        if not found:
            return "no audit record matches\n"
        body = [
            [
                _when(a["time_unix_nano"]),
                _clip(a.get("category") or "", 12),
                _clip(a.get("actor") or "-", 20),
                _clip(a.get("action") or "", 36),
                _clip(a.get("target") or "", 30),
                _clip(a.get("outcome") or "", 16),
                _clip(a.get("trace_id") or "", 32),  # (whatever the archive holds, as text)
            ]
            for a in found
        ]
        return _table(["time (UTC)", "category", "actor", "action", "target", "outcome", "trace id"], body)

    _emit(args, found, text)
    if not found:
        _why_empty(args, archive)
    return 0


def _overview(args: argparse.Namespace) -> int:
    archive = _archive(args)
    ov = archive.overview(**_window(args))

    def text() -> str:
        lines = [
            f"{ov['traces']} traces, {ov['spans']} spans, "
            f"{ov['errors']} error spans ({ov['error_rate']:.1%})",
            f"from {_when(ov['start_time_unix_nano'])} to {_when(ov['end_time_unix_nano'])}",
        ]
        lines += [
            f"  {_clip(s['service'], 30):<30} {s['spans']:>8} spans {s['errors']:>6} errors"
            for s in ov["services"]
        ]
        if ov["slowest"]:
            lines.append("slowest traces:")
            lines += [
                f"  {_ms(t['duration_ms']):>9}  {t['trace_id']}  {_clip(t['name'], 50)}"
                for t in ov["slowest"]
            ]
        if ov["recent_errors"]:
            lines.append("latest failed traces:")
            lines += [
                f"  {_when(t['start_time_unix_nano'])}  {t['trace_id']}  {_clip(t['name'], 50)}"
                for t in ov["recent_errors"]
            ]
        a = ov["audit"]
        lines.append(f"audit: {a['records']} records, {a['security_events']} security events")
        if ov.get("partial"):
            dropped = archive.read_stats.get("dropped_spans", 0)
            lines.append(
                f"partial: {dropped} spans read were left out (--max-spans / --max-mib): "
                "the oldest traces are not in these figures"
            )
        return "\n".join(lines) + "\n"

    _emit(args, ov, text)
    if not ov["spans"] and not ov["audit"]["records"]:
        _why_empty(args, archive)
    return 0


# The PEM headers of an encrypted private key: PKCS#8, and OpenSSL's traditional format.
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:[ \t]*4,[ \t]*ENCRYPTED")


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pitchey_trace.analysis.api import create_app
    except ImportError:
        raise IntegrationUnavailable("pitchey-trace serve", "analysis") from None
    cert, key = args.tls_cert, args.tls_key
    # An encrypted key's password comes from the environment, not the command line (which any
    # user of the machine can read in the process list).
    password = os.environ.get("PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD") or None
    if bool(cert) != bool(key):
        raise PitcheyTraceError("--tls-cert and --tls-key go together")
    if cert:
        # Loaded once here so that a wrong path or a key that does not match the certificate
        # is one line and exit 2, not a traceback from the server's start.
        import ssl

        try:
            # Read first: OpenSSL's "No such file" does not say which file, nor its "PEM lib"
            # that the key is encrypted. (A PEM key is small: the header is in the first MiB.)
            with open(cert, "rb"):
                pass
            with open(key, "rb") as f:
                encrypted = _ENCRYPTED_KEY.search(f.read(1 << 20)) is not None
        except OSError as exc:
            raise PitcheyTraceError(f"--tls-cert/--tls-key: {exc}") from None
        if encrypted and not password:
            raise PitcheyTraceError(
                f"--tls-key {key} is encrypted: set $PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD to its password"
            )
        try:
            # (a callable, so that a key that is encrypted after all fails here instead of
            # OpenSSL asking for its password on the terminal)
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cert, key, lambda: password or ""
            )
        except (OSError, ssl.SSLError) as exc:
            # A wrong password is only a "PEM lib" error: say what may be wrong, but not when the
            # key was read and belongs to another certificate.
            wrong_password = encrypted and getattr(exc, "reason", None) != "KEY_VALUES_MISMATCH"
            hint = " (is $PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD its password?)" if wrong_password else ""
            raise PitcheyTraceError(f"--tls-cert/--tls-key: {exc}{hint}") from None
    archive = _archive(args)
    auth = os.environ.get("PITCHEY_TRACE_ANALYSIS_AUTH") or None
    try:
        # (the name it listens on is allowed too: --host myhost.example)
        app = create_app(archive, basic_auth=auth, allowed_hosts=[*args.allow_host, args.host])
    except ValueError as exc:
        raise PitcheyTraceError(f"PITCHEY_TRACE_ANALYSIS_AUTH: {exc}") from None
    # Bound here rather than by uvicorn: the address line then tells the real port (of
    # --port 0) and only once listening, and a port in use is one line and exit 2.
    sock = _listen(args.host, args.port)
    try:
        url = f"{'https' if cert else 'http'}://{_url_host(args.host)}:{sock.getsockname()[1]}/"
        note = " (HTTP Basic authentication)" if auth else ""
        sys.stderr.write(f"pitchey-trace: serving {archive!r} on {url}{note}\n")
        if auth and not cert and args.host not in ("127.0.0.1", "localhost", "::1"):
            sys.stderr.write(
                "pitchey-trace: warning: Basic authentication over plain HTTP sends the password in "
                "clear text to anyone on the path; add --tls-cert/--tls-key or a TLS proxy\n"
            )
        config = uvicorn.Config(
            app,
            log_level="warning",
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_keyfile_password=password if cert else None,
            # Ctrl-C / SIGTERM: a browser's idle keep-alive connection over TLS never answers
            # the close (uvicorn waited on it for ever); requests under way get this long
            timeout_graceful_shutdown=5,
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # re-raised once the server stopped on Ctrl-C (uvicorn.run hides it too)
            pass
    finally:
        sock.close()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address, in a URL, is in brackets


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host`` (a name, an IPv4 or IPv6 address) and ``port``."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family)
    except socket.gaierror as exc:  # an unknown host name
        raise PitcheyTraceError(f"cannot listen on {_url_host(host)}:{port}: {exc.strerror or exc}") from None
    except OSError as exc:  # (create_server's own message repeats the address)
        detail = os.strerror(exc.errno) if exc.errno else str(exc)
        raise PitcheyTraceError(f"cannot listen on {_url_host(host)}:{port}: {detail}") from None


def _source_options(p: argparse.ArgumentParser, window: bool = True, json: bool = True) -> None:
    src = p.add_argument_group("archive")
    src.add_argument(
        "--archive",
        "-a",
        metavar="DIR",
        action="append",
        help="local archive directory (default: $PITCHEY_TRACE_ARCHIVE); repeat to read several as one",
    )
    src.add_argument(
        "--s3-config", metavar="FILE", help="read the S3/R2 buckets of this logpush config instead"
    )
    src.add_argument("--cache-dir", metavar="DIR", help="with --s3-config: keep downloaded objects here")
    src.add_argument(
        "--s3-concurrency",
        type=_concurrency,
        default=8,
        metavar="N",
        help="with --s3-config: downloads in flight, 1 to 64 (default 8)",
    )
    src.add_argument(
        "--max-spans",
        type=_positive_int,
        metavar="N",
        help="read at most about N spans, newest first (bounds memory)",
    )
    src.add_argument(
        "--max-mib",
        type=_positive_int,
        metavar="N",
        help="hold spans of at most about N MiB of memory, newest first (default with --max-spans:"
        " 8 KiB a span, at least 64 MiB)",
    )
    if json:  # (not for serve, whose answers are JSON over HTTP)
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
    if window:
        w = p.add_argument_group("time window (relative: 15m, 24h, 7d; or ISO-8601, or Unix ns)")
        start = w.add_mutually_exclusive_group()  # (both: a usage error, not one of them ignored)
        start.add_argument(
            "--last", type=_age, metavar="AGE", help="only the last AGE: 15m, 24h, 7d (same as --since AGE)"
        )
        start.add_argument("--since", metavar="TIME", help="from TIME (one of --last and --since)")
        w.add_argument("--until", metavar="TIME")


def _add_analysis(sub: Subparsers) -> None:
    p = sub.add_parser(
        "search", help="find traces in the archive", description="Traces with a span matching every filter."
    )
    _source_options(p)
    p.add_argument("--service")
    p.add_argument("--name", help="span name, or a glob such as 'SELECT *'")
    p.add_argument(
        "--min-duration", type=_duration_ms, metavar="D", help="e.g. 250ms, 1s (of the matching span)"
    )
    p.add_argument("--max-duration", type=_duration_ms, metavar="D")
    p.add_argument("--status", choices=("error", "ok", "unset"))
    p.add_argument("--attr", type=_attribute, action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--log", metavar="TEXT", help="the trace has a log line containing TEXT (any case)")
    p.add_argument("--sort", choices=("recent", "duration"), default="recent", help="(default recent)")
    p.add_argument("--limit", type=_positive_int, default=20, help="at most this many traces (default 20)")
    p.set_defaults(func=_search)

    text = "one trace: waterfall, critical path, bottleneck, N+1, errors"
    p = sub.add_parser("show", help=text, description=text[:1].upper() + text[1:] + ".")
    p.add_argument("trace_id", help="32 hex characters, or the first 8 or more of them")
    _source_options(p, window=False)
    w = p.add_argument_group("reading less of a big archive")
    start = w.add_mutually_exclusive_group()  # (both: a usage error, not one of them ignored)
    start.add_argument(
        "--last", type=_age, metavar="AGE", help="read only objects that can hold spans of the last AGE (24h)"
    )
    start.add_argument("--since", metavar="TIME", help="the same from TIME (not with --last)")
    size = p.add_argument_group("a big trace")
    many = size.add_mutually_exclusive_group()
    many.add_argument(
        "--limit",
        type=_positive_int,
        default=_SHOW_SPANS,
        metavar="N",
        help=f"print the first N spans and log lines, depth-first (default {_SHOW_SPANS:,})",
    )
    many.add_argument("--all", action="store_true", help="print every span and log line")
    size.add_argument(
        "--full-values",
        action="store_true",
        help=f"with --json: attribute values whole (default: cut at {_VALUE_CHARS:,} characters, "
        "their whole length under the record's 'clipped')",
    )
    p.set_defaults(func=_show)

    text = "latency per operation: count, error rate, p50/p95/p99, max; over time with --operation/--step"
    p = sub.add_parser("perf", help=text, description=text[:1].upper() + text[1:] + ".")
    _source_options(p)
    p.add_argument("--service")
    p.add_argument(
        "--operation",
        help="one operation over time (a row per --step); --step without it adds up every operation",
    )
    p.add_argument(
        "--step",
        type=_step_s,
        metavar="D",
        help="time step of the series, whole seconds from 1s, e.g. 1m, 5m, 1h (default 1m; "
        "rollups are per minute: from them, rounded up to whole minutes)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="each operation in the window beside the window of the same length before it (needs --last)",
    )
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many rows (default 50)")
    p.set_defaults(func=_perf)

    text = "error groups: same span, exception type and message shape"
    p = sub.add_parser(
        "errors", help=text, description=text[:1].upper() + text[1:] + "; most frequent first."
    )
    _source_options(p)
    p.add_argument("--service")
    p.add_argument("--limit", type=_positive_int, default=20, help="at most this many groups (default 20)")
    p.set_defaults(func=_errors)

    text = "who calls whom: calls, errors and latency per edge of the service map"
    p = sub.add_parser("deps", help=text, description=text[:1].upper() + text[1:] + ".")
    _source_options(p)
    p.add_argument("--service", help="only the edges this service is on")
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many edges (default 50)")
    p.set_defaults(func=_deps)

    text = "audit records, newest first: who did what, with which outcome"
    p = sub.add_parser("audit", help=text, description=text[:1].upper() + text[1:] + ".")
    _source_options(p)
    p.add_argument("--category", help="request, security or data_access")
    p.add_argument("--actor")
    p.add_argument("--action", help="e.g. 'POST /login', or a glob such as 'POST *'")
    p.add_argument("--outcome", help="e.g. 403, denied")
    p.add_argument("--trace-id", metavar="ID")
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many records (default 50)")
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "logs",
        help="the application's log lines (shipped by export_logs), newest first",
        description="The application's log lines, newest first. The archive holds them only when they "
        "are shipped: export_logs() in code, or pitchey-trace run --export-logs INFO.",
    )
    _source_options(p)
    p.add_argument("--service")
    p.add_argument("--level", help="the least severity: DEBUG, INFO, WARNING, ERROR, CRITICAL (or 1-24)")
    p.add_argument("--grep", metavar="TEXT", help="TEXT in the message (any case)")
    p.add_argument("--trace-id", metavar="ID")
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many lines (default 100)")
    p.set_defaults(func=_logs)

    text = "totals, services, slowest and failed traces, audit counts"
    p = sub.add_parser("overview", help=text, description=text[:1].upper() + text[1:] + ".")
    _source_options(p)
    p.set_defaults(func=_overview)

    p = sub.add_parser(
        "serve",
        help="HTTP API and waterfall page over the archive (extra: analysis)",
        description="HTTP API and waterfall page over the archive (pip install 'pitchey-trace[analysis]'). "
        "$PITCHEY_TRACE_ANALYSIS_AUTH=user:password requires HTTP Basic authentication.",
    )
    _source_options(p, window=False, json=False)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_port, default=8080, help="0 to 65535 (default 8080)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeat it; '*': any). By default only IP "
        "addresses, localhost and --host are (a page on another site could read the archive "
        "through DNS rebinding)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument(
        "--tls-key",
        metavar="FILE",
        help="the certificate's PEM private key (if encrypted: $PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD)",
    )
    p.set_defaults(func=_serve)


#: Functions that register the sub-commands (see the module docstring).
COMMANDS: list[Callable[[Subparsers], None]] = [_add_config, _add_run, _add_logpush, _add_analysis]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from pitchey_trace import __version__

    parser = argparse.ArgumentParser(prog="pitchey-trace", description="pitchey-trace command line tools")
    parser.add_argument("--version", action="version", version=f"pitchey-trace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage or configuration errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # (here: a closed pipe is found now, not at exit)
    except BrokenPipeError:
        # The reader is gone (``| head -1``): nothing more to say, and no traceback. Further
        # writes (Python flushes stdout at exit) go nowhere; 141 is what a shell reports for a
        # command ended by SIGPIPE.
        _discard_stdout()
        return 141
    except (PitcheyTraceError, ImportError, ValueError) as exc:
        sys.stderr.write(f"pitchey-trace: error: {exc}\n")
        return 2
    return code


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # (stdout without a file descriptor: replaced instead)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
