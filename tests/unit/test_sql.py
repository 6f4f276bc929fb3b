"""normalize_sql / parse_statement: literal stripping, list collapsing, operation and table."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace import _sql
from pitchey_trace._sql import _normalize, _parse, normalize_sql, parse_statement


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM users WHERE email = 'ann@example.com'", "SELECT * FROM users WHERE email = ?"),
        ("SELECT 'it''s'", "SELECT ?"),
        (r"SELECT E'a\'b\\c'", "SELECT ?"),
        ("SELECT e'x''y'", "SELECT ?"),
        ("SELECT B'0101', X'FF', N'nat', U&'d\\0061t'", "SELECT ?, ?, ?, ?"),
        ("SELECT $$secret body$$", "SELECT ?"),
        ("SELECT $fn$ has $$ inside $fn$ FROM t", "SELECT ? FROM t"),
        (
            "SELECT 42, 3.14, .5, 5., 1e10, 2.5E-3, 0xFF, 0o17, 0b101, 1_000_000",
            "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
        ),
        ("SELECT TRUE, false, NULL", "SELECT ?, ?, NULL"),
        ("SELECT a FROM t WHERE id IN (1, 2, 3)", "SELECT a FROM t WHERE id IN (?)"),
        ("SELECT a FROM t WHERE id in(%s,%s,%s)", "SELECT a FROM t WHERE id in(?)"),
        ("SELECT a FROM t WHERE id IN ($1, $2)", "SELECT a FROM t WHERE id IN (?)"),
        ("SELECT a FROM t WHERE id IN (-1, -2)", "SELECT a FROM t WHERE id IN (?)"),
        ("SELECT a FROM t WHERE id IN (SELECT b FROM u)", "SELECT a FROM t WHERE id IN (SELECT b FROM u)"),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')", "INSERT INTO t (a, b) VALUES (?, ?)"),
        ("INSERT INTO t VALUES (%s, %s), (%s, %s)", "INSERT INTO t VALUES (%s, %s)"),
        ("INSERT INTO t VALUES (1, 2), (3) ", "INSERT INTO t VALUES (?, ?), (?)"),
        ("INSERT INTO t VALUES (1, now())", "INSERT INTO t VALUES (?, now())"),
        ("SELECT 1 -- the password is hunter2\nFROM t", "SELECT ? FROM t"),
        ("SELECT /* secret 123 */ a FROM t /*traceparent='00-ab'*/", "SELECT a FROM t"),
        ("SELECT   a,\n\t b\r\n FROM   t", "SELECT a, b FROM t"),
        (
            'SELECT "Weird""Name", "col1" FROM "Public"."Users"',
            'SELECT "Weird""Name", "col1" FROM "Public"."Users"',
        ),
        (
            "SELECT a FROM t WHERE x = %(name)s AND y = $1 AND z = ?",
            "SELECT a FROM t WHERE x = %(name)s AND y = $1 AND z = ?",
        ),
        ("SELECT col1, t2.col_3 FROM t2", "SELECT col1, t2.col_3 FROM t2"),
        ("SELECT '5'::int, now() - interval '1 day'", "SELECT ?::int, now() - interval ?"),
        ("SELECT 'unterminated secret", "SELECT ?"),
        ("SELECT $$unterminated secret", "SELECT ?"),
        ("SELECT $t$unterminated secret", "SELECT ?"),
        ("SELECT a /* unterminated secret", "SELECT a"),
        ("SELECT 1 /* a /* b */ secret */ FROM t", "SELECT ? FROM t"),
        ("SELECT /*/ a */ 1 /**/ /* x /**/ y */ b", "SELECT ? b"),
        ("SELECT 1 /* a /* b /* c */ d */ e */, 'x' /* f */", "SELECT ? , ?"),
        ("SELECT 1 /* a /* b */ unterminated secret", "SELECT ?"),
        ("SELECT '/* not a comment', 2 /* c */ /* d /* e */ f */ FROM t", "SELECT ?, ? FROM t"),
        ("SELECT 1 /* a */*/ b", "SELECT ? */ b"),
        ("SELECT a$b FROM t", "SELECT a$b FROM t"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize_sql(sql: str, expected: str) -> None:
    assert normalize_sql(sql) == expected
    assert normalize_sql(expected) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM pitches WHERE id = 1", ("SELECT", "pitches")),
        ("select a from public.pitches p join users u on u.id = p.user_id", ("SELECT", "public.pitches")),
        ('SELECT a FROM "Public"."Pitches"', ("SELECT", '"Public"."Pitches"')),
        ("SELECT (SELECT max(x) FROM a), extract(year FROM d) FROM b", ("SELECT", "b")),
        ("SELECT 1", ("SELECT", None)),
        ("SELECT * FROM (SELECT 1) AS s", ("SELECT", None)),
        ("SELECT * FROM generate_series(1, 3)", ("SELECT", None)),
        ("SELECT * FROM ONLY parent", ("SELECT", "parent")),
        ("(SELECT a FROM x) UNION (SELECT a FROM y)", ("SELECT", "x")),
        ("INSERT INTO orders (a, b) VALUES (%s, %s)", ("INSERT", "orders")),
        ("insert into app.orders values (1)", ("INSERT", "app.orders")),
        ("UPDATE users SET name = 'x' WHERE id = 3", ("UPDATE", "users")),
        ("UPDATE ONLY users SET a = 1", ("UPDATE", "users")),
        ("DELETE FROM sessions WHERE expires < now()", ("DELETE", "sessions")),
        ("MERGE INTO stock s USING delta d ON s.id = d.id WHEN MATCHED THEN DELETE", ("MERGE", "stock")),
        ("WITH x AS (SELECT 1 FROM a) SELECT * FROM b", ("SELECT", "b")),
        ("WITH RECURSIVE x(n) AS (SELECT 1 UNION SELECT n+1 FROM x) SELECT n FROM x", ("SELECT", "x")),
        ("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved", ("INSERT", "b")),
        ("WITH x AS (SELECT 1)", ("WITH", None)),
        ("COPY pitches FROM STDIN", ("COPY", "pitches")),
        ("COPY (SELECT 1) TO STDOUT", ("COPY", None)),
        ("CREATE TABLE IF NOT EXISTS audit.log (id int)", ("CREATE", "audit.log")),
        ("CREATE TEMP TABLE scratch (id int)", ("CREATE", "scratch")),
        ("create unique index ix on public.users (email)", ("CREATE", "public.users")),
        ("CREATE INDEX CONCURRENTLY ix ON ONLY users (email)", ("CREATE", "users")),
        ("CREATE VIEW v AS SELECT 1", ("CREATE", None)),
        ("ALTER TABLE IF EXISTS ONLY users ADD COLUMN x int", ("ALTER", "users")),
        ("DROP TABLE IF EXISTS tmp_pitches", ("DROP", "tmp_pitches")),
        ("TRUNCATE TABLE ONLY events", ("TRUNCATE", "events")),
        ("TRUNCATE events, logs", ("TRUNCATE", "events")),
        ("BEGIN", ("BEGIN", None)),
        ("begin isolation level serializable", ("BEGIN", None)),
        ("COMMIT", ("COMMIT", None)),
        ("ROLLBACK TO SAVEPOINT s1", ("ROLLBACK", None)),
        ("SAVEPOINT s1", ("SAVEPOINT", None)),
        ("CALL refresh_stats(1)", ("CALL", None)),
        ("SET search_path TO app", ("SET", None)),
        ("SHOW server_version", ("SHOW", None)),
        ("  -- leading comment\n /* block */ select a from t", ("SELECT", "t")),
        ("", ("", None)),
        ("'just a string'", ("", None)),
        ("42", ("", None)),
    ],
)
def test_parse_statement(sql: str, expected: tuple[str, str | None]) -> None:
    assert parse_statement(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT a /* x /* y */ z */ FROM t /* w */ WHERE b = 1", ("SELECT", "t")),
        ("/* a /* b */ DELETE */ SELECT * FROM /* x /* y */ z */ pitches", ("SELECT", "pitches")),
        ("/* a /* b */ UPDATE users", ("", None)),
    ],
)
def test_nested_comments_are_skipped_by_the_parser(sql: str, expected: tuple[str, str | None]) -> None:
    assert parse_statement(sql) == expected


def test_results_are_cached_for_short_statements_only() -> None:
    stmt = "SELECT a FROM cached_table_for_test WHERE b = 7"
    normalize_sql(stmt)
    before = _sql._normalize_cached.cache_info().hits
    normalize_sql(stmt)
    assert _sql._normalize_cached.cache_info().hits == before + 1
    big = "SELECT " + ", ".join(["1"] * 5000)
    size = _sql._normalize_cached.cache_info().currsize
    assert normalize_sql(big) == "SELECT " + ", ".join(["?"] * 5000)
    assert _sql._normalize_cached.cache_info().currsize == size
    assert _sql._normalize_cached.cache_info().maxsize == 2048
    assert _sql._parse_cached.cache_info().maxsize == 2048


@pytest.mark.parametrize(
    "hostile",
    [
        "'" * 1_000_000,
        "''" * 500_000 + "x",
        "E'" + "\\" * 999_998,
        "$$" * 500_000,
        "$a" * 500_000,
        "$ab$ $ab " * 100_000,
        "/*" * 500_000,
        "/* /* */" * 200_000,
        "/**/" * 300_000,
        "*/" * 500_000,
        "--" * 500_000,
        "(" * 1_000_000,
        "IN (" + "1," * 400_000,
        "VALUES " + "(1)," * 200_000,
        "1e" * 500_000,
        '"' * 1_000_000,
        "a" * 1_000_000,
    ],
)
def test_hostile_input_is_processed(hostile: str) -> None:
    # Correctness on hostile shapes; the time bound is in bench/bench_sanitize.py. A
    # quadratic regex here would make this test hit the suite timeout.
    out = _normalize(hostile)
    assert isinstance(out, str)
    assert len(out) <= len(hostile)
    op, _table = _parse(hostile)
    assert isinstance(op, str)


_IDENT = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
    lambda s: (
        s.upper() not in {"IN", "TRUE", "FALSE", "NULL", "VALUES"}
        and s.lower()[:1] not in ("e", "b", "x", "n", "u")
    )
)
_SECRET = st.text(
    alphabet=string.ascii_letters + string.digits + " !#%&()*+,-./:;<=>?@[]^_{|}~\n", min_size=1
)


@st.composite
def _literal(draw: st.DrawFn) -> tuple[str, str]:
    """(SQL literal text, the secret content that must not survive)."""
    kind = draw(st.sampled_from(["str", "estr", "dollar", "tagged", "int", "float", "hex"]))
    if kind == "int":
        value = str(draw(st.integers(min_value=0, max_value=10**30)))
        return value, value
    if kind == "float":
        value = repr(draw(st.floats(min_value=0, allow_nan=False, allow_infinity=False)))
        return value, value
    if kind == "hex":
        value = hex(draw(st.integers(min_value=0, max_value=2**64)))
        return value, value
    secret = draw(_SECRET)
    if kind == "str":
        return "'" + secret.replace("'", "''") + "'", secret
    if kind == "estr":
        return "E'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'", secret
    if kind == "dollar":
        return "$$" + secret.replace("$", "") + "$$", secret.replace("$", "")
    return "$q$" + secret.replace("$", "") + "$q$", secret.replace("$", "")


@settings(max_examples=300, deadline=None)
@given(table=_IDENT, column=_IDENT, literals=st.lists(_literal(), min_size=1, max_size=5))
def test_generated_literals_never_survive(table: str, column: str, literals: list[tuple[str, str]]) -> None:
    conds = " AND ".join(f"{column} = {lit}" for lit, _ in literals)
    sql = f"SELECT {column} FROM {table} WHERE {conds} -- tail {literals[0][1]!r}"  # noqa: S608
    out = normalize_sql(sql)
    assert not any(ch.isdigit() for ch in out)
    assert "'" not in out
    assert "$$" not in out
    assert "$q$" not in out
    rest = out.replace(column, "").replace(table, "")
    # the same statement with harmless literals: a secret that is part of it (a keyword such
    # as "SELE") says nothing about a leak
    plain = " AND ".join(f"{column} = 1" for _ in literals)
    plain_sql = f"SELECT {column} FROM {table} WHERE {plain}"  # noqa: S608
    skeleton = normalize_sql(plain_sql).replace(column, "").replace(table, "")
    for _, secret in literals:
        if len(secret) >= 4 and secret.strip(" ?") and secret not in skeleton:
            assert secret not in rest
    assert parse_statement(sql) == ("SELECT", table)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_never_raises_and_idempotent_on_arbitrary_text(sql: str) -> None:
    once = normalize_sql(sql)
    assert normalize_sql(once) == once
    op, table = parse_statement(sql)
    assert op == op.upper()
    assert table is None or isinstance(table, str)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="'\"$eE\\/*-()IN,?1.x \n", max_size=60))
def test_idempotent_on_sql_alphabet(sql: str) -> None:
    once = normalize_sql(sql)
    assert normalize_sql(once) == once
