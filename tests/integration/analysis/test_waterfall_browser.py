"""The pages in a real browser: headless Chromium loads them from the uvicorn server, runs
their script, and the test reads the rendered DOM (``--dump-dom``).

Chromium is a Debian package that scripts/bootstrap.sh installs; a machine without it fails
these tests (they are not skipped)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from tests.integration.analysis.conftest import serve
from tests.support.analysis_data import HOSTILE_CHILD, HOSTILE_NAME, HOSTILE_VALUE, TraceData

pytestmark = pytest.mark.integration

FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    # Virtual time runs until the page is idle (its fetches answered) or 10 s of page time.
    "--virtual-time-budget=10000",
]


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(
            "chromium is not installed: run scripts/bootstrap.sh as root (or apt-get install chromium)"
        )
    return path


@dataclass
class Node:
    """An element of the rendered page."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, predicate: Callable[[Node], bool]) -> list[Node]:
        return [n for n in self.iter() if predicate(n)]

    def by_id(self, element_id: str) -> Node:
        [node] = self.find_all(lambda n: n.attrs.get("id") == element_id)
        return node

    def by_class(self, name: str) -> list[Node]:
        return self.find_all(lambda n: name in n.classes)

    def by_tag(self, tag: str) -> list[Node]:
        return self.find_all(lambda n: n.tag == tag)


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # text comes back decoded, as the user reads it
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def render(url: str, profile: Path) -> Node:
    """Load ``url`` in headless Chromium and return the DOM after the page's script ran."""
    proc = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    builder = _TreeBuilder()
    builder.feed(proc.stdout)
    builder.close()
    dom = builder.root
    [body] = dom.by_tag("body")
    assert body.attrs.get("data-ready") == "true", "the page script did not finish rendering"
    return dom


def span_rows(dom: Node) -> list[Node]:
    return dom.find_all(lambda n: "span-row" in n.classes)


def row_name(row: Node) -> str:
    [name] = row.by_class("span-name")
    return name.text()


def percent(style: str, prop: str) -> float:
    match = re.search(rf"(?:^|;)\s*{prop}:\s*([0-9.e+-]+)%", style)
    assert match, f"{prop} not in style {style!r}"
    return float(match.group(1))


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "chromium-profile"


def test_waterfall_shows_one_row_per_span_in_tree_order(
    server: str, traces: TraceData, profile: Path
) -> None:
    view = httpx.get(f"{server}/api/traces/{traces.orders}", timeout=10).json()
    analysis = httpx.get(f"{server}/api/traces/{traces.orders}/analysis", timeout=10).json()
    dom = render(f"{server}/traces/{traces.orders}", profile)

    rows = span_rows(dom)
    assert [r.attrs["data-span-id"] for r in rows] == [s["span_id"] for s in view["spans"]]
    assert [row_name(r) for r in rows] == [s["name"] for s in view["spans"]]
    assert [int(r.attrs["data-depth"]) for r in rows] == [s["depth"] for s in view["spans"]]
    assert [row_name(r) for r in rows if r.attrs["data-depth"] == "2"] == ["SELECT order_items"] * 6

    # Bars sit at offset/duration of the 120 ms trace: render runs 70-118 ms.
    by_name = {row_name(r): r for r in rows}
    [bar] = by_name["render"].by_class("bar")
    assert percent(bar.attrs["style"], "left") == pytest.approx(70 / 120 * 100, abs=0.01)
    assert percent(bar.attrs["style"], "width") == pytest.approx(48 / 120 * 100, abs=0.01)
    [root_bar] = by_name["GET /orders/{id}"].by_class("bar")
    assert percent(root_bar.attrs["style"], "left") == 0
    assert percent(root_bar.attrs["style"], "width") == pytest.approx(100)

    critical = {r.attrs["data-span-id"] for r in rows if "critical" in r.classes}
    assert critical == {s["span_id"] for s in view["spans"] if s["on_critical_path"]}
    assert "critical" not in by_name["publish_event"].classes
    [bottleneck] = [r for r in rows if "bottleneck" in r.classes]
    assert bottleneck.attrs["data-span-id"] == analysis["bottleneck"]["span_id"]
    assert row_name(bottleneck) == "render"
    assert [b.text() for b in bottleneck.by_class("badge")] == ["bottleneck"]
    callout = dom.by_id("bottleneck").text()
    assert "render" in callout
    assert "40.0%" in callout

    [group] = dom.by_class("n-plus-one-group")
    assert group.by_class("n-count")[0].text() == "6\N{MULTIPLICATION SIGN}"
    assert group.by_class("statement")[0].text().startswith("SELECT * FROM order_items")
    assert "load_order" in group.text()
    assert sum("repeated" in r.classes for r in rows) == 6  # the group's rows are marked too
    assert not [r for r in rows if "error" in r.classes]


