"""End-to-end middleware overhead under load: uvicorn + a small Starlette app, driven over
HTTP/1.1 keep-alive on 127.0.0.1 by a separate load-generator process.

    .venv/bin/python bench/bench_middleware.py                 # after: make bench-setup
    .venv/bin/python bench/bench_middleware.py --requests 3000 --rounds 7 --connections 8
    .venv/bin/python bench/bench_middleware.py --framework aiohttp   # the same on aiohttp.web

Servers (one uvicorn process each, all started in the same run, h11, no access log):
  none       the app alone; its handler does the same work without spans
  pitchey    ASGITracingMiddleware + pitchey_trace.configure(exporters=[no-op exporter])
             with the defaults (sanitizer, rollups, tail keeping, one audit record per request)
  otel       OpenTelemetry's ASGI middleware (opentelemetry-instrumentation-asgi, defaults:
             server span + its internal "http send" spans) + TracerProvider +
             BatchSpanProcessor(no-op exporter)
  otel-lean  the same with exclude_spans=["receive", "send"] (server span only)
  pitchey-noheader / -noaudit / -norollups / -core (not run by default; for
             bench/count_middleware.py): pitchey without the X-Trace-Id response header, the
             request audit record or the rollups; -core without all three
  pitchey-sink (not run by default; a diagnostic): pitchey whose finished spans and audit
             items are dropped on the request thread instead of queued, so the pipeline
             and exporter threads never run: "pitchey" minus "pitchey-sink" is their cost
--framework aiohttp serves the same route from aiohttp.web's own server instead: none, pitchey
(init_aiohttp with the defaults, the variants above too) and otel (OpenTelemetry's
aiohttp-server middleware, opentelemetry-instrumentation-aiohttp-server, + the same SDK setup).
In the traced servers the handler opens 3 nested spans (one attribute each) inside the
request span. Load: wrk (Debian package `wrk`; a Lua script makes it stop after a fixed count)
or, without it, a built-in asyncio load generator (costlier per request, so it may limit the
baseline). With 2+ CPUs every server is pinned to CPU 0 and the load generator to CPU 1, as in
a one-CPU container; --no-pin turns that off.

Each round sends --requests requests to every server in shuffled order over --connections
keep-alive connections; figures are medians over rounds. "lost" is the throughput lost against
`none`, "+us/req" the time added per request (1/rps - 1/rps_none), "cpu us/req" the server
process's CPU time per request (all threads, from /proc). Target (issue 5): lost(pitchey) is
at most 1/4 of lost(otel). This machine's neighbours make single rounds noisy: read the paired
per-round ratio and its range.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("none", "pitchey", "otel", "otel-lean")
PATH = "/pitches/{pitch_id}"


# -- server side ---------------------------------------------------------------------------------
class NoopExporter:
    """Accepts every batch and drops it (counts, so nothing is optimised away)."""

    name = "noop"

    def __init__(self) -> None:
        self.count = 0

    def export(self, batch: Any) -> Any:
        self.count += len(batch)
        return True


def render(pitch_id: str) -> bytes:
    return b'{"id": ' + pitch_id.encode() + b', "title": "Solar kettles"}'


def _pitchey_options(mode: str) -> dict[str, Any]:
    """Configure pitchey for a ``pitchey[-variant]`` server; the middleware's keyword options."""
    import pitchey_trace as pt

    variant = mode.partition("-")[2]
    if variant not in ("", "noheader", "noaudit", "norollups", "core", "sink"):
        raise SystemExit(f"unknown mode {mode!r}")
    lean = variant == "core"
    options: dict[str, Any] = {"rollups": None} if variant == "norollups" or lean else {}
    pt.configure(service="bench", exporters=[NoopExporter()], sample_rate=1.0, **options)
    if variant == "sink":
        # Diagnostic: finished spans and audit items go into a one-slot deque instead of the
        # pipeline's queue (the request thread's hand-over, pipeline._hot, re-pointed), so
        # they are freed on the request thread and the workers never run. The difference
        # to "pitchey" is what the pipeline and exporter threads cost at full speed.
        from collections import deque

        from pitchey_trace._tracer import get_tracer

        pipeline = get_tracer().pipeline
        assert pipeline is not None
        sink: deque[Any] = deque(maxlen=1)
        pipeline._hot = (sink.append, sink, 1 << 62, 1 << 62, pipeline.wake.set)
    return {
        "trace_id_header": None if variant == "noheader" or lean else "X-Trace-Id",
        "audit": not (variant == "noaudit" or lean),
    }


