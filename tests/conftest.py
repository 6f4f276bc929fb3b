"""Shared fixtures. Every test runs with tracing reset afterwards, and fails if the SDK
swallowed an internal error during it (unless marked ``allow_internal_errors``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pitchey_trace import _safety, _stats
from pitchey_trace.testing import reset


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_internal_errors: the test provokes SDK-internal errors")


@pytest.fixture(autouse=True)
def _tracing_reset(request: pytest.FixtureRequest) -> Iterator[None]:
    seen: list[tuple[str, BaseException]] = []
    _safety.swallowed_hook = lambda kind, exc: seen.append((kind, exc))
    _stats.reset()
    yield
    reset()
    _safety.swallowed_hook = None
    if seen and request.node.get_closest_marker("allow_internal_errors") is None:
        kind, exc = seen[0]
        raise AssertionError(f"SDK swallowed {len(seen)} internal error(s); first ({kind}): {exc!r}") from exc
