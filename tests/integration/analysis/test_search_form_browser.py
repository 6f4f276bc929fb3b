"""The search form of the overview page in headless Chromium, driven over the DevTools
protocol: what the form shows for an address, and the address a click on Search makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.analysis.browser import Page
from tests.support.analysis_data import TraceData

pytestmark = pytest.mark.integration

FORM = """(() => {
  const f = document.forms["search-form"].elements;
  const shown = f.since.selectedOptions.length ? f.since.selectedOptions[0].textContent : null;
  return {since: f.since.value, since_shown: shown, since_choices: f.since.options.length,
          until: f.until ? f.until.value : null, limit: f.limit.value};
})()"""
RESULTS = "[...document.querySelectorAll('#results a.trace-link')].map((a) => a.getAttribute('href'))"
# Every API call of the page, with the window it asked for.
CALLS = """performance.getEntriesByType("resource").map((e) => new URL(e.name))
  .filter((u) => u.pathname.startsWith("/api/"))
  .map((u) => [u.pathname, u.searchParams.get("since"), u.searchParams.get("until")])"""
ADDRESS = "Object.fromEntries(new URLSearchParams(location.search))"


@pytest.fixture
def page(tmp_path: Path) -> Any:
    with Page(tmp_path / "chromium-profile") as p:
        yield p


def test_a_bookmarked_window_is_in_the_form_applied_and_kept(
    server: str, traces: TraceData, page: Page
) -> None:
    # Neither time is one of the listed choices: Unix ns around the traces (1 s apart),
    # the window ending between the payment and the hostile trace.
    since = str(traces.start_ns - 10**9)
    until = str(traces.start_ns + 1500 * 10**6)
    page.open(f"{server}/?" + str(httpx.QueryParams({"since": since, "until": until, "limit": "5"})))
    form = page.evaluate(FORM)
    assert (form["since"], form["since_shown"], form["until"], form["limit"]) == (since, since, until, "5")
    expected = [f"/traces/{traces.payment}", f"/traces/{traces.orders}"]  # not the hostile one
    assert page.evaluate(RESULTS) == expected
    calls = page.evaluate(CALLS)
    assert {path for path, _, _ in calls} >= {
        "/api/overview",
        "/api/search",
        "/api/performance",
        "/api/errors",
        "/api/dependencies",
        "/api/series",
        "/api/audit",
        "/api/logs",
    }
    assert all((s, u) == (since, until) for _, s, u in calls), calls  # the tables beside: the same window
    assert not page.evaluate("document.getElementById('message').textContent")

    page.click_and_wait("#search-form button[type=submit]")
    address = page.evaluate(ADDRESS)
    assert (address["since"], address["until"], address["limit"]) == (since, until, "5")
    assert page.evaluate(FORM)["until"] == until
    assert page.evaluate(RESULTS) == expected


def test_a_listed_window_selects_its_choice(server: str, page: Page) -> None:
    page.open(f"{server}/")
    choices = page.evaluate(FORM)["since_choices"]
    assert page.evaluate(FORM)["since"] == ""  # all time

    page.open(f"{server}/?since=24h&until=1h")
    form = page.evaluate(FORM)
    assert (form["since"], form["since_shown"], form["since_choices"]) == ("24h", "last 24 hours", choices)
    assert form["until"] == "1h"

    # chosen in the form: the window goes into the address
    page.evaluate(
        "(() => { const f = document.forms['search-form'].elements;"
        " f.since.value = '7d'; f.until.value = '2h'; })()"
    )
    page.click_and_wait("#search-form button[type=submit]")
    address = page.evaluate(ADDRESS)
    assert (address["since"], address["until"]) == ("7d", "2h")
    assert page.evaluate(FORM)["since_shown"] == "last 7 days"
