"""Property tests of the analysis engine: random but valid archives, answers checked against
brute-force computations written plainly here (docs/analysis.md, "What the answers mean"), and
the same answers whether the records are read from memory, in another order, or from a local
archive directory written by the real LocalArchiveExporter."""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import random
import tempfile
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitchey_trace._sketch import DurationSketch
from pitchey_trace.analysis import Archive
from pitchey_trace.exporters import LocalArchiveExporter

MS = 1_000_000
T0 = 1_796_000_000_000_000_000  # 2026-11-30, before any run of these tests: archived "in the past"
SERVICES = ("api", "db", "pay")
NAMES = ("GET /a", "SELECT x", "render", "call")
KINDS = ("internal", "server", "client")
MESSAGES = ("boom", "card declined", "")

Record = dict[str, Any]


# -- generating archives -------------------------------------------------------------------------
@st.composite
def traces(draw: Any) -> list[Record]:
    """The spans of a few traces on a coarse millisecond grid (so that times tie often)."""
    spans: list[Record] = []
    for t in range(draw(st.integers(1, 4))):
        trace_id = f"{t + 1:02x}" * 16
        mine: list[Record] = []
        for i in range(draw(st.integers(1, 7))):
            span_id = f"{t + 1:04x}{i + 1:012x}"
            how = draw(st.sampled_from(("child", "child", "child", "missing", "root"))) if i else "root"
            if i == 0 and draw(st.booleans()) and draw(st.booleans()):
                how = "missing"  # the root itself was not kept
            if how == "child":
                parent = draw(st.sampled_from(mine))
                # children may start before their parent (clock skew) and outlive it (async)
                start = parent["start_time_unix_nano"] + draw(st.integers(-3, 25)) * MS
                parent_id: str | None = parent["span_id"]
            else:
                start = T0 + draw(st.integers(0, 40)) * MS
                parent_id = f"{t + 1:04x}{0xFFF000 + i:012x}" if how == "missing" else None
            end = start + draw(st.integers(0, 30)) * MS  # zero-duration spans too
            status = draw(st.sampled_from(("unset", "ok", "error", "error")))
            attributes: dict[str, Any] = {}
            if draw(st.booleans()):
                attributes["http.response.status_code"] = draw(st.sampled_from((200, 500)))
            if draw(st.booleans()):
                attributes["db.system.name"] = "postgresql"
            events: list[Record] = []
            message = draw(st.sampled_from(MESSAGES)) if status == "error" else ""
            if status == "error" and draw(st.booleans()):
                events.append(
                    {
                        "name": "exception",
                        "time_unix_nano": end,
                        "attributes": {"exception.type": "ValueError", "exception.message": message},
                    }
                )
            mine.append(
                {
                    "schema": 1,
                    "type": "span",
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": parent_id,
                    "name": draw(st.sampled_from(NAMES)),
                    "kind": draw(st.sampled_from(KINDS)),
                    "service": draw(st.sampled_from(SERVICES)),
                    "start_time_unix_nano": start,
                    "end_time_unix_nano": end,
                    "duration_ms": (end - start) / MS,
                    "status": status,
                    "status_message": message or None,
                    "attributes": attributes,
                    "events": events,
                }
            )
        spans += mine
    return spans


@st.composite
def archives(draw: Any) -> list[Record]:
    """Spans (some written twice, as an exporter's retry does), audit records and log lines."""
    spans = draw(traces())
    records: list[Record] = list(spans)
    for s in draw(st.lists(st.sampled_from(spans), max_size=3)):
        records.append(dict(s))  # the same span again
    trace_ids = sorted({s["trace_id"] for s in spans})
    for i in range(draw(st.integers(0, 3))):
        records.append(
            {
                "schema": 1,
                "type": "audit",
                "category": draw(st.sampled_from(("request", "security"))),
                "time_unix_nano": T0 + draw(st.integers(0, 40)) * MS,
                "trace_id": draw(st.sampled_from(trace_ids)),
                "span_id": None,
                "service": "api",
                "environment": "test",
                "actor": None,
                "action": f"GET /{i}",
                "target": "/",
                "outcome": draw(st.sampled_from(("200", "403"))),
                "attributes": {},
            }
        )
    for i in range(draw(st.integers(0, 3))):
        records.append(
            {
                "schema": 1,
                "type": "log",
                "time_unix_nano": T0 + draw(st.integers(0, 40)) * MS,
                "trace_id": draw(st.sampled_from(trace_ids)),
                "span_id": None,
                "severity_text": "ERROR",
                "severity_number": 17,
                "logger": "app",
                "body": draw(st.sampled_from(("Card Declined", "ok", f"line {i}"))),
                "service": "api",
                "attributes": {},
            }
        )
    return records


