"""Session 18: core API input checks (TraceContext baggage given as a mapping or as lists)."""

from __future__ import annotations

from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace._span import TraceContext
from pitchey_trace.propagation import inject


def test_baggage_given_as_a_mapping_keeps_its_entries() -> None:
    # (tuple({"k": "v"}) is ("k",): the entry was lost and nothing was sent)
    ctx = TraceContext(0xAB, 0xCD).with_baggage({"user.id": "u-17", "tier": "gold"})
    assert ctx.baggage == (("user.id", "u-17"), ("tier", "gold"))
    assert TraceContext(0xAB, 0xCD, baggage={"a": "1"}).baggage == (("a", "1"),)
    carrier: dict[str, str] = {}
    inject(carrier, context=ctx)
    assert carrier["baggage"] == "user.id=u-17,tier=gold"


def test_baggage_members_given_as_lists_are_stored_as_tuples_and_hashable() -> None:
    ctx = TraceContext(0xAB, 0xCD, baggage=[["a", "1"]]).with_baggage([["b", "2"], ("c", "3")])
    assert ctx.baggage == (("b", "2"), ("c", "3"))
    assert hash(ctx) == hash(TraceContext(0xAB, 0xCD, baggage=(("b", "2"), ("c", "3"))))


@pytest.mark.parametrize("bad", [["ab"], [("a", "b", "c")], [None], "ab"])
def test_baggage_that_is_not_pairs_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="baggage must be"):
        TraceContext(0xAB, 0xCD).with_baggage(bad)
    with pytest.raises(ValueError, match="baggage must be"):
        TraceContext(0xAB, 0xCD, baggage=bad)


def test_empty_baggage_in_any_shape_is_empty() -> None:
    for empty in ((), [], {}):
        assert TraceContext(0xAB, 0xCD, baggage=empty).baggage == ()
        assert TraceContext(0xAB, 0xCD).with_baggage(empty).baggage == ()
    assert pt.TraceContext is TraceContext


def test_error_groups_sample_the_most_recent_traces_newest_first() -> None:
    """The CLI's "a trace" column sits beside "last seen": it is the newest failure's trace (the
    first 5 in the index's order, the oldest, were kept)."""
    from pitchey_trace.analysis import Archive

    t0 = 1_780_000_000_000_000_000
    order = [3, 9, 1, 12, 7, 5, 11, 2, 8, 10, 4, 6]  # start times, out of order
    records = [
        {
            "schema": 1,
            "type": "span",
            "trace_id": f"{i:032x}",
            "span_id": f"{i:016x}",
            "parent_span_id": None,
            "service": "shop",
            "name": "pay",
            "kind": "internal",
            "start_time_unix_nano": t0 + i * 1_000_000,
            "end_time_unix_nano": t0 + i * 1_000_000 + 500,
            "duration_ms": 0.0005,
            "status": "error",
            "status_message": "card declined",
            "attributes": {},
            "events": [],
        }
        for i in order
    ]
    # the same trace failing again later counts once, at its latest failure
    again = dict(records[2], span_id=f"{99:016x}", start_time_unix_nano=t0 + 13 * 1_000_000)
    again["end_time_unix_nano"] = again["start_time_unix_nano"] + 500
    (group,) = Archive.from_records([*records, again]).errors(since=t0)
    assert group["count"] == 13
    assert group["last_seen_unix_nano"] == t0 + 13 * 1_000_000
    assert group["trace_ids"] == [f"{i:032x}" for i in (1, 12, 11, 10, 9)]


@pytest.mark.parametrize(
    "url", ["ftp://user:pw123@host/?token=abc", "https://user:pw123@host:99999/?token=abc"]
)
def test_an_endpoint_refused_is_quoted_without_its_credentials(url: str) -> None:
    """The message of a refused endpoint reaches logs (and `pitchey-trace run`'s error line):
    the URL's password and query values are masked at the source."""
    from pitchey_trace.exceptions import ConfigurationError
    from pitchey_trace.exporters import OTLPExporter, ZipkinExporter

    for exporter in (OTLPExporter, ZipkinExporter):
        with pytest.raises(ConfigurationError) as refused:
            exporter(url)
        assert "pw123" not in str(refused.value)
        assert "abc" not in str(refused.value)
        assert "user:***@host" in str(refused.value)