def test_error_span_is_marked(server: str, traces: TraceData, profile: Path) -> None:
    dom = render(f"{server}/traces/{traces.payment}", profile)
    rows = span_rows(dom)
    assert [row_name(r) for r in rows] == ["POST /pay", "call payments", "POST /charge"]
    marked = [row_name(r) for r in rows if "error" in r.classes]
    assert marked == ["POST /charge"]
    assert [b.text() for b in rows[2].by_class("error-badge")] == ["error"]
    [error] = dom.by_class("trace-error")
    assert "ValueError: card declined for order 4242" in error.text()
    assert "payments, shop-api" in dom.by_id("summary").text()
    # the payments service's error log, shipped with its trace, under the waterfall
    assert not dom.by_id("logs-section").attrs.get("hidden")
    [log_row] = dom.by_id("trace-logs").by_tag("tr")[1:]
    charge = next(s for s in traces.spans(traces.payment) if s["name"] == "POST /charge")
    assert log_row.attrs["data-span-id"] == charge["span_id"]
    assert "has-errors" in log_row.classes
    cells = [td.text().strip() for td in log_row.by_tag("td")]
    assert cells == ["30.0 ms", "ERROR", "payments.charge", "card declined for order [CARD]"]


def test_clicked_span_details_show_attributes_and_events(
    server: str, traces: TraceData, profile: Path
) -> None:
    load = next(s for s in traces.spans(traces.orders) if s["name"] == "load_order")
    # The page selects the span named in the address, as a click does (and writes the address).
    dom = render(f"{server}/traces/{traces.orders}#span={load['span_id']}", profile)
    [selected] = [r for r in span_rows(dom) if "selected" in r.classes]
    assert selected.attrs["data-span-id"] == load["span_id"]
    details = dom.by_id("details")
    assert details.by_class("details-name")[0].text() == "load_order"
    [attributes] = details.by_class("span-attributes")
    pairs = [tuple(c.text() for c in tr.children if isinstance(c, Node)) for tr in attributes.by_tag("tr")]
    assert pairs == [("order.id", "17")]
    [event] = details.by_class("event")
    assert event.by_class("event-name")[0].text() == "cache_miss"
    assert event.by_class("event-time")[0].text().strip() == "+7.0 ms"
    assert "order:17" in event.text()


def test_hostile_names_render_as_text(server: str, traces: TraceData, profile: Path) -> None:
    root = next(s for s in traces.spans(traces.hostile) if s["parent_span_id"] is None)
    dom = render(f"{server}/traces/{traces.hostile}#span={root['span_id']}", profile)
    assert [row_name(r) for r in span_rows(dom)] == [HOSTILE_NAME, HOSTILE_CHILD]
    assert not dom.find_all(lambda n: n.tag in ("img", "b"))  # nothing the names spelled became markup
    scripts = dom.by_tag("script")
    assert [s.attrs.get("src") for s in scripts] == ["/static/app.js"]
    [title] = dom.by_tag("title")
    assert "owned" not in title.text()
    assert title.text().startswith("Trace ")
    assert HOSTILE_VALUE in dom.by_id("details").by_class("span-attributes")[0].text()
    assert HOSTILE_NAME in dom.by_id("bottleneck").text()


def test_unknown_trace_says_so(server: str, profile: Path) -> None:
    missing = "0123456789abcdef0123456789abcdef"
    dom = render(f"{server}/traces/{missing}", profile)
    assert not span_rows(dom)
    assert f"Trace {missing} is not in the archive." in dom.by_id("message").text()


def links_to_traces(table: Node) -> list[str]:
    return [a.attrs["href"] for a in table.by_tag("a")]


def test_overview_page_lists_traces_performance_and_errors(
    server: str, traces: TraceData, profile: Path
) -> None:
    dom = render(f"{server}/", profile)
    results = dom.by_id("results")
    assert links_to_traces(results) == [
        f"/traces/{t}" for t in (traces.hostile, traces.payment, traces.orders)
    ]
    assert HOSTILE_NAME in results.text()
    assert not dom.by_tag("img")
    [card] = [c for c in dom.by_class("card") if c.by_class("card-label")[0].text() == "Traces"]
    assert card.by_class("card-value")[0].text() == "3"

    services = {
        r.by_tag("td")[0].text(): r.by_tag("td")[3].text() for r in dom.by_id("services").by_tag("tr")[1:]
    }
    assert services == {"shop-api": "1", "payments": "1"}  # processes, by service.instance.id
    performance_rows = dom.by_id("performance-table").by_tag("tr")[1:]
    operations = {tuple(td.text() for td in r.by_tag("td"))[1:4] for r in performance_rows}
    assert ("SELECT order_items", "client", "6") in operations
    errors = dom.by_id("errors-table")
    assert "ValueError" in errors.text()
    assert links_to_traces(errors) == [f"/traces/{traces.payment}"]
    edges = {
        tuple(td.text() for td in r.by_tag("td"))[:5]: r
        for r in dom.by_id("dependencies-table").by_tag("tr")[1:]
    }
    payments = ("shop-api", "payments", "other", "1", "1")  # calls (every one), kept
    assert links_to_traces(edges[payments]) == [f"/traces/{traces.payment}"]
    assert ("shop-api", "postgresql (untraced)", "database", "6", "6") in edges
    # the payments service's shipped ERROR log line, linked to its trace
    error_logs = dom.by_id("error-logs-table")
    [row] = error_logs.by_tag("tr")[1:]
    assert [td.text().strip() for td in row.by_tag("td")][1:4] == [
        "payments",
        "payments.charge",
        "card declined for order [CARD]",
    ]
    assert links_to_traces(error_logs) == [f"/traces/{traces.payment}"]
    assert dom.by_id("error-logs-empty").attrs.get("hidden") is not None


