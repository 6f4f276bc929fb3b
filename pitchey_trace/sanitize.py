"""The sanitizer: nothing secret or personal leaves the process.

A :class:`Sanitizer` is a callable ``record -> new record`` that the export worker applies to
every record before routing, so no exporter ever receives an unsanitized record. It is built
from small rule objects made by lowercase factory functions::

    from pitchey_trace import sanitize

    pt.configure(sanitizer=sanitize.Sanitizer(
        add=[sanitize.keys("internal_note"), sanitize.pattern("employee", r"EMP-[0-9]{6}")],
        allow=["session.id"],
    ))

Rules (all on by default except :func:`ip_addresses`; see ``docs/sanitizing.md``):

* key rules - :func:`keys`: attribute keys naming secrets (password, token, api key, cookie,
  authorization, session id, card, cvv, ssn...; case-insensitive, ``-``/``_``/``.``/camelCase
  all alike) have their whole value replaced;
* value detectors anywhere inside any string - :func:`private_keys`, :func:`url_credentials`,
  :func:`secret_params`, :func:`auth_headers`, :func:`jwts`, :func:`cloud_keys`,
  :func:`emails`, :func:`cards` (Luhn-valid only), :func:`ssns`, :func:`phones`,
  :func:`ip_addresses`, and your own :func:`pattern`;
* :func:`sql`: literal normalisation of ``db.query.text`` / ``db.statement``;
* any callable ``(key, text) -> text`` you add;
* limits: attribute count, value length (truncation marked ``...[truncated]``), event count.

Each rule has a mode: :func:`mask` (default, a fixed marker such as ``[EMAIL]``),
:func:`partial` (e.g. the last 4 digits of a card) or :func:`hashed` (keyed HMAC-SHA256,
``hash:`` + hex prefix) so equal values stay correlatable without being revealed.

All detectors are compiled into one regular expression scanned once per string; each
alternative is linear (bounded or deterministic repetitions, start positions restricted by
look-behinds), so hostile input is processed in linear time. Results for short strings and
the decision per attribute key are kept in bounded caches.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import ipaddress
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote_plus

from pitchey_trace import _accel, _stats
from pitchey_trace._span import Span
from pitchey_trace._sql import normalize_sql
from pitchey_trace.records import (
    _DEFAULT_THRESHOLDS,
    _KIND_STR,
    _STATUS_STR,
    AUDIT_RECORD_KEYS,
    NO_ITEMS,
    PENDING_AUDIT,
    SPAN_RECORD_KEYS,
    CategoryThresholds,
    Record,
    request_audit,
    span_events,
    span_links,
    span_record,
    span_structure,
    span_template,
)

_build_span_records = _accel.build_span_records

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_KEY_TERMS",
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_SEQUENCE_LENGTH",
    "DEFAULT_MAX_VALUE_LENGTH",
    "DEFAULT_VALUE_NAMESPACES",
    "TRUNCATED_SUFFIX",
    "Detector",
    "KeyRule",
    "Mode",
    "PatternRule",
    "Rule",
    "Sanitizer",
    "SqlRule",
    "TextRule",
    "auth_headers",
    "cards",
    "cloud_keys",
    "default_rules",
    "emails",
    "hashed",
    "ibans",
    "ip_addresses",
    "jwts",
    "keys",
    "mask",
    "partial",
    "pattern",
    "phones",
    "private_keys",
    "secret_params",
    "sql",
    "ssns",
    "url_credentials",
]

DEFAULT_MAX_ATTRIBUTES = 128
DEFAULT_MAX_EVENTS = 128
DEFAULT_MAX_VALUE_LENGTH = 8192
DEFAULT_MAX_SEQUENCE_LENGTH = 256
TRUNCATED_SUFFIX = "...[truncated]"
_MAX_DEPTH = 8
_CACHE_MAX_ENTRIES = 8192  # attribute keys and secret-param names
DEFAULT_CACHE_SIZE = 8192
_CACHE_MAX_LEN = 512
#: Integers from here up (to 19 digits) are checked for card numbers; smaller ones pass.
_CARD_MIN = 10**12
#: Smaller attribute maps are sanitized key by key: that is as fast as the whole-map memo.
_MEMO_MIN_ATTRS = 5
# Values whose equality implies the same sanitized result once their type is known (see
# Sanitizer._span_attrs): not tuples or frozensets, whose items may be equal across types.
_MEMO_VALUE_TYPES = frozenset({str, int, float, bool, type(None)})


class TextRule(Protocol):
    """A rule of your own: any callable ``(key, text) -> text``. Called for every string after
    the built-in rules, with the attribute key (or the record field name: ``name``,
    ``status_message``, ``event.name``, ``actor``...); returns the text to export."""

    def __call__(self, key: str, text: str, /) -> str: ...


# =============================================================================================
# Modes


class Mode(abc.ABC):
    """How a detected secret is rendered. Made by :func:`mask`, :func:`partial`, :func:`hashed`."""

    __slots__ = ()

    @abc.abstractmethod
    def render(self, secret: str, marker: str, partial_text: Callable[[str, int], str] | None) -> str:
        """The text that replaces ``secret`` in the exported record."""


class _Mask(Mode):
    __slots__ = ("marker",)

    def __init__(self, marker: str | None) -> None:
        self.marker = marker

    def render(self, secret: str, marker: str, partial_text: Callable[[str, int], str] | None) -> str:
        return self.marker if self.marker is not None else marker

    def __repr__(self) -> str:
        return "mask()" if self.marker is None else f"mask({self.marker!r})"


class _Partial(Mode):
    __slots__ = ("keep",)

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def render(self, secret: str, marker: str, partial_text: Callable[[str, int], str] | None) -> str:
        if partial_text is not None:
            return partial_text(secret, self.keep)
        return _generic_partial(secret, self.keep, marker)

    def __repr__(self) -> str:
        return f"partial(keep={self.keep})"


class _Hashed(Mode):
    __slots__ = ("_key", "length")

    def __init__(self, key: bytes, length: int) -> None:
        self._key = key
        self.length = length

    def render(self, secret: str, marker: str, partial_text: Callable[[str, int], str] | None) -> str:
        digest = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return "hash:" + digest[: self.length]

    def __repr__(self) -> str:
        return f"hashed(key=<hidden>, length={self.length})"


def mask(marker: str | None = None) -> Mode:
    """Replace the secret with a fixed marker (default: the rule's own, e.g. ``[EMAIL]``)."""
    if marker is not None and not isinstance(marker, str):
        raise TypeError("marker must be a string")
    return _Mask(marker)


def partial(keep: int = 4) -> Mode:
    """Keep a harmless part: the last ``keep`` digits of a card (``[CARD ****1111]``), the
    domain of an email (``***@example.com``), the last 2 digits of a phone, the last 4 of an
    SSN, the first two octets of an IPv4 address; other secrets keep their last ``keep``
    characters only when at least three times longer than that and made of letters, digits and
    ``+/=._~-`` (never a quote, backslash or space), else they are masked."""
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 8:
        raise ValueError("keep must be an int between 1 and 8")
    return _Partial(keep)


def hashed(key: bytes | str, length: int = 16) -> Mode:
    """Replace the secret with ``hash:`` + the first ``length`` hex digits of
    HMAC-SHA256(key, secret): equal values stay correlatable across records without being
    revealed. Keep ``key`` secret (e.g. from the environment); rotating it breaks correlation."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) < 8:
        raise ValueError("hashed() needs a key of at least 8 bytes")
    if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 64:
        raise ValueError("length must be an int between 8 and 64")
    return _Hashed(raw, length)


_ModeArg = str | Mode


def _as_mode(mode: _ModeArg) -> Mode:
    if isinstance(mode, Mode):
        return mode
    if mode == "mask":
        return _Mask(None)
    if mode == "partial":
        return _Partial(4)
    if mode == "hash":
        raise ValueError("mode='hash' needs a key: use mode=sanitize.hashed(key=...)")
    raise ValueError(f"mode must be 'mask', 'partial' or a sanitize.mask/partial/hashed(), got {mode!r}")


def _bracket(marker: str, extra: str) -> str:
    """``[CARD]`` + ``****1111`` -> ``[CARD ****1111]``."""
    if marker.endswith("]"):
        return f"{marker[:-1]} {extra}]"
    return f"{marker} {extra}"


# The characters partial mode may keep of a secret (base64 and base64url, hex, ids): never a
# quote, backslash, bracket or space, so the kept part cannot end the string that holds it (JSON
# stays valid) nor the marker, and the marker is recognised again as one (idempotence).
_KEPT_CHARS = r"[0-9A-Za-z+/=._~\-]"
_KEPT = re.compile(rf"{_KEPT_CHARS}+")


def _generic_partial(secret: str, keep: int, marker: str) -> str:
    if len(secret) >= 3 * keep:
        tail = secret[-keep:]
        if _KEPT.fullmatch(tail):
            return _bracket(marker, "****" + tail)
    return marker


# A marker the modes write: [NAME] or [NAME <kept part>], as ``[CARD ****1111]``.
_MARKER = rf"\[[A-Z][A-Z _]{{0,30}}(?: [*.\-]{{2,12}}{_KEPT_CHARS}{{0,16}})?\]"
# Outputs of the modes: values already in one of these forms are left alone (idempotence).
_RENDERED = re.compile(rf"{_MARKER}|hash:[0-9a-f]{{8,64}}|\*{{3}}@[^\s]{{1,255}}")


# =============================================================================================
# Rules


class Rule:
    """Base class of the built-in rule objects (any ``(key, text) -> text`` callable is a rule too)."""

    __slots__ = ()


class KeyRule(Rule):
    """Values of attributes whose key names a secret are replaced entirely. See :func:`keys`."""

    __slots__ = ("all_values", "marker", "mode", "terms")

    def __init__(self, terms: tuple[str, ...], mode: Mode, marker: str, all_values: bool = False) -> None:
        self.terms = terms
        self.mode = mode
        self.marker = marker
        self.all_values = all_values

    def __repr__(self) -> str:
        terms = ", ".join(repr(t) for t in self.terms)
        extra = ", all_values=True" if self.all_values else ""
        return f"keys({terms}, mode={self.mode!r}, marker={self.marker!r}{extra})"


class SqlRule(Rule):
    """Literal normalisation of SQL statement attributes. See :func:`sql`."""

    __slots__ = ("keys",)

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def __repr__(self) -> str:
        return f"sql({', '.join(repr(k) for k in self.keys)})"


class Detector(Rule):
    """A built-in value detector (scans inside every string). Made by the detector factories."""

    __slots__ = ("kind", "marker", "mode")

    def __init__(self, kind: str, mode: Mode, marker: str) -> None:
        self.kind = kind
        self.mode = mode
        self.marker = marker

    def __repr__(self) -> str:
        return f"{self.kind}(mode={self.mode!r}, marker={self.marker!r})"


class PatternRule(Rule):
    """A user regular expression whose matches are replaced. See :func:`pattern`."""

    __slots__ = ("mode", "name", "regex")

    def __init__(self, name: str, regex: re.Pattern[str], mode: Mode) -> None:
        self.name = name
        self.regex = regex
        self.mode = mode

    def replace(self, match: re.Match[str]) -> str:
        """The replacement of one match."""
        return self.mode.render(match.group(), f"[{self.name.upper()}]", None)

    def __repr__(self) -> str:
        return f"pattern({self.name!r}, {self.regex.pattern!r}, mode={self.mode!r})"


#: Key terms masked by default (matched as whole words of the normalised key, anywhere in it).
DEFAULT_KEY_TERMS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "api key",
    "apikey",
    "access key",
    "private key",
    "secret key",
    "secret key base",
    "signing key",
    "encryption key",
    "decryption key",
    "master key",
    "hmac key",
    "shared key",
    "account key",
    "app key",
    "auth key",
    "session key",
    "authorization",
    "proxy authorization",
    "cookie",
    "set cookie",
    "session",
    "sessionid",
    "jsessionid",
    "phpsessid",
    "sid",
    "csrf",
    "xsrf",
    "credential",
    "credentials",
    "card number",
    "cardnumber",
    "card",
    "cvv",
    "cvc",
    "pin",
    "ssn",
    "social security",
    "iban",
    "otp",
    "jwt",
    "signature",
    "request body",
    "response body",
)

#: Key prefixes whose every value is data, masked whatever the type (statement parameters).
DEFAULT_VALUE_NAMESPACES: tuple[str, ...] = ("db query parameter", "db statement parameter")

# A key whose last word is one of these describes a secret without holding it
# (``token_type``, ``password_policy``, ``session.duration``); a key that *ends* with the term
# itself is always sensitive.
_DESCRIPTORS = """count length len size bytes type kind name names path file dir directory expiry expires
    expired expiration ttl age policy enabled disabled present required valid invalid status state
    format algorithm alg version source provider scheme method strength created updated rotated at
    timeout duration ms seconds used remaining limit max min total brand last4 issuer audience scope
    scopes"""
_DESCRIPTOR_WORDS = frozenset(_DESCRIPTORS.split())

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _norm_key(key: str) -> str:
    """``X-Api-Key`` / ``x_api.key`` / ``xApiKey`` -> ``_x_api_key_`` (word-delimited)."""
    words = _NON_ALNUM.sub("_", _CAMEL.sub("_", key).lower()).strip("_")
    return f"_{words}_"


def keys(
    *terms: str, mode: _ModeArg = "mask", marker: str = "[REDACTED]", all_values: bool = False
) -> KeyRule:
    """Replace the whole value of attributes whose key contains one of ``terms`` as words.

    Matching is case-insensitive and treats ``-``, ``_``, ``.``, spaces and camelCase alike:
    ``keys("api key")`` matches ``X-Api-Key``, ``x_api_key``, ``apiKey`` and
    ``http.request.header.x-api-key``. ``token_type``-like keys whose last word describes the
    secret are not replaced (see ``docs/sanitizing.md``). Numbers are replaced only when the
    key ends with the term (``cvv`` yes, ``llm.token_count.prompt`` no) unless
    ``all_values=True`` (a namespace of values, like ``db.query.parameter.<name>``). Booleans
    and None are never secrets and stay.
    """
    if not terms or not all(isinstance(t, str) and t.strip() for t in terms):
        raise ValueError("keys() needs one or more non-empty strings")
    return KeyRule(tuple(terms), _as_mode(mode), marker, bool(all_values))


def sql(*keys: str) -> SqlRule:
    """Normalise SQL statement attributes (default ``db.query.text`` and ``db.statement``):
    every literal becomes ``?``, comments go, IN lists collapse (see
    :func:`pitchey_trace._sql.normalize_sql`); the value detectors then run on the result."""
    return SqlRule(tuple(keys) if keys else ("db.query.text", "db.statement"))


def _detector(kind: str, mode: _ModeArg, marker: str) -> Detector:
    if not isinstance(marker, str) or not marker:
        raise ValueError("marker must be a non-empty string")
    return Detector(kind, _as_mode(mode), marker)


def private_keys(mode: _ModeArg = "mask", marker: str = "[PRIVATE KEY]") -> Detector:
    """PEM private-key blocks (RSA, EC, OPENSSH, ENCRYPTED, PGP), also cut-off ones."""
    return _detector("private_keys", mode, marker)


def url_credentials(mode: _ModeArg = "mask", marker: str = "[REDACTED]") -> Detector:
    """The password in URLs and DSNs: ``postgresql://app:[REDACTED]@db/pitchey``."""
    return _detector("url_credentials", mode, marker)


def secret_params(mode: _ModeArg = "mask", marker: str = "[REDACTED]") -> Detector:
    """Values after secret-looking names in text: query strings (``?token=..&api_key=..``),
    ``key=value`` and ``key: value`` pairs, JSON / Python reprs (``"password": "..."``), also
    JSON inside a JSON string (``\\"password\\": \\"...\\"``), connection strings
    (``Password=...;``), ``Cookie:`` header lines, and ``Authorization:`` /
    ``Proxy-Authorization:`` / ``auth:`` header lines whole, whatever the scheme (to the end of
    the line). ``Authorization=`` / ``auth=`` values lose the credential after the scheme word
    too (``Authorization=NTLM ...``, ``auth=Digest a="b", c="d"``). Numbers, lists, maps (nested
    ones whole) and tuples of a JSON or repr member become a quoted marker, so the document stays
    valid; booleans stay, as key rules keep them. After ``=`` (or an unquoted ``name:``) a flat
    list, tuple or map on one line goes whole (``password={hunter2}`` -> ``password=[REDACTED]``).
    Command-line options with a space lose their value too: ``--password hunter2``, and the item
    after ``'--password'`` in a logged argument list or a list attribute (not switches such as
    ``--no-password``, nor ``--password-file``, nor single-letter flags)."""
    return _detector("secret_params", mode, marker)


def auth_headers(mode: _ModeArg = "mask", marker: str = "[REDACTED]") -> Detector:
    """``Bearer`` / ``Basic`` credentials: ``Bearer [REDACTED]``."""
    return _detector("auth_headers", mode, marker)


def jwts(mode: _ModeArg = "mask", marker: str = "[JWT]") -> Detector:
    """JSON Web Tokens (``eyJ...`` header, payload, signature)."""
    return _detector("jwts", mode, marker)


def cloud_keys(mode: _ModeArg = "mask", marker: str = "[KEY]") -> Detector:
    """Well-known key formats: AWS access key ids (``AKIA``/``ASIA``...), Google API keys
    (``AIza``), GitHub / GitLab / Slack / Stripe / npm / SendGrid / OpenAI-style tokens.
    Secret keys without a recognisable prefix (AWS secret access keys, Azure account keys)
    are caught by :func:`secret_params` from their name, and by :func:`keys`."""
    return _detector("cloud_keys", mode, marker)


def emails(mode: _ModeArg = "mask", marker: str = "[EMAIL]") -> Detector:
    """Email addresses (partial mode keeps the domain: ``***@example.com``)."""
    return _detector("emails", mode, marker)


def cards(mode: _ModeArg = "mask", marker: str = "[CARD]") -> Detector:
    """Payment card numbers: 13-19 digits starting with 2-6, contiguous or grouped with
    spaces or dashes, Luhn-valid only (order numbers that fail Luhn stay)."""
    return _detector("cards", mode, marker)


def ibans(mode: _ModeArg = "mask", marker: str = "[IBAN]") -> Detector:
    """International bank account numbers, contiguous (``DE89370400440532013000``) or in
    groups of four (``DE89 3704 0044 0532 0130 00``): the country's length and the mod-97 check
    digits must be right, so codes that merely look alike stay."""
    return _detector("ibans", mode, marker)


def ssns(mode: _ModeArg = "mask", marker: str = "[SSN]") -> Detector:
    """US social security numbers written ``123-45-6789`` or ``123 45 6789`` (valid ranges)."""
    return _detector("ssns", mode, marker)


def phones(mode: _ModeArg = "mask", marker: str = "[PHONE]") -> Detector:
    """Phone numbers that are written as such: international ``+`` numbers of 8-15 digits
    (``+44 20 7946 0958``, ``+15551234567``) and North-American ``(555) 123-4567`` /
    ``555-123-4567`` / ``555.123.4567``. Bare digit strings are ids, not phones. On by default."""
    return _detector("phones", mode, marker)


def ip_addresses(mode: _ModeArg = "mask", marker: str = "[IP]") -> Detector:
    """IPv4 and IPv6 addresses (partial keeps two IPv4 octets: ``10.1.*.*``). Off by default:
    add it when client addresses count as personal data for you."""
    return _detector("ip_addresses", mode, marker)


def pattern(
    name: str, regex: str, *, mode: _ModeArg = "mask", marker: str | None = None, ignore_case: bool = False
) -> PatternRule:
    """Your own detector: every match of ``regex`` is replaced (default marker
    ``[NAME]``). It runs as a separate pass after the built-in detectors; keep it linear."""
    if not isinstance(name, str) or not name:
        raise ValueError("pattern() needs a name")
    compiled = re.compile(regex, re.IGNORECASE if ignore_case else 0)
    the_mode = _as_mode(mode)
    if isinstance(the_mode, _Mask) and the_mode.marker is None:
        the_mode = _Mask(marker if marker is not None else f"[{name.upper()}]")
    return PatternRule(name, compiled, the_mode)


def default_rules() -> list[Rule]:
    """The rules a plain ``Sanitizer()`` uses (everything except :func:`ip_addresses`)."""
    return [
        keys(*DEFAULT_KEY_TERMS),
        keys(*DEFAULT_VALUE_NAMESPACES, all_values=True),
        sql(),
        private_keys(),
        url_credentials(),
        secret_params(),
        auth_headers(),
        jwts(),
        cloud_keys(),
        emails(),
        ibans(),
        cards(),
        ssns(),
        phones(),
    ]


# =============================================================================================
# The combined pattern. Every alternative is linear: its repetitions are bounded or followed by
# a character they cannot consume, and a look-behind restricts where it may start.

# Secret "<word> key" names: a key qualified by one of these words (plain "key" is too common:
# cache, routing, partition, primary and object keys; public keys are not secret).
_KEY_QUALIFIERS = (
    "api|access|account|private|secret|signing|encryption|decryption|master|hmac|shared|app|auth|session"
)
# An access key id (AWSAccessKeyId of S3's v2 presigned URLs, aws_access_key_id) names the key
# rather than being the secret, but it names the account too and goes with a signature or a
# secret key: masked like them, also when it is not in the AKIA... form cloud_keys knows.
_KV_WORDS = (
    r"password|passwd|passphrase|pwd|secret|token"
    rf"|(?:{_KEY_QUALIFIERS})[_.\-]?key|secret[_.\-]?key[_.\-]?base|access[_.\-]?key[_.\-]?id"
    r"|authorization|auth|credentials?|session(?:[_-]?id)?|sid|cookie|csrf|xsrf"
    r"|signature|sig|otp|ssn|cvv|cvc|jwt"
)
_VAL_CHARS = r"""[^\s&"',;<>)}\]]"""
# Spaces around the items of a (name, value) pair: a repr's, or indented JSON's (maybe inside a
# JSON string: escaped line breaks). Bounded: tried at every "(" and "[".
_PAIR_SP = r"(?:[ \t\r\n]|\\{1,7}[rnt]){0,32}"

_NOT_FRACTION = r"(?<![0-9]\.)"  # (a look-behind, also dropped after a replacement)

_FRAGMENTS: dict[str, str] = {
    "private_keys": (
        r"(?P<pem>-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z))"
    ),
    "url_credentials": (
        r"(?<![A-Za-z0-9+.\-])(?P<uc>(?P<uc_scheme>[A-Za-z][A-Za-z0-9+.\-]{0,31}://)"
        r"(?P<uc_user>[^\s/?#:]{0,128}):"
        # The password: without "/" (the URL form), or with a raw "/" as in secret keys pasted
        # unencoded (AWS secrets have them), provided it does not start like a port and path
        # (host:443/users/a@b is not a user and password).
        r"(?P<uc_pw>[^\s/?#]{1,256}|(?![0-9]{1,5}/)[^\s/?#@]{1,128}/[^\s?#@]{1,256})@)"
    ),
    # Matches any "name=" / "name: " followed by a value; the value is not consumed: when the
    # name ends with a secret word the handler matches and masks it (_KV_VALUE), else scanning
    # resumes right after the separator so the value still meets every other detector. The
    # name's closing quote may be escaped: JSON inside a JSON string (\"password\": \"...\"),
    # nested up to three times (\\\" then 7 backslashes), and the name may end with escaped
    # backslashes (up to 15 before the quote, see _closing_quote). A name may start with "--" (an
    # option) or "_" ("_token=", "__csrf_token=": form fields). One character class, not a group:
    # this part is tried at every word start, and a group there costs ~20% of the scan.
    "secret_params": (
        r"(?<![A-Za-z0-9_.\-])(?P<kv>(?P<kv_name>[_\-]{0,2}[A-Za-z][A-Za-z0-9_.\-]{0,127})"
        r"(?P<kv_sep>[\\\"']{0,16}[ \t]{0,3}[:=][ \t]{0,3})(?=[^\s&,;]))"
        # A (name, value) pair, a tuple or a 2-item list whose first item is a quoted name:
        # header pairs ([('x-api-key', '...'), (b'cookie', b'...')], request.headers.items(),
        # ASGI scope headers; [["cookie", "..."]] in JSON, maybe inside a JSON string). Only the
        # opening quote is consumed: when the name is no secret name, scanning goes on from the
        # name (see _Engine._pair).
        rf"|(?P<pr>[(\[]{_PAIR_SP}[bBuU]?(?P<pr_q>\\{{0,7}}[\"'])"
        rf"(?=(?P<pr_name>[A-Za-z][A-Za-z0-9_.\-]{{0,127}})(?P<pr_sep>(?P=pr_q){_PAIR_SP},{_PAIR_SP})))"
    ),
    "auth_headers": (
        r"(?<![A-Za-z0-9])(?P<ah>(?P<ah_scheme>(?i:bearer|basic)[ \t]+)(?P<ah_cred>[A-Za-z0-9._~+/=\-]{6,}))"
    ),
    "jwts": r"(?<![A-Za-z0-9_\-])(?P<jwt>eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)",
    # The fixed-length forms end where their length does: a key glued to the next word
    # ("AKIA...EXAMPLEtoken=1") is still one (see also _GLUED_KEYS).
    "cloud_keys": (
        r"(?<![A-Za-z0-9])(?P<ck>(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA)[A-Z0-9]{16}"
        r"|AIza[0-9A-Za-z_\-]{35}|npm_[A-Za-z0-9]{36}"
        r"|(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"
        r"|glpat-[A-Za-z0-9_\-]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"
        r"|sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,})(?![A-Za-z0-9]))"
    ),
    # Country code, check digits, then the account: contiguous, or in groups of four with single
    # spaces (the printed form). The handler checks the country's length and mod 97.
    "ibans": (
        r"(?P<iban>[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)"
        r"(?![A-Za-z0-9]))"
    ),
    "emails": (
        r"(?<![\w.%+\-])(?P<em>(?P<em_local>[\w.%+\-]{1,64})@"
        r"(?P<em_domain>[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.){1,8}[A-Za-z]{2,24})(?![A-Za-z0-9]))"
    ),
    "ip6": (r"(?<![0-9A-Fa-f:.])(?P<ip6>(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![0-9A-Fa-f:])"),
    # Cards, SSNs, phones and IPv4 share one alternative: a run of digits and separators
    # (at least 7 units), classified in Python. One run per number, so a candidate that fails
    # (an order number failing Luhn) can never hide a real one next to it. Not inside a decimal
    # number (after "3."), but after any other "." ("No.4111...").
    # A "+" starts a phone number even after "3." ("Step 3.+44 20 7946 0958").
    "num": (
        rf"(?<![A-Za-z0-9])(?P<num>(?:\+|{_NOT_FRACTION}[(\-]?)[0-9]"
        r"(?:[0-9]|[ .()\-]{1,3}(?=[0-9])){6,200})"
    ),
}
# Kept verbatim: hashes and markers we produced (their hex digits, or the part partial mode kept,
# must not be re-detected: "[REDACTED ****pwd=abcd]" is no "pwd=" pair). A marker's kept part is
# at most 8 characters here (partial keeps 8 at most), too short to hide a card or an SSN.
_KEEP = (
    r"(?P<keep>hash:[0-9a-f]{8,64}(?![0-9A-Za-z])"
    rf"|\[[A-Z][A-Z _]{{0,30}}(?: [*.\-]{{2,12}}{_KEPT_CHARS}{{0,8}})?\])"
)
# Keys and JWTs glued to the word before them ("xAKIA...", "auth-eyJ...", "idghp_..."), which
# the combined pattern, starting only after a non-alphanumeric character, never meets: a pass of
# their own before it (_Engine.scrub). Only forms that ordinary words do not take: the
# prefixes of cloud_keys that no identifier ends with, and for the others the exact length
# (SendGrid), a second prefix (sk-proj-) or the OpenAI marker, or a digit in the body (Stripe,
# GitHub, npm: "bookmark_test_ConnectionTimeouts" stays). Bounded: every repetition stops at a
# character that cannot start the next try, or at its bound.
_GLUED_AFTER = "(?<=[A-Za-z0-9].)"  # (after each branch's first letter: that letter is searched fast)
# (the branches both patterns below share)
_GLUED_SHARED = (
    rf"A{_GLUED_AFTER}(?:(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA)[A-Z0-9]{{16}}|Iza[0-9A-Za-z_\-]{{35}})"
    rf"|g{_GLUED_AFTER}(?:ithub_pat_[A-Za-z0-9_]{{22,255}}|lpat-[A-Za-z0-9_\-]{{20,}}"
    r"|h[pousr]_(?=[A-Za-z]{0,254}[0-9])[A-Za-z0-9]{16,255})"
    rf"|x{_GLUED_AFTER}ox[abprs]-[A-Za-z0-9\-]{{10,}}"
    rf"|S{_GLUED_AFTER}G\.[A-Za-z0-9_\-]{{22}}\.[A-Za-z0-9_\-]{{43}}"
)
_SK_BODY = r"(?:(?:proj|ant|svcacct|admin)-[A-Za-z0-9_\-]{20,}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})"
_DIGIT_BODY = r"(?=[A-Za-z]{0,254}[0-9])[A-Za-z0-9]{16,255}"
_GLUED_KEYS = re.compile(
    rf"{_GLUED_SHARED}|s{_GLUED_AFTER}k-{_SK_BODY}"
    rf"|[rs]{_GLUED_AFTER}k_(?:live|test)_{_DIGIT_BODY}|n{_GLUED_AFTER}pm_{_DIGIT_BODY}"
)
# Whether _GLUED_KEYS can match, asked of every text: the same branches, but those of "sk-",
# "rk_"/"sk_" and "npm_" start at their rarer second letter ("s", "r" and "n" begin tries in
# most words: this is 2-3x cheaper on ordinary text). Its matches start one letter late, so it
# only decides whether _GLUED_KEYS runs.
_GLUED_HINT = re.compile(
    rf"{_GLUED_SHARED}|k(?<=[A-Za-z0-9]sk)-{_SK_BODY}"
    rf"|k(?<=[A-Za-z0-9][rs]k)_(?:live|test)_{_DIGIT_BODY}|p(?<=[A-Za-z0-9]np)m_{_DIGIT_BODY}"
)
# A JWT inside a run of base64url characters ("auth-eyJ...", "x_eyJ...", "tokeneyJ..."): the run
# before the first "." is taken from its start (one try per run: linear), the JWT found in it by
# its "eyJ" (see _Engine._glued_jwt). Masked before the combined scan, which would otherwise take
# the payload and signature of "xeyJ...sig." for a JWT of their own and leave its header.
_GLUED_JWT = re.compile(
    r"(?<![A-Za-z0-9_\-])(?P<h>[A-Za-z0-9_\-]{8,})\.(?P<p>[A-Za-z0-9_\-]{4,})\.[A-Za-z0-9_\-]*"
)
_NUMERIC_KINDS = ("cards", "ssns", "phones", "ip_addresses")
_ORDER = (
    "private_keys",
    "url_credentials",
    "secret_params",
    "auth_headers",
    "jwts",
    "cloud_keys",
    "ibans",
    "emails",
)

_DIGITS = re.compile(r"[0-9]+")
_KV_NAME = re.compile(rf"(?i:{_KV_WORDS})\Z")
# Secret names a name must end with as a word (after a separator or a camelCase boundary, see
# _norm_key), not merely as letters: "pin", "user_pin", "userPin", "PIN"; not "spin", "hairpin".
_KV_WORD_ENDS = ("_pin_",)
# Secret names only as the whole name (any case, maybe a --option): as suffixes they would take
# bypass, compass, boarding_pass, first_pass (and pwd is a name of its own).
_KV_WHOLE = frozenset({"pass", "pw"})
# The second item of a (name, value) pair (see the "pr" alternative): a string literal, maybe
# with a prefix (b'...'), its quote escaped as the name's; or a scalar (1234); then the pair's end.
_PAIR_OPEN = re.compile(r"[bBrRuU]{0,2}(\\{0,7})([\"'])")
_PAIR_SCALAR = re.compile(r"[^\s\"'\\,()\[\]{}]{1,256}")
_PAIR_CLOSE = {
    "(": re.compile(rf"{_PAIR_SP},?{_PAIR_SP}\)"),
    "[": re.compile(rf"{_PAIR_SP},?{_PAIR_SP}\]"),
}
_FLAT_LIST = re.compile(r"\[[^\[\]{}\r\n]{0,4096}\]")
# A map after a secret name in the "=" form or in "name: " text (password={hunter2},
# token={"a": 1}, secret: {a: b}): one line, no nested map or list, bounded.
_FLAT_MAP = re.compile(r"\{[^{}\[\]\r\n]{0,4096}\}")
# In the list of a JSON / repr member (maybe indented, maybe JSON inside a JSON string): a
# bracket or brace, or a quote with the backslashes before it (a run starts at its first one).
_LIST_STOP = re.compile(r"[\[\]{}()]|(?<!\\)\\*[\"']")
_LIST_MAX = 4096
_NEST_MAX = 32  # levels of a member value whose brackets are matched (_member_value_end)
# Where a member value cut at _LIST_MAX may end: after the word, number or escape there.
_UNTIL_TOKEN = re.compile(r"[^\[\]{}\"'\\,\s]*")
# A value of a JSON array (or Python list) before a card number in it; the separators between.
_SP = r"(?:[ \t\r\n]|\\{1,7}[rnt])*"
_ELEMENT = (
    r"(?:-?[0-9]+(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?|true|false|null|True|False|None"
    r"|\\{0,7}\"[^\"\\\r\n]*\\{0,7}\"|'[^'\\\r\n]*')"
)
_ELEMENTS_FIRST = re.compile(rf"{_SP}{_ELEMENT}{_SP}(?:,{_SP}{_ELEMENT}{_SP})*")  # after "["
_ELEMENTS_NEXT = re.compile(rf"{_SP}(?:,{_SP}{_ELEMENT}{_SP})*")  # after a masked element
_ELEMENT_WINDOW = 512  # how far back the "[" of an array is looked for
# A JSON number: the fraction after the digits the card scan saw, the exponent after them.
_FRACTION = re.compile(r"\.[0-9]+")
_EXPONENT = re.compile(r"[eE][+\-]?[0-9]{1,4}")
_BOOLEANS = frozenset({"true", "false", "True", "False"})
# auth=('user', 'pass'): flat, on one line; its strings may hold brackets ('hunter)2').
_FLAT_TUPLE = re.compile(
    r"""\((?:[^()\[\]{}\r\n"']|"[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"|'[^'\\\r\n]*(?:\\.[^'\\\r\n]*)*'){0,4096}\)"""
)
# A Python string literal with a prefix (b'...', rb"...", u'...') or as the only argument of a
# call (SecretBytes(b'...'), bytearray(b'...')), up to its opening quote; then the string.
_PREFIXED_LITERAL = re.compile(
    r"""(?P<call>[A-Za-z_][A-Za-z0-9_.]{0,63}\()?(?P<prefix>[bBrRuUfF]{1,2})?["']"""
)
_QUOTED = re.compile(r""""[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"?|'[^'\\\r\n]*(?:\\.[^'\\\r\n]*)*'?""")
# PostgreSQL error details quoting row values: "Key (cols)=(values) already exists." (also is
# not present in table / is still referenced from table / conflicts with existing key / is
# duplicated) and "Failing row contains (values)."; where the values end.
_PG_VALUES = re.compile(
    r"(?P<anchor>(?<![A-Za-z0-9_])(?i:key) \()|(?P<key>\)=\()"
    r"|(?P<row>(?i:failing row contains) \()|(?P<eol>[\r\n]|\\[nr])"
)
_PG_VALUE_END = re.compile(
    r"\) (?:already exists|is not present in table|is still referenced from table|conflicts with"
    r"|is duplicated)|\)\.?[ \t]*(?:[\r\n]|\\[nr]|\Z)|[\r\n]|\\[nr]"
)
_PG_COLUMNS_MAX = 1024  # how far back "Key (" may be
_CLOSER = {"[": "]", "{": "}", "(": ")"}
# Authorization schemes written before a credential (RFC 7235 and common vendor schemes).
_SCHEMES = r"bearer|basic|token|digest|ntlm|negotiate|apikey|api-key|sharedkey|ssws|aws4-hmac-sha256|aws|dpop"
_KV_VALUE = re.compile(
    rf"(?i:(?:{_SCHEMES})[ \t]+)?"
    rf"(?:{_MARKER}"
    r"|\"[^\"\\\r\n]*(?:\\.[^\"\\\r\n]*)*\"?"
    r"|'[^'\\\r\n]*(?:\\.[^'\\\r\n]*)*'?"
    rf"|{_VAL_CHARS}+(?:; {_VAL_CHARS}+)*)"
)
# Command-line options whose value is the next argument (--password hunter2): the option's name
# ends with a secret word (as _kv_kind says), and is not a switch, which takes no value and is
# followed by another argument (--no-password mydb); the value is the next word, not another
# option, not "=..." or ":..." (the "=" form, --password=..., is a name=value pair). Or, in a
# logged argument list, ['--password', 'hunter2'] / ["--pin", 1234]: the next item.
_CLI = re.compile(
    r"(?:(?<![A-Za-z0-9_.\\\-])|(?<=\\[nrt]))--(?P<cli>[A-Za-z][A-Za-z0-9_.\-]{0,127})[ \t]+(?=[^\s\-=:])"
    rf"|(?<!\\)(?P<cli_q>\\{{0,7}}[\"'])--(?P<cli_item>[A-Za-z][A-Za-z0-9_.\-]{{0,127}})(?P=cli_q),{_SP}"
)
# The first word of an option that is a switch: --no-password, --ask-password, --prompt-token...
_CLI_SWITCHES = frozenset(
    {
        *("no", "not", "without", "with", "skip", "ask", "prompt", "disable", "enable", "require"),
        *("use", "show", "hide", "print", "allow", "save", "store", "remember", "forget"),
        *("generate", "random", "rotate", "reset"),
    }
)
_CLI_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,127}")  # (as in _CLI)
_CLI_FIRST_WORD = re.compile(r"[A-Z0-9]+(?![a-z])|[A-Za-z][a-z0-9]*")
# A value after the option and its spaces: the rest of a word (a backslash escapes the next
# character, JSON's \n, \t, \" excepted, which end the word), or a scheme word and one more
# (--auth Bearer abc), or our own marker.
_CLI_WORD = r"""(?:[^\s"'\\]|\\[^nrt\s"'])+"""
_CLI_VALUE = re.compile(rf"{_MARKER}(?![^\s\"'\\)\]}},;])|(?i:(?:{_SCHEMES})[ \t]+)?{_CLI_WORD}")
_CLI_NUMBER = re.compile(r"-?[0-9][0-9.eE+\-]*")
# The value of an authorization name in the "=" form (Authorization=NTLM abc, auth=Negotiate
# xyz, a logged query string or a k=v line) or after a quoted name ('Authorization': NTLM abc):
# an optional scheme word, then one credential, or a list of two or more comma-separated
# name=value parameters (Digest, AWS4-HMAC-SHA256). Header lines (Authorization: ...) take the
# rest of the line instead (_Engine._kv_header).
_AUTH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9._\-]{0,63}[ \t]+")
# (the quotes maybe escaped: a header logged in a JSON string, response=\"...\")
_AUTH_PARAM = r'[A-Za-z][A-Za-z0-9_\-]{0,63}=(?:\\{1,7}"[^"\r\n]*\\"|"[^"\r\n]*"|[^\s,"]*)'
_AUTH_PARAMS = re.compile(rf"{_AUTH_PARAM}(?:,[ \t]*{_AUTH_PARAM})+")
# One parameter after a known scheme: its quoted value may be cut off (response="abc).
_AUTH_ONE_PARAM = re.compile(
    r'[A-Za-z][A-Za-z0-9_\-]{0,63}=(?:(\\{1,7})"[^"\r\n]*(?<!\\)\1"|\\{1,7}"[^"\r\n\\]*|"[^"\r\n]*"?|[^\s,"]*)'
)
_SCHEME_WORD = re.compile(rf"(?i:{_SCHEMES})")
_AUTH_CRED = re.compile(rf"{_MARKER}|{_VAL_CHARS}+")
# A number inside a "name=" the secret_params pattern took whole (see _Engine._kv): an IBAN
# (at the start or after a separator), or digits after a separator (where a number may start).
_NAME_NUMBER = re.compile(r"(?<![A-Za-z0-9])(?P<nn_iban>[A-Z]{2}[0-9]{2})|(?<=[._\-])[0-9]")
# After a scheme-like first word: the next name=value pair of a k=v line (user=bob), not a
# credential; base64 padding (abc=, abc==) is no pair: "=" is followed by a value there.
_KV_PAIR = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}=[^=\s]")
# A JSON (or Python repr) member value: after a quoted name and ":" (the quote possibly escaped,
# JSON inside a JSON string), followed by the next member or the end of the object or array.
_MEMBER_BEFORE = re.compile(r"[\"'][ \t]*:[ \t]*\Z")
_MEMBER_WINDOW = 16  # how far back the name's quote of a member value is looked for
_RUN_MAX = 64  # backslashes counted before a quote (see _member_name_quote)
_MEMBER_AFTER = re.compile(r"(?:[ \t\r\n]|\\{1,7}[rnt])*(?:[,}\]]|\Z)")
# A quote (maybe escaped) that closes a string rather than opening a value: followed by the next
# member or element, a ":" or the end of the object, array or text.
_STRING_CLOSED = re.compile(r"\\{0,7}[\"'](?:[ \t\r\n]|\\{1,7}[rnt])*(?:[,:}\]]|\Z)")
_PLACEHOLDER = re.compile(r"\?|%s|\$[0-9]+|%\([^)]{1,64}\)s|:[A-Za-z_][A-Za-z0-9_]{0,63}|[Nn]one|null|NULL")
# A value opened by an escaped quote: a string of JSON (or a repr) inside a string, \" at one
# level of nesting, \\\" at two, 7 backslashes at three.
_ESC_OPEN = re.compile(r"(\\{1,7})([\"'])")
# Where a quoted string may end: a line break, or a quote after a (maximal) run of backslashes.
# The look-behind starts a run at its first backslash only, so runs are scanned once (linear).
_QUOTE_STOP = {q: re.compile(rf"[\r\n]|(?<!\\)\\*{q}") for q in "\"'"}
# Where an Authorization header line may end: a line break, a quote closing the string that holds
# the line, or an escaped line break (\n, \r\n) inside such a string.
_HEADER_STOP = re.compile(r"[\r\n]|(?<!\\)\\*[\"']|(?<!\\)\\(?:r\\)?n")
# After a quote that ends the string holding a header line whose opening quote is not known:
# the next member, element or argument (after a double quote not the next Digest parameter,
# username="bob", realm=...), a ":" or the end of an object, array or call.
_STRING_END_AFTER = {
    '"': re.compile(r"[ \t]*(?:[:}\])]|,(?![ \t]*[A-Za-z][A-Za-z0-9_\-]{0,63}=))"),
    "'": re.compile(r"[ \t]*[:}\]),]"),
}
# What follows an escaped line break that ends a header line: the next header's name, the blank
# line before a body, or the end of the string. Anything else (DOMAIN\nick in a Digest username)
# is part of the value.
_HEADER_NEXT = re.compile(r"(?:\\r)?\\n|[A-Za-z][A-Za-z0-9\-]{0,63}:|[\"']")
# A Digest parameter (username="bob") inside a double-quoted header line: its name, then the
# rest of its quoted value, followed by the next parameter or the end of the line.
_PARAM_NAME = re.compile(r"[ \t,][a-z][a-z0-9_\-]{0,31}=\Z")
_PARAM_REST = re.compile(r'[^"\r\n]*"(?=[ \t]*(?:,|["\'\r\n]|\Z))')
# The look-behinds that open the alternatives of the combined pattern, and the last characters of
# replacements that none of them rejects (markers, partial IPs, quoted markers).
_LOOKBEHINDS = re.compile(r"^(?:\(\?<![^()]*\))+")
_CLOSERS = frozenset("]*\"'")
_KV_PLAIN, _KV_SECRET, _KV_AUTH = 0, 1, 2  # what a name is (_Engine._kv_kind)
_NESTING = (1, 3, 7)  # backslashes before a quote at 1, 2, 3 levels of escaping


