"""End-to-end demo on embedded defaults: a traced web service over PostgreSQL, a local archive.

    make demo                                         # = .venv/bin/python examples/demo.py
    .venv/bin/python examples/demo.py --requests 80 --archive /tmp/demo-archive

What happens, for real, on 127.0.0.1 only:

1. a throwaway PostgreSQL starts from the installed server binaries (``DATABASE_URL`` or
   ``PITCHEY_TEST_PG_DSN`` use an existing server instead; the demo works in a private schema)
   and gets users, tokens, pitches, media and comments;
2. ``pt.configure`` with 25% head sampling, tail keeping of error and slow traces, and the
   embedded default destination, a :class:`~pitchey_trace.exporters.LocalArchiveExporter`
   (``var/demo-archive`` under the repository, emptied first);
3. a Starlette app (``examples/_demo_app.py``) under uvicorn, traced by
   ``ASGITracingMiddleware``, querying PostgreSQL through instrumented pooled connections;
4. an ``httpx`` client instrumented with ``instrument_httpx`` sends a few hundred requests, so
   each client span and the server span it caused share one trace; one request carries a
   malformed ``traceparent``, two come from an "upstream gateway" with a sampled one;
5. ``pt.shutdown()``, then the archive is read back from disk (gzip NDJSON files, parsed
   here) and summarised: datasets, kept traces and why, waterfalls with their critical path
   and bottleneck (from :class:`pitchey_trace.analysis.Archive`), per-operation latency
   percentiles from the rollups, the analysis engine's error search, error groups and
   percentiles cross-checked against the demo's own reading, audit counts, a search of the
   archive for every secret the app saw (the app leaks some into spans on purpose), and the
   SDK's counters;
6. the same rollups also went out as OpenTelemetry metrics (``OTLPMetricsExporter``, OTLP/HTTP
   JSON) to a small receiver in this process, standing in for a collector: their request
   counts are checked against the traffic too.

Exit status 0 when every check printed at the end passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support.pgserver: the throwaway PostgreSQL
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _demo_app

import _demo_app as app_mod  # noqa: E402

import pitchey_trace as pt  # noqa: E402
from pitchey_trace import db  # noqa: E402
from pitchey_trace.analysis import Archive as Engine  # noqa: E402
from pitchey_trace.exporters import LocalArchiveExporter, OTLPMetricsExporter  # noqa: E402
from pitchey_trace.processors import merge_rollups  # noqa: E402
from pitchey_trace.web import TraceContextFilter, export_logs, instrument_httpx, uninstrument_httpx  # noqa: E402

SERVICE = "pitch-api"
SAMPLE_RATE = 0.25
SLOW_MS = 150.0
CONCURRENCY = 8
DEFAULT_REQUESTS = 240
GATEWAY_UA = "upstream-gateway/1.0"
# Requests from an upstream gateway that sampled its trace (flags 01). This trace id's low
# 64 bits are above 25% of the range, so our ratio sampler alone would drop it: keeping it
# shows the parent-based decision.
UPSTREAM_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_PARENTS = ("00f067aa0ba902b7", "00f067aa0ba902b8")
MALFORMED_TRACEPARENT = "00-4BF92F3577B34DA6A3CE929D0E0E4736-zz-01"
CARD = "4242424242424242"  # a Luhn-valid test card number, typed into the search box
IBAN = "GB82WEST12345698765432"  # the standard example IBAN, pasted into the search box too


# -- the traffic ---------------------------------------------------------------------------------
@dataclass
class Req:
    """One request of the plan, and what came back."""

    method: str
    path: str
    route: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False  # sent without client instrumentation (headers exactly as given)
    status: int = 0
    trace_id: str | None = None


def build_plan(n: int, seeded: app_mod.Seeded, rng: random.Random) -> tuple[list[Req], list[str]]:
    """The requests to send (``n`` of them, shuffled) and every secret they carry."""
    users = seeded.users
    secrets: list[str] = [CARD, IBAN]
    for u in users:
        secrets += [u.email, u.password, u.token]

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    stolen = ["ptk_live_" + "".join(rng.choice("0123456789abcdef") for _ in range(32)) for _ in range(3)]
    wrong = [f"{u.password[:-1]}?" for u in users[1:4]]
    bounce = f"newcomer.{rng.randrange(1000, 9999)}@bounce.example"
    members = [
        (f"member{i}.{rng.randrange(1000, 9999)}@pitchey.example", f"Tulip-{rng.randrange(10**6)}!")
        for i in range(2)
    ]
    secrets += [*stolen, *wrong, bounce, "Sunflower-77-secret!"]
    for email, password in members:
        secrets += [email, password]
    u0 = users[0]
    fixed = [
        *(Req("GET", "/slow", "/slow") for _ in range(3)),
        *(
            Req("POST", "/pitches", "/pitches", json={"owner_id": 1, "title": t})
            for t in seeded.pitch_titles[:2]
        ),  # titles that exist: unique violation, 409
        # The bounce escapes the app (500); uvicorn then closes the connection, so it must not
        # go back to the client's keep-alive pool (the next request on it would fail).
        Req(
            "POST",
            "/signup",
            "/signup",
            headers={"connection": "close"},
            json={"name": "Newcomer", "email": bounce, "password": "Sunflower-77-secret!"},
        ),
        *(
            Req("POST", "/signup", "/signup", json={"name": "Member", "email": e, "password": p})
            for e, p in members
        ),
        *(
            Req("POST", "/login", "/login", json={"email": u.email, "password": w})
            for u, w in zip(users[1:4], wrong, strict=True)
        ),
        *(Req("GET", f"/users/{i + 1}", "/users/{user_id}", headers=bearer(t)) for i, t in enumerate(stolen)),
        *(
            Req("GET", f"/users/{users[i + 1].id}", "/users/{user_id}", headers=bearer(users[i].token))
            for i in range(2)
        ),  # someone else's profile: 403
        *(Req("GET", "/healthz", "/healthz") for _ in range(5)),
        Req(
            "GET",
            "/pitches/3",
            "/pitches/{pitch_id}",
            raw=True,
            headers={"traceparent": MALFORMED_TRACEPARENT, "user-agent": GATEWAY_UA},
        ),
        Req(
            "GET",
            f"/search?q={CARD}+{IBAN}",
            "/search",
            raw=True,
            headers={
                "traceparent": f"00-{UPSTREAM_TRACE_ID}-{UPSTREAM_PARENTS[0]}-01",
                "user-agent": GATEWAY_UA,
            },
        ),
        Req(
            "GET",
            f"/users/{u0.id}",
            "/users/{user_id}",
            raw=True,
            headers={
                "traceparent": f"00-{UPSTREAM_TRACE_ID}-{UPSTREAM_PARENTS[1]}-01",
                "user-agent": GATEWAY_UA,
                **bearer(u0.token),
            },
        ),
    ]
    plan = list(fixed)
    n_pitches = len(seeded.pitch_titles)
    while len(plan) < n:
        roll = rng.random()
        if roll < 0.45:
            pid = rng.randrange(1, n_pitches + 6)  # a few ids past the end: 404
            plan.append(Req("GET", f"/pitches/{pid}", "/pitches/{pitch_id}"))
        elif roll < 0.70:
            term = rng.choice(app_mod.WORDS)[: rng.randrange(3, 6)]
            plan.append(Req("GET", f"/search?q={term}&page={rng.randrange(0, 2)}", "/search"))
        elif roll < 0.80:
            u = rng.choice(users)
            plan.append(Req("GET", f"/users/{u.id}", "/users/{user_id}", headers=bearer(u.token)))
        elif roll < 0.90:
            u = rng.choice(users)
            plan.append(Req("POST", "/login", "/login", json={"email": u.email, "password": u.password}))
        else:
            title = f"{rng.choice(app_mod.WORDS)} {rng.choice(app_mod.WORDS)} #{len(plan)}"
            body = {"owner_id": rng.choice(users).id, "title": title}
            plan.append(Req("POST", "/pitches", "/pitches", json=body))
    rng.shuffle(plan)
    return plan, secrets


async def drive(base_url: str, plan: list[Req]) -> float:
    """Send the plan with ``CONCURRENCY`` requests in flight; returns the wall time."""
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:

        async def one(req: Req) -> None:
            async with sem:
                if req.raw:
                    # No client span and no injection: the headers arrive exactly as given.
                    with pt.suppress_tracing():
                        resp = await client.request(req.method, req.path, json=req.json, headers=req.headers)
                else:
                    resp = await client.request(req.method, req.path, json=req.json, headers=req.headers)
            req.status = resp.status_code
            req.trace_id = resp.headers.get("x-trace-id")

        start = time.perf_counter()
        await asyncio.gather(*(one(r) for r in plan))
        return time.perf_counter() - start


# -- reading the archive -------------------------------------------------------------------------
@dataclass
class Archive:
    """Everything under the archive directory, parsed."""

    files: dict[str, list[Path]]
    records: dict[str, list[dict[str, Any]]]
    raw: bytes  # every file's decompressed content, concatenated


def read_archive(root: Path) -> Archive:
    """Parse ``{root}/{dataset}/{YYYYMMDD}/*.log.gz`` (gzip NDJSON, one member per batch)."""
    files: dict[str, list[Path]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    chunks: list[bytes] = []
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        paths = sorted(dataset_dir.glob("*/*.log.gz"))
        files[dataset_dir.name] = paths
        recs = records.setdefault(dataset_dir.name, [])
        for path in paths:
            data = gzip.decompress(path.read_bytes())
            chunks.append(data)
            recs.extend(json.loads(line) for line in data.splitlines() if line.strip())
    return Archive(files, records, b"".join(chunks))