windows = st.tuples(st.one_of(st.none(), st.integers(-2, 45)), st.one_of(st.none(), st.integers(-2, 45))).map(
    lambda w: (w[0], w[1]) if w[0] is None or w[1] is None or w[0] <= w[1] else (w[1], w[0])
)


def _ns(ms: int | None) -> int | None:
    return None if ms is None else T0 + ms * MS


# -- brute force ---------------------------------------------------------------------------------
def unique_spans(records: list[Record]) -> list[Record]:
    seen: dict[tuple[str, str], Record] = {}
    for r in records:
        if r["type"] == "span":
            seen.setdefault((r["trace_id"], r["span_id"]), r)
    return list(seen.values())


def in_window(t: int, since: int | None, until: int | None) -> bool:
    """Documented: ``since`` / ``until`` bound the start, both inclusive."""
    return (since is None or t >= since) and (until is None or t <= until)


def covered(parent: Record, kids: list[Record]) -> int:
    """Nanoseconds of the parent during which at least one child ran: every elementary
    segment between two boundaries is looked at on its own."""
    s, e = parent["start_time_unix_nano"], parent["end_time_unix_nano"]
    points = sorted(
        {s, e}
        | {min(max(t, s), e) for k in kids for t in (k["start_time_unix_nano"], k["end_time_unix_nano"])}
    )
    total = 0
    for a, b in itertools.pairwise(points):
        if any(k["start_time_unix_nano"] <= a and b <= k["end_time_unix_nano"] for k in kids):
            total += b - a
    return total


class Ref:
    """One trace computed plainly."""

    def __init__(self, spans: list[Record]) -> None:
        self.spans = sorted(
            spans, key=lambda s: (s["start_time_unix_nano"], -s["end_time_unix_nano"], s["span_id"])
        )
        ids = {s["span_id"] for s in spans}
        self.children: dict[str, list[Record]] = {s["span_id"]: [] for s in spans}
        self.roots = []
        for s in self.spans:
            p = s["parent_span_id"]
            if p in ids and p != s["span_id"]:
                self.children[p].append(s)
            else:
                self.roots.append(s)
        self.order: list[tuple[Record, int]] = []

        def walk(s: Record, depth: int) -> None:
            self.order.append((s, depth))
            for k in self.children[s["span_id"]]:
                walk(k, depth + 1)

        for r in self.roots:
            walk(r, 0)
        self.start = min(s["start_time_unix_nano"] for s in spans)
        self.end = max(s["end_time_unix_nano"] for s in spans)

    def self_time(self, s: Record) -> int:
        return s["end_time_unix_nano"] - s["start_time_unix_nano"] - covered(s, self.children[s["span_id"]])

    def main_root(self) -> Record:
        def key(s: Record) -> tuple[bool, int]:
            return (s["parent_span_id"] is None, s["end_time_unix_nano"] - s["start_time_unix_nano"])

        best = max(key(s) for s in self.roots)
        return next(s for s in self.roots if key(s) == best)  # (ties: the first in tree order)

    def critical(self) -> set[str]:
        """docs: from the root, the child that finished last, then the child that finished
        before that one started, and so on, in each child again (within the time its parent
        was waited on)."""
        out: set[str] = set()

        def visit(s: Record, limit: int) -> None:
            out.add(s["span_id"])
            cursor = min(s["end_time_unix_nano"], limit)
            chosen: list[Record] = []
            while cursor > s["start_time_unix_nano"]:
                pool = [
                    k
                    for k in self.children[s["span_id"]]
                    if k not in chosen
                    and k["start_time_unix_nano"] < cursor
                    and (not chosen or k["end_time_unix_nano"] <= cursor)
                ]
                if not pool:
                    break
                k = max(
                    pool,
                    key=lambda k: (k["end_time_unix_nano"], -k["start_time_unix_nano"], _neg(k["span_id"])),
                )
                chosen.append(k)
                visit(k, cursor)
                cursor = k["start_time_unix_nano"]

        visit(self.main_root(), self.main_root()["end_time_unix_nano"])
        return out


