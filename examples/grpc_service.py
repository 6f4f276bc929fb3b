"""gRPC traced by pitchey-trace: a server and a client in one trace, status codes, streams.

.venv/bin/python examples/grpc_service.py            # serve on 127.0.0.1:50051 (PORT=...)
.venv/bin/python examples/grpc_service.py --demo     # start, call itself, print, exit

The service speaks raw bytes so the example needs no generated code; with protobuf stubs
nothing changes: ``instrument_grpc()`` traces every server and channel made after it.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

import pitchey_trace as pt
from pitchey_trace.grpc import instrument_grpc

PITCHES = {b"42": b"Quiet drums", b"7": b"Solar kettles"}


def get(request: bytes, context: grpc.ServicerContext) -> bytes:
    with pt.span("load_pitch", attributes={"pitch.id": request.decode()}):
        title = PITCHES.get(request)
    if title is None:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no pitch {request.decode()}")
    return title or b""


def listing(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for pitch_id in sorted(PITCHES):
        with pt.span("render_item"):
            time.sleep(0.001)
        yield pitch_id


def serve(port: int) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pitches.v1.Pitches",
                {
                    "Get": grpc.unary_unary_rpc_method_handler(get),
                    "List": grpc.unary_stream_rpc_method_handler(listing),
                },
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def demo() -> None:
    """Serve on a free port, make three calls from a traced job, print what came back, stop."""
    server, port = serve(0)
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel, pt.span("nightly_digest") as job:
        get_pitch = channel.unary_unary("/pitches.v1.Pitches/Get")
        print("Get 42  ->", get_pitch(b"42").decode())
        try:
            get_pitch(b"99")
        except grpc.RpcError as exc:
            print("Get 99  ->", exc.code().name, exc.details())
        ids = [m.decode() for m in channel.unary_stream("/pitches.v1.Pitches/List")(b"")]
        print("List    ->", ", ".join(ids))
        print(f"trace {job.trace_id:032x}")
    time.sleep(0.1)  # (the server ends its spans as its last message goes out)
    server.stop(None)
    pt.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true", help="start, call the service, exit")
    args = parser.parse_args()
    pt.configure(service="pitch-grpc", exporters=[pt.ConsoleExporter(pretty=True)])
    instrument_grpc()  # before servers and channels are made
    if args.demo:
        demo()
        return
    server, port = serve(int(os.environ.get("PORT", "50051")))
    print(f"serving pitches.v1.Pitches on 127.0.0.1:{port}")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
