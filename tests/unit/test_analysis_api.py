"""The analysis HTTP API (pitchey_trace.analysis.api) in process, over httpx's ASGI transport,
on an archive of real spans recorded by the SDK (tests/support/analysis_data.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import CONTENT_SECURITY_POLICY, MAX_LIMIT, STATIC_DIR, create_app
from tests.support.analysis_data import (
    HOSTILE_CHILD,
    HOSTILE_NAME,
    HOSTILE_VALUE,
    STATEMENT,
    TraceData,
    make_traces,
)


def get(app: Any, url: str) -> httpx.Response:
    """One GET through the ASGI app (an app error comes back as its 500, as a server sends it)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(url)

    return asyncio.run(go())


class RecordingArchive(Archive):
    """An Archive that remembers the keyword arguments its search received."""

    calls: list[dict[str, Any]]

    def search(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(kwargs)
        return super().search(**kwargs)


@pytest.fixture(scope="module")
def data() -> TraceData:
    return make_traces()


@pytest.fixture(scope="module")
def archive(data: TraceData) -> Archive:
    return Archive.from_records(data.records)


@pytest.fixture(scope="module")
def app(archive: Archive) -> Any:
    return create_app(archive)


def get_json(app: Any, url: str, status: int = 200) -> Any:
    response = get(app, url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_overview_counts_every_span_trace_and_error(app: Any, data: TraceData) -> None:
    overview = get_json(app, "/api/overview")
    assert (overview["spans"], overview["traces"], overview["errors"]) == (16, 3, 1)
    assert {s["service"]: (s["spans"], s["errors"]) for s in overview["services"]} == {
        "shop-api": (15, 0),
        "payments": (1, 1),
    }
    assert [t["trace_id"] for t in overview["recent_errors"]] == [data.payment]
    assert overview["slowest"][0]["trace_id"] == data.orders


def test_search_lists_traces_newest_first_by_default(app: Any, data: TraceData) -> None:
    found = get_json(app, "/api/search")
    assert [t["trace_id"] for t in found] == [data.hostile, data.payment, data.orders]
    by_id = {t["trace_id"]: t for t in found}
    assert by_id[data.orders]["span_count"] == 11
    assert by_id[data.payment]["services"] == ["payments", "shop-api"]
    assert by_id[data.payment]["status"] == "error"
    longest = get_json(app, "/api/search?sort=duration&limit=1")
    assert [t["trace_id"] for t in longest] == [data.orders]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=payments", {"payment"}),
        ("status=error", {"payment"}),
        ("name=render", {"orders"}),
        ("min_duration_ms=100", {"orders"}),  # only the orders root lasts 120 ms
        ("max_duration_ms=3", {"hostile"}),  # only the hostile child is that short (2 ms)
        ("min_duration_ms=30&max_duration_ms=31&service=payments", {"payment"}),
        ("attr=db.query.text=SELECT 1", set()),
        ("attr=db.system.name=postgresql&attr=note=x", set()),  # both on one span, or no match
        ("service=&name=&status=&attr=&log=", {"orders", "payment", "hostile"}),  # empty form fields
        ("log=DECLINED for order", {"payment"}),  # a log line of the trace, in any case
        ("log=declined&service=shop-api", {"payment"}),  # the log line and the span may differ
        ("log=declined&name=render", set()),
        ("log=no such line", set()),
    ],
)
def test_search_filters(app: Any, data: TraceData, query: str, expected: set[str]) -> None:
    params = httpx.QueryParams([tuple(p.split("=", 1)) for p in query.split("&")])  # keys may repeat
    found = get_json(app, "/api/search?" + str(params))
    names = {"orders": data.orders, "payment": data.payment, "hostile": data.hostile}
    assert {t["trace_id"] for t in found} == {names[k] for k in expected}


