"""Head samplers: decide at span start whether a trace is sampled.

A sampler is any object with ``should_sample(parent, trace_id, name, kind, attributes) ->
Decision``. ``parent`` is the span-like parent (local span or remote context) or None for a
root. Three outcomes:

* ``Decision.DROP`` - a no-op span (unless tail keeping or rollups need it recorded, then it is
  upgraded to RECORD_ONLY by the tracer);
* ``Decision.RECORD_ONLY`` - timed and recorded, exported only if the tail policy keeps its
  trace (an error or a slow span in it);
* ``Decision.RECORD_AND_SAMPLE`` - recorded and exported; the sampled flag is propagated.

The ratio sampler uses OpenTelemetry's TraceIdRatioBased rule on the low 64 bits of the trace
id, so every service in a trace - ours or OpenTelemetry's - reaches the same decision.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from pitchey_trace._ids import FLAG_SAMPLED
from pitchey_trace._validate import finite
from pitchey_trace.exceptions import ConfigurationError

__all__ = [
    "ALWAYS_OFF",
    "ALWAYS_ON",
    "AlwaysOff",
    "AlwaysOn",
    "Decision",
    "ParentBased",
    "RateLimited",
    "Rule",
    "RuleBased",
    "Sampler",
    "TraceIdRatio",
    "bind_service",
    "per_trace",
    "sampler_from_name",
]


def _check_sampler(label: str, sampler: Any) -> Any:
    """``sampler`` if it has ``should_sample()``; a TypeError naming ``label`` otherwise (made
    when the sampler is, not on every span: a broken delegate would drop them all)."""
    if not callable(getattr(sampler, "should_sample", None)):
        raise TypeError(f"{label} must be a sampler (with should_sample()), got {type(sampler).__name__}")
    return sampler


class Decision(enum.IntEnum):
    """Outcome of a head-sampling decision."""

    DROP = 0
    RECORD_ONLY = 1
    RECORD_AND_SAMPLE = 2


@runtime_checkable
class Sampler(Protocol):
    """Anything that decides whether a new span's trace is sampled."""

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        """Return the decision for a new span."""
        ...


class AlwaysOn:
    """Sample every trace."""

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        return Decision.RECORD_AND_SAMPLE

    def __repr__(self) -> str:
        return "AlwaysOn()"


class AlwaysOff:
    """Sample no trace (tail keeping may still export errors and slow traces)."""

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        return Decision.DROP

    def __repr__(self) -> str:
        return "AlwaysOff()"


ALWAYS_ON = AlwaysOn()
ALWAYS_OFF = AlwaysOff()

_ID_LIMIT = (1 << 64) - 1


