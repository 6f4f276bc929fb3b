"""Exceptions raised by pitchey-trace.

The tree::

    PitcheyTraceError
    ├── ConfigurationError (also ValueError)     bad argument to configure() or a component
    ├── IntegrationUnavailable (also ImportError) an optional extra (psycopg, boto3...) is missing
    └── ArchiveUnavailable (also OSError)        the analysis could not list or read an archive

Only configuration-time code and the archive analysis raise these. Code on the tracing path
never raises into the application: internal failures are logged on the ``pitchey_trace``
logger and counted (see :func:`pitchey_trace.stats`).
"""

from __future__ import annotations

__all__ = ["ArchiveUnavailable", "ConfigurationError", "IntegrationUnavailable", "PitcheyTraceError"]


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


class ArchiveUnavailable(PitcheyTraceError, OSError):
    """An archive could not be listed (a missing bucket, refused credentials, no network, an
    unreadable directory); the message says which and why. Raised by the analysis queries."""
