"""Run the main benchmarks in bench/ one after the other (each prints its figures and ratios;
the others, e.g. redis, grpc, amqp, count_middleware, outage_bounds, run on their own).

make bench                       # installs the bench extra (OpenTelemetry SDK...) first
.venv/bin/python bench/run_all.py core propagation   # a subset, by name
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = [
    "core",
    "propagation",
    "sanitize",
    "logpush",
    "otlp",
    "otlp_metrics",
    "logs",
    "postgres",
    "asyncpg",
    "celery",
    "analysis",
    "middleware",
]


def main(argv: list[str]) -> int:
    chosen = argv or SUITES
    unknown = sorted(set(chosen) - set(SUITES))
    if unknown:
        print(f"unknown suites {unknown}; choose from {SUITES}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n######## bench_{name}.py", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")])
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