def _otel_provider() -> Any:
    """OpenTelemetry's SDK with a BatchSpanProcessor and a no-op exporter, made global."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class OtelNoop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OtelNoop()))
    trace.set_tracer_provider(provider)  # the handlers' get_tracer() is a proxy
    return provider


def _span_factory(mode: str) -> Any:
    """The handler's span context manager: ``span(name, attributes)`` (None untraced)."""
    if mode == "none":
        return None
    if mode.startswith("pitchey"):
        import pitchey_trace as pt

        return pt.span
    from opentelemetry import trace

    start = trace.get_tracer("bench").start_as_current_span
    return lambda name, attributes: start(name, attributes=attributes)


def build_app(mode: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    span = _span_factory(mode)
    if span is None:

        async def pitch(request: Request) -> Response:
            return Response(render(request.path_params["pitch_id"]), media_type="application/json")

    else:

        async def pitch(request: Request) -> Response:
            pid = request.path_params["pitch_id"]
            with span("load_pitch", {"pitch.id": pid}), span("query", {"db.rows": 1}):
                with span("render", {"format": "json"}):
                    body = render(pid)
            return Response(body, media_type="application/json")

    app: Any = Starlette(routes=[Route(PATH, pitch)])
    if mode.startswith("pitchey"):
        from pitchey_trace.web import ASGITracingMiddleware

        app = ASGITracingMiddleware(app, **_pitchey_options(mode))
    elif mode in ("otel", "otel-lean"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        exclude: Any = ["receive", "send"] if mode == "otel-lean" else None
        app = OpenTelemetryMiddleware(app, tracer_provider=_otel_provider(), exclude_spans=exclude)
    return app


def build_aiohttp_app(mode: str) -> Any:
    """The same server on aiohttp.web: init_aiohttp, or OpenTelemetry's aiohttp-server middleware."""
    from aiohttp import web

    span = _span_factory(mode)
    if span is None:

        async def pitch(request: web.Request) -> web.Response:
            body = render(request.match_info["pitch_id"])
            return web.Response(body=body, content_type="application/json")

    else:

        async def pitch(request: web.Request) -> web.Response:
            pid = request.match_info["pitch_id"]
            with span("load_pitch", {"pitch.id": pid}), span("query", {"db.rows": 1}):
                with span("render", {"format": "json"}):
                    body = render(pid)
            return web.Response(body=body, content_type="application/json")

    if mode == "otel":
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        # (the documented setup: web.Application becomes a subclass adding the middleware)
        AioHttpServerInstrumentor().instrument(tracer_provider=_otel_provider())
    elif mode == "otel-lean":
        raise SystemExit("otel-lean is an ASGI mode (the aiohttp instrumentation has no send spans)")
    app = web.Application()
    app.router.add_get(PATH, pitch)
    if mode.startswith("pitchey"):
        from pitchey_trace.web import init_aiohttp

        init_aiohttp(app, **_pitchey_options(mode))
    return app


def serve(mode: str, cpu: int | None, framework: str = "starlette") -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before the app starts any thread: all threads inherit

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; with
    # proto 0 the response's body segment waits for a delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if framework == "aiohttp":
        from aiohttp import web

        app = build_aiohttp_app(mode)
        print(sock.getsockname()[1], flush=True)
        web.run_app(app, sock=sock, access_log=None, print=None)
        return
    import uvicorn

    config = uvicorn.Config(
        build_app(mode), http="h11", loop="asyncio", lifespan="off", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


# -- load generator ------------------------------------------------------------------------------
class _Client(asyncio.Protocol):
    """One keep-alive connection sending ``count`` requests back to back (one in flight).

    A bare Protocol, not asyncio streams: the generator must cost far less per request than
    the server, or it, not the server, sets the throughput.
    """

    def __init__(
        self, count: int, latencies: list[int], statuses: list[bytes], done: asyncio.Future[None]
    ) -> None:
        self.left = count
        self.latencies = latencies
        self.statuses = statuses
        self.done = done
        self.buf = b""
        self.t0 = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.t0 = time.perf_counter_ns()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end].lower()
        at = head.find(b"content-length:")
        length = (
            int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if at >= 0
            else 0
        )
        total = end + 4 + length
        if len(buf) < total:
            self.buf = buf
            return
        self.latencies.append(time.perf_counter_ns() - self.t0)
        if not buf.startswith(b"HTTP/1.1 200"):
            self.statuses.append(buf[: buf.find(b"\r\n")])
        self.buf = buf[total:]
        self.left -= 1
        if self.left:
            self._send()
        else:
            self.transport.close()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("server closed the connection"))


REQUEST = b"GET /pitches/1042 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n"


async def _load(port: int, requests: int, connections: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    statuses: list[bytes] = []
    per = requests // connections
    futures: list[asyncio.Future[None]] = [loop.create_future() for _ in range(connections)]
    t0 = time.perf_counter()
    for fut in futures:
        await loop.create_connection(
            functools.partial(_Client, per, latencies, statuses, fut), "127.0.0.1", port
        )
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_us": latencies[len(latencies) // 2] / 1000,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000,
        "errors": len(statuses),
        "first_error": statuses[0].decode() if statuses else None,
    }


def load(port: int, requests: int, connections: int) -> None:
    print(json.dumps(asyncio.run(_load(port, requests, connections))))


# -- driver --------------------------------------------------------------------------------------
def _start_server(mode: str, framework: str) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, __file__, "--serve", mode, "--framework", framework]
    if _pinning:
        command += ["--cpu", str(SERVER_CPU)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit(f"server {mode!r} did not start")
    return proc, int(line)


# wrk runs for a duration; this script makes it a fixed count: at the Nth response it prints
# the elapsed wall time and stops issuing requests; the driver then sends SIGINT, on which wrk
# ends and done() prints the latency percentiles. (os.clock is CPU time, hence `date`.)
WRK_SCRIPT = """
local limit = tonumber(os.getenv("BENCH_REQUESTS"))
local count, bad, t0 = 0, 0, 0
local function now_ns()
  local f = io.popen("date +%s%N")
  local t = tonumber(f:read("*l"))
  f:close()
  return t
end
init = function(args) t0 = now_ns() end
response = function(status, headers, body)
  count = count + 1
  if status ~= 200 then bad = bad + 1 end
  if count == limit then
    io.write(string.format('{"requests": %d, "elapsed_ns": %d, "bad": %d}\\n', count, now_ns() - t0, bad))
    io.flush()
    wrk.thread:stop()
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"p50_us": %d, "p99_us": %d, "errors": %d}\\n', latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout))
end
"""


SERVER_CPU, LOAD_CPU = 0, 1
_pinning = False


def _pin(cpu: int) -> Any:
    """A preexec_fn pinning a child process to ``cpu`` (None when pinning is off)."""
    if not _pinning:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def _drive_wrk(port: int, requests: int, connections: int, script: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            "-d600s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/pitches/1042",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, BENCH_REQUESTS=str(requests)),
        preexec_fn=_pin(LOAD_CPU),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while line and not line.startswith("{"):
        line = proc.stdout.readline()
    if not line:
        raise SystemExit("wrk ended without a result")
    count = json.loads(line)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    lat = json.loads([x for x in rest.splitlines() if x.startswith("{")][-1])
    if count["bad"] or lat["errors"]:
        raise SystemExit(f"wrk saw {count['bad']} non-200 responses and {lat['errors']} socket errors")
    return {
        "requests": count["requests"],
        "rps": count["requests"] / (count["elapsed_ns"] / 1e9),
        "p50_us": float(lat["p50_us"]),
        "p99_us": float(lat["p99_us"]),
    }


def _drive(port: int, requests: int, connections: int, script: Path | None) -> dict[str, Any]:
    """One run of ``requests`` requests against a server, from a separate process."""
    if script is not None:
        return _drive_wrk(port, requests, connections, script)
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(port), str(requests), str(connections)],
        preexec_fn=_pin(LOAD_CPU),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise SystemExit(f"load generator saw {result['errors']} bad responses: {result['first_error']}")
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000, help="requests per server per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--modes", help=f"default: {','.join(MODES)} ({','.join(MODES[:3])} for aiohttp)")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk (Debian package 'wrk', the default when installed) or the built-in Python generator",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin servers to CPU 0 and the load generator to CPU 1 (pinning needs 2+ CPUs)",
    )
    parser.add_argument(
        "--framework",
        choices=("starlette", "aiohttp"),
        default="starlette",
        help="starlette: uvicorn (h11) + Starlette (issue 5's benchmark); aiohttp: aiohttp.web's own "
        "server, init_aiohttp against OpenTelemetry's aiohttp-server middleware",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.cpu, args.framework)
        return
    if args.load:
        load(*args.load)
        return

    global _pinning
    _pinning = not args.no_pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "python")
    default_modes = MODES if args.framework == "starlette" else MODES[:3]
    modes = [m for m in (args.modes or ",".join(default_modes)).split(",") if m]
    if "none" not in modes:
        raise SystemExit("--modes must include 'none' (the baseline)")
    tmp = tempfile.TemporaryDirectory()
    script: Path | None = None
    if loadgen == "wrk":
        script = Path(tmp.name) / "fixed_count.lua"
        script.write_text(WRK_SCRIPT)
    servers = {mode: _start_server(mode, args.framework) for mode in modes}
    rps: dict[str, list[float]] = {m: [] for m in modes}
    p50: dict[str, list[float]] = {m: [] for m in modes}
    p99: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for mode in modes:
            _drive(servers[mode][1], args.warmup, args.connections, script)
        for r in range(args.rounds):
            order = list(modes)
            random.Random(r).shuffle(order)
            for mode in order:
                proc, port = servers[mode]
                cpu0 = _cpu_seconds(proc.pid)
                res = _drive(port, args.requests, args.connections, script)
                cpu[mode].append((_cpu_seconds(proc.pid) - cpu0) * 1e6 / res["requests"])
                rps[mode].append(res["rps"])
                p50[mode].append(res["p50_us"])
                p99[mode].append(res["p99_us"])
            print(
                f"round {r + 1}/{args.rounds}: " + "  ".join(f"{m}={rps[m][-1]:.0f}/s" for m in modes),
                file=sys.stderr,
            )
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()

    med = statistics.median
    base = med(rps["none"])
    served = "aiohttp.web" if args.framework == "aiohttp" else "uvicorn (h11) + Starlette"
    print(
        f"\n{served}; load: {loadgen}, {args.connections} keep-alive connections, "
        f"{'server pinned to CPU 0, load to CPU 1, ' if _pinning else ''}"
        f"{args.rounds} rounds x {args.requests} requests per server; CPython {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    header = ("server", "req/s", "p50 ms", "p99 ms", "lost", "+us/req", "cpu us/req")
    print(
        f"{header[0]:<10} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (7, 7, 7, 6, 8, 10), strict=True))
    )
    lost: dict[str, float] = {}
    for mode in modes:
        m = med(rps[mode])
        lost[mode] = 1 - m / base
        print(
            f"{mode:<10} {m:7.0f} {med(p50[mode]) / 1000:7.2f} {med(p99[mode]) / 1000:7.2f} "
            f"{lost[mode]:6.1%} {(1 / m - 1 / base) * 1e6:8.1f} {med(cpu[mode]):10.0f}"
        )
    # Paired per round: each round's loss ratio, which cancels slow drift of the machine.
    for anchor in ("otel", "otel-lean"):
        if "pitchey" in lost and anchor in lost and lost[anchor] > 0:
            paired = sorted(
                (1 - rps["pitchey"][i] / rps["none"][i]) / max(1e-9, 1 - rps[anchor][i] / rps["none"][i])
                for i in range(args.rounds)
            )
            cpu_ratio = (med(cpu["pitchey"]) - med(cpu["none"])) / max(
                1e-9, med(cpu[anchor]) - med(cpu["none"])
            )
            print(
                f"lost(pitchey) / lost({anchor}) = {lost['pitchey'] / lost[anchor]:.2f} "
                f"(paired per round: median {med(paired):.2f}, range {paired[0]:.2f}..{paired[-1]:.2f}"
                f"{'; target <= 0.25' if args.framework == 'starlette' else ''}); "
                f"extra server CPU per request: {cpu_ratio:.2f}"
            )
            # The same ratio from server CPU per request, which this VM's neighbours move less
            # than throughput: with the server CPU-bound, a request costing c instead of c0
            # loses 1 - c0/c of the throughput. A cross-check, not the target's figure.
            c0 = med(cpu["none"])
            cpu_lost = {k: 1 - c0 / max(1e-9, med(cpu[k])) for k in ("pitchey", anchor)}
            if cpu_lost[anchor] > 0:
                print(
                    f"  from server CPU: lost(pitchey) {cpu_lost['pitchey']:.1%}, lost({anchor}) "
                    f"{cpu_lost[anchor]:.1%}, ratio {cpu_lost['pitchey'] / cpu_lost[anchor]:.2f}"
                )


if __name__ == "__main__":
    main()
