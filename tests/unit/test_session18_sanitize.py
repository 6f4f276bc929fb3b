"""Session 18 review of the masking layer: shapes that leaked with the default configuration.

* a Python string literal with a prefix after a secret name (``{'password': b'hunter2'}``, a
  bytes repr as headers and many clients give them): only the ``b`` was masked;
* PostgreSQL error details quoting row values (``Key (username)=(jsmith) already exists.``,
  ``Failing row contains (...)``) in exception messages an application lets reach a span;
* SQL strings with a backslash before a quote (``'it\\'s ...'``: MySQL, or PostgreSQL with
  ``standard_conforming_strings`` off): the normaliser ended the string at ``\\'`` and exported
  the rest of its content as code.
"""

from __future__ import annotations

from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace._sql import normalize_sql
from pitchey_trace.sanitize import Sanitizer
from pitchey_trace.testing import capture_spans
from tests.support.sanitizers import SAN_IDS, SANITIZERS, assert_scrubbed, pipeline_vs_uncached

SAN = Sanitizer()


# ---------------------------------------------------------------------------------------------
# 1. prefixed string literals and calls around one, after a secret name

_PREFIXED = [
    ("{b'authorization': b'Token abc123'}", "{b'authorization': b'[REDACTED]'}", "abc123"),
    ("{'password': b'hunter2'}", "{'password': b'[REDACTED]'}", "hunter2"),
    ("{'password': b\"two words\"}", "{'password': b\"[REDACTED]\"}", "words"),
    ("{'token': rb'abc\\x00'}", "{'token': rb'[REDACTED]'}", "abc"),
    ("{'token': u'abc'}", "{'token': u'[REDACTED]'}", "abc"),
    ("{'token': bytearray(b'abc')}", "{'token': bytearray(b'[REDACTED]')}", "abc"),
    ("{'api_key': SecretBytes(b'k3y')}", "{'api_key': SecretBytes(b'[REDACTED]')}", "k3y"),
    ("password=b'hunter2' user=bob", "password=b'[REDACTED]' user=bob", "hunter2"),
    ('{"token": b\'abc def\', "n": 1}', '{"token": b\'[REDACTED]\', "n": 1}', "abc"),
]


@pytest.mark.parametrize(("text", "expected", "secret"), _PREFIXED)
def test_prefixed_literal_after_a_secret_name_is_masked(text: str, expected: str, secret: str) -> None:
    assert_scrubbed(SAN, text, [secret], expected)


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
@pytest.mark.parametrize(("text", "_expected", "secret"), _PREFIXED)
def test_prefixed_literal_in_every_mode(san: Sanitizer, text: str, _expected: str, secret: str) -> None:
    assert_scrubbed(san, text, [secret])


def test_prefix_letter_closing_the_string_is_still_the_value() -> None:
    # 'token=b' then the quote that closes the string: the value is "b", as before
    assert SAN.scrub("{'msg': 'token=b', 'n': 1}") == "{'msg': 'token=[REDACTED]', 'n': 1}"
    # plain quoted values and non-secret names are unchanged
    assert SAN.scrub("{'token': 'abc'}") == "{'token': '[REDACTED]'}"
    assert SAN.scrub("{'name': b'bob'}") == "{'name': b'bob'}"


def test_prefixed_literal_attribute_through_the_pipeline() -> None:
    attrs = pipeline_vs_uncached(SAN, {"http.request.headers": "{b'authorization': b'Token abc123'}"})
    assert all("abc123" not in str(a) for a in attrs)


# ---------------------------------------------------------------------------------------------
# 2. PostgreSQL error details: the row values go, the message's shape stays

_PG_DETAILS = [
    (
        'duplicate key value violates unique constraint "users_username_key"\n'
        "DETAIL:  Key (username)=(jsmith) already exists.",
        'duplicate key value violates unique constraint "users_username_key"\n'
        "DETAIL:  Key (username)=([REDACTED]) already exists.",
        "jsmith",
    ),
    (
        "DETAIL:  Key (lower(username::text))=(jsmith) already exists.",
        "DETAIL:  Key (lower(username::text))=([REDACTED]) already exists.",
        "jsmith",
    ),
    (
        'DETAIL:  Key (account, nick)=(42, j smith) is not present in table "users".',
        'DETAIL:  Key (account, nick)=([REDACTED]) is not present in table "users".',
        "smith",
    ),
    (
        "DETAIL:  Key (room)=(101 (left)) conflicts with existing key (room)=(102).",
        "DETAIL:  Key (room)=([REDACTED]) conflicts with existing key (room)=([REDACTED]).",
        "left",
    ),
    (
        "DETAIL:  Failing row contains (7, John Smith, null, 5551234).",
        "DETAIL:  Failing row contains ([REDACTED]).",
        "Smith",
    ),
    (
        '{"error": "duplicate key value violates unique constraint \\"k\\"\\nDETAIL:  Key (phone)=(5551234)'
        ' already exists.", "n": 1}',
        '{"error": "duplicate key value violates unique constraint \\"k\\"\\nDETAIL:  '
        'Key (phone)=([REDACTED]) already exists.", "n": 1}',
        "5551234",
    ),
    ("DETAIL:  Key (password)=(hunter2)", "DETAIL:  Key (password)=([REDACTED])", "hunter2"),
]


