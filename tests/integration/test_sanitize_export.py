"""End to end: secrets in every carrier go through ``pt.configure`` to an exporter that POSTs
NDJSON to a real HTTP server on 127.0.0.1; the bytes the server received hold none of them."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import pitchey_trace as pt
from pitchey_trace._json import encode_ndjson
from pitchey_trace.records import Record
from tests.unit.test_sanitize_corpus import _TEXT_CARRIERS, _emit, _generators

pytestmark = pytest.mark.integration


class _Collector(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/ingest"


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.bodies.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class NdjsonPoster:
    """The smallest HTTP exporter: one POST of NDJSON per batch."""

    name = "ndjson-post"
    datasets = None

    def __init__(self, url: str) -> None:
        self.url = url

    def export(self, batch: Sequence[Record]) -> bool:
        response = httpx.post(
            self.url,
            content=encode_ndjson(batch),
            headers={"Content-Type": "application/x-ndjson"},
            timeout=10,
        )
        return response.status_code == 204

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, name="ndjson-collector", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_no_secret_reaches_the_http_server(collector: _Collector) -> None:
    rng = random.Random(4242)
    gens = _generators()
    cases = [(carrier, gen(rng)) for carrier in _TEXT_CARRIERS for gen in gens.values()]
    resource_secret = "Zq" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(16))

    pt.configure(
        service="sanitize-e2e",
        exporters=[NdjsonPoster(collector.url)],
        sample_rate=1.0,
        resource_attributes={"deploy.api_key": resource_secret},
    )
    for i, (carrier, secret) in enumerate(cases):
        _emit(carrier, i, secret.text)
    with pt.span("kv", attributes={"http.request.header.authorization": "Bearer Zq" + resource_secret[::-1]}):
        pass
    assert pt.force_flush(10.0)
    pt.shutdown(10.0)

    with collector.lock:
        received = b"".join(collector.bodies)
    lines = received.splitlines()
    case_ids = {int(m) for m in _case_ids(lines)}
    assert case_ids == set(range(len(cases)))  # every case arrived over HTTP
    leaks = [
        (carrier, secret.kind, bad)
        for carrier, secret in cases
        for bad in secret.forbidden
        if bad.encode() in received
    ]
    assert leaks == []
    assert resource_secret.encode() not in received
    assert resource_secret[::-1].encode() not in received
    assert b'"deploy.api_key":"[REDACTED]"' in received.replace(b" ", b"")
    for marker in (b"[CARD]", b"[EMAIL]", b"[JWT]", b"[KEY]", b"[PRIVATE KEY]", b"[SSN]", b"[PHONE]"):
        assert marker in received


def _case_ids(lines: list[bytes]) -> list[str]:
    ids = []
    for line in lines:
        record = json.loads(line)
        if record.get("type") == "span" and "case.id" in record["attributes"]:
            ids.append(str(record["attributes"]["case.id"]))
    return ids
