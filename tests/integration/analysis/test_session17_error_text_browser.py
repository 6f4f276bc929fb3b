"""The trace page describes a failed span as the analysis engine does (``analyze()``'s
``message``): a failed response without an exception reads ``HTTP 502``, not nothing.

Its own small archive, written by the SDK's LocalArchiveExporter; the page rendered by
headless Chromium from the uvicorn server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import pitchey_trace as pt
from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from pitchey_trace.exporters import LocalArchiveExporter
from tests.integration.analysis.conftest import serve
from tests.integration.analysis.test_waterfall_browser import render, row_name, span_rows

pytestmark = pytest.mark.integration

MS = 1_000_000


def _record_gateway_502(root: Path) -> str:
    """One trace of service ``edge``: ``GET /gateway`` (server, 0-20 ms) answered 502 with
    status error and neither a status message nor an exception, over an ``auth.check``
    child that went fine. Returns its trace id."""
    t0 = time.time_ns() - 60 * 10**9
    pt.configure(service="edge", exporters=[LocalArchiveExporter(root)], sample_rate=1.0)
    try:
        gateway = pt.start_span(
            "GET /gateway",
            kind=pt.SpanKind.SERVER,
            start_time_ns=t0,
            attributes={"http.request.method": "GET", "http.response.status_code": 502},
        )
        pt.start_span("auth.check", context=gateway, start_time_ns=t0 + 1 * MS).end(t0 + 3 * MS)
        gateway.set_status("error")
        gateway.end(t0 + 20 * MS)
        assert pt.force_flush(10)
    finally:
        pt.shutdown(10)
    return gateway.trace_id_hex


def test_a_failed_response_without_exception_shows_its_status_code(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    trace_id = _record_gateway_502(root)
    assert list((root / "traces").rglob("*.log.gz"))
    with serve(create_app(Archive(root))) as url:
        analysis = httpx.get(f"{url}/api/traces/{trace_id}/analysis", timeout=10).json()
        dom = render(f"{url}/traces/{trace_id}", tmp_path / "chromium-profile")

    # the engine's description (what `show` prints) of the failure: no exception, no message
    [failure] = analysis["errors"]
    assert failure["exception_type"] is None
    assert failure["exception_message"] is None
    assert failure["status_message"] is None
    assert failure["message"] == "HTTP 502"

    rows = span_rows(dom)
    assert [row_name(r) for r in rows] == ["GET /gateway", "auth.check"]
    assert [row_name(r) for r in rows if "error" in r.classes] == ["GET /gateway"]
    [error] = dom.by_class("trace-error")
    assert error.attrs["data-span-id"] == failure["span_id"]
    assert " ".join(error.text().split()) == "GET /gateway (edge) HTTP 502"
