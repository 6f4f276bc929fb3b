"""A gRPC sender that was shut down (its ``stop`` set, its channel closed) never opens a new
channel for a send that was already on its way: the spool's sender thread could pass the
exporter's shut-down check just before ``shutdown()`` and then reopen the channel."""

from __future__ import annotations

from pitchey_trace.exporters._grpc import GrpcSender
from pitchey_trace.exporters._http import RetryPolicy


def test_a_stopped_grpc_sender_opens_no_channel() -> None:
    sender = GrpcSender("http://127.0.0.1:9", counter="otlp", retry=RetryPolicy(max_attempts=3))
    sender.stop.set()
    sender.close()
    result = sender.send(b"payload")
    assert not result.ok
    assert result.error == "the exporter was shut down"
    assert sender._channel is None
