"""The current span lives in one ContextVar; asyncio tasks inherit it, threads need a copy.

Everything held in the variable is span-like: it has ``trace_id``, ``span_id``,
``trace_flags``, ``trace_state``, ``baggage`` and ``is_remote``. A remote parent attached
without a local span is wrapped in a :class:`~pitchey_trace._span.NonRecordingSpan`.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from pitchey_trace._span import AnySpan

CURRENT: contextvars.ContextVar[AnySpan | None] = contextvars.ContextVar(
    "pitchey_trace_current_span", default=None
)

# True while an instrumented client (requests, botocore) sends a request: the urllib3 call it
# makes underneath is that request, already a CLIENT span, and gets no second one.
IN_HTTP_CLIENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pitchey_trace_in_http_client", default=False
)

P = ParamSpec("P")
R = TypeVar("R")


def wrap_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Return ``fn`` bound to a copy of the current context.

    Use it to hand work to a thread (``threading.Thread(target=pt.wrap_context(work))``) so
    spans started there become children of the span that is current here. Each call runs in
    its own copy of that context, so the wrapper may run in several threads at once or call
    itself (one Context cannot be entered twice).
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the submitter's context.

    Spans opened inside submitted callables are children of the span that was current at
    ``submit()`` time, exactly as with ``asyncio`` tasks.
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)


@contextmanager
def suppress_tracing() -> Iterator[None]:
    """Inside this block no span is recorded and nothing is propagated (exporters run so)."""
    from pitchey_trace._span import SUPPRESSED

    token = CURRENT.set(SUPPRESSED)
    try:
        yield
    finally:
        CURRENT.reset(token)


def is_suppressed() -> bool:
    """True inside :func:`suppress_tracing` (and on the SDK's own worker threads)."""
    from pitchey_trace._span import SUPPRESSED

    return CURRENT.get() is SUPPRESSED
