"""JSON encoding for records: orjson when installed (extra ``fast``), else the stdlib.

Records are JSON-native by construction (see :mod:`pitchey_trace.records`); anything else
that slips into a custom record is stringified rather than failing the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without the extra
    _orjson = None  # type: ignore[assignment]

__all__ = ["HAVE_ORJSON", "dumps", "encode_ndjson", "loads"]

HAVE_ORJSON = _orjson is not None


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


if _orjson is not None:
    _opt = _orjson.OPT_NON_STR_KEYS

    def dumps(obj: Any) -> bytes:
        """One JSON document as UTF-8 bytes."""
        return _orjson.dumps(obj, default=_default, option=_opt)

    def encode_ndjson(records: Iterable[Any]) -> bytes:
        """Records as newline-delimited JSON (each line ends with ``\\n``)."""
        d = _orjson.dumps
        return b"".join([d(r, default=_default, option=_opt | _orjson.OPT_APPEND_NEWLINE) for r in records])

    loads = _orjson.loads
else:  # pragma: no cover
    _enc = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(",", ":"))

    def dumps(obj: Any) -> bytes:
        """One JSON document as UTF-8 bytes."""
        return _enc.encode(obj).encode("utf-8")

    def encode_ndjson(records: Iterable[Any]) -> bytes:
        """Records as newline-delimited JSON (each line ends with ``\\n``)."""
        e = _enc.encode
        return "".join([e(r) + "\n" for r in records]).encode("utf-8")

    loads = json.loads
