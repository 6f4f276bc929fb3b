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
