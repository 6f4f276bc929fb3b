"""Per-command cost of redis-py ``GET`` on a local redis-server: plain, with pitchey-trace's
``instrument_redis()``, and with opentelemetry-instrumentation-redis + the OpenTelemetry SDK, in
the same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_redis.py [--rounds 30] [--min-time 0.05]

Both instrumentations patch ``redis.Redis.execute_command`` for the whole process, so every
case passes through both wrappers and turns the other (or both) off by its own switch:

  plain  pitchey-trace's ``suppress_tracing()`` and OpenTelemetry's ``suppress_instrumentation()``
  pt     OpenTelemetry's suppressed; pitchey-trace configured with a no-op exporter and the
         defaults (sampling 1.0, sanitizer, rollups, tail keeping)
  otel   pitchey-trace's suppressed; TracerProvider + BatchSpanProcessor(no-op exporter)

Each switch's check is in all three cases, so the differences are each SDK's own cost. Rounds
interleave the cases in shuffled order; both SDKs are flushed after every repeat, outside the
timed region. "cpu" is process CPU time per command (all threads).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from _harness import (  # noqa: E402  (bench/ is on sys.path)
    both_sdks,
    interleaved,
    report_added,
    rounds_arguments,
    switched,
)
from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: E402
from opentelemetry.instrumentation.utils import suppress_instrumentation  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.redis import instrument_redis, uninstrument_redis  # noqa: E402
from tests.support.redisserver import redis_server  # noqa: E402


def main() -> None:
    args = rounds_arguments(__doc__)
    with redis_server() as port, both_sdks() as sdks:
        RedisInstrumentor().instrument(tracer_provider=sdks.tp)
        instrument_redis()
        client = redis.Redis(port=port)
        client.set("pitch:42", "Solar kettles")
        get = functools.partial(client.get, "pitch:42")
        cases = {
            "plain": switched(get, pt.suppress_tracing, suppress_instrumentation),
            "pt": switched(get, suppress_instrumentation),
            "otel": switched(get, pt.suppress_tracing),
        }

        wall, cpu, n = interleaved(cases, sdks.flush, args.rounds, args.min_time)
        client.close()
        uninstrument_redis()
        RedisInstrumentor().uninstrument()

    print(f"redis-py {redis.__version__}, CPython {sys.version.split()[0]}, {args.rounds} rounds x {n} GETs")
    report_added(wall, cpu, "cmd")
    print(sdks.exported())


if __name__ == "__main__":
    main()
