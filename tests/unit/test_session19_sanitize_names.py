"""A JWT or cloud key in the name part of "name=" / "name: " (which the secret_params pattern
takes whole) still meets its detector, in every mode, on both record paths (with and without
the C accelerator: PITCHEY_TRACE_PURE_PYTHON=1)."""

from __future__ import annotations

import pytest

from pitchey_trace.sanitize import Sanitizer
from tests.support.sanitizers import SAN_IDS, SANITIZERS, pipeline_vs_uncached

KEY = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"
GH = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
# Parts of the secrets above that no marker or hash contains.
SECRET_PARTS = ("IOSFODNN", "eyJzdWIi", "abcdefghijklmnop", "hunter2")

CASES = [
    (f"{KEY}=x", "[KEY]=x"),
    (f"{KEY}: x", "[KEY]: x"),
    (f"token-{KEY}=1", "token-[KEY]=1"),
    (f"--{KEY}=1", "--[KEY]=1"),
    (f"x {KEY}=y", "x [KEY]=y"),
    (f"{GH}=1", "[KEY]=1"),
    (f"a.{JWT}.x=1", "a.[JWT].x=1"),
    (f'{{"{KEY}": "x"}}', '{"[KEY]": "x"}'),
    # a secret name ("...sig", "..._token"): its value is masked and the token in it too
    (f"{JWT}=1", "[JWT]=[REDACTED]"),
    (f"{JWT}: 1", "[JWT]: [REDACTED]"),
    (f"{KEY}_token=hunter2", "[KEY]_token=[REDACTED]"),
    (f"x-{KEY}_token=hunter2", "x-[KEY]_token=[REDACTED]"),
    (f'{{"{KEY}_token": "hunter2"}}', '{"[KEY]_token": "[REDACTED]"}'),
    (f"{KEY}_token=", "[KEY]_token="),
    # with numbers in the same name (the earlier fix), in either order
    (f"{KEY}-4111111111111111=x", "[KEY]-[CARD]=x"),
    (f"ref-4111111111111111-{KEY}=x", "ref-[CARD]-[KEY]=x"),
    # unchanged: no token, or one the detector does not take standalone either
    ("user@example.com: hi", "[EMAIL]: hi"),
    ("plain.name=value", "plain.name=value"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_token_in_name_default(text: str, expected: str) -> None:
    san = Sanitizer()
    out = san.scrub(text)
    assert out == expected
    assert san.scrub(out) == out  # idempotent


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_token_in_name_every_mode(san: Sanitizer) -> None:
    for text, _ in CASES[:-2]:
        out = san.scrub(text)
        assert not any(part in out for part in SECRET_PARTS), (text, out)
        assert san.scrub(out) == out, text


def test_records_on_both_paths() -> None:
    attributes = {f"k{i}": text for i, (text, _) in enumerate(CASES)}
    attributes[f"{KEY}=x"] = "v"  # in an attribute key too
    for san in SANITIZERS:
        for attrs in pipeline_vs_uncached(san, attributes):
            flat = repr(attrs)
            assert not any(part in flat for part in SECRET_PARTS), flat
