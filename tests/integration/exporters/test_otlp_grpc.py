"""OTLPExporter(protocol="grpc") against a real gRPC server on 127.0.0.1 (grpcio, the
TraceService/Export method served from raw bytes), decoded with the official proto classes;
and TLS for the HTTP exporters too (a private CA, mutual TLS) against real HTTPS servers."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError, IntegrationUnavailable
from pitchey_trace.exporters import OTLPExporter
from pitchey_trace.exporters._grpc import EXPORT_METHOD
from pitchey_trace.exporters._http import RetryPolicy
from tests.integration.exporters.servers import RecordingServer, self_signed_certificate

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, max_attempts=4)


@dataclass
class Collector:
    """A gRPC server recording each Export call; ``answers`` scripts the replies in order
    (a StatusCode, or (StatusCode, trailing metadata); missing: OK with ``response``)."""

    port: int = 0
    calls: list[tuple[ExportTraceServiceRequest, dict[str, str]]] = field(default_factory=list)
    answers: queue.Queue[Any] = field(default_factory=queue.Queue)
    response: bytes = b""

    def export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append(
            (ExportTraceServiceRequest.FromString(request), dict(context.invocation_metadata()))
        )
        try:
            answer = self.answers.get_nowait()
        except queue.Empty:
            return self.response
        code, trailers = answer if isinstance(answer, tuple) else (answer, ())
        context.set_trailing_metadata(trailers)
        context.abort(code, f"scripted {code.name}")
        return b""  # (abort raises)


def start_server(c: Collector, credentials: Any = None) -> Any:
    """A gRPC server on 127.0.0.1 (TLS with ``credentials``) answering Export with ``c``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service, method = EXPORT_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(c.export)}
    )
    server.add_generic_rpc_handlers((handler,))
    address = "127.0.0.1:0"
    c.port = (
        server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    )
    server.start()
    return server


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    server = start_server(c)
    yield c
    server.stop(None)


def _spans(n: int = 3) -> None:
    with pt.span("GET /cart", kind=pt.SpanKind.SERVER, attributes={"http.request.method": "GET"}):
        for i in range(n - 1):
            with pt.span("SELECT items", kind=pt.SpanKind.CLIENT, attributes={"db.rows": i}):
                pass


