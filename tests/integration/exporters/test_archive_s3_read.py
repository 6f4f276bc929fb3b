"""The analysis engine reading what LogpushExporter wrote to S3 (moto's server over HTTP):
the full pipeline writes, ``Archive(S3Source(...))`` and ``pitchey-trace search --s3-config``
read it back, a cache directory saves the second download."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace.analysis import Archive, S3Source
from pitchey_trace.cli import main
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.web import export_logs, stop_export_logs
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration

MS = 1_000_000


def _write_traces(s3: S3, tmp_path: Path, bucket: str, audit_bucket: str) -> tuple[str, str]:
    exporter = LogpushExporter(
        bucket,
        endpoint_url=s3.endpoint,
        region="us-east-1",
        spool_dir=tmp_path / "spool",
        buckets={"audit": audit_bucket},
        prefixes={"traces": "logs/traces"},
    )
    pt.configure(service="checkout", exporters=[exporter], sample_rate=1.0)
    export_logs("WARNING")
    with pt.span("GET /cart", kind=pt.SpanKind.SERVER) as root:
        for _ in range(5):
            with pt.span(
                "SELECT cart_items", attributes={"db.system.name": "postgresql", "db.query.text": "SELECT 1"}
            ):
                pass
    with pt.span("POST /checkout", kind=pt.SpanKind.SERVER) as failed:
        failed.set_status("error", "payment declined")
        logging.getLogger("checkout").warning("card of %s declined", "ada@pitchey.example")
    pt.emit_audit(action="login", target="session", outcome="denied", category="security")
    assert pt.force_flush(10)
    stop_export_logs()
    pt.shutdown(10)
    return f"{root.context.trace_id:032x}", f"{failed.context.trace_id:032x}"


def test_archive_reads_the_buckets_the_exporter_wrote(s3: S3, tmp_path: Path) -> None:
    bucket, audit_bucket = s3.new_bucket(), s3.new_bucket()
    cart, failed = _write_traces(s3, tmp_path, bucket, audit_bucket)
    assert s3.keys(bucket, "logs/traces/")  # the custom prefix was used
    source = S3Source(
        bucket,
        buckets={"audit": audit_bucket},
        prefixes={"traces": "logs/traces"},
        client=s3.client,
        cache_dir=tmp_path / "cache",
    )
    archive = Archive(source)
    view = archive.trace(cart)
    assert view is not None
    assert [s["name"] for s in view["spans"]] == ["GET /cart"] + ["SELECT cart_items"] * 5
    assert archive.analyze(cart)["n_plus_one"][0]["count"] == 5  # type: ignore[index]
    assert [t["trace_id"] for t in archive.search(status="error")] == [failed]
    # the application's warning, shipped under logs/ in the default bucket, in its trace's view
    assert s3.keys(bucket, "logs/20")  # (logs/<day>/...: beside the custom logs/traces/ prefix)
    [line] = archive.trace(failed)["logs"]  # type: ignore[index]
    assert (line["logger"], line["body"]) == ("checkout", "card of [EMAIL] declined")
    assert [t["trace_id"] for t in archive.search(log="declined")] == [failed]
    assert archive.overview()["audit"]["security_events"] == 1
    assert (
        next(r for r in archive.performance() if r["operation"] == "SELECT cart_items")["source"] == "rollups"
    )
    assert archive.read_stats["unreadable_objects"] == 0

    # A second archive over the same cache reads no object from the bucket.
    gets: list[Any] = []
    s3.client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(kw))
    again = Archive(source)
    assert again.trace(cart) is not None
    assert gets == []
    uncached = Archive(
        S3Source(
            bucket, buckets={"audit": audit_bucket}, prefixes={"traces": "logs/traces"}, client=s3.client
        )
    )
    assert uncached.trace(cart) is not None
    assert len(gets) == uncached.read_stats["objects"] > 0


def test_cli_search_over_the_logpush_config(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket, audit_bucket = s3.new_bucket(), s3.new_bucket()
    cart, _ = _write_traces(s3, tmp_path, bucket, audit_bucket)
    cfg = tmp_path / "logpush.toml"
    cfg.write_text(
        f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "{bucket}"\n'
        '[datasets.traces]\nprefix = "logs/traces"\n'
        f'[datasets.audit]\nbucket = "{audit_bucket}"\n'
        "[datasets.performance]\n"
    )
    assert main(["search", "--s3-config", str(cfg), "--name", "GET /cart", "--json", "--last", "1h"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [t["trace_id"] for t in found] == [cart]
    assert found[0]["span_count"] == 6
    assert main(["show", cart, "--s3-config", str(cfg), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "N+1: 5x under GET /cart" in capsys.readouterr().out
    assert list((tmp_path / "c").rglob("*.log.gz"))  # downloads kept for the next run


def test_a_missing_bucket_is_a_clear_error_everywhere(
    s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    from pitchey_trace import ArchiveUnavailable
    from pitchey_trace.analysis.api import create_app

    archive = Archive(S3Source("no-such-bucket-pt", client=s3.client))
    with pytest.raises(ArchiveUnavailable, match="no-such-bucket-pt"):
        archive.search()
    cfg = tmp_path / "logpush.toml"
    cfg.write_text(f'endpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\nbucket = "no-such-bucket-pt"\n')
    assert main(["search", "--s3-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pitchey-trace: error: cannot list s3://no-such-bucket-pt/")
    assert "Traceback" not in err

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(archive, refresh_interval_s=None))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/api/overview")

    import asyncio

    response = asyncio.run(get())
    assert response.status_code == 503
    assert "archive unavailable: cannot list s3://no-such-bucket-pt/" in response.json()["error"]
