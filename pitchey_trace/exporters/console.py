"""ConsoleExporter: NDJSON lines (or a readable tree) to stdout or any text stream."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import IO

from pitchey_trace._json import encode_ndjson
from pitchey_trace._validate import datasets as valid_datasets
from pitchey_trace.records import Record


class ConsoleExporter:
    """Write records to a text stream (default ``sys.stdout``).

    ``pretty=False`` (default): one JSON object per line, the archive format.
    ``pretty=True``: for development, spans grouped by trace and drawn as an indented tree
    with durations; audit and rollup records on one line each.
    """

    name = "console"

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        pretty: bool = False,
        datasets: Iterable[str] | None = None,
    ) -> None:
        if stream is not None and not callable(getattr(stream, "write", None)):
            raise TypeError(f"stream must be a text stream (with write()) or None, got {stream!r}")
        if not isinstance(pretty, int):  # (bools, and the 0/1 some code passes for them)
            raise TypeError(f"pretty must be True or False, got {pretty!r}")
        self._stream = stream
        self.pretty = bool(pretty)
        self.datasets = valid_datasets(datasets)
        self._lock = threading.Lock()

    @property
    def stream(self) -> IO[str]:
        """The target stream (``sys.stdout`` looked up at write time when none was given)."""
        return self._stream if self._stream is not None else sys.stdout

    def export(self, batch: Sequence[Record]) -> bool:
        """Write the batch; False when the stream fails (closed pipe, full disk, no stdout).

        Characters the stream cannot encode (an ``ascii`` or ``latin-1`` stdout, a lone
        surrogate in a pretty tree) are written as ``\\uXXXX`` escapes: valid JSON, nothing lost.
        Nothing is raised into the caller."""
        try:
            text = render_tree(batch) if self.pretty else encode_ndjson(batch).decode("utf-8")
            with self._lock:
                stream = self.stream
                try:
                    stream.write(text)
                except UnicodeEncodeError:  # (raised before anything is written)
                    stream.write(escape_non_ascii(text))
                stream.flush()
        except Exception:  # a closed/broken stream, sys.stdout None (pythonw), a custom stream
            return False
        return True

    def force_flush(self, timeout: float | None = None) -> bool:
        """Flush the stream."""
        try:
            self.stream.flush()
        except Exception:
            return False
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush; the stream is the caller's and stays open."""
        self.force_flush(timeout)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    if code > 0xFFFF:  # a UTF-16 surrogate pair, as JSON writes it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def escape_non_ascii(text: str) -> str:
    """``text`` with every non-ASCII character as a JSON ``\\uXXXX`` escape (in NDJSON output
    they only occur inside strings, so the lines stay valid JSON with the same values)."""
    return _NON_ASCII.sub(_escape, text)


def render_tree(records: Sequence[Record]) -> str:
    """Draw span records as one indented tree per trace (children ordered by start time)."""
    lines: list[str] = []
    traces: dict[str, list[Record]] = {}
    for rec in records:
        if rec.get("type") == "span":
            traces.setdefault(str(rec.get("trace_id")), []).append(rec)
        else:
            what = {k: rec.get(k) for k in ("type", "action", "target", "outcome", "operation", "count")}
            lines.append("  ".join(f"{k}={v}" for k, v in what.items() if v is not None))
    for trace_id, spans in traces.items():
        # (.get: a custom record of type "span" may lack fields; it is drawn all the same)
        ids = {s.get("span_id") for s in spans}
        children: dict[str | None, list[Record]] = {}
        for s in spans:
            parent = s.get("parent_span_id")
            if parent not in ids or parent == s.get("span_id"):
                parent = None
            children.setdefault(parent, []).append(s)
        for group in children.values():
            group.sort(key=lambda r: r.get("start_time_unix_nano") or 0)
        lines.append(f"trace {trace_id}")

        def walk(parent: str | None, depth: int, children: dict[str | None, list[Record]] = children) -> None:
            for s in children.get(parent, []):
                mark = " !" if s.get("status") == "error" else ""
                ms = s.get("duration_ms")
                lines.append(
                    f"{'  ' * (depth + 1)}{s.get('name')}  "
                    f"{f'{ms:.2f}' if isinstance(ms, (int, float)) else '?'} ms  "
                    f"[{s.get('kind')}, {s.get('category')}]{mark}"
                )
                if s.get("span_id") is not None:
                    walk(s["span_id"], depth + 1)

        walk(None, 0)
    return "\n".join(lines) + ("\n" if lines else "")
