"""The analysis engine over real spans: made with the public span API at exact times, exported
by the real pipeline (InMemoryExporter, LocalArchiveExporter), then searched and analysed."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace.analysis import Archive, LocalSource, decode_object, parse_time
from pitchey_trace.analysis._time import parse_duration_ms
from pitchey_trace.exporters import InMemoryExporter, LocalArchiveExporter
from pitchey_trace.records import app_log_record, audit_record, new_record_id
from pitchey_trace.web import LogExportHandler

MS = 1_000_000
T0 = 1_796_000_000_000_000_000  # a fixed Unix time (ns) in 2026


def _span(name: str, start_ms: float, parent: Any = None, **kw: Any) -> Any:
    attrs = kw.pop("attributes", None)
    return pt.start_span(name, attrs, context=parent, start_time_ns=T0 + int(start_ms * MS), **kw)


def _end(span: Any, end_ms: float) -> None:
    span.end(T0 + int(end_ms * MS))


def make_shop_trace(service: str = "shop") -> str:
    """A request whose handler runs an N+1 loop (6 equal SELECTs), then two parallel calls,
    then a slow render: root 0-100 ms."""
    root = _span("GET /orders/{id}", 0, kind=pt.SpanKind.SERVER)
    handler = _span("load_order", 1, parent=root)
    for i in range(6):
        q = _span(
            "SELECT items",
            2 + i * 3,
            parent=handler,
            kind=pt.SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.query.text": f"SELECT * FROM items WHERE id = {i}",  # noqa: S608 (a test record)
            },
        )
        _end(q, 4 + i * 3)
    _end(handler, 21)
    a = _span("call pricing", 22, parent=root, kind=pt.SpanKind.CLIENT)
    b = _span("call stock", 23, parent=root, kind=pt.SpanKind.CLIENT)
    _end(b, 40)
    _end(a, 50)  # pricing finishes last: it, not stock, is on the critical path
    render = _span("render", 50, parent=root)
    _end(render, 95)
    _end(root, 100)
    return _hex(root)


def _hex(span: Any) -> str:
    ctx = span.context
    return f"{ctx.trace_id:032x}"


def make_error_trace(message: str, start_ms: float = 200, service_attr: str = "x") -> str:
    root = _span("POST /pay", start_ms, kind=pt.SpanKind.SERVER, attributes={"tenant": service_attr})
    child = _span("charge", start_ms + 1, parent=root)
    try:
        raise ValueError(message)
    except ValueError as exc:
        child.record_exception(exc)
        child.set_status(pt.StatusCode.ERROR, "charge failed")
    _end(child, start_ms + 5)
    root.set_status(pt.StatusCode.ERROR)
    _end(root, start_ms + 6)
    return _hex(root)


@pytest.fixture
def memory() -> Iterator[InMemoryExporter]:
    exporter = InMemoryExporter()
    pt.configure(service="shop", environment="test", exporters=[exporter], sample_rate=1.0, rollups=None)
    return exporter


def _archive(exporter: InMemoryExporter) -> Archive:
    pt.force_flush()
    return Archive.from_records(exporter.records)


# -- time ----------------------------------------------------------------------------------------
def test_parse_time_forms() -> None:
    now = 2_000_000_000 * 10**9
    assert parse_time("15m", now) == now - 15 * 60 * 10**9
    assert parse_time("24h", now) == now - 86400 * 10**9
    assert parse_time(" 7d ", now) == now - 7 * 86400 * 10**9
    assert parse_time("500ms", now) == now - 500 * MS
    assert parse_time(123) == 123
    assert parse_time(1.5) == 1_500_000_000
    assert (
        parse_time("2026-11-30T12:00:00Z")
        == int(datetime(2026, 11, 30, 12, tzinfo=timezone.utc).timestamp()) * 10**9
    )
    assert parse_time("2026-11-30") == parse_time(datetime(2026, 11, 30))
    assert parse_time("1796000000000000000") == 1796000000000000000


@pytest.mark.parametrize(
    "bad", ["yesterday", "", "-5m", "5x", True, None, -1, float("nan"), 10**30, [], "1969-01-01"]
)
def test_parse_time_refuses(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_time(bad)


# -- trees -----------------------------------------------------------------------------------------
def test_trace_tree_order_offsets_and_self_time(memory: InMemoryExporter) -> None:
    tid = make_shop_trace()
    view = _archive(memory).trace(tid)
    assert view is not None
    names = [(s["depth"], s["name"]) for s in view["spans"]]
    assert names[:3] == [(0, "GET /orders/{id}"), (1, "load_order"), (2, "SELECT items")]
    assert names[-3:] == [(1, "call pricing"), (1, "call stock"), (1, "render")]
    assert view["span_count"] == 11
    assert view["duration_ms"] == pytest.approx(100)
    by_name = {s["name"]: s for s in view["spans"]}
    assert by_name["render"]["offset_ms"] == pytest.approx(50)
    # handler 1-21 ms, six 2 ms queries: 20 - 12 = 8 ms of its own
    assert by_name["load_order"]["self_time_ms"] == pytest.approx(8, abs=0.01)
    # root 100 ms; children cover 1-21, 22-50 (two overlapping calls) and 50-95: 7 ms its own
    assert by_name["GET /orders/{id}"]["self_time_ms"] == pytest.approx(7, abs=0.01)
    assert by_name["GET /orders/{id}"]["child_count"] == 4
    assert view["missing_parents"] == []


def test_critical_path_bottleneck_and_n_plus_one(memory: InMemoryExporter) -> None:
    tid = make_shop_trace()
    result = _archive(memory).analyze(tid)
    assert result is not None
    path = [c["name"] for c in result["critical_path"]]
    assert "call pricing" in path
    assert "call stock" not in path
    assert path[0] == "GET /orders/{id}"
    assert "render" in path
    assert "load_order" in path
    assert result["bottleneck"]["name"] == "render"
    assert result["bottleneck"]["share"] == pytest.approx(0.45, abs=0.01)
    [n1] = result["n_plus_one"]
    view = _archive(memory).trace(tid)
    assert view is not None
    selects = {s["span_id"] for s in view["spans"] if s["name"] == "SELECT items"}
    assert set(n1["span_ids"]) == selects
    assert n1["count"] == 6
    assert n1["parent_name"] == "load_order"
    assert n1["statement"] == "SELECT * FROM items WHERE id = ?"  # literals folded into one shape
    assert result["db"]["queries"] == 6
    assert result["db"]["total_ms"] == pytest.approx(12, abs=0.01)
    ops = {(o["name"]): o for o in result["by_operation"]}
    assert ops["SELECT items"]["count"] == 6
    assert result["by_operation"][0]["name"] == "render"  # the most self time first
    assert _archive(memory).analyze(tid, n_plus_one_min=7)["n_plus_one"] == []  # type: ignore[index]


def test_errors_in_analysis_and_groups(memory: InMemoryExporter) -> None:
    t1 = make_error_trace("card 4000 declined for order 123", 200)
    t2 = make_error_trace("card 4000 declined for order 987", 300)
    t3 = make_error_trace("gateway 'eu-1' timeout", 400)
    archive = _archive(memory)
    result = archive.analyze(t1)
    assert result is not None
    [err] = [e for e in result["errors"] if e["name"] == "charge"]
    assert err["exception_type"] == "ValueError"
    assert err["exception_message"] == "card 4000 declined for order 123"
    groups = archive.errors()
    charge = [g for g in groups if g["name"] == "charge"]
    assert [g["count"] for g in charge] == [2, 1]
    assert charge[0]["message"] == "card <n> declined for order <n>"
    assert set(charge[0]["trace_ids"]) == {t1, t2}
    assert charge[1]["trace_ids"] == [t3]
    assert charge[0]["first_seen_unix_nano"] < charge[0]["last_seen_unix_nano"]
    [top] = archive.errors(limit=1)  # the three failed roots: no exception, no message
    assert (top["name"], top["count"], top["message"]) == ("POST /pay", 3, "")


# -- search --------------------------------------------------------------------------------------
def test_search_filters(memory: InMemoryExporter) -> None:
    shop = make_shop_trace()
    e1 = make_error_trace("boom", 200, service_attr="acme")
    e2 = make_error_trace("boom", 300, service_attr="other")
    a = _archive(memory)

    def ids(**kw: Any) -> list[str]:
        return [s["trace_id"] for s in a.search(**kw)]

    assert ids() == [e2, e1, shop]  # newest first
    assert ids(sort="duration")[0] == shop
    assert sorted(ids(sort="duration")[1:]) == sorted([e1, e2])
    assert ids(status="error") == [e2, e1]
    assert ids(name="render") == [shop]
    assert ids(name="SELECT *") == [shop]  # a glob
    assert ids(name="SELECT") == []  # not a glob: exact
    assert ids(min_duration_ms=40) == [shop]  # render (45 ms) and the root qualify
    assert ids(max_duration_ms=1) == []
    assert ids(attributes={"tenant": "acme"}) == [e1]
    assert ids(attributes={"db.system.name": "postgresql"}) == [shop]
    assert ids(service="nope") == []
    assert ids(since=T0 + 150 * MS) == [e2, e1]
    assert ids(since=T0 + 150 * MS, until=T0 + 250 * MS) == [e1]
    assert ids(limit=1) == [e2]
    [summary] = a.search(name="render")
    assert summary["span_count"] == 11
    assert summary["name"] == "GET /orders/{id}"
    assert summary["status"] == "unset"
    assert summary["complete"] is True
    assert summary["services"] == ["shop"]
    assert a.search(status="error")[0]["error_count"] == 2


@pytest.mark.parametrize(
    "kw",
    [
        {"status": "failed"},
        {"sort": "oldest"},
        {"limit": 0},
        {"limit": True},
        {"min_duration_ms": -1},
        {"min_duration_ms": float("nan")},
        {"min_duration_ms": "5"},
        {"service": ""},
        {"name": 3},
        {"attributes": ["a"]},
        {"since": "soon"},
        {"since": "1h", "until": "2h"},
    ],
)
def test_search_refuses_bad_parameters(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Archive.from_records([]).search(**kw)


@pytest.mark.parametrize("bad", ["abc", "0" * 31, "g" * 32, 42, None])
def test_trace_id_validated(bad: Any) -> None:
    with pytest.raises(ValueError):
        Archive.from_records([]).trace(bad)


def test_unknown_trace_is_none_and_upper_case_ids_work(memory: InMemoryExporter) -> None:
    tid = make_shop_trace()
    a = _archive(memory)
    assert a.trace("0" * 31 + "1") is None
    assert a.analyze("0" * 31 + "1") is None
    assert a.trace(tid.upper())["trace_id"] == tid  # type: ignore[index]


# -- odd archives ---------------------------------------------------------------------------------
def _rec(trace: str, span: str, parent: str | None, start: int, end: int, **kw: Any) -> dict[str, Any]:
    rec = {
        "schema": 1,
        "type": "span",
        "trace_id": trace,
        "span_id": span,
        "parent_span_id": parent,
        "name": kw.pop("name", span),
        "kind": "internal",
        "service": "svc",
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "duration_ms": (end - start) / MS,
        "status": "unset",
        "attributes": {},
        "events": [],
    }
    rec.update(kw)
    return rec


def test_missing_parents_cycles_and_duplicates() -> None:
    t = "ab" * 16
    records = [
        _rec(t, "a" * 16, "f" * 16, 0, 10 * MS),  # its parent was not kept
        _rec(t, "b" * 16, "c" * 16, 1 * MS, 2 * MS),  # b and c are each other's parent
        _rec(t, "c" * 16, "b" * 16, 1 * MS, 3 * MS),
        _rec(t, "d" * 16, "d" * 16, 4 * MS, 5 * MS),  # its own parent
        _rec(t, "a" * 16, "f" * 16, 0, 10 * MS),  # the same span from a second dataset
        {"type": "span", "trace_id": t},  # unusable
        "not a record",
    ]
    a = Archive.from_records(records)  # type: ignore[arg-type]
    view = a.trace(t)
    assert view is not None
    assert sorted(s["span_id"] for s in view["spans"]) == ["a" * 16, "b" * 16, "c" * 16, "d" * 16]
    assert view["missing_parents"] == ["f" * 16]
    assert a.read_stats["unusable_records"] == 2
    result = a.analyze(t)
    assert result is not None
    assert result["critical_path"][0]["span_id"] == "a" * 16
    assert a.search()[0]["complete"] is False


def test_deep_trace_has_no_recursion_limit() -> None:
    t = "cd" * 16
    records = [_rec(t, f"{i:016x}", f"{i - 1:016x}" if i else None, i, 10**9 - i) for i in range(5000)]
    a = Archive.from_records(records)
    view = a.trace(t)
    assert view is not None
    assert view["spans"][-1]["depth"] == 4999
    assert len(a.analyze(t)["critical_path"]) == 5000  # type: ignore[index]


def test_performance_from_spans_and_from_rollups(memory: InMemoryExporter) -> None:
    for i in range(20):
        s = _span("work", i * 10)
        _end(s, i * 10 + 1 + i)  # 1..20 ms
    rows = _archive(memory).performance()
    [work] = [r for r in rows if r["operation"] == "work"]
    assert work["source"] == "spans"
    assert work["count"] == 20
    assert work["p50_ms"] == pytest.approx(10, abs=0.01)
    assert work["p95_ms"] == pytest.approx(19, abs=0.01)
    assert work["max_ms"] == pytest.approx(20, abs=0.01)
    assert work["mean_ms"] == pytest.approx(10.5, abs=0.01)


def rollups_only(n: int) -> list[dict[str, Any]]:
    """The records of ``n`` unsampled ``op`` spans: rollups only (nothing sampled or kept)."""
    exporter = InMemoryExporter()
    pt.configure(
        service="shop", exporters=[exporter], sample_rate=0.0, keep_errors=False, slow_threshold_ms=None
    )
    for _ in range(n):
        with pt.span("op"):
            pass
    pt.shutdown()  # flushes the open rollup minute
    return list(exporter.records)


def test_performance_merges_rollup_sketches() -> None:
    records = rollups_only(200)
    rollups = [r for r in records if r["type"] == "rollup"]
    assert rollups
    assert not [r for r in records if r["type"] == "span"]
    # Two copies of each rollup as if two processes had sent them: counts add, quantiles hold.
    a = Archive.from_records(rollups + [{**r, "record_id": new_record_id()} for r in rollups])
    [op] = [r for r in a.performance() if r["operation"] == "op"]
    assert op["source"] == "rollups"
    assert op["count"] == 400
    single = Archive.from_records(rollups).performance()
    [one] = [r for r in single if r["operation"] == "op"]
    assert op["p99_ms"] == pytest.approx(one["p99_ms"])
    assert op["max_ms"] == one["max_ms"]


def test_overview_counts_spans_traces_and_audit(memory: InMemoryExporter) -> None:
    make_shop_trace()
    make_error_trace("boom")
    pt.force_flush()
    audits = [
        audit_record(
            service="shop",
            environment="test",
            category=category,
            action=f"GET {path}",
            target=path,
            outcome=outcome,
            time_unix_nano=T0,
        )
        for category, path, outcome in (("request", "/", "200"), ("security", "/admin", "403"))
    ]
    a = Archive.from_records(list(memory.records) + audits)
    ov = a.overview()
    assert ov["spans"] == 13
    assert ov["traces"] == 2
    assert ov["errors"] == 2
    assert ov["services"] == [{"service": "shop", "spans": 13, "errors": 2, "instances": 1}]
    assert ov["slowest"][0]["name"] == "GET /orders/{id}"
    assert ov["recent_errors"][0]["name"] == "POST /pay"
    assert ov["audit"] == {"records": 2, "security_events": 1, "by_outcome": {"200": 1, "403": 1}}
    assert a.overview(since=T0 + 150 * MS)["traces"] == 1


# -- reading archives from disk -----------------------------------------------------------------------
def test_local_archive_round_trip_and_time_pruning(tmp_path: Path) -> None:
    exporter = LocalArchiveExporter(tmp_path, max_interval_s=60)
    pt.configure(service="shop", exporters=[exporter], sample_rate=1.0)
    tid = make_shop_trace()
    pt.shutdown()
    archive = Archive(tmp_path)
    view = archive.trace(tid)
    assert view is not None
    assert view["span_count"] == 11
    assert archive.read_stats["objects"] >= 2
    assert archive.read_stats["bad_lines"] == 0
    assert next(r for r in archive.performance() if r["operation"] == "render")["source"] == "rollups"
    # An object whose name says it closed long before the window is not read at all.
    old = tmp_path / "traces" / "20200101" / "20200101T000000Z_20200101T000100Z_00aa.log.gz"
    old.parent.mkdir(parents=True)
    old.write_bytes(gzip.compress(json.dumps(_rec("ef" * 16, "1" * 16, None, 0, MS)).encode() + b"\n"))
    recent = Archive(tmp_path)
    assert "ef" * 16 not in [s["trace_id"] for s in recent.search(since=T0 - 10**9)]
    assert recent.read_stats["objects"] == archive.read_stats["objects"]
    assert recent.search(since=0)[-1]["trace_id"] == "ef" * 16  # a wider window reads it
    assert recent.read_stats["objects"] == archive.read_stats["objects"] + 1


def test_refresh_reads_objects_written_later(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    archive = Archive(tmp_path)
    assert archive.search() == []
    folder = tmp_path / "traces" / "20261130"
    folder.mkdir()
    (folder / "20261130T000000Z_20261130T000001Z_01.log.gz").write_bytes(
        gzip.compress(json.dumps(_rec("12" * 16, "1" * 16, None, 0, MS)).encode() + b"\n")
    )
    assert archive.search() == []  # cached until refreshed
    archive.refresh()
    assert [s["trace_id"] for s in archive.search()] == ["12" * 16]


def test_damaged_objects_keep_what_can_be_read(tmp_path: Path) -> None:
    good = [json.dumps(_rec("34" * 16, f"{i:016x}", None, i, i + MS)).encode() for i in range(3)]
    whole = gzip.compress(b"\n".join(good) + b"\n")
    torn = gzip.compress(b"\n".join(good) + b'\n{"type": "span", "trace_')
    records, bad = decode_object(torn)
    assert len(records) == 3
    assert bad == 1
    records, bad = decode_object(whole + gzip.compress(good[0] + b"\nnot json\n[1]\n"))  # two members
    assert len(records) == 4
    assert bad == 2
    records, bad = decode_object(whole[: len(whole) - 12])  # truncated gzip: the lines before stay
    assert bad >= 1
    assert len(records) >= 2
    records, bad = decode_object(b"\x00garbage")
    assert records == []
    assert bad == 1
    folder = tmp_path / "traces" / "20261130"
    folder.mkdir(parents=True)
    (folder / "20261130T000000Z_20261130T000001Z_02.log.gz").write_bytes(torn)
    (folder / "unnamed.log.gz").write_bytes(b"\x00garbage")
    archive = Archive(tmp_path)
    assert archive.search()[0]["span_count"] == 3
    assert archive.read_stats["bad_lines"] == 2
    assert archive.read_stats["objects"] == 2


def test_archive_arguments_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        Archive(tmp_path / "missing")
    with pytest.raises(TypeError):
        Archive(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Archive(LocalSource(tmp_path), prefixes={"traces": "t"})
    with pytest.raises(TypeError):
        LocalSource(tmp_path, datasets="traces")
    with pytest.raises(TypeError):
        Archive.from_records("records")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Archive.from_records([]).analyze("ab" * 16, n_plus_one_min=1)


def test_custom_prefixes(tmp_path: Path) -> None:
    exporter = LocalArchiveExporter(tmp_path, prefixes={"traces": "spans/v1"}, datasets=["traces"])
    pt.configure(service="shop", exporters=[exporter], sample_rate=1.0)
    tid = make_shop_trace()
    pt.shutdown()
    assert Archive(tmp_path).trace(tid) is None
    assert Archive(tmp_path, prefixes={"traces": "spans/v1"}).trace(tid) is not None


def test_queries_from_threads_agree(memory: InMemoryExporter) -> None:
    import threading

    for _ in range(5):
        make_shop_trace()
    a = _archive(memory)
    out: list[int] = []

    def run() -> None:
        for _ in range(20):
            out.append(len(a.search(limit=100)))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [5] * 80


def test_wall_clock_relative_window(memory: InMemoryExporter) -> None:
    with pt.span("now"):
        pass
    a = _archive(memory)
    assert [s["name"] for s in a.search(since="5m")] == ["now"]
    assert a.search(until="5m") == []
    assert time.time_ns() - a.search()[0]["start_time_unix_nano"] < 300 * 10**9


# -- hostile archives --------------------------------------------------------------------------------
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6,
)


def _or_odd(valid: Any) -> Any:
    return st.one_of(valid, _json_value)


_ids = st.sampled_from(["1" * 16, "2" * 16, "3" * 16])
_odd_span = st.fixed_dictionaries(
    {
        "type": st.just("span"),
        "trace_id": _or_odd(st.sampled_from(["ab" * 16, "cd" * 16])),
        "span_id": _or_odd(_ids),
        "parent_span_id": _or_odd(st.none() | _ids),
        "name": _or_odd(st.sampled_from(["a", "SELECT x"])),
        "kind": _json_value,
        "service": _or_odd(st.just("s")),
        "start_time_unix_nano": _or_odd(st.integers(0, 10**19)),
        "end_time_unix_nano": _or_odd(st.integers(0, 10**19)),
        "duration_ms": _json_value,
        "status": _or_odd(st.sampled_from(["error", "ok"])),
        "status_message": _json_value,
        "attributes": _or_odd(
            st.dictionaries(st.sampled_from(["db.query.text", "http.response.status_code", "k"]), _json_value)
        ),
        "events": _or_odd(
            st.lists(
                st.fixed_dictionaries({"name": st.just("exception"), "attributes": _json_value}), max_size=2
            )
        ),
    }
)
_odd_rollup = st.fixed_dictionaries(
    {
        "type": st.just("rollup"),
        "operation": _json_value,
        "minute_start_unix_nano": _or_odd(st.integers(0, 10**19)),
        "count": _or_odd(st.integers(0, 9)),
        "duration_sum_ms": _json_value,
        "sketch": _or_odd(st.fixed_dictionaries({"offset": _json_value, "counts": _json_value})),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_odd_span, _odd_span, _odd_rollup, _json_value), max_size=10))
def test_odd_archived_records_never_break_a_query(records: list[Any]) -> None:
    """Archives are read as found: any field of any type gives an answer, never an exception."""
    a = Archive.from_records([r for r in records if isinstance(r, dict)])
    a.search()
    a.search(status="error", name="a*", min_duration_ms=0, attributes={"k": "1"}, sort="duration")
    for t in ("ab" * 16, "cd" * 16):
        view = a.trace(t)
        a.analyze(t, n_plus_one_min=2)
        if view is not None:
            json.dumps(view)  # answers stay JSON-ready
    a.performance()
    a.errors()
    a.overview()


def test_database_queries_are_query_spans_not_transactions() -> None:
    t = "ef" * 16
    pg = {"db.system.name": "postgresql"}
    records = [
        _rec(t, "a" * 16, None, 0, 10 * MS),
        _rec(
            t,
            "b" * 16,
            "a" * 16,
            1 * MS,
            9 * MS,
            name="checkout",
            attributes={**pg, "db.operation.name": "TRANSACTION"},
        ),
        _rec(
            t,
            "c" * 16,
            "b" * 16,
            2 * MS,
            3 * MS,
            attributes={**pg, "db.query.text": "SELECT 1"},
            kind="client",
        ),
        _rec(
            t, "d" * 16, "b" * 16, 4 * MS, 6 * MS, name="SELECT carts", attributes=pg, kind="client"
        ),  # no text
    ]
    result = Archive.from_records(records).analyze(t)
    assert result is not None
    assert result["db"] == {"queries": 2, "total_ms": pytest.approx(3)}


def test_audit_records_filtered_newest_first() -> None:
    def rec(i: int, category: str, action: str, outcome: str, actor: str | None = None) -> dict[str, Any]:
        return audit_record(
            service="shop",
            environment="test",
            category=category,
            action=action,
            target="/x",
            outcome=outcome,
            actor=actor,
            time_unix_nano=T0 + i * MS,
            trace_id=i + 1,
        )

    a = Archive.from_records(
        [
            rec(1, "request", "POST /login", "401"),
            rec(2, "security", "POST /login", "bad_password"),
            rec(3, "request", "GET /admin", "403", actor="7"),
            rec(4, "security", "GET /admin", "403", actor="7"),
            rec(5, "data_access", "SELECT users", "success", actor="7"),
        ]
    )
    assert [r["time_unix_nano"] for r in a.audit()] == [T0 + i * MS for i in (5, 4, 3, 2, 1)]
    assert [r["outcome"] for r in a.audit(category="security")] == ["403", "bad_password"]
    assert [r["action"] for r in a.audit(action="POST *")] == ["POST /login", "POST /login"]
    assert len(a.audit(actor="7", outcome="403")) == 2
    assert [r["category"] for r in a.audit(trace_id=f"{4:032x}")] == ["request"]  # rec 3 has trace id 4
    assert len(a.audit(since=T0 + 3 * MS, until=T0 + 4 * MS)) == 2
    assert len(a.audit(limit=1)) == 1
    for bad in ({"category": ""}, {"trace_id": "nope"}, {"limit": 0}, {"since": "later"}):
        with pytest.raises(ValueError):
            a.audit(**bad)


def test_max_spans_keeps_the_newest_objects(tmp_path: Path) -> None:
    folder = tmp_path / "traces" / "20261130"
    folder.mkdir(parents=True)
    for hour in range(3):  # three objects, two one-span traces each, older to newer
        lines = [
            json.dumps(
                _rec(f"{hour:02d}{i:030x}", "1" * 16, None, hour * 3600 * 10**9 + i, hour * 3600 * 10**9 + MS)
            )
            for i in range(2)
        ]
        name = f"20261130T{hour:02d}0000Z_20261130T{hour:02d}0100Z_{hour:02x}.log.gz"
        (folder / name).write_bytes(gzip.compress("\n".join(lines).encode()))
    bounded = Archive(tmp_path, max_spans=3)
    found = {t["trace_id"][:2] for t in bounded.search(limit=100)}
    assert found == {"02", "01"}  # the newest object, then the next, then the bound was reached
    assert bounded.read_stats["skipped_objects"] == 1
    assert len(Archive(tmp_path).search(limit=100)) == 6
    with pytest.raises(ValueError):
        Archive(tmp_path, max_spans=0)


def test_trace_lookup_can_read_only_recent_objects(tmp_path: Path) -> None:
    folder = tmp_path / "traces" / "20200101"
    folder.mkdir(parents=True)
    old_trace = "0a" * 16
    (folder / "20200101T000000Z_20200101T000100Z_01.log.gz").write_bytes(
        gzip.compress(
            json.dumps(_rec(old_trace, "1" * 16, None, 1_577_836_800 * 10**9, 1_577_836_801 * 10**9)).encode()
        )
    )
    recent = Archive(tmp_path)
    assert recent.trace(old_trace, since="1h") is None
    assert recent.analyze(old_trace, since="1h") is None
    assert recent.read_stats["objects"] == 0  # the 2020 object was not even read
    assert recent.trace(old_trace) is not None  # without a window: everything
    assert recent.read_stats["objects"] == 1


def test_an_object_rewritten_in_place_replaces_its_old_records(tmp_path: Path) -> None:
    folder = tmp_path / "traces" / "20261130"
    folder.mkdir(parents=True)
    path = folder / "20261130T000000Z_20261130T000001Z_03.log.gz"

    def write(*traces: str) -> None:
        lines = [json.dumps(_rec(t, "1" * 16, None, T0, T0 + MS)) for t in traces]
        path.write_bytes(gzip.compress("\n".join(lines).encode()))

    write("a1" * 16)
    archive = Archive(tmp_path)
    assert [t["trace_id"] for t in archive.search()] == ["a1" * 16]
    write("b2" * 16, "c3" * 16)  # a new size: a new version of the same object
    archive.refresh()
    assert sorted(t["trace_id"] for t in archive.search()) == ["b2" * 16, "c3" * 16]


def test_a_torn_object_read_whole_later_is_not_counted_as_damaged(tmp_path: Path) -> None:
    """An object copied in by a non-atomic writer may be read half-written; once whole, the
    rebuild counts what it reads now: no bad lines left over, each object once."""
    folder = tmp_path / "traces" / "20261130"
    folder.mkdir(parents=True)
    path = folder / "20261130T000000Z_20261130T000001Z_04.log.gz"
    lines = "\n".join(json.dumps(_rec(f"{i + 1:032x}", "1" * 16, None, T0, T0 + MS)) for i in range(50))
    whole = gzip.compress(lines.encode())
    path.write_bytes(whole[: len(whole) // 2])
    archive = Archive(tmp_path)
    archive.search()
    assert archive.read_stats["bad_lines"] + archive.read_stats["unreadable_objects"] > 0
    path.write_bytes(whole)
    archive.refresh()
    assert len(archive.search(limit=100)) == 50
    assert (archive.read_stats["objects"], archive.read_stats["bad_lines"]) == (1, 0)
    assert archive.read_stats["unreadable_objects"] == 0


def test_a_file_deleted_while_the_archive_is_listed_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cleanup job may delete an object between the listing and its stat: not an error."""
    import os

    folder = tmp_path / "traces" / "20261130"
    folder.mkdir(parents=True)
    for n, trace in ((1, "a1"), (2, "b2")):
        line = json.dumps(_rec(trace * 16, "1" * 16, None, T0, T0 + MS))
        (folder / f"20261130T000000Z_20261130T000001Z_0{n}.log.gz").write_bytes(gzip.compress(line.encode()))
    real_scandir = os.scandir

    def scandir_then_delete(path: Any) -> Any:
        entries = list(real_scandir(path))
        (folder / "20261130T000000Z_20261130T000001Z_02.log.gz").unlink(missing_ok=True)
        return iter(entries)

    monkeypatch.setattr(os, "scandir", scandir_then_delete)
    assert [t["trace_id"] for t in Archive(tmp_path).search()] == ["a1" * 16]