# IBAN length per country (the SWIFT IBAN registry).
# fmt: off
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
# fmt: on


def _iban_checksum(iban: str) -> bool:
    """ISO 13616 check: the first four characters moved to the end, letters as 10..35, the
    number mod 97 is 1."""
    rotated = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rotated)) % 97 == 1


def _luhn(digits: str) -> bool:
    total = 0
    double = False
    for ch in reversed(digits):
        n = ord(ch) - 48
        if double:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
        double = not double
    return total % 10 == 0


def _card_prefix(digits: str) -> bool:
    """Issuer prefixes of the card networks (Visa, Mastercard, Amex, Diners, JCB, Discover,
    UnionPay, Maestro): cuts false positives on Luhn-valid ids by more than half."""
    first = digits[0]  # callers pass 4 digits or more
    if first in "456":
        return True
    if first == "3":
        return digits[1] in "0456789"
    return first == "2" and 2221 <= int(digits[:4]) <= 2720


# Grouped card numbers are written 4-4-4-4 (-1..3 for 17-19 digits, or 13-15 digits as
# 4-4-4-1..3), Amex 4-6-5 and Diners 4-6-4; any other grouping is an id.
_CARD_SHAPES = frozenset(
    {
        (4, 4, 4, 4),
        (4, 4, 4, 1),
        (4, 4, 4, 2),
        (4, 4, 4, 3),
        (4, 4, 4, 4, 1),
        (4, 4, 4, 4, 2),
        (4, 4, 4, 4, 3),
    }
)
_AMEX_DINERS: dict[tuple[int, ...], tuple[str, ...]] = {
    (4, 6, 5): ("34", "37"),
    (4, 6, 4): ("30", "36", "38"),
}


