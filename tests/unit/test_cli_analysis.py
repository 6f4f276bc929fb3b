"""The archive commands of ``pitchey-trace`` (search, show, perf, errors, overview) over an
archive directory written by the real LocalArchiveExporter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace.cli import _duration_ms, main
from pitchey_trace.exporters import LocalArchiveExporter
from tests.support.analysis_data import HOSTILE_CHILD, TraceData, make_traces
from tests.support.cli import ok, run, write_archive


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, TraceData]:
    data = make_traces()
    return write_archive(tmp_path / "archive", data.records), data


def test_search_table_and_json(archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]) -> None:
    root, data = archived
    code, out, _ = run(capsys, "search", "--archive", str(root), "--min-duration", "100ms")
    assert code == 0
    assert data.orders in out
    assert data.payment not in out  # 50 ms: below the bound
    code, out, _ = run(capsys, "search", "-a", str(root), "--status", "error", "--json")
    assert code == 0
    assert [t["trace_id"] for t in json.loads(out)] == [data.payment]
    code, out, _ = run(capsys, "search", "-a", str(root), "--service", "payments", "--last", "7d")
    assert data.payment in out
    code, out, _ = run(capsys, "search", "-a", str(root), "--attr", "nope=1")
    assert out == "no trace matches\n"
    code, out, _ = run(capsys, "search", "-a", str(root), "--log", "Card Declined", "--json")
    assert [t["trace_id"] for t in json.loads(out)] == [data.payment]


def test_show_prints_waterfall_and_findings(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data = archived
    code, out, _ = run(capsys, "show", data.orders, "-a", str(root))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"trace {data.orders}")
    bars = [line for line in lines if line.startswith("|")]
    assert len(bars) == len(data.spans(data.orders))
    assert "bottleneck: render" in out
    assert "N+1: 6x under load_order" in out
    publish = next(line for line in bars if "publish_event" in line)
    assert "*" not in publish.split("|")[2][:4]  # beside render: not on the critical path
    code, out, _ = run(capsys, "show", data.payment, "-a", str(root))
    assert "error in POST /charge: ValueError" in out
    logs = out[out.index("logs (1):") :].splitlines()[1].split()
    assert logs[:3] == ["+30.0ms", "ERROR", "payments.charge"]
    assert " ".join(logs[3:]) == "card declined for order [CARD]"


def test_show_hostile_names_cannot_drive_the_terminal(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, data = archived
    code, out, _ = run(capsys, "show", data.hostile, "-a", str(root))
    assert code == 0
    assert HOSTILE_CHILD[:20] in out
    # A span name carrying an escape sequence is printed without the control character.
    exporter = LocalArchiveExporter(tmp_path / "esc")
    rec = dict(data.spans(data.hostile)[0], name="\x1b[2Jwiped", trace_id="ab" * 16)
    exporter.export([rec])
    exporter.shutdown()
    code, out, _ = run(capsys, "show", "ab" * 16, "-a", str(tmp_path / "esc"))
    assert "\x1b" not in out
    assert "?[2Jwiped" in out


def test_perf_errors_overview(archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]) -> None:
    root, data = archived
    out = ok(capsys, "perf", "-a", str(root), "--json")
    rows = json.loads(out)
    select = next(r for r in rows if r["operation"] == "SELECT order_items")
    assert select["count"] == 6
    out = ok(capsys, "perf", "-a", str(root), "--service", "payments")
    assert "POST /charge" in out
    assert "SELECT order_items" not in out
    out = ok(capsys, "errors", "-a", str(root))
    assert "ValueError" in out
    assert data.payment in out
    out = ok(capsys, "overview", "-a", str(root), "--json")
    ov = json.loads(out)
    assert ov["traces"] == 3
    assert {s["service"] for s in ov["services"]} == {"shop-api", "payments"}


def test_deps(archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]) -> None:
    root, data = archived
    rows = json.loads(ok(capsys, "deps", "-a", str(root), "--json"))
    edges = {(r["caller"], r["callee"]): r for r in rows}
    assert edges[("shop-api", "payments")]["trace_ids"] == [data.payment]
    assert edges[("shop-api", "postgresql")]["count"] == 6
    text = ok(capsys, "deps", "-a", str(root), "--service", "payments")
    lines = text.splitlines()
    heads = ["caller", "callee", "protocol", "calls", "kept", "errors", "p50", "p95", "p99"]
    assert lines[0].split() == heads
    assert lines[1].split()[:5] == ["shop-api", "payments", "other", "1", "1"]
    assert len(lines) == 5  # the header, the one edge, the footnotes
    assert "postgresql *" in ok(capsys, "deps", "-a", str(root))  # an untraced callee is marked
    code, out, err = run(capsys, "deps", "-a", str(root), "--service", "nobody")
    assert (code, out) == (0, "no calls in this window\n")
    # (a misspelt service answers like a quiet one: the note names the window's services)
    assert err.startswith("pitchey-trace: note: no span of service 'nobody' in this window; services in it: ")
    assert {"shop-api", "payments"} <= set(err.split(": ")[-1].strip().split(", "))


def test_deps_calls_are_estimated_from_the_rollups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_traces()
    call = next(r for r in data.records if r["type"] == "span" and r["name"] == "call payments")
    template = next(r for r in data.records if r["type"] == "rollup" and r["operation"] == "call payments")
    records = [r for r in data.records if r is not template]
    # the rollups counted 8 calls (1 kept), as at a low sample rate
    assert call["status"] != "error"
    records.append({**template, "count": 8, "errors": 0})
    exporter = LocalArchiveExporter(tmp_path / "archive")
    assert exporter.export(records)
    exporter.shutdown()
    text = ok(capsys, "deps", "-a", str(tmp_path / "archive"), "--service", "payments")
    assert text.splitlines()[1].split()[:5] == ["shop-api", "payments", "other", "8", "1"]


def test_logs_lists_the_shipped_log_lines(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    root, data = archived
    out = ok(capsys, "logs", "-a", str(root), "--level", "warning", "--grep", "declined")
    header, row = out.splitlines()
    assert header.split()[:4] == ["time", "(UTC)", "level", "service"]
    assert row.split()[2:5] == ["ERROR", "payments", "payments.charge"]
    assert row.endswith(data.payment)
    assert json.loads(ok(capsys, "logs", "-a", str(root), "--service", "shop-api", "--json")) == []
    assert ok(capsys, "logs", "-a", str(root), "--grep", "nope") == "no log line matches\n"


def test_perf_compare(archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]) -> None:
    root, data = archived
    since = str(data.start_ns // (60 * 10**9) * 60 * 10**9)
    until = str(int(since) + 3600 * 10**9)
    rows = json.loads(
        ok(capsys, "perf", "--compare", "-a", str(root), "--since", since, "--until", until, "--json")
    )
    select = next(r for r in rows if r["operation"] == "SELECT order_items")
    assert (select["count"], select["baseline_count"]) == (6, 0)
    text = ok(capsys, "perf", "--compare", "-a", str(root), "--since", since, "--until", until)
    assert text.splitlines()[0].split()[:5] == ["service", "operation", "kind", "calls", "p95"]
    line = next(x for x in text.splitlines() if "SELECT order_items" in x)
    assert "0 -> 6" in line
    assert line.split()[-2] == "new"
    code, _, err = run(capsys, "perf", "--compare", "-a", str(root))
    assert code == 2
    assert "--compare needs a window" in err


def test_errors_are_exit_code_2_with_a_message(
    archived: tuple[Path, TraceData],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, data = archived
    monkeypatch.delenv("PITCHEY_TRACE_ARCHIVE", raising=False)
    code, _, err = run(capsys, "search")
    assert code == 2
    assert "no archive" in err
    code, _, err = run(capsys, "search", "-a", str(tmp_path / "missing"))
    assert code == 2
    assert "not found" in err
    code, _, err = run(capsys, "search", "-a", str(root), "--since", "soon")
    assert code == 2
    assert "not a time" in err
    code, _, err = run(capsys, "show", "xyz", "-a", str(root))
    assert code == 2
    assert "32 hex" in err
    code, _, err = run(capsys, "show", "0" * 31 + "1", "-a", str(root))
    assert code == 1
    assert "not in the archive" in err
    code, _, err = run(capsys, "search", "-a", str(root), "--limit", "0")
    assert code == 2
    monkeypatch.setenv("PITCHEY_TRACE_ARCHIVE", str(root))
    code, out, _ = run(capsys, "search", "--status", "error")
    assert data.payment in out


@pytest.mark.parametrize(
    ("text", "ms"), [("250ms", 250.0), ("1.5s", 1500.0), ("2m", 120_000.0), ("40", 40.0)]
)
def test_duration_arguments(text: str, ms: float) -> None:
    assert _duration_ms(text) == ms


def test_bad_duration_is_a_usage_error(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["search", "-a", str(archived[0]), "--min-duration", "fast"])
    assert info.value.code == 2
    assert "not a duration" in capsys.readouterr().err


def test_audit_command(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.support.analysis_data import audit

    exporter = LocalArchiveExporter(tmp_path / "audit-archive")
    start = archived[1].start_ns
    exporter.export(
        [
            audit(start, outcome="bad_password", action="POST /login"),
            audit(start + 1, "request", "200", "GET /"),
        ]
    )
    exporter.shutdown()
    out = ok(capsys, "audit", "-a", str(tmp_path / "audit-archive"), "--category", "security")
    assert "bad_password" in out
    assert "GET /" not in out
    rows = json.loads(ok(capsys, "audit", "-a", str(tmp_path / "audit-archive"), "--json"))
    assert [r["outcome"] for r in rows] == ["200", "bad_password"]


def test_each_services_archive_read_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two services archive separately; their shared trace joins up only when both are read."""
    from pitchey_trace.analysis import Archive

    data = make_traces()
    dirs = {}
    for service in ("shop-api", "payments"):
        exporter = LocalArchiveExporter(tmp_path / service)
        exporter.export([r for r in data.records if r.get("service") == service])
        exporter.shutdown()
        dirs[service] = str(tmp_path / service)
    alone = Archive(dirs["payments"]).trace(data.payment)
    assert alone is not None
    assert alone["missing_parents"]  # its caller is in the other archive
    both = Archive([dirs["shop-api"], dirs["payments"]]).trace(data.payment)
    assert both is not None
    assert both["missing_parents"] == []
    assert both["services"] == ["payments", "shop-api"]
    assert [s["depth"] for s in both["spans"]] == [0, 1, 2]
    rows = json.loads(
        ok(capsys, "search", "-a", dirs["shop-api"], "-a", dirs["payments"], "--status", "error", "--json")
    )
    assert [(t["trace_id"], t["services"]) for t in rows] == [(data.payment, ["payments", "shop-api"])]


