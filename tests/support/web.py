"""Helpers of the web middleware tests: find the server span, name a span's events."""

from __future__ import annotations

import socket
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


def raw_connect(url: str) -> socket.socket:
    """A plain TCP connection to ``http://host:port`` (10 s timeout), for clients that leave."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port.rstrip("/"))), timeout=10)


def read_until(sock: socket.socket, marker: bytes, *, size: int = 65536, strict: bool = False) -> bytes:
    """What the socket gives (``size`` bytes a read at most) until ``marker`` has arrived, or
    the peer closed: ``strict``, that fails the test."""
    data = b""
    while marker not in data:
        chunk = sock.recv(size)
        if not chunk:
            assert not strict, f"the peer closed before {marker[:20]!r}"
            break
        data += chunk
    return data


def reset(sock: socket.socket) -> None:
    """Leave at once: a TCP reset, as a client killed mid-request."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