def test_search_by_several_attributes_of_one_span(app: Any, data: TraceData) -> None:
    select = next(s for s in data.spans(data.orders) if s["name"] == "SELECT order_items")
    stored = select["attributes"]["db.query.text"]  # as the sanitizer left it (literals stripped)
    assert stored != STATEMENT
    assert stored.startswith("SELECT * FROM order_items")
    query = httpx.QueryParams([("attr", f"db.query.text={stored}"), ("attr", "db.system.name=postgresql")])
    assert [t["trace_id"] for t in get_json(app, f"/api/search?{query}")] == [data.orders]


def test_search_attribute_value_may_hold_equals_signs_and_hostile_text(app: Any, data: TraceData) -> None:
    found = get_json(app, "/api/search?" + str(httpx.QueryParams({"attr": f"note={HOSTILE_VALUE}"})))
    assert [t["trace_id"] for t in found] == [data.hostile]


def test_since_digits_are_unix_nanoseconds(app: Any, data: TraceData) -> None:
    # The payment trace starts at +1 s, the hostile one at +2 s: a bound at +1.5 s splits them.
    found = get_json(app, f"/api/search?since={data.start_ns + 1_500_000_000}")
    assert [t["trace_id"] for t in found] == [data.hostile]
    found = get_json(app, f"/api/search?until={data.start_ns + 1_500_000_000}")
    assert {t["trace_id"] for t in found} == {data.orders, data.payment}
    assert len(get_json(app, "/api/search?since=1h")) == 3  # the traces are a minute old


def test_only_given_parameters_reach_the_engine_and_limit_is_capped(data: TraceData) -> None:
    archive = RecordingArchive.from_records(data.records)
    assert isinstance(archive, RecordingArchive)
    archive.calls = []
    app = create_app(archive)
    get_json(app, "/api/search?service=&limit=")
    get_json(app, "/api/search?limit=50000&min_duration_ms=1.5&attr=a=b=c&status=ok")
    assert archive.calls == [
        {},
        {"limit": MAX_LIMIT, "min_duration_ms": 1.5, "attributes": {"a": "b=c"}, "status": "ok"},
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/search?limit=0", "limit"),
        ("/api/search?limit=abc", "limit"),
        ("/api/search?limit=2.5", "limit"),
        ("/api/search?min_duration_ms=fast", "min_duration_ms"),
        ("/api/search?max_duration_ms=nan", "max_duration_ms"),
        ("/api/search?min_duration_ms=-1", "min_duration_ms"),
        ("/api/search?min_duration_ms=1e400", "min_duration_ms"),
        ("/api/search?status=broken", "status"),
        ("/api/search?sort=random", "sort"),
        ("/api/search?attr=novalue", "attr"),
        ("/api/search?attr==value", "attr"),
        ("/api/search?since=yesterday", "time"),
        ("/api/search?since=1h&until=2h", "until"),
        ("/api/overview?since=soon", "time"),
        ("/api/performance?until=later", "time"),
        ("/api/errors?limit=-3", "limit"),
        ("/api/search?since=" + "9" * 309 + "h", "time"),
        ("/api/performance?since=" + "9" * 400 + "m", "time"),
        ("/api/compare?since=" + "9" * 309 + "d", "time"),
        ("/api/logs?until=" + "9" * 5000 + "ms", "time"),
        ("/api/traces/not-a-trace-id", "trace id"),
        ("/api/traces/" + "g" * 32 + "/analysis", "trace id"),
        # digits that str.isdigit() or \\d take but int() refuses or reads: ASCII only
        ("/api/series?step_s=%C2%B2", "step_s must be a whole number of seconds"),
        ("/api/series?step_s=%D9%A3", "step_s must be a whole number of seconds"),
        ("/api/search?limit=%D9%A3", "limit must be a whole number"),
        ("/api/search?since=%C2%B2", "not a time"),
        ("/api/traces/" + "0" * 32 + "?since=%D9%A3", "not a time"),
        # more digits than int() converts (4300)
        ("/api/series?step_s=" + "9" * 5000, "step_s must be a whole number of seconds from 1"),
        ("/api/search?limit=-" + "9" * 5000, "limit must be at least 1"),
        ("/api/search?since=" + "9" * 5000, "time out of range"),
        ("/api/logs?until=" + "9" * 25, "time out of range"),
        ("/api/audit?since=" + "9" * 5000, "time out of range"),
    ],
)
def test_bad_parameters_answer_400_with_a_message(app: Any, url: str, message: str) -> None:
    body = get_json(app, url, status=400)
    assert list(body) == ["error"]
    assert message in body["error"]
    for python in ("int()", "set_int_max_str_digits", "invalid literal"):  # never Python's own words
        assert python not in body["error"]