@pytest.mark.parametrize("compression", ["gzip", None])
def test_spans_arrive_over_grpc_with_metadata(collector: Collector, compression: str | None) -> None:
    exp = OTLPExporter(
        f"http://127.0.0.1:{collector.port}",
        protocol="grpc",
        headers={"X-Tenant": "t1"},
        compression=compression,
    )
    assert exp.protocol == "grpc"
    pt.configure(service="checkout", exporters=[exp])
    _spans(3)
    assert pt.force_flush(20)
    [(request, metadata)] = collector.calls
    assert metadata["x-tenant"] == "t1"
    assert "pitchey-trace" in metadata["user-agent"]
    [rs] = request.resource_spans
    assert {kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"] == "checkout"
    names = sorted(s.name for s in rs.scope_spans[0].spans)
    assert names == ["GET /cart", "SELECT items", "SELECT items"]
    assert _stats.get("otlp.spans") == 3


def test_unavailable_is_retried_invalid_argument_is_not(collector: Collector) -> None:
    exp = OTLPExporter(f"http://127.0.0.1:{collector.port}", protocol="grpc", retry=FAST)
    collector.answers.put(grpc.StatusCode.UNAVAILABLE)
    collector.answers.put(grpc.StatusCode.DEADLINE_EXCEEDED)
    records = [{"type": "span", **_minimal(i)} for i in range(2)]
    assert exp.export(records)
    assert len(collector.calls) == 3
    assert _stats.get("otlp.retried") == 2
    collector.answers.put(grpc.StatusCode.INVALID_ARGUMENT)
    assert not exp.export(records)
    assert len(collector.calls) == 4  # not retried
    assert _stats.get("otlp.rejected") == 1


def test_resource_exhausted_is_retried_only_with_a_pushback(collector: Collector) -> None:
    exp = OTLPExporter(f"http://127.0.0.1:{collector.port}", protocol="grpc", retry=FAST)
    records = [{"type": "span", **_minimal(0)}]
    collector.answers.put(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert not exp.export(records)
    assert len(collector.calls) == 1
    collector.answers.put((grpc.StatusCode.RESOURCE_EXHAUSTED, (("grpc-retry-pushback-ms", "30"),)))
    assert exp.export(records)
    assert len(collector.calls) == 3


def test_partial_success_is_counted(collector: Collector) -> None:
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = 2
    collector.response = answer.SerializeToString()
    exp = OTLPExporter(f"http://127.0.0.1:{collector.port}", protocol="grpc")
    assert exp.export([{"type": "span", **_minimal(i)} for i in range(3)])
    assert _stats.get("otlp.partial_rejected") == 2


@pytest.mark.allow_internal_errors
def test_a_dead_endpoint_gives_up_without_raising() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exp = OTLPExporter(
        f"http://127.0.0.1:{port}",
        protocol="grpc",
        timeout_s=0.5,
        retry=RetryPolicy(initial_backoff_s=0.01, max_attempts=2),
    )
    assert not exp.export([{"type": "span", **_minimal(0)}])
    assert _stats.get("otlp.failed") == 1
    exp.shutdown()
    exp.shutdown()  # twice: still fine


def test_environment_selects_grpc_and_its_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert OTLPExporter().endpoint == "http://localhost:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
    assert OTLPExporter().endpoint == "https://collector:4317"  # no scheme: TLS unless insecure
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    assert OTLPExporter().endpoint == "http://collector:4317"
    with pytest.raises(ConfigurationError):
        OTLPExporter("ftp://collector:4317", protocol="grpc")


def test_without_grpcio_grpc_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(IntegrationUnavailable, match="otlp-grpc"):
        OTLPExporter("http://127.0.0.1:4317", protocol="grpc")


def test_concurrent_exports_share_one_channel(collector: Collector) -> None:
    exp = OTLPExporter(f"http://127.0.0.1:{collector.port}", protocol="grpc")
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(exp.export([{"type": "span", **_minimal(i)}])))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    assert len(collector.calls) == 4


def _minimal(i: int) -> dict[str, Any]:
    return {
        "schema": 1,
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": f"op{i}",
        "kind": "internal",
        "service": "svc",
        "environment": "test",
        "start_time_unix_nano": 1_800_000_000_000_000_000,
        "end_time_unix_nano": 1_800_000_000_001_000_000,
        "duration_ms": 1.0,
        "status": "unset",
        "status_message": None,
        "category": "fast",
        "attributes": {},
        "events": [],
        "links": [],
        "resource": {"service.name": "svc"},
    }


# -- TLS with a private CA (certificate_file / OTEL_EXPORTER_OTLP_CERTIFICATE) ---------------------
@pytest.fixture
def tls_files(tmp_path: Any) -> tuple[str, str]:
    return self_signed_certificate(tmp_path)


def test_grpc_over_tls_trusts_the_given_certificate(
    tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    c = Collector()
    with open(key, "rb") as k, open(cert, "rb") as crt:
        server = start_server(c, grpc.ssl_server_credentials([(k.read(), crt.read())]))
    port = c.port
    try:
        records = [{"type": "span", **_minimal(0)}]
        assert OTLPExporter(f"https://127.0.0.1:{port}", protocol="grpc", certificate_file=cert).export(
            records
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", cert)
        assert OTLPExporter(f"https://127.0.0.1:{port}", protocol="grpc").export(records)
        assert len(c.calls) == 2
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_CERTIFICATE")
        untrusted = OTLPExporter(
            f"https://127.0.0.1:{port}", protocol="grpc", timeout_s=2, retry=RetryPolicy(max_attempts=1)
        )
        assert not untrusted.export(records)  # the system's roots do not know this certificate
        assert len(c.calls) == 2
    finally:
        server.stop(None)


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_over_tls_trusts_the_given_certificate(tls_files: tuple[str, str], protocol: str) -> None:
    cert, key = tls_files
    server = RecordingServer(tls=(cert, key))
    try:
        assert server.url.startswith("https://")
        records = [{"type": "span", **_minimal(0)}]
        assert OTLPExporter(server.url, protocol=protocol, certificate_file=cert).export(records)
        assert [r.path for r in server.requests] == ["/v1/traces"]
        untrusted = OTLPExporter(server.url, protocol=protocol, retry=RetryPolicy(max_attempts=1))
        assert not untrusted.export(records)
        assert len(server.requests) == 1
        assert _stats.get("otlp.failed") == 1
    finally:
        server.close()


def test_an_unreadable_certificate_file_is_a_configuration_error(tmp_path: Any) -> None:
    (tmp_path / "empty.pem").write_text("not a certificate")
    for protocol in ("grpc", "http/protobuf"):
        with pytest.raises(ConfigurationError, match="cannot read"):
            OTLPExporter("https://c:4317", protocol=protocol, certificate_file=str(tmp_path / "missing.pem"))
        with pytest.raises(ConfigurationError, match="no PEM certificate"):
            OTLPExporter("https://c:4317", protocol=protocol, certificate_file=str(tmp_path / "empty.pem"))


# -- mutual TLS (client_certificate_file / OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) ------------------
@pytest.fixture
def client_files(tmp_path: Any) -> tuple[str, str]:
    (tmp_path / "client").mkdir()
    return self_signed_certificate(tmp_path / "client")


def start_mutual_tls_server(c: Collector, tls_files: tuple[str, str], client_ca: str) -> Any:
    """A TLS gRPC server that requires a client certificate signed by ``client_ca``."""
    cert, key = tls_files
    credentials = grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(client_ca).read_bytes(),
        require_client_auth=True,
    )
    return start_server(c, credentials)


def test_http_mutual_tls(
    tls_files: tuple[str, str], client_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    client_cert, client_key = client_files
    server = RecordingServer(tls=(cert, key), client_ca=client_cert)
    records = [{"type": "span", **_minimal(0)}]
    try:
        exp = OTLPExporter(
            server.url, certificate_file=cert, client_certificate_file=client_cert, client_key_file=client_key
        )
        assert exp.export(records)
        assert len(server.requests) == 1
        anonymous = OTLPExporter(server.url, certificate_file=cert, retry=RetryPolicy(max_attempts=1))
        assert not anonymous.export(records)  # the server refuses the handshake
        assert len(server.requests) == 1
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", client_cert)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", client_key)
        assert OTLPExporter(server.url, certificate_file=cert).export(records)
        assert len(server.requests) == 2
    finally:
        server.close()


def test_grpc_mutual_tls(tls_files: tuple[str, str], client_files: tuple[str, str]) -> None:
    cert, _ = tls_files
    client_cert, client_key = client_files
    c = Collector()
    server = start_mutual_tls_server(c, tls_files, client_cert)
    url = f"https://127.0.0.1:{c.port}"
    records = [{"type": "span", **_minimal(0)}]
    try:
        exp = OTLPExporter(
            url,
            protocol="grpc",
            certificate_file=cert,
            client_certificate_file=client_cert,
            client_key_file=client_key,
        )
        assert exp.export(records)
        assert len(c.calls) == 1
        anonymous = OTLPExporter(
            url, protocol="grpc", certificate_file=cert, timeout_s=2, retry=RetryPolicy(max_attempts=1)
        )
        assert not anonymous.export(records)
        assert len(c.calls) == 1
    finally:
        server.stop(None)


def test_a_client_certificate_needs_its_matching_key(
    tls_files: tuple[str, str], client_files: tuple[str, str], tmp_path: Any
) -> None:
    _, key = tls_files  # (the server's key: a key of another certificate)
    client_cert, _ = client_files
    (tmp_path / "nokey.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a key\n")
    for protocol in ("grpc", "http/protobuf"):
        with pytest.raises(ConfigurationError, match="go together"):
            OTLPExporter("https://c:4317", protocol=protocol, client_certificate_file=client_cert)
        with pytest.raises(ConfigurationError, match="holds no PEM private key"):
            OTLPExporter(
                "https://c:4317",
                protocol=protocol,
                client_certificate_file=client_cert,
                client_key_file=str(tmp_path / "nokey.pem"),
            )
        with pytest.raises(ConfigurationError, match="cannot be used together"):
            OTLPExporter(
                "https://c:4317", protocol=protocol, client_certificate_file=client_cert, client_key_file=key
            )


def test_http_analytics_private_ca_and_mutual_tls(
    tls_files: tuple[str, str], client_files: tuple[str, str]
) -> None:
    from pitchey_trace.exporters import HttpAnalyticsExporter

    cert, key = tls_files
    client_cert, client_key = client_files
    server = RecordingServer(tls=(cert, key), client_ca=client_cert)
    records = [{"type": "span", **_minimal(0)}]
    try:
        exp = HttpAnalyticsExporter(
            server.url + "/ingest",
            certificate_file=cert,
            client_certificate_file=client_cert,
            client_key_file=client_key,
        )
        assert exp.export(records)
        assert [r.path for r in server.requests] == ["/ingest"]
        anonymous = HttpAnalyticsExporter(
            server.url + "/ingest", certificate_file=cert, retry=RetryPolicy(max_attempts=1)
        )
        assert not anonymous.export(records)
        untrusting = HttpAnalyticsExporter(
            server.url + "/ingest",
            client_certificate_file=client_cert,
            client_key_file=client_key,
            retry=RetryPolicy(max_attempts=1),
        )
        assert not untrusting.export(records)  # the system's roots do not know the server
        assert len(server.requests) == 1
    finally:
        server.close()


def test_a_combined_pem_file_serves_as_certificate_and_key(
    tls_files: tuple[str, str], client_files: tuple[str, str], tmp_path: Any
) -> None:
    cert, key = tls_files
    client_cert, client_key = client_files
    combined = tmp_path / "client-combined.pem"  # key first, then the certificate
    combined.write_bytes(Path(client_key).read_bytes() + Path(client_cert).read_bytes())
    server = RecordingServer(tls=(cert, key), client_ca=client_cert)
    try:
        exp = OTLPExporter(
            server.url,
            certificate_file=cert,
            client_certificate_file=str(combined),
            client_key_file=str(combined),
        )
        assert exp.export([{"type": "span", **_minimal(0)}])
        assert len(server.requests) == 1
    finally:
        server.close()
    c = Collector()
    grpc_server = start_mutual_tls_server(c, tls_files, client_cert)
    try:
        exp = OTLPExporter(
            f"https://127.0.0.1:{c.port}",
            protocol="grpc",
            certificate_file=cert,
            client_certificate_file=str(combined),
            client_key_file=str(combined),
        )
        assert exp.export([{"type": "span", **_minimal(0)}])
        assert len(c.calls) == 1
    finally:
        grpc_server.stop(None)