def _card_shape(digits: list[str]) -> bool:
    shape = tuple(len(d) for d in digits)
    if shape in _CARD_SHAPES:
        return True
    prefixes = _AMEX_DINERS.get(shape)
    return prefixes is not None and digits[0][:2] in prefixes


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


def _has_mixed(cred: str) -> bool:
    """A credential, not an English word: digits, symbols, or capitals after the first char."""
    for ch in cred[1:]:
        if ch.isdigit() or ch.isupper() or ch in "+/=_.~-":
            return True
    return cred[0].isdigit()


def _card_partial(marker: str) -> Callable[[str, int], str]:
    def render(secret: str, keep: int) -> str:
        return _bracket(marker, "****" + secret[-keep:])

    return render


def _phone_partial(marker: str) -> Callable[[str, int], str]:
    def render(secret: str, keep: int) -> str:
        return _bracket(marker, ".." + secret[-2:])

    return render


def _ssn_partial(marker: str) -> Callable[[str, int], str]:
    def render(secret: str, keep: int) -> str:
        return _bracket(marker, "***-**-" + secret[-4:])

    return render


def _email_partial(secret: str, keep: int) -> str:
    return "***@" + secret.rpartition("@")[2]


def _ip_partial(marker: str) -> Callable[[str, int], str]:
    def render(secret: str, keep: int) -> str:
        if secret.count(".") == 3:
            a, b, _, _ = secret.split(".")
            return f"{a}.{b}.*.*"
        return marker

    return render


_Hit = tuple[str, int] | None  # (replacement, where scanning resumes) or None: leave the match


def _closes(run: int, nesting: int) -> bool:
    r"""Whether ``run`` backslashes then a quote close a string opened by ``nesting`` backslashes
    then that quote. Each level of escaping doubles the backslashes and adds one, so at one level
    \" closes, \\\" is a quote inside and \\\\\" closes after a backslash: the run modulo
    2 * (nesting + 1) equals ``nesting``."""
    return run % (2 * nesting + 2) == nesting


def _quoted_end(text: str, start: int, nesting: int, quote: str) -> tuple[int, int]:
    """(end of the content, end of the closing quote) of a string opened at ``start`` by
    ``nesting`` backslashes and ``quote``; unclosed strings end at the line's end."""
    for stop in _QUOTE_STOP[quote].finditer(text, start):
        run = stop.end() - stop.start() - 1
        if text[stop.start()] in "\r\n" or run < nesting:
            return stop.start(), stop.start()  # a line break, or the enclosing string ends
        if _closes(run, nesting):
            return stop.end() - nesting - 1, stop.end()
    return len(text), len(text)


def _header_end(text: str, pos: int, nesting: int, quotes: str) -> int:
    """Where an Authorization header value starting at ``pos`` ends: at the line's end, or at the
    end of the quoted string (one of ``quotes``, escaped ``nesting`` times) that holds the line."""
    search = _HEADER_STOP.search
    stop = search(text, pos)
    while stop is not None:
        at = stop.start()
        piece = stop.group()
        last = piece[-1]
        if piece == "\r" or piece == "\n":
            return at
        if last == "n":  # an escaped line break; it ends the line only if a header follows
            if nesting == 0 and _HEADER_NEXT.match(text, stop.end()):
                return at
            stop = search(text, stop.end())
            continue
        if last in quotes:
            run = len(piece) - 1
            if (
                run == 0
                and last == '"'
                and text[at - 1] == "="
                and _PARAM_NAME.search(text, max(pos, at - 34), at)
            ):
                # A Digest parameter opening (username="bob") in a line written unescaped inside
                # double quotes: skip to its closing quote (then a comma or the line's end).
                param = _PARAM_REST.match(text, stop.end())
                if param is not None:
                    stop = search(text, param.end())
                    continue
            if run < nesting:
                return at
            if _closes(run, nesting):
                return at + run - nesting
        elif not quotes and _STRING_END_AFTER[last].match(text, stop.end()):
            # A line in the middle of a quoted string ({"msg": "failed, Authorization: ..."}):
            # a quote followed by the document's structure ends that string, and the line
            return at
        stop = search(text, stop.end())
    return len(text)


def _name_quote(sep: str) -> str:
    """The quote that closed the name before ``sep``, with the backslashes that escape it
    (``"`` for ``"token": ``, ``\\"`` for ``\\"token\\": `` in JSON inside a JSON string), when
    the separator is ":" (a JSON or repr member); else ''."""
    q = sep[0]
    if q not in "\"'\\" or ":" not in sep:
        return ""
    head = sep[: len(sep) - len(sep.lstrip("\\\"'"))]
    q = head[-1]
    if q == "\\":
        return ""
    run = head[:-1]
    return _closing_quote(len(run) - len(run.rstrip("\\")), q)


def _closing_quote(run: int, quote: str) -> str:
    r"""The quote a string closed by ``run`` backslashes then ``quote`` was opened with (its
    nesting, see _closes), which the strings next to it are written in: ``"`` after ``"a"`` and
    after ``"a\\"`` (a name ending with an escaped backslash: the run escapes itself, not the
    quote), ``\"`` after ``\"a\"`` and ``\"a\\\\\"`` (JSON inside a JSON string); '' past three
    levels. The nesting is the run's trailing one bits (``run % (2n + 2) == n`` for
    ``n = 2**k - 1``)."""
    nesting = run & ~(run + 1)
    return "\\" * nesting + quote if nesting in (0, 1, 3, 7) else ""