def test_series_from_spans_and_from_rollups() -> None:
    minute = 60 * 10**9
    base = T0 // minute * minute
    spans = [
        _rec(
            f"{i + 1:032x}",
            "1" * 16,
            None,
            base + (i // 10) * minute + i,
            base + (i // 10) * minute + i + (i % 10 + 1) * MS,
            name="op",
        )
        for i in range(30)  # 10 spans in each of 3 minutes, 1..10 ms
    ]
    spans[25]["status"] = "error"
    a = Archive.from_records(spans)
    out = a.series(operation="op")
    assert out["source"] == "spans"
    assert out["step_s"] == 60
    assert [p["start_unix_nano"] for p in out["points"]] == [base, base + minute, base + 2 * minute]
    assert [p["count"] for p in out["points"]] == [10, 10, 10]
    assert [p["errors"] for p in out["points"]] == [0, 0, 1]
    assert out["points"][0]["p50_ms"] == pytest.approx(5, abs=0.01)
    assert out["points"][0]["max_ms"] == pytest.approx(10, abs=0.01)
    wide = a.series(step_s=180)
    assert sum(p["count"] for p in wide["points"]) == 30
    assert all(p["start_unix_nano"] % (180 * 10**9) == 0 for p in wide["points"])  # aligned steps
    assert len(wide["points"]) == len({(base + m * minute) // (180 * 10**9) for m in range(3)})
    assert a.series(operation="other")["points"] == []
    with pytest.raises(ValueError):
        a.series(step_s=0)

    rolled = Archive.from_records(rollups_only(50)).series(operation="op")
    assert rolled["source"] == "rollups"
    assert sum(p["count"] for p in rolled["points"]) == 50


# -- dependencies ---------------------------------------------------------------------------------
def _call(
    trace: str, span: str, parent: str | None, service: str, kind: str, ms: float, **kw: Any
) -> dict[str, Any]:
    start = int(trace[-2:], 16) * 1000 * MS + int(span[:2], 16) * MS  # distinct, ordered starts
    return _rec(trace, span, parent, start, start + int(ms * MS), service=service, kind=kind, **kw)


def _shop_calls(i: int, *, failing: bool = False) -> list[dict[str, Any]]:
    """web (entry) -> api over HTTP -> PostgreSQL; web -> store over gRPC; web -> a queue read by
    the worker; web -> an untraced payment host; api -> S3; an in-process nested server span."""
    t = f"{i:032x}"
    http = {"http.request.method": "GET", "server.address": "api", "server.port": 80}
    return [
        _call(t, "01" + "0" * 14, None, "web", "server", 50, attributes={"http.request.method": "GET"}),
        _call(
            t,
            "02" + "0" * 14,
            "01" + "0" * 14,
            "web",
            "client",
            20 + i,
            attributes=http,
            status="error" if failing else "unset",
        ),
        _call(
            t,
            "03" + "0" * 14,
            "02" + "0" * 14,
            "api",
            "server",
            18,
            attributes={"http.request.method": "GET"},
        ),
        _call(
            t,
            "04" + "0" * 14,
            "03" + "0" * 14,
            "api",
            "client",
            2,
            attributes={"db.system.name": "postgresql", "server.address": "db", "server.port": 5432},
        ),
        _call(
            t,
            "05" + "0" * 14,
            "03" + "0" * 14,
            "api",
            "client",
            3,
            attributes={
                "rpc.system": "aws-api",
                "rpc.service": "S3",
                "server.address": "s3.eu-west-1.amazonaws.com",
            },
        ),
        _call(
            t,
            "06" + "0" * 14,
            "01" + "0" * 14,
            "web",
            "client",
            4,
            attributes={"rpc.system": "grpc", "rpc.service": "pitches.v1.Store", "server.address": "store"},
        ),
        _call(t, "07" + "0" * 14, "06" + "0" * 14, "store", "server", 3, attributes={"rpc.system": "grpc"}),
        _call(
            t,
            "08" + "0" * 14,
            "01" + "0" * 14,
            "web",
            "producer",
            1,
            attributes={"messaging.system": "rabbitmq", "messaging.destination.name": "emails"},
        ),
        _call(
            t,
            "09" + "0" * 14,
            "08" + "0" * 14,
            "worker",
            "consumer",
            9,
            attributes={"messaging.system": "rabbitmq"},
        ),
        _call(
            t,
            "0a" + "0" * 14,
            "01" + "0" * 14,
            "web",
            "client",
            30,
            attributes={
                "url.full": "https://pay.example/charge",
                "server.address": "pay.example",
                "server.port": 443,
            },
        ),
        # a server span inside its own service (a sub-application): not a call
        _call(t, "0b" + "0" * 14, "03" + "0" * 14, "api", "server", 1),
    ]


def test_dependencies_map_who_calls_whom() -> None:
    records = [r for i in range(1, 11) for r in _shop_calls(i, failing=i <= 2)]
    a = Archive.from_records(records)
    rows = {(r["caller"], r["callee"]): r for r in a.dependencies()}
    assert set(rows) == {
        (None, "web"),
        ("web", "api"),
        ("api", "postgresql db:5432"),
        ("api", "aws S3"),
        ("web", "store"),
        ("web", "worker"),
        ("web", "pay.example:443"),
    }
    assert all(r["count"] == 10 for r in rows.values())
    web_api = rows[("web", "api")]
    assert (web_api["protocol"], web_api["traced"], web_api["errors"]) == ("http", True, 2)
    assert web_api["error_rate"] == 0.2
    # latencies as the caller saw them: the client spans' 21..30 ms, not the server's 18
    assert (web_api["p50_ms"], web_api["p95_ms"], web_api["max_ms"]) == (25.0, 30.0, 30.0)
    assert len(web_api["trace_ids"]) == 3
    assert rows[(None, "web")]["p50_ms"] == 50.0  # an entry: timed by its server span
    assert (rows[("web", "store")]["protocol"], rows[("web", "worker")]["protocol"]) == ("rpc", "messaging")
    assert rows[("api", "postgresql db:5432")]["protocol"] == "database"
    assert not rows[("api", "postgresql db:5432")]["traced"]
    assert not rows[("web", "pay.example:443")]["traced"]
    # busiest first, then by names; one service's edges, either end
    assert [(r["caller"], r["callee"]) for r in a.dependencies(service="api")] == [
        ("api", "aws S3"),
        ("api", "postgresql db:5432"),
        ("web", "api"),
    ]
    assert a.dependencies(service="nobody") == []


def test_dependencies_without_a_client_span_or_a_kept_caller() -> None:
    t = "cd" * 16
    records = [
        # api called by web, which propagated its context from an internal span (no client span)
        _call(t, "01" + "0" * 14, None, "web", "internal", 40),
        _call(t, "02" + "0" * 14, "01" + "0" * 14, "api", "server", 12),
        # a server span whose caller's span was not archived (sampled out elsewhere)
        _call(t, "03" + "0" * 14, "ee" * 8, "api", "server", 7),
        # a client span whose server answered after the window or is untraced: external
        _call(
            t, "04" + "0" * 14, "02" + "0" * 14, "api", "client", 5, attributes={"server.address": "10.0.0.9"}
        ),
        _call(t, "05" + "0" * 14, "02" + "0" * 14, "api", "client", 6),  # nothing says what: its name
    ]
    rows = {(r["caller"], r["callee"]): r for r in Archive.from_records(records).dependencies()}
    assert rows[("web", "api")]["p50_ms"] == 12.0
    assert rows[(None, "api")]["count"] == 1
    assert rows[("api", "10.0.0.9")]["protocol"] == "other"
    assert rows[("api", "05" + "0" * 14)]["traced"] is False
    assert len(rows) == 4


def test_dependencies_window_and_arguments() -> None:
    records = [r for i in range(1, 4) for r in _shop_calls(i)]
    a = Archive.from_records(records)
    first_trace_ends = 2 * 1000 * MS - 1
    rows = a.dependencies(until=first_trace_ends)
    assert {r["count"] for r in rows} == {1}
    with pytest.raises(ValueError, match="service"):
        a.dependencies(service="")


def test_logs_newest_first_with_and_without_a_trace() -> None:
    def line(t: int, body: str, level: int, trace: int = 0) -> dict[str, Any]:
        return app_log_record(
            time_unix_nano=T0 + t * MS, severity_number=level, severity_text=str(level), logger="app",
            body=body, service="svc", environment="test", trace_id=trace, span_id=trace,
        )  # fmt: skip

    a = Archive.from_records([line(1, "boot", 9), line(2, "disk low", 13, 0xAB), line(3, "crash", 17)])
    assert [r["body"] for r in a.logs()] == ["crash", "disk low", "boot"]
    assert [r["body"] for r in a.logs(level="WARNING")] == ["crash", "disk low"]
    assert [r["body"] for r in a.logs(limit=1)] == ["crash"]
    assert [r["body"] for r in a.logs(until=T0 + 2 * MS)] == ["disk low", "boot"]
    assert [r["body"] for r in a.logs(trace_id=f"{0xAB:032x}")] == ["disk low"]
    assert a.read_stats["unusable_records"] == 0
    with pytest.raises(ValueError, match="level"):
        a.logs(level=True)


def test_dependencies_estimate_every_call_from_the_rollups() -> None:
    """At a 25% sample rate with tail keeping (every error trace kept), the kept spans undercount
    the calls and overcount the errors; the rollups (every span) give the estimates back."""
    exporter = InMemoryExporter()
    pt.configure(service="web", environment="test", exporters=[exporter], sample_rate=0.25)
    requests, failing = 400, 40
    for i in range(requests):
        with pt.span("GET /pay", kind=pt.SpanKind.SERVER) as root:
            attrs = {"server.address": "pay.example", "server.port": 443}
            with pt.span("POST", kind=pt.SpanKind.CLIENT, attributes=attrs) as call:
                if i < failing:
                    call.set_status(pt.StatusCode.ERROR, "declined")
            if i < failing:
                root.set_status(pt.StatusCode.ERROR)
    rows = {(r["caller"], r["callee"]): r for r in _archive(exporter).dependencies()}
    entry, payments = rows[(None, "web")], rows[("web", "pay.example:443")]
    for row in (entry, payments):
        assert failing < row["count"] < requests  # kept: every error trace, ~1 in 4 of the rest
        assert row["errors"] == failing
        assert (row["estimated_calls"], row["estimated_errors"]) == (requests, failing)
    # without rollups there is nothing to estimate from
    kept_only = [r for r in exporter.records if r["type"] != "rollup"]
    [bare] = [r for r in Archive.from_records(kept_only).dependencies() if r["caller"] is None]
    assert (bare["estimated_calls"], bare["estimated_errors"]) == (None, None)


# -- compare ---------------------------------------------------------------------------------------
def test_compare_a_window_with_the_one_before() -> None:
    hour = 3600 * 10**9
    t0 = 1_900_000_000 * 10**9  # the window under study is [t0, t0 + 1h]; its baseline the hour before
    records = []

    def spans(name: str, start: int, ms: float, n: int, **kw: Any) -> None:
        for i in range(n):
            begin = start + i * 10**9
            tid = f"{len(records) + 1:032x}"
            records.append(_rec(tid, "a" * 16, None, begin, begin + int(ms * MS), name=name, **kw))

    spans("GET /pitches", t0 - hour + 60 * 10**9, 10, 20)  # baseline: 10 ms
    spans("GET /pitches", t0 + 60 * 10**9, 25, 20)  # now: 25 ms, 150% slower
    spans("SELECT pitches", t0 - hour + 60 * 10**9, 4, 10)
    spans("SELECT pitches", t0 + 60 * 10**9, 3, 10)  # a little faster
    spans("POST /pay", t0 + 60 * 10**9, 30, 5, status="error")  # new in this window
    spans("GET /legacy", t0 - hour + 60 * 10**9, 8, 3)  # gone
    spans("GET /pitches", t0 - 2 * hour, 999, 5)  # older than the baseline: not counted
    a = Archive.from_records(records)
    rows = a.compare(since=t0, until=t0 + hour)
    assert [r["operation"] for r in rows] == ["GET /pitches", "SELECT pitches", "POST /pay", "GET /legacy"]
    pitches, select, pay, legacy = rows
    assert (pitches["baseline_count"], pitches["count"]) == (20, 20)
    assert (pitches["baseline_p95_ms"], pitches["p95_ms"]) == (10.0, 25.0)
    assert pitches["p95_change"] == 1.5
    assert select["p95_change"] == -0.25
    assert (pay["count"], pay["baseline_count"], pay["p95_change"]) == (5, 0, None)
    assert pay["error_rate"] == 1.0
    assert pay["baseline_p95_ms"] is None
    assert (legacy["count"], legacy["baseline_count"], legacy["p95_ms"]) == (0, 3, None)
    assert {r["source"] for r in rows} == {"spans"}
    assert [r["operation"] for r in a.compare(since=t0, until=t0 + hour, service="nobody")] == []
    with pytest.raises(ValueError, match="since is required"):
        a.compare(since=None)
    with pytest.raises(ValueError, match="before since"):
        a.compare(since=t0, until=t0 - 1)


def test_overview_counts_each_services_processes() -> None:
    t = "ef" * 16

    def rec(span: str, service: str, instance: str | None) -> dict[str, Any]:
        resource = {"service.name": service} | ({"service.instance.id": instance} if instance else {})
        return _rec(t, span, None, 0, MS, service=service, resource=resource)

    records = [
        rec("a" * 16, "api", "i-1"),
        rec("b" * 16, "api", "i-2"),
        rec("c" * 16, "api", "i-1"),
        rec("d" * 16, "worker", None),  # an older SDK: no instance id
    ]
    services = {s["service"]: s for s in Archive.from_records(records).overview()["services"]}
    assert (services["api"]["spans"], services["api"]["instances"]) == (3, 2)
    assert services["worker"]["instances"] == 0


# -- regressions -----------------------------------------------------------------------------------
def _write_requests(root: Path, tag: str, n: int) -> list[str]:
    """``n`` requests of 3 spans, each with an audit record and a log line, written by the
    real LocalArchiveExporter (rollups too); their trace ids, oldest first."""
    exporter = LocalArchiveExporter(root)
    pt.configure(service="shop", environment="test", exporters=[exporter], sample_rate=1.0)
    handler = LogExportHandler()
    log = logging.getLogger(f"shop.{tag}")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    ids = []
    try:
        for i in range(n):
            with pt.span(f"GET /{tag}", kind=pt.SpanKind.SERVER) as root_span:
                with pt.span("SELECT orders", kind=pt.SpanKind.CLIENT):
                    pass
                with pt.span("render"):
                    pass
                log.warning("%s order %d", tag, i)
                pt.emit_audit(f"GET /{tag}", f"/{tag}", "200", actor=f"user{i}")
            ids.append(_hex(root_span))
    finally:
        log.removeHandler(handler)
    pt.shutdown()
    return ids


def test_max_spans_bounds_the_traces_and_refresh_reads_newer_ones(tmp_path: Path) -> None:
    old = _write_requests(tmp_path, "old", 3)
    time.sleep(1.1)  # object names have whole seconds: these sort after the first ones
    mid = _write_requests(tmp_path, "mid", 2)
    bounded = Archive(tmp_path, max_spans=6)
    assert {t["trace_id"] for t in bounded.search(limit=100)} == set(mid)
    assert bounded.read_stats["skipped_objects"] == 1  # the older traces object
    # The bound is on the spans: the other datasets are read whole.
    assert len(bounded.audit(limit=100)) == 5
    assert len(bounded.logs(limit=100)) == 5
    assert {r["source"] for r in bounded.performance()} == {"rollups"}
    bounded.refresh()  # nothing new: the skipped object is not counted again
    assert bounded.read_stats["skipped_objects"] == 1
    time.sleep(1.1)
    new = _write_requests(tmp_path, "new", 1)
    bounded.refresh()
    found = bounded.search(limit=100)
    # the newest trace is read; the oldest held one gives way to stay within the bound
    assert [t["trace_id"] for t in found] == [new[0], mid[1]]
    assert sum(t["span_count"] for t in found) <= 6
    assert bounded.trace(new[0]) is not None
    assert bounded.trace(mid[0]) is None
    assert bounded.read_stats["skipped_objects"] == 1
    assert len(bounded.audit(limit=100)) == 6
    assert len(Archive(tmp_path).search(limit=100)) == len(old + mid + new)


@pytest.mark.parametrize("digits", [309, 400, 5000])
def test_a_huge_relative_time_is_a_value_error(digits: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_time("9" * digits + "h")
    with pytest.raises(ValueError):
        Archive.from_records([]).search(since="9" * digits + "ms")
    with pytest.raises(ValueError):
        parse_duration_ms("9" * digits)


@pytest.mark.parametrize("text", ["\u00b2", "1\u00b2", "9" * 5000, "0" * 30 + "1"])
def test_a_time_of_odd_or_many_digits_gives_our_message(text: str) -> None:
    """Superscript digits pass str.isdigit() but not int(); 5,000 digits exceed int()'s limit:
    either way the message is ours, not Python's. Leading zeros are no reason to refuse."""
    if text.startswith("0"):
        assert parse_time(text) == 1
        return
    with pytest.raises(ValueError, match=r"^(not a time|time out of range)") as info:
        parse_time(text)
    assert "int()" not in str(info.value)
    assert "4300" not in str(info.value)


def _rollup(
    minute: int, sketch: dict[str, Any], lo: float = 1.0, hi: float = 1.0, n: int = 3
) -> dict[str, Any]:
    return {
        "schema": 1,
        "type": "rollup",
        "service": "svc",
        "environment": "t",
        "operation": "op",
        "kind": "internal",
        "minute_start_unix_nano": minute,
        "interval_s": 60,
        "count": n,
        "errors": 0,
        "duration_sum_ms": n * lo,
        "duration_min_ms": lo,
        "duration_max_ms": hi,
        "p50_ms": lo,
        "p95_ms": hi,
        "p99_ms": hi,
        "sketch": sketch,
    }


@pytest.mark.parametrize(
    "sketch",
    [
        {"kind": "ddsketch", "relative_accuracy": 0.01, "zero_count": 0, "offset": 100000, "counts": [3]},
        {
            "kind": "ddsketch",
            "relative_accuracy": 0.01,
            "zero_count": 0,
            "offset": 0,
            "counts": [float("inf")],
        },
    ],
)
def test_a_rollup_sketch_out_of_range_falls_back_to_the_spans(sketch: dict[str, Any]) -> None:
    minute = T0 // (60 * 10**9) * 60 * 10**9
    spans = [
        _rec(f"{i + 1:032x}", "1" * 16, None, minute + i, minute + i + 2 * MS, name="op") for i in range(4)
    ]
    a = Archive.from_records([*spans, _rollup(minute, sketch)])
    [row] = a.performance()
    assert (row["source"], row["count"]) == ("spans", 4)
    assert a.series(operation="op")["source"] == "spans"
    rows = a.compare(since=minute, until=minute + 60 * 10**9)
    assert [(r["source"], r["count"]) for r in rows] == [("spans", 4)]


def test_percentiles_merged_from_rollups_stay_within_min_and_max() -> None:
    from pitchey_trace._sketch import DurationSketch

    minute = 60 * 10**9
    sketch = DurationSketch()
    sketch.add(10.0, 50)
    assert sketch.quantile(0.5) != 10.0  # a bucket's value, within 1% of the durations
    records = [
        _rollup(T0 // minute * minute + m * minute, sketch.to_dict(), 10.0, 10.0, 50) for m in range(2)
    ]
    a = Archive.from_records(records)
    [row] = a.performance()
    assert row["source"] == "rollups"
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"]) == (10.0, 10.0, 10.0, 10.0)
    for point in a.series(operation="op")["points"]:
        assert (point["p50_ms"], point["p99_ms"]) == (10.0, 10.0)


def _failed(i: int, message: str, etype: str = "TimeoutError", **kw: Any) -> dict[str, Any]:
    events = [
        {
            "name": "exception",
            "time_unix_nano": T0 + i,
            "attributes": {"exception.type": etype, "exception.message": message},
        }
    ]
    return _rec(
        f"{i:032x}", f"{i:016x}", None, T0 + i, T0 + i + MS, name="call", status="error", events=events, **kw
    )


def test_error_groups_normalise_numbers_with_units_long_numbers_and_http_messages() -> None:
    pairs = [
        ("timed out after 3.5s", "timed out after 4.2s"),
        ("took 250ms", "took 300ms"),
        ("user 123456789012345 not found", "user 1234567890123456 not found"),
        ("HTTP 502 from upstream for order 1", "HTTP 502 from upstream for order 2"),
        ("<Pool object at 0x7f3a9c2b1d60> closed", "<Pool object at 0x7f3a9c2b5e80> closed"),
    ]
    records = [_failed(i + 1, m) for i, m in enumerate(m for pair in pairs for m in pair)]
    records.append(_failed(20, "HTTP 503 from upstream for order 1"))
    records.append(_failed(21, "job 4bf92f3577b34da6a3ce929d0e0e4736 failed"))
    records.append(_failed(22, "job 4bf92f3577b34da6a3ce929d0e0e4737 failed"))
    groups = {g["message"]: g["count"] for g in Archive.from_records(records).errors()}
    assert groups == {
        "timed out after <n>s": 2,
        "took <n>ms": 2,
        "user <n> not found": 2,
        "HTTP 502 from upstream for order <n>": 2,
        "HTTP 503 from upstream for order <n>": 1,  # another status: another group
        "<Pool object at <hex>> closed": 2,
        "job <hex> failed": 2,
    }


def test_error_groups_of_failed_responses_keep_their_status_apart() -> None:
    records = [
        _rec(
            f"{i:032x}",
            "1" * 16,
            None,
            T0 + i,
            T0 + i + MS,
            status="error",
            attributes={"http.response.status_code": code},
        )
        for i, code in enumerate([401, 403, 401], start=1)
    ]
    groups = {g["message"]: g["count"] for g in Archive.from_records(records).errors()}
    assert groups == {"HTTP 401": 2, "HTTP 403": 1}
