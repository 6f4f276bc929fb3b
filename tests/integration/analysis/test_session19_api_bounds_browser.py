"""A big trace over a real uvicorn server (session 19): its API answer is bounded (a 10,000-span
trace with 100 kB attribute values was a 1 GB answer), and the waterfall page in headless
Chromium says the trace was cut, shows cut values with their full length, links to a span's
whole values, and still shows a span beyond the cut when it is asked for."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pitchey_trace.analysis import Archive, api
from pitchey_trace.analysis.api import create_app
from tests.integration.analysis.browser import Page
from tests.integration.analysis.conftest import serve

pytestmark = pytest.mark.integration

TRACE = "ef" * 16
T0 = time.time_ns() - 120 * 10**9
SPANS = 60
CUT = 30  # MAX_TRACE_SPANS while the page is tested
LONG = "L" * 10_000


def span(i: int, **fields: Any) -> dict[str, Any]:
    """Span i of a chain (each the child of the one before): depth-first order is i's order."""
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": TRACE,
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None if i == 0 else f"{i:016x}",
        "name": f"op {i}",
        "kind": "internal",
        "service": "svc",
        "environment": "test",
        "start_time_unix_nano": T0 + i * 1000,
        "end_time_unix_nano": T0 + 10**9 - i * 1000,
        "duration_ms": (10**9 - 2 * i * 1000) / 1e6,
        "status": "ok",
        "status_message": "",
        "category": "slow",
        "attributes": {"i": i},
        "events": [],
        "links": [],
        "resource": {},
    }
    record.update(fields)
    return record


def sid(i: int) -> str:
    return f"{i + 1:016x}"


def write_archive(root: Path) -> None:
    spans = [span(i) for i in range(SPANS)]
    spans[2]["attributes"] = {"i": 2, "long.value": LONG}
    log = {
        "schema": 1,
        "type": "log",
        "time_unix_nano": T0 + 50_000,
        "trace_id": TRACE,
        "span_id": sid(45),  # beyond the cut
        "service": "svc",
        "severity_number": 17,
        "severity_text": "ERROR",
        "logger": "app",
        "body": "failed deep down",
        "attributes": {},
    }
    day = time.strftime("%Y%m%d", time.gmtime(T0 / 1e9))
    for dataset, records in (("traces", spans), ("logs", [log])):
        folder = root / dataset / day
        folder.mkdir(parents=True)
        data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        (folder / f"{T0}_{time.time_ns()}_big.log.gz").write_bytes(gzip.compress(data))


def test_a_big_trace_with_big_values_is_a_bounded_answer() -> None:
    # 10,000 spans, each with a 100 kB value (one string object: the archive itself stays small)
    value = "v" * 100_000
    records = [span(i, attributes={"big": value, "i": i}) for i in range(10_000)]
    app = create_app(Archive.from_records(records), refresh_interval_s=None)
    with serve(app) as url:
        response = httpx.get(f"{url}/api/traces/{TRACE}", timeout=120)
        assert response.status_code == 200
        # whole, this answer was 1,005 MB
        assert len(response.content) <= api.MAX_TRACE_BYTES + 64 * 1024
        view = response.json()
        assert (view["span_count"], view["truncated"]) == (10_000, True)
        assert 0 < len(view["spans"]) < 10_000
        first = view["spans"][0]
        assert first["attributes"] == {"big": value[: api.MAX_VALUE_CHARS], "i": 0}
        assert first["clipped"] == {"attributes": {"big": 100_000}}
        # the value is whole in the span's own answer
        whole = httpx.get(f"{url}/api/traces/{TRACE}/spans/{sid(9_999)}", timeout=60).json()
        assert whole["attributes"]["big"] == value


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("big-archive")
    write_archive(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "MAX_TRACE_SPANS", CUT)
        with serve(create_app(Archive(root), refresh_interval_s=None)) as base:
            yield base


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with Page(tmp_path_factory.mktemp("chromium") / "profile") as p:
        yield p


DETAILS_NAME = "document.querySelector('#details .details-name').textContent"


def test_the_page_says_the_trace_was_cut_and_shows_cut_values(page: Page, url: str) -> None:
    page.open(f"{url}/traces/{TRACE}")
    assert page.evaluate("document.getElementById('message').hidden")
    assert page.evaluate("document.querySelectorAll('#rows .span-row').length") == CUT
    assert not page.evaluate("document.getElementById('truncated').hidden")
    notice = page.evaluate("document.getElementById('truncated').textContent")
    assert f"showing the first {CUT} of {SPANS} spans" in notice
    assert f"at most {CUT} spans" in notice

    page.evaluate(f"document.querySelector('.span-row[data-span-id=\"{sid(2)}\"]').click()")
    attrs = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#details .span-attributes tr')]"
        ".map((r) => [r.querySelector('th').textContent, r.querySelector('td').textContent]))"
    )
    # the API cut the value at 4,000 characters: the page counts what is left out of the whole
    assert attrs["long.value"] == LONG[:4000] + f"… ({len(LONG) - 4000} more characters)"
    assert not page.evaluate("document.getElementById('whole-values').hidden")
    href = page.evaluate("document.querySelector('#whole-values a').getAttribute('href')")
    assert href == f"/api/traces/{TRACE}/spans/{sid(2)}"
    assert httpx.get(url + href, timeout=30).json()["attributes"]["long.value"] == LONG

    # a span without cut values: no link
    page.evaluate(f"document.querySelector('.span-row[data-span-id=\"{sid(3)}\"]').click()")
    assert page.evaluate("document.getElementById('whole-values').hidden")


def test_a_span_beyond_the_cut_is_shown_when_asked_for(page: Page, url: str) -> None:
    # (a query the page ignores: a new document, not a move within the one already open)
    page.open(f"{url}/traces/{TRACE}?from=log#span={sid(45)}")
    assert page.evaluate("document.getElementById('message').hidden")
    assert page.evaluate(DETAILS_NAME) == "op 45"
    # and from its log line
    page.evaluate(f"document.querySelector('.span-row[data-span-id=\"{sid(1)}\"]').click()")
    assert page.evaluate(DETAILS_NAME) == "op 1"
    page.evaluate("document.querySelector('#trace-logs tbody tr').click()")
    deadline = time.monotonic() + 20
    while page.evaluate(DETAILS_NAME) != "op 45":
        assert time.monotonic() < deadline, page.evaluate(DETAILS_NAME)
        time.sleep(0.05)
    assert page.evaluate("location.hash") == f"#span={sid(45)}"
    assert page.evaluate("document.querySelectorAll('#rows .span-row.selected').length") == 0