def _neg(text: str) -> list[int]:
    return [-ord(c) for c in text]


def nearest_rank(values: list[float], q: Fraction) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


Q = (Fraction(1, 2), Fraction(95, 100), Fraction(99, 100))


# -- what is compared ----------------------------------------------------------------------------
def answers(a: Archive, trace_ids: list[str], window: tuple[int | None, int | None]) -> dict[str, Any]:
    since, until = _ns(window[0]), _ns(window[1])
    return {
        "search": a.search(limit=100, since=since, until=until),
        "search_d": a.search(limit=100, sort="duration", status="error"),
        "search_log": a.search(limit=100, log="card declined"),
        "traces": [a.trace(t) for t in trace_ids],
        "analyze": [a.analyze(t, n_plus_one_min=2) for t in trace_ids],
        "perf": a.performance(since=since, until=until),
        "series": a.series(since=since, until=until, step_s=1),
        "errors": a.errors(limit=100),
        "errors_3": a.errors(limit=1),
        "deps": a.dependencies(since=since, until=until),
        "overview": a.overview(since=since, until=until),
        "audit": a.audit(since=since, until=until),
        "audit_1": a.audit(limit=1),
        "logs": a.logs(since=since, until=until),
        "logs_1": a.logs(limit=1),
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# -- the properties --------------------------------------------------------------------------------
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(archives(), windows)
def test_trace_views_match_brute_force(records: list[Record], window: tuple[int | None, int | None]) -> None:
    a = Archive.from_records(records)
    spans = unique_spans(records)
    for tid in sorted({s["trace_id"] for s in spans}):
        ref = Ref([s for s in spans if s["trace_id"] == tid])
        view = a.trace(tid)
        assert view is not None
        # tree order: depth-first, children by start time
        assert [(s["span_id"], s["depth"]) for s in view["spans"]] == [
            (s["span_id"], d) for s, d in ref.order
        ]
        for s in view["spans"]:
            span = next(r for r in ref.spans if r["span_id"] == s["span_id"])
            assert s["self_time_ms"] == ref.self_time(span) / MS, s["span_id"]
            assert s["child_count"] == len(ref.children[s["span_id"]])
            assert s["offset_ms"] == (span["start_time_unix_nano"] - ref.start) / MS
        assert view["duration_ms"] == (ref.end - ref.start) / MS
        assert view["span_count"] == len(ref.spans)
        critical = ref.critical()
        assert {s["span_id"] for s in view["spans"] if s["on_critical_path"]} == critical
        result = a.analyze(tid)
        assert result is not None
        path = [c["span_id"] for c in result["critical_path"]]
        assert path == [s["span_id"] for s, _ in ref.order if s["span_id"] in critical]
        top = max(result["critical_path"], key=lambda c: c["self_time_ms"])
        assert result["bottleneck"]["self_time_ms"] == top["self_time_ms"]
        assert result["bottleneck"]["span_id"] == next(
            c["span_id"] for c in result["critical_path"] if c["self_time_ms"] == top["self_time_ms"]
        )


@FAST
@given(
    archives(),
    windows,
    st.sampled_from((None, *SERVICES)),
    st.sampled_from((None, "error", "ok", "unset")),
    st.sampled_from((None, "GET /a", "SELECT *", "[rc]*")),
    st.one_of(st.none(), st.integers(0, 30)),
    st.one_of(st.none(), st.integers(0, 30)),
    st.sampled_from((None, {"http.response.status_code": "500"})),
)
def test_search_matches_brute_force(
    records: list[Record],
    window: tuple[int | None, int | None],
    service: str | None,
    status: str | None,
    name: str | None,
    lo: int | None,
    hi: int | None,
    attributes: dict[str, str] | None,
) -> None:
    since, until = _ns(window[0]), _ns(window[1])
    a = Archive.from_records(records)
    spans = unique_spans(records)

    def matches(s: Record) -> bool:
        return (
            in_window(s["start_time_unix_nano"], since, until)
            and (service is None or s["service"] == service)
            and (status is None or s["status"] == status)
            and (name is None or fnmatch.fnmatchcase(s["name"], name))
            and (lo is None or s["duration_ms"] >= lo)
            and (hi is None or s["duration_ms"] <= hi)
            and (attributes is None or all(str(s["attributes"].get(k)) == v for k, v in attributes.items()))
        )

    wanted = {s["trace_id"] for s in spans if matches(s)}
    extent = {
        t: (
            min(s["start_time_unix_nano"] for s in spans if s["trace_id"] == t),
            max(s["end_time_unix_nano"] for s in spans if s["trace_id"] == t),
        )
        for t in {s["trace_id"] for s in spans}
    }

    def search(sort: str, limit: int) -> list[dict[str, Any]]:
        return a.search(
            service=service,
            status=status,
            name=name,
            min_duration_ms=lo,
            max_duration_ms=hi,
            attributes=attributes,
            since=since,
            until=until,
            sort=sort,
            limit=limit,
        )

    for sort in ("recent", "duration"):
        got = search(sort, 100)
        if sort == "recent":
            order = sorted(wanted, key=lambda t: (-extent[t][0], t))
        else:
            order = sorted(wanted, key=lambda t: (extent[t][0] - extent[t][1], t))
        assert [g["trace_id"] for g in got] == order
        for g in got:
            mine = [s for s in spans if s["trace_id"] == g["trace_id"]]
            ref = Ref(mine)
            root = ref.main_root()
            assert (g["name"], g["service"]) == (root["name"], root["service"])
            assert g["span_count"] == len(mine)
            assert g["error_count"] == sum(s["status"] == "error" for s in mine)
            assert g["services"] == sorted({s["service"] for s in mine})
            assert g["complete"] == any(s["parent_span_id"] is None for s in mine)
            assert g["duration_ms"] == (extent[g["trace_id"]][1] - extent[g["trace_id"]][0]) / MS
        if len(order) > 1:  # limit keeps the first ones
            assert [g["trace_id"] for g in search(sort, 1)] == order[:1]


@FAST
@given(archives(), windows)
def test_performance_errors_overview_match_brute_force(
    records: list[Record], window: tuple[int | None, int | None]
) -> None:
    since, until = _ns(window[0]), _ns(window[1])
    a = Archive.from_records(records)
    spans = [s for s in unique_spans(records) if in_window(s["start_time_unix_nano"], since, until)]
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for s in spans:
        groups.setdefault((s["service"], s["name"], s["kind"]), []).append(s)
    rows = a.performance(since=since, until=until)
    assert {(r["service"], r["operation"], r["kind"]) for r in rows} == set(groups)
    for r in rows:
        ss = groups[(r["service"], r["operation"], r["kind"])]
        ds = [s["duration_ms"] for s in ss]
        assert r["source"] == "spans"
        assert r["count"] == len(ss)
        assert r["errors"] == sum(s["status"] == "error" for s in ss)
        assert r["max_ms"] == max(ds)
        assert math.isclose(r["mean_ms"], sum(ds) / len(ds), rel_tol=1e-12, abs_tol=1e-12)
        assert [r["p50_ms"], r["p95_ms"], r["p99_ms"]] == [nearest_rank(ds, q) for q in Q]
    totals = [r["count"] * r["mean_ms"] for r in rows]
    assert totals == sorted(totals, reverse=True)

    # error groups (the generated messages have no numbers or ids: normalising keeps them)
    def message(s: Record) -> str:
        exc = [e for e in s["events"] if e["name"] == "exception"]
        text = exc[-1]["attributes"]["exception.message"] if exc else ""
        text = text or s["status_message"] or ""
        code = s["attributes"].get("http.response.status_code")
        return text or (f"HTTP {code}" if code is not None else "")

    failed = [s for s in spans if s["status"] == "error"]
    errs: dict[tuple[Any, ...], list[Record]] = {}
    for s in failed:
        exc = [e for e in s["events"] if e["name"] == "exception"]
        etype = exc[-1]["attributes"]["exception.type"] if exc else None
        errs.setdefault((s["service"], s["name"], etype, message(s)), []).append(s)
    got = a.errors(since=since, until=until, limit=100)
    assert {(g["service"], g["name"], g["exception_type"], g["message"]): g["count"] for g in got} == {
        k: len(v) for k, v in errs.items()
    }
    for g in got:
        ss = errs[(g["service"], g["name"], g["exception_type"], g["message"])]
        assert g["first_seen_unix_nano"] == min(s["start_time_unix_nano"] for s in ss)
        assert g["last_seen_unix_nano"] == max(s["start_time_unix_nano"] for s in ss)
        latest: dict[str, int] = {}
        for s in ss:
            latest[s["trace_id"]] = max(latest.get(s["trace_id"], 0), s["start_time_unix_nano"])
        assert g["trace_ids"] == sorted(latest, key=lambda t: (-latest[t], t))[:5]
    assert [(g["count"], g["last_seen_unix_nano"]) for g in got] == sorted(
        ((g["count"], g["last_seen_unix_nano"]) for g in got), key=lambda x: (-x[0], -x[1])
    )

    ov = a.overview(since=since, until=until)
    assert ov["spans"] == len(spans)
    assert ov["traces"] == len({s["trace_id"] for s in spans})
    assert ov["errors"] == len(failed)
    assert ov["start_time_unix_nano"] == min((s["start_time_unix_nano"] for s in spans), default=None)
    assert ov["end_time_unix_nano"] == max((s["end_time_unix_nano"] for s in spans), default=None)
    audits = [r for r in records if r["type"] == "audit" and in_window(r["time_unix_nano"], since, until)]
    assert ov["audit"]["records"] == len(audits)
    logs = [r for r in records if r["type"] == "log" and in_window(r["time_unix_nano"], since, until)]
    assert len(a.logs(since=since, until=until, limit=100)) == len(logs)
    assert len(a.audit(since=since, until=until, limit=100)) == len(audits)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives(), windows, st.randoms(use_true_random=False))
