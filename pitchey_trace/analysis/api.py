"""The analysis HTTP API and the waterfall page: an ASGI app (Starlette) over an :class:`Archive`.

    from pitchey_trace.analysis import Archive
    from pitchey_trace.analysis.api import create_app

    app = create_app(Archive("var/archive"))     # serve with any ASGI server, e.g. uvicorn

JSON endpoints (all GET): ``/api/overview``, ``/api/search``, ``/api/traces/{trace_id}``,
``/api/traces/{trace_id}/analysis``, ``/api/traces/{trace_id}/spans/{span_id}``,
``/api/performance``, ``/api/series``, ``/api/errors``, ``/api/audit``, ``/api/logs``,
``/api/dependencies``, ``/api/compare``, ``/healthz``.
HTML: ``/`` (overview and search) and ``/traces/{trace_id}`` (waterfall), static pages from
``static/`` that read the JSON API. Bad query parameters answer 400 ``{"error": ...}``, an
unknown trace 404. A trace's answers are bounded (:data:`MAX_TRACE_SPANS`,
:data:`MAX_TRACE_BYTES`, :data:`MAX_VALUE_CHARS`); one span's endpoint answers it whole.
Reference: docs/analysis.md.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pitchey_trace import _json
from pitchey_trace.exceptions import ArchiveUnavailable

if TYPE_CHECKING:
    from pitchey_trace.analysis import Archive

__all__ = ["MAX_LIMIT", "create_app"]

logger = logging.getLogger("pitchey_trace")

STATIC_DIR = Path(__file__).with_name("static")
MAX_LIMIT = 1000
"""Largest ``limit`` an endpoint returns; larger requests are cut to it."""

# A trace's answer is bounded: whole, a 10,000-span trace whose spans carried 100 kB values was
# a 1 GB answer (three times that in server memory, and a browser that hung on it).
MAX_TRACE_SPANS = 10_000
"""Most spans (and, apart, log lines) ``/api/traces/{id}`` answers; ``limit`` asks for fewer."""
MAX_TRACE_BYTES = 32 * 1024 * 1024
"""About the most bytes of spans and log lines in ``/api/traces/{id}``: they are added in order
(spans depth-first, then log lines) until one does not fit; the first span always is."""
MAX_VALUE_CHARS = 4000
"""Attribute values (of spans, events, links, resources and log lines) longer than this are cut
in ``/api/traces/{id}`` (what the page's span details show of one anyway); a span's own
endpoint answers them whole."""
MAX_ANALYSIS_TEXT = 1000
"""Texts in ``/api/traces/{id}/analysis`` (names, messages, statements) longer than this are cut
(what the page shows of one); its lists hold at most :data:`MAX_TRACE_SPANS` entries."""
_SPAN_ID = re.compile(r"[0-9a-fA-F]{16}")

# The pages load only their own script and style sheet and talk only to this server, so
# everything else is refused: injected markup could neither run script nor send data away.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)
# All of them set here too: Starlette sends a 500 answer from outside the middleware stack.
_JSON_HEADERS = {"cache-control": "no-store", **dict(_SECURITY_HEADERS)}
# ASCII digits only: \d and str.isdigit() also take "²" (which int() refuses) and "٣" (which
# int() reads as 3).
_INT = re.compile(r"[+-]?[0-9]+")
_BIG = 10**18
"""Stands in for a whole number of more than 18 digits, beyond every range here (and int()
refuses texts of more than 4300 digits)."""
# "<scheme> <credentials>", any number of spaces or tabs between (RFC 9110 11.4)
_AUTHORIZATION = re.compile(rb"[ \t]*([A-Za-z]+)[ \t]+(\S+)[ \t]*")
_T = TypeVar("_T")
_SEARCH = (
    "service", "name", "min_duration_ms", "max_duration_ms", "status", "attr", "log",
    "since", "until", "sort", "limit",
)  # fmt: skip


class _SecurityHeaders:
    """Adds the security headers to every HTTP response (pages, JSON, static files, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BasicAuth:
    """HTTP Basic authentication in front of everything but ``/healthz``: browsers ask once and
    send the credentials with every later request of the page, including its API calls."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self._expected = base64.b64encode(f"{user}:{password}".encode())

    def _allowed(self, scope: Scope) -> bool:
        given = [value for name, value in scope.get("headers") or () if name == b"authorization"]
        if len(given) != 1:  # several: which one counts would depend on who reads them
            return False
        match = _AUTHORIZATION.fullmatch(given[0])
        if not match or match[1].lower() != b"basic":  # the scheme is case-insensitive (RFC 9110)
            return False
        return hmac.compare_digest(match[2], self._expected)  # constant time: no timing oracle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await _refuse(
            send,
            401,
            b'{"error":"authentication required"}',
            (b"www-authenticate", b'Basic realm="pitchey-trace", charset="UTF-8"'),
        )


async def _refuse(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    """Answer a request a guard in front of the app turned down: JSON ``body`` with ``status``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _host_name(value: bytes) -> str | None:
    """The host of a ``Host`` header, lowercase, without its port (``[::1]:8080`` is ``::1``);
    None when it is not readable."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # an IPv6 literal
        end = text.find("]")
        return text[1:end] if end > 0 else None
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _HostCheck:
    """Answers only requests whose ``Host`` is an IP address, ``localhost`` (``*.localhost``)
    or a name in ``allowed``: a web page the user visits could otherwise read the archive
    through DNS rebinding (its own name resolved to 127.0.0.1 afterwards, so the browser sends
    that name as ``Host``). ``/healthz`` is always answered."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self._allowed = allowed

    def _ok(self, scope: Scope) -> bool:
        given = [value for name, value in scope.get("headers") or () if name == b"host"]
        if len(given) != 1:
            return not given  # (HTTP/1.0 without Host: no name a page could have chosen)
        host = _host_name(given[0])
        if host is None:
            return False
        return host in self._allowed or host == "localhost" or host.endswith(".localhost") or _is_ip(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz" or self._ok(scope):
            await self.app(scope, receive, send)
            return
        await _refuse(
            send,
            403,
            b'{"error":"this Host is not allowed (DNS rebinding protection): '
            b'pitchey-trace serve --allow-host NAME allows a name"}',
        )


def _json_bytes(data: Any) -> bytes:
    """``data`` as JSON, with ``<``, ``>`` and ``&`` (which JSON allows only inside strings)
    written as ``\\u`` escapes: the same document, but no byte of it reads as markup should a
    client ever treat it as HTML."""
    return _json.dumps(data).replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def json_response(data: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """``data`` as a JSON response (see :func:`_json_bytes`)."""
    return _json_body(_json_bytes(data), status_code, headers)


def _json_body(body: bytes, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        body, status_code, media_type="application/json", headers={**_JSON_HEADERS, **(headers or {})}
    )


# -- bounding a trace's answers ----------------------------------------------------------------------


def _utf16_length(text: str) -> int:
    """The length the page's script sees (JavaScript counts UTF-16 units), so its "N more
    characters" are right."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _cut(value: Any, limit: int) -> tuple[Any, int | None]:
    """``value`` and None, or, when its text is longer than ``limit`` characters, its first
    ``limit`` and the whole text's length. A list or map that long is cut as its JSON text."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, dict)):
        text = _json.dumps(value).decode("utf-8", "replace")
    else:
        return value, None
    if len(text) <= limit:
        return value, None
    return text[:limit], _utf16_length(text)


def _cut_map(attributes: Any) -> tuple[Any, dict[str, int]]:
    """An attribute map with its long values cut (a new map when any is), and the full length
    of each value cut, by key."""
    if not isinstance(attributes, Mapping):
        return attributes, {}
    lengths: dict[str, int] = {}
    out: dict[Any, Any] | None = None
    for key, value in attributes.items():
        short, length = _cut(value, MAX_VALUE_CHARS)
        if length is not None:
            out = dict(attributes) if out is None else out
            out[key] = short
            lengths[str(key)] = length
    return (attributes if out is None else out), lengths


def _with_cut_maps(record: Any, *fields: str) -> Any:
    """``record`` (a span, event, link or log line) with the long values of its attribute maps
    ``fields`` cut, and ``clipped``: ``{field: {key: full length}}`` for those cut. The engine's
    dicts are never changed: a record with something cut is a copy."""
    if not isinstance(record, Mapping):
        return record
    out: dict[str, Any] | None = None
    clipped: dict[str, Any] = {}
    for field in fields:
        short, lengths = _cut_map(record.get(field))
        if lengths:
            out = dict(record) if out is None else out
            out[field] = short
            clipped[field] = lengths
    for field in ("events", "links"):
        items = record.get(field)
        if isinstance(items, list):
            cut = [_with_cut_maps(item, "attributes") for item in items]
            if any(a is not b for a, b in zip(cut, items, strict=True)):
                out = dict(record) if out is None else out
                out[field] = cut
    if out is None:
        return record
    if clipped:
        out["clipped"] = clipped
    return out


class _Joined:
    """JSON texts to be joined by commas, joined a MiB at a time as they come: each of orjson's
    results holds more memory than its length (a 4 kB one about 8 kB), so 10,000 spans kept
    apart until the end cost the server 300 MB for a 33 MB answer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.count = 0

    def add(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.count += 1
        if self.pending_bytes >= 1 << 20:
            self._join_pending()

    def _join_pending(self) -> None:
        if self.pending:
            self.chunks.append(b",".join(self.pending))
            self.pending = []
            self.pending_bytes = 0

    def joined(self) -> bytes:
        self._join_pending()
        return b",".join(self.chunks)


def _bounded_trace(view: Mapping[str, Any], limit: int) -> bytes:
    """The JSON of ``archive.trace()``'s answer bounded: at most ``limit`` spans (depth-first,
    so every span's parent that is archived comes with it) and :data:`MAX_TRACE_SPANS` log
    lines, about :data:`MAX_TRACE_BYTES` of them in all, attribute values cut at
    :data:`MAX_VALUE_CHARS`; plus ``truncated``, ``log_count`` and ``limits``. Each span is
    encoded once, as it is measured."""
    budget = MAX_TRACE_BYTES
    parts = {"spans": _Joined(), "logs": _Joined()}
    totals: dict[str, int] = {}
    for key, fields, most in (
        ("spans", ("attributes", "resource"), limit),
        ("logs", ("attributes",), MAX_TRACE_SPANS),
    ):
        items = view.get(key)
        items = items if isinstance(items, list) else []
        # (the engine built at most MAX_TRACE_SPANS of each; its counts are of the whole trace)
        total = view.get("span_count" if key == "spans" else "log_count")
        totals[key] = max(total, len(items)) if isinstance(total, int) else len(items)
        out = parts[key]
        for item in items[:most]:
            data = _json_bytes(_with_cut_maps(item, *fields))
            if len(data) + 1 > budget and (out.count or key == "logs"):
                budget = 0  # in order: nothing after the first that does not fit
                break
            budget -= len(data) + 1
            out.add(data)
    head = {k: v for k, v in view.items() if k not in ("spans", "logs")}
    head["truncated"] = parts["spans"].count < totals["spans"] or parts["logs"].count < totals["logs"]
    head["log_count"] = totals["logs"]
    head["limits"] = {"spans": limit, "bytes": MAX_TRACE_BYTES, "value_chars": MAX_VALUE_CHARS}
    return b"".join(
        (
            _json_bytes(head)[:-1],  # (head is never empty: it holds "truncated")
            b',"spans":[',
            parts["spans"].joined(),
            b'],"logs":[',
            parts["logs"].joined(),
            b"]}",
        )
    )


def _cut_texts(entry: Any) -> Any:
    """An analysis entry with its texts longer than :data:`MAX_ANALYSIS_TEXT` cut, and
    ``clipped``: ``{field: full length}`` (a copy when any is)."""
    if not isinstance(entry, Mapping):
        return entry
    out: dict[str, Any] | None = None
    for field, value in entry.items():
        if isinstance(value, str):
            short, length = _cut(value, MAX_ANALYSIS_TEXT)
            if length is not None:
                out = dict(entry) if out is None else out
                out[field] = short
                out.setdefault("clipped", {})[field] = length
    return entry if out is None else out


def _bounded_analysis(result: Mapping[str, Any]) -> dict[str, Any]:
    """``archive.analyze()``'s answer with its lists (and an N+1 group's ``span_ids``) cut at
    :data:`MAX_TRACE_SPANS` and its texts at :data:`MAX_ANALYSIS_TEXT`; ``truncated`` says
    whether a list was cut."""
    out = dict(result)
    truncated = False
    for key in ("critical_path", "by_operation", "n_plus_one", "errors"):
        items = result.get(key)
        if not isinstance(items, list):
            continue
        truncated = truncated or len(items) > MAX_TRACE_SPANS
        entries = [_cut_texts(item) for item in items[:MAX_TRACE_SPANS]]
        if key == "n_plus_one":
            for i, group in enumerate(entries):
                ids = group.get("span_ids") if isinstance(group, Mapping) else None
                if isinstance(ids, list) and len(ids) > MAX_TRACE_SPANS:
                    entries[i] = {**group, "span_ids": ids[:MAX_TRACE_SPANS]}
                    truncated = True
        out[key] = entries
    out["bottleneck"] = _cut_texts(result.get("bottleneck"))
    out["truncated"] = truncated
    return out


class _WholeStaticFiles(StaticFiles):
    """Static files answered whole: a ``Range`` header is ignored, as RFC 9110 allows (the files
    are small), so a malformed or unsatisfiable one is no text/plain 400 or 416 unlike every
    other error. Other methods than GET and HEAD answer the usual JSON 405 with ``Allow``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] not in ("GET", "HEAD"):
                raise HTTPException(405, headers={"allow": "GET, HEAD"})
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]

            async def send_whole(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message)["accept-ranges"] = "none"
                await send(message)

            await super().__call__(scope, receive, send_whole)
            return
        await super().__call__(scope, receive, send)


# -- query parameters: each parser raises ValueError (answered with 400) on bad input ---------------


def _text(request: Request, name: str) -> str | None:
    """The parameter stripped; absent or empty (an empty form field) means not given, also
    beside a value (``service=x&service=``: x, not the last one, empty)."""
    values = [v.strip() for v in request.query_params.getlist(name) if v.strip()]
    return values[0] if values else None


def _duration(request: Request, name: str) -> float | None:
    value = _text(request, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of milliseconds, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _shown(value: str) -> str:
    """``value`` quoted for a message, a long one clipped: a message does not echo 5000 digits."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _time(request: Request, name: str) -> str | None:
    """Passed to the engine as text, which reads it as :func:`~pitchey_trace.analysis.parse_time`
    does everywhere: ISO-8601, a relative "24h", or digits as Unix nanoseconds."""
    value = _text(request, name)
    # Digits are converted with int(), which refuses non-ASCII ones ("²") and more than 4300
    # digits with Python's own words: both are answered here. (Unix ns below 10**20: 20 digits.)
    if value is not None and value.isdigit():
        if not _INT.fullmatch(value):
            raise ValueError(
                f"{name}: not a time: {_shown(value)} "
                "(expected e.g. 24h, 15m, 7d, 2026-11-30T12:00:00Z or Unix ns)"
            )
        if len(value.lstrip("0")) > 20:
            raise ValueError(f"{name}: time out of range (expected Unix nanoseconds): {_shown(value)}")
    return value


def _whole(value: str, name: str, what: str) -> int:
    """``value`` as an int, written in ASCII digits (a sign allowed); one with more than 18
    digits is taken as +-10**18, which every range check here refuses or cuts."""
    if not _INT.fullmatch(value):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    if len(value.lstrip("+-").lstrip("0")) > 18:
        return -_BIG if value.startswith("-") else _BIG
    return int(value)


def _limit(request: Request) -> int | None:
    value = _text(request, "limit")
    if value is None:
        return None
    limit = _whole(value, "limit", "a whole number")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {_shown(value)}")
    return min(limit, MAX_LIMIT)


def _span_limit(request: Request) -> int:
    """``limit`` of a trace's spans: 1 and up, more than :data:`MAX_TRACE_SPANS` is cut to it."""
    value = _text(request, "limit")
    if value is None:
        return MAX_TRACE_SPANS
    limit = _whole(value, "limit", "a whole number")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {_shown(value)}")
    return min(limit, MAX_TRACE_SPANS)


def _attributes(request: Request) -> dict[str, str] | None:
    """Repeated ``attr=key=value`` parameters (split at the first ``=``)."""
    out: dict[str, str] = {}
    for item in request.query_params.getlist("attr"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"attr must look like key=value, got {_shown(item)}")
        # Two values for one key: a span's attribute has one, and only the last counted.
        if out.get(key, value) != value:
            raise ValueError(f"attr {_shown(key)} is given more than once, with different values")
        out[key] = value
    return out or None


def _known(request: Request, *names: str) -> None:
    """Refuse a parameter the endpoint does not take (a typo such as ``servce=`` would otherwise
    be ignored silently and answer for everything), and one given twice but ``attr``: only one
    of two values would count (the last: ``limit=abc&limit=5`` passed, ``limit=5&limit=abc``
    did not), and a proxy or log that reads the first would see another query than this one."""
    unknown = sorted({k for k in request.query_params if k not in names})
    if unknown:
        expected = ", ".join(names) if names else "none"
        raise ValueError(
            f"unknown parameter {', '.join(_shown(k) for k in unknown[:5])} (expected: {expected})"
        )
    seen: set[str] = set()
    for key, value in request.query_params.multi_items():
        if key == "attr" or not value.strip():  # (an empty value counts as not given)
            continue
        if key in seen:
            raise ValueError(f"parameter {_shown(key)} is given more than once")
        seen.add(key)


def _given(**params: Any) -> dict[str, Any]:
    """Only the parameters the request set, so the engine's own defaults apply to the rest."""
    return {k: v for k, v in params.items() if v is not None}


# -- the app -----------------------------------------------------------------------------------------


def create_app(
    archive: Archive,
    *,
    refresh_interval_s: float | None = 30.0,
    basic_auth: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The analysis web app over ``archive``: the JSON API, the overview/search page at ``/``
    and the waterfall page at ``/traces/{trace_id}`` (see the module docstring).

    ``refresh_interval_s``: before a query, re-read the archive's source
    (:meth:`Archive.refresh`) when the last read is older than this many seconds, so a
    long-running server shows what was archived since it started; ``None`` never re-reads.
    ``basic_auth``: ``"user:password"`` to require HTTP Basic authentication for everything
    but ``/healthz`` (serve it over TLS, or behind a proxy that adds TLS, beyond localhost).
    ``allowed_hosts``: answer only requests whose ``Host`` is an IP address, ``localhost`` or
    one of these names (``"*"``: any), against DNS rebinding (a page the user visits reading a
    local server's archive); ``None`` (the default, for an app you mount in your own server)
    checks nothing. ``pitchey-trace serve`` checks, with the names given to ``--allow-host``.
    """
    if allowed_hosts is not None:
        if isinstance(allowed_hosts, str) or not all(isinstance(h, str) and h for h in allowed_hosts):
            raise ValueError("allowed_hosts must be a list of host names")
        hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
    auth: tuple[str, str] | None = None
    if basic_auth is not None:
        user, sep, password = basic_auth.partition(":") if isinstance(basic_auth, str) else ("", "", "")
        if not sep or not user or not password:
            raise ValueError("basic_auth must be 'user:password' with both parts non-empty")
        auth = (user, password)
    if refresh_interval_s is not None and not (0 <= refresh_interval_s < math.inf):
        raise ValueError(f"refresh_interval_s must be a number >= 0 or None, got {refresh_interval_s!r}")
    refresh_lock = threading.Lock()
    last_refresh = [time.monotonic()]

    def refreshed(func: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
        due = refresh_interval_s is not None and time.monotonic() - last_refresh[0] >= refresh_interval_s
        # One refresh at a time; queries arriving meanwhile answer from what is already read.
        if due and refresh_lock.acquire(blocking=False):
            try:
                archive.refresh()
            except Exception:  # an unreachable bucket: keep answering from what was read
                logger.warning("analysis API: re-reading %r failed", archive, exc_info=True)
            finally:
                last_refresh[0] = time.monotonic()
                refresh_lock.release()
        return func(*args, **kwargs)

    async def call(func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        # Engine calls are synchronous and may read a large archive on first use: they run in
        # the thread pool (the Archive is safe across threads) so the event loop keeps serving.
        return await run_in_threadpool(refreshed, func, args, kwargs)

    def texts(request: Request, *names: str) -> dict[str, Any]:
        """The text parameters ``names`` and the window (since, until) that the request set."""
        return _given(
            **{n: _text(request, n) for n in names},
            since=_time(request, "since"),
            until=_time(request, "until"),
        )

    async def overview(request: Request) -> Response:
        _known(request, "since", "until")
        return json_response(await call(archive.overview, **texts(request)))

    async def search(request: Request) -> Response:
        _known(request, *_SEARCH)
        params = texts(request, "service", "name", "status", "sort", "log")
        params.update(
            _given(
                min_duration_ms=_duration(request, "min_duration_ms"),
                max_duration_ms=_duration(request, "max_duration_ms"),
                attributes=_attributes(request),
                limit=_limit(request),
            )
        )
        return json_response(await call(archive.search, **params))

    def not_found(trace_id: str) -> Response:
        return json_response({"error": f"trace {trace_id} is not in the archive"}, 404)

    async def trace(request: Request) -> Response:
        _known(request, "since", "limit")
        limit = _span_limit(request)
        trace_id = request.path_params["trace_id"]
        since = _time(request, "since")
        view = await call(archive.trace, trace_id, limit=MAX_TRACE_SPANS, **_given(since=since))
        if view is None:
            return not_found(trace_id)
        # (encoding up to MAX_TRACE_BYTES takes a while: not on the event loop)
        return _json_body(await run_in_threadpool(_bounded_trace, view, limit))

    async def analysis(request: Request) -> Response:
        _known(request, "since")
        trace_id = request.path_params["trace_id"]
        result = await call(archive.analyze, trace_id, **_given(since=_time(request, "since")))
        if result is None:
            return not_found(trace_id)
        return json_response(await run_in_threadpool(_bounded_analysis, result))

    async def one_span(request: Request) -> Response:
        """One span of a trace as the trace answers it, but whole: nothing cut."""
        _known(request, "since")
        trace_id = request.path_params["trace_id"]
        span_id = request.path_params["span_id"]
        if not _SPAN_ID.fullmatch(span_id):
            raise ValueError(f"span id must be 16 hex characters, got {_shown(span_id)}")
        view = await call(archive.trace, trace_id, **_given(since=_time(request, "since")))
        if view is None:
            return not_found(trace_id)
        found = [s for s in view["spans"] if s.get("span_id") == span_id.lower()]
        if not found:
            return json_response({"error": f"span {span_id} is not in trace {view['trace_id']}"}, 404)
        return _json_body(await run_in_threadpool(_json_bytes, found[0]))

    async def performance(request: Request) -> Response:
        _known(request, "service", "since", "until")
        return json_response(await call(archive.performance, **texts(request, "service")))

    async def series(request: Request) -> Response:
        _known(request, "service", "operation", "since", "until", "step_s")
        step_s = None
        step = _text(request, "step_s")
        if step is not None:
            step_s = _whole(step, "step_s", "a whole number of seconds")
            if abs(step_s) >= _BIG:  # (the engine's message would show the stand-in)
                raise ValueError(
                    f"step_s must be a whole number of seconds from 1 to 31 days, got {_shown(step)}"
                )
        params = texts(request, "service", "operation")
        params.update(_given(step_s=step_s))
        return json_response(await call(archive.series, **params))

    async def errors(request: Request) -> Response:
        _known(request, "service", "since", "until", "limit")
        params = texts(request, "service")
        params.update(_given(limit=_limit(request)))
        return json_response(await call(archive.errors, **params))

    async def compare(request: Request) -> Response:
        _known(request, "since", "until", "service")
        return json_response(await call(archive.compare, **texts(request, "service")))

    async def dependencies(request: Request) -> Response:
        _known(request, "service", "since", "until")
        return json_response(await call(archive.dependencies, **texts(request, "service")))

    async def audit(request: Request) -> Response:
        _known(request, "category", "actor", "action", "outcome", "trace_id", "since", "until", "limit")
        params = texts(request, "category", "actor", "action", "outcome", "trace_id")
        params.update(_given(limit=_limit(request)))
        return json_response(await call(archive.audit, **params))

    async def logs(request: Request) -> Response:
        _known(request, "service", "level", "text", "trace_id", "since", "until", "limit")
        params = texts(request, "service", "level", "text", "trace_id")
        params.update(_given(limit=_limit(request)))
        return json_response(await call(archive.logs, **params))

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    index_html = (STATIC_DIR / "index.html").read_bytes()
    trace_html = (STATIC_DIR / "trace.html").read_bytes()

    async def index_page(request: Request) -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    async def trace_page(request: Request) -> Response:
        # The same page for every id: its script reads the id from the address and asks the API.
        return Response(trace_html, media_type="text/html; charset=utf-8")

    async def bad_request(request: Request, exc: Exception) -> Response:
        return json_response({"error": str(exc)}, 400)

    async def unavailable(request: Request, exc: Exception) -> Response:
        logger.warning("analysis API: %s", exc)
        return json_response({"error": f"archive unavailable: {exc}"}, 503)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": exc.detail}, exc.status_code, exc.headers)  # e.g. a 405's Allow

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.error("analysis API: %s %s failed", request.method, request.url.path, exc_info=exc)
        return json_response({"error": "internal error (see the server log)"}, 500)

    routes = [
        Route("/", index_page),
        Route("/traces/{trace_id}", trace_page),
        Route("/api/overview", overview),
        Route("/api/search", search),
        Route("/api/traces/{trace_id}", trace),
        Route("/api/traces/{trace_id}/analysis", analysis),
        Route("/api/traces/{trace_id}/spans/{span_id}", one_span),
        Route("/api/performance", performance),
        Route("/api/errors", errors),
        Route("/api/series", series),
        Route("/api/audit", audit),
        Route("/api/logs", logs),
        Route("/api/dependencies", dependencies),
        Route("/api/compare", compare),
        Route("/healthz", healthz),
        Mount("/static", _WholeStaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders)]
        + ([Middleware(_HostCheck, allowed=hosts)] if allowed_hosts is not None and "*" not in hosts else [])
        + ([Middleware(_BasicAuth, user=auth[0], password=auth[1])] if auth else []),
        exception_handlers={
            ValueError: bad_request,
            ArchiveUnavailable: unavailable,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    # A trailing slash (or an id holding an encoded "/") is an unknown path, answered 404,
    # rather than a redirect to a path the client did not ask for.
    app.router.redirect_slashes = False
    return app