def test_whole_numbers_in_range(data: TraceData) -> None:
    archive = RecordingArchive.from_records(data.records)
    assert isinstance(archive, RecordingArchive)
    archive.calls = []
    app = create_app(archive)
    get_json(app, "/api/search?limit=" + "9" * 5000)  # more than 1000 is cut, however long
    get_json(app, "/api/search?limit=%2B0007")
    assert archive.calls == [{"limit": MAX_LIMIT}, {"limit": 7}]
    assert get_json(app, "/api/series?step_s=0060")["step_s"] == 60
    assert get_json(app, "/api/series?step_s=%2060%20")["step_s"] == 60  # stripped like every parameter
    assert get_json(app, "/api/search?since=" + "0" * 30 + "1")  # Unix ns with leading zeros
    for url in ("/api/series?step_s=", "/api/search?limit=-", "/api/search?since=", "/api/series?step_s=x"):
        assert len(get_json(app, url + "9" * 5000, status=400)["error"]) < 200  # not echoed whole


_PARAMS = (
    *("service", "name", "min_duration_ms", "max_duration_ms", "status", "attr", "since", "until"),
    *("sort", "limit", "category", "actor", "action", "outcome", "trace_id", "operation", "step_s"),
)


@settings(max_examples=150, deadline=None)
@given(
    endpoint=st.sampled_from(
        ["/api/search", "/api/overview", "/api/performance", "/api/errors", "/api/audit"]
    ),
    params=st.lists(st.tuples(st.sampled_from(_PARAMS), st.text(max_size=30)), max_size=4),
    trace_id=st.text(max_size=40),
)
def test_no_query_input_causes_a_server_error(
    app: Any, endpoint: str, params: list[tuple[str, str]], trace_id: str
) -> None:
    trace_url = "/api/traces/" + quote(trace_id, safe="")
    for url in (
        f"{endpoint}?{httpx.QueryParams(params)}",
        trace_url,
        f"{trace_url}?{httpx.QueryParams(params)}",
    ):
        response = get(app, url)
        assert response.status_code in (200, 400, 404), (url, response.text)
        assert response.headers["content-type"] == "application/json"


def test_trace_returns_the_tree_depth_first(app: Any, data: TraceData) -> None:
    view = get_json(app, f"/api/traces/{data.orders}")
    spans = view["spans"]
    assert view["span_count"] == len(spans) == 11
    assert view["missing_parents"] == []
    by_id = {s["span_id"]: s for s in spans}
    root = spans[0]
    assert (root["name"], root["parent_span_id"], root["depth"]) == ("GET /orders/{id}", None, 0)
    for span in spans[1:]:  # every parent is in the trace, one level up, and listed before
        parent = by_id[span["parent_span_id"]]
        assert span["depth"] == parent["depth"] + 1
        assert spans.index(parent) < spans.index(span)
    load = next(s for s in spans if s["name"] == "load_order")
    selects = [s for s in spans if s["name"] == "SELECT order_items"]
    assert len(selects) == 6
    assert {s["parent_span_id"] for s in selects} == {load["span_id"]}
    assert [s["offset_ms"] for s in selects] == [8.0, 16.0, 24.0, 32.0, 40.0, 48.0]
    assert load["events"][0]["name"] == "cache_miss"
    publish = next(s for s in spans if s["name"] == "publish_event")
    assert publish["on_critical_path"] is False
    assert root["on_critical_path"] is True


