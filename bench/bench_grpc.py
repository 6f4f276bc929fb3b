"""Per-call cost of a unary gRPC call over 127.0.0.1, traced at both ends: plain, with
pitchey-trace's interceptors, and with opentelemetry-instrumentation-grpc's + the OpenTelemetry
SDK, in the same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_grpc.py [--rounds 20] [--min-time 0.1]

Three servers in this process (a thread pool of 4 each) answer the same bytes-in, bytes-out
method; each case calls its own server over its own channel:

  plain  no interceptors
  null   do-nothing client and server interceptors: what gRPC's interceptor machinery itself
         costs, which any instrumentation pays
  pt     ``client_interceptor`` + ``server_interceptor``; pitchey-trace configured with a no-op
         exporter and the defaults (sampling 1.0, sanitizer, rollups, tail keeping)
  otel   OpenTelemetry's ``client_interceptor`` + ``server_interceptor`` with a TracerProvider +
         BatchSpanProcessor(no-op exporter)

Each call makes two spans (client and server) and sends its context in the metadata. Rounds
interleave the cases in shuffled order; both SDKs are flushed after every run, outside the
timed region. "cpu" is process CPU time per call (all threads: the server's included).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from _harness import (  # noqa: E402  (bench/ is on sys.path)
    both_sdks,
    interleaved,
    report_added,
    rounds_arguments,
    switched,
)
from opentelemetry.instrumentation import grpc as otel_grpc  # noqa: E402
from opentelemetry.instrumentation.grpc import grpcext  # noqa: E402

from pitchey_trace.grpc import client_interceptor, server_interceptor  # noqa: E402

METHOD = "/demo.Pitches/Get"


def get(request: bytes, context: Any) -> bytes:
    return b"pitch " + request


def serve(interceptors: list[Any]) -> tuple[Any, str]:
    server = grpc.server(ThreadPoolExecutor(4), interceptors=interceptors)
    handler = grpc.method_handlers_generic_handler(
        "demo.Pitches", {"Get": grpc.unary_unary_rpc_method_handler(get)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class NullServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Any, details: Any) -> Any:
        return continuation(details)


class NullClientInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


def main() -> None:
    args = rounds_arguments(__doc__, rounds=20, min_time=0.1)
    with both_sdks() as sdks:
        tp = sdks.tp
        servers, channels, cases = [], [], {}
        # name -> (server interceptors, channel, target -> the channel the case calls through)
        setups: dict[str, tuple[list[Any], Callable[[Any, str], Any]]] = {
            "plain": ([], lambda channel, _target: channel),
            "null": (
                [NullServerInterceptor()],
                lambda channel, _target: grpc.intercept_channel(channel, NullClientInterceptor()),
            ),
            "pt": (
                [server_interceptor()],
                lambda channel, target: grpc.intercept_channel(channel, client_interceptor(target)),
            ),
            "otel": (  # (OpenTelemetry's client interceptor goes through its own grpcext wrapper)
                [otel_grpc.server_interceptor(tracer_provider=tp)],
                lambda channel, _target: grpcext.intercept_channel(
                    channel, otel_grpc.client_interceptor(tracer_provider=tp)
                ),
            ),
        }
        for name, (server_side, client_side) in setups.items():
            server, target = serve(server_side)
            servers.append(server)
            channel = grpc.insecure_channel(target)
            channels.append(channel)
            cases[name] = switched(functools.partial(client_side(channel, target).unary_unary(METHOD), b"42"))

        wall, cpu, n = interleaved(cases, sdks.flush, args.rounds, args.min_time)
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop(None)

    print(f"grpcio {grpc.__version__}, CPython {sys.version.split()[0]}, {args.rounds} rounds x {n} calls")
    report_added(wall, cpu, "call")
    print(sdks.exported())


if __name__ == "__main__":
    main()
