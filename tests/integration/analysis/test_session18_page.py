"""The analysis pages and API over an archive of hostile text, in headless Chromium under a real
uvicorn server: archived names, services, attributes, events, messages, link ids, log lines
and audit fields hold markup and script that would run if the page ever read them as HTML
(each sets ``window.__pwned`` or calls a 127.0.0.1 server that records requests), values of
100,000 characters, and one trace has 10,000 spans. The archive is a directory in the
exporters' layout (gzip NDJSON), read as ``pitchey-trace serve`` reads it."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from tests.integration.analysis.browser import Page
from tests.integration.analysis.conftest import serve

pytestmark = pytest.mark.integration

HOSTILE = "ab" * 16
BIG = "cd" * 16
ROOT_SPAN = "1" * 16
BIG_SPANS = 10_000
LONG = "W" * 100_000  # one unbroken word
# what the page's script may show of one value in a table or list, and in the span details
MAX_TEXT = 1000
MAX_DETAIL = 4000


class Beacon:
    """A 127.0.0.1 HTTP server that records the path of every request it gets."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def payloads(beacon: str) -> list[str]:
    return [
        f"<img src=x onerror=\"window.__pwned='img';fetch('{beacon}/img')\">",
        f"</script><script>window.__pwned='script';fetch('{beacon}/script')</script>",
        "javascript:window.__pwned='javascript-url'",
        '" onmouseover="window.__pwned=\'attribute\'" x="',
        "' onfocus='window.__pwned=\"single\"' autofocus='",
        f'<svg onload="window.__pwned=\'svg\'"><image href="{beacon}/svg"/></svg>',
        "\u202eevil\u202c \u2066bidi\u2069 \u200f",
        f'<iframe src="{beacon}/iframe"></iframe><a href="javascript:window.__pwned=1">x</a>',
    ]


def write_archive(root: Path, beacon: str) -> None:
    """The hostile trace (spans, events, links, logs, audit, rollups all carrying payloads and
    LONG) and a 10,000-span trace, in the directory layout LocalArchiveExporter writes."""
    p = payloads(beacon)
    t0 = time.time_ns() - 120 * 10**9

    def span(trace_id: str, span_id: str, parent: str | None, i: int, **fields: Any) -> dict[str, Any]:
        record = {
            "schema": 1,
            "type": "span",
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_span_id": parent,
            "name": p[i % len(p)],
            "kind": "server" if parent is None else "internal",
            "service": p[(i + 1) % len(p)],
            "environment": p[(i + 2) % len(p)],
            "start_time_unix_nano": t0 + i * 1000,
            "end_time_unix_nano": t0 + i * 1000 + 10**6,
            "duration_ms": 1.0,
            "status": "error" if i % 2 == 0 else "ok",
            "status_message": p[(i + 3) % len(p)],
            "category": p[(i + 4) % len(p)],
            "attributes": {
                **{x: p[(j + i) % len(p)] for j, x in enumerate(p)},
                "exception.type": p[(i + 5) % len(p)],
                "exception.message": p[(i + 6) % len(p)],
                "long.value": LONG,
                LONG: "long key",
            },
            "events": [{"name": x, "time_unix_nano": t0 + i * 1000 + 5, "attributes": {x: x}} for x in p],
            "links": [{"trace_id": p[2], "span_id": p[0]}, {"trace_id": p[0], "span_id": p[3]}],
            "resource": {x: x for x in p},
        }
        record.update(fields)
        return record

    traces = [span(HOSTILE, ROOT_SPAN, None, 0, end_time_unix_nano=t0 + 10**9, duration_ms=1000.0)]
    traces += [
        span(HOSTILE, f"{i:016x}", ROOT_SPAN, i, service=LONG if i == 3 else p[i % len(p)])
        for i in range(1, 17)
    ]
    traces[5]["name"] = LONG
    traces[6]["status_message"] = LONG
    # a big trace: a chain of 50-span runs under its root
    traces.append(
        span(BIG, "2" * 16, None, 0, name="big root", end_time_unix_nano=t0 + 10**9, duration_ms=1000.0)
    )
    for i in range(1, BIG_SPANS):
        parent = "2" * 16 if i % 50 == 1 else f"{0x100000 + i - 1:016x}"
        traces.append(
            {
                **span(BIG, f"{0x100000 + i:016x}", parent, i, events=[], resource={}, links=[]),
                "name": f"step {i}",
                "service": "worker",
                "attributes": {"i": i},
            }
        )
    logs = [
        {
            "schema": 1,
            "type": "log",
            "time_unix_nano": t0 + 2000 + i,
            "trace_id": [HOSTILE, p[2], p[0]][i % 3],
            "span_id": [ROOT_SPAN, p[3]][i % 2],
            "trace_flags": 1,
            "service": p[i % len(p)],
            "environment": "production",
            "severity_number": 17,
            "severity_text": p[(i + 1) % len(p)],
            "logger": p[(i + 2) % len(p)],
            "body": LONG if i == 4 else p[i % len(p)],
            "attributes": {x: x for x in p},
        }
        for i in range(2 * len(p))
    ]
    audit = [
        {
            "schema": 1,
            "type": "audit",
            "category": "security",
            "time_unix_nano": t0 + i,
            "trace_id": [HOSTILE, p[2], p[0]][i % 3],
            "span_id": None,
            "service": p[i % len(p)],
            "environment": "production",
            "actor": LONG if i == 1 else p[(i + 1) % len(p)],
            "action": p[(i + 2) % len(p)],
            "target": p[(i + 3) % len(p)],
            "outcome": p[(i + 4) % len(p)],
            "attributes": {x: x for x in p},
        }
        for i in range(2 * len(p))
    ]
    day = time.strftime("%Y%m%d", time.gmtime(t0 / 1e9))
    for dataset, records in (("traces", traces), ("logs", logs), ("audit", audit)):
        folder = root / dataset / day
        folder.mkdir(parents=True)
        data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        (folder / f"{t0}_{time.time_ns()}_hostile.log.gz").write_bytes(gzip.compress(data))


