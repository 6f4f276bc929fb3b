"""Outbound helpers without a network: patching is idempotent and reversible, URLs lose their
credentials, and client_span propagates through any header mapping."""

from __future__ import annotations

import httpx
import pytest
import requests.adapters

import pitchey_trace as pt
from pitchey_trace.testing import capture_spans
from pitchey_trace.web import (
    client_span,
    instrument_httpx,
    instrument_requests,
    uninstrument_httpx,
    uninstrument_requests,
)
from pitchey_trace.web.outbound import _strip_credentials


def test_patching_is_idempotent_and_reversible() -> None:
    originals = (
        httpx.HTTPTransport.handle_request,
        httpx.AsyncHTTPTransport.handle_async_request,
        requests.adapters.HTTPAdapter.send,
    )
    try:
        instrument_httpx()
        instrument_requests()
        patched = (
            httpx.HTTPTransport.handle_request,
            httpx.AsyncHTTPTransport.handle_async_request,
            requests.adapters.HTTPAdapter.send,
        )
        instrument_httpx()
        instrument_requests()
        again = (
            httpx.HTTPTransport.handle_request,
            httpx.AsyncHTTPTransport.handle_async_request,
            requests.adapters.HTTPAdapter.send,
        )
        assert all(p is not o for p, o in zip(patched, originals, strict=True))
        assert again == patched
    finally:
        uninstrument_httpx()
        uninstrument_requests()
    restored = (
        httpx.HTTPTransport.handle_request,
        httpx.AsyncHTTPTransport.handle_async_request,
        requests.adapters.HTTPAdapter.send,
    )
    assert restored == originals
    uninstrument_httpx()  # a second undo is harmless
    assert httpx.HTTPTransport.handle_request is originals[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://a.test/x?y=1", ("http://a.test/x?y=1", "a.test", 80)),
        ("https://a.test:8443/x", ("https://a.test:8443/x", "a.test", 8443)),
        ("https://user:pw@a.test/x#f", ("https://a.test/x#f", "a.test", 443)),
        ("http://u:p@[::1]:9000/", ("http://[::1]:9000/", "::1", 9000)),
        ("http://a.test:notaport/", ("http://a.test:notaport/", "a.test", None)),
        ("http://u@a.test:bad/", ("http://a.test:bad/", "a.test", None)),
    ],
)
def test_credentials_are_stripped(url: str, expected: tuple[str, str, int | None]) -> None:
    assert _strip_credentials(url) == expected


def test_client_span_injects_and_records() -> None:
    headers: dict[str, str] = {}
    with capture_spans() as exporter:
        with pt.span("caller") as caller, client_span("post", "https://api.test/v1/pitches", headers) as span:
            span.set_attribute("http.response.status_code", 201)
        with pytest.raises(TimeoutError), client_span("GET", "https://api.test/slow", {}):
            raise TimeoutError("slow")
    client, failed = (s for s in exporter.spans() if s["kind"] == "client")
    assert headers["traceparent"].startswith(f"00-{client['trace_id']}-{client['span_id']}-")
    assert client["name"] == "POST"
    assert client["parent_span_id"] == f"{caller.span_id:016x}"
    assert client["attributes"]["server.address"] == "api.test"
    assert client["attributes"]["server.port"] == 443
    assert failed["status"] == "error"


def test_client_span_under_suppression_does_nothing() -> None:
    headers: dict[str, str] = {}
    with capture_spans() as exporter, pt.suppress_tracing(), client_span("GET", "http://a.test/", headers):
        pass
    assert headers == {}
    assert exporter.spans() == []
