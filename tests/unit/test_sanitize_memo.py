"""The sanitizer's whole-attribute-map memo gives exactly what the uncached path gives."""

from __future__ import annotations

import random
from typing import Any

import pitchey_trace as pt
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans


def _records(attr_maps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with capture_spans(rollups=None, sanitizer=None) as mem:
        for attrs in attr_maps:
            with pt.span("op", attributes=attrs):
                pass
    return mem.spans()


def test_memo_keeps_value_types_apart() -> None:
    recs = _records([{"k": 1}, {"k": True}, {"k": 1.0}, {"k": "1"}, {"k": 1}])
    san = Sanitizer()
    out = [san(r)["attributes"]["k"] for r in recs]
    assert [type(v) for v in out] == [int, bool, float, str, int]


def test_memo_equals_uncached_results_on_repeating_and_unique_maps() -> None:
    rng = random.Random(5)
    pool = [
        {
            "db.system.name": "postgresql",
            "server.port": 5432,
            "db.query.text": "SELECT * FROM t WHERE a = 'x'",
        },
        {"http.request.method": "GET", "url.query": "token=abc123secretvalue&q=1", "ok": True},
        {"user.email": "ada@example.org", "tags": ["a", "b"]},  # a list: not memoisable
        {"card": "4111 1111 1111 1111", "ratio": 0.5},
    ]
    maps = [dict(rng.choice(pool)) for _ in range(3000)] + [{"i": i, "s": f"v{i}"} for i in range(3000)]
    recs = _records(maps)
    memo, plain = Sanitizer(), Sanitizer(cache_size=0)
    for rec in recs:
        assert memo(rec) == plain(rec)
    # the card and the email never survive, memo hit or not
    blob = repr([memo(r) for r in recs])
    assert "4111 1111" not in blob
    assert "ada@example.org" not in blob


def test_memo_turns_itself_off_for_unique_maps_and_stays_correct() -> None:
    recs = _records([{"id": i, "name": f"n{i}"} for i in range(5000)])
    san = Sanitizer()
    outs = [san(r)["attributes"] for r in recs]
    assert outs == [{"id": i, "name": f"n{i}"} for i in range(5000)]
    assert san._memo_off > 0  # mostly misses: the memo paused itself
