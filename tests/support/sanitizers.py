"""The sanitizers the sanitizer tests run every mode through: the default one, then every
detector and the default key rules in each mode (mask, partial 1/4/8, hashed)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pitchey_trace as pt
from pitchey_trace import sanitize
from pitchey_trace.sanitize import Mode, Sanitizer
from pitchey_trace.testing import capture_spans

MODES: list[Mode] = [
    sanitize.mask(),
    sanitize.partial(1),
    sanitize.partial(4),
    sanitize.partial(8),
    sanitize.hashed(key=b"k" * 16),
]


def all_rules(mode: Mode) -> list[sanitize.Rule]:
    """Every rule the SDK has, each in ``mode`` where it takes one."""
    return [
        sanitize.keys(*sanitize.DEFAULT_KEY_TERMS, mode=mode),
        sanitize.keys(*sanitize.DEFAULT_VALUE_NAMESPACES, all_values=True, mode=mode),
        sanitize.sql(),
        sanitize.private_keys(mode=mode),
        sanitize.url_credentials(mode=mode),
        sanitize.secret_params(mode=mode),
        sanitize.auth_headers(mode=mode),
        sanitize.jwts(mode=mode),
        sanitize.cloud_keys(mode=mode),
        sanitize.emails(mode=mode),
        sanitize.ibans(mode=mode),
        sanitize.cards(mode=mode),
        sanitize.ssns(mode=mode),
        sanitize.phones(mode=mode),
        sanitize.ip_addresses(mode=mode),
    ]


SANITIZERS = [Sanitizer(), *(Sanitizer(all_rules(m)) for m in MODES)]
SAN_IDS = ["default", *(repr(m) for m in MODES)]


def nest(text: str, levels: int) -> str:
    """``text`` as the ``body`` string of a JSON object, ``levels`` times (JSON in JSON)."""
    for _ in range(levels):
        text = json.dumps({"body": text})
    return text


def unnest(text: str, levels: int) -> Any:
    """What :func:`nest` wrapped, parsed."""
    for _ in range(levels):
        text = json.loads(text)["body"]
    return json.loads(text)


def pipeline_vs_uncached(san: Sanitizer, attributes: dict[str, Any]) -> list[dict[str, Any]]:
    """Export 40 spans carrying ``attributes`` twice through a pipeline sanitizing with
    ``san``'s rules (the second time every text is in the caches: the C builder's path), assert
    their attributes are what the uncached Python path gives, and return those (for the
    caller's leak checks)."""
    maps = [dict(attributes, i=i % 3) for i in range(40)]
    with capture_spans(rollups=None, sanitizer=None) as raw:
        for attrs in maps:
            with pt.span("op", attributes=attrs):
                pass
    with capture_spans(rollups=None, sanitizer=Sanitizer(san.rules)) as exported:
        for _ in range(2):
            for attrs in maps:
                with pt.span("op", attributes=attrs):
                    pass
    plain = Sanitizer(san.rules, cache_size=0)
    expected = [plain(r)["attributes"] for r in raw.spans()] * 2
    assert [r["attributes"] for r in exported.spans()] == expected
    return expected


def assert_scrubbed(san: Sanitizer, text: str, secrets: Iterable[str], expected: str | None = None) -> None:
    """``san.scrub(text)`` is ``expected`` (when given) and holds none of ``secrets``; scrubbing
    it again changes nothing."""
    out = san.scrub(text)
    if expected is not None:
        assert out == expected, f"{out!r} != {expected!r}"
    assert not any(s in out for s in secrets), out
    assert san.scrub(out) == out, out