def test_same_answers_from_any_order_and_from_a_local_archive(
    records: list[Record], window: tuple[int | None, int | None], rnd: random.Random
) -> None:
    trace_ids = sorted({r["trace_id"] for r in records if r["type"] == "span"})
    expected = _canon(answers(Archive.from_records(records), trace_ids, window))
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert _canon(answers(Archive.from_records(shuffled), trace_ids, window)) == expected
    with tempfile.TemporaryDirectory(prefix="pt-s18-engine-") as folder:
        exporter = LocalArchiveExporter(folder, fsync=False, max_interval_s=3600)
        cut = rnd.randint(0, len(shuffled))
        exporter.export(shuffled[:cut])
        exporter.force_flush()  # two objects: a duplicate may sit in each
        exporter.export(shuffled[cut:])
        exporter.shutdown()
        local = Archive(folder)
        assert _canon(answers(local, trace_ids, window)) == expected
        # a windowed query first (reads only the objects of the window) answers the same
        windowed = Archive(folder)
        assert _canon(answers(windowed, trace_ids, window)) == expected


# -- rollups ---------------------------------------------------------------------------------------
@st.composite
def rollup_archives(draw: Any) -> tuple[list[Record], dict[tuple[str, int], list[float]]]:
    """Rollups of two operations over a few minutes (a minute may be sent in two parts, as a
    flush does), and the durations each stands for."""
    records: list[Record] = []
    durations: dict[tuple[str, int], list[float]] = {}
    for op in ("GET /a", "SELECT x"):
        for minute in range(draw(st.integers(1, 3))):
            for _ in range(draw(st.integers(1, 2))):
                ds = draw(st.lists(st.floats(0.01, 5000, allow_nan=False), min_size=1, max_size=30))
                m = T0 + minute * 60 * 10**9
                durations.setdefault((op, m), []).extend(ds)
                sketch = DurationSketch()
                for d in ds:
                    sketch.add(d)
                errors = draw(st.integers(0, len(ds)))
                records.append(
                    {
                        "schema": 1,
                        "type": "rollup",
                        "service": "api",
                        "environment": "test",
                        "operation": op,
                        "kind": "server",
                        "minute_start_unix_nano": m,
                        "interval_s": 60,
                        "count": len(ds),
                        "errors": errors,
                        "duration_sum_ms": sum(ds),
                        "duration_min_ms": min(ds),
                        "duration_max_ms": max(ds),
                        "sketch": sketch.to_dict(),
                    }
                )
    return records, durations


