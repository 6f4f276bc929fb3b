"""A test's own HTTP server on 127.0.0.1: its ``BaseHTTPRequestHandler`` class (a
:class:`QuietHandler`, to keep the request log off stderr) served by the standard library's
threading server on a free port, until ``close()``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs no requests."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class HandlerServer:
    """``handler`` served on a free 127.0.0.1 port (a daemon thread per request); ``url`` is
    ``http://127.0.0.1:PORT``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
