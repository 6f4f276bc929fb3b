"""AWS SDK calls (boto3 / botocore): every API call is a CLIENT span (extra ``s3``).

    from pitchey_trace.botocore import instrument_botocore
    instrument_botocore()          # every client, existing ones too; idempotent

A call is a span named ``{service}.{operation}`` (``S3.GetObject``, ``DynamoDB.Query``) with
the OpenTelemetry RPC attributes for AWS: ``rpc.system=aws-api``, ``rpc.service``,
``rpc.method``, ``cloud.region``, ``server.address``, ``aws.request_id``,
``http.response.status_code``, and for S3 the bucket (``aws.s3.bucket``; object keys and
request bodies are never recorded). A failed call (``ClientError``) sets status error with the
AWS error code as ``error.type`` and is re-raised unchanged. The SDK's own exporters (S3/R2
logpush) run with tracing suppressed, so their uploads make no spans.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from pitchey_trace import _safety
from pitchey_trace._context import CURRENT, IN_HTTP_CLIENT
from pitchey_trace._span import SUPPRESSED, SpanKind
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable

try:
    import botocore.client as _client
except ImportError as _exc:
    raise IntegrationUnavailable("pitchey_trace.botocore", "s3") from _exc

__all__ = ["instrument_botocore", "uninstrument_botocore"]

_CLIENT = SpanKind.CLIENT
_start_span = get_tracer().start_span
_original: list[Any] = []


def _base(client: Any) -> tuple[str, dict[str, Any]]:
    """The service name and the attributes every call of ``client`` shares (once per client)."""
    cached: tuple[str, dict[str, Any]] | None = client.__dict__.get("_pitchey_trace_base")
    if cached is not None:
        return cached
    meta = client.meta
    service = meta.service_model.service_id or meta.service_model.service_name
    attrs: dict[str, Any] = {"rpc.system": "aws-api", "rpc.service": str(service)}
    if meta.region_name:
        attrs["cloud.region"] = meta.region_name
    address, port = _server(meta.endpoint_url)
    if address:
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
    cached = (str(service).replace(" ", ""), attrs)
    client.__dict__["_pitchey_trace_base"] = cached
    return cached


def _server(endpoint_url: object) -> tuple[str | None, int | None]:
    """``(host, explicit port)`` of an endpoint URL: IPv6 brackets and any userinfo dropped."""
    if not isinstance(endpoint_url, str) or not endpoint_url:
        return None, None
    parts = urlsplit(endpoint_url)
    host = parts.hostname  # lower-cased, without ``user:pass@``, ``[``/``]`` or ``:port``
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    return host or None, port


def _make_api_call(original: Any) -> Any:
    @functools.wraps(original)
    def traced(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return original(self, operation_name, api_params)
        try:
            service, base = _base(self)
            attrs = {**base, "rpc.method": operation_name}
            bucket = api_params.get("Bucket") if isinstance(api_params, dict) else None
            if isinstance(bucket, str):
                attrs["aws.s3.bucket"] = bucket
            span = _start_span(f"{service}.{operation_name}", attrs, _CLIENT)
        except Exception as exc:
            _safety.report("botocore.start", exc)
            return original(self, operation_name, api_params)
        inside = IN_HTTP_CLIENT.set(True)  # (its HTTP requests, made with urllib3, are this call)
        try:
            result = original(self, operation_name, api_params)
        except BaseException as exc:
            IN_HTTP_CLIENT.reset(inside)
            try:
                response = getattr(exc, "response", None)
                if isinstance(response, dict):
                    _response_attributes(span, response)
                    code = response.get("Error", {}).get("Code")
                else:
                    code = None
                if isinstance(exc, Exception):
                    span.set_attribute("error.type", str(code) if code else type(exc).__qualname__)
                    span.record_exception(exc)
                    span.set_status("error", f"{type(exc).__name__}: {exc}")
                span.end()
            except Exception as internal:
                _safety.report("botocore.end", internal)
            raise
        IN_HTTP_CLIENT.reset(inside)
        try:
            if isinstance(result, dict):
                _response_attributes(span, result)
            span.end()
        except Exception as internal:
            _safety.report("botocore.end", internal)
        return result

    setattr(traced, "__pitchey_trace_wrapped__", original)  # noqa: B010
    return traced


def _response_attributes(span: Any, response: dict[str, Any]) -> None:
    meta = response.get("ResponseMetadata")
    if isinstance(meta, dict):
        if meta.get("RequestId"):
            span.set_attribute("aws.request_id", str(meta["RequestId"]))
        status = meta.get("HTTPStatusCode")
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)


def instrument_botocore() -> None:
    """Make every botocore API call (boto3 clients and resources included) a CLIENT span.
    Idempotent."""
    if _original:
        return
    original = _client.BaseClient._make_api_call
    _original.append(original)
    _client.BaseClient._make_api_call = _make_api_call(original)


def uninstrument_botocore() -> None:
    """Undo :func:`instrument_botocore`."""
    if _original:
        _client.BaseClient._make_api_call = _original.pop()
