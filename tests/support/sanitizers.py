"""The sanitizers the sanitizer tests run every mode through: the default one, then every
detector and the default key rules in each mode (mask, partial 1/4/8, hashed)."""

from __future__ import annotations

import json
from typing import Any

from pitchey_trace import sanitize
from pitchey_trace.sanitize import Mode, Sanitizer

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
