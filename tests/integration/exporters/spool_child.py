"""Child process for the SIGKILL test: configures tracing with a LogpushExporter and a spool
directory, then emits spans with consecutive ``seq`` attributes forever, printing
``EMITTED <last seq> <time.monotonic()>`` every 50 spans, until it is killed.

usage: python spool_child.py ENDPOINT BUCKET SPOOL_DIR FSYNC_INTERVAL_S
"""

from __future__ import annotations

import sys
import time

import pitchey_trace as pt
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.exporters._http import RetryPolicy


def main() -> None:
    endpoint, bucket, spool_dir, fsync_interval = sys.argv[1:5]
    exporter = LogpushExporter(
        bucket,
        endpoint_url=endpoint,
        region="us-east-1",
        spool_dir=spool_dir,
        fsync_interval_s=float(fsync_interval),
        max_interval_s=0.5,
        max_batch_records=300,
        retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.3),
        connect_timeout_s=1.0,
        read_timeout_s=3.0,
    )
    pt.configure(service="spool-child", exporters=[exporter], schedule_delay_ms=20, rollups=None)
    print("READY", flush=True)
    seq = 0
    while True:
        with pt.span("work", attributes={"seq": seq}):
            pass
        if seq % 50 == 49:
            print(f"EMITTED {seq} {time.monotonic()}", flush=True)
            time.sleep(0.01)
        seq += 1


if __name__ == "__main__":
    main()