def test_trace_has_the_logs_logged_in_it(app: Any, data: TraceData) -> None:
    [log] = get_json(app, f"/api/traces/{data.payment}")["logs"]
    charge = next(s for s in data.spans(data.payment) if s["name"] == "POST /charge")
    assert (log["span_id"], log["offset_ms"], log["severity_text"]) == (charge["span_id"], 30.0, "ERROR")
    assert (log["logger"], log["body"], log["service"]) == (
        "payments.charge",
        "card declined for order [CARD]",
        "payments",
    )
    assert log["attributes"] == {"order.id": 4242}
    assert get_json(app, f"/api/traces/{data.orders}")["logs"] == []


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("", 1),
        ("level=ERROR", 1),
        ("level=17", 1),
        ("level=fatal", 0),
        ("text=CARD declined", 1),
        ("text=nothing like it", 0),
        ("service=payments", 1),
        ("service=shop-api", 0),
    ],
)
def test_logs_filters(app: Any, data: TraceData, query: str, count: int) -> None:
    found = get_json(app, "/api/logs?" + query)
    assert len(found) == count
    if found:
        assert (found[0]["trace_id"], found[0]["body"]) == (data.payment, "card declined for order [CARD]")


def test_logs_of_a_trace_and_bad_levels(app: Any, data: TraceData) -> None:
    assert len(get_json(app, f"/api/logs?trace_id={data.payment}")) == 1
    assert get_json(app, f"/api/logs?trace_id={data.orders}") == []
    assert "level must be" in get_json(app, "/api/logs?level=loud", status=400)["error"]
    assert "level must be" in get_json(app, "/api/logs?level=99", status=400)["error"]


def test_trace_id_in_upper_case_is_accepted(app: Any, data: TraceData) -> None:
    assert get_json(app, f"/api/traces/{data.payment.upper()}")["trace_id"] == data.payment


def test_analysis_finds_bottleneck_n_plus_one_and_errors(app: Any, data: TraceData) -> None:
    orders = get_json(app, f"/api/traces/{data.orders}/analysis")
    assert orders["bottleneck"]["name"] == "render"
    assert orders["bottleneck"]["share"] == pytest.approx(0.4)
    [group] = orders["n_plus_one"]
    assert (group["parent_name"], group["count"], group["total_ms"]) == ("load_order", 6, 48.0)
    assert orders["db"] == {"queries": 6, "total_ms": 48.0}
    assert orders["critical_path"][0]["name"] == "GET /orders/{id}"
    assert "publish_event" not in {s["name"] for s in orders["critical_path"]}
    payment = get_json(app, f"/api/traces/{data.payment}/analysis")
    [error] = payment["errors"]
    assert (error["name"], error["service"]) == ("POST /charge", "payments")
    assert error["exception_type"] == "ValueError"


def test_unknown_trace_and_route_answer_404_json(app: Any) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    for url in (f"/api/traces/{missing}", f"/api/traces/{missing}/analysis"):
        assert missing in get_json(app, url, status=404)["error"]
    assert get_json(app, "/api/nothing-here", status=404)["error"] == "Not Found"
    assert "not a time" in get_json(app, f"/api/traces/{missing}?since=soon", status=400)["error"]
    # A trailing slash, or an id holding an encoded "/", is not redirected elsewhere.
    for url in (f"/api/traces/{missing}/", "/api/traces/0%2F", "/api/search/"):
        assert get_json(app, url, status=404)["error"] == "Not Found"


def test_performance_and_errors(app: Any, data: TraceData) -> None:
    stats = get_json(app, "/api/performance")
    select = next(s for s in stats if s["operation"] == "SELECT order_items")
    assert (select["service"], select["count"], select["errors"]) == ("shop-api", 6, 0)
    assert select["p50_ms"] <= select["p95_ms"] <= select["p99_ms"]
    assert {s["service"] for s in get_json(app, "/api/performance?service=payments")} == {"payments"}
    [group] = get_json(app, "/api/errors")
    assert (group["service"], group["exception_type"], group["count"]) == ("payments", "ValueError", 1)
    assert group["trace_ids"] == [data.payment]
    assert get_json(app, "/api/errors?service=shop-api") == []


