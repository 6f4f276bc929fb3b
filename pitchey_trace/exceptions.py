"""Exceptions raised by pitchey-trace.

The tree::

    PitcheyTraceError
    ├── ConfigurationError (also ValueError)     bad argument to configure() or a component
    └── IntegrationUnavailable (also ImportError) an optional extra (psycopg, boto3...) is missing

Only configuration-time code raises these. Code on the tracing path never raises into the
application: internal failures are logged on the ``pitchey_trace`` logger and counted
(see :func:`pitchey_trace.stats`).
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "IntegrationUnavailable", "PitcheyTraceError"]


class PitcheyTraceError(Exception):
    """Base class of every exception pitchey-trace raises on purpose."""


class ConfigurationError(PitcheyTraceError, ValueError):
    """An invalid argument was given to :func:`pitchey_trace.configure` or a component."""


class IntegrationUnavailable(PitcheyTraceError, ImportError):
    """An optional dependency needed by an integration is not installed."""

    def __init__(self, integration: str, extra: str) -> None:
        super().__init__(f"{integration} needs an optional dependency: pip install 'pitchey-trace[{extra}]'")
        self.integration = integration
        self.extra = extra
