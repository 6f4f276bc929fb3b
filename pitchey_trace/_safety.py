"""The one place where pitchey-trace swallows its own errors.

``guard(kind)`` is a context manager around SDK work done on behalf of user code: any
exception raised inside is counted under ``internal_errors`` and ``internal_errors.<kind>``,
logged on the ``pitchey_trace`` logger (the first time per kind, then at most once a minute
per kind) and never propagates. Tests install a hook that re-raises what was swallowed, so
our bugs still fail tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pitchey_trace import _stats

logger = logging.getLogger("pitchey_trace")

_LOG_EVERY_S = 60.0
_last_logged: dict[str, float] = {}
#: Test hook: called with every swallowed exception (see pitchey_trace.testing).
swallowed_hook: Callable[[str, BaseException], None] | None = None


def report(kind: str, exc: BaseException) -> None:
    """Count and (rate-limited) log an internal error of ``kind``; never raises."""
    try:
        _stats.incr("internal_errors")
        _stats.incr(f"internal_errors.{kind}")
        now = time.monotonic()
        last = _last_logged.get(kind)
        if last is None or now - last >= _LOG_EVERY_S:
            _last_logged[kind] = now
            logger.warning("pitchey_trace internal error (%s): %r", kind, exc, exc_info=exc)
        hook = swallowed_hook
        if hook is not None:
            hook(kind, exc)
    except Exception:  # noqa: S110  (the reporter itself must never fail the caller)
        pass


@contextmanager
def guard(kind: str) -> Iterator[None]:
    """Run the body; report and swallow any ``Exception`` it raises."""
    try:
        yield
    except Exception as exc:
        report(kind, exc)


def warn_once(kind: str, message: str, *args: object) -> None:
    """Log an API-misuse warning once per ``kind`` (rate-limited like errors) and count it."""
    _stats.incr(f"misuse.{kind}")
    now = time.monotonic()
    last = _last_logged.get("misuse." + kind)
    if last is None or now - last >= _LOG_EVERY_S:
        _last_logged["misuse." + kind] = now
        logger.warning(message, *args)
