"""Collectors that misbehave below HTTP, for the HTTP exporters' tests: a TCP server on
127.0.0.1 that reads each request by hand (:class:`RawHttpServer`, :func:`read_request`) and
then answers as the test says (cut off, a byte at a time, never); the ``servers`` fixture that
closes whatever a test started; one span's records to send."""

from __future__ import annotations

import abc
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans


class RawHttpServer(abc.ABC):
    """Accepts connections on 127.0.0.1 and hands each to :meth:`serve` on a thread of its own,
    closing it afterwards (an ``OSError`` ends it quietly). A subclass sets its own attributes
    before calling ``__init__``: connections are accepted from then on."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """A Zipkin endpoint on this server."""
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/api/v2/spans"

    def accepted(self) -> None:  # noqa: B027  (a hook: most servers need nothing there)
        """Runs on the accepting thread as each connection comes, before :meth:`serve`."""

    @abc.abstractmethod
    def serve(self, conn: socket.socket) -> None:
        """Runs on a thread of its own for each connection (the subclass's collector)."""

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()


def read_request(conn: socket.socket, received: bytearray) -> bool:
    """Reads one HTTP request from ``conn`` (its head, then the body its Content-Length says)
    into ``received``; False if the client closed the connection first."""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        received += chunk
        body += chunk
    return True


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """A list for the servers (anything with ``close()``) a test starts: closed after it."""
    made: list[Any] = []
    yield made
    for s in made:
        s.close()


def span_records() -> list[dict[str, Any]]:
    """The records of one ended span ("kept"), as an exporter is handed them."""
    with capture_spans() as captured:
        with pt.span("kept"):
            pass
        pt.force_flush(10.0)
    return list(captured.records)