@FAST
@given(rollup_archives(), st.integers(-70, 200), st.integers(0, 260), st.randoms(use_true_random=False))
def test_performance_from_rollups_within_one_percent(
    data: tuple[list[Record], dict[tuple[str, int], list[float]]],
    since_s: int,
    length_s: int,
    rnd: random.Random,
) -> None:
    records, durations = data
    since, until = T0 + since_s * 10**9, T0 + (since_s + length_s) * 10**9
    a = Archive.from_records(records)
    rows = a.performance(since=since, until=until)
    # documented: a rollup counts when its minute overlaps the window
    counted = {k: v for k, v in durations.items() if k[1] + 60 * 10**9 > since and k[1] <= until}
    ops = {op for op, _ in counted}
    assert {r["operation"] for r in rows} == ops
    for r in rows:
        assert r["source"] == "rollups"
        ds = [d for (op, _), v in counted.items() if op == r["operation"] for d in v]
        assert r["count"] == len(ds)
        assert r["max_ms"] == max(ds)
        for got, q in zip((r["p50_ms"], r["p95_ms"], r["p99_ms"]), Q, strict=True):
            exact = nearest_rank(ds, q)
            assert abs(got - exact) <= 0.01 * exact * (1 + 1e-9)
            assert min(ds) <= got <= max(ds)
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert _canon(Archive.from_records(shuffled).performance(since=since, until=until)) == _canon(rows)


