"""Adjacent numbers must not hide each other: every number detector (cards in their forms, SSNs,
national and international phones, IBANs) next to every other, with the separators that join
digit runs and those that end them, in every mode. Runs with and without the C accelerator
(PITCHEY_TRACE_PURE_PYTHON=1): the text detectors are Python's, the record builder reuses
their decisions."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace import sanitize
from pitchey_trace.sanitize import Sanitizer
from tests.support.sanitizers import SAN_IDS, SANITIZERS, pipeline_vs_uncached


def _luhn_complete(prefix: str) -> str:
    return next(prefix + c for c in "0123456789" if sanitize._luhn(prefix + c))


_C19 = _luhn_complete("601100000000000000")

# One real-looking secret in each accepted form (docs/sanitizing.md, "Value detectors").
POOL = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "5500 0000 0000 0004",
    "5500-0000-0000-0004",
    "378282246310005",
    "3782 822463 10005",
    "30569309025904",
    "3056 930902 5904",
    "4222222222222",
    "4222 2222 2222 2",
    "6011111111111117",
    " ".join([_C19[:4], _C19[4:8], _C19[8:12], _C19[12:16], _C19[16:]]),
    _C19,
    "219-09-9999",
    "078 05 1120",
    "(555) 123-4567",
    "555-123-4567",
    "555.123.4567",
    "555 123 4567",
    "1 555 123 4567",
    "+1 555 123 4567",
    "(555)123-4567",
    "+15551234567",
    "+44 20 7946 0958",
    "+33 1 42 68 53 00",
    "+491701234567",
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "GB82 WEST 1234 5698 7654 32",
    "BE68539007547034",
    "BE68 5390 0754 7034",
]
# Separators that keep two numbers in one run of digits and separators, then ones that end it.
JOINING = [" ", "  ", "-", " - ", ".", " (", ") "]
ENDING = [", ", "; ", "\n", "=", ": ", "|"]

# What may be left: markers (with the part partial mode keeps: last 4 of a card or SSN, last 2
# of a phone), hashes, and a country code "1" that a "." cut off a phone ("...00.1 [PHONE]").
_ALLOWED = re.compile(r"\[[A-Z][A-Z ]*(?: [^\]]*)?\]|hash:[0-9a-f]+|(?<![0-9])1 (?=\[PHONE)")


def _leaked(san: Sanitizer, text: str) -> str | None:
    out = san.scrub(text)
    rest = _ALLOWED.sub("", out)
    return out if re.search(r"[0-9]|WEST", rest) else None


def test_pool_alone_is_masked() -> None:
    for san in SANITIZERS:
        for secret in POOL:
            assert _leaked(san, secret) is None, secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The international phone took up to 15 digits across separators: the card's first
        # group, the SSN's area, the next phone's area code.
        ("+15551234567 4111 1111 1111 1111", "[PHONE] [CARD]"),
        ("+15551234567 123-45-6789", "[PHONE] [SSN]"),
        ("+44 20 7946 0958 555-123-4567", "[PHONE] [PHONE]"),
        ("+44 20 7946 0958 (555) 123-4567", "[PHONE] [PHONE]"),
        ("call +1 555 123 4567 4111 1111 1111 1111 now", "call [PHONE] [CARD] now"),
        # 7 digits after "+" are no phone; the card after them is one
        ("+1555123 4111 1111 1111 1111", "+1555123 [CARD]"),
        # one phone, not an SSN and "639 04"
        ("+535 47 2667 639 04", "[PHONE]"),
        # a phone in parentheses, its "(" not its own
        ("call me (555 123 4567) later", "call me ([PHONE]) later"),
        ("(555-123-4567)", "([PHONE])"),
        # a "+" after "3." starts a phone ("3.+44" is no decimal number)
        ("step 3.+44 20 7946 0958", "step 3.[PHONE]"),
        # the IBAN pattern took the SSN's area as its last group
        ("BE68 5390 0754 7034 123-45-6789", "[IBAN] [SSN]"),
        # two capitals and two digits that are no IBAN hid the card after them
        ("PO12 4111 1111 1111 1111", "PO12 [CARD]"),
        ("DE12 4111 1111 1111 1111", "DE12 [CARD]"),
        # a mistyped IBAN stays whole (no card read into it), what follows it does not
        ("DE89 3704 0044 0532 0130 01", "DE89 3704 0044 0532 0130 01"),
        ("BE00 0000 0000 0000 123-45-6789", "BE00 0000 0000 0000 [SSN]"),
        # a number in a name before "=" / ":" was skipped with the name
        ("DE89370400440532013000=x", "[IBAN]=x"),
        ("x NO9386011117947: y", "x [IBAN]: y"),
        ("ref-4111-1111-1111-1111=paid", "ref-[CARD]=paid"),
        ("order.555-123-4567: called", "order.[PHONE]: called"),
        ("v1.2.3=x", "v1.2.3=x"),
        # unchanged: the first of two numbers sharing digits wins; a grouped card takes its
        # 4-4-4-4 window when a longer one would cut the next number
        ("4111 1111 1111 1111 123 45 6789", "[CARD] [SSN]"),
        ("4111 1111 1111 1111 555 123 4567", "[CARD] [PHONE]"),
    ],
)
def test_adjacent_numbers(text: str, expected: str) -> None:
    assert Sanitizer().scrub(text) == expected


def test_hashed_number_after_dot() -> None:
    # A hash may end in a digit: "hash:...7.4111..." read as a decimal number left the card.
    san = Sanitizer([*sanitize.default_rules(), sanitize.ibans(mode=sanitize.hashed(key=b"k" * 16))])
    for text in (
        "DE89 3704 0044 0532 0130 00.4111111111111111",
        "DE89370400440532013000.4111 1111 1111 1111",
    ):
        out = san.scrub(text)
        assert out.endswith(".[CARD]"), out
        assert san.scrub(out) == out


@pytest.mark.parametrize("sep", JOINING + ENDING, ids=repr)
def test_every_pair_default(sep: str) -> None:
    san = Sanitizer(cache_size=0)
    leaks = [
        (a + sep + b, out)
        for a, b in itertools.product(POOL, POOL)
        if (out := _leaked(san, a + sep + b)) is not None
    ]
    assert leaks == []


@pytest.mark.parametrize("san", SANITIZERS[1:], ids=SAN_IDS[1:])
def test_every_pair_every_mode(san: Sanitizer) -> None:
    leaks = []
    for sep in (" ", "-", ".", " ("):
        for a, b in itertools.product(POOL, POOL):
            out = _leaked(san, a + sep + b)
            if out is not None:
                leaks.append((a + sep + b, out))
    assert leaks == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*POOL, "ok", "card", "tel", "No."]), st.sampled_from(JOINING + ENDING)),
        min_size=2,
        max_size=6,
    ),
    st.sampled_from(range(len(SANITIZERS))),
)
def test_sequences(items: list[tuple[str, str]], which: int) -> None:
    text = "".join(item + sep for item, sep in items)
    san = SANITIZERS[which]
    out = _leaked(san, text)
    assert out is None, (text, out)
    assert san.scrub(san.scrub(text)) == san.scrub(text)


def test_records_on_both_paths() -> None:
    # Through a pipeline (the C record builder reuses the Python decisions): same output.
    attributes = {
        "a": "+15551234567 4111 1111 1111 1111",
        "b": "+15551234567 123-45-6789",
        "c": "BE68 5390 0754 7034 123-45-6789",
        "d": "PO12 4111 1111 1111 1111",
    }
    for attrs in pipeline_vs_uncached(Sanitizer(), attributes):
        assert {k: attrs[k] for k in attributes} == {
            "a": "[PHONE] [CARD]",
            "b": "[PHONE] [SSN]",
            "c": "[IBAN] [SSN]",
            "d": "PO12 [CARD]",
        }
