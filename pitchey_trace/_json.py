"""JSON encoding for records: orjson when installed (extra ``fast``), else the stdlib.

Records are JSON-native by construction (see :mod:`pitchey_trace.records`); anything else
that slips into a custom record is stringified rather than failing the batch.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without the extra
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "DEPTH_MARKER",
    "HAVE_ORJSON",
    "MAX_DEPTH",
    "dumps",
    "encode_ndjson",
    "lenient_dumps",
    "loads",
    "valid_text",
]

HAVE_ORJSON = _orjson is not None


def _default(obj: Any) -> Any:
    if isinstance(obj, float):  # a subclass (numpy.float64): orjson's default; a number, as
        value = float(obj)  # the stdlib writes it, not its str
        return value if math.isfinite(value) else None
    if isinstance(obj, enum.Enum):  # its value, as orjson writes one
        return obj.value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


_SURROGATES = re.compile("[\ud800-\udfff]")
# allow_nan=False: NaN and infinities are not JSON (browsers' JSON.parse and most collectors
# refuse the whole document); they are written as null, as orjson writes them.
_stdlib_encode = json.JSONEncoder(
    default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, sets as lists, and dict keys
    the stdlib refuses (NaN, tuples, bytes) as text, as orjson writes them (containers copied)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_finite(v) for v in obj]
    return obj


def _key(key: Any) -> Any:
    if key is None or isinstance(key, (str, int)):  # (bool is an int)
        return key
    if isinstance(key, float):
        return key if math.isfinite(key) else "null"  # (orjson's key for NaN and infinities)
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    if isinstance(key, enum.Enum):
        return _key(key.value)
    return str(key)


def valid_text(text: str) -> str:
    """``text`` as valid Unicode for UTF-8: surrogate pairs joined, a lone surrogate (which
    UTF-8 cannot carry, e.g. from ``surrogateescape`` decoding) replaced by U+FFFD."""
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return _SURROGATES.sub("\ufffd", text)


#: Containers nested deeper than this (orjson's own limit) are written as ``DEPTH_MARKER`` by
#: the encoder of last resort, so its lines stay readable by any JSON reader.
MAX_DEPTH = 254
#: What stands for a too-deep list or map (the text the sanitizer writes for one).
DEPTH_MARKER = "[DEPTH]"

_encode_str = json.encoder.encode_basestring  # (the C one: ensure_ascii=False)


class _Text(str):
    """JSON text already written (punctuation, a key), told apart from a str value by its class."""


_COMMA = _Text(",")
_END_LIST = _Text("]")
_END_DICT = _Text("}")


def _scalar(obj: Any) -> str | None:
    """The JSON text of a scalar as the stdlib (``allow_nan=False`` made lenient) writes it,
    or None for a container or an object ``_default`` has to turn into one first."""
    if isinstance(obj, str):
        return _encode_str(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        return float.__repr__(obj) if math.isfinite(obj) else "null"
    return None


def _key_text(key: Any) -> str:
    """A map key's text, as the stdlib writes the keys ``_key`` leaves (orjson's, for the rest)."""
    key = _key(key)
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return "null" if key is None else ("true" if key else "false")
    return int.__repr__(key) if isinstance(key, int) else float.__repr__(key)


def _bounded_encode(obj: Any) -> str:
    """The stdlib's text of ``obj`` without recursion (a value nested thousands deep, or a call
    from a deep stack, must not cost the record): containers deeper than ``MAX_DEPTH`` are
    written as ``DEPTH_MARKER``; a reference cycle raises ValueError, as the stdlib does."""
    out: list[str] = []
    path: set[int] = set()  # ids of the containers being written (the cycle check)
    # Work stack: (value, its depth), or (_Text, id of the container it closes, or 0).
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if value.__class__ is _Text:
            out.append(value)
            path.discard(depth)
            continue
        text = _scalar(value)
        while text is None and not isinstance(value, (dict, list, tuple)):
            value = _default(value)  # (a set: a list; bytes, an enum, an object: a scalar)
            text = _scalar(value)
        if text is not None:
            out.append(text)
            continue
        if depth >= MAX_DEPTH:
            out.append(_encode_str(DEPTH_MARKER))
            continue
        ident = id(value)
        if ident in path:
            raise ValueError("Circular reference detected")
        path.add(ident)
        depth += 1
        if isinstance(value, dict):
            out.append("{")
            stack.append((_END_DICT, ident))
            items = list(value.items())
            for i in range(len(items) - 1, -1, -1):
                k, v = items[i]
                stack.append((v, depth))
                stack.append((_Text(("," if i else "") + _encode_str(_key_text(k)) + ":"), 0))
        else:
            out.append("[")
            stack.append((_END_LIST, ident))
            for i in range(len(value) - 1, -1, -1):
                stack.append((value[i], depth))
                if i:
                    stack.append((_COMMA, 0))
    return "".join(out)


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _deeper_than_max(obj: Any) -> bool:
    """Whether ``obj`` (which encoded: no reference cycle) nests containers deeper than
    ``MAX_DEPTH``; without recursion, stopping at the first too deep."""
    if not isinstance(obj, _CONTAINERS):
        return False
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        depth += 1
        if depth > MAX_DEPTH:
            return True
        items = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth) for v in items if isinstance(v, _CONTAINERS))
    return False


def lenient_dumps(obj: Any) -> bytes:
    """The stdlib's encoding, which also takes what orjson refuses: ints beyond 64 bits, and
    strings with lone surrogates, written as U+FFFD (one such attribute must not cost the
    whole batch). NaN and infinities are written as null (as keys: "null"), and keys that are
    not text, numbers, booleans or None as their text, as orjson writes them. A value nested
    deeper than the stdlib can recurse is kept, cut at ``MAX_DEPTH`` (see _bounded_encode)."""
    try:
        try:
            text = _stdlib_encode(obj)
        except (ValueError, TypeError):  # NaN or an infinity, a key JSON has no text for (a
            # reference cycle fails again below)
            text = _stdlib_encode(_finite(obj))
    except RecursionError:  # too deep for this stack, or a cycle _finite went around
        text = _bounded_encode(obj)
    else:
        # (CPython 3.13's encoder no longer stops at the recursion limit: a value deeper than
        # orjson and older readers take would be written whole; such a text is long)
        if len(text) > 2 * MAX_DEPTH and _deeper_than_max(obj):
            text = _bounded_encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return valid_text(text).encode("utf-8")


def _ndjson_one_by_one(records: Iterable[Any], dumps_line: Any) -> bytes:
    """Each record on its own line; one that cannot be encoded at all (a reference cycle) is
    left out and counted (``dropped.encode_error``) instead of failing the others."""
    lines: list[bytes] = []
    for r in records:
        try:
            lines.append(dumps_line(r))
        except (TypeError, ValueError, RecursionError):
            from pitchey_trace import _stats

            _stats.incr("dropped.encode_error")
    return b"".join(lines)


if _orjson is not None:
    _opt = _orjson.OPT_NON_STR_KEYS
    _odumps = _orjson.dumps

    def dumps(obj: Any) -> bytes:
        """One JSON document as UTF-8 bytes."""
        try:
            return _odumps(obj, default=_default, option=_opt)
        except TypeError:  # an int beyond 64 bits, a lone surrogate: the slower, lenient path
            return lenient_dumps(obj)

    def _line(r: Any) -> bytes:
        try:
            return _odumps(r, default=_default, option=_opt | _orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            return lenient_dumps(r) + b"\n"

    def encode_ndjson(records: Iterable[Any]) -> bytes:
        """Records as newline-delimited JSON (each line ends with ``\\n``)."""
        records = records if isinstance(records, list) else list(records)
        d = _odumps
        opt = _opt | _orjson.OPT_APPEND_NEWLINE
        try:
            return b"".join([d(r, default=_default, option=opt) for r in records])
        except TypeError:
            return _ndjson_one_by_one(records, _line)

    loads = _orjson.loads
else:  # pragma: no cover

    def dumps(obj: Any) -> bytes:
        """One JSON document as UTF-8 bytes."""
        return lenient_dumps(obj)

    def encode_ndjson(records: Iterable[Any]) -> bytes:
        """Records as newline-delimited JSON (each line ends with ``\\n``)."""
        return _ndjson_one_by_one(records, lambda r: lenient_dumps(r) + b"\n")

    loads = json.loads
