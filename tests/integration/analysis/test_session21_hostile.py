"""A hostile archive directory under a real uvicorn server and headless Chromium: spans whose
trace ids are not hex or are uppercase, links and resources of the wrong type, damaged objects
and a symbolic link out of the archive. Every trace the API lists opens, and the page shows
every span's details as text."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from tests.integration.analysis.browser import Page
from tests.integration.analysis.conftest import serve

pytestmark = pytest.mark.integration

GOOD = "ab" * 16
UPPER = "CD" * 16
ROOT = "1" * 16
PAYLOAD = "<img src=x onerror=\"window.__pwned='img'\">\u202eevil\u202c"
# span id -> what the span's record holds instead of its links, resource or events
ODD = {
    "2" * 16: {"links": [None, {"trace_id": PAYLOAD}]},
    "3" * 16: {"links": 5},
    "4" * 16: {"links": "abc", "resource": "abc"},
    "5" * 16: {"events": [{"name": PAYLOAD, "time_unix_nano": 0, "attributes": [PAYLOAD]}]},
}


def span(trace_id: str, span_id: str, parent: str | None, t0: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": 1,
        "type": "span",
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"span {span_id[0]} {PAYLOAD}",
        "kind": "internal",
        "service": "svc",
        "start_time_unix_nano": t0,
        "end_time_unix_nano": t0 + 10**6,
        "duration_ms": 1.0,
        "status": "ok",
        "attributes": {PAYLOAD: PAYLOAD},
        "events": [],
        "links": [],
        "resource": {},
    }
    record.update(fields)
    return record


def write_archive(root: Path) -> None:
    t0 = time.time_ns() - 60 * 10**9
    records = [span(GOOD, ROOT, None, t0, end_time_unix_nano=t0 + 10**9, duration_ms=1000.0)]
    records += [span(GOOD, sid, ROOT, t0 + 10**6, **fields) for sid, fields in ODD.items()]
    records += [
        span("zz" * 16, "6" * 16, None, t0),  # not hex: could not be opened
        span("<b>x</b>" + "0" * 24, "7" * 16, None, t0),
        span(UPPER, "8" * 16, None, t0),  # opened as its lowercase form
    ]
    day = time.strftime("%Y%m%d", time.gmtime(t0 / 1e9))
    folder = root / "traces" / day
    folder.mkdir(parents=True)
    name = f"{day}T000000Z_{day}T235959Z_{{}}.log.gz"
    data = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    (folder / name.format("good")).write_bytes(data)
    (folder / name.format("torn")).write_bytes(data[: len(data) // 2])
    (folder / name.format("nogzip")).write_bytes(b"<html>not gzip</html>")
    outside = root.parent / "outside.log.gz"
    outside.write_bytes(gzip.compress(json.dumps(span("ee" * 16, "9" * 16, None, t0)).encode() + b"\n"))
    os.symlink(outside, folder / name.format("link"))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("session21") / "archive"
    write_archive(root)
    with serve(create_app(Archive(root), refresh_interval_s=None)) as base:
        yield base


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with Page(tmp_path_factory.mktemp("chromium") / "profile") as p:
        yield p


def test_every_trace_the_api_lists_opens(url: str) -> None:
    found = httpx.get(f"{url}/api/search", params={"limit": "1000"}, timeout=30)
    assert found.status_code == 200
    ids = sorted(t["trace_id"] for t in found.json())
    # neither the ids that are not hex nor the trace behind the link out of the archive
    assert ids == [GOOD, UPPER.lower()]
    for trace_id in ids:
        for path in (f"/api/traces/{trace_id}", f"/api/traces/{trace_id}/analysis"):
            answer = httpx.get(url + path, timeout=30)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["x-content-type-options"] == "nosniff"
    # the uppercase trace's own span, not another trace's
    view = httpx.get(f"{url}/api/traces/{UPPER}", timeout=30).json()
    assert [s["span_id"] for s in view["spans"]] == ["8" * 16]


@pytest.mark.parametrize("span_id", sorted(ODD))
def test_the_page_shows_the_details_of_a_span_with_odd_containers(page: Page, url: str, span_id: str) -> None:
    page.open(f"{url}/traces/{GOOD}")
    assert page.evaluate("document.getElementById('message').hidden") is True
    page.evaluate(f"document.querySelector('#rows [data-span-id=\"{span_id}\"]').click()")
    state = page.evaluate(
        "[document.getElementById('message').hidden, document.getElementById('message').textContent,"
        " (document.querySelector('#details .details-name') || {}).textContent,"
        " typeof window.__pwned, document.querySelectorAll('#details img, #rows img').length]"
    )
    # (before, a null link or a number for the links stopped the page with a script error)
    assert state == [True, "", f"span {span_id[0]} {PAYLOAD}", "undefined", 0]
