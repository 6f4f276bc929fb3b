"""The public seams, as Protocols: implement these to plug your own parts in.

* :class:`SpanExporter` - receives batches of sanitized schema-v1 record dicts.
* :class:`SpanProcessor` - a callable run on the export worker: ``record -> record | None``.
* :class:`Sampler` - head sampling decision at span start.
* :class:`SpanTransform` - alias of a processor callable (structlog-style pipelines).
* :class:`Getter` / :class:`Setter` - read/write propagation headers on any carrier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from pitchey_trace.records import Record
from pitchey_trace.sampling import Sampler

__all__ = ["Getter", "Record", "Sampler", "Setter", "SpanExporter", "SpanProcessor", "SpanTransform"]

C = TypeVar("C", contravariant=True)

SpanTransform = Callable[[Record], "Record | None"]


@runtime_checkable
class SpanExporter(Protocol):
    """Anything with ``export(batch) -> bool``; the other methods are optional."""

    def export(self, batch: Sequence[Record]) -> bool:
        """Deliver a batch; return False if it was lost (counted as dropped)."""
        ...


@runtime_checkable
class SpanProcessor(Protocol):
    """A worker-side stage: return the (possibly changed) record, or None to drop it."""

    def __call__(self, record: Record) -> Record | None:
        """Process one record."""
        ...


class Getter(Protocol[C]):
    """Reads a header value from a carrier (None when absent)."""

    def __call__(self, carrier: C, key: str) -> str | None:
        """Value of ``key`` in ``carrier``."""
        ...


class Setter(Protocol[C]):
    """Writes a header value into a carrier."""

    def __call__(self, carrier: C, key: str, value: str) -> Any:
        """Set ``key`` to ``value``."""
        ...