def _check_rate(rate: float) -> float:
    # A bool or a str is a mistake, not a rate (True would mean "sample everything"); the
    # environment's text is converted by sampler_from_name/sampler_from_env first.
    if isinstance(rate, (bool, str, bytes, bytearray)):
        raise ConfigurationError(f"sample rate must be a number in [0, 1], got {rate!r}")
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ConfigurationError(f"sample rate must be a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= rate <= 1.0 or rate != rate:
        raise ConfigurationError(f"sample rate must be in [0, 1], got {rate!r}")
    return rate


class TraceIdRatio:
    """Sample a fixed fraction of traces, consistently: the same trace id always gets the same
    decision in every service (OpenTelemetry's TraceIdRatioBased rule)."""

    def __init__(self, rate: float) -> None:
        self.rate = _check_rate(rate)
        self.bound = round(self.rate * (_ID_LIMIT + 1))

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        return Decision.RECORD_AND_SAMPLE if trace_id & _ID_LIMIT < self.bound else Decision.DROP

    def __repr__(self) -> str:
        return f"TraceIdRatio({self.rate})"


class ParentBased:
    """Follow the parent's sampled flag; use ``root`` for traces that start here.

    By default a sampled parent (local or remote) means sampled and an unsampled one means
    not sampled, which keeps a distributed trace whole.
    """

    def __init__(
        self,
        root: Sampler,
        *,
        remote_sampled: Sampler = ALWAYS_ON,
        remote_not_sampled: Sampler = ALWAYS_OFF,
        local_sampled: Sampler = ALWAYS_ON,
        local_not_sampled: Sampler = ALWAYS_OFF,
    ) -> None:
        for label, delegate in (
            ("root", root),
            ("remote_sampled", remote_sampled),
            ("remote_not_sampled", remote_not_sampled),
            ("local_sampled", local_sampled),
            ("local_not_sampled", local_not_sampled),
        ):
            _check_sampler(f"ParentBased {label}", delegate)
        self.root = root
        self.remote_sampled = remote_sampled
        self.remote_not_sampled = remote_not_sampled
        self.local_sampled = local_sampled
        self.local_not_sampled = local_not_sampled

    @property
    def follows_parent_exactly(self) -> bool:
        """True with the default delegates: the tracer then inlines the parent check."""
        return (
            self.remote_sampled is ALWAYS_ON
            and self.local_sampled is ALWAYS_ON
            and self.remote_not_sampled is ALWAYS_OFF
            and self.local_not_sampled is ALWAYS_OFF
        )

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        if parent is None:
            return self.root.should_sample(parent, trace_id, name, kind, attributes)
        sampled = parent.trace_flags & FLAG_SAMPLED
        if parent.is_remote:
            delegate = self.remote_sampled if sampled else self.remote_not_sampled
        else:
            delegate = self.local_sampled if sampled else self.local_not_sampled
        return delegate.should_sample(parent, trace_id, name, kind, attributes)

    def __repr__(self) -> str:
        return f"ParentBased(root={self.root!r})"


class Rule:
    """One sampling rule: spans whose service and name match the glob patterns get ``rate``."""

    def __init__(self, rate: float, *, name: str = "*", service: str = "*") -> None:
        self.rate = _check_rate(rate)
        self.name = name
        self.service = service
        self._name_re = re.compile(fnmatch.translate(name)).match
        self._service_re = re.compile(fnmatch.translate(service)).match
        self.sampler = TraceIdRatio(self.rate)

    def matches(self, service: str, name: str) -> bool:
        """True when both patterns match."""
        return bool(self._service_re(service)) and bool(self._name_re(name))

    def __repr__(self) -> str:
        return f"Rule({self.rate}, name={self.name!r}, service={self.service!r})"


class RuleBased:
    """The first matching rule's rate decides (consistently on the trace id); else ``default``.

    Decisions are cached per span name, so rules cost one dict lookup after the first span
    of each name.
    """

    def __init__(
        self, rules: Iterable[Rule], *, default: Sampler | float = 1.0, service: str | None = None
    ) -> None:
        self.rules = list(rules)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ConfigurationError(f"RuleBased takes Rule objects, got {rule!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            self.default: Sampler = TraceIdRatio(default)
        else:
            self.default = _check_sampler("RuleBased default", default)
        #: The service the rules' ``service`` patterns are matched against; ``configure()`` sets
        #: it to the configured service when left as None.
        self.service = service
        self._cache: dict[str, Sampler] = {}

    def _for(self, name: str) -> Sampler:
        sampler = self._cache.get(name)
        if sampler is None:
            sampler = next(
                (r.sampler for r in self.rules if r.matches(self.service or "", name)), self.default
            )
            if len(self._cache) < 10_000:  # names should be low-cardinality; stay bounded anyway
                self._cache[name] = sampler
        return sampler

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        return self._for(name).should_sample(parent, trace_id, name, kind, attributes)

    def __repr__(self) -> str:
        return f"RuleBased({self.rules!r}, default={self.default!r})"


class RateLimited:
    """At most ``max_per_second`` sampled traces per second (token bucket), after ``inner``."""

    def __init__(self, max_per_second: float, inner: Sampler = ALWAYS_ON) -> None:
        self.max_per_second: float = finite("max_per_second", max_per_second, 0.0, 1e12)  # type: ignore[assignment]
        self.inner: Sampler = _check_sampler("RateLimited inner", inner)
        # At least one whole token fits, so rates below 1/s still sample now and then.
        self._capacity = max(1.0, self.max_per_second) if self.max_per_second > 0 else 0.0
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()
        _rate_limiters.add(self)

    def should_sample(
        self, parent: Any, trace_id: int, name: str, kind: Any, attributes: Mapping[str, Any] | None
    ) -> Decision:
        decision = self.inner.should_sample(parent, trace_id, name, kind, attributes)
        if decision != Decision.RECORD_AND_SAMPLE:
            return decision
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.max_per_second)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return Decision.RECORD_AND_SAMPLE
        return Decision.DROP

    def __repr__(self) -> str:
        return f"RateLimited({self.max_per_second}, inner={self.inner!r})"


# A child forked while another thread held a limiter's lock would wait for it forever (its
# holder does not exist there): each limiter gets a new lock in the child.
_rate_limiters: weakref.WeakSet[RateLimited] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    for limiter in list(_rate_limiters):
        limiter._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def bind_service(sampler: Sampler, service: str) -> None:
    """Give rule samplers (also nested in ParentBased / RateLimited) the configured service."""
    current: Any = sampler
    for _ in range(16):
        if current is None:
            return
        if isinstance(current, RuleBased):
            if current.service is None:
                current.service = service
                current._cache.clear()
            return
        current = getattr(current, "root", None) or getattr(current, "inner", None)


def per_trace(sampler: Sampler) -> Sampler:
    """Samplers decide once per trace: anything but the per-trace-consistent built-ins is
    wrapped in :class:`ParentBased` so that children follow their parent (a rate limiter must
    limit traces, not spans, and must never cut a trace in half)."""
    if isinstance(sampler, (ParentBased, AlwaysOn, AlwaysOff, TraceIdRatio)):
        return sampler
    return ParentBased(sampler)


def sampler_from_name(name: str, arg: str | None = None) -> Sampler:
    """Build a sampler from OpenTelemetry's ``OTEL_TRACES_SAMPLER`` names.

    ``always_on``, ``always_off``, ``traceidratio``, ``parentbased_always_on``,
    ``parentbased_always_off``, ``parentbased_traceidratio`` (ratio from ``arg``, default 1.0).
    """
    key = name.strip().lower()
    rate = 1.0
    if "traceidratio" in key:
        try:
            rate = _check_rate(float(arg)) if arg not in (None, "") else 1.0
        except (ValueError, ConfigurationError):
            raise ConfigurationError(f"invalid sampler argument {arg!r} for {name!r}") from None
    table: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatio(rate),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatio(rate)),
    }
    try:
        return table[key]
    except KeyError:
        raise ConfigurationError(f"unknown sampler {name!r}; expected one of {sorted(table)}") from None