@pytest.mark.parametrize(("text", "expected", "secret"), _PG_DETAILS)
def test_postgres_error_detail_values_are_masked(text: str, expected: str, secret: str) -> None:
    assert_scrubbed(SAN, text, [secret], expected)


@pytest.mark.parametrize("text", ["f(x)=(y) holds", "a monkey (x)=(y) done", "x=(1, 2)", "Key (a) = 3"])
def test_text_that_is_no_error_detail_stays(text: str) -> None:
    assert SAN.scrub(text) == text


class IntegrityError(Exception):
    pass


def test_exception_with_postgres_detail_is_exported_without_the_values() -> None:
    exc = IntegrityError(
        'duplicate key value violates unique constraint "users_username_key"\n'
        "DETAIL:  Key (username)=(jsmith) already exists."
    )
    with capture_spans(rollups=None) as out:
        with pt.span("signup") as span:
            try:
                raise exc
            except IntegrityError as e:
                span.record_exception(e)
                span.set_status("error", str(e))
    (rec,) = out.spans()
    event = rec["events"][0]["attributes"]
    assert "Key (username)=([REDACTED]) already exists." in event["exception.message"]
    assert "jsmith" not in event["exception.stacktrace"]
    assert "jsmith" not in rec["status_message"]
    assert "jsmith" not in repr(rec)


# ---------------------------------------------------------------------------------------------
# 3. SQL: a backslash before a quote inside a string


@pytest.mark.parametrize(
    ("sql", "expected", "secret"),
    [
        (
            "INSERT INTO notes (body) VALUES ('it\\'s hunter2 stuff')",
            "INSERT INTO notes (body) VALUES (?",
            "hunter2",
        ),
        ("SELECT * FROM u WHERE name = 'O\\'Brien' AND pin = 'x'", "SELECT * FROM u WHERE name = ?", "Brien"),
        # PostgreSQL reads 'C:\' as a whole string and 'bob' as the next: gone too
        ("SELECT * FROM u WHERE path = 'C:\\' AND name = 'bob'", "SELECT * FROM u WHERE path = ?", "bob"),
        ("SELECT N'x\\'y secret'", "SELECT ?", "secret"),
    ],
)
def test_backslash_quote_in_a_string_leaks_nothing(sql: str, expected: str, secret: str) -> None:
    assert normalize_sql(sql) == expected
    assert normalize_sql(expected) == expected
    out = SAN({"type": "span", "name": "q", "attributes": {"db.query.text": sql}})
    assert out["attributes"]["db.query.text"] == expected
    assert secret not in out["attributes"]["db.query.text"]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'a\\\\', b FROM t", "SELECT ?, b FROM t"),  # an escaped backslash: no ambiguity
        ("SELECT 'a\\b', c FROM t WHERE x = 'y'", "SELECT ?, c FROM t WHERE x = ?"),
        ("SELECT E'a\\'b', c", "SELECT ?, c"),  # E'' strings have backslash escapes in both
    ],
)
def test_backslashes_that_end_no_string_keep_the_statement(sql: str, expected: str) -> None:
    assert normalize_sql(sql) == expected


def test_backslash_quote_statement_through_the_pipeline() -> None:
    attrs: list[dict[str, Any]] = pipeline_vs_uncached(
        SAN, {"db.query.text": "UPDATE u SET bio = 'it\\'s jsmith here' WHERE id = 1"}
    )
    assert all(a["db.query.text"] == "UPDATE u SET bio = ?" for a in attrs)


@pytest.mark.parametrize(
    ("sql", "text"),
    [
        ('SAVEPOINT "s140111072192192_x1"', "SAVEPOINT ?"),
        ('RELEASE SAVEPOINT "s140111072192192_x1"', "RELEASE SAVEPOINT ?"),
        ('ROLLBACK TO SAVEPOINT "s140111072192192_x1"', "ROLLBACK TO SAVEPOINT ?"),
        ("savepoint sp_1", "savepoint ?"),
        ("RELEASE sp_1;", "RELEASE ?;"),
        ("ROLLBACK WORK TO sp_1", "ROLLBACK WORK TO ?"),
        ("ROLLBACK", "ROLLBACK"),
        ("ROLLBACK AND NO CHAIN", "ROLLBACK AND NO CHAIN"),
        ("SELECT savepoint FROM t", "SELECT savepoint FROM t"),
        ("SAVEPOINT sp; SELECT 1", "SAVEPOINT sp; SELECT ?"),
    ],
)
def test_savepoint_names_are_placeholders(sql: str, text: str) -> None:
    """Django names a savepoint after the thread and a counter: one text per name would split
    one statement into thousands of query texts (and rollups)."""
    assert normalize_sql(sql) == text
