"""A service configured only by OpenTelemetry's environment variables: a separate process whose
code is ``pt.configure()`` and a span, exporting over OTLP/HTTP to a real server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.exporters.servers import RecordingServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]

APP = """
import pitchey_trace as pt
pt.configure()
headers = {}
with pt.span("GET /pitches", {"pitch.id": 7}) as root:
    pt.inject(headers)
print(root.trace_id_hex, sorted(headers))
pt.shutdown(20)
"""


def test_otel_environment_alone_configures_export_resource_propagation(
    http_server: RecordingServer,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PITCHEY_TRACE_"))}
    env.update(
        PYTHONPATH=str(REPO),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=http_server.url.removesuffix("/v1/traces"),
        OTEL_SERVICE_NAME="pitch-api",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=prod,team=growth%20squad,service.version=2.4.1",
        OTEL_PROPAGATORS="tracecontext,b3",
    )
    out = subprocess.run(
        [sys.executable, "-c", APP], env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    trace_id, headers = out.stdout.split(" ", 1)
    assert headers.strip() == "['b3', 'traceparent']"
    assert http_server.wait_requests(1)
    [req] = http_server.requests
    assert req.path == "/v1/traces"
    msg = ExportTraceServiceRequest.FromString(req.body)
    [rs] = msg.resource_spans
    res = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
    assert res["service.name"] == "pitch-api"
    assert res["deployment.environment.name"] == "prod"
    assert (res["team"], res["service.version"]) == ("growth squad", "2.4.1")
    [span] = rs.scope_spans[0].spans
    assert span.name == "GET /pitches"
    assert span.trace_id.hex() == trace_id


METRICS_APP = """
import pitchey_trace as pt
pt.configure()
for i in range(200):
    with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER):
        pass
pt.shutdown(20)
"""


def test_otel_metrics_exporter_sends_the_rollups_as_metrics(http_server: RecordingServer) -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PITCHEY_TRACE_"))}
    env.update(
        PYTHONPATH=str(REPO),
        OTEL_SERVICE_NAME="pitch-api",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.05",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=http_server.url,
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta",
        PITCHEY_TRACE_KEEP_ERRORS="false",
    )
    subprocess.run([sys.executable, "-c", METRICS_APP], env=env, cwd=REPO, timeout=60, check=True)
    assert http_server.wait_requests(2)
    by_path: dict[str, list[bytes]] = {}
    for req in http_server.requests:
        by_path.setdefault(req.path, []).append(req.body)
    [body] = by_path["/v1/metrics"]
    msg = ExportMetricsServiceRequest.FromString(body)
    [metric] = [
        m for m in msg.resource_metrics[0].scope_metrics[0].metrics if m.name == "traces.span.metrics.calls"
    ]
    assert metric.sum.aggregation_temporality == 1  # delta, from the preference variable
    assert sum(p.as_int for p in metric.sum.data_points) == 200
    traced = sum(
        len(ss.spans)
        for body in by_path["/v1/traces"]
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
    )
    assert traced < 100  # (5% of the traces were kept; every span was counted)


def test_run_with_metrics_and_logs_sends_them_for_an_unchanged_program(http_server: RecordingServer) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PITCHEY_TRACE_"))}
    env.update(PYTHONPATH=str(REPO), OTEL_EXPORTER_OTLP_ENDPOINT=http_server.url)
    program = (
        "import logging\nimport pitchey_trace as pt\nfor i in range(50):\n    with pt.span('nightly-job'):\n"
        "        pass\n"
        "pt.emit_audit('export', 'invoices', 'success', category='data_access')\n"
        "logging.getLogger('jobs').info('not shipped: below the level')\n"
        "with pt.span('send-mail') as span:\n"
        "    logging.getLogger('jobs').warning('mail to ada@pitchey.example bounced')\n"
        "print(span.trace_id_hex)\n"
    )
    cli = [
        sys.executable,
        "-m",
        "pitchey_trace.cli",
        "run",
        "--service",
        "jobs",
        "--metrics",
        "otlp",
        "--logs",
        "otlp",
        "--export-logs",
        "WARNING",
    ]
    run = subprocess.run(
        [*cli, "--", sys.executable, "-c", program],
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "bounced" in run.stderr  # the program's own output is as before (logging's last resort)
    assert http_server.wait_requests(2)
    [body] = [r.body for r in http_server.requests if r.path == "/v1/metrics"]
    [logs] = [r.body for r in http_server.requests if r.path == "/v1/logs"]
    audit, warning = ExportLogsServiceRequest.FromString(logs).resource_logs[0].scope_logs[0].log_records
    assert audit.body.string_value == "export -> success"
    # the program's own warning (and not its info), sanitized, in the trace it was logged in
    assert warning.body.string_value == "mail to [EMAIL] bounced"
    assert warning.trace_id.hex() == run.stdout.strip()
    [rm] = ExportMetricsServiceRequest.FromString(body).resource_metrics
    assert {kv.key: kv.value.string_value for kv in rm.resource.attributes}["service.name"] == "jobs"
    [calls] = [m for m in rm.scope_metrics[0].metrics if m.name == "traces.span.metrics.calls"]
    assert [(p.as_int, p.attributes[1].value.string_value) for p in calls.sum.data_points] == [
        (50, "nightly-job"),
        (1, "send-mail"),
    ]