def test_perf_over_time(archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = archived
    out = json.loads(
        ok(capsys, "perf", "-a", str(root), "--operation", "SELECT order_items", "--step", "5m", "--json")
    )
    assert out["step_s"] == 300
    assert out["source"] == "rollups"
    assert sum(p["count"] for p in out["points"]) == 6
    text = ok(capsys, "perf", "-a", str(root), "--operation", "SELECT order_items")
    assert text.splitlines()[0].startswith("from (UTC), every 60s")
    assert (
        ok(capsys, "perf", "-a", str(root), "--operation", "nothing")
        == "no spans or rollups in this window\n"
    )


def test_show_takes_a_shortened_trace_id(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    from pitchey_trace.analysis import Archive

    root, data = archived
    out = ok(capsys, "show", data.orders[:12], "-a", str(root))
    assert out.startswith(f"trace {data.orders}")
    code, _, err = run(capsys, "show", "ffffffffffff", "-a", str(root))
    assert code == 1
    assert "no trace id in the archive starts with ffffffffffff" in err
    archive = Archive(root)
    assert archive.resolve(data.payment[:8]) == [data.payment]
    assert archive.resolve(data.payment.upper()) == [data.payment]
    with pytest.raises(ValueError, match="8 to 32 hex"):
        archive.resolve("abc")


def test_an_ambiguous_shortened_id_lists_the_candidates(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    span = dict(archived[1].spans(archived[1].payment)[0])
    twins = [dict(span, trace_id="abcdef01" + "0" * 24), dict(span, trace_id="abcdef01" + "f" * 24)]
    exporter = LocalArchiveExporter(tmp_path / "twins")
    exporter.export(twins)
    exporter.shutdown()
    code, _, err = run(capsys, "show", "abcdef01", "-a", str(tmp_path / "twins"))
    assert code == 2
    assert err.splitlines()[1:] == [f"  {t['trace_id']}" for t in twins]


def test_serve_refuses_bad_tls_arguments_before_serving(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = str(archived[0])
    code, _, err = run(capsys, "serve", "-a", root, "--tls-cert", str(tmp_path / "cert.pem"))
    assert code == 2
    assert "--tls-cert and --tls-key go together" in err
    code, _, err = run(
        capsys,
        "serve",
        "-a",
        root,
        "--tls-cert",
        str(tmp_path / "no.pem"),
        "--tls-key",
        str(tmp_path / "no.key"),
    )
    assert code == 2
    assert err.startswith("pitchey-trace: error: --tls-cert/--tls-key:")
    assert err.count("\n") == 1
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    code, _, err = run(capsys, "serve", "-a", root, "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert code == 2
    assert "--tls-cert/--tls-key:" in err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Runs a command that must end in one usage error line (exit 2, no traceback); stderr."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(("pitchey-trace: error:", "pitchey-trace ")), err
    return err


@pytest.mark.parametrize("step", ["abc", "0", "0s", "500ms", "60", "1.5s", "nan", "9" * 400 + "s", "32d"])
def test_perf_step_must_be_whole_seconds_from_1s(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], step: str
) -> None:
    err = usage_error(capsys, "perf", "-a", str(archived[0]), "--step", step)
    assert "--step" in err


def test_perf_step_in_seconds_minutes_hours(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    for step, seconds in (("1s", 1), ("90s", 90), ("1.5m", 90), ("1h", 3600)):
        out = json.loads(ok(capsys, "perf", "-a", str(archived[0]), "--step", step, "--json"))
        assert out["step_s"] == seconds


@pytest.mark.parametrize(
    "argv",
    [
        ("search", "--since", "9" * 309 + "h"),
        ("perf", "--last", "9" * 400 + "m"),
        ("search", "--min-duration", "9" * 400),
    ],
)
def test_a_huge_time_or_duration_is_one_line_and_exit_2(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    err = usage_error(capsys, argv[0], "-a", str(archived[0]), *argv[1:])
    assert "out of range" in err.splitlines()[-1]


def test_logs_and_audit_render_a_trace_id_that_is_not_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pitchey_trace.records import app_log_record
    from tests.support.analysis_data import audit

    now = 1_796_000_000_000_000_000
    line = app_log_record(
        service="shop-api",
        environment="test",
        severity_number=13,
        severity_text="WARNING",
        logger="shop",
        body="odd id",
        time_unix_nano=now,
    )
    records = [
        {**line, "trace_id": 12345},
        {**line, "trace_id": ["ab" * 16], "time_unix_nano": now + 1},
        {**audit(now), "trace_id": 67890},
        {**audit(now + 1), "trace_id": {"id": "x" * 60}},
    ]
    exporter = LocalArchiveExporter(tmp_path / "odd")
    assert exporter.export(records)
    exporter.shutdown()
    out = ok(capsys, "logs", "-a", str(tmp_path / "odd"))
    assert "12345" in out
    assert "['abab" in out
    out = ok(capsys, "audit", "-a", str(tmp_path / "odd"))
    assert "67890" in out
    assert max(len(row) for row in out.splitlines()) < 200  # clipped


@pytest.mark.parametrize("port", ["70000", "65536", "-5", "http", "8080.5"])
def test_serve_port_must_be_0_to_65535(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], port: str
) -> None:
    err = usage_error(capsys, "serve", "-a", str(archived[0]), "--port", port)
    assert "--port" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("perf", "--limit", "-1"),
        ("perf", "--limit", "0"),
        ("perf", "--compare", "--last", "1h", "--limit", "-3"),
        ("perf", "--operation", "op", "--limit", "-3"),
        ("deps", "--limit", "-1"),
        ("search", "--limit", "-1"),
        ("errors", "--limit", "0"),
        ("audit", "--limit", "-1"),
        ("logs", "--limit", "x"),
    ],
)
def test_limit_must_be_a_positive_whole_number(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    err = usage_error(capsys, argv[0], "-a", str(archived[0]), *argv[1:])
    assert "--limit" in err


class _Served:
    """Stands in for uvicorn.Server.run: records the sockets it was given, serves nothing."""

    sockets: list[Any] = []

    def run(self, sockets: list[Any] | None = None) -> None:
        _Served.sockets = [(s.family, s.getsockname()) for s in sockets or []]


@pytest.mark.parametrize(("host", "family"), [("127.0.0.1", "AF_INET"), ("::1", "AF_INET6")])
def test_serve_tells_the_port_it_listens_on(
    archived: tuple[Path, TraceData],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    family: str,
) -> None:
    import socket

    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", _Served.run)
    if family == "AF_INET6":
        try:
            socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        except OSError:  # (a machine without IPv6 loopback: then the refusal is one line, exit 2)
            err = usage_error(capsys, "serve", "-a", str(archived[0]), "--host", host, "--port", "0")
            assert err.startswith("pitchey-trace: error: cannot listen on [::1]:0: ")
            assert err.count("\n") == 1
            return
    code, out, err = run(capsys, "serve", "-a", str(archived[0]), "--host", host, "--port", "0")
    assert (code, out) == (0, "")
    [(bound_family, address)] = _Served.sockets
    assert bound_family == getattr(socket, family)
    assert address[1] != 0
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL is in brackets
    assert err.startswith(f"pitchey-trace: serving <Archive {archived[0]}")
    assert err.endswith(f" on http://{shown}:{address[1]}/\n")
    assert err.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(
    archived: tuple[Path, TraceData], capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        err = usage_error(capsys, "serve", "-a", str(archived[0]), "--port", str(port))
    assert err == f"pitchey-trace: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    err = usage_error(
        capsys, "serve", "-a", str(archived[0]), "--host", "no-such-host.invalid", "--port", "0"
    )
    assert err.startswith("pitchey-trace: error: cannot listen on no-such-host.invalid:0: ")
    assert err.count("\n") == 1
    err = usage_error(capsys, "serve", "-a", str(archived[0]), "--host", "192.0.2.1")  # not this machine's
    assert err == "pitchey-trace: error: cannot listen on 192.0.2.1:8080: Cannot assign requested address\n"


def test_serve_hints_at_the_key_password_only_for_an_encrypted_key(
    archived: tuple[Path, TraceData],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from tests.integration.exporters.servers import self_signed_certificate

    for name in ("a", "b", "encrypted"):
        (tmp_path / name).mkdir()
    cert, key = self_signed_certificate(tmp_path / "a")
    _, other_key = self_signed_certificate(tmp_path / "b")
    locked_cert, locked_key = self_signed_certificate(tmp_path / "encrypted", key_password=b"s3cret")
    root = str(archived[0])
    monkeypatch.delenv("PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD", raising=False)
    hint = "$PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD"

    missing = str(tmp_path / "missing.pem")
    for tls in ((missing, key), (cert, missing), (cert, other_key), (cert, cert)):
        err = usage_error(capsys, "serve", "-a", root, "--tls-cert", tls[0], "--tls-key", tls[1])
        assert err.startswith("pitchey-trace: error: --tls-cert/--tls-key: "), tls
        assert hint not in err, tls
    err = usage_error(capsys, "serve", "-a", root, "--tls-cert", missing, "--tls-key", key)
    assert "No such file or directory" in err
    assert missing in err  # which of the two files
    err = usage_error(capsys, "serve", "-a", root, "--tls-cert", cert, "--tls-key", other_key)
    assert "KEY_VALUES_MISMATCH" in err

    err = usage_error(capsys, "serve", "-a", root, "--tls-cert", locked_cert, "--tls-key", locked_key)
    assert f"--tls-key {locked_key} is encrypted: set {hint}" in err
    monkeypatch.setenv("PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD", "wrong")
    err = usage_error(capsys, "serve", "-a", root, "--tls-cert", locked_cert, "--tls-key", locked_key)
    assert f"(is {hint} its password?)" in err
    monkeypatch.setenv("PITCHEY_TRACE_ANALYSIS_TLS_KEY_PASSWORD", "s3cret")  # the right one, the wrong cert
    err = usage_error(capsys, "serve", "-a", root, "--tls-cert", cert, "--tls-key", locked_key)
    assert "KEY_VALUES_MISMATCH" in err
    assert hint not in err
