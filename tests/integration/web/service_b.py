"""Service B of the two-service test, run as its own process.

A Flask app traced with ``init_flask`` and served by werkzeug on 127.0.0.1 (free port,
printed on stdout once listening). ``GET /pitches/<id>`` reads one row from PostgreSQL through
an instrumented psycopg connection. Records are written as NDJSON to the file given on the
command line; SIGTERM stops the server and flushes the pipeline before exiting.

    python service_b.py DSN OUTPUT_FILE
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from flask import Flask, jsonify
from werkzeug.serving import make_server

import pitchey_trace as pt
from pitchey_trace.db import instrument
from pitchey_trace.web import init_flask


class FileExporter:
    """Appends each record as one JSON line and flushes (the test reads the file afterwards)."""

    name = "file"

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in shutdown)
        self._lock = threading.Lock()

    def export(self, batch: Sequence[dict[str, Any]]) -> bool:
        with self._lock:
            for record in batch:
                self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        with self._lock:
            self._file.close()


def main(dsn: str, output: str) -> None:
    pt.configure(service="service-b", exporters=[FileExporter(output)], sample_rate=1.0)
    app = Flask("service_b")
    local = threading.local()

    def connection() -> psycopg.Connection[Any]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = instrument(psycopg.connect(dsn, autocommit=True))
        return conn  # type: ignore[no-any-return]

    @app.get("/pitches/<int:pitch_id>")
    def pitch(pitch_id: int) -> Any:
        row = connection().execute("SELECT title FROM pitches WHERE id = %s", (pitch_id,)).fetchone()
        if row is None:
            return jsonify(error="not found"), 404
        return jsonify(id=pitch_id, title=row[0])

    init_flask(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_port, flush=True)
    server.serve_forever()
    pt.shutdown(10.0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
