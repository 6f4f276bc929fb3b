"""SQL statement text helpers: literal normalisation and operation/table parsing.

Both functions run one left-to-right tokenizer pass (a single master regex whose alternatives
are each linear: disjoint character classes, unrolled quote loops, and an "unterminated" tail
that always matches), so hostile text of any size is processed in linear time. Results for
short statements are cached in bounded LRU caches because the same statements repeat.

The tokenizer follows PostgreSQL lexical rules closely enough for telemetry: it never needs to
be a validating parser, only to never let a literal value through.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

__all__ = ["normalize_sql", "parse_statement"]

# Statements longer than this are processed but not cached (the caches are bounded by entry
# count, so huge entries would make their memory unbounded in practice).
_CACHE_MAX_LEN = 8192

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lc>--[^\n]*)
  | (?P<bc>/\*(?:.*?\*/|.*))
  | (?P<estr>[eE]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'?)
  | (?P<pstr>(?:[bBxXnN]|[uU]&)'[^']*(?:''[^']*)*'?)
  | (?P<str>'[^']*(?:''[^']*)*'?)
  | (?P<qid>(?:[uU]&)?"[^"]*(?:""[^"]*)*"?)
  | (?P<param>\$\d+|%s|%\([^()\n]{0,128}\)s)
  | (?P<dq0>\$\$(?:.*?\$\$|.*))
  | (?P<dq>\$(?P<tag>[^\W\d]\w*)\$(?:.*?\$(?P=tag)\$|.*))
  | (?P<num>0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+
        |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
  | (?P<id>[^\W\d][\w$]*)
  | (?P<op>.)
    """,
    re.VERBOSE | re.DOTALL,
)

_SKIP = frozenset({"ws", "lc", "bc"})
_LITERAL = frozenset({"estr", "pstr", "str", "dq0", "dq", "num"})
_BOOLEANS = frozenset({"TRUE", "FALSE"})


# Block comment delimiters: PostgreSQL's block comments nest (``/* a /* b */ c */``).
_COMMENT_MARK = re.compile(r"/\*|\*/")


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    if sql.count("/*") < 2:  # the common case: no nesting possible, the master regex alone
        for m in _TOKEN.finditer(sql):
            yield m.lastgroup or "op", m.group()
        return
    yield from _tokens_with_comments(sql)


def _tokens_with_comments(sql: str) -> Iterator[tuple[str, str]]:
    """``_tokens`` when the text may hold nested block comments: ``_TOKEN``'s ``bc`` stops at
    the first ``*/``; a comment with another ``/*`` inside is re-scanned with a depth counter
    and the tokenizer resumes after its real end."""
    pos = 0
    while True:
        for m in _TOKEN.finditer(sql, pos):
            kind = m.lastgroup or "op"
            if kind == "bc" and sql.find("/*", m.start() + 2, m.end()) >= 0:
                pos = _comment_end(sql, m.start())
                yield kind, sql[m.start() : pos]
                break
            yield kind, m.group()
        else:
            return


def _comment_end(sql: str, start: int) -> int:
    """End of the (nested) block comment opening at ``start``; the end of the text when it is
    unterminated (the rest is swallowed, as an unterminated string's). Linear time."""
    depth = 0
    for m in _COMMENT_MARK.finditer(sql, start):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0:
            return m.end()
    return len(sql)


# ---------------------------------------------------------------------------------------------
# normalize_sql


def _is_simple_item(tok: str) -> bool:
    # A bare value slot inside an IN list or a VALUES tuple: literal marker or placeholder.
    return tok in ("?", "%s", "NULL", "null", "DEFAULT", "default") or (
        len(tok) > 1 and tok[0] == "$" and tok[1:].isdigit()
    )


def _parse_tuple(toks: list[str], i: int) -> tuple[int, int] | None:
    """If toks[i] opens ``( item, item, ... )`` of simple items, return (end index after ``)``,
    item count); else None."""
    n = len(toks)
    if i >= n or toks[i] != "(":
        return None
    i += 1
    count = 0
    while True:
        while i < n and toks[i] == " ":
            i += 1
        if i < n and toks[i] == "-":  # a negative number: "-" then "?"
            i += 1
        if i >= n or not _is_simple_item(toks[i]):
            return None
        i += 1
        count += 1
        while i < n and toks[i] == " ":
            i += 1
        if i < n and toks[i] == ",":
            i += 1
            continue
        if i < n and toks[i] == ")":
            return i + 1, count
        return None


def _skip_ws(toks: list[str], i: int) -> int:
    while i < len(toks) and toks[i] == " ":
        i += 1
    return i