def _member_value_end(text: str, pos: int, nesting: int) -> tuple[int, bool]:
    """Where the list or map opened at ``pos`` as a JSON / repr member value ends, its strings
    quoted with ``nesting`` backslashes (JSON inside a JSON string), skipping those strings (they
    may hold brackets: ``["]"]``): ``(end, True)``. The scan is bounded: past _LIST_MAX
    characters, at a bracket that does not match, a string left open at the end of its line, or
    the end of the string that holds the document, it stops at a safe point, outside any string
    of the value: ``(there, False)``. Every character looked at is before the point returned (a
    string is followed to its end even past the limit), so masking up to it keeps the scan
    linear. The kinds of the first _NEST_MAX levels are checked; deeper ones are only counted."""
    limit = min(len(text), pos + _LIST_MAX)
    closers = [_CLOSER[text[pos]]]
    depth = 1
    search = _LIST_STOP.search
    at = pos + 1
    while True:
        stop = search(text, at, limit)
        if stop is None:  # the limit: to the end of the word, number or backslash run there
            word = _UNTIL_TOKEN.match(text, limit)
            return (word.end() if word is not None else limit), False
        piece = stop.group()
        ch = piece[-1]
        if ch == "[" or ch == "{" or ch == "(":
            depth += 1
            if depth <= _NEST_MAX:
                closers.append(_CLOSER[ch])
            at = stop.end()
            continue
        if ch == "]" or ch == "}" or ch == ")":
            if depth <= _NEST_MAX and closers.pop() != ch:
                return stop.start(), False
            depth -= 1
            if not depth:
                return stop.end(), True
            at = stop.end()
            continue
        run = len(piece) - 1
        if run < nesting:
            return stop.start(), False  # the string holding the document ends
        if run != nesting:
            at = stop.end()  # an escaped quote outside a string: a character like another
            continue
        # a string: skip to its closing quote, on the same line
        for end in _QUOTE_STOP[ch].finditer(text, stop.end()):
            run = end.end() - end.start() - 1
            if text[end.start()] in "\r\n" or run < nesting:
                return end.start(), False  # a line break, or the enclosing string ends
            if _closes(run, nesting):
                at = end.end()
                break
        else:
            return len(text), False


def _array_quote(text: str, bracket: int) -> str:
    """The quote a JSON array opened at ``bracket`` writes its strings in, when known: that of
    the member it is the value of (``"cards": [``, ``\\"cards\\": [``), ``"`` for an array
    that starts the text or a string (``"[...`` inside a JSON string: ``\\"``); else ''."""
    before = _MEMBER_BEFORE.search(text, max(0, bracket - _MEMBER_WINDOW), bracket)
    if before is not None:
        return _member_name_quote(text, before.start())
    if bracket == 0 or (bracket < 64 and text[:bracket].isspace()):
        return '"'
    q = text[bracket - 1]
    if q == "'":
        return '"'  # a Python string holding JSON
    if q != '"':
        return ""
    run = bracket - 1
    while run > 0 and bracket - 1 - run < 8 and text[run - 1] == "\\":
        run -= 1
    nesting = bracket - 1 - run
    return "\\" * (2 * nesting + 1) + '"' if nesting in (0, 1, 3) else ""


# The walk through a JSON document (or Python literal) from the "[" of an array whose quote is
# known to a card number further on (see _Engine._walk_quote): where it is, state by state.
_W_VALUE, _W_FIRST, _W_NAME, _W_FIRST_NAME, _W_COLON, _W_AFTER = range(6)
_W_REACHED, _W_CLOSED, _W_FAILED = range(3)
_WALK_TOKEN_COST = 8  # budget units a token costs, besides one per character
_WALK_BRACKETS = 64  # "[" looked at per card (nearest first), within _WALK_WINDOW characters
_WALK_WINDOW = 4096  # how far back a walk to a card may start
_WALK_DEPTH = 512  # arrays and objects open at once
_ANCHOR_AFTER = frozenset(":\"' \t\r\n")  # what may precede the "[" of an array _array_quote knows
_WALK_SP = re.compile(_SP)
_WALK_OPEN = re.compile(rf"\[(?:{_SP}\[)*")  # "[[[" (one match, not one token each)
_WALK_SCALAR_RE = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?|true|false|null|True|False|None"
_WALK_SCALAR = re.compile(_WALK_SCALAR_RE)
_walk_runs: dict[tuple[int, str], tuple[re.Pattern[str], re.Pattern[str]]] = {}


