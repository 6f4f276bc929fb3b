"""Shapes that leaked or broke JSON until the sanitizer learnt them: the value of a secret
command-line option written with a space (``--password hunter2``, also in argument lists),
JSON member names ending with an escaped backslash (``{"a\\\\": 4111...}`` was given a quote
with the name's backslashes: invalid JSON, and a map under ``"token\\\\"`` leaked), card numbers
in arrays nested in arrays or after a map (a bare ``[CARD]``: invalid JSON), and ``pin`` members
in text (a key rule term the text rules did not have)."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitchey_trace.sanitize import _RENDERED, Sanitizer
from tests.support.sanitizers import SAN_IDS, SANITIZERS, nest, pipeline_vs_uncached, unnest

SAN = Sanitizer()
CARD = 4111111111111111
CARD2 = 5500000000000004


def _span(attributes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "span", "name": "s", "attributes": attributes}


def _masked(value: Any) -> bool:
    """A value one of the modes wrote for a secret."""
    return isinstance(value, str) and bool(_RENDERED.fullmatch(value))


# ---------------------------------------------------------------------------------------------
# 1. secret command-line options written with a space: the next word goes

_OPTIONS = [
    "--password",
    "--db-password",
    "--secret-key",
    "--api-key",
    "--token",
    "--auth-token",
    "--client-secret",
    "--access-token",
    "--pin",
    "--DB_PASSWORD",
]
_SECRET = "hUnter2-s3cr3t"


@pytest.mark.parametrize("option", _OPTIONS)
def test_secret_option_values_after_a_space_are_masked(option: str) -> None:
    for text, expected in {
        f"mysql {option} {_SECRET} -u root": f"mysql {option} [REDACTED] -u root",
        f"{option} {_SECRET}": f"{option} [REDACTED]",
        f"tool {option}\t{_SECRET} --verbose": f"tool {option}\t[REDACTED] --verbose",
        f"deploy {option} '{_SECRET} two' --x": f"deploy {option} '[REDACTED]' --x",
        f'deploy {option} "{_SECRET} two" --x': f'deploy {option} "[REDACTED]" --x',
        f"run({option} {_SECRET})": f"run({option} [REDACTED])",
        f"{option} Bearer {_SECRET} --x": f"{option} [REDACTED] --x",
        # the "=" form was masked already; it stays so
        f"app {option}={_SECRET} x": f"app {option}=[REDACTED] x",
    }.items():
        out = SAN.scrub(text)
        assert out == expected, text
        assert SAN.scrub(out) == out


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
@pytest.mark.parametrize(
    "text",
    [
        f"pg_dump --password {_SECRET}abcdefgh -h db",
        f"app --secret-key '{_SECRET} abcdefgh' --port 80",
        f"app --token {_SECRET}abcdefgh",
        f"['mysql', '--password', '{_SECRET}abcdefgh', '-u', 'bob']",
        f'["mysql", "--api-key", "{_SECRET}abcdefgh"]',
    ],
)
def test_secret_option_values_in_every_mode(san: Sanitizer, text: str) -> None:
    out = san.scrub(text)
    assert _SECRET not in out
    assert "abcdefgh" not in out or "****" in out  # (partial mode may keep the last characters)
    assert san.scrub(out) == out


@pytest.mark.parametrize(
    "text",
    [
        # switches take no value: the next argument is a positional one
        "pg_dump --no-password pitchey",
        "psql --NO-PASSWORD pitchey",
        "ansible --ask-password site.yml",
        "gh auth login --with-token < token.txt",
        # names that describe a secret without holding it (as key rules keep them)
        "pg_dump --password-file /run/secrets/pgpass pitchey",
        "oauth --token-url https://auth.example.com/oauth/token --scope read",
        "llm --token-count 3",
        "docker login --password-stdin",
        # no value: the next word is another option, an "=" pair or a placeholder
        "mysql --password --verbose",
        "mysql --password",
        "mysql --password ?",
        "mysql --password %s",
        # a usage line's placeholders
        "usage: app [--api-key API_KEY] [--token TOKEN]",
        # not a secret name, or a single-letter flag (-p is too ambiguous: -p 8080)
        "app --key abc123 --user bob",
        "mysql -p hunter2",
        "docker run -p 8080:80 app",
        # not an option
        "x--password abc",
        "SELECT 1 -- password check",
    ],
)
def test_options_that_hold_no_secret_are_unchanged(text: str) -> None:
    assert SAN.scrub(text) == text


def test_secret_options_in_json_strings_keep_the_document_valid() -> None:
    for doc, masked in [
        ({"cmd": f"mysql --password {_SECRET} -u x"}, {"cmd": "mysql --password [REDACTED] -u x"}),
        ({"cmd": f'mysql --password "{_SECRET} two" -u x'}, {"cmd": 'mysql --password "[REDACTED]" -u x'}),
        ({"argv": ["mysql", "--password", _SECRET]}, {"argv": ["mysql", "--password", "[REDACTED]"]}),
        ({"argv": ["app", "--pin", 1234, "-v"]}, {"argv": ["app", "--pin", "[REDACTED]", "-v"]}),
        ({"argv": ["app", "--token", "--verbose"]}, {"argv": ["app", "--token", "--verbose"]}),
        ({"cmd": "x --password "}, {"cmd": "x --password "}),  # the string ends: no value
    ]:
        for indent in (None, 2):
            for levels in (0, 1, 2):
                text = nest(json.dumps(doc, indent=indent), levels)
                out = SAN.scrub(text)
                assert unnest(out, levels) == masked, text
                assert SAN.scrub(out) == out


def test_a_secret_option_value_ends_at_an_escaped_line_break() -> None:
    text = json.dumps({"cmd": f"mysql --password {_SECRET}\n--user bob"})
    assert json.loads(SAN.scrub(text)) == {"cmd": "mysql --password [REDACTED]\n--user bob"}
    # In JSON inside a JSON string the line break is "\\n", which is also how a backslash then
    # an "n" is written in a value: the word goes on (masking more, never less).
    out = SAN.scrub(nest(text, 1))
    assert _SECRET not in out
    assert unnest(out, 1) == {"cmd": "mysql --password [REDACTED] bob"}


def test_a_logged_argument_list_repr_loses_the_secret() -> None:
    # subprocess.CalledProcessError's message holds the argument list's repr
    message = f"Command '['mysql', '--password', '{_SECRET}', 'pitchey']' returned non-zero exit status 1."
    assert SAN.scrub(message) == (
        "Command '['mysql', '--password', '[REDACTED]', 'pitchey']' returned non-zero exit status 1."
    )
    out = SAN.scrub(repr(["app", "--api-key", _SECRET, "--pin", 4321]))
    assert ast.literal_eval(out) == ["app", "--api-key", "[REDACTED]", "--pin", "[REDACTED]"]


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_argument_list_attributes_lose_the_value_after_a_secret_option(san: Sanitizer) -> None:
    args = ["mysql", "--password", _SECRET, "--pin", 4321, "--no-password", "db", "--token", "--x", "--token"]
    out = san(_span({"process.command_args": args, "argv": tuple(args)}))["attributes"]
    for value in out.values():
        assert value[:2] == ["mysql", "--password"]
        assert value[3] == "--pin"
        assert _masked(value[2])
        assert _masked(value[4])
        assert value[5:] == ["--no-password", "db", "--token", "--x", "--token"]
    assert san(san(_span({"process.command_args": args}))) == san(_span({"process.command_args": args}))


@pytest.mark.parametrize(
    "shape",
    ["--password ", "--password '", "['--token', '", '"--pin", ', "--token Bearer ", '--password \\"'],
)
def test_secret_options_stay_linear(shape: str) -> None:
    # (no timing threshold: this must simply finish, as in test_hostile_megabyte_strings)
    text = shape * (1_000_000 // len(shape))
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# 2. member names ending with an escaped backslash: the value's quote has no part of the name

_BACKSLASH_DOCS: list[tuple[Any, Any]] = [
    ({"a\\": CARD}, {"a\\": "[CARD]"}),
    ({"\\": CARD, "n": 1}, {"\\": "[CARD]", "n": 1}),
    ({"a\\\\": CARD}, {"a\\\\": "[CARD]"}),
    ({"a\\": [CARD, 1]}, {"a\\": ["[CARD]", 1]}),
    ({"a\\": [1, CARD]}, {"a\\": [1, "[CARD]"]}),
    ({"token\\": 12345}, {"token\\": "[REDACTED]"}),
    ({"token\\": [1, 2], "n": 1}, {"token\\": "[REDACTED]", "n": 1}),
    ({"a": "b", "token\\": {"x": "bob"}, "n": 1}, {"a": "b", "token\\": "[REDACTED]", "n": 1}),
]


@pytest.mark.parametrize(("doc", "masked"), _BACKSLASH_DOCS, ids=lambda v: json.dumps(v)[:30])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_names_ending_with_a_backslash_keep_the_document_valid(
    doc: Any, masked: Any, indent: int | None, levels: int
) -> None:
    text = nest(json.dumps(doc, indent=indent), levels)
    out = SAN.scrub(text)
    assert unnest(out, levels) == masked, text
    assert SAN.scrub(out) == out
    assert "4111" not in out
    assert "bob" not in out


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_names_ending_with_a_backslash_in_every_mode(san: Sanitizer, levels: int) -> None:
    doc = {"a\\": CARD, "b\\\\": [CARD2], "token\\": {"user": "bob"}, "n": 1}
    out = san.scrub(nest(json.dumps(doc), levels))
    loaded = unnest(out, levels)
    assert loaded["n"] == 1
    assert all(_masked(loaded[k]) for k in ("a\\", "token\\"))
    assert _masked(loaded["b\\\\"][0])
    assert not any(bad in out for bad in ("4111", "5500", "bob"))
    assert san.scrub(out) == out


def test_names_ending_with_a_backslash_in_a_python_repr() -> None:
    out = SAN.scrub(repr({"a\\": CARD, "token\\": [1, 2], "n": 1}))
    assert ast.literal_eval(out) == {"a\\": "[CARD]", "token\\": "[REDACTED]", "n": 1}


# ---------------------------------------------------------------------------------------------
# 3. cards in arrays nested in arrays, or after a map or an array: a quoted marker

_NESTED_CARDS: list[tuple[Any, Any]] = [
    ({"a": [[CARD]]}, {"a": [["[CARD]"]]}),
    ([[CARD]], [["[CARD]"]]),
    ([[CARD, 1], [CARD2]], [["[CARD]", 1], ["[CARD]"]]),
    ({"a": [{"b": 1}, CARD]}, {"a": [{"b": 1}, "[CARD]"]}),
    ({"a": [[1, 2], CARD]}, {"a": [[1, 2], "[CARD]"]}),
    ([{"x": [1]}, [CARD]], [{"x": [1]}, ["[CARD]"]]),
    ([{"[": None}, CARD], [{"[": None}, "[CARD]"]),
    ({"msg": "[x", "a": [[CARD]]}, {"msg": "[x", "a": [["[CARD]"]]}),
    (
        {"a": [{"b": "x"}, [CARD, {"c": [1, [2, CARD2]]}]]},
        {"a": [{"b": "x"}, ["[CARD]", {"c": [1, [2, "[CARD]"]]}]]},
    ),
    ([{"a": [], "b": {}}] * 30 + [CARD], [{"a": [], "b": {}}] * 30 + ["[CARD]"]),
    # the rows of a long array of arrays chain (well past the 4 KB a walk starts from)
    (
        {"rows": [[i, CARD, f"n{i}"] for i in range(300)]},
        {"rows": [[i, "[CARD]", f"n{i}"] for i in range(300)]},
    ),
    ([[[CARD]] * 3] * 3, [[["[CARD]"]] * 3] * 3),
]


@pytest.mark.parametrize(("doc", "masked"), _NESTED_CARDS, ids=lambda v: json.dumps(v)[:40])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("levels", [0, 1, 2])
def test_cards_in_nested_arrays_stay_valid_json(
    doc: Any, masked: Any, indent: int | None, levels: int
) -> None:
    san = Sanitizer(max_value_length=1_000_000)
    text = nest(json.dumps(doc, indent=indent), levels)
    out = san.scrub(text)
    assert unnest(out, levels) == masked, text
    assert san.scrub(out) == out
    assert "4111" not in out
    assert "5500" not in out


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_cards_in_nested_arrays_in_every_mode(san: Sanitizer) -> None:
    for levels in (0, 1):
        out = san.scrub(nest(json.dumps({"a": [[CARD], {"b": 1}, CARD2, [[1, CARD]]]}), levels))
        a = unnest(out, levels)["a"]
        assert [_masked(a[0][0]), a[1], _masked(a[2]), _masked(a[3][0][1])] == [True, {"b": 1}, True, True]
        assert "4111" not in out
        assert "5500" not in out
        assert san.scrub(out) == out


def test_cards_in_nested_lists_of_a_python_repr() -> None:
    out = SAN.scrub(repr({"a": [[CARD], ["x", CARD2], {"b": 1}, -CARD]}))
    assert ast.literal_eval(out) == {"a": [["[CARD]"], ["x", "[CARD]"], {"b": 1}, "[CARD]"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # free text, or an array whose quote cannot be known: the marker stays bare
        (f"ids=[[{CARD}]]", "ids=[[[CARD]]]"),
        (f"x [[{CARD}]]", "x [[[CARD]]]"),
        (f"[INFO] x, {CARD}, y", "[INFO] x, [CARD], y"),
        (f"cards {CARD}, {CARD2}", "cards [CARD], [CARD]"),
        (f"{{'a': [('x', {CARD})]}}", "{'a': [('x', [CARD])]}"),  # (a tuple is no JSON array)
        (f'{{"a": ["x {CARD}"]}}', '{"a": ["x [CARD]"]}'),  # in a string
    ],
)
def test_cards_whose_array_is_not_known_stay_bare(text: str, expected: str) -> None:
    assert SAN.scrub(text) == expected


_CARD_VALUES = [CARD, CARD2, -CARD, float(CARD), 378282246310005]
_NAMES = ["a", "a\\", "\\", "token", "token\\", "pin", "x\\\\", 'q"', "[", "b'"]
_KEYS = st.sampled_from(_NAMES) | st.text(max_size=6)
_SCALARS = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8)
_VALUES = st.recursive(
    _SCALARS | st.sampled_from(_CARD_VALUES),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.lists(_VALUES, max_size=4) | st.dictionaries(_KEYS, _VALUES, max_size=4),
    san_index=st.integers(0, len(SANITIZERS) - 1),
    indent=st.sampled_from([None, 2]),
    levels=st.integers(0, 2),
)
def test_json_with_cards_anywhere_stays_valid_json_in_every_mode(
    doc: Any, san_index: int, indent: int | None, levels: int
) -> None:
    san = SANITIZERS[san_index]
    text = nest(json.dumps(doc, indent=indent), levels)
    out = san.scrub(text)
    unnest(out, levels)  # valid JSON at every level
    assert not any(str(card) in out for card in (CARD, CARD2, 378282246310005))
    assert san.scrub(out) == out


@pytest.mark.parametrize(
    "shape",
    [
        "[[" + str(CARD) + ", ",
        "[" + str(CARD) + ",",
        '"a": [[' + "1," * 200 + "x," + (str(CARD) + ",") * 10,
        "[]," * 50 + str(CARD) + ",",
        '{"x": "y"},' * 30 + str(CARD) + ",",
        '"a": ["' + (str(CARD) + ", ") * 30 + " ",
        "[" * 40 + str(CARD) + ",",
        '"[' + "1," * 100 + str(CARD) + ",",
    ],
)
def test_cards_in_nested_arrays_stay_linear(shape: str) -> None:
    # (no timing threshold: this must simply finish, as in test_hostile_megabyte_strings)
    text = shape * (1_000_000 // len(shape))
    out = SAN.scrub(text)
    assert SAN.scrub(out) == out


# ---------------------------------------------------------------------------------------------
# 4. "pin" names in text, as the key rule masks a pin attribute


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pin=1234", "pin=[REDACTED]"),
        ("user_pin: 4321 ok", "user_pin: [REDACTED] ok"),
        ("userPin=4321&x=1", "userPin=[REDACTED]&x=1"),
        ("PIN: 4321", "PIN: [REDACTED]"),
        ("card.pin=0000 x", "card.pin=[REDACTED] x"),
        ('{"pin": 1234, "n": 1}', '{"pin": "[REDACTED]", "n": 1}'),
        ("{'pin': '1234'}", "{'pin': '[REDACTED]'}"),
        (
            json.dumps({"body": json.dumps({"pin": 1234})}),
            json.dumps({"body": json.dumps({"pin": "[REDACTED]"})}),
        ),
        # pin as a word only; a boolean stays, as key rules keep it
        (
            "spin=3 hairpin=2 pinned=true pin_count=3 pinCode=x",
            "spin=3 hairpin=2 pinned=true pin_count=3 pinCode=x",
        ),
        ('{"pin": true}', '{"pin": true}'),
    ],
)
def test_pin_names_in_text(text: str, expected: str) -> None:
    out = SAN.scrub(text)
    assert out == expected
    assert SAN.scrub(out) == out


@pytest.mark.parametrize("san", SANITIZERS, ids=SAN_IDS)
def test_pin_names_in_text_in_every_mode(san: Sanitizer) -> None:
    out = san.scrub(json.dumps({"user": "bob", "pin": 482193, "card_pin": "482193"}))
    loaded = json.loads(out)
    assert loaded["user"] == "bob"
    assert _masked(loaded["pin"])
    assert _masked(loaded["card_pin"])
    assert "482193" not in out
    assert san.scrub(out) == out
    assert "482193" not in san.scrub("pin=482193")


# ---------------------------------------------------------------------------------------------
# the pipeline (the C record builder once the caches are warm) exports what the Python path gives

_PIPELINE_ATTRS: dict[str, Any] = {
    "process.command_line": f"pg_dump --password {_SECRET} --no-password pitchey",
    "process.command_args": ["mysql", "--password", _SECRET, "-u", "root"],
    "argv": ("app", "--token", _SECRET, "--password=" + _SECRET),
    "exception.message": f"Command '['mysql', '--api-key', '{_SECRET}']' returned non-zero exit status 1.",
    "body": json.dumps({"a\\": CARD, "rows": [[1, CARD], [2, CARD2]], "x": [{"b": 1}, CARD], "pin": 4321}),
    "note": "pin=4321 spin=3",
}


@pytest.mark.parametrize("san_index", range(len(SANITIZERS)), ids=SAN_IDS)
def test_pipeline_exports_what_the_uncached_python_path_gives(san_index: int) -> None:
    expected = pipeline_vs_uncached(SANITIZERS[san_index], _PIPELINE_ATTRS)
    blob = repr(expected)
    assert _SECRET not in blob
    assert "4111111111111111" not in blob
    assert "5500000000000004" not in blob
    assert "4321" not in blob
    json.loads(expected[0]["body"])