def _collapse_lists(toks: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    n = len(toks)
    while i < n:
        tok = toks[i]
        out.append(tok)
        i += 1
        upper = tok.upper()
        if upper == "IN":
            j = _skip_ws(toks, i)
            parsed = _parse_tuple(toks, j)
            if parsed is not None:
                out.extend(toks[i:j])
                out.extend(("(", "?", ")"))
                i = parsed[0]
        elif upper == "VALUES":
            j = _skip_ws(toks, i)
            first = _parse_tuple(toks, j)
            if first is None:
                continue
            end, width = first
            out.extend(toks[i:end])
            i = end
            # Drop every following ", (same-width simple tuple)".
            while True:
                k = _skip_ws(toks, i)
                if k >= n or toks[k] != ",":
                    break
                nxt = _parse_tuple(toks, _skip_ws(toks, k + 1))
                if nxt is None or nxt[1] != width:
                    break
                i = nxt[0]
    return out


# A quote after an odd run of backslashes inside a quoted string: where PostgreSQL (standard
# conforming strings) and dialects with backslash escapes (MySQL, PostgreSQL with
# standard_conforming_strings off) disagree on where the string ends.
_BACKSLASH_QUOTE = re.compile(r"(?<!\\)(?:\\\\)*\\'")


def _normalize(sql: str) -> str:
    toks: list[str] = []
    for kind, text in _tokens(sql):
        if kind in _SKIP:
            if toks and toks[-1] != " ":
                toks.append(" ")
        elif kind in _LITERAL or (kind == "id" and text.upper() in _BOOLEANS):
            toks.append("?")
            if (
                (kind == "str" or kind == "pstr")
                and "\\" in text
                and _BACKSLASH_QUOTE.search(text, text.index("'") + 1)
            ):
                # 'it\'s ...': one dialect reads the rest of the text as code, the other as
                # string content; either may be right, so the rest goes, as after an
                # unterminated string (nothing of a literal can leak whichever dialect it is).
                break
        else:
            toks.append(text)
    if "IN" in sql.upper() or "VALUES" in sql.upper():
        toks = _collapse_lists(toks)
    _savepoint_name(toks)
    return "".join(toks).strip()


# SAVEPOINT name / RELEASE [SAVEPOINT] name / ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
_SAVEPOINT_VERBS = frozenset({"SAVEPOINT", "RELEASE", "ROLLBACK"})
_SAVEPOINT_WORDS = frozenset(
    {"SAVEPOINT", "RELEASE", "ROLLBACK", "TO", "WORK", "TRANSACTION", "AND", "NO", "CHAIN"}
)


def _savepoint_name(toks: list[str]) -> None:
    """Replace a savepoint's name by ``?``: frameworks make one per thread or call (Django's
    ``"s140111072192192_x1"``), and a text per name splits one statement into thousands."""
    words = [i for i, t in enumerate(toks) if t != " "]
    while words and toks[words[-1]] == ";":  # (one statement, maybe with its semicolon)
        words.pop()
    if len(words) < 2 or toks[words[0]].upper() not in _SAVEPOINT_VERBS or ";" in (toks[i] for i in words):
        return
    verb, last = toks[words[0]].upper(), toks[words[-1]]
    if verb == "ROLLBACK" and "TO" not in {toks[i].upper() for i in words}:
        return  # (a plain ROLLBACK [AND [NO] CHAIN] names no savepoint)
    if last.upper() not in _SAVEPOINT_WORDS and (last[0] == '"' or last[0].isalpha() or last[0] == "_"):
        toks[words[-1]] = "?"


_normalize_cached = functools.lru_cache(maxsize=2048)(_normalize)


def normalize_sql(sql: str) -> str:
    """Return ``sql`` with every literal value replaced by ``?``.

    Replaced: single-quoted strings (also ``E''``, ``B''``, ``X''``, ``N''``, ``U&''`` and
    doubled quotes), dollar-quoted strings (``$$..$$``, ``$tag$..$tag$``), numbers (decimals,
    exponents, hex/octal/binary), ``TRUE``/``FALSE``. Unterminated strings and comments
    swallow the rest of the text (nothing after an opening quote can leak), and so does a
    string with a backslash before a quote (``'it\\'s'``), whose end depends on the dialect. Comments are
    removed, whitespace runs become one space, ``IN (?, ?, ?)`` becomes ``IN (?)`` and a
    ``VALUES`` list of same-width tuples keeps only its first tuple. Identifiers (also quoted
    ``"Identifiers"``), ``NULL`` and placeholders (``%s``, ``%(name)s``, ``$1``, ``?``) are
    kept. Idempotent; never raises on any string; linear time.
    """
    if len(sql) <= _CACHE_MAX_LEN:
        return _normalize_cached(sql)
    return _normalize(sql)


# ---------------------------------------------------------------------------------------------
# parse_statement

_MAIN_VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})
_CREATE_MODIFIERS = frozenset({"OR", "REPLACE", "GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED", "UNIQUE"})


def _significant(sql: str) -> list[tuple[str, str]]:
    return [(kind, text) for kind, text in _tokens(sql) if kind not in _SKIP]


