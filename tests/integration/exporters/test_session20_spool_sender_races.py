"""Session 20 (second opinion): races between the spool's sender thread (or a flush) draining
the spool and the export worker keeping new batches in it. Real servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitchey_trace import _stats
from pitchey_trace.exporters import HttpAnalyticsExporter
from pitchey_trace.exporters._http import RetryPolicy
from tests.integration.exporters.servers import RecordingServer, Reply, numbered_span, wait_until

pytestmark = pytest.mark.integration


_wait_for = wait_until
_record = numbered_span


def test_the_cap_never_drops_the_kept_request_being_sent(
    http_server: RecordingServer, tmp_path: Path
) -> None:
    # A batch kept while the sender thread's request for the oldest file was on the wire took
    # the spool over its cap: _trim dropped that very file (counted in dropped.spool_cap) and
    # the drain then delivered it too (counted in spool_sent and the points): counted twice,
    # while a file that was not being sent could have gone instead.
    http_server.reply(Reply(status=503), Reply(hang=60.0))  # (then 200)
    spool = tmp_path / "spool"
    retry = RetryPolicy(initial_backoff_s=0.05, multiplier=1.0, jitter=0.0, retry_statuses=frozenset({503}))
    url = http_server.url + "/ingest"
    exporter = HttpAnalyticsExporter(url, timeout_s=30.0, retry=retry, spool_dir=spool)

    def names() -> list[str]:
        return [req.json()["points"][0]["blobs"][3] for req in http_server.requests]

    try:
        assert exporter.export([_record(0)]) is True  # tried once (503): kept
        assert exporter.export([_record(1)]) is True  # kept untried
        assert http_server.wait_requests(2)  # the sender thread's retry of op0: held by the server
        assert names() == ["op0", "op0"]
        sizes = [f.stat().st_size for f in spool.glob("*.ready")]
        assert len(sizes) == 2
        assert sizes[0] == sizes[1]
        assert exporter._spool is not None
        exporter._spool.max_bytes = 2 * sizes[0] + sizes[0] // 2  # (room for two of the three)
        assert exporter.export([_record(2)]) is True  # kept: one file must go
        assert _stats.get("dropped.spool_cap") == 1
        http_server.release.set()  # op0 is answered (200); the drain goes on
        assert _wait_for(lambda: not list(spool.glob("*.ready")))
        delivered = names()[1:]  # (the held request was recorded when it came)
        assert len(delivered) == len(set(delivered))
        # each point once: delivered, or dropped for the cap; op0 (on the wire) was delivered
        assert delivered[0] == "op0"
        assert _stats.get("http_analytics.points") == len(delivered) == 2
        assert _stats.get("http_analytics.points") + _stats.get("dropped.spool_cap") == 3
    finally:
        http_server.release.set()
        exporter.shutdown(1.0)