def sampler_from_env() -> Sampler | None:
    """The sampler ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` name; None when unset.

    As the OpenTelemetry specification requires, values this SDK does not know
    (``parentbased_jaeger_remote``, ``xray``, a typo) are logged once and ignored (None: the
    default sampler), and an invalid ratio argument (not a number in [0, 1]) is logged once and
    treated as unset (ratio 1.0). :func:`sampler_from_name` stays strict for explicit calls."""
    from pitchey_trace import _safety

    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip()
    if not name:
        return None
    key = name.lower()
    if key not in _OTEL_SAMPLERS:
        _safety.warn_once(
            "env.OTEL_TRACES_SAMPLER",
            "pitchey_trace: OTEL_TRACES_SAMPLER=%r is not supported (supported: %s); "
            "using the default sampler (parentbased_always_on)",
            name,
            ", ".join(_OTEL_SAMPLERS),
        )
        return None
    arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or None
    if arg is not None and "traceidratio" in key:
        try:
            _check_rate(float(arg))
        except (ValueError, ConfigurationError):
            _safety.warn_once(
                "env.OTEL_TRACES_SAMPLER_ARG",
                "pitchey_trace: OTEL_TRACES_SAMPLER_ARG=%r is not a ratio in [0, 1]; treated as unset (1.0)",
                arg,
            )
            arg = None
    return sampler_from_name(key, arg)


_OTEL_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