@pytest.fixture(scope="module")
def beacon() -> Iterator[Beacon]:
    b = Beacon()
    yield b
    b.server.shutdown()


@pytest.fixture(scope="module")
def url(beacon: Beacon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hostile-archive")
    write_archive(root, beacon.url)
    with serve(create_app(Archive(root), refresh_interval_s=None)) as base:
        yield base


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with Page(tmp_path_factory.mktemp("chromium") / "profile") as p:
        # Without the Content-Security-Policy: the script's own handling of text is under test,
        # not the header that would stop an injected script as a second line of defence.
        p.call("Page.setBypassCSP", enabled=True)
        yield p


# Elements no page of the app has: any of them came from archived text read as markup.
INJECTED = (
    "document.querySelectorAll('img, iframe, image, script:not([src]),"
    " [onerror], [onload], [onfocus], [onmouseover]').length"
)
HOVER = "new MouseEvent('mouseover', {bubbles: true})"
HREFS = "[...document.querySelectorAll('a')].map((a) => a.href)"
# the longest text of one element without element children, by where it is
LONGEST = """(sel) => Math.max(0, ...[...document.querySelectorAll(sel)]
  .filter((e) => !e.children.length).map((e) => e.textContent.length))"""


def assert_nothing_ran(page: Page, beacon: Beacon, url: str) -> None:
    assert page.evaluate("window.__pwned === undefined"), page.evaluate("String(window.__pwned)")
    assert page.evaluate(INJECTED) == 0
    assert all(h.startswith(url + "/") for h in page.evaluate(HREFS))
    assert beacon.hits == []


def test_hostile_text_is_shown_as_text_on_the_overview_page(page: Page, beacon: Beacon, url: str) -> None:
    page.open(url + "/")
    assert page.evaluate("document.getElementById('message').hidden")  # every section loaded
    p = payloads(beacon.url)
    shown = page.evaluate("[...document.querySelectorAll('#security-table td')].map((td) => td.textContent)")
    assert p[0] in shown
    assert p[1] in shown
    assert page.evaluate("document.querySelectorAll('#error-logs-table tbody tr').length") == 2 * len(p)
    # hover and focus everything: an injected handler attribute would fire now
    page.evaluate(
        f"document.querySelectorAll('td, a').forEach((e) => {{ e.dispatchEvent({HOVER}); e.focus(); }})"
    )
    assert_nothing_ran(page, beacon, url)


def test_hostile_text_is_shown_as_text_on_the_trace_page(page: Page, beacon: Beacon, url: str) -> None:
    page.open(f"{url}/traces/{HOSTILE}#span={ROOT_SPAN}")
    assert page.evaluate("document.getElementById('message').hidden")
    p = payloads(beacon.url)
    names = page.evaluate("[...document.querySelectorAll('#rows .span-name')].map((e) => e.textContent)")
    assert len(names) == 17
    assert names[0] == p[0]
    # every span's details, and every log line (which selects its span)
    count = page.evaluate(
        f"""(() => {{ let n = 0;
          for (const row of document.querySelectorAll('#rows .span-row, #trace-logs tbody tr')) {{
            row.click(); n++;
          }}
          document.querySelectorAll('#details *').forEach((e) => e.dispatchEvent({HOVER}));
          return n; }})()"""
    )
    assert count == 17 + len([i for i in range(2 * len(p)) if i % 3 == 0])  # its log lines
    assert page.evaluate("document.querySelectorAll('#details .event-name').length") == len(p)
    # a link's trace id is a path of this server, whatever it holds
    links = page.evaluate("[...document.querySelectorAll('#details a')].map((a) => a.getAttribute('href'))")
    assert links == ["/traces/javascript%3Awindow.__pwned%3D'javascript-url'", "/traces/" + _quote(p[0])]
    assert_nothing_ran(page, beacon, url)


def _quote(text: str) -> str:
    """encodeURIComponent's encoding."""
    from urllib.parse import quote

    return quote(text, safe="-_.!~*'()")


def test_very_long_values_are_clipped_on_the_pages_and_whole_in_the_api(page: Page, url: str) -> None:
    # Shown whole, a 100,000-character word in a table cell froze Chromium's layout for minutes
    # (the time grows with the square of its length).
    suffix = f"… ({len(LONG) - MAX_TEXT} more characters)"
    page.open(url + "/")
    assert page.evaluate(f"({LONGEST})('td, code')") == MAX_TEXT + len(suffix)
    assert (
        page.evaluate(
            "[...document.querySelectorAll('#security-table td')].map((td) => td.textContent)"
        ).count(LONG[:MAX_TEXT] + suffix)
        == 1
    )

    page.open(f"{url}/traces/{HOSTILE}")
    assert page.evaluate(f"({LONGEST})('#rows *, #analysis *, #trace-logs td *')") == MAX_TEXT + len(suffix)
    page.evaluate(f"document.querySelector('.span-row[data-span-id=\"{6:016x}\"]').click()")
    detail_suffix = f"… ({len(LONG) - MAX_DETAIL} more characters)"
    facts = page.evaluate("[...document.querySelectorAll('#details .facts dd')].map((e) => e.textContent)")
    assert (
        facts[2]
        == "error: "
        + LONG[: MAX_DETAIL - len("error: ")]
        + f"… ({len(LONG) + 7 - MAX_DETAIL} more characters)"
    )
    attrs = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#details .span-attributes tr')]"
        ".map((r) => [r.querySelector('th').textContent, r.querySelector('td').textContent]))"
    )
    assert attrs["long.value"] == LONG[:MAX_DETAIL] + detail_suffix
    assert attrs[LONG[:MAX_TEXT] + suffix] == "long key"

    # the API answers the whole value
    trace = httpx.get(f"{url}/api/traces/{HOSTILE}", timeout=60).json()
    assert [s["status_message"] for s in trace["spans"] if s["span_id"] == f"{6:016x}"] == [LONG]


