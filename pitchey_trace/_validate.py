"""Argument checks shared by ``configure()`` and the exporters: a wrong value is refused when
the object is made, with a message naming the argument, instead of failing every export later
(or raising from the application's spans).

A number that is out of range or not a number is a :class:`ConfigurationError` (a
``ValueError``), as ``configure()`` always reported them; any other wrong type is a
``TypeError``. Bools are not numbers here, and NaN and the infinities are out of range.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pitchey_trace.exceptions import ConfigurationError

__all__ = [
    "HEADER_NAME",
    "MAX_INT_SETTING",
    "callable_or_none",
    "compresslevel",
    "datasets",
    "finite",
    "header_map",
    "list_of",
    "not_async",
    "positive_int",
    "str_map",
    "text",
]

# Sizes and counts beyond this are mistakes, and would overflow the C accelerator's integers.
MAX_INT_SETTING = 1 << 31

# An HTTP header name (an RFC 9110 token) and a value without control characters (CR/LF would
# let a value inject headers; http.client refuses them on every request).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def positive_int(name: str, value: Any, maximum: int = MAX_INT_SETTING) -> int:
    """``value``: an int from 1 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise ConfigurationError(f"{name} must be an int from 1 to {maximum}, got {value!r}")
    return value


def finite(name: str, value: Any, low: float, high: float, *, none_ok: bool = False) -> float | None:
    """``value`` as a float in [low, high] (or None when ``none_ok``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        also = " or None" if none_ok else ""
        raise ConfigurationError(f"{name} must be a number from {low:g} to {high:g}{also}, got {value!r}")
    return float(value)


def list_of(name: str, value: Any) -> list[Any]:
    """A list from a list, tuple or other iterable of objects; not a str, bytes or mapping,
    whose items would be characters or keys."""
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return list(value)


def datasets(value: Any) -> frozenset[str] | None:
    """An exporter's ``datasets``: None (all) or names (``{"traces"}``; a lone ``"traces"``
    would be its letters)."""
    if value is None:
        return None
    names = list_of("datasets", value)
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"datasets must be dataset names (str), got {value!r}")
    return frozenset(names)


def not_async(name: str, fn: Any) -> None:
    """The export worker calls ``fn`` from its own thread, without an event loop: an ``async``
    function would return a coroutine that never runs (its records silently lost)."""
    # (an object with an async __call__ is checked through its class's method)
    call = (
        fn
        if inspect.isfunction(fn) or inspect.ismethod(fn)
        else inspect.getattr_static(type(fn), "__call__", None)
    )
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(call):
        raise TypeError(f"{name} must be a plain (not async) function: the export worker runs it in a thread")


def callable_or_none(name: str, value: Any) -> Callable[..., Any] | None:
    """``value``: a callable or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")
    fn: Callable[..., Any] | None = value
    return fn


def compresslevel(value: Any) -> int:
    """A gzip level: an int from 0 to 9."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigurationError(f"compresslevel must be an int from 0 to 9, got {value!r}")
    return value


def text(name: str, value: Any) -> str:
    """``value``: a non-empty str."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def str_map(name: str, value: Any) -> dict[str, str]:
    """A mapping of str to str (e.g. dataset to bucket), as a new dict; None is empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{name} must map names to str values, got {value!r}")
    return dict(value)


def header_map(value: Any) -> dict[str, str]:
    """Extra HTTP headers: names that are header names, values without control characters."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a mapping of names to values, got {value!r}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"header names and values must be str, got {k!r}: {v!r}")
        if not HEADER_NAME.fullmatch(k):
            raise ConfigurationError(f"not a valid HTTP header name: {k!r}")
        if not _HEADER_VALUE.fullmatch(v):
            raise ConfigurationError(f"header {k!r}: a value cannot hold control characters (CR, LF...)")
        try:
            v.encode("latin-1")  # what http.client sends; anything else fails every request
        except UnicodeEncodeError:
            raise ConfigurationError(f"header {k!r}: the value must be latin-1 text") from None
        out[k] = v
    return out


def masked_url(url: str) -> str:
    """``url`` with its credentials masked, for messages and output that end up in logs: the
    password of the userinfo (``user:***@``; a lone user name, often a token, becomes
    ``***@``), every query value (``?token=***``) and the fragment."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"***@{host}"
    query = "&".join(
        f"{name}=***" if sep else name
        for name, sep, _value in (item.partition("=") for item in parts.query.split("&"))
    )
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
