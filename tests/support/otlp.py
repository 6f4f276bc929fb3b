"""Helpers for reading what the OTLP exporters send."""

from __future__ import annotations

import base64
from typing import Any


def base64_ids(node: Any) -> Any:
    """An OTLP JSON tree with its trace and span ids as base64: OTLP JSON writes them in hex,
    protobuf's own JSON parser reads bytes fields as base64 (everything else as it is)."""
    if isinstance(node, list):
        return [base64_ids(v) for v in node]
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId") else base64_ids(v)
            for k, v in node.items()
        }
    return node
