"""Per-call cost of a boto3 S3 ``GetObject``: plain, with pitchey-trace's
``instrument_botocore()``, and with opentelemetry-instrumentation-botocore + the OpenTelemetry
SDK, in the same process and run.

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/bench_botocore.py [--rounds 30] [--min-time 0.05]

The call is answered by botocore's ``Stubber`` (in process, no network): what is timed is
botocore's own request pipeline plus each instrumentation. Both patch
``BaseClient._make_api_call`` for the whole process, so every case passes through both wrappers
and turns the other (or both) off by its own switch:

  plain  pitchey-trace's ``suppress_tracing()`` and OpenTelemetry's ``suppress_instrumentation()``
  pt     OpenTelemetry's suppressed; pitchey-trace configured with a no-op exporter and the
         defaults (sampling 1.0, sanitizer, rollups, tail keeping)
  otel   pitchey-trace's suppressed; TracerProvider + BatchSpanProcessor(no-op exporter)

Each switch's check is in all three cases, so the differences are each SDK's own cost. Rounds
interleave the cases in shuffled order; both SDKs are flushed after every repeat, outside the
timed region. "cpu" is process CPU time per command (all threads).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from _harness import (  # noqa: E402  (bench/ is on sys.path)
    both_sdks,
    interleaved,
    report_added,
    rounds_arguments,
)
from botocore.stub import Stubber  # noqa: E402
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor  # noqa: E402
from opentelemetry.instrumentation.utils import suppress_instrumentation  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore  # noqa: E402

RESPONSE = {
    "ContentLength": 13,
    "ETag": '"abc"',
    "ResponseMetadata": {"HTTPStatusCode": 200, "RequestId": "r1"},
}
PARAMS = {"Bucket": "pitches", "Key": "42.json"}


def runner(
    client: Any, stubber: Any, *switches: Callable[[], AbstractContextManager[object]]
) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):  # (queued inside the timed run: the same cost in every case)
            stubber.add_response("get_object", RESPONSE, PARAMS)
        get = client.get_object
        with ExitStack() as stack:
            for switch in switches:
                stack.enter_context(switch())
            for _ in range(n):
                get(**PARAMS)

    return run


def main() -> None:
    args = rounds_arguments(__doc__)
    with both_sdks() as sdks:
        BotocoreInstrumentor().instrument(tracer_provider=sdks.tp)
        instrument_botocore()
        # (a Stubber answers: the credentials are never sent anywhere)
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")  # noqa: S106
        stubber = Stubber(client)
        stubber.activate()
        cases = {
            "plain": runner(client, stubber, pt.suppress_tracing, suppress_instrumentation),
            "pt": runner(client, stubber, suppress_instrumentation),
            "otel": runner(client, stubber, pt.suppress_tracing),
        }

        wall, cpu, n = interleaved(cases, sdks.flush, args.rounds, args.min_time)
        stubber.deactivate()
        uninstrument_botocore()
        BotocoreInstrumentor().uninstrument()

    print(f"boto3 {boto3.__version__}, CPython {sys.version.split()[0]}, {args.rounds} rounds x {n} calls")
    report_added(wall, cpu, "call")
    print(sdks.exported())


if __name__ == "__main__":
    main()
