"""OTLP over gRPC: the ``TraceService/Export`` unary call with the protobuf bytes that
``_otlp_proto`` writes, through grpcio (extra ``otlp-grpc``) without generated stubs.

:class:`GrpcSender` has the surface of :class:`~pitchey_trace.exporters._http.HttpSender`
(``send``, ``stop``, ``close``, ``reset``, ``url``), so ``OTLPExporter`` drives either. Retries
follow the OTLP specification: ``UNAVAILABLE``, ``CANCELLED``, ``DEADLINE_EXCEEDED``,
``ABORTED``, ``OUT_OF_RANGE`` and ``DATA_LOSS`` are retried with backoff;
``RESOURCE_EXHAUSTED`` only when the server says when (``grpc-retry-pushback-ms``); anything
else rejects the batch.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from pitchey_trace._validate import header_map
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.exporters._http import (
    HttpResult,
    RetryPolicy,
    Try,
    checked_endpoint,
    checked_retry,
    client_identity,
    read_ca_file,
    with_retries,
)

__all__ = ["EXPORT_METHOD", "GrpcSender"]

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE = frozenset(
    {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "DATA_LOSS"}
)


def _grpc() -> Any:
    try:
        import grpc
    except ImportError:
        raise IntegrationUnavailable("OTLPExporter(protocol='grpc')", "otlp-grpc") from None
    return grpc


class GrpcSender:
    """Calls ``TraceService/Export`` (or ``method``: the metrics service's) on one target over a
    reused channel, with retries.

    ``url``: ``http://host:port`` (plaintext) or ``https://host:port`` (TLS with the system's
    roots, or ``ca_file``'s certificates); a path is ignored, as gRPC has none. ``headers``
    become call metadata (names lowercased, as HTTP/2 requires).
    """

    def __init__(
        self,
        url: str,
        *,
        counter: str,
        method: str = EXPORT_METHOD,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compress: bool = True,
        retry: RetryPolicy | None = None,
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
    ) -> None:
        self._grpc = _grpc()
        self._roots = read_ca_file(ca_file) if ca_file else None  # None: the system's roots
        self._identity = client_identity(client_cert_file, client_key_file)  # mutual TLS
        parts = checked_endpoint(url, timeout_s, "http(s)://host[:port] for gRPC")
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        self.url = url
        self.target = f"{host}:{parts.port or (443 if parts.scheme == 'https' else 4317)}"
        self._tls = parts.scheme == "https"
        self.counter = counter
        self.method = method
        self.timeout_s = timeout_s
        self.compress = compress
        self.retry = checked_retry(retry)
        self.metadata = tuple((k.lower(), v) for k, v in header_map(headers).items())
        self._channel: Any = None
        self._call: Any = None
        self._pid = os.getpid()
        self.stop = threading.Event()

    def reset(self) -> None:
        """Forget the channel without closing it (after fork it belongs to the parent)."""
        self._channel = self._call = None
        self._pid = os.getpid()
        self.stop = threading.Event()

    def close(self) -> None:
        """Close the channel; later sends open a new one."""
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            with contextlib.suppress(Exception):  # closing must never fail a shutdown
                channel.close()

    def _credentials(self) -> Any:
        chain, key = self._identity or (None, None)
        return self._grpc.ssl_channel_credentials(self._roots, private_key=key, certificate_chain=chain)

    def _stub(self) -> Any:
        if self._pid != os.getpid():
            self.reset()
        if self._call is None:
            grpc = self._grpc
            options = [("grpc.primary_user_agent", "pitchey-trace")]
            self._channel = (
                grpc.secure_channel(self.target, self._credentials(), options=options)
                if self._tls
                else grpc.insecure_channel(self.target, options=options)
            )
            # No (de)serializers: the request and the answer stay bytes (our own encoding).
            self._call = self._channel.unary_unary(self.method)
        return self._call

    def send(
        self,
        payload: bytes,
        retry: RetryPolicy | None = None,
        spooled: bool = False,
        deadline: float | None = None,
        splittable: bool = False,
    ) -> HttpResult:
        """Export ``payload`` (an encoded ExportTraceServiceRequest), retrying per the policy
        (``retry`` instead of the sender's own for this call; ``spooled``: see
        ``_http.with_retries``; ``deadline``, ``time.monotonic()``: no call or wait past it;
        ``splittable`` is for HTTP's 413, which gRPC has not).

        The result's ``body`` is the encoded ExportTraceServiceResponse; ``status`` is None
        (gRPC codes are in ``error``)."""
        policy = retry or self.retry
        grpc = self._grpc
        compression = grpc.Compression.Gzip if self.compress else grpc.Compression.NoCompression
        max_retry_after_s = policy.max_retry_after_s

        def once() -> Try:
            timeout = self.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    return Try(retry=True, error="no time left to send the request")
            if self.stop.is_set():  # (shut down: a closed channel must not be opened again)
                return Try(retry=True, error="the exporter was shut down")
            try:
                body = self._stub()(payload, timeout=timeout, metadata=self.metadata, compression=compression)
            except grpc.RpcError as exc:
                code = exc.code().name if callable(getattr(exc, "code", None)) and exc.code() else "UNKNOWN"
                details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
                pushback = _pushback_s(exc)
                return Try(
                    retry=code in _RETRYABLE or (code == "RESOURCE_EXHAUSTED" and pushback is not None),
                    error=f"gRPC {code}: {details}",
                    wait=None if pushback is None else min(pushback, max_retry_after_s),
                )
            except ValueError as exc:  # the channel was closed under us (shutdown): reopen
                self._channel = self._call = None
                return Try(retry=True, error=f"{type(exc).__name__}: {exc}")
            answer = body if isinstance(body, bytes) else b""
            return Try(ok=True, data=answer, content_type="application/grpc")  # (read for a partial success)

        return with_retries(self.counter, self.url, policy, self.stop, once, spooled, deadline)


def _pushback_s(exc: Any) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` trailer, in seconds (None when absent)."""
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-retry-pushback-ms":
                return max(0.0, int(value) / 1000.0)
    except Exception:  # no trailers, or an unreadable value: no pushback
        return None
    return None
