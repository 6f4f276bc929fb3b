"""Answers from the archive: search traces, rebuild a trace's tree, find its bottleneck, see
latency percentiles and error groups.

    from pitchey_trace.analysis import Archive
    archive = Archive("var/archive")                     # what LocalArchiveExporter wrote
    archive = Archive(S3Source.from_config("logpush.toml", cache_dir="~/.cache/pitchey"))
    archive.search(min_duration_ms=1000, since="24h")    # trace summaries
    archive.trace(trace_id)                              # the tree, depth-first
    archive.analyze(trace_id)                            # critical path, bottleneck, N+1, errors
    archive.performance(since="1h")                      # p50/p95/p99 per operation
    archive.errors(since="24h")                          # error groups

The same answers are on the command line (``pitchey-trace search|show|perf|errors``) and over
HTTP with a waterfall page (``pitchey-trace serve``, :func:`pitchey_trace.analysis.api.create_app`).
Reading S3 needs the ``s3`` extra; serving needs the ``analysis`` extra.
"""

from __future__ import annotations

from pitchey_trace.analysis._engine import Archive
from pitchey_trace.analysis._reader import (
    LocalSource,
    MultiSource,
    ObjectInfo,
    S3Source,
    Source,
    decode_object,
)
from pitchey_trace.analysis._time import parse_time

__all__ = [
    "Archive",
    "LocalSource",
    "MultiSource",
    "ObjectInfo",
    "S3Source",
    "Source",
    "decode_object",
    "parse_time",
]
