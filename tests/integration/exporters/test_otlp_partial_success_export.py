"""OTLP partial success end to end: real OTLP/HTTP receivers on 127.0.0.1 (answering JSON or
binary protobuf, with the matching content type or not) and real gRPC servers answer that
they took only part of a request. The exporters must not send it again, count the refused
spans / log records / data points, and log the collector's message (made safe, once a minute)."""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

import pitchey_trace as pt
from pitchey_trace.exporters import OTLPExporter, OTLPLogExporter, OTLPMetricsExporter, _http
from pitchey_trace.exporters._grpc import EXPORT_METHOD as TRACES_METHOD
from pitchey_trace.exporters._http import RetryPolicy
from pitchey_trace.exporters.otlp_logs import EXPORT_METHOD as LOGS_METHOD
from pitchey_trace.exporters.otlp_metrics import EXPORT_METHOD as METRICS_METHOD
from tests.support.otlp import partial_success_answer

pytestmark = pytest.mark.integration

JSON = "application/json"
PROTO = "application/x-protobuf"
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=4)


@dataclass
class Answer:
    status: int = 200
    content_type: str | None = PROTO
    body: bytes = b""


class Receiver:
    """An OTLP/HTTP receiver: answers each POST with the next of ``answers`` (the last one
    again once they run out), with exactly the given content type; records the bodies."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers) or [Answer()]
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                with outer._lock:
                    outer.bodies.append(body)
                    answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                self.send_response(answer.status)
                if answer.content_type is not None:
                    self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.bodies)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class GrpcReceiver:
    """A gRPC server on 127.0.0.1 serving one Export method (``method``) from raw bytes,
    answering every call OK with ``answer``; counts the calls."""

    def __init__(self, method: str, answer: bytes) -> None:
        self.calls = 0
        self._lock = threading.Lock()

        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls += 1
            return answer

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service, name = method.strip("/").split("/")
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service, {name: grpc.unary_unary_rpc_method_handler(export)}
                ),
            )
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.stop(None)


@pytest.fixture
def receivers() -> Iterator[list[Receiver | GrpcReceiver]]:
    started: list[Receiver | GrpcReceiver] = []
    yield started
    for r in started:
        r.close()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})  # (each test sees its first warning)
    caplog.set_level(logging.WARNING, logger="pitchey_trace")


def _http_receiver(receivers: list[Any], *answers: Answer) -> Receiver:
    r = Receiver(*answers)
    receivers.append(r)
    return r


def _grpc_receiver(receivers: list[Any], method: str, answer: bytes) -> GrpcReceiver:
    r = GrpcReceiver(method, answer)
    receivers.append(r)
    return r


def _warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pitchey_trace" and r.levelno == logging.WARNING and needle in r.getMessage()
    ]


def _spans(n: int) -> None:
    for _ in range(n):
        with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER):
            pass


def _audit(n: int) -> None:
    with pt.span("POST /login", kind=pt.SpanKind.SERVER):
        for i in range(n):
            pt.emit_audit("login", f"/login/{i}", "bad_password", category="security")


def _assert_no_failure(stats: dict[str, int], counter: str) -> None:
    for key in ("dropped.export_failed", f"{counter}.retried", f"{counter}.failed", f"{counter}.rejected"):
        assert stats.get(key, 0) == 0, key
    assert stats["internal_errors"] == 0


# -- traces over HTTP --------------------------------------------------------------------------------
HOSTILE = "2 spans older than 7d\n2024-01-01 ERROR forged line \x1b[31m\u202e"


@pytest.mark.parametrize(
    ("protocol", "answer"),
    [
        pytest.param(
            "http/protobuf", Answer(200, PROTO, partial_success_answer("traces", 2, HOSTILE)), id="protobuf"
        ),
        pytest.param(
            "http/json",
            Answer(200, JSON, partial_success_answer("traces", 2, HOSTILE, "json")),
            id="json-count-as-string",
        ),
        pytest.param(
            "http/json",
            Answer(
                200,
                "application/json; charset=utf-8",
                b'{"partialSuccess": {"rejectedSpans": 2, "errorMessage": '
                b'"2 spans older than 7d\\n2024-01-01 ERROR forged line \\u001b[31m\\u202e"}}',
            ),
            id="json-count-as-number",
        ),
    ],
)
def test_traces_partial_success_is_counted_warned_and_not_retried(
    receivers: list[Any], caplog: pytest.LogCaptureFixture, protocol: str, answer: Answer
) -> None:
    r = _http_receiver(receivers, answer)
    pt.configure(service="pitch-api", exporters=[OTLPExporter(r.url, protocol=protocol, retry=FAST)])
    _spans(5)
    assert pt.force_flush(20)  # (a partial success is a success)
    assert r.requests == 1  # not sent again
    stats = pt.stats()
    assert stats["otlp.spans"] == 5
    assert stats["otlp.partial_rejected"] == 2
    assert stats["dropped.rejected"] == stats["dropped.rejected.otlp"] == 2
    assert stats["exported.otlp"] == 3
    assert stats["exported.otlp"] + stats["dropped.rejected.otlp"] == 5
    assert stats["dropped"] == 2
    _assert_no_failure(stats, "otlp")
    [line] = _warnings(caplog, "rejected 2 of its 5 spans")
    assert r.url in line
    assert "2 spans older than 7d\\n2024-01-01 ERROR forged line \\x1b[31m\\u202e" in line
    for raw in ("\n", "\x1b", "\u202e"):
        assert raw not in line


def test_partial_successes_are_warned_once_a_minute_and_all_counted(
    receivers: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    r = _http_receiver(receivers, Answer(200, PROTO, partial_success_answer("traces", 1, "too old")))
    pt.configure(service="pitch-api", exporters=[OTLPExporter(r.url, max_spans_per_request=2)])
    _spans(6)
    assert pt.force_flush(20)
    _spans(2)
    assert pt.force_flush(20)
    assert r.requests == 4  # 2 + 2 + 2, then 2: each once
    stats = pt.stats()
    assert stats["otlp.partial_rejected"] == stats["dropped.rejected.otlp"] == 4
    assert stats["exported.otlp"] == 4
    assert len(_warnings(caplog, "too old")) == 1


def test_a_warning_without_rejections_drops_nothing(
    receivers: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    r = _http_receiver(
        receivers, Answer(200, JSON, b'{"partialSuccess": {"errorMessage": "attribute truncated"}}')
    )
    pt.configure(service="pitch-api", exporters=[OTLPExporter(r.url, protocol="http/json")])
    _spans(3)
    assert pt.force_flush(20)
    assert r.requests == 1
    stats = pt.stats()
    assert stats["otlp.partial_warning"] == 1
    assert stats["exported.otlp"] == 3
    assert stats["dropped"] == 0
    assert "otlp.partial_rejected" not in stats
    [line] = _warnings(caplog, "attribute truncated")
    assert "with a warning" in line


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, JSON, partial_success_answer("traces", 2, "binary, labelled JSON")),
        Answer(
            200, PROTO, b'{"partialSuccess": {"rejectedSpans": "2", "errorMessage": "JSON, labelled binary"}}'
        ),
        Answer(200, None, partial_success_answer("traces", 2, "no content type")),
    ],
)
def test_an_answer_in_the_other_encoding_is_still_read(
    receivers: list[Any], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    r = _http_receiver(receivers, answer)
    pt.configure(service="pitch-api", exporters=[OTLPExporter(r.url)])
    _spans(4)
    assert pt.force_flush(20)
    assert r.requests == 1
    assert pt.stats()["dropped.rejected.otlp"] == 2
    assert len(_warnings(caplog, "labelled" if answer.content_type else "no content type")) == 1


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, PROTO, b"\xff\xfe garbage \x00"),
        Answer(200, JSON, b"<html>OK</html>"),
        Answer(200, "text/plain", b"OK"),
        Answer(200, JSON, b"{}"),
        Answer(200, PROTO, b""),
        Answer(202, None, b""),
        Answer(200, JSON, b"[" * 200_000),
        Answer(
            200,
            PROTO,
            partial_success_answer("traces", 3, "x" * 100) + b"\x12\x80\x80\x80\x01" + b"p" * (3 << 20),
        ),
    ],
)
def test_garbage_or_huge_answers_are_a_full_success(
    receivers: list[Any], caplog: pytest.LogCaptureFixture, answer: Answer
) -> None:
    r = _http_receiver(receivers, answer)
    pt.configure(service="pitch-api", exporters=[OTLPExporter(r.url)])
    _spans(3)
    assert pt.force_flush(20)
    assert r.requests == 1
    stats = pt.stats()
    assert stats["exported.otlp"] == 3
    assert stats["dropped"] == 0
    assert not [k for k in stats if "partial" in k]
    _assert_no_failure(stats, "otlp")
    assert _warnings(caplog, "") == []


# -- logs and metrics over HTTP ----------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_logs_partial_success_over_http(
    receivers: list[Any], caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    encoding, content_type = ("json", JSON) if protocol == "http/json" else ("protobuf", PROTO)
    answer = partial_success_answer("logs", 2, "log records too large", encoding)
    r = _http_receiver(receivers, Answer(200, content_type, answer))
    pt.configure(service="pitch-api", exporters=[OTLPLogExporter(r.url, protocol=protocol)])
    _audit(3)
    assert pt.force_flush(20)
    assert r.requests == 1
    stats = pt.stats()
    assert stats["otlp_logs.records"] == 3
    assert stats["otlp_logs.partial_rejected"] == 2
    assert stats["dropped.rejected"] == stats["dropped.rejected.otlp_logs"] == 2
    assert stats["exported.otlp_logs"] == 1
    _assert_no_failure(stats, "otlp_logs")
    [line] = _warnings(caplog, "log records too large")
    assert "rejected 2 of its 3 log records" in line


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_metrics_partial_success_over_http(
    receivers: list[Any], caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    encoding, content_type = ("json", JSON) if protocol == "http/json" else ("protobuf", PROTO)
    answer = partial_success_answer("metrics", 1, "histogram without buckets", encoding)
    r = _http_receiver(receivers, Answer(200, content_type, answer))
    exporter = OTLPMetricsExporter(r.url, protocol=protocol, sdk_stats=False)
    pt.configure(service="pitch-api", exporters=[exporter])
    _spans(4)
    assert pt.force_flush(20)
    assert r.requests == 1
    stats = pt.stats()
    assert stats["otlp_metrics.points"] == 2  # the calls sum and the duration histogram
    assert stats["otlp_metrics.partial_rejected"] == 1
    assert stats["dropped.rejected"] == stats["dropped.rejected.otlp_metrics"] == 1
    _assert_no_failure(stats, "otlp_metrics")
    [line] = _warnings(caplog, "histogram without buckets")
    assert "rejected 1 of its 2 data points" in line


# -- gRPC ---------------------------------------------------------------------------------------------
def test_traces_partial_success_over_grpc(receivers: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    g = _grpc_receiver(receivers, TRACES_METHOD, partial_success_answer("traces", 3, "spans without a name"))
    pt.configure(service="pitch-api", exporters=[OTLPExporter(g.url, protocol="grpc", retry=FAST)])
    _spans(5)
    assert pt.force_flush(20)
    assert g.calls == 1
    stats = pt.stats()
    assert stats["otlp.partial_rejected"] == stats["dropped.rejected.otlp"] == 3
    assert stats["exported.otlp"] == 2
    _assert_no_failure(stats, "otlp")
    assert len(_warnings(caplog, "spans without a name")) == 1


def test_logs_partial_success_over_grpc(receivers: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    g = _grpc_receiver(receivers, LOGS_METHOD, partial_success_answer("logs", 1, "one log refused"))
    pt.configure(service="pitch-api", exporters=[OTLPLogExporter(g.url, protocol="grpc")])
    _audit(2)
    assert pt.force_flush(20)
    assert g.calls == 1
    stats = pt.stats()
    assert stats["otlp_logs.partial_rejected"] == stats["dropped.rejected.otlp_logs"] == 1
    assert stats["exported.otlp_logs"] == 1
    _assert_no_failure(stats, "otlp_logs")
    assert len(_warnings(caplog, "one log refused")) == 1


def test_metrics_partial_success_over_grpc(receivers: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    g = _grpc_receiver(receivers, METRICS_METHOD, partial_success_answer("metrics", 0, "unit ignored"))
    pt.configure(
        service="pitch-api", exporters=[OTLPMetricsExporter(g.url, protocol="grpc", sdk_stats=False)]
    )
    _spans(2)
    assert pt.force_flush(20)
    assert g.calls == 1
    stats = pt.stats()
    assert stats["otlp_metrics.partial_warning"] == 1  # a message alone: a warning
    assert stats["dropped"] == 0
    _assert_no_failure(stats, "otlp_metrics")
    assert len(_warnings(caplog, "unit ignored")) == 1


def test_garbage_over_grpc_is_a_full_success(receivers: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    g = _grpc_receiver(receivers, TRACES_METHOD, b'{"partialSuccess": {"rejectedSpans": 2}}')  # not protobuf
    pt.configure(service="pitch-api", exporters=[OTLPExporter(g.url, protocol="grpc")])
    _spans(2)
    assert pt.force_flush(20)
    assert g.calls == 1
    stats = pt.stats()
    assert stats["exported.otlp"] == 2
    assert stats["dropped"] == 0
    assert _warnings(caplog, "") == []
