"""Helpers of the web middleware tests: find the server span, name a span's events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def server_span(exporter: Any, trace_id: str | None = None) -> Callable[[], dict[str, Any] | None]:
    """A predicate for ``wait_for``: the first exported server span (of ``trace_id`` if given),
    None until there is one."""

    def find() -> dict[str, Any] | None:
        for rec in exporter.spans():
            if rec["kind"] == "server" and (trace_id is None or rec["trace_id"] == trace_id):
                return rec  # type: ignore[no-any-return]
        return None

    return find


def event_names(span: dict[str, Any]) -> list[str]:
    """The names of a span record's events, in order."""
    return [e["name"] for e in span["events"]]