def test_a_ten_thousand_span_trace_renders_every_row(page: Page, url: str) -> None:
    page.open(f"{url}/traces/{BIG}")
    assert page.evaluate("document.querySelectorAll('#rows .span-row').length") == BIG_SPANS
    last = f"{0x100000 + BIG_SPANS - 1:016x}"
    page.evaluate(f"document.querySelector('.span-row[data-span-id=\"{last}\"]').click()")
    assert (
        page.evaluate("document.querySelector('#details .details-name').textContent")
        == f"step {BIG_SPANS - 1}"
    )
    assert page.evaluate("location.hash") == f"#span={last}"
    assert page.evaluate("document.querySelectorAll('#rows .span-row.selected').length") == 1


def test_a_malformed_escape_in_the_trace_address_gets_the_api_message(page: Page, url: str) -> None:
    # decodeURIComponent("%ZZ") throws: the page said only "URI malformed"
    page.open(url + "/traces/%ZZ")
    message = page.evaluate("document.getElementById('message').textContent")
    assert message == "trace id must be 32 hex characters, got '%ZZ'"


# -- the API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "/api/search?limit=abc&limit=5",  # answered 200 for limit=5 (and 400 the other way round)
        "/api/search?service=a&service=b",
        "/api/logs?level=ERROR&level=INFO",
        f"/api/traces/{HOSTILE}?since=1h&since=30d",
    ],
)
def test_a_parameter_given_twice_is_refused(url: str, query: str) -> None:
    answer = httpx.get(url + query, timeout=60)
    name = query.split("?")[1].split("=")[0]
    assert answer.status_code == 400
    assert answer.json() == {"error": f"parameter '{name}' is given more than once"}


def test_attr_and_empty_values_may_repeat(url: str) -> None:
    attrs = httpx.get(url + "/api/search?attr=i=7&attr=i=7&attr=%20&attr=", timeout=60)
    assert [t["trace_id"] for t in attrs.json()] == [BIG]
    # one key, two values: no span has both (only the last one counted)
    answer = httpx.get(url + "/api/search?attr=i=1&attr=i=2", timeout=60)
    assert answer.status_code == 400
    assert answer.json() == {"error": "attr 'i' is given more than once, with different values"}
    # an empty value beside a given one does not hide it (it did when it came last)
    answer = httpx.get(url + "/api/search?service=nobody&service=", timeout=60)
    assert answer.status_code == 200
    assert answer.json() == []
    assert len(httpx.get(url + "/api/search?service=&service=worker", timeout=60).json()) == 1
