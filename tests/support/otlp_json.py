"""An OTLP/HTTP JSON trace collector on 127.0.0.1 for tests of child processes: every span
received, as a small dict (ids, parent, name, times, and the sending process's pid and
service)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.httpserver import HandlerServer, QuietHandler


class JsonSpanCollector:
    """``url``: the traces endpoint (``server.url`` is its base, for OTEL_EXPORTER_OTLP_ENDPOINT);
    ``spans``: what arrived, in order. ``server.close()`` stops it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        spans = self.spans

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for rs in body.get("resourceSpans", []):
                    attributes = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                    for ss in rs["scopeSpans"]:
                        for s in ss["spans"]:
                            spans.append(
                                {
                                    "trace": s["traceId"],
                                    "span": s["spanId"],
                                    "parent": s.get("parentSpanId") or None,
                                    "name": s["name"],
                                    "start": int(s["startTimeUnixNano"]),
                                    "end": int(s["endTimeUnixNano"]),
                                    "pid": int(attributes["process.pid"]["intValue"]),
                                    "service": attributes["service.name"]["stringValue"],
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = HandlerServer(Handler)
        self.url = f"{self.server.url}/v1/traces"

    def named(self, name: str) -> dict[str, Any]:
        """The one span of that name."""
        (found,) = [s for s in self.spans if s["name"] == name]
        return found
