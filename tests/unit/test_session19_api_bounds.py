"""A trace's API answers are bounded (session 19): ``/api/traces/{id}`` holds at most ``limit``
spans (depth-first) and about MAX_TRACE_BYTES, with attribute values cut at MAX_VALUE_CHARS
and their full length in ``clipped``; ``/api/traces/{id}/spans/{span_id}`` answers one span
whole; ``/analysis`` cuts its lists and texts. Whole, a 10,000-span trace with 100 kB values
was a 1 GB answer."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from pitchey_trace.analysis import Archive, api
from pitchey_trace.analysis.api import create_app
from tests.unit.test_analysis_api import get, get_json

TRACE = "ab" * 16
T0 = time.time_ns() - 60 * 10**9


def span(i: int, parent: int | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": TRACE,
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None if parent is None else f"{parent + 1:016x}",
        "name": f"op {i}",
        "kind": "internal",
        "service": "svc",
        "environment": "test",
        "start_time_unix_nano": T0 + i * 1000,
        "end_time_unix_nano": T0 + i * 1000 + 10**6,
        "duration_ms": 1.0,
        "status": "ok",
        "status_message": "",
        "category": "fast",
        "attributes": {"i": i},
        "events": [],
        "links": [],
        "resource": {},
    }
    record.update(fields)
    return record


def tree(n: int, **fields: Any) -> list[dict[str, Any]]:
    """``n`` spans, span i the child of span (i - 1) // 2: a binary tree."""
    return [span(i, None if i == 0 else (i - 1) // 2, **fields) for i in range(n)]


def app_over(records: list[dict[str, Any]]) -> Any:
    return create_app(Archive.from_records(records), refresh_interval_s=None)


def test_limit_answers_the_first_spans_depth_first_and_says_the_trace_was_cut() -> None:
    app = app_over(tree(50))
    whole = get_json(app, f"/api/traces/{TRACE}")
    assert (whole["truncated"], whole["span_count"], len(whole["spans"])) == (False, 50, 50)
    assert whole["limits"] == {
        "spans": api.MAX_TRACE_SPANS,
        "bytes": api.MAX_TRACE_BYTES,
        "value_chars": api.MAX_VALUE_CHARS,
    }
    cut = get_json(app, f"/api/traces/{TRACE}?limit=10")
    assert (cut["truncated"], cut["span_count"], cut["limits"]["spans"]) == (True, 50, 10)
    assert [s["span_id"] for s in cut["spans"]] == [s["span_id"] for s in whole["spans"][:10]]
    answered = {s["span_id"] for s in cut["spans"]}
    assert all(s["parent_span_id"] in answered for s in cut["spans"][1:])  # a tree, no orphans
    # more than MAX_TRACE_SPANS (however long) is cut to it, as other limits are
    assert get_json(app, f"/api/traces/{TRACE}?limit=" + "9" * 5000)["limits"]["spans"] == api.MAX_TRACE_SPANS


def test_the_span_limit_applies_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_TRACE_SPANS", 7)
    view = get_json(app_over(tree(20)), f"/api/traces/{TRACE}?limit=100")
    assert (len(view["spans"]), view["span_count"], view["truncated"]) == (7, 20, True)


LONG = "x" * 10_000
EMOJI = "\U0001f600" * 5000  # 5000 characters, 10,000 UTF-16 units (what the page counts)


def hostile_records() -> list[dict[str, Any]]:
    records = tree(3)
    records[1]["attributes"] = {"big": LONG, "emoji": EMOJI, "list": ["y" * 100] * 100, "n": 5, "short": "ok"}
    records[1]["resource"] = {"host.name": LONG, "service.name": "svc"}
    records[1]["events"] = [{"name": "e", "time_unix_nano": T0 + 5, "attributes": {"msg": LONG, "k": 1}}]
    records[1]["links"] = [{"trace_id": "cd" * 16, "span_id": "1" * 16, "attributes": {"why": LONG}}]
    records[1]["status_message"] = LONG  # not an attribute: answered whole
    records.append(
        {
            "schema": 1,
            "type": "log",
            "time_unix_nano": T0 + 10,
            "trace_id": TRACE,
            "span_id": records[1]["span_id"],
            "service": "svc",
            "severity_number": 17,
            "severity_text": "ERROR",
            "logger": "app",
            "body": "boom",
            "attributes": {"payload": LONG},
        }
    )
    return records


def test_long_attribute_values_are_cut_with_their_full_length() -> None:
    records = hostile_records()
    archive = Archive.from_records(records)
    before = copy.deepcopy(archive.trace(TRACE))
    app = create_app(archive, refresh_interval_s=None)
    view = get_json(app, f"/api/traces/{TRACE}")
    s = next(s for s in view["spans"] if s["span_id"] == records[1]["span_id"])
    cap = api.MAX_VALUE_CHARS
    assert s["attributes"] == {
        "big": LONG[:cap],
        "emoji": EMOJI[:cap],
        "list": api._json.dumps(["y" * 100] * 100).decode()[:cap],  # a long list: its JSON, cut
        "n": 5,
        "short": "ok",
    }
    assert s["clipped"] == {
        "attributes": {"big": 10_000, "emoji": 10_000, "list": len(api._json.dumps(["y" * 100] * 100))},
        "resource": {"host.name": 10_000},
    }
    assert s["resource"] == {"host.name": LONG[:cap], "service.name": "svc"}
    assert s["events"] == [
        {
            "name": "e",
            "time_unix_nano": T0 + 5,
            "attributes": {"msg": LONG[:cap], "k": 1},
            "clipped": {"attributes": {"msg": 10_000}},
        }
    ]
    assert s["links"][0]["attributes"] == {"why": LONG[:cap]}
    assert s["links"][0]["clipped"] == {"attributes": {"why": 10_000}}
    assert s["status_message"] == LONG
    [log] = view["logs"]
    assert (log["attributes"], log["clipped"]) == (
        {"payload": LONG[:cap]},
        {"attributes": {"payload": 10_000}},
    )
    assert (view["log_count"], view["truncated"]) == (1, False)
    assert all("clipped" not in x for x in view["spans"] if x["span_id"] != s["span_id"])
    # the engine's own records were not changed by the cutting
    assert archive.trace(TRACE) == before

    # the span's own answer holds every value whole, span ids in any case
    whole = get_json(app, f"/api/traces/{TRACE}/spans/{records[1]['span_id'].upper()}")
    assert whole == before["spans"][1]
    assert whole["attributes"]["big"] == LONG
    assert whole["events"][0]["attributes"]["msg"] == LONG
    assert "clipped" not in whole


def test_the_answer_stays_within_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_TRACE_BYTES", 60_000)
    records = tree(100, attributes={"v": "z" * 3000})
    records += [
        {"schema": 1, "type": "log", "time_unix_nano": T0 + i, "trace_id": TRACE, "span_id": None,
         "service": "svc", "severity_number": 9, "severity_text": "INFO", "logger": "app",
         "body": "line", "attributes": {}}
        for i in range(5)
    ]  # fmt: skip
    response = get(app_over(records), f"/api/traces/{TRACE}")
    assert response.status_code == 200
    assert len(response.content) <= 60_000 + 2000  # (the budget counts spans and log lines)
    # (no log line after the spans were cut, however short: the answer is a prefix)
    view = response.json()
    assert 10 <= len(view["spans"]) < 100
    assert (view["span_count"], view["truncated"], view["log_count"], view["logs"]) == (100, True, 5, [])
    assert view["limits"]["bytes"] == 60_000

    # a first span bigger than the budget is still answered: the page has its root
    monkeypatch.setattr(api, "MAX_TRACE_BYTES", 100)
    view = get_json(app_over(records), f"/api/traces/{TRACE}")
    assert [s["name"] for s in view["spans"]] == ["op 0"]


def test_analysis_cuts_its_lists_and_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [span(i, None if i == 0 else i - 1) for i in range(12)]  # a chain: all critical
    records[3].update(status="error", status_message="m" * 5000, name="n" * 3000)
    monkeypatch.setattr(api, "MAX_TRACE_SPANS", 5)
    result = get_json(app_over(records), f"/api/traces/{TRACE}/analysis")
    assert result["truncated"] is True
    assert len(result["critical_path"]) == 5
    assert len(result["by_operation"]) == 5
    [error] = result["errors"]
    cap = api.MAX_ANALYSIS_TEXT
    assert (error["name"], error["status_message"], error["message"]) == ("n" * cap, "m" * cap, "m" * cap)
    assert error["clipped"] == {"name": 3000, "status_message": 5000, "message": 5000}
    path_names = [c["name"] for c in result["critical_path"]]
    assert path_names[3] == "n" * cap
    assert result["critical_path"][3]["clipped"] == {"name": 3000}

    monkeypatch.setattr(api, "MAX_TRACE_SPANS", 10_000)
    assert get_json(app_over(records), f"/api/traces/{TRACE}/analysis")["truncated"] is False


def test_n_plus_one_span_ids_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    query = {"db.system.name": "postgresql", "db.query.text": "SELECT 1"}
    records = [span(0, None)] + [
        span(i, 0, name="SELECT", kind="client", attributes=query) for i in range(1, 9)
    ]
    monkeypatch.setattr(api, "MAX_TRACE_SPANS", 6)
    [group] = get_json(app_over(records), f"/api/traces/{TRACE}/analysis")["n_plus_one"]
    assert (group["count"], len(group["span_ids"])) == (8, 6)


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        (f"/api/traces/{TRACE}?limit=0", 400, "limit must be at least 1"),
        (f"/api/traces/{TRACE}?limit=abc", 400, "limit must be a whole number"),
        (f"/api/traces/{TRACE}?limit=2.5", 400, "limit must be a whole number"),
        (f"/api/traces/{TRACE}?limit=%D9%A3", 400, "limit must be a whole number"),
        (f"/api/traces/{TRACE}?limit=5&limit=6", 400, "given more than once"),
        (f"/api/traces/{TRACE}/analysis?limit=5", 400, "unknown parameter"),
        (f"/api/traces/{TRACE}/spans/xyz", 400, "span id must be 16 hex characters"),
        (f"/api/traces/{TRACE}/spans/{'g' * 16}", 400, "span id must be 16 hex characters"),
        (f"/api/traces/{TRACE}/spans/{'1' * 16}?limit=1", 400, "unknown parameter"),
        (f"/api/traces/{TRACE}/spans/{'1' * 16}?since=soon", 400, "time"),
        (f"/api/traces/not-a-trace/spans/{'1' * 16}", 400, "trace id"),
        (f"/api/traces/{TRACE}/spans/{'f' * 16}", 404, f"span {'f' * 16} is not in trace {TRACE}"),
        (f"/api/traces/{'0' * 32}/spans/{'1' * 16}", 404, "is not in the archive"),
    ],
)
def test_bad_trace_parameters_and_unknown_spans(url: str, status: int, message: str) -> None:
    body = get_json(app_over(tree(3)), url, status=status)
    assert list(body) == ["error"]
    assert message in body["error"]
