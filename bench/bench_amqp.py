"""Per-publish cost of pika ``BlockingChannel.basic_publish`` on a local RabbitMQ node: plain,
with pitchey-trace's ``instrument_amqp()``, and with opentelemetry-instrumentation-pika + the
OpenTelemetry SDK, in the same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_amqp.py [--rounds 30] [--min-time 0.05]

The messages go to a fanout exchange with no queue bound (the broker drops them), so the node's
memory stays flat however long the run. Both instrumentations stay installed for the whole run
(OpenTelemetry's wraps the channel's ``basic_publish``, ours the class's), and every case turns
the other (or both) off by its own switch:

  plain  pitchey-trace's ``suppress_tracing()`` and OpenTelemetry's ``suppress_instrumentation()``
  pt     OpenTelemetry's suppressed; pitchey-trace configured with a no-op exporter and the
         defaults (sampling 1.0, sanitizer, rollups, tail keeping)
  otel   pitchey-trace's suppressed; TracerProvider + BatchSpanProcessor(no-op exporter)

Rounds interleave the cases in shuffled order; both SDKs are flushed after every repeat,
outside the timed region. "cpu" is process CPU time per publish (all threads, the broker's
not included: it is another process).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402
from _harness import (  # noqa: E402  (bench/ is on sys.path)
    both_sdks,
    interleaved,
    report_added,
    rounds_arguments,
    switched,
)
from opentelemetry.instrumentation.pika import PikaInstrumentor  # noqa: E402
from opentelemetry.instrumentation.utils import suppress_instrumentation  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.amqp import instrument_amqp, uninstrument_amqp  # noqa: E402
from tests.support.rabbitmq import rabbitmq_server  # noqa: E402

EXCHANGE = "bench-drop"
BODY = b'{"pitch": 42, "title": "Solar kettles"}'


def main() -> None:
    args = rounds_arguments(__doc__)
    with rabbitmq_server() as port, both_sdks() as sdks:
        PikaInstrumentor().instrument(tracer_provider=sdks.tp)
        instrument_amqp()
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        channel = connection.channel()  # made after both instrument calls: OpenTelemetry wraps it
        channel.exchange_declare(EXCHANGE, "fanout")
        publish = functools.partial(channel.basic_publish, EXCHANGE, "pitch.created", BODY)
        cases = {
            "plain": switched(publish, pt.suppress_tracing, suppress_instrumentation),
            "pt": switched(publish, suppress_instrumentation),
            "otel": switched(publish, pt.suppress_tracing),
        }

        wall, cpu, n = interleaved(cases, sdks.flush, args.rounds, args.min_time)
        connection.close()
        uninstrument_amqp()
        PikaInstrumentor().uninstrument()

    print(f"pika {pika.__version__}, CPython {sys.version.split()[0]}, {args.rounds} rounds x {n} publishes")
    report_added(wall, cpu, "msg")
    print(sdks.exported())


if __name__ == "__main__":
    main()