def _word(toks: list[tuple[str, str]], i: int) -> str:
    """Upper-cased keyword at ``i`` ("" when out of range or not a bare word)."""
    if i < len(toks) and toks[i][0] == "id":
        return toks[i][1].upper()
    return ""


def _skip_words(toks: list[tuple[str, str]], i: int, *words: str) -> int:
    """Skip the exact word sequence ``words`` at ``i`` when present."""
    for k, word in enumerate(words):
        if _word(toks, i + k) != word:
            return i
    return i + len(words)


def _name_at(toks: list[tuple[str, str]], i: int, *, relation: bool = False) -> str | None:
    """A possibly qualified name (``schema.table``, quoted parts kept as written) at ``i``.

    ``relation``: the name is in a FROM clause, where ``name(`` is a function call.
    """
    n = len(toks)
    if i >= n or toks[i][0] not in ("id", "qid"):
        return None
    parts = [toks[i][1]]
    i += 1
    while i + 1 < n and toks[i] == ("op", ".") and toks[i + 1][0] in ("id", "qid"):
        parts.append(toks[i + 1][1])
        i += 2
    if relation and i < n and toks[i] == ("op", "("):  # FROM generate_series(...): not a table
        return None
    return ".".join(parts)


def _find_at_depth0(toks: list[tuple[str, str]], start: int, words: frozenset[str]) -> int:
    depth = 0
    for i in range(start, len(toks)):
        kind, text = toks[i]
        if kind == "op":
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
                if depth < 0:
                    return -1
        elif depth == 0 and kind == "id" and text.upper() in words:
            return i
    return -1


def _table_for(op: str, toks: list[tuple[str, str]], i: int) -> str | None:
    """Main table of statement ``op`` whose verb token is at ``i``."""
    if op == "SELECT":
        at = _find_at_depth0(toks, i + 1, frozenset({"FROM"}))
        if at < 0:
            return None
        return _name_at(toks, _skip_words(toks, at + 1, "ONLY"), relation=True)
    if op in ("INSERT", "MERGE"):
        return _name_at(toks, _skip_words(toks, i + 1, "INTO"))
    if op == "UPDATE":
        return _name_at(toks, _skip_words(toks, i + 1, "ONLY"))
    if op == "DELETE":
        return _name_at(toks, _skip_words(toks, _skip_words(toks, i + 1, "FROM"), "ONLY"))
    if op == "COPY":
        return _name_at(toks, i + 1)
    if op == "TRUNCATE":
        return _name_at(toks, _skip_words(toks, _skip_words(toks, i + 1, "TABLE"), "ONLY"))
    if op in ("CREATE", "ALTER", "DROP"):
        j = i + 1
        while _word(toks, j) in _CREATE_MODIFIERS:
            j += 1
        obj = _word(toks, j)
        if obj == "TABLE":
            j = _skip_words(toks, j + 1, "IF", "NOT", "EXISTS")
            j = _skip_words(toks, j, "IF", "EXISTS")
            return _name_at(toks, _skip_words(toks, j, "ONLY"))
        if obj == "INDEX" and op == "CREATE":
            at = _find_at_depth0(toks, j + 1, frozenset({"ON"}))
            return None if at < 0 else _name_at(toks, _skip_words(toks, at + 1, "ONLY"))
    return None


def _parse(sql: str) -> tuple[str, str | None]:
    toks = _significant(sql)
    i = 0
    while i < len(toks) and toks[i] == ("op", "("):  # "(SELECT ...) UNION ..."
        i += 1
    op = _word(toks, i)
    if not op:
        return "", None
    if op == "WITH":
        at = _find_at_depth0(toks, i + 1, _MAIN_VERBS)
        if at < 0:
            return "WITH", None
        op, i = toks[at][1].upper(), at
    return op, _table_for(op, toks, i)


_parse_cached = functools.lru_cache(maxsize=2048)(_parse)


def parse_statement(sql: str) -> tuple[str, str | None]:
    """Return ``(operation, main table)`` of a SQL statement.

    ``operation`` is the first keyword upper-cased (``SELECT``, ``INSERT``, ``BEGIN``,
    ``COPY``, ``SET``...; for ``WITH`` the main statement's verb when it is a
    SELECT/INSERT/UPDATE/DELETE/MERGE, else ``"WITH"``), ``""`` when the text has no leading
    keyword. The table is the first ``FROM`` table of a SELECT, the ``INTO`` table of an
    INSERT/MERGE, the UPDATE / DELETE FROM / COPY / TRUNCATE target, the table of
    CREATE/ALTER/DROP TABLE and CREATE INDEX ... ON; written as in the text (schema
    qualification and quotes kept: ``public."Pitches"``), or None when not found.
    Never raises; linear time.
    """
    if len(sql) <= _CACHE_MAX_LEN:
        return _parse_cached(sql)
    return _parse(sql)