@FAST
@given(archives(), st.integers(0, 40), st.integers(1, 20))
def test_compare_windows_match_brute_force(records: list[Record], since_ms: int, length_ms: int) -> None:
    """compare(): the window [since, until] beside the one of the same length just before."""
    since, until = T0 + since_ms * MS, T0 + (since_ms + length_ms) * MS
    spans = unique_spans(records)
    rows = Archive.from_records(records).compare(since=since, until=until)

    def counts(lo: int, hi: int) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for s in spans:
            if lo <= s["start_time_unix_nano"] <= hi:
                key = (s["service"], s["name"], s["kind"])
                out[key] = out.get(key, 0) + 1
        return out

    now, before = counts(since, until), counts(since - (until - since), since - 1)
    assert {(r["service"], r["operation"], r["kind"]): r["count"] for r in rows} == {
        k: now.get(k, 0) for k in now.keys() | before.keys()
    }
    assert {(r["service"], r["operation"], r["kind"]): r["baseline_count"] for r in rows} == {
        k: before.get(k, 0) for k in now.keys() | before.keys()
    }


# -- regressions: the smallest examples hypothesis found -----------------------------------------
def _span(trace: int, span: int, start_ms: int, end_ms: int, parent: int | None = None, **kw: Any) -> Record:
    rec: Record = {
        "schema": 1,
        "type": "span",
        "trace_id": f"{trace:02x}" * 16,
        "span_id": f"{trace:04x}{span:012x}",
        "parent_span_id": None if parent is None else f"{trace:04x}{parent:012x}",
        "name": "GET /a",
        "kind": "internal",
        "service": "api",
        "start_time_unix_nano": T0 + start_ms * MS,
        "end_time_unix_nano": T0 + end_ms * MS,
        "duration_ms": float(end_ms - start_ms),
        "status": "unset",
        "status_message": None,
        "attributes": {},
        "events": [],
    }
    rec.update(kw)
    return rec


def _both_orders(records: list[Record], query: Any) -> tuple[Any, Any]:
    return query(Archive.from_records(records)), query(Archive.from_records(records[::-1]))


