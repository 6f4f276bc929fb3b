"""Instructions the middleware adds per request, counted by callgrind (valgrind): a figure
that does not move with the machine's load, unlike bench_middleware's throughput.

    .venv/bin/python bench/count_middleware.py                # after: make bench-setup
    .venv/bin/python bench/count_middleware.py --requests 2000 --modes none,pitchey,otel
    .venv/bin/python bench/count_middleware.py --framework aiohttp --modes none,pitchey,otel

Each mode is bench_middleware.py's server of that name (uvicorn + Starlette, its handler
opening 3 nested spans when traced) run under ``valgrind --tool=callgrind`` with counting off;
after a warm-up the count is switched on for --requests requests over 4 keep-alive connections
(sent from this process), switched off once the export worker has had time to drain, and
divided by the number of requests. Valgrind runs one thread at a time and about 50 times
slower, so the worker drains on its timer more often than at full speed: the figure counts
the work, not the cost of cache misses, thread switches or garbage collection at full speed.

Modes: none, pitchey (defaults), pitchey-noheader / -noaudit / -norollups (one default
feature off), pitchey-core (all three off), pitchey-sink (spans dropped at the hand-over: the
worker threads never run), otel, otel-lean. Printed: instructions per request,
those added over `none`, and their ratio to OpenTelemetry's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).with_name("bench_middleware.py")
REQUEST = b"GET /pitches/1042 HTTP/1.1\r\nHost: bench\r\nUser-Agent: count/1\r\n\r\n"


def _requests(port: int, n: int, connections: int = 4) -> None:
    """n requests, one in flight per connection, each answered 200 in full."""
    deadline = time.monotonic() + 600
    while True:
        try:
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        for _ in range(n // connections):
            for s in socks:
                s.sendall(REQUEST)
            for s in socks:
                buf = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise SystemExit("server closed the connection")
                    buf += chunk
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    m = re.search(rb"content-length: *(\d+)", buf[:end].lower())
                    if m and len(buf) >= end + 4 + int(m.group(1)):
                        break
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"bad response: {buf[:80]!r}")
    finally:
        for s in socks:
            s.close()


def count(mode: str, requests: int, warmup: int, tmp: Path, framework: str = "starlette") -> float:
    """Instructions per request of one server mode."""
    out = tmp / f"{mode}.cg"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(BENCH),
            "--serve",
            mode,
            "--framework",
            framework,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        _requests(port, warmup)
        time.sleep(1.5)  # the warm-up's spans are drained (0.5 s schedule delay) before counting
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        _requests(port, requests)
        time.sleep(1.5)  # ...and the counted requests' spans are exported while counting
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    dumps = sorted(tmp.glob(f"{mode}.cg.*"))
    if not dumps:
        raise SystemExit(f"no callgrind dump for {mode!r}")
    text = dumps[0].read_text()
    total = re.search(r"^totals: (\d+)", text, re.M)  # (the first event is Ir, instructions)
    if total is None or int(total.group(1)) == 0:
        raise SystemExit(f"no totals in the callgrind dump of {mode!r}")
    return int(total.group(1)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument(
        "--modes",
        default="none,pitchey,pitchey-noheader,pitchey-noaudit,pitchey-norollups,pitchey-core,otel",
    )
    parser.add_argument("--framework", choices=("starlette", "aiohttp"), default="starlette")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing (Debian package valgrind; make bench-setup installs it)")
    modes = [m for m in args.modes.split(",") if m]
    if "none" not in modes:
        raise SystemExit("--modes must include 'none'")
    with tempfile.TemporaryDirectory() as tmp:
        per = {}
        for mode in modes:
            per[mode] = count(mode, args.requests, args.warmup, Path(tmp), args.framework)
            print(f"{mode}: {per[mode]:,.0f} instructions per request", file=sys.stderr)
    base = per["none"]
    print(f"callgrind, {args.requests} requests after {args.warmup}; CPython {sys.version.split()[0]}")
    print(f"{'server':<20} {'instr/req':>11} {'added':>9} {'added %':>8}")
    for mode in modes:
        added = per[mode] - base
        print(f"{mode:<20} {per[mode]:>11,.0f} {added:>9,.0f} {100 * added / base:>7.1f}%")
    if "otel" in per and "pitchey" in per:
        print(f"added(pitchey) / added(otel) = {(per['pitchey'] - base) / (per['otel'] - base):.2f}")
    if "pitchey" in per:
        for mode in modes:
            if mode == "pitchey-sink":
                cost = per["pitchey"] - per[mode]
                print(f"  cost of the pipeline and exporter threads: {cost:,.0f} instructions per request")
            elif mode.startswith("pitchey-no"):
                feature, cost = mode.removeprefix("pitchey-no"), per["pitchey"] - per[mode]
                print(f"  cost of the default {feature}: {cost:,.0f} instructions per request")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