def test_hostile_text_is_escaped_in_the_json_bytes(app: Any, data: TraceData) -> None:
    for url in (f"/api/traces/{data.hostile}", "/api/search", "/api/overview"):
        response = get(app, url)
        assert response.status_code == 200
        for char in (b"<", b">", b"&"):
            assert char not in response.content
        assert response.headers["x-content-type-options"] == "nosniff"
    spans = json.loads(get(app, f"/api/traces/{data.hostile}").content)["spans"]
    assert [s["name"] for s in spans] == [HOSTILE_NAME, HOSTILE_CHILD]  # the same text, decoded
    assert spans[0]["attributes"]["note"] == HOSTILE_VALUE


def test_pages_are_static_html_with_a_strict_content_security_policy(app: Any, data: TraceData) -> None:
    for url, marker in (("/", 'data-page="index"'), (f"/traces/{data.orders}", 'data-page="trace"')):
        response = get(app, url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert marker in response.text
        assert data.orders not in response.text  # the page reads its trace id in the browser
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = get(app, f"/static/{name}")
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
        assert response.content == (STATIC_DIR / name).read_bytes()


def request(app: Any, method: str, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, url, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize("url", ["/api/search", "/", f"/traces/{'0' * 32}", "/healthz", "/static/app.js"])
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_other_methods_answer_405_json_with_allow(app: Any, url: str, method: str) -> None:
    response = request(app, method, url)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Method Not Allowed"}
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("value", ["bytes=abc", "bytes=999999-", "bytes=0-5", "bytes=0-1,5-9", "items=1-2"])
def test_static_files_are_answered_whole_whatever_the_range(app: Any, value: str) -> None:
    # The files are small: a Range header is ignored (RFC 9110 allows it) rather than answered
    # with a text/plain 400 or 416 unlike every other error.
    response = request(app, "GET", "/static/app.js", {"range": value, "if-range": "x"})
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / "app.js").read_bytes()
    assert "content-range" not in response.headers
    assert response.headers.get("accept-ranges") == "none"
    head = request(app, "HEAD", "/static/style.css", {"range": value})
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len((STATIC_DIR / "style.css").read_bytes()))


def test_page_code_never_builds_markup_from_strings() -> None:
    script = (STATIC_DIR / "app.js").read_text()
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "srcdoc")
    for sink in sinks:
        assert sink not in script, sink
    assert "textContent" in script
    assert "createElement" in script
    for page in ("index.html", "trace.html"):
        html = (STATIC_DIR / page).read_text()
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']
        assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers
        assert not re.search(r"\sstyle\s*=", html)  # inline styles would need 'unsafe-inline'
        assert not re.search(r"https?://", html)  # nothing from the network


def test_healthz(app: Any) -> None:
    assert get_json(app, "/healthz") == {"status": "ok"}