def test_search_form_parameters_in_the_address_drive_the_results(
    server: str, traces: TraceData, profile: Path
) -> None:
    select = next(s for s in traces.spans(traces.orders) if s["name"] == "SELECT order_items")
    query = httpx.QueryParams(
        [("min_duration_ms", "5"), ("attr", f"db.query.text={select['attributes']['db.query.text']}")]
    )
    dom = render(f"{server}/?{query}", profile)
    assert links_to_traces(dom.by_id("results")) == [f"/traces/{traces.orders}"]
    form = dom.by_id("search-form")
    [textarea] = form.by_tag("textarea")
    assert textarea.attrs.get("name") == "attr"

    dom = render(f"{server}/?status=error", profile)
    assert links_to_traces(dom.by_id("results")) == [f"/traces/{traces.payment}"]
    assert not dom.by_id("message").text()

    # by the words of a log line logged in the trace (the form has the field)
    dom = render(f"{server}/?" + str(httpx.QueryParams({"log": "card declined"})), profile)
    assert links_to_traces(dom.by_id("results")) == [f"/traces/{traces.payment}"]
    assert [i for i in dom.by_id("search-form").by_tag("input") if i.attrs.get("name") == "log"]


def test_a_bad_search_shows_the_api_message(server: str, profile: Path) -> None:
    dom = render(f"{server}/?min_duration_ms=slow", profile)
    assert "min_duration_ms must be a number" in dom.by_id("message").text()


def test_overview_page_lists_security_events(traces: TraceData, profile: Path) -> None:
    from tests.support.analysis_data import audit

    events = [
        audit(traces.start_ns + i, category, outcome, actor=HOSTILE_NAME, trace_id=int(traces.orders, 16))
        for i, (category, outcome) in enumerate(
            [("security", "403"), ("request", "200"), ("security", "429")]
        )
    ]
    with serve(create_app(Archive.from_records(traces.records + events))) as url:
        dom = render(f"{url}/", profile)
    rows = dom.by_id("security-table").by_tag("tr")[1:]
    assert [r.by_tag("td")[4].text() for r in rows] == ["429", "403"]  # security only, newest first
    assert rows[0].by_tag("td")[1].text() == HOSTILE_NAME  # shown as text
    assert not dom.by_tag("img")
    assert links_to_traces(dom.by_id("security-table")) == [f"/traces/{traces.orders}"] * 2
    assert "hidden" in dom.by_id("security-empty").attrs  # the "no event" note stays hidden


def test_overview_page_draws_latency_over_time(server: str, profile: Path) -> None:
    series = httpx.get(f"{server}/api/series", timeout=10).json()
    assert series["points"]
    dom = render(f"{server}/", profile)
    chart = dom.by_id("latency-chart")
    lines = chart.by_tag("polyline")
    assert sorted(line.attrs["class"] for line in lines) == ["p50", "p95", "p99"]
    for line in lines:
        assert len(line.attrs["points"].split()) == len(series["points"])
        assert line.attrs["data-points"] == str(len(series["points"]))
    options = [o.text() for o in dom.by_id("latency-operation").by_tag("option")]
    assert options[0] == "all operations"
    assert "SELECT order_items" in options
    assert f"{sum(p['count'] for p in series['points'])} spans" in dom.by_id("latency-legend").text()


def test_pages_work_behind_basic_authentication(traces: TraceData, profile: Path) -> None:
    with serve(create_app(Archive.from_records(traces.records), basic_auth="ops:pw")) as url:
        assert httpx.get(f"{url}/api/overview", timeout=10).status_code == 401
        signed_in = url.replace("http://", "http://ops:pw@")
        dom = render(f"{signed_in}/", profile)  # the browser then sends them with every API call
        assert not dom.by_id("message").text()
        assert links_to_traces(dom.by_id("results"))
        dom = render(f"{signed_in}/traces/{traces.orders}", profile / "2")
        assert len(span_rows(dom)) == len(traces.spans(traces.orders))
