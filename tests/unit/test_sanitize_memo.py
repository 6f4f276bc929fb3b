"""The sanitizer's whole-attribute-map memo (maps of 5 attributes or more) and its one-pass span
record builder give exactly what the uncached, two-step path gives."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans


def _records(attr_maps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with capture_spans(rollups=None, sanitizer=None) as mem:
        for attrs in attr_maps:
            with pt.span("op", attributes=attrs):
                pass
    return mem.spans()


_FILL = {"f1": "a", "f2": 2, "f3": 3.0, "f4": False}  # makes a map big enough for the memo


def test_memo_keeps_value_types_apart() -> None:
    recs = _records([{"k": v, **_FILL} for v in (1, True, 1.0, "1", 1)])
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
    maps = [dict(rng.choice(pool), **_FILL) for _ in range(3000)]
    maps += [{"i": i, "s": f"v{i}", **_FILL} for i in range(3000)]
    maps += [dict(rng.choice(pool)) for _ in range(300)]  # small maps: key by key
    recs = _records(maps)
    memo, plain = Sanitizer(), Sanitizer(cache_size=0)
    for rec in recs:
        assert memo(rec) == plain(rec)
    # the card and the email never survive, memo hit or not
    blob = repr([memo(r) for r in recs])
    assert "4111 1111" not in blob
    assert "ada@example.org" not in blob


def test_memo_turns_itself_off_for_unique_maps_and_stays_correct() -> None:
    recs = _records([{"id": i, "name": f"n{i}", **_FILL} for i in range(5000)])
    san = Sanitizer()
    outs = [san(r)["attributes"] for r in recs]
    assert outs == [{"id": i, "name": f"n{i}", **_FILL} for i in range(5000)]
    assert san._memo_off > 0  # mostly misses: the memo paused itself


# -- the one-pass span record builder ---------------------------------------------------------

_KEYS = st.sampled_from(
    ["http.route", "user.id", "password", "api_key", "db.query.text", "session.id", "card", "note", "n"]
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([4111111111111111, 5555555555554444, 10**12, 10**12 - 1, 200]),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "ada@example.org",
            "4111 1111 1111 1111",
            "SELECT * FROM t WHERE a = 'secret'",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "GET",
        ]
    ),
    st.lists(st.sampled_from(["a", "ada@example.org", "1"]), max_size=3),
)
_ATTRS = st.dictionaries(_KEYS, _VALUES, max_size=7)


def _finished_span(name: str, attrs: dict[str, Any], event_attrs: dict[str, Any], message: str | None) -> Any:
    link = pt.TraceContext(trace_id=0xABC, span_id=0xDEF)
    span = pt.start_span(name, attributes=attrs, links=[link] if event_attrs else None)
    if event_attrs:
        span.add_event("retry", event_attrs)
    if message is not None:
        span.set_status(pt.StatusCode.ERROR, message)
    span.end()
    return span


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["GET /x", "mail ada@example.org", "op"]),
    attrs=_ATTRS,
    event_attrs=_ATTRS,
    message=st.one_of(st.none(), st.sampled_from(["boom", "card 4111 1111 1111 1111"])),
)
def test_one_pass_span_record_equals_sanitizing_the_plain_record(
    name: str, attrs: dict[str, Any], event_attrs: dict[str, Any], message: str | None
) -> None:
    from pitchey_trace.records import make_resource, span_record

    with capture_spans(rollups=None):
        span = _finished_span(name, attrs, event_attrs, message)
    resource = make_resource("svc ada@example.org", "prod", {"k": "4111 1111 1111 1111"})
    for san in (Sanitizer(), Sanitizer(cache_size=0), Sanitizer(add=[lambda k, t: t.replace("GET", "G")])):
        for _ in range(2):  # the second time from the caches
            plain = san(span_record(span, "svc ada@example.org", "prod", resource, None))
            assert san._span_record(span, "svc ada@example.org", "prod", resource, None) == plain


def test_pipeline_builds_span_records_in_one_pass_only_for_the_builtin_class() -> None:
    class Loud(Sanitizer):
        def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
            out = super().__call__(record)
            out["attributes"] = {**out["attributes"], "seen": True}
            return out

    with capture_spans(sanitizer=Loud(), rollups=None) as mem:
        with pt.span("op", attributes={"user.email": "ada@example.org"}):
            pass
    assert mem.spans()[0]["attributes"] == {"user.email": "[EMAIL]", "seen": True}
    with capture_spans(rollups=None) as mem:
        with pt.span("op", attributes={"user.email": "ada@example.org"}):
            pass
    assert mem.spans()[0]["attributes"] == {"user.email": "[EMAIL]"}