class BrokenArchive(Archive):
    def overview(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("disk on fire")


def test_engine_failure_is_a_logged_500(data: TraceData, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(BrokenArchive.from_records(data.records))
    with caplog.at_level(logging.ERROR, logger="pitchey_trace"):
        response = get(app, "/api/overview")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the server log)"}
    # sent from outside the middleware stack, yet with the same security headers as every answer
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert any("disk on fire" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


class CountingArchive(Archive):
    """Counts refresh() calls; fails them when told to."""

    refreshes = 0
    fail = False

    def refresh(self) -> None:
        self.refreshes += 1
        if self.fail:
            raise OSError("bucket unreachable")
        super().refresh()


@pytest.mark.parametrize(("interval", "expected"), [(0, 3), (3600, 0), (None, 0)])
def test_queries_refresh_the_archive_when_the_interval_passed(
    data: TraceData, interval: float | None, expected: int
) -> None:
    archive = CountingArchive.from_records(data.records)
    assert isinstance(archive, CountingArchive)
    app = create_app(archive, refresh_interval_s=interval)
    for url in ("/api/search", "/api/overview", "/healthz", f"/api/traces/{data.orders}"):
        get_json(app, url)
    assert archive.refreshes == expected  # /healthz does not touch the archive


def test_a_failed_refresh_is_logged_and_the_query_answers(
    data: TraceData, caplog: pytest.LogCaptureFixture
) -> None:
    archive = CountingArchive.from_records(data.records)
    assert isinstance(archive, CountingArchive)
    archive.fail = True
    app = create_app(archive, refresh_interval_s=0)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert len(get_json(app, "/api/search")) == 3
    assert archive.refreshes == 1
    assert any("re-reading" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("interval", [-1, float("nan"), float("inf")])
def test_refresh_interval_must_be_a_finite_number(archive: Archive, interval: float) -> None:
    with pytest.raises(ValueError, match="refresh_interval_s"):
        create_app(archive, refresh_interval_s=interval)


def test_audit_endpoint_filters_and_refuses_bad_input(data: TraceData) -> None:
    from tests.support.analysis_data import audit

    def rec(i: int, category: str, outcome: str) -> dict[str, Any]:
        return audit(data.start_ns + i, category, outcome, actor="<b>7</b>")

    app = create_app(Archive.from_records([rec(1, "request", "403"), rec(2, "security", "403")]))
    assert [r["category"] for r in get_json(app, "/api/audit")] == ["security", "request"]
    assert [r["category"] for r in get_json(app, "/api/audit?category=security&outcome=403")] == ["security"]
    assert get_json(app, "/api/audit?action=GET%20*&limit=1")[0]["actor"] == "<b>7</b>"
    assert b"<b>" not in get(app, "/api/audit").content  # escaped like every answer
    assert "trace id" in get_json(app, "/api/audit?trace_id=xyz", status=400)["error"]


def test_series_endpoint(app: Any) -> None:
    out = get_json(app, "/api/series?operation=SELECT%20order_items&step_s=3600")
    assert out["step_s"] == 3600
    assert sum(p["count"] for p in out["points"]) == 6
    assert "step_s" in get_json(app, "/api/series?step_s=soon", status=400)["error"]
    assert "step_s" in get_json(app, "/api/series?step_s=0", status=400)["error"]


def test_basic_auth_guards_everything_but_healthz(archive: Archive) -> None:
    import base64

    app = create_app(archive, basic_auth="ops:s3cret:with-colon")

    async def go(url: str, auth: str | None) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(url, headers=headers)

    for url in ("/", "/api/overview", "/static/app.js", "/traces/" + "0" * 32):
        denied = asyncio.run(go(url, None))
        assert denied.status_code == 401, url
        assert denied.headers["www-authenticate"].startswith("Basic ")
        assert "content-security-policy" in denied.headers
        assert asyncio.run(go(url, "ops:wrong")).status_code == 401
    assert asyncio.run(go("/api/overview", "ops:s3cret:with-colon")).status_code == 200
    assert asyncio.run(go("/healthz", None)).status_code == 200
    for bad in ("ops", ":pw", "ops:", 42):
        with pytest.raises(ValueError, match="basic_auth"):
            create_app(archive, basic_auth=bad)  # type: ignore[arg-type]


def test_basic_auth_scheme_in_any_case_and_several_headers_refused(archive: Archive) -> None:
    import base64

    app = create_app(archive, basic_auth="ops:pw")
    token = base64.b64encode(b"ops:pw").decode()

    async def go(*values: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/api/overview", headers=[("authorization", v) for v in values])
            return response.status_code

    for value in (
        f"Basic {token}",
        f"basic {token}",
        f"BASIC {token}",
        f"bAsIc   {token}",
        f"Basic\t{token} ",
    ):
        assert asyncio.run(go(value)) == 200, value
    wrong = base64.b64encode(b"ops:nope").decode()
    for values in (
        (f"Basic {token}", f"Basic {token}"),  # several: which one counts is ambiguous
        (f"Basic {token}", f"Basic {wrong}"),
        (f"Basic {wrong}", f"Basic {token}"),
        (f"Bearer {token}",),
        (f"Basic{token}",),
        ("Basic",),
        (f"Basic {wrong}",),
        (f"Basic {token} x",),
    ):
        assert asyncio.run(go(*values)) == 401, values


def test_dependencies(app: Any, data: TraceData) -> None:
    rows = get_json(app, "/api/dependencies")
    edges = {(r["caller"], r["callee"]): r for r in rows}
    call = edges[("shop-api", "payments")]
    assert (call["traced"], call["count"], call["p50_ms"]) == (True, 1, 40.0)  # the client span's 5-45 ms
    assert (call["estimated_calls"], call["estimated_errors"]) == (1, 0)  # every span kept: the same
    assert call["trace_ids"] == [data.payment]
    database = edges[("shop-api", "postgresql")]
    assert (database["protocol"], database["traced"], database["count"]) == ("database", False, 6)
    assert {r["callee"] for r in rows if r["caller"] is None} == {"shop-api"}
    assert get_json(app, "/api/dependencies?service=payments") == [call]
    assert "not a time" in get_json(app, "/api/dependencies?since=soon", status=400)["error"]


def test_compare(app: Any, data: TraceData) -> None:
    since = data.start_ns // (60 * 10**9) * 60 * 10**9  # (rollups are per minute)
    rows = get_json(app, f"/api/compare?since={since}&until={since + 10**12}")
    select = next(r for r in rows if r["operation"] == "SELECT order_items")
    assert (select["count"], select["baseline_count"], select["p95_change"]) == (6, 0, None)
    assert "since is required" in get_json(app, "/api/compare", status=400)["error"]


def test_a_malformed_rollup_sketch_is_answered_from_the_spans(data: TraceData) -> None:
    rollups = [r for r in data.records if r.get("type") == "rollup"]
    assert rollups
    bad = {**rollups[0], "sketch": {**rollups[0]["sketch"], "offset": 100000}}  # gamma**100000 overflows
    bad["record_id"] = "f" * 16  # (another record: a copy of rollups[0] would count once)
    app = create_app(Archive.from_records([*data.records, bad]))
    # (compare's window from the bad rollup's own minute, which may start before the data)
    since = min(data.start_ns, bad["minute_start_unix_nano"])
    for url in ("/api/performance", "/api/series", f"/api/compare?since={since}"):
        answer = get_json(app, url)
        rows = answer["points"] if url == "/api/series" else answer
        assert rows, url
        assert (answer if url == "/api/series" else rows[0])["source"] == "spans", url


def _documented_limit_defaults() -> dict[str, int]:
    """The default ``limit`` of each endpoint as docs/analysis.md states it."""
    docs = (Path(__file__).parents[2] / "docs" / "analysis.md").read_text(encoding="utf-8")
    text = " ".join(docs[docs.index("- `limit`:") :].split("\n- ")[0].split())
    found: dict[str, int] = {}
    for number, endpoints in re.findall(r"(\d+) for ((?:`/api/\w+`(?:,? and |, )?)+)", text):
        for endpoint in re.findall(r"`(/api/\w+)`", endpoints):
            found[endpoint] = int(number)
    return found


def test_default_limits_are_the_documented_ones(data: TraceData) -> None:
    from pitchey_trace.records import app_log_record
    from tests.support.analysis_data import audit

    start = data.start_ns
    records = [audit(start + i, "request", "200") for i in range(120)]
    records += [
        app_log_record(
            time_unix_nano=start + i,
            severity_number=9,
            severity_text="INFO",
            logger="shop",
            body=f"line {i}",
            service="shop-api",
            environment="test",
        )
        for i in range(120)
    ]
    for i in range(120):  # 120 one-span traces, each failing its own way
        tid, sid = f"{i + 1:032x}", f"{i + 1:016x}"
        records.append(
            {
                "type": "span",
                "trace_id": tid,
                "span_id": sid,
                "name": f"op{i}",
                "start_time_unix_nano": start + i,
                "end_time_unix_nano": start + i + 1000,
                "status": "error",
            }
        )
    app = create_app(Archive.from_records(records))
    documented = _documented_limit_defaults()
    assert set(documented) == {"/api/search", "/api/errors", "/api/audit", "/api/logs"}
    for endpoint, limit in documented.items():
        assert len(get_json(app, endpoint)) == limit, endpoint