def test_rollup_mean_does_not_depend_on_the_order_rollups_are_read() -> None:
    # (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1 in floats: the sum is now exact
    rollups = [
        {
            "schema": 1,
            "type": "rollup",
            "service": "api",
            "operation": "op",
            "kind": "server",
            "minute_start_unix_nano": T0 + i * 60 * 10**9,
            "count": 1,
            "errors": 0,
            "duration_sum_ms": total,
            "duration_min_ms": total,
            "duration_max_ms": total,
        }
        for i, total in enumerate((0.1, 0.2, 0.3))
    ]
    first, second = _both_orders(rollups, lambda a: a.performance()[0]["mean_ms"])
    assert first == second == 0.6 / 3


def test_spans_with_the_same_times_come_in_one_order() -> None:
    # two children with the same start and end: the tree's order and the critical path (which
    # takes one of them) were those of the records
    records = [_span(1, 1, 0, 10), _span(1, 2, 1, 5, parent=1), _span(1, 3, 1, 5, parent=1)]
    tid = "01" * 16

    def view(a: Archive) -> Any:
        tree = a.trace(tid)
        assert tree is not None
        return [(s["span_id"], s["on_critical_path"]) for s in tree["spans"]]

    first, second = _both_orders(records, view)
    assert (
        first
        == second
        == [("0001000000000001", True), ("0001000000000002", True), ("0001000000000003", False)]
    )


def test_overview_services_with_equal_counts_by_name() -> None:
    records = [_span(1, 1, 0, 0, service="db"), _span(2, 1, 0, 0, service="api")]
    first, second = _both_orders(records, lambda a: [s["service"] for s in a.overview()["services"]])
    assert first == second == ["api", "db"]


def test_error_groups_and_their_traces_with_equal_times_in_one_order() -> None:
    # two groups with the same count and last time; one group failing in 7 traces at once
    records = [_span(t, 1, 0, 1, status="error", status_message="boom") for t in range(1, 8)]
    records.append(_span(9, 1, 0, 1, status="error", status_message="other"))

    def groups(a: Archive) -> Any:
        return [(g["message"], g["trace_ids"]) for g in a.errors()]

    first, second = _both_orders(records, groups)
    assert first == second
    assert first[0] == ("boom", [f"{t:02x}" * 16 for t in range(1, 6)])  # the smallest ids of equal times
    assert _both_orders(records, lambda a: a.errors(limit=1)[0]["message"]) == ("boom", "boom")
    records = [_span(t, 1, 0, 1, status="error", status_message=m) for t, m in ((1, "a"), (2, "b"))]
    first, second = _both_orders(records, lambda a: [g["message"] for g in a.errors()])
    assert first == second


def test_performance_rows_of_equal_total_in_one_order() -> None:
    records = [_span(1, 1, 0, 1, kind="server"), _span(2, 1, 0, 1, kind="client")]
    first, second = _both_orders(records, lambda a: [r["kind"] for r in a.performance()])
    assert first == second == ["client", "server"]


def test_dependency_samples_of_spans_starting_together_in_one_order() -> None:
    records = [_span(t, 1, 0, 1, kind="server") for t in range(1, 6)]
    first, second = _both_orders(records, lambda a: a.dependencies()[0]["trace_ids"])
    assert first == second == [f"{t:02x}" * 16 for t in range(1, 4)]


def test_log_lines_and_audit_records_of_one_time_in_one_order() -> None:
    logs = [
        {"type": "log", "time_unix_nano": T0, "trace_id": f"{t:02x}" * 16, "body": "x", "severity_number": 17}
        for t in (1, 2)
    ]
    first, second = _both_orders(logs, lambda a: [r["trace_id"] for r in a.logs()])
    assert first == second
    assert _both_orders(logs, lambda a: a.logs(limit=1)[0]["trace_id"]) == ("02" * 16, "02" * 16)
    same_trace = [dict(r, trace_id="01" * 16, body=b) for r, b in zip(logs, ("b", "a"), strict=True)]
    records = [*same_trace, _span(1, 1, 0, 1)]
    first, second = _both_orders(records, lambda a: [r["body"] for r in a.trace("01" * 16)["logs"]])
    assert first == second == ["a", "b"]
    audits = [
        {"type": "audit", "time_unix_nano": T0, "category": "request", "action": f"GET /{i}"} for i in (1, 2)
    ]
    assert _both_orders(audits, lambda a: a.audit(limit=1)[0]["action"]) == ("GET /2", "GET /2")