def group_traces(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        traces[s["trace_id"]].append(s)
    return traces


def is_slow(span: dict[str, Any]) -> bool:
    return span["duration_ms"] >= SLOW_MS or any(e["name"] == "slow_query" for e in span["events"])


def _slow_query(span: dict[str, Any]) -> bool:
    return "db.query.text" in span["attributes"] and is_slow(span)


def trace_ms(spans: list[dict[str, Any]]) -> float:
    start = min(s["start_time_unix_nano"] for s in spans)
    end = max(s["end_time_unix_nano"] for s in spans)
    return float(end - start) / 1e6


def span_note(s: dict[str, Any]) -> str:
    attrs = s["attributes"]
    notes = []
    if "http.response.status_code" in attrs:
        notes.append(str(attrs["http.response.status_code"]))
    if "db.transaction.outcome" in attrs:
        notes.append(str(attrs["db.transaction.outcome"]))
    if "db.response.status_code" in attrs:
        notes.append(f"SQLSTATE {attrs['db.response.status_code']}")
    notes += [e["name"] for e in s["events"] if e["name"] in ("slow_query", "login.attempt")]
    if s["status"] == "error":
        message = s["status_message"] or ""
        for e in s["events"]:
            if e["name"] == "exception":
                message = str(e["attributes"].get("exception.message") or message)
        notes.append("ERROR" + (f" {message}" if message else ""))
    text = " ".join(notes)
    return text if len(text) <= 60 else text[:57] + "..."


def waterfall(view: dict[str, Any], width: int = 20) -> list[str]:
    """The engine's trace view as lines: start offset, duration, indented name, kind, a bar on
    the trace's time axis, ``*`` on the critical path."""
    total = max(view["duration_ms"], 1e-6)
    lines = ["      start    duration    span" + " " * 28 + "kind"]
    for s in view["spans"]:
        off = s["offset_ms"]
        a = min(width - 1, int(off / total * width))
        b = max(a + 1, min(width, round((off + s["duration_ms"]) / total * width)))
        bar = " " * a + "#" * (b - a) + " " * (width - b)
        name = ("  " * s["depth"] + s["name"])[:32]
        mark = "*" if s["on_critical_path"] else " "
        lines.append(
            f"  {off:8.1f}ms {s['duration_ms']:8.1f}ms {mark} {name:<32}{s['kind']:<9}|{bar}| {span_note(s)}"
        )
    return lines


# -- setup helpers -------------------------------------------------------------------------------
class LogCollector(logging.Handler):
    """Keeps WARNING+ records with the trace ids ``TraceContextFilter`` adds."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(TraceContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """A DSN (private schema) and a description: ``DATABASE_URL``, else a throwaway server
    (or the one ``PITCHEY_TEST_PG_DSN`` names)."""
    from tests.support.pgserver import find_bin_dir, postgres_server, scratch_schema

    url = os.environ.get("DATABASE_URL")
    if url:
        with scratch_schema(url) as dsn:
            yield dsn, "DATABASE_URL"
        return
    with postgres_server() as server, scratch_schema(server.dsn) as dsn:
        where = "PITCHEY_TEST_PG_DSN" if server.external else f"throwaway server from {find_bin_dir()}"
        yield dsn, f"{where} on {server.host}:{server.port}"


class MetricsReceiver:
    """An OTLP/HTTP JSON metrics endpoint on 127.0.0.1 keeping what it is sent (a collector's
    part, reduced to reading the requests)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def latest_calls(self) -> dict[tuple[str, str, str], int]:
        """The last running total of each (span name, kind, status) series of
        ``traces.span.metrics.calls`` (cumulative: the latest point holds the whole count)."""
        latest: dict[tuple[str, str, str], tuple[int, int]] = {}
        for request in self.requests:
            for rm in request["resourceMetrics"]:
                for sm in rm["scopeMetrics"]:
                    for metric in sm["metrics"]:
                        if metric["name"] != "traces.span.metrics.calls":
                            continue
                        for point in metric["sum"]["dataPoints"]:
                            a = {kv["key"]: kv["value"]["stringValue"] for kv in point["attributes"]}
                            key = (a["span.name"], a["span.kind"], a["status.code"])
                            at = int(point["timeUnixNano"])
                            if key not in latest or at >= latest[key][0]:
                                latest[key] = (at, int(point["asInt"]))
        return {key: count for key, (_, count) in latest.items()}

    def exemplar_traces(self) -> set[str]:
        """The trace ids the duration histograms' exemplars point to."""
        return {
            exemplar["traceId"]
            for request in self.requests
            for rm in request["resourceMetrics"]
            for sm in rm["scopeMetrics"]
            for metric in sm["metrics"]
            if metric["name"] == "traces.span.metrics.duration"
            for point in metric["exponentialHistogram"]["dataPoints"]
            for exemplar in point.get("exemplars", ())
        }


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


# -- the report -----------------------------------------------------------------------------------
class Report:
    """Prints the story and collects the checks that decide the exit status."""

    def __init__(self, plan: list[Req], archive: Archive, archive_dir: Path, archive_name: str) -> None:
        self.plan = plan
        self.archive = archive
        self.archive_name = archive_name
        self.engine = Engine(archive_dir)
        self.checks: list[tuple[str, bool]] = []
        recs = archive.records
        self.spans = [r for r in recs.get("traces", []) if r.get("type") == "span"]
        self.audits = [r for r in recs.get("audit", []) if r.get("type") == "audit"]
        self.rollups = [r for r in recs.get("performance", []) if r.get("type") == "rollup"]
        self.traces = group_traces(self.spans)
        self.error_traces = [
            ss
            for ss in self.traces.values()
            if any(s["kind"] == "server" and s["status"] == "error" for s in ss)
        ]
        # Requests the middleware traced (health checks are excluded from tracing).
        self.served = sum(1 for r in plan if r.route != "/healthz")

    def check(self, label: str, ok: bool) -> None:
        self.checks.append((label, ok))

    def datasets(self) -> None:
        print(f"\nArchive {self.archive_name}/ (gzip NDJSON, Logpush layout):")
        example = ""
        for dataset in ("traces", "audit", "performance", "logs"):
            paths = self.archive.files.get(dataset, [])
            size = sum(p.stat().st_size for p in paths)
            print(
                f"  {dataset:<12} {len(paths):>2} files {len(self.archive.records.get(dataset, [])):>6} "
                f"records {size / 1024:>7.1f} KiB"
            )
            self.check(f"dataset {dataset} has records", bool(self.archive.records.get(dataset)))
            if paths and not example:
                example = f"{dataset}/{paths[0].parent.name}/{paths[0].name}"
        print(f"  e.g. {example}")

    def kept(self) -> None:
        traces = self.traces
        interesting = {t for t, ss in traces.items() if any(s["status"] == "error" or is_slow(s) for s in ss)}
        print(f"\nTraces kept: {len(traces)} ({len(self.spans)} spans)")
        print(
            f"  {len(interesting):>4} contain an error or a span >= {SLOW_MS:g} ms: "
            "kept whatever the head sampling said (tail policy)"
        )
        print(
            f"  {len(traces) - len(interesting):>4} contain neither: "
            f"kept by head sampling ({SAMPLE_RATE:.0%} of traces)"
        )
        traced = [r for r in self.plan if r.trace_id and not r.raw]
        must_keep = [r for r in traced if r.status >= 400 or r.route == "/slow"]
        healthy = [r for r in traced if r not in must_keep]
        kept_healthy = sum(1 for r in healthy if r.trace_id in traces)
        missing = [r for r in must_keep if r.trace_id not in traces]
        print(
            f"  by request: all {len(must_keep)} failed or slow ones have their trace "
            f"({'yes' if not missing else f'{len(missing)} MISSING'}); "
            f"{kept_healthy} of {len(healthy)} healthy ones ({pct(kept_healthy, len(healthy))})"
        )
        self.check("every failed or slow request's trace is archived", not missing)

    def propagation(self) -> None:
        by_id = {s["span_id"]: s for s in self.spans}
        joined = bad = 0
        for s in self.spans:
            if s["kind"] != "server" or s["attributes"].get("user_agent.original") == GATEWAY_UA:
                continue  # the gateway's raw requests have no client span of ours
            parent = by_id.get(s["parent_span_id"] or "")
            if parent is not None and parent["kind"] == "client" and parent["parent_span_id"] is None:
                joined += 1
            else:
                bad += 1
        print(
            f"  {joined} server spans are children of the client span that called them "
            f"(one trace per request); {bad} are not"
        )
        self.check("server spans are children of their client spans", bad == 0 and joined > 0)
        malformed = next(r for r in self.plan if r.headers.get("traceparent") == MALFORMED_TRACEPARENT)
        root = next((s for s in self.traces.get(malformed.trace_id or "", []) if s["kind"] == "server"), None)
        print(
            f"  malformed traceparent: the server started a new trace {malformed.trace_id} "
            + ("(sampled: archived with the server span as root)" if root else "(not sampled)")
        )
        self.check(
            "a malformed traceparent starts a new trace",
            malformed.trace_id not in (None, UPSTREAM_TRACE_ID)
            and (root is None or root["parent_span_id"] is None),
        )
        upstream = self.traces.get(UPSTREAM_TRACE_ID, [])
        gw = sorted(s["parent_span_id"] for s in upstream if s["kind"] == "server")
        print(
            f"  sampled upstream traceparent 00-{UPSTREAM_TRACE_ID[:8]}...-01: {len(gw)} server spans "
            f"continue that trace (parent-based sampling)"
        )
        self.check("sampled upstream traces are continued and kept", gw == sorted(UPSTREAM_PARENTS))

    def waterfalls(self) -> None:
        engine = self.engine
        # By its longest span: a trace's extent can also span separate requests (the gateway's).
        # Among the traces holding a slow query (on a loaded machine another trace can be
        # slower still, through no query: its critical path has none to find).
        with_slow = [ss for ss in self.traces.values() if any(_slow_query(s) for s in ss)]
        slowest = max(with_slow or self.traces.values(), key=lambda ss: max(s["duration_ms"] for s in ss))
        tid = slowest[0]["trace_id"]
        view, found = engine.trace(tid), engine.analyze(tid)
        assert view is not None
        assert found is not None
        print(
            f"\nSlowest trace with a slow query {tid} ({view['duration_ms']:.1f} ms, "
            f"{view['span_count']} spans; * critical path):"
        )
        print("\n".join(waterfall(view)))
        b = found["bottleneck"]
        print(
            f"  bottleneck: {b['name']} ({b['self_time_ms']:.1f} ms of its own time, "
            f"{b['share']:.0%} of the trace)"
        )
        slow_queries = {s["span_id"] for s in slowest if _slow_query(s)}
        path = {c["span_id"] for c in found["critical_path"]}
        self.check("the slowest trace's critical path runs through its slow query", bool(slow_queries & path))
        if self.error_traces:
            err = max(self.error_traces, key=len)
            view = engine.trace(err[0]["trace_id"])
            assert view is not None
            print(f"\nAn error trace {err[0]['trace_id']} ({view['duration_ms']:.1f} ms, {len(err)} spans):")
            print("\n".join(waterfall(view)))
        self.check("an error trace (500) is archived", bool(self.error_traces))

    def analysis(self) -> None:
        engine = self.engine
        print(
            "\nAnswers from the archive (pitchey_trace.analysis; "
            "also on the command line: pitchey-trace search|show|perf|errors|deps):"
        )
        failed = engine.search(status="error", limit=10_000)
        with_errors = {t for t, ss in self.traces.items() if any(s["status"] == "error" for s in ss)}
        print(f"  search(status='error'): {len(failed)} traces with a failed span")
        self.check(
            "the engine's error search finds every trace with a failed span",
            {t["trace_id"] for t in failed} == with_errors,
        )
        for g in engine.errors(limit=3):
            print(
                f"  error group x{g['count']}: {g['name']}: "
                f"{g['exception_type'] or ''} {g['message']}".rstrip()
            )
        perf = {(r["operation"], r["kind"]): r for r in engine.performance()}
        merged = merge_rollups([{**r, "minute_start_unix_nano": 0} for r in self.rollups])
        self.check(
            "the engine's per-operation counts equal the rollups'",
            all(perf[(r["operation"], r["kind"])]["count"] == r["count"] for r in merged),
        )
        print(f"  performance(): {len(perf)} operations, p50/p95/p99 merged from the rollups' sketches")
        edges = engine.dependencies()
        for e in edges[:4]:
            caller = e["caller"] or "(outside)"
            print(
                f"  dependencies(): {caller} -> {e['callee']} ({e['protocol']}): "
                f"~{e['estimated_calls']} calls ({e['count']} kept), "
                f"{e['error_rate']:.0%} of the kept failed, p95 {e['p95_ms']:.1f} ms"
            )
        db_spans = [
            s
            for s in self.spans
            if s["kind"] == "client" and s["attributes"].get("db.system.name") == "postgresql"
        ]
        db_edges = [e for e in edges if e["protocol"] == "database"]
        self.check(
            "the service map's database edges count every archived query",
            sum(e["count"] for e in db_edges) == len(db_spans) > 0,
        )
        # Sampled out queries are estimated from the rollups, which count every query.
        db_ops = {s["name"] for s in db_spans}
        counted = sum(r["count"] for r in merged if r["kind"] == "client" and r["operation"] in db_ops)
        estimated = sum(e["estimated_calls"] or 0 for e in db_edges)
        print(
            f"  dependencies(): {estimated} queries estimated from {len(db_spans)} kept;"
            f" the rollups counted {counted}"
        )
        self.check(
            "the service map estimates the sampled-out queries from the rollups",
            len(db_spans) < estimated <= counted + len(db_edges),  # (each edge's estimate is rounded)
        )
        example = max(self.traces, key=lambda t: len(self.traces[t]))
        print(f"  explore: .venv/bin/pitchey-trace show {example} --archive {self.archive_name}")
        print(f"           .venv/bin/pitchey-trace serve --archive {self.archive_name}   (waterfall page)")

    def latency(self) -> None:
        # Rollups are per operation and minute (and per flush): merged across minutes here.
        merged = merge_rollups([{**r, "minute_start_unix_nano": 0} for r in self.rollups])
        print(
            f"\nLatency per operation from {len(self.rollups)} rollup records (every span, before sampling):"
        )
        print(
            f"  {'operation':<28}{'kind':<10}{'count':>6}{'errors':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        )
        order = {"server": 0, "client": 1, "internal": 2}
        for r in sorted(merged, key=lambda r: (order.get(r["kind"], 3), -r["count"], r["operation"])):
            print(
                f"  {r['operation'][:27]:<28}{r['kind']:<10}{r['count']:>6}{r['errors']:>7}"
                f"{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            )
        counted = sum(r["count"] for r in merged if r["kind"] == "server")
        archived = sum(1 for s in self.spans if s["kind"] == "server")
        print(
            f"  server spans counted: {counted}, requests traced by the middleware: {self.served} "
            f"(exact, although {pct(archived, counted)} of server spans are archived)"
        )
        self.check("rollups count every traced request", counted == self.served)

    def metrics(self, receiver: MetricsReceiver) -> None:
        calls = receiver.latest_calls()
        served = sum(n for (_, kind, _), n in calls.items() if kind == "SPAN_KIND_SERVER")
        failed = sum(
            n for (_, kind, code), n in calls.items() if kind == "SPAN_KIND_SERVER" and code.endswith("ERROR")
        )
        print(
            f"\nOTLP metrics ({len(receiver.requests)} request(s) to {receiver.url}, cumulative): "
            f"traces.span.metrics.calls counts {served} server spans, {failed} of them errors"
        )
        self.check("OTLP metrics count every traced request", served == self.served)
        linked = receiver.exemplar_traces()
        print(
            f"  exemplars (the slowest kept span of each point) link to {len(linked)} traces, "
            f"{len(linked & set(self.traces))} of them in the archive"
        )
        self.check("every exemplar links to an archived trace", bool(linked) and linked <= set(self.traces))
        self.check(
            "OTLP metrics count every 5xx as an error",
            failed == sum(1 for r in self.plan if r.route != "/healthz" and r.status >= 500),
        )

    def audit(self) -> None:
        print(f"\nAudit records: {len(self.audits)}")
        by_cat: dict[str, Counter[str]] = defaultdict(Counter)
        for a in self.audits:
            by_cat[a["category"]][a["outcome"]] += 1
        for cat in ("request", "security", "data_access"):
            outcomes = "  ".join(f"{k}: {v}" for k, v in sorted(by_cat[cat].items()))
            print(f"  {cat:<12} {sum(by_cat[cat].values()):>4}   {outcomes}")
            self.check(f"audit records of category {cat}", bool(by_cat[cat]))
        access = [a for a in self.audits if a["category"] == "data_access"]
        tables = dict(sorted(Counter(a["target"] for a in access).items()))
        actors = sum(1 for a in access if a["actor"])
        print(f"  data_access by table: {tables}; {actors} with an actor (user.id baggage)")
        requests = sum(by_cat["request"].values())
        self.check("one request audit record per traced request", requests == self.served)

    def secrets(self, secrets: list[str]) -> None:
        raw = self.archive.raw
        found = [s for s in secrets if s.encode() in raw]
        markers = {m: raw.count(m.encode()) for m in ("[EMAIL]", "[CARD]", "[IBAN]", "[REDACTED]")}
        print(
            f"\nSecrets: {len(secrets)} values the app handled (e-mails, passwords, bearer tokens, "
            "a card number, an IBAN); it leaks some into spans on purpose"
        )
        shown: dict[str, str] = {}
        for s in self.spans:
            attrs = s["attributes"]
            for key in ("url.query", "http.request.header.authorization"):
                if "[" in str(attrs.get(key, "")):
                    shown.setdefault(key, f"attribute {key} = {attrs[key]!r}")
            for e in s["events"]:
                ea = e["attributes"]
                if e["name"] == "login.attempt":
                    shown.setdefault("login", f"event login.attempt {ea}")
                elif e["name"] == "exception" and "[" in str(ea.get("exception.message", "")):
                    message = ea["exception.message"]
                    shown.setdefault("exc", f"event exception: exception.message = {message!r}")
        for line in shown.values():
            print(f"  archived: {line}")
        print(f"  masking markers in the archive: {markers}")
        print(
            f"  secret check over {len(raw) / 1024:.0f} KiB of archive: "
            + ("PASS (none found)" if not found else f"FAIL: {len(found)} found")
        )
        self.check("no secret in the archive", not found)

    def logs_and_stats(self, logs: LogCollector, stats: dict[str, int]) -> None:
        print(f"\nLog records with trace ids (TraceContextFilter): {len(logs.records)}")
        err_ids = {ss[0]["trace_id"] for ss in self.error_traces}
        # export_logs("WARNING"): the app's own log records (not the SDK's) in the archive
        shipped = self.archive.records.get("logs", [])
        linked = [r for r in shipped if r["trace_id"] in err_ids and r["logger"] == "uvicorn.error"]
        print(
            f"  archived by export_logs('WARNING'): {len(shipped)}, {len(linked)} linked to the 500's trace"
        )
        self.check("the 500's error log is archived, linked to its trace", bool(linked))
        for rec in logs.records[:4]:
            msg = rec.getMessage().split("\n")[0]
            msg = msg if len(msg) <= 58 else msg[:55] + "..."
            tid = getattr(rec, "trace_id", "")
            tag = " (the 500's trace)" if tid in err_ids else ""
            print(f"  {rec.levelname:<8}{rec.name:<16} trace_id={tid or '-'}{tag}  {msg}")
        keys = (
            "accepted",
            "exported",
            "dropped",
            "tail.kept_traces",
            "tail.discarded",
            "rollups.records",
            "local_archive.objects",
            "local_archive.uploaded",
            "internal_errors",
        )
        print("\npt.stats(): " + ", ".join(f"{k}={stats.get(k, 0)}" for k in keys))
        self.check(
            "nothing dropped, no internal error",
            stats.get("dropped", 0) == 0 and stats.get("internal_errors", 0) == 0,
        )


# -- the demo ------------------------------------------------------------------------------------
def run_service(
    args: argparse.Namespace, archive_dir: Path, shown: str, receiver: MetricsReceiver
) -> tuple[list[Req], list[str]]:
    """Steps 1-5: database, configure, serve, drive the traffic, shut down."""
    rng = random.Random(args.seed)
    with database() as (dsn, where):
        seeded = app_mod.seed(dsn, rng)
        print(f"[1] PostgreSQL: {where}")
        print(
            f"    seeded {len(seeded.users)} users (sensitive table), their tokens, "
            f"{len(seeded.pitch_titles)} pitches with media and comments"
        )
        db.configure(slow_threshold_ms=SLOW_MS)  # slow_query events and warnings match the tail policy
        pt.configure(
            service=SERVICE,
            environment="demo",
            sample_rate=SAMPLE_RATE,
            keep_errors=True,
            slow_threshold_ms=SLOW_MS,
            exporters=[
                LocalArchiveExporter(archive_dir, max_interval_s=1.0),
                OTLPMetricsExporter(receiver.url, protocol="http/json"),
            ],
        )
        print(f"[2] pt.configure(service={SERVICE!r}, environment='demo', sample_rate={SAMPLE_RATE},")
        print(f"                 keep_errors=True, slow_threshold_ms={SLOW_MS:g},")
        print(f"                 exporters=[LocalArchiveExporter({shown!r}, max_interval_s=1.0),")
        print("                            OTLPMetricsExporter(<receiver>, protocol='http/json')])")
        export_logs("WARNING")
        print("    export_logs('WARNING'): the app's warnings and errors archived with their trace ids")
        plan, secrets = build_plan(args.requests, seeded, rng)
        instrument_httpx()
        try:
            with app_mod.serve(app_mod.make_app(dsn)) as base_url:
                print(f"[3] Starlette app + ASGITracingMiddleware under uvicorn at {base_url}")
                print("    PostgreSQL through an AsyncConnectionPool(configure=instrument_async)")
                wall = asyncio.run(drive(base_url, plan))
        finally:
            uninstrument_httpx()
        print(
            f"[4] {len(plan)} requests from an httpx client with instrument_httpx(), "
            f"{CONCURRENCY} in flight: {wall:.2f} s"
        )
        by_route: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
        for r in plan:
            by_route[(r.method, r.route)][r.status] += 1
        for (method, route), statuses in sorted(by_route.items(), key=lambda kv: -sum(kv[1].values())):
            codes = "  ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
            print(f"      {method:<5}{route:<20}{sum(statuses.values()):>4}   {codes}")
        started = time.perf_counter()
        pt.shutdown()
        print(f"[5] pt.shutdown(): everything flushed in {time.perf_counter() - started:.2f} s")
    return plan, secrets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--archive",
        type=Path,
        default=REPO / "var" / "demo-archive",
        help="archive directory, emptied first (default: var/demo-archive)",
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests to send (>= 40)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic mix")
    args = parser.parse_args(argv)
    if args.requests < 40:
        parser.error("--requests must be at least 40")
    archive_dir: Path = args.archive.resolve()
    shutil.rmtree(archive_dir, ignore_errors=True)
    shown = str(archive_dir.relative_to(REPO) if archive_dir.is_relative_to(REPO) else archive_dir)

    logs = LogCollector()
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    print("pitchey-trace demo: a traced web service over PostgreSQL, archived locally\n")
    receiver = MetricsReceiver()
    try:
        plan, secrets = run_service(args, archive_dir, shown, receiver)
    finally:
        receiver.close()
    stats = pt.stats()

    report = Report(plan, read_archive(archive_dir), archive_dir, shown)
    report.datasets()
    report.kept()
    report.propagation()
    report.waterfalls()
    report.latency()
    report.metrics(receiver)
    report.analysis()
    report.audit()
    report.secrets(secrets)
    report.logs_and_stats(logs, stats)
    failed = [label for label, ok in report.checks if not ok]
    print(
        f"\nChecks: {len(report.checks) - len(failed)}/{len(report.checks)} passed"
        + (" - FAILED: " + "; ".join(failed) if failed else "")
        + f"   (demo took {time.perf_counter() - started:.1f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