def _walk_run(nesting: int, quotes: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """For a walk at ``nesting`` with ``quotes``: the further elements of an array, and the
    further members of an object, that are numbers, literals, strings without an escape or
    empty arrays and maps, after one (``, 1, "a", null, []``; ``, "k": 1, "j": "v"``): many at a
    time, in one match."""
    runs = _walk_runs.get((nesting, quotes))
    if runs is None:
        esc = "\\\\" * nesting
        string = "|".join(rf"{esc}{q}[^{q}\\\r\n]*{esc}{q}" for q in quotes)
        element = rf"(?:{_WALK_SCALAR_RE}|{string}|\[{_SP}\]|\{{{_SP}\}})"
        runs = (
            re.compile(rf"(?:{_SP},{_SP}{element})*"),
            re.compile(rf"(?:{_SP},{_SP}(?:{string}){_SP}:{_SP}{element})*"),
        )
        _walk_runs[(nesting, quotes)] = runs
    return runs


def _walk_string(text: str, pos: int, target: int, nesting: int, quotes: str) -> int:
    """The end of the string opened at ``pos`` by ``nesting`` backslashes and one of ``quotes``,
    closed on its line before ``target``; -1 if there is no such string."""
    at = pos + nesting
    if at >= target or text[at] not in quotes or (nesting and text.count("\\", pos, at) != nesting):
        return -1
    for stop in _QUOTE_STOP[text[at]].finditer(text, at + 1, target):
        run = stop.end() - stop.start() - 1
        if text[stop.start()] in "\r\n" or run < nesting:
            return -1
        if _closes(run, nesting):
            return stop.end()
    return -1


def _walk(
    text: str, pos: int, target: int, stack: list[str], state: int, nesting: int, quotes: str, budget: int
) -> tuple[int, int]:
    """Walks the JSON values (or Python literals) from ``pos``, in ``state``, inside the arrays
    and objects whose closers are ``stack`` (updated), to ``target``: (_W_REACHED, budget left)
    when ``target`` is where an element of an array may start, (_W_CLOSED, ...) when the
    outermost array or object closes first, (_W_FAILED, ...) at anything else (text that is not
    JSON, a string ending past ``target``, a line break in a string, more than _WALK_DEPTH
    levels) or once ``budget`` (one unit per character, _WALK_TOKEN_COST per token) is spent."""
    space = _WALK_SP.match
    scalar = _WALK_SCALAR.match
    elements, members = _walk_run(nesting, quotes)
    while True:
        if state == _W_AFTER:
            found = (elements if stack[-1] == "]" else members).match(text, pos, target)
            if found is not None:  # (it always is: the run may be empty)
                budget -= found.end() - pos
                pos = found.end()
        found = space(text, pos, target)
        if found is not None:  # (likewise)
            pos = found.end()
        if pos >= target:
            break
        if budget <= 0:
            return _W_FAILED, budget
        ch = text[pos]
        if state == _W_AFTER:
            if ch == ",":
                state = _W_VALUE if stack[-1] == "]" else _W_NAME
            elif ch == stack[-1]:
                stack.pop()
                if not stack:
                    return _W_CLOSED, budget
            else:
                return _W_FAILED, budget
            end = pos + 1
        elif state == _W_COLON:
            if ch != ":":
                return _W_FAILED, budget
            state = _W_VALUE
            end = pos + 1
        elif ch == stack[-1] and state in (_W_FIRST, _W_FIRST_NAME):
            stack.pop()  # [] or {}
            if not stack:
                return _W_CLOSED, budget
            state = _W_AFTER
            end = pos + 1
        elif state in (_W_NAME, _W_FIRST_NAME):
            end = _walk_string(text, pos, target, nesting, quotes)
            if end < 0:
                return _W_FAILED, budget - (target - pos)  # (what the string scan may have read)
            state = _W_COLON
        elif ch in "[{":
            if ch == "[":
                found = _WALK_OPEN.match(text, pos, target)
                end = found.end() if found is not None else pos + 1
                stack.extend("]" * text.count("[", pos, end))
                state = _W_FIRST
            else:
                end = pos + 1
                stack.append("}")
                state = _W_FIRST_NAME
            if len(stack) > _WALK_DEPTH:
                return _W_FAILED, budget
        else:
            end = _walk_string(text, pos, target, nesting, quotes)
            if end < 0:
                found = scalar(text, pos, target)
                if found is None:
                    return _W_FAILED, budget - (target - pos)
                end = found.end()
            state = _W_AFTER
        budget -= end - pos + _WALK_TOKEN_COST
        pos = end
    if pos == target and state in (_W_VALUE, _W_FIRST) and stack[-1] == "]":
        return _W_REACHED, budget
    return _W_FAILED, budget


def _value_before(text: str, start: int) -> tuple[str, int]:
    """The character before the JSON value at ``start`` (whitespace and escaped line breaks or
    tabs skipped, within 64 characters) and its position; ('', -1) when there is none."""
    first = max(0, start - 64)
    seg = text[first:start].rstrip(" \t\r\n")
    while seg and seg[-1] in "rnt" and seg[-2:-1] == "\\":  # (JSON inside a JSON string)
        seg = seg[:-1].rstrip("\\").rstrip(" \t\r\n")
    if not seg:
        return "", -1
    return seg[-1], first + len(seg) - 1


def _escape_start(text: str, start: int, end: int) -> int:
    """``end`` moved back over the backslashes before a quote at ``end``: they escape that quote
    (the end of the string holding the text: ``\\"token=abc\\"`` in JSON inside a JSON string)
    and are no part of a value ending there; masking them would unescape the quote."""
    if end < len(text) and text[end] in "\"'":
        while end > start and text[end - 1] == "\\":
            end -= 1
    return end


def _auth_value_end(text: str, pos: int) -> int:
    """Where the value of an authorization name in the "=" form starting at ``pos`` ends (see
    _AUTH_SCHEME), or ``pos`` when it has no scheme word (the plain value rules then apply)."""
    scheme = _AUTH_SCHEME.match(text, pos)
    if scheme is None:
        return pos
    after = scheme.end()
    params = _AUTH_PARAMS.match(text, after)
    if params is not None:
        return _escape_start(text, after, params.end())
    if _KV_PAIR.match(text, after):
        if not _SCHEME_WORD.fullmatch(scheme.group().rstrip(" \t")):
            return pos  # "authorization=abc123 user=bob": the credential had no scheme
        # A known scheme and one parameter, auth=Digest response="...": that is the credential
        # (as the plain value rules take "Bearer user=bob" whole); its quoted value included.
        param = _AUTH_ONE_PARAM.match(text, after)
        if param is not None:
            return _escape_start(text, after, param.end())
    cred = _AUTH_CRED.match(text, after)
    return _escape_start(text, after, cred.end()) if cred is not None else pos


def _member_quote(text: str, start: int, end: int) -> str:
    """The quote to write a marker replacing ``text[start:end]`` in, when that is a JSON member
    value (``{"n": 4111111111111111}``: a number becomes the string "[CARD]"); else ''."""
    before = _MEMBER_BEFORE.search(text, max(0, start - _MEMBER_WINDOW), start)
    if before is None or not _MEMBER_AFTER.match(text, end):
        return ""
    return _member_name_quote(text, before.start())


def _member_name_quote(text: str, at: int) -> str:
    """The quote the strings of the object whose member name is closed by the quote at ``at``
    are written in, from every backslash before that quote (a name may end with an escaped
    backslash, ``{"a\\\\": 1}``, which does not escape the quote; see _closing_quote)."""
    run = 0
    while run < at and text[at - run - 1] == "\\":
        run += 1
        if run > _RUN_MAX:
            return ""
    return _closing_quote(run, text[at])


class _Engine:
    """The compiled detectors: one combined pattern plus the per-kind renderers."""

    def __init__(self, detectors: Mapping[str, Detector]) -> None:
        self.detectors = detectors
        guarded = [_KEEP]
        guarded.extend(_FRAGMENTS[kind] for kind in _ORDER if kind in detectors and kind != "private_keys")
        if "ip_addresses" in detectors:
            guarded.append(_FRAGMENTS["ip6"])
        if any(kind in detectors for kind in _NUMERIC_KINDS):
            guarded.append(_FRAGMENTS["num"])
        # Every guarded alternative starts after a non-alphanumeric character: testing that once
        # per position, before the alternation, makes positions inside words cheap.
        combined = "(?<![A-Za-z0-9])(?:" + "|".join(guarded) + ")"
        if "private_keys" in detectors:
            combined = _FRAGMENTS["private_keys"] + "|" + combined
        self.pattern: re.Pattern[str] = re.compile(combined)
        # The same alternatives without their look-behinds: what may start right after a
        # replacement. The exported text has the marker's "]" there, where a look-behind may
        # have seen a digit ("+15551234567+15551234567", "4111111111111111token=x"); scanning
        # the original text as the exported one reads keeps the result stable (idempotence).
        self._after_marker = re.compile(
            "|".join(_LOOKBEHINDS.sub("", part).replace(_NOT_FRACTION, "") for part in guarded)
        )
        # After a replacement ending in a digit (hashed mode's hex, an IBAN seen in the text),
        # ".4111..." is no fraction: the number after the "." is scanned (as it is after a marker).
        self._num_after_dot: re.Pattern[str] | None = None
        if any(kind in detectors for kind in _NUMERIC_KINDS):
            self._num_after_dot = re.compile(
                _LOOKBEHINDS.sub("", _FRAGMENTS["num"]).replace(_NOT_FRACTION, "")
            )
        # A key block given as the value of a secret name (token=-----BEGIN ...) or of an auth
        # header starts after that name, where the leftmost match is the name's: masking only
        # its first word would leave the key body. Key blocks are masked first, whole.
        self._pem = re.compile(_FRAGMENTS["private_keys"]) if "private_keys" in detectors else None
        self._handlers: dict[str, Callable[[re.Match[str]], _Hit]] = {
            "keep": lambda m: None,
            "pem": self._plain("private_keys"),
            "uc": self._url,
            "kv": self._kv,
            "pr": self._pair,
            "ah": self._auth,
            "jwt": self._plain("jwts"),
            "ck": self._plain("cloud_keys"),
            "iban": self._iban,
            "em": self._email,
            "ip6": self._ip6,
            "num": self._num,
        }
        self._kv_names: dict[str, int] = {}
        # The text, end and quote of the last JSON array element masked (see _element_quote).
        self._last_element: tuple[str, int, str] | None = None
        # The text walked (see _walk_quote), the budget left for walks from an array's "[" and
        # where the last walk stopped, to go on from: (position, closers, quote) or None.
        self._walk_state: tuple[str, int, tuple[int, list[str], str] | None] | None = None
        # The text and how far the value of a (name, value) pair that turned out to be no pair
        # was read (see _pair): pairs starting before are not tried again (linear time).
        self._pair_reach: tuple[str, int] | None = None
        self.card = detectors.get("cards")
        self.ssn = detectors.get("ssns")
        self.phone = detectors.get("phones")
        self.ip = detectors.get("ip_addresses")
        self._card_partial = _card_partial(self.card.marker) if self.card else None
        self._ssn_partial = _ssn_partial(self.ssn.marker) if self.ssn else None
        self._phone_partial = _phone_partial(self.phone.marker) if self.phone else None
        self._ip_partial = _ip_partial(self.ip.marker) if self.ip else None
        self._min_digits = 4 if self.ip else 8
        self.cli = "secret_params" in detectors  # (command-line options: see _cli_values)
        self._name_numbers = any(kind in detectors for kind in ("ibans", *_NUMERIC_KINDS))
        self._iban_in_name = re.compile(_FRAGMENTS["ibans"])
        self._ibans = "ibans" in detectors
        # A JWT or cloud key inside a "name=" the secret_params pattern took whole (see _kv).
        tokens = [_FRAGMENTS[k] for k in ("jwts", "cloud_keys") if k in detectors]
        self._name_tokens = re.compile("|".join(tokens)) if tokens else None
        self._glue_jwts = "jwts" in detectors
        self._glue_keys = "cloud_keys" in detectors

    # -- entry points

    def scrub(self, text: str) -> str:
        # Tokens glued to the word before them first (see _GLUED_JWT); shorter texts hold none.
        if len(text) >= 14:
            if self._glue_jwts and "eyJ" in text:
                text = _GLUED_JWT.sub(self._glued_jwt, text)
            if self._glue_keys and _GLUED_HINT.search(text) is not None:
                text = _GLUED_KEYS.sub(self._glued_key, text)
        return self._scan(text)

    def _glued_key(self, m: re.Match[str]) -> str:
        return self._render("cloud_keys", m.group())

    def _glued_jwt(self, m: re.Match[str]) -> str:
        head = m.group("h")
        if head.startswith("eyJ"):
            return m.group()  # (a JWT at a word's start: the scan's, with its own rules)
        # After a letter or digit the payload must be JSON too ("keyJsonPath.a.b" stays);
        # after "-" or "_" the header's "eyJ" is enough, as at a word's start.
        strict = not m.group("p").startswith("eyJ")
        at = head.find("eyJ", 1)
        while at != -1 and len(head) - at >= 7:
            if not (strict and head[at - 1].isalnum()):
                return head[:at] + self._render("jwts", m.group()[at:])
            at = head.find("eyJ", at + 1)
        return m.group()

    def _scan(self, text: str) -> str:
        if self._pem is not None and "PRIVATE KEY" in text:
            text = self._pem.sub(lambda m: self._render("private_keys", m.group()), text)
        if self.cli and "--" in text:
            text = self._cli_values(text)
        if self.cli and ("=(" in text or "row contains (" in text):
            text = self._pg_detail(text)
        search = self.pattern.search
        m = search(text)
        if m is None:
            return text
        handlers = self._handlers
        after_marker = self._after_marker.match
        num_after_dot = self._num_after_dot.match if self._num_after_dot is not None else None
        out: list[str] = []
        last = 0
        while m is not None:
            start = m.start()
            hit = handlers[m.lastgroup or "keep"](m)
            if hit is None:
                resume = m.end()
            else:
                out.append(text[last:start])
                replacement = hit[0]
                out.append(replacement)
                last = resume = hit[1]
                if replacement and replacement[-1] in _CLOSERS and resume > start:
                    m = after_marker(text, resume)
                    if m is not None:
                        continue
                elif (
                    num_after_dot is not None
                    and text.startswith(".", resume)
                    and resume > start
                    and text[resume - 1 : resume].isdigit()
                ):
                    m = num_after_dot(text, resume + 1)
                    if m is not None:
                        continue
            m = search(text, resume if resume > start else start + 1)
        if self._last_element is not None or self._walk_state is not None or self._pair_reach is not None:
            self._last_element = self._walk_state = self._pair_reach = None  # (they hold the text)
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def cli_secret(self, name: str) -> bool:
        """Whether the command-line option ``--<name>`` takes a secret value (see _CLI)."""
        if not self._kv_kind(name):
            return False
        first = _CLI_FIRST_WORD.match(name)
        return first is None or first.group().lower() not in _CLI_SWITCHES

    def cli_item(self, value: str) -> str:
        """``value``, the argument after a secret option in an argument list, masked (it is
        kept when it is another option, a placeholder or our own marker)."""
        if not value or value[0] == "-" or _PLACEHOLDER.fullmatch(value) or _RENDERED.fullmatch(value):
            return value
        return self._render("secret_params", value)

    def _cli_values(self, text: str) -> str:
        """``text`` with the values of secret command-line options masked: ``--password
        hunter2``, ``--api-key "a b"``, ``['--token', 'abc']`` (see _CLI). A pass of its own,
        before the combined scan, for texts holding "--" only."""
        out: list[str] = []
        last = 0
        for m in _CLI.finditer(text):
            if m.start() < last:
                continue  # (in a value masked already: --password "a --token b")
            name = m.group("cli")
            if name is not None:
                hit = self._cli_word(text, m.end(), name) if self.cli_secret(name) else None
            else:
                secret = self.cli_secret(m.group("cli_item"))
                hit = self._cli_next_item(text, m.end(), m.group("cli_q")) if secret else None
            if hit is not None:
                out.append(text[last : hit[0]])
                out.append(hit[2])
                last = hit[1]
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _pg_detail(self, text: str) -> str:
        """``text`` with the row values of PostgreSQL's error details masked: ``Key (email)=(...)
        already exists.``, ``... is not present in table``, ``Failing row contains (...).``.
        They are the column values themselves (a user name, a phone number, a hash), in the
        message of every unique, foreign-key, not-null or check violation an application lets
        reach a span. A pass of its own, for texts holding "=(" or "row contains (" only."""
        out: list[str] = []
        last = 0
        anchor = -1  # where the last "Key (" of the current line ends
        for m in _PG_VALUES.finditer(text):
            kind = m.lastgroup
            if kind == "anchor":
                anchor = m.end()
                continue
            if kind == "eol":
                anchor = -1
                continue
            start = m.end()
            if start <= last or (kind == "key" and (anchor < 0 or m.start() - anchor > _PG_COLUMNS_MAX)):
                continue
            # the values end before the phrase after them, or at the end of the line (a line
            # break, or an escaped one: the message inside a JSON string or a repr)
            found = _PG_VALUE_END.search(text, start)
            end = found.start() if found is not None else len(text)
            value = text[start:end]
            if not value or _RENDERED.fullmatch(value):
                continue
            out.append(text[last:start])
            out.append(self._render("secret_params", value))
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _cli_word(self, text: str, pos: int, name: str) -> tuple[int, int, str] | None:
        """(start, end, replacement) of the value at ``pos`` of the option ``--<name>`` and the
        spaces after it: a quoted string's content (its quotes maybe escaped: a command line in a
        JSON string), else a word (see _CLI_VALUE); None for no value or one to keep."""
        first = text[pos]
        if first in "\"'\\":
            if _STRING_CLOSED.match(text, pos):
                return None  # the quote closes the string that holds the option: no value
            opened = _ESC_OPEN.match(text, pos) if first == "\\" else None
            if first != "\\" or (opened is not None and len(opened.group(1)) in _NESTING):
                nesting = len(opened.group(1)) if opened is not None else 0
                start = opened.end() if opened is not None else pos + 1
                end = _quoted_end(text, start, nesting, text[start - 1])[0]
                value = text[start:end]
                hit = self.cli_item(value)
                return None if hit is value else (start, end, hit)
        found = _CLI_VALUE.match(text, pos)
        if found is None:
            return None
        word = found.group()
        if word[-1] != "]" or not _RENDERED.fullmatch(word):
            # (a bracket or punctuation ending the word closes what holds the option:
            # [--token TOKEN], (--password hunter2))
            word = word.rstrip(")]},;")
        end = pos + len(word)
        end = _escape_start(text, pos, end)
        value = text[pos:end]
        if not value:
            return None
        if value == name.upper().replace("-", "_").replace(".", "_"):
            return None  # a usage line's placeholder: --api-key API_KEY
        hit = self.cli_item(value)
        return None if hit is value else (pos, end, hit)

    def _cli_next_item(self, text: str, pos: int, quote: str) -> tuple[int, int, str] | None:
        """(start, end, replacement) of the item at ``pos`` after the item ``--<secret name>``
        of a list written in ``quote`` (maybe escaped: JSON inside a JSON string): the content
        of a string, or a number, which becomes a string; None if there is none to mask."""
        nesting = len(quote) - 1
        if nesting not in (0, 1, 3, 7):
            return None
        at = pos + nesting
        if at < len(text) and text[at] in "\"'" and text.count("\\", pos, at) == nesting:
            end = _quoted_end(text, at + 1, nesting, text[at])[0]
            value = text[at + 1 : end]
            hit = self.cli_item(value)
            return None if hit is value else (at + 1, end, hit)
        number = _CLI_NUMBER.match(text, pos)
        if number is None or not _MEMBER_AFTER.match(text, number.end()):
            return None
        return pos, number.end(), f"{quote}{self._render('secret_params', number.group())}{quote}"

    def card_number(self, value: int | float) -> str | None:
        """A card written as a number (an int or a float attribute value, maybe negative):
        its rendering, or None. A float holds the digits of an int exactly up to 2**53 (every
        card of up to 16 digits); beyond, its last digits are rounding, so the Luhn check
        cannot be made and the issuer prefix decides (else most of a 17-19-digit card would
        be exported)."""
        if self.card is None:
            return None
        if value < 0:
            value = -value
        if not value < 10**19:  # (also inf and nan: no card; and no str() of a huge int)
            return None
        exact = True
        if isinstance(value, float):
            if not value.is_integer():
                return None
            exact = value < 2**53
            value = int(value)
        digits = str(value)
        if 13 <= len(digits) <= 19 and _card_prefix(digits) and (not exact or _luhn(digits)):
            return self.card.mode.render(digits, self.card.marker, self._card_partial)
        return None

    # -- handlers

    def _render(self, kind: str, secret: str, partial_text: Callable[[str, int], str] | None = None) -> str:
        det = self.detectors[kind]
        return det.mode.render(secret, det.marker, partial_text)

    def _plain(self, kind: str) -> Callable[[re.Match[str]], _Hit]:
        return lambda m: (self._render(kind, m.group()), m.end())

    def _url(self, m: re.Match[str]) -> _Hit:
        user = m.group("uc_user")
        if user:
            # (the user part may be an email; it holds no ':' or '/'; this scan of the text is
            # not over: its state stays)
            state = self._last_element, self._walk_state, self._pair_reach
            user = self.scrub(user)
            self._last_element, self._walk_state, self._pair_reach = state
        pw = m.group("uc_pw")
        if not _RENDERED.fullmatch(pw):  # (a password we replaced already stays: idempotence)
            pw = self._render("url_credentials", pw)
        return f"{m.group('uc_scheme')}{user}:{pw}@", m.end()

    def _kv_kind(self, name: str) -> int:
        known = self._kv_names.get(name)
        if known is None:
            found = _KV_NAME.search(name)
            if found is None:
                secret = _norm_key(name).endswith(_KV_WORD_ENDS) or name.lstrip("-_").lower() in _KV_WHOLE
                known = _KV_SECRET if secret else _KV_PLAIN
            elif found.group().lower() in ("authorization", "auth"):
                known = _KV_AUTH  # also Proxy-Authorization, X-Authorization, X-Auth, proxy_auth...
            else:
                known = _KV_SECRET
            if len(self._kv_names) >= _CACHE_MAX_ENTRIES:
                self._kv_names.clear()
            self._kv_names[name] = known
        return known

    def _kv(self, m: re.Match[str]) -> _Hit:
        if "secret_params" not in self.detectors:
            return None
        kind = self._kv_kind(m.group("kv_name"))
        # The name is taken whole, so a JWT or cloud key in it ("AKIA...=x", "eyJ...sig=1",
        # "key-AKIA...=1") would never meet its detector: find it here.
        token = None
        if self._name_tokens is not None:
            token = self._name_tokens.search(m.string, m.start("kv_name"), m.end("kv_name"))
        if not kind:  # _KV_PLAIN
            # Resume after the separator: the value is scanned like any text. A number in the
            # name must meet its detector too: an IBAN ("DE89370400440532013000=...") or digits
            # after a "." "_" "-" ("ref-4111-1111-1111-1111=x"), where the scan resumes.
            if self._name_numbers:
                text = m.string
                end = m.end("kv_name") if token is None else token.start()
                for found in _NAME_NUMBER.finditer(text, m.start("kv_name"), end):
                    if found.group("nn_iban") is None:
                        return text[m.start() : found.start()], found.start()
                    iban = self._iban_in_name.match(text, found.start(), end)
                    hit = self._iban(iban) if iban is not None and self._ibans else None
                    if hit is not None:
                        return text[m.start() : found.start()] + hit[0], hit[1]
            if token is not None:
                # Resume at the token, where the scan meets it (a plain name holds no secret
                # word after it); at the name's start, where "kv" won, render it here.
                if token.start() > m.start():
                    return m.string[m.start() : token.start()], token.start()
                return self._name_token(token.group(), token.lastgroup), token.end()
            return None
        hit = self._kv_value(m, kind)
        if token is None or self._name_tokens is None:
            return hit
        # A secret name's value is masked as usual; the tokens in the name too.
        name = m.group("kv_name")
        masked = self._name_tokens.sub(lambda t: self._name_token(t.group(), t.lastgroup), name)
        if hit is None:
            return masked + m.string[m.end("kv_name") : m.end()], m.end()
        if hit[0].startswith(name):
            return masked + hit[0][len(name) :], hit[1]
        return hit

    def _name_token(self, token: str, group: str | None) -> str:
        return self._render("jwts" if group == "jwt" else "cloud_keys", token)

    def _kv_value(self, m: re.Match[str], kind: int) -> _Hit:
        """The value of a secret name (``kind``) masked: the rest of :meth:`_kv`."""
        text, pos = m.string, m.end()
        sep = m.group("kv_sep")
        # Decide from the first character before matching a value of unbounded length: every
        # path that leaves the value alone must cost O(1), or hostile repeats turn quadratic.
        first = text[pos]
        if first in "\"'\\" and sep[0] not in "\"'\\" and _STRING_CLOSED.match(text, pos):
            # token=" followed by , } ] : or the end: that quote closes the string holding the
            # name ({"msg": "token=", "n": 1}), it opens no value; taking one would eat the
            # document's structure
            return None
        if first == "{" or first == "[" or first == "(":
            q = _name_quote(sep)
            if q:
                # A JSON / repr member: its list or map goes whole, nested ones too, and
                # becomes a JSON string: "token": "[REDACTED]". Bounded: a value too long or too
                # deep is masked up to a safe point (what follows is scanned as usual).
                end, closed = _member_value_end(text, pos, len(q) - 1)
                if closed:
                    if _RENDERED.fullmatch(text, pos, end):
                        return None  # our own marker
                    return self._kv_unquoted(m, text[pos:end], end)
                rendered = self._render("secret_params", text[pos:end])
                return f"{m.group('kv_name')}{sep}{q}{rendered}{q}", end
        if first == "{" or first == "[":
            # After "=" (or an unquoted "name: "), free text: a flat list or map goes whole and
            # the marker is written bare, password={hunter2} user=bob -> password=[REDACTED]
            # user=bob. A nested or multi-line one is left for its own names, which are checked
            # as scanning goes on (bounded, so hostile repeats stay linear).
            flat = (_FLAT_MAP if first == "{" else _FLAT_LIST).match(text, pos)
            if flat is None or _RENDERED.fullmatch(flat.group()):
                return None  # nested lists or maps, or our own marker
            return self._kv_unquoted(m, flat.group(), flat.end())
        if first.isalpha() or first == "_":
            hit = self._kv_literal(m, text, pos)
            if hit is not None:
                return hit
        if first == "\\":
            opened = _ESC_OPEN.match(text, pos)
            if opened is not None and len(opened.group(1)) in _NESTING:
                return self._kv_escaped(m, opened)
        elif kind == _KV_AUTH and first not in "\"'" and ":" in sep and sep[0] not in "\"'\\":
            return self._kv_header(m)  # a header line (the name is not quoted): the whole line
        elif first == "(":
            flat = _FLAT_TUPLE.match(text, pos)  # a tuple, as a whole (else the value rules)
            if flat is not None:
                return self._kv_unquoted(m, flat.group(), flat.end())
        elif kind == _KV_AUTH and first not in "\"'":
            end = _auth_value_end(text, pos)  # Authorization=NTLM abc, 'auth': Negotiate xyz
            if end > pos:
                return self._kv_unquoted(m, text[pos:end], end)
        vm = _KV_VALUE.match(text, pos)
        if vm is None:
            return None
        value = vm.group()
        quote = value[0] if value[0] in "\"'" else ""
        if not quote:
            at_quote = min((i for i in (value.find('"'), value.find("'")) if i > 0), default=-1)
            if at_quote > 0 and _STRING_CLOSED.match(text, pos + at_quote):
                value = value[:at_quote].rstrip(" \t")  # auth=Digest " ending a string: the scheme
            value = value[: _escape_start(text, pos, pos + len(value)) - pos]
            if not value:
                return None
            if sep[0] == "\\" and "\\" in value:
                # JSON inside a JSON string: a number, true... ends before an escape (the \n of
                # indented JSON), which is no part of the value
                value = value[: value.find("\\")]
                if not value:
                    return None
            return self._kv_unquoted(m, value, pos + len(value))
        inner = value[1:]
        closing = ""
        if inner.endswith(quote):
            inner, closing = inner[:-1], quote
        if not inner or _PLACEHOLDER.fullmatch(inner) or _RENDERED.fullmatch(inner):
            return None  # short by construction: these patterns are bounded
        rendered = self._render("secret_params", inner)
        return f"{m.group('kv_name')}{sep}{quote}{rendered}{closing}", vm.end()

    def _pair(self, m: re.Match[str]) -> _Hit:
        """The second item of a (name, value) pair whose name is a secret name: a tuple or a
        2-item list (``('x-api-key', 'k123')``, ``(b'cookie', b'a=1; b=2')``, ``["pin", 1234]``),
        as header pairs are written in reprs and JSON. A string's content is masked (its prefix
        and quotes stay); a scalar becomes the marker in the name's quotes (booleans, None and
        placeholders stay). The item must end the pair (a longer list is no pair); what is
        read of a value that does not is not read again (linear time)."""
        text = m.string
        start = m.start()
        reach = self._pair_reach
        if reach is not None and reach[0] is text and start < reach[1]:
            return None
        if not self._kv_kind(m.group("pr_name")):
            return None  # scanning goes on at the name
        pos = m.end("pr_sep")
        q = m.group("pr_q")
        close = _PAIR_CLOSE[text[start]]
        opened = _PAIR_OPEN.match(text, pos)
        if opened is not None:
            if opened.group(1) != q[:-1]:
                return None  # escaped otherwise than the name: not the same string's level
            content = opened.end()
            end, closed = _quoted_end(text, content, len(q) - 1, opened.group(2))
            if closed == end or not close.match(text, closed):  # unclosed, or no pair
                self._pair_reach = (text, closed)
                return None
            inner = text[content:end]
            if not inner or _PLACEHOLDER.fullmatch(inner) or _RENDERED.fullmatch(inner):
                return None
            return f"{text[start:content]}{self._render('secret_params', inner)}", end
        scalar = _PAIR_SCALAR.match(text, pos)
        if scalar is None or not close.match(text, scalar.end()):
            return None
        value = scalar.group()
        if value in _BOOLEANS or _PLACEHOLDER.fullmatch(value) or _RENDERED.fullmatch(value):
            return None
        return f"{text[start:pos]}{q}{self._render('secret_params', value)}{q}", scalar.end()

    def _kv_literal(self, m: re.Match[str], text: str, pos: int) -> _Hit:
        """A Python string literal with a prefix (``b'...'``: a bytes repr, as headers and
        many clients give them) or one in a call (``SecretBytes(b'...')``,
        ``bytearray(b'...')``): its content is the value, not the prefix's letter or the
        call's name; the prefix and the call stay. None when there is no such literal."""
        lit = _PREFIXED_LITERAL.match(text, pos)
        if lit is None or (lit.group("call") is None and lit.group("prefix") is None):
            return None
        at = lit.end() - 1  # the opening quote
        if lit.group("call") is None and _STRING_CLOSED.match(text, at):
            return None  # 'token=b' then the quote that closes it: the value is the "b"
        quoted = _QUOTED.match(text, at)
        if quoted is None:
            return None
        value = quoted.group()
        quote = value[0]
        inner = value[1:]
        closing = ""
        if len(inner) and inner.endswith(quote):
            inner, closing = inner[:-1], quote
        if lit.group("call") is not None and not closing:
            # A string left open is no call's argument ('token=Zq8sKd93("}': its "name" is the
            # token): the name, the bracket and the rest of the string go.
            whole = self._render("secret_params", text[pos : quoted.end()])
            return f"{m.group('kv_name')}{m.group('kv_sep')}{whole}", quoted.end()
        if not inner or _PLACEHOLDER.fullmatch(inner) or _RENDERED.fullmatch(inner):
            # kept as it is, the prefix too (not taken for an unquoted value: idempotence)
            return text[m.start() : quoted.end()], quoted.end()
        rendered = self._render("secret_params", inner)
        return (
            f"{m.group('kv_name')}{m.group('kv_sep')}{text[pos:at]}{quote}{rendered}{closing}",
            quoted.end(),
        )

    def _kv_unquoted(self, m: re.Match[str], value: str, end: int) -> _Hit:
        """An unquoted value (``token=abc``, ``"token": 12345``). After a quoted name and ":",
        followed by the next member or the end of the object, it is a JSON or repr member (a
        number, ``true``, a list...): the marker is written as a string in the name's quotes,
        so the document stays valid JSON (or a Python literal)."""
        if _PLACEHOLDER.fullmatch(value) or _RENDERED.fullmatch(value):
            return None  # short by construction: these patterns are bounded
        sep = m.group("kv_sep")
        q = _name_quote(sep)
        if q and not _MEMBER_AFTER.match(m.string, end):
            q = ""
        if q and value in _BOOLEANS:
            return None  # a JSON / repr boolean stays, as a bool attribute value does
        rendered = self._render("secret_params", value)
        return f"{m.group('kv_name')}{sep}{q}{rendered}{q}", end

    def _kv_escaped(self, m: re.Match[str], opened: re.Match[str]) -> _Hit:
        """A value in escaped quotes, JSON inside a JSON string: ``\\"password\\": \\"x\\"``.
        Only the text between the quotes is replaced, so the document stays valid JSON."""
        text = m.string
        start = opened.end()
        end, closed = _quoted_end(text, start, len(opened.group(1)), opened.group(2))
        inner = text[start:end]
        if not inner or _PLACEHOLDER.fullmatch(inner) or _RENDERED.fullmatch(inner):
            return None
        rendered = self._render("secret_params", inner)
        return f"{m.group('kv_name')}{m.group('kv_sep')}{opened.group()}{rendered}{text[end:closed]}", closed

    def _kv_header(self, m: re.Match[str]) -> _Hit:
        """``Authorization: <scheme> <credentials>`` (and ``Proxy-Authorization``): whatever the
        scheme (Negotiate, NTLM, AWS4-HMAC-SHA256, Digest with its parameters...), the value is
        the rest of the line. A line held in a quoted string ends where the string ends."""
        text, pos = m.string, m.end()
        start = m.start("kv")
        quotes = ""  # the quotes that may end the string holding the line: none, one or both
        nesting = 0
        before = text[start - 1] if start else ""
        if before in "\"'" and before and m.group("kv_sep")[0] not in "\"'\\":
            quotes = before  # 'Authorization: ...' or "Authorization: ..."
            run = start - 1
            while run > 0 and start - 1 - run < 8 and text[run - 1] == "\\":
                run -= 1
            nesting = start - 1 - run  # \"Authorization: ...\" in JSON inside JSON
            if nesting and nesting not in _NESTING:
                quotes, nesting = "", 0
        elif before == "\\" and text[start] == "n" and (start < 2 or text[start - 2] != "\\"):
            # ...\r\nAuthorization: ... (the name then starts with the escape's "n"): a raw HTTP
            # message inside a JSON string or a repr, whose quote is not known
            quotes = "\"'"
        end = _header_end(text, pos, nesting, quotes)
        value = text[pos:end].rstrip()
        if not value or _PLACEHOLDER.fullmatch(value) or _RENDERED.fullmatch(value):
            return None
        rendered = self._render("secret_params", value)
        return f"{m.group('kv_name')}{m.group('kv_sep')}{rendered}", pos + len(value)

    def _auth(self, m: re.Match[str]) -> _Hit:
        cred = m.group("ah_cred")
        if not _has_mixed(cred):
            return None
        return m.group("ah_scheme") + self._render("auth_headers", cred), m.end()

    def _iban(self, m: re.Match[str]) -> _Hit:
        text = m.group()
        length = _IBAN_LENGTHS.get(text[:2], 0)
        grouped = " " in text
        if grouped:
            # Printed in groups: the country's length may end before the match does, whose last
            # group then starts the next number ("BE68 5390 0754 7034 123-45-6789").
            end = 0
            size = 0
            for group in text.split(" "):
                end += len(group) + (end > 0)
                size += len(group)
                if size >= length:
                    break
            text = text[:end]
        compact = text.replace(" ", "")
        if length != len(compact):
            # Not an IBAN: the groups after the first are scanned as any number
            # ("PO12 4111 1111 1111 1111" holds a card), not skipped with it.
            return (text[:4], m.start() + 4) if grouped else None
        if not _iban_checksum(compact):
            # An IBAN's look-alike (maybe mistyped) holds no card or phone; a number after it does.
            return (text, m.start() + len(text)) if len(text) < len(m.group()) else None
        return self._render("ibans", compact), m.start() + len(text)

    def _email(self, m: re.Match[str]) -> _Hit:
        return self._render("emails", m.group().lower(), _email_partial), m.end()

    def _ip6(self, m: re.Match[str]) -> _Hit:
        text = m.group()
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return None
        return self._render("ip_addresses", text, self._ip_partial), m.end()

    def _num(self, m: re.Match[str]) -> _Hit:
        text = m.group()
        spans = [(g.start(), g.end()) for g in _DIGITS.finditer(text)]
        digits = [text[s:e] for s, e in spans]
        if sum(len(d) for d in digits) < self._min_digits:
            return None
        if self.ip is None and text[0] != "+" and max(len(d) for d in digits) < 3:
            return None  # cards, SSNs and phones all have a group of 3+ digits
        seps = [text[spans[k][1] : spans[k + 1][0]] for k in range(len(spans) - 1)]
        out: list[str] = []
        pos = 0
        i = 0
        n = len(spans)
        last = -1  # the last group replaced
        while i < n:
            hit = self._match_at(text, spans, digits, seps, i, last == i - 1, n - 1)
            if hit is not None and hit[0] > i:
                hit = self._uncut(text, spans, digits, seps, i, last == i - 1, hit)
            if hit is None:
                i += 1
                continue
            j, start, replacement = hit
            out.append(text[pos:start])
            out.append(replacement)
            pos = spans[j][1]
            last = j
            i = j + 1
        if not out:
            return None
        if (
            len(out) == 2
            and (not out[0] or out[0] == "-")
            and (pos == len(text) or _FRACTION.fullmatch(text, pos))
        ):
            # One secret and nothing else, e.g. a card written as a JSON number (maybe negative,
            # maybe a float): as a member value or an array element, keep JSON valid.
            quoted = self._json_number(m, out[1])
            if quoted is not None:
                return quoted
        out.append(text[pos:])
        return "".join(out), m.end()

    def _json_number(self, m: re.Match[str], rendered: str) -> _Hit:
        """``rendered`` in quotes, replacing the number ``m`` (and its exponent), when that is a
        JSON (or repr) member value (``{"pan": 4111111111111111}``) or array element
        (``[4111111111111111, 5500000000000004]``) whose quote is known; else None."""
        text = m.string
        start = m.start()
        end = m.end()
        exponent = _EXPONENT.match(text, end)
        if exponent is not None:
            end = exponent.end()
        if not _MEMBER_AFTER.match(text, end):
            return None
        q = _member_quote(text, start, end)
        if not q:
            q = self._element_quote(text, start, end)
            if not q:
                return None
            self._last_element = (text, end, q)
        return f"{q}{rendered}{q}", end

    def _element_quote(self, text: str, start: int, end: int) -> str:
        """The quote of the JSON array whose element runs from ``start`` to ``end``, if it is
        one: after its "[", or after a "," preceded by elements back to that "[" (within
        _ELEMENT_WINDOW characters) or to the last element masked (so long arrays of cards
        chain); else, for arrays in arrays and after maps, what _walk_quote finds; else ''."""
        before, at = _value_before(text, start)
        if before == "[":
            return _array_quote(text, at) or self._walk_quote(text, start, end)
        if before != ",":
            return ""
        last = self._last_element
        if (
            last is not None
            and last[0] is text
            and at - _ELEMENT_WINDOW <= last[1] <= at
            and _ELEMENTS_NEXT.fullmatch(text, last[1], at)
        ):
            return last[2]
        bracket = text.rfind("[", max(0, at - _ELEMENT_WINDOW), at)
        if bracket >= 0 and _ELEMENTS_FIRST.fullmatch(text, bracket + 1, at):
            q = _array_quote(text, bracket)
            if q:
                return q
        return self._walk_quote(text, start, end)

    def _walk_quote(self, text: str, start: int, end: int) -> str:
        """The quote of the array whose element runs from ``start`` to ``end`` found by walking
        the JSON (or Python literal) to it from the "[" of an array whose quote is known
        (_array_quote: a member value, the start of the text or of a string), one of the nearest
        within _WALK_WINDOW characters, or from where the last walk in this text stopped (so
        the rows of a long array of arrays chain): ``{"a": [[4111...]]}``, ``[{"b": 1},
        4111...]``, ``[[1, 4111...], [2, 5500...]]``; '' when no walk gets there. Linear: a walk
        goes on from the last one only forward, and the walks from a "[" share a budget of about
        one unit per character of the text (then the marker stays bare)."""
        walk = self._walk_state
        if walk is None or walk[0] is not text:
            walk = (text, len(text) + _WALK_WINDOW, None)
        budget = walk[1]
        resume = walk[2]
        if resume is not None and resume[0] <= start:
            pos, stack, quote = resume
            nesting = len(quote) - 1
            quotes = "\"'" if quote == "'" else quote[-1]
            # (not from the budget: this goes over every character once at most)
            limit = (start - pos) * (_WALK_TOKEN_COST + 1) + _WALK_TOKEN_COST
            outcome, _ = _walk(text, pos, start, stack, _W_AFTER, nesting, quotes, limit)
            if outcome == _W_REACHED:
                self._walk_state = (text, budget, (end, stack, quote))
                return quote
        if budget <= 0:
            self._walk_state = (text, budget, None)
            return ""
        first = max(0, start - _WALK_WINDOW)
        at = start
        for _ in range(_WALK_BRACKETS):
            bracket = text.rfind("[", first, at)
            budget -= 1
            if bracket < 0 or budget <= 0:
                break
            at = bracket
            if bracket and text[bracket - 1] not in _ANCHOR_AFTER:
                continue  # ("[[", ",[": an array in an array, whose quote is not known by itself)
            budget -= _WALK_TOKEN_COST
            quote = _array_quote(text, bracket)
            if not quote:
                continue
            stack = ["]"]
            quotes = "\"'" if quote == "'" else quote[-1]
            outcome, budget = _walk(text, bracket + 1, start, stack, _W_FIRST, len(quote) - 1, quotes, budget)
            if outcome == _W_REACHED:
                self._walk_state = (text, budget, (end, stack, quote))
                return quote
            if budget <= 0:
                break
            # (that array ends before the card, or that "[" was no array: in a string, "[" of a
            # name; one further back may hold the card)
        self._walk_state = (text, budget, None)
        return ""

    def _uncut(
        self,
        text: str,
        spans: list[tuple[int, int]],
        digits: list[str],
        seps: list[str],
        i: int,
        after_hit: bool,
        hit: tuple[int, int, str],
    ) -> tuple[int, int, str] | None:
        """``hit`` (groups ``i`` to ``hit[0]``), or a shorter match at ``i``, so that it does not
        swallow the first groups of another number that starts inside it and goes on after it
        (``+15551234567 4111 1111 1111 1111``: a phone takes up to 15 digits, the card's first
        group among them, and the card's other 12 digits were left). When no shorter match is
        left, the first number wins, except an international phone number (see below)."""
        n = len(digits)
        k = i + 1
        while k <= hit[0]:
            # (as after a replaced group: a shorter match would end right before it)
            other = self._match_at(text, spans, digits, seps, k, True, n - 1)
            if other is None or other[0] <= hit[0]:
                k += 1
                continue
            shorter = self._match_at(text, spans, digits, seps, i, after_hit, k - 1)
            if shorter is None:
                if i or hit[1] or text[0] != "+":
                    return hit  # (two numbers sharing digits: the first one wins, as it did)
                # An international phone number is any digits: one of fewer than 8 is none, and
                # a card or SSN after it weighs more when more of its digits would be left.
                cut = sum(len(digits[g]) for g in range(hit[0] + 1, other[0] + 1))
                left = sum(len(digits[g]) for g in range(i, k))
                return None if left < cut else hit
            hit = shorter
            k = i + 1  # (a number the shorter match used to cover whole may now be cut)
        return hit

    def _match_at(
        self,
        text: str,
        spans: list[tuple[int, int]],
        digits: list[str],
        seps: list[str],
        i: int,
        after_hit: bool,
        limit: int,
    ) -> tuple[int, int, str] | None:
        """The number starting at group ``i`` and ending at group ``limit`` at the latest:
        (last group, start in ``text``, replacement), or None."""
        d = digits[i]
        size = len(d)
        start = spans[i][0]
        found: tuple[int, int, str] | None = None
        card = self.card
        # (the fraction of a decimal number, digit "." digits, is no card: 0.4111111111111111;
        # after a replaced group the "." follows a marker, "[CARD].4111...", and is no fraction)
        after_dot = i > 0 and seps[i - 1] == "." and not after_hit
        if card is not None and size >= 4 and _card_prefix(d) and not after_dot:
            if 13 <= size <= 19:
                if _luhn(d):
                    found = i, start, card.mode.render(d, card.marker, self._card_partial)
            elif size == 4 and i + 2 <= limit and seps[i] in (" ", "-"):
                # Longest well-shaped group window with one separator throughout.
                sep = seps[i]
                j = i
                while j + 1 <= limit and j - i < 4 and seps[j] == sep:
                    j += 1
                for end in range(j, i + 1, -1):
                    if _card_shape(digits[i : end + 1]):
                        number = "".join(digits[i : end + 1])
                        if _luhn(number):
                            found = end, start, card.mode.render(number, card.marker, self._card_partial)
                            break
        ssn = self.ssn
        if (
            found is None
            and ssn is not None
            and size == 3
            and i + 2 <= limit
            and len(digits[i + 1]) == 2
            and len(digits[i + 2]) == 4
            and seps[i] == seps[i + 1]
            and seps[i] in ("-", " ")
            and _valid_ssn(d, digits[i + 1], digits[i + 2])
        ):
            number = d + digits[i + 1] + digits[i + 2]
            found = i + 2, start, ssn.mode.render(number, ssn.marker, self._ssn_partial)
        phone = self.phone
        if phone is not None:
            if i == 0 and text[0] == "+":
                best = -1
                total = 0
                for j in range(limit + 1):
                    total += len(digits[j])
                    if total > 15:
                        break
                    if total >= 8:
                        best = j
                # A card or an SSN at the start wins, unless the phone goes on further
                # ("+535 47 2667 639 04" is one phone, not an SSN and "639 04").
                if best >= 0 and (found is None or best > found[0]):
                    number = "+" + "".join(digits[: best + 1])
                    return best, 0, phone.mode.render(number, phone.marker, self._phone_partial)
            if found is not None:
                return found
            if (
                size == 3
                and i + 2 <= limit
                and len(digits[i + 1]) == 3
                and len(digits[i + 2]) == 4
                and seps[i + 1] in ("-", ".", " ")
                and seps[i] in ("-", ".", " ", ") ", ")", ")-")
            ):
                closed = ")" in seps[i]
                opened = start > 0 and text[start - 1] == "("
                # "(555) 123-4567" takes its "("; "(555 123-4567)" is a phone in parentheses,
                # whose "(" stays; "555) 123-4567" is no phone (a list item "1) ...").
                if opened or not closed:
                    first = start - 1 if opened and closed else start
                    # A leading country code "1" belongs to the number.
                    if i > 0 and digits[i - 1] == "1" and seps[i - 1].strip(" (") == "":
                        first = spans[i - 1][0]
                        if first > 0 and text[first - 1] == "+":
                            first -= 1
                    number = d + digits[i + 1] + digits[i + 2]
                    return i + 2, first, phone.mode.render(number, phone.marker, self._phone_partial)
        if found is not None:
            return found
        ip = self.ip
        if (
            ip is not None
            and size <= 3
            and i + 3 <= limit
            and all(seps[k] == "." for k in range(i, i + 3))
            and all(len(digits[k]) <= 3 and int(digits[k]) <= 255 for k in range(i, i + 4))
            and not after_dot
            and (i + 4 >= len(digits) or seps[i + 3] != ".")
        ):
            address = ".".join(digits[i : i + 4])
            return i + 3, start, ip.mode.render(address, ip.marker, self._ip_partial)
        return None


# =============================================================================================
# The Sanitizer

# Record fields that are structure, not content (ids, enums, times, numbers).
#: Longest text also checked in URL-decoded form (query strings, URLs, form bodies).
_DECODE_MAX = 64 * 1024
# A run of text holding a URL-encoded character or a "+", between whitespace, quotes,
# backslashes and "&" (a look-behind starts it at the run's first character: linear).
_ENCODED_RUN = re.compile(r"""(?<![^\s"'\\&])[^\s"'\\&]*[%+][^\s"'\\&]*""")
# What a decoded run must not bring into the text it goes back into: quotes, backslashes and
# control characters (a JSON string would end or break), "&" (a query's next parameter).
_REENCODE = re.compile(r"""["'\\&\x00-\x1f\x7f]""")
_MARKER_RE = re.compile(_MARKER)


def _percent(m: re.Match[str]) -> str:
    return f"%{ord(m.group()):02X}"


def _unquote_outside_markers(text: str) -> str:
    """unquote_plus, leaving our markers as they are: partial mode may keep a "+" of a secret
    (``[REDACTED ****ab+c]``), which decoded would be no marker any more."""
    if "[" not in text:
        return unquote_plus(text)
    out: list[str] = []
    last = 0
    for m in _MARKER_RE.finditer(text):
        out.append(unquote_plus(text[last : m.start()]))
        out.append(m.group())
        last = m.end()
    out.append(unquote_plus(text[last:]))
    return "".join(out)


# Non-ASCII decimal digits (any Unicode Nd: fullwidth, Arabic-Indic...), and the spaces and
# hyphens that group digits in some locales and IMEs (no-break, figure, thin, narrow no-break,
# ideographic spaces; Unicode and fullwidth hyphens) next to a digit: a text holding one is
# scanned again in ASCII (see Sanitizer._wide_digits).
_WIDE_SEPARATORS = "\u00a0\u2007\u2009\u202f\u3000\u2010\u2011\u2012\u2013\uff0d"
_WIDE = re.compile(rf"(?![0-9])\d|(?<=\d)[{_WIDE_SEPARATORS}](?=\d)")
# str.translate table to ASCII, one character for one: the separators, and the digits met so far
# (added as found: at most the few hundred Unicode decimal digits).
_WIDE_TABLE: dict[int, str] = {
    **{ord(c): " " for c in "\u00a0\u2007\u2009\u202f\u3000"},
    **{ord(c): "-" for c in "\u2010\u2011\u2012\u2013\uff0d"},
}


def _ascii_digits(text: str) -> str:
    """``text`` with its non-ASCII decimal digits and digit separators in ASCII (same length)."""
    table = _WIDE_TABLE
    for ch in set(text):  # (its distinct characters: few, and a C loop over the text)
        if ch.isdecimal() and ord(ch) not in table and not ch.isascii():
            table[ord(ch)] = str(unicodedata.decimal(ch))
    return text.translate(table)


#: Scans of one text at most, until the result no longer changes (see Sanitizer._scrub), for
#: results of up to _SETTLE_MAX characters.
_MAX_PASSES = 4
_SETTLE_MAX = 64 * 1024

# The exact key sets of the records the pipeline builds (fast paths in ``__call__``).
_SPAN_KEYS = SPAN_RECORD_KEYS
_AUDIT_KEYS = AUDIT_RECORD_KEYS

_STRUCTURAL = frozenset(
    {
        "schema",
        "type",
        "dataset",
        "record_id",  # (random hex: a detector could take it for a card number or a token)
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_state",  # (vendors' opaque entries from a header, as propagated)
        "kind",
        "status",
        "category",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "time_unix_nano",
        "trace_flags",
        "severity_number",
        "minute_start_unix_nano",
        "duration_ms",
        "interval_s",
        "count",
        "errors",
        "sketch",
        "error_durations",  # (a rollup's numbers and sketch: a cut sketch would lose counts)
        "dropped_attributes_count",
        "dropped_events_count",
        "dropped_links_count",
    }
)

_PASS = 0  # scan the value with the detectors
_MASK = 1  # key rule: replace the whole value (strings; numbers only when the key ends with the term)
_MASK_STR = 2  # key rule where the term is not the key's last word: strings only
_SQL = 3
_ALLOW = 4


def _add_dropped_count(rec: Record, key: str, n: int) -> None:
    """Add ``n`` to the span record's (or an event's or link's) ``key``
    (``dropped_attributes_count``, ...), creating it when absent (a count that is not an int
    is replaced)."""
    count = rec.get(key)
    rec[key] = (count + n) if count.__class__ is int and count > 0 else n


def _count_span_drops(rec: Record, attrs: Any, events: Any, max_attributes: int, max_events: int) -> None:
    """Add what sanitizing a span record's ``attributes`` and ``events`` dropped (beyond
    ``max_attributes`` / ``max_events``) to its ``dropped_*_count`` keys."""
    if isinstance(attrs, Mapping) and len(attrs) > max_attributes:
        _add_dropped_count(rec, "dropped_attributes_count", len(attrs) - max_attributes)
    if isinstance(events, list) and len(events) > max_events:
        _add_dropped_count(rec, "dropped_events_count", len(events) - max_events)


class Sanitizer:
    """Remove secrets and personal data from records before any exporter sees them.

    ``Sanitizer()`` uses :func:`default_rules`. ``rules=`` replaces them, ``add=`` appends
    rules (rule objects or ``(key, text) -> text`` callables), ``allow=`` names attribute keys
    whose values pass untouched (matched like key rules: ``session.id`` also allows
    ``sessionId``). Limits: at most ``max_attributes`` attributes per map, ``max_events``
    events per span, ``max_sequence_length`` items per list value, ``max_value_length``
    characters per string (longer ones are cut and end with ``...[truncated]``).
    ``cache_size``: sanitized strings of up to 512 characters are remembered (at most this
    many; 0 turns this cache and the per-resource reuse off; decisions per attribute key are
    always cached, up to 8192 keys).

    Calling it returns a new record and never modifies the given one or anything in it.
    Applied to: span name, status message, attribute keys and values (nested lists too), event
    names and attributes (``exception.message`` and ``exception.stacktrace`` included), link
    attributes, resource, audit records (actor, action, target, outcome, attributes), rollup
    operation names, and any other string field except ids, enums and times.
    """

    def __init__(
        self,
        rules: Iterable[Rule | TextRule] | None = None,
        *,
        add: Iterable[Rule | TextRule] = (),
        allow: Iterable[str] = (),
        max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_value_length: int = DEFAULT_MAX_VALUE_LENGTH,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        for name, limit in (
            ("max_attributes", max_attributes),
            ("max_events", max_events),
            ("max_value_length", max_value_length),
            ("max_sequence_length", max_sequence_length),
        ):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise ValueError(f"{name} must be a positive int, got {limit!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.cache_size = cache_size
        if isinstance(allow, str):
            raise TypeError("allow must be a list of keys, not a string")
        self.rules: list[Rule | TextRule] = [*(default_rules() if rules is None else rules), *add]
        self.allow: tuple[str, ...] = tuple(allow)
        self.max_attributes = max_attributes
        self.max_events = max_events
        self.max_value_length = max_value_length
        self.max_sequence_length = max_sequence_length

        detectors: dict[str, Detector] = {}
        key_rules: list[KeyRule] = []
        sql_keys: set[str] = set()
        self._patterns: list[PatternRule] = []
        self._text_rules: list[TextRule] = []
        for rule in self.rules:
            if isinstance(rule, Detector):
                detectors[rule.kind] = rule
            elif isinstance(rule, KeyRule):
                key_rules.append(rule)
            elif isinstance(rule, SqlRule):
                sql_keys.update(_norm_key(k) for k in rule.keys)
            elif isinstance(rule, PatternRule):
                self._patterns.append(rule)
            elif callable(rule):
                self._text_rules.append(rule)
            else:
                raise TypeError(f"not a sanitizer rule: {rule!r}")
        self._engine = _Engine(detectors)
        #: The combined detector pattern (one scan per string); the benchmark's floor uses it.
        self.pattern = self._engine.pattern
        # "_(?:api_key|token|...)(?=_)" over the normalised key; longest terms first so that
        # "card number" wins over "card" and the match can reach the key's end.
        self._key_rules = [
            (
                re.compile(
                    "_(?:"
                    + "|".join(
                        re.escape(t)
                        for t in sorted({_norm_key(t)[1:-1] for t in rule.terms}, key=len, reverse=True)
                    )
                    + ")(?=_)"
                ),
                rule,
            )
            for rule in key_rules
        ]
        self._sql_keys = frozenset(sql_keys)
        self._allowed = frozenset(_norm_key(k) for k in self.allow)
        self._text_cache: dict[str, str] = {}
        # SQL text -> normalized, scanned text (what a db.query.text attribute exports).
        self._sql_cache: dict[str, str] = {}
        # Whole-attribute-map memo for span records (see _span_attrs); None when caching is off.
        self._attrs_memo: dict[tuple[Any, ...], dict[str, Any]] | None = {} if cache_size else None
        self._memo_hits = self._memo_misses = self._memo_off = 0
        # The key and value types of a map -> whether the memo may hold it (see _span_attrs).
        self._memo_types: dict[tuple[type, ...], bool] = {}
        self._key_cache: dict[str, tuple[str, int, KeyRule | None]] = {}
        self._res_in: Any = None
        self._svc_in: Any = None
        self._env_in: Any = None
        self._svc_env_out: tuple[Any, Any] = (None, None)
        self._res_out: Any = None
        # (service, environment, resource) given -> span record template with their sanitized
        # forms (see _span_record); identity-checked.
        self._span_template: tuple[Any, Any, Any, Record] = (None, None, None, {})

    def __repr__(self) -> str:
        return (
            f"Sanitizer(rules={self.rules!r}, allow={list(self.allow)!r}, "
            f"max_attributes={self.max_attributes}, max_events={self.max_events}, "
            f"max_value_length={self.max_value_length}, max_sequence_length={self.max_sequence_length}, "
            f"cache_size={self.cache_size})"
        )

    # -- public helpers

    def scrub(self, text: str, key: str = "") -> str:
        """Sanitize one string (detectors, your patterns and text rules, length limit)."""
        out = self._text(text)
        if self._text_rules:
            out = self._apply_text_rules(key, out)
        return out

    def __call__(self, record: Record) -> Record:
        """Return a sanitized copy of ``record``."""
        rtype = record.get("type")
        if rtype == "span":
            if record.keys() == _SPAN_KEYS:
                return self._span(record)
        elif rtype == "audit" and record.keys() == _AUDIT_KEYS:
            return self._audit(record)
        out: Record = {}
        for field, value in record.items():
            if field in _STRUCTURAL:
                out[field] = value
            elif field == "attributes":
                out[field] = (
                    self._attrs(value, 0) if isinstance(value, Mapping) else self._any(field, value, 0)
                )
            elif field == "resource":
                out[field] = self._resource(value)
            elif field == "events":
                out[field] = self._events(value)
            elif field == "links":
                out[field] = self._links(value)
            elif value.__class__ is str:
                out[field] = self._field_text(field, value)
            else:
                out[field] = self._any(field, value, 0)
        if rtype == "span":
            _count_span_drops(
                out, record.get("attributes"), record.get("events"), self.max_attributes, self.max_events
            )
        return out

    # -- records

    def _audit(self, rec: Record) -> Record:
        """Fast path for audit records as ``records.audit_record`` builds them."""
        out = rec.copy()
        cache = self._text_cache if not self._text_rules else None
        for field in ("category", "service", "environment", "actor", "action", "target", "outcome"):
            value = rec[field]
            if value.__class__ is str:
                hit = cache.get(value) if cache is not None else None
                out[field] = hit if hit is not None else self._field_text(field, value)
            elif value is not None:
                out[field] = self._any(field, value, 0)
        attrs = rec["attributes"]
        if attrs:
            out["attributes"] = (
                self._attrs(attrs, 0) if isinstance(attrs, Mapping) else self._any("attributes", attrs, 0)
            )
        return out

    def _request_audit(self, pending: tuple[Any, ...], service: str, environment: str) -> Record:
        """``self(records.request_audit(pending, ...))``: the request audit the middleware
        queued, sanitized (the pipeline worker's path). In C once the caches hold its texts;
        the first time a text is seen, it is built, then sanitized, which fills the caches."""
        build = _accel.build_audit_record
        if build is not None and not self._text_rules:
            rec = build(
                pending,
                service,
                environment,
                self._key_cache,
                self._text_cache,
                self._sql_cache,
                self.max_attributes,
            )
            if rec is not None:
                return rec
        return self._audit(request_audit(pending, service, environment))

    def _request_audits(
        self, items: list[Any], service: str, environment: str
    ) -> tuple[list[Record], list[Any]]:
        """The request audits among ``items`` the C accelerator can build from the caches (all
        of them once warm), and the other items, in order, for :meth:`_request_audit` or the
        general path."""
        build = _accel.build_audit_records
        if build is None or self._text_rules:
            return [], items
        return build(
            items, PENDING_AUDIT, service, environment, self._key_cache, self._text_cache, self._sql_cache,
            self.max_attributes,
        )  # fmt: skip

    def _span_attrs(self, attrs: dict[str, Any]) -> Any:
        """Span attributes, memoised on the whole map: many spans carry exactly the same
        attributes (every ``SELECT 1`` on a connection, every health route), and one lookup then
        replaces the per-key work. The key holds the value types too, so ``1``, ``1.0`` and
        ``True`` never share an entry; and only maps of str keys and scalar values are memoised
        (equal is then the same result): ``(1,)`` equals ``(True,)`` and ``1`` equals ``True``
        as keys, in records built directly (the Span API makes sequences lists and keeps str
        keys). Switched off for a while when it mostly misses."""
        cache = self._attrs_memo
        if cache is None or self._text_rules or len(attrs) < _MEMO_MIN_ATTRS:
            return self._attrs(attrs, 0)
        if self._memo_off:
            self._memo_off -= 1
            return self._attrs(attrs, 0)
        keys = tuple(attrs)
        values = tuple(attrs.values())
        types = tuple(map(type, keys + values))
        plain = self._memo_types.get(types)
        if plain is None:
            n = len(keys)
            plain = all(t is str for t in types[:n]) and _MEMO_VALUE_TYPES.issuperset(types[n:])
            if len(self._memo_types) >= 256:
                self._memo_types.clear()
            self._memo_types[types] = plain
        if not plain:  # a list, a tuple, a non-str key...: no memo for this map
            return self._attrs(attrs, 0)
        key = (keys, values, types)
        hit = cache.get(key)
        if hit is not None:
            self._memo_hits += 1
            if len(attrs) > self.max_attributes:  # (rare: counted as _attrs counts them)
                _stats.incr("sanitize.attributes_dropped", len(attrs) - self.max_attributes)
            return hit
        result = self._attrs(attrs, 0)
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[key] = result
        self._memo_misses += 1
        if self._memo_misses >= 2048:
            if self._memo_hits < self._memo_misses // 4:
                self._memo_off = 16_384  # mostly unique maps: stop paying for the key
                cache.clear()
            self._memo_hits = self._memo_misses = 0
        return result

    def _field_or_any(self, field: str, value: Any) -> Any:
        return self._field_text(field, value) if value.__class__ is str else self._any(field, value, 0)

    def _span(self, rec: Record) -> Record:
        """Fast path for the span records the pipeline builds (the exact schema-v1 key set):
        copy once, then visit only the fields that can carry text."""
        out = rec.copy()
        # service/environment are the same objects in every record of a pipeline: reuse the
        # previous result when they are (identity check, no hashing).
        service, environment = rec["service"], rec["environment"]
        if service is self._svc_in and environment is self._env_in:
            out["service"], out["environment"] = self._svc_env_out
        else:
            pair = (self._field_or_any("service", service), self._field_or_any("environment", environment))
            out["service"], out["environment"] = pair
            if self.cache_size:
                self._svc_in, self._env_in, self._svc_env_out = service, environment, pair
        name = rec["name"]
        hit = self._text_cache.get(name) if not self._text_rules and name.__class__ is str else None
        out["name"] = hit if hit is not None else self._field_or_any("name", name)
        attrs = rec["attributes"]
        if attrs:
            if attrs.__class__ is dict:
                out["attributes"] = self._span_attrs(attrs)
                if len(attrs) > self.max_attributes:  # (rare: what the sanitizer drops, per span)
                    _add_dropped_count(out, "dropped_attributes_count", len(attrs) - self.max_attributes)
            else:
                out["attributes"] = self._any("attributes", attrs, 0)
        events = rec["events"]
        if events:
            out["events"] = self._events(events)
            if isinstance(events, list) and len(events) > self.max_events:
                _add_dropped_count(out, "dropped_events_count", len(events) - self.max_events)
        if rec["links"]:
            out["links"] = self._links(rec["links"])
        message = rec["status_message"]
        if message is not None:
            out["status_message"] = (
                self._field_text("status_message", message)
                if message.__class__ is str
                else self._any("status_message", message, 0)
            )
        out["resource"] = self._resource(rec["resource"])
        return out

    def _span_records(
        self,
        spans: list[Span],
        service: str,
        environment: str,
        resource: dict[str, Any],
        thresholds: CategoryThresholds | None,
    ) -> list[Record]:
        """:meth:`_span_record` of every span of a chunk, in order; through the C builder when
        it is compiled (it handles the common spans and calls back here for the others)."""
        build = _build_span_records
        if build is None or self._text_rules:
            return [self._span_record(span, service, environment, resource, thresholds) for span in spans]
        return build(
            spans,
            self._template_for(service, environment, resource),
            (thresholds or _DEFAULT_THRESHOLDS).table,
            _KIND_STR,
            _STATUS_STR,
            self._key_cache,
            self._text_cache,
            self._sql_cache,
            self.max_attributes,
            lambda span: self._span_record(span, service, environment, resource, thresholds),
        )

    def _template_for(self, service: Any, environment: Any, resource: Any) -> Record:
        cached = self._span_template
        if cached[0] is service and cached[1] is environment and cached[2] is resource:
            return cached[3]
        template = span_template(
            self._field_or_any("service", service),
            self._field_or_any("environment", environment),
            self._resource(resource),
        )
        if self.cache_size:
            self._span_template = (service, environment, resource, template)
        return template

    def _span_record(
        self,
        span: Span,
        service: str,
        environment: str,
        resource: dict[str, Any],
        thresholds: CategoryThresholds | None,
    ) -> Record:
        """``self(span_record(span, ...))`` in one pass: the pipeline's path for span records
        when this exact class sanitizes (no intermediate record, no key-set check, no copy)."""
        if self._text_rules:
            return self._span(span_record(span, service, environment, resource, thresholds))
        rec = span_structure(span, self._template_for(service, environment, resource), thresholds)
        name = span.name
        sname = self._text_cache.get(name) if name.__class__ is str else None
        rec["name"] = (
            sname
            if sname is not None
            else self._field_or_any("name", name if name.__class__ is str else str(name))
        )
        message = span.status_message
        if message is not None:
            rec["status_message"] = self._field_or_any("status_message", message)
        attrs = span.attributes
        events = span.events
        links = span.links
        if attrs:
            rec["attributes"] = self._span_attrs(attrs)
            if len(attrs) > self.max_attributes:  # (rare: what the sanitizer drops, per span)
                _add_dropped_count(rec, "dropped_attributes_count", len(attrs) - self.max_attributes)
        else:
            rec["attributes"] = {}
        if events:
            rec["events"] = self._events(span_events(events))
            if len(events) > self.max_events:
                _add_dropped_count(rec, "dropped_events_count", len(events) - self.max_events)
        else:
            rec["events"] = NO_ITEMS
        rec["links"] = self._links(span_links(links)) if links else NO_ITEMS
        return rec

    def _field_text(self, field: str, value: str) -> str:
        text = self._text(value)
        if self._text_rules:
            text = self._apply_text_rules(field, text)
        return text

    def _resource(self, value: Any) -> Any:
        # The resource dict is the same object in every record of a pipeline: sanitize it once.
        if value is self._res_in and self._res_out is not None:
            return self._res_out
        out = self._resource_attrs(value) if isinstance(value, Mapping) else self._any("resource", value, 0)
        if self.cache_size:
            self._res_in, self._res_out = value, out
        return out

    def _resource_attrs(self, value: Mapping[Any, Any]) -> dict[str, Any]:
        """The resource's attributes, sanitized, all of them: ``max_attributes`` bounds the
        attribute maps of spans, events, links, audit and log records, not the resource
        (OpenTelemetry exempts resources from attribute limits: set once by the process, not
        per request, and sent once per batch). Their values are bounded as everywhere."""
        limit = self.max_attributes
        if len(value) <= limit:
            return self._attrs(value, 0)
        items = list(value.items())
        out: dict[str, Any] = {}
        for i in range(0, len(items), limit):  # (in the map's order: a later equal key wins)
            out.update(self._attrs(dict(items[i : i + limit]), 0))
        return out

    def _events(self, events: Any) -> Any:
        if not isinstance(events, list):
            return self._any("events", events, 0)
        if len(events) > self.max_events:
            _stats.incr("sanitize.events_dropped", len(events) - self.max_events)
            events = events[: self.max_events]
        out = []
        for ev in events:
            if not isinstance(ev, Mapping):
                out.append(self._any("events", ev, 1))
                continue
            new = dict(ev)
            name = new.get("name")
            if name.__class__ is str:
                new["name"] = self._field_text("event.name", name)
            attrs = new.get("attributes")
            if isinstance(attrs, Mapping):
                new["attributes"] = self._attrs(attrs, 1)
                if len(attrs) > self.max_attributes:  # (rare: counted on the event)
                    _add_dropped_count(new, "dropped_attributes_count", len(attrs) - self.max_attributes)
            out.append(new)
        return out

    def _links(self, links: Any) -> Any:
        if not isinstance(links, list):
            return self._any("links", links, 0)
        out = []
        for link in links:
            if not isinstance(link, Mapping):
                out.append(self._any("links", link, 1))
                continue
            new = dict(link)
            attrs = new.get("attributes")
            if isinstance(attrs, Mapping):
                new["attributes"] = self._attrs(attrs, 1)
                if len(attrs) > self.max_attributes:  # (rare: counted on the link)
                    _add_dropped_count(new, "dropped_attributes_count", len(attrs) - self.max_attributes)
            out.append(new)
        return out

    # -- attribute maps

    def _key_entry(self, key: str) -> tuple[str, int, KeyRule | None]:
        norm = _norm_key(key)
        new_key = self._text(key)
        if norm in self._allowed:
            entry: tuple[str, int, KeyRule | None] = (key, _ALLOW, None)
        elif norm in self._sql_keys:
            entry = (new_key, _SQL, None)
        else:
            entry = (new_key, _PASS, None)
            last = norm[1:-1].rpartition("_")[2]
            for regex, rule in reversed(self._key_rules):  # later rules (add=...) win
                found = None
                for m in regex.finditer(norm):
                    found = m
                if found is None:
                    continue
                if found.end() == len(norm) - 1:
                    entry = (new_key, _MASK, rule)
                    break
                if rule.all_values:
                    entry = (new_key, _MASK, rule)
                    break
                if last not in _DESCRIPTOR_WORDS:
                    entry = (new_key, _MASK_STR, rule)
                    break
        if len(self._key_cache) >= _CACHE_MAX_ENTRIES:
            self._key_cache.clear()
        if len(key) <= _CACHE_MAX_LEN:
            self._key_cache[key] = entry
        return entry

    def _attrs(self, attrs: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        limit = self.max_attributes
        if len(attrs) > limit:
            _stats.incr("sanitize.attributes_dropped", len(attrs) - limit)
            attrs = dict(itertools.islice(attrs.items(), limit))
        key_cache = self._key_cache
        text_cache = self._text_cache
        sql_cache = self._sql_cache
        card_min = _CARD_MIN
        if self._text_rules:
            for key, value in attrs.items():
                self._attr(out, key, value, depth)
            return out
        for key, value in attrs.items():
            # Fast path first (one dict lookup per key and per string value): a cached key
            # decision, and a value that is a cached string, a number too small (either sign)
            # to be a card number, a bool or None. Anything else takes the general path (as
            # the C builder decides: fast_attributes in _speedups.c).
            entry = key_cache.get(key)
            if entry is not None:
                cls = value.__class__
                if not entry[1]:  # _PASS
                    if cls is str:
                        text = text_cache.get(value)
                        if text is not None:
                            out[entry[0]] = text
                            continue
                    elif cls is int or cls is float:
                        if -card_min < value < card_min:
                            out[entry[0]] = value
                            continue
                    elif cls is bool or value is None:
                        out[entry[0]] = value
                        continue
                elif entry[1] == _SQL and cls is str:
                    text = sql_cache.get(value)
                    if text is not None:
                        out[entry[0]] = text
                        continue
            self._attr(out, key, value, depth)
        return out

    def _attr(self, out: dict[str, Any], key: Any, value: Any, depth: int) -> None:
        """Sanitize one attribute into ``out`` (the general path of :meth:`_attrs`)."""
        if key.__class__ is not str:
            key = str(key)
        entry = self._key_cache.get(key)
        if entry is None:
            entry = self._key_entry(key)
        new_key, action, rule = entry
        if action == _PASS:
            if value.__class__ is str:
                text = self._text(value)
                out[new_key] = self._apply_text_rules(key, text) if self._text_rules else text
            elif value.__class__ is bool or value is None:
                out[new_key] = value
            else:
                out[new_key] = self._any(key, value, depth + 1)
        elif action == _SQL:
            if value.__class__ is str:
                cached = self._sql_cache.get(value)
                if cached is None:
                    cached = self._text(normalize_sql(value))
                    if self.cache_size and len(value) <= _CACHE_MAX_LEN:
                        if len(self._sql_cache) >= self.cache_size:
                            self._sql_cache.clear()
                        self._sql_cache[value] = cached
                text = cached
                out[new_key] = self._apply_text_rules(key, text) if self._text_rules else text
            else:
                out[new_key] = self._any(key, value, depth + 1)
        elif action == _ALLOW:
            out[new_key] = self._limit_only(value)
        else:
            assert rule is not None
            out[new_key] = self._mask_value(value, rule, numbers=action == _MASK)

    def _mask_value(self, value: Any, rule: KeyRule, *, numbers: bool) -> Any:
        if value is None or value.__class__ is bool:
            return value
        if value.__class__ is str:
            if _RENDERED.fullmatch(value):
                return value
            return rule.mode.render(value, rule.marker, None)
        if isinstance(value, (int, float)):
            if not numbers:
                return self._any("", value, 0)  # still a card number if it is one
            return rule.mode.render(str(value), rule.marker, None)
        if isinstance(value, (list, tuple)) and all(
            v.__class__ is str and _RENDERED.fullmatch(v) for v in value
        ):
            return list(value)
        return (
            rule.marker
            if isinstance(rule.mode, _Partial)
            else rule.mode.render(repr(value), rule.marker, None)
        )

    def _any(self, key: str, value: Any, depth: int) -> Any:
        """Sanitize a value of any type (lists, nested maps, ints that may be card numbers)."""
        cls = value.__class__
        if cls is str:
            text = self._text(value)
            return self._apply_text_rules(key, text) if self._text_rules else text
        if value is None or cls is bool:
            return value
        if cls is int or cls is float:
            # a card number stored as a number, also negative or a float (4111111111111111.0)
            if not -_CARD_MIN < value < _CARD_MIN:
                card = self._engine.card_number(value)
                if card is not None:
                    return card
            return value
        if depth >= _MAX_DEPTH:
            return "[DEPTH]"
        if isinstance(value, (list, tuple)):
            items = value
            if len(items) > self.max_sequence_length:
                _stats.incr("sanitize.sequence_items_dropped", len(items) - self.max_sequence_length)
                items = items[: self.max_sequence_length]
            out = [self._any(key, v, depth + 1) for v in items]
            if self._engine.cli:
                self._cli_list(items, out)
            return out
        if isinstance(value, Mapping):
            return self._attrs(value, depth + 1)
        if isinstance(value, (int, float)):  # int / float subclasses (IntEnum...)
            return self._any(key, int(value) if isinstance(value, int) else float(value), depth)
        return self._any(key, repr(value), depth)

    def _cli_list(self, items: Any, out: list[Any]) -> None:
        """An argument list (``process.command_args``: ``["mysql", "--password", "hunter2"]``):
        the item after a secret option (``--password``, not ``--password=...``, which is a
        name=value pair, nor a switch such as ``--no-password``) is masked in ``out``."""
        engine = self._engine
        for i in range(len(items) - 1):
            item = items[i]
            if (
                item.__class__ is str
                and item[:2] == "--"
                and _CLI_NAME.fullmatch(item, 2)
                and engine.cli_secret(item[2:])
            ):
                value = out[i + 1]
                if value.__class__ is str:
                    out[i + 1] = engine.cli_item(value)
                elif value.__class__ is int or value.__class__ is float:
                    out[i + 1] = engine.cli_item(str(value))

    def _limit_only(self, value: Any) -> Any:
        if (
            value.__class__ is str
            and len(value) > self.max_value_length
            and not value.endswith(TRUNCATED_SUFFIX)
        ):
            _stats.incr("sanitize.values_truncated")
            return value[: self.max_value_length] + TRUNCATED_SUFFIX
        if isinstance(value, (list, tuple)):
            return [self._limit_only(v) for v in value[: self.max_sequence_length]]
        return value

    # -- strings

    def _apply_text_rules(self, key: str, text: str) -> str:
        for rule in self._text_rules:
            result = rule(key, text)
            if result.__class__ is not str:
                raise TypeError(f"sanitizer rule {rule!r} returned {type(result).__name__}, not str")
            text = result
        return text

    def _text(self, text: str) -> str:
        cache = self._text_cache
        hit = cache.get(text)
        if hit is not None:
            return hit
        out = self._scrub(text)
        if len(text) <= _CACHE_MAX_LEN and self.cache_size:
            if len(cache) >= self.cache_size:
                cache.clear()  # bounded: start over rather than track recency
            cache[text] = out
        return out

    def _scrub(self, text: str, settle: bool = True) -> str:
        out = self._scrub_plain(text)
        # URL-encoded secrets (q=4242%204242..., ada%40example.com, card+digits) hide from the
        # detectors; when the decoded text reveals one, export the decoded, masked form.
        # Decode what is left after the plain pass (secrets already found are markers by now,
        # so plus-addressed emails or base64 keys are not re-read with '+' as a space).
        current, found = self._decoded(out)
        if found:
            _stats.incr("sanitize.decoded_matches")
            # Only the runs that hid a secret are exported decoded: decoding the whole text
            # would rewrite the rest of it too (1e+16 -> "1e 16", %22 -> a quote that ends a
            # JSON string), breaking JSON and changing data that held no secret.
            runs = self._decoded_runs(out)
            out = current if runs is None else runs
        if settle and out is not text and len(out) <= _SETTLE_MAX and out != text:
            # A replacement changes what its neighbours see ("[IBAN].4111..." where a digit was
            # before the "."; the engine handles the common cases itself): scan the result again
            # until nothing changes, so that what is exported is sanitized as it stands
            # (idempotence). Text without secrets costs one pass, text with secrets two; the
            # second over the result only, which max_value_length (8 KB by default) bounds.
            for _ in range(_MAX_PASSES - 1):
                again = self._scrub(out, False)
                if again == out:
                    break
                out = again
        return out

    def _wide_digits(self, out: str) -> str:
        """``out`` (a scanned text), or, when that reveals more, ``out`` scanned again with its
        non-ASCII digits read as ASCII ones: fullwidth digits (U+FF10..U+FF19, as Japanese and
        Chinese IMEs type them), Arabic-Indic or Devanagari digits (``int()`` reads them all),
        and digits grouped by no-break, thin or ideographic spaces or Unicode hyphens. The
        detectors know ASCII digits and separators only; that form, masked, is then exported
        (as URL-decoded text is), else the text keeps its own form. Scanned after the plain
        pass, so what that masked stays masked (``4111111111111111`` then a fullwidth digit is
        a card as written, and no 17-digit number once read in ASCII)."""
        ascii_out = _ascii_digits(out)
        masked = self._engine.scrub(ascii_out)
        if masked == ascii_out:
            return out  # nothing more found: keep the digits as written
        _stats.incr("sanitize.wide_digit_matches")
        return masked

    def _decoded(self, text: str) -> tuple[str, bool]:
        """``text`` URL-decoded (up to three times: double-encoded values too; our markers are
        not decoded) and scanned, and whether the decoded form revealed a secret."""
        current, found = text, False
        for _ in range(3):
            if ("%" not in current and "+" not in current) or len(current) > _DECODE_MAX:
                break
            decoded = _unquote_outside_markers(current)
            if decoded == current:
                break
            masked = self._scrub_plain(decoded)
            found = found or masked != decoded  # nothing revealed: keep the original form
            current = masked
        return current, found

    def _decoded_runs(self, text: str) -> str | None:
        """``text`` with each run (between whitespace, quotes, backslashes and ``&``) whose
        decoded form reveals a secret replaced by that masked, decoded form, its quotes,
        backslashes and control characters encoded again (so a JSON string or a repr keeps its
        structure); None when no run does or a secret is still visible in the decoded result
        (one spread over several runs): the caller then exports the whole decoded text."""
        out: list[str] = []
        last = 0
        for m in _ENCODED_RUN.finditer(text):
            masked, found = self._decoded(m.group())
            if found:
                out.append(text[last : m.start()])
                out.append(_REENCODE.sub(_percent, masked))
                last = m.end()
        if not out:
            return None
        out.append(text[last:])
        runs = "".join(out)
        return None if self._decoded(runs)[1] else runs

    def _scrub_plain(self, text: str) -> str:
        out = self._engine.scrub(text)
        if not out.isascii() and _WIDE.search(out) is not None:
            out = self._wide_digits(out)
        for rule in self._patterns:
            out = rule.regex.sub(rule.replace, out)
        limit = self.max_value_length
        if len(out) > limit:
            truncated = out.endswith(TRUNCATED_SUFFIX)
            body = out[: -len(TRUNCATED_SUFFIX)] if truncated else out
            if len(body) > limit or not truncated:
                _stats.incr("sanitize.values_truncated")
                # Secrets were replaced before the cut, so none is cut in half; scan the cut text
                # again because cutting a long digit run can leave a card-shaped number.
                body = self._engine.scrub(body[:limit])[:limit]
                out = body + TRUNCATED_SUFFIX
        return out
