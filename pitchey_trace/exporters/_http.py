"""Shared pieces of the network exporters: retry policy with backoff and jitter, rate-limited
warnings, and a small keep-alive HTTP sender on the standard library (no dependencies).

Failures of the destination (refused connections, timeouts, 5xx) are not SDK bugs: they are
counted and logged at most once a minute per kind, never reported as internal errors.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import functools
import gzip
import http.client
import io
import logging
import math
import os
import random
import re
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from pitchey_trace import _safety, _stats
from pitchey_trace._batch import _suppressed_thread, join_thread, start_thread
from pitchey_trace._validate import compresslevel as valid_compresslevel
from pitchey_trace._validate import finite, header_map, list_of, masked_url, positive_int
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters._otlp_proto import MAX_ANSWER_BYTES, loggable, parse_partial_success
from pitchey_trace.exporters._spool import PayloadSpool

if TYPE_CHECKING:
    from pitchey_trace.exporters._grpc import GrpcSender

__all__ = [
    "HttpResult",
    "HttpSender",
    "RetryPolicy",
    "Try",
    "checked_endpoint",
    "checked_retry",
    "warn_limited",
    "with_retries",
]

# The most of a collector's answer read (answers are small: a partial-success count).
_MAX_RESPONSE_BYTES = MAX_ANSWER_BYTES

logger = logging.getLogger("pitchey_trace")
_WARN_EVERY_S = 60.0
_last_warned: dict[str, float] = {}
_warn_lock = threading.Lock()


def _reinit_after_fork() -> None:
    global _warn_lock, _flight_lock
    _warn_lock = threading.Lock()  # another thread may have held it at fork time
    _flight_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def warn_limited(kind: str, message: str, *args: object) -> None:
    """Log a warning on the ``pitchey_trace`` logger, at most once a minute per ``kind``."""
    now = time.monotonic()
    with _warn_lock:
        last = _last_warned.get(kind)
        if last is not None and now - last < _WARN_EVERY_S:
            return
        _last_warned[kind] = now
    logger.warning(message, *args)


@dataclass(frozen=True)
class RetryPolicy:
    """How exporters retry: exponential backoff with jitter, bounded attempts and time.

    The n-th retry waits ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``, reduced
    by a random fraction of up to ``jitter`` (so many processes do not retry in lockstep).
    A ``Retry-After`` header on 429/503 replaces the computed wait (capped by
    ``max_retry_after_s``). HTTP exporters give a batch up after ``max_attempts`` attempts or
    ``max_elapsed_s`` seconds; the archive exporters retry uploads until shutdown (their data
    is on disk) and use only the backoff part.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_elapsed_s: float = 120.0
    max_retry_after_s: float = 60.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({408, 429, 500, 502, 503, 504}))

    def __post_init__(self) -> None:
        positive_int("max_attempts", self.max_attempts, 1000)
        day = 86_400.0
        finite("initial_backoff_s", self.initial_backoff_s, 0.0, day)
        finite("max_backoff_s", self.max_backoff_s, 0.0, day)
        finite("multiplier", self.multiplier, 1.0, 1000.0)
        finite("jitter", self.jitter, 0.0, 1.0)
        finite("max_elapsed_s", self.max_elapsed_s, 0.0, 7 * day)
        finite("max_retry_after_s", self.max_retry_after_s, 0.0, day)
        statuses = list_of("retry_statuses", self.retry_statuses)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in statuses):
            raise TypeError(f"retry_statuses must be HTTP status codes (int), got {self.retry_statuses!r}")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = first retry)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, retry - 1))
        return base * (1.0 - self.jitter * random.random())


def checked_retry(retry: object) -> RetryPolicy:
    """An exporter's ``retry=``: a :class:`RetryPolicy`, or None for the default one (anything
    else would fail every export later, with an AttributeError)."""
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
    return retry


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class HttpResult:
    """Outcome of :meth:`HttpSender.send`."""

    ok: bool
    status: int | None = None
    body: bytes = b""
    attempts: int = 0
    error: str | None = None
    rejected: bool = False  # refused as it is (not worth sending again), not merely undelivered
    content_type: str | None = None  # the answer's (gRPC: "application/grpc")


def read_pem(path: object, what: str = "CA file", marker: bytes = b"CERTIFICATE-----") -> bytes:
    """The PEM file at ``path``: by default a CA bundle to trust instead of the system's roots.
    Raises ConfigurationError when it cannot be read or holds no ``-----BEGIN ...{marker}``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a {what} must be a path, got {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read(10 << 20)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {what} {os.fspath(path)!r}: {exc.strerror or exc}"
        ) from None
    # (anywhere in the file: a PEM file may hold a certificate and its key, in either order)
    if re.search(rb"-----BEGIN [A-Z0-9 ]{0,40}" + re.escape(marker), data) is None:
        kind = "certificate" if marker.startswith(b"CERT") else "private key"
        raise ConfigurationError(f"the {what} {os.fspath(path)!r} holds no PEM {kind}")
    return data


def read_ca_file(path: object) -> bytes:
    """The PEM certificates in ``path`` (a CA bundle to trust instead of the system's roots).
    Raises ConfigurationError when it cannot be read or holds no certificate."""
    return read_pem(path)


_PEM_CERTS = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\s*", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]{0,40})PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\s*", re.S)


def client_identity(cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes] | None:
    """The PEM (certificate chain, private key) a client presents for mutual TLS, checked to
    belong together; None when neither file is given. ConfigurationError otherwise."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ConfigurationError("a client certificate and its key go together: give both files")
    # Only the blocks each side needs: one combined file (key and certificate, in either order)
    # may serve as both.
    raw_chain = read_pem(cert_file, "client certificate file")
    raw_key = read_pem(key_file, "client key file", b"PRIVATE KEY-----")
    chain = b"".join(_PEM_CERTS.findall(raw_chain)) or raw_chain  # (other block names: as given)
    key_match = _PEM_KEY.search(raw_key)
    key = key_match.group(0) if key_match else raw_key
    try:  # (the pair must match: a mismatch would only show as failed handshakes later)
        ssl.create_default_context().load_cert_chain(cert_file, key_file, password=lambda: "")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"the client certificate {os.fspath(cert_file)!r} and key {os.fspath(key_file)!r} "
            f"cannot be used together (an encrypted key is not supported): {exc}"
        ) from None
    return chain, key


def is_http_url(parts: SplitResult) -> bool:
    """Whether a split URL is ``http(s)://host[:port]...`` with a valid port."""
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        port_ok = False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok


def checked_endpoint(url: object, timeout_s: float, form: str) -> SplitResult:
    """``url`` split, once checked to be ``http(s)://host[:port]...``; ``timeout_s`` checked
    too (> 0, finite). Raises TypeError / ConfigurationError with ``form`` in the message."""
    if not isinstance(url, str):
        raise TypeError(f"the URL must be a str, got {url!r}")
    parts = urlsplit(url)
    if not is_http_url(parts):
        # (masked: the message reaches logs, and a URL may carry a password or a token)
        raise ConfigurationError(f"URL must be {form}, got {masked_url(url)!r}")
    if finite("timeout_s", timeout_s, 0.0, 3600.0) == 0:
        raise ConfigurationError("timeout_s must be > 0")
    return parts


@dataclass
class Try:
    """One attempt's outcome, for :func:`with_retries`."""

    ok: bool = False
    retry: bool = False  # failed, and worth another attempt
    status: int | None = None
    data: bytes = b""
    error: str | None = None
    wait: float | None = None  # the server's requested delay, if it gave one
    content_type: str | None = None  # the answer's


def with_retries(
    counter: str,
    url: str,
    policy: RetryPolicy,
    stop: threading.Event,
    once: Callable[[], Try],
    spooled: bool = False,
    deadline: float | None = None,
    splittable: bool = False,
) -> HttpResult:
    """Run ``once`` until it succeeds, fails for good, or the policy (attempts, elapsed time),
    ``stop`` or ``deadline`` (``time.monotonic()``: no wait past it) ends the retries; counts
    ``{counter}.requests/.retried/.rejected/.failed`` and warns (rate-limited) on the
    ``pitchey_trace`` logger. Shared by every sender.
    ``spooled``: a batch that fails goes to the exporter's spool (the warning says so, not
    that it is given up). ``splittable``: a 413 answer is returned (refused) without being
    counted or warned about as a rejection: the caller sends the items as smaller requests."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        _stats.incr(f"{counter}.requests")
        t = once()
        if t.ok:
            return HttpResult(True, t.status, t.data, attempt, content_type=t.content_type)
        if not t.retry:
            if splittable and t.status == 413:  # (counted as split_too_large by the caller)
                return HttpResult(False, t.status, t.data, attempt, t.error, rejected=True)
            _stats.incr(f"{counter}.rejected")
            warn_limited(
                f"{counter}.rejected",
                "pitchey_trace %s: %s rejected a batch: %s %r",
                counter,
                url,
                t.error,
                t.data[:200],
            )
            return HttpResult(False, t.status, t.data, attempt, t.error, rejected=True)
        wait = t.wait if t.wait is not None else policy.backoff(attempt)
        elapsed = time.monotonic() - started
        if (
            attempt >= policy.max_attempts
            or elapsed + wait > policy.max_elapsed_s
            or stop.is_set()
            or (deadline is not None and time.monotonic() + wait >= deadline)
        ):
            _stats.incr(f"{counter}.failed")
            warn_limited(
                f"{counter}.failed",
                "pitchey_trace %s: %s to %s after %d attempt(s): %s",
                counter,
                "a batch goes to the spool (sent again later): no answer" if spooled else "giving up a batch",
                url,
                attempt,
                t.error,
            )
            return HttpResult(False, t.status, t.data, attempt, t.error)
        _stats.incr("retried")
        _stats.incr(f"{counter}.retried")
        warn_limited(
            f"{counter}.retry",
            "pitchey_trace %s: %s failed (%s); retrying in %.2fs",
            counter,
            url,
            t.error,
            wait,
        )
        if stop.wait(wait):
            _stats.incr(f"{counter}.failed")
            return HttpResult(False, t.status, t.data, attempt, t.error)


def note_partial_success(
    result: HttpResult, *, counter: str, count_key: str, noun: str, items: int, url: str
) -> int:
    """Read the OTLP partial success of a successful answer (``result``; ``items`` spans, log
    records or data points were sent, ``count_key`` names their count in JSON): the number of
    them the collector rejected, at most ``items``, counted in ``<counter>.partial_rejected``;
    an answer with a message but nothing rejected is a warning (``<counter>.partial_warning``).
    Both are logged with the collector's message (made safe, bounded), at most once a minute
    each. Such a request is not sent again: the collector took what it could. Never raises."""
    try:
        partial = parse_partial_success(result.body, result.content_type, count_key)
        if partial is None:
            return 0
        rejected = min(partial.rejected, max(0, items))
        message = loggable(partial.message) if partial.message else "(no message)"
        if rejected:
            _stats.incr(f"{counter}.partial_rejected", rejected)
            warn_limited(
                f"{counter}.partial_rejected",
                "pitchey_trace %s: %s accepted a request but rejected %d of its %d %s (not sent again; "
                "counted in dropped.rejected): %s",
                counter,
                url,
                rejected,
                items,
                noun,
                message,
            )
        else:
            _stats.incr(f"{counter}.partial_warning")
            warn_limited(
                f"{counter}.partial_warning",
                "pitchey_trace %s: %s accepted a request with a warning: %s",
                counter,
                url,
                message,
            )
        return rejected
    except Exception as exc:  # (a bug here must not fail an export that succeeded)
        _safety.report(f"partial_success.{counter}", exc)
        return 0


def count_rejected(name: str, n: int) -> None:
    """Count ``n`` items a collector rejected (partial success) in ``dropped.rejected`` and
    ``dropped.rejected.<name>`` (``name``: the exporter's)."""
    _stats.incr("dropped.rejected", n)
    _stats.incr(f"dropped.rejected.{name}", n)


# What sending on a connection the peer has closed raises before any answer is read
# (http.client.RemoteDisconnected is a ConnectionResetError; TLS may report the EOF itself).
_STALE_CONNECTION = (
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection is readable: the peer closed it (or sent what no
    request asked for), so it must not be reused (urllib3's check before reusing one)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed already, or no file descriptor any more
        return True


class _AnswerIO(io.RawIOBase):
    """The socket's reading side for one answer, giving up at ``deadline`` (monotonic): each
    read waits at most ``min(timeout_s, time left)``. A per-read timeout alone lets a server
    that drips its answer a byte at a time hold the exporter's thread as long as it likes."""

    def __init__(self, sock: socket.socket, timeout_s: float, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # (keeps the socket open while read)
        self._timeout_s = timeout_s
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive within timeout_s")
        self._sock.settimeout(min(self._timeout_s, left))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _AnswerSocket:
    """What :class:`http.client.HTTPResponse` reads its answer from: ``makefile`` gives a
    buffered :class:`_AnswerIO` (the response's only use of the socket)."""

    def __init__(self, sock: socket.socket, timeout_s: float, deadline: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_AnswerIO(self._sock, self._timeout_s, self._deadline))


def _answer_response(timeout_s: float, deadline: float) -> Callable[..., http.client.HTTPResponse]:
    """An ``HTTPConnection.response_class`` reading the answer by ``deadline`` at the latest."""

    def make(sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(_AnswerSocket(sock, timeout_s, deadline), *args, **kwargs)  # type: ignore[arg-type]

    return make


class HttpSender:
    """POSTs bodies to one URL over a reused connection, with retries (one thread at a time).

    ``timeout_s`` bounds each socket operation (connect, send, each read). ``stop`` (an Event)
    interrupts backoff waits, so a shutdown never waits out a retry schedule; :meth:`abort`
    (from any thread) also ends the request in progress and refuses every later one.
    """

    def __init__(
        self,
        url: str,
        *,
        counter: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compress: bool = True,
        compresslevel: int = 6,
        retry: RetryPolicy | None = None,
        content_type: str = "application/json",
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
    ) -> None:
        parts = checked_endpoint(url, timeout_s, "http(s)://host[:port]/path")
        # https only: the system's roots, or a private CA's certificates (PEM) instead; and the
        # client's own certificate when the server asks for one (mutual TLS).
        identity = client_identity(client_cert_file, client_key_file)
        self._tls = (
            ssl.create_default_context(cadata=read_ca_file(ca_file).decode("ascii") if ca_file else None)
            if ca_file or identity
            else None
        )
        if identity is not None and self._tls is not None:
            self._tls.load_cert_chain(client_cert_file, client_key_file)  # type: ignore[arg-type]
        valid_compresslevel(compresslevel)
        extra_headers = header_map(headers)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""  # (checked_endpoint: never empty)
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.counter = counter
        self.timeout_s = timeout_s
        self.compress = compress
        self.compresslevel = compresslevel
        self.retry = checked_retry(retry)
        self.headers = {"Content-Type": content_type, "User-Agent": "pitchey-trace"}
        if compress:
            self.headers["Content-Encoding"] = "gzip"
        self.headers.update(extra_headers)
        self._conn: http.client.HTTPConnection | None = None
        self._pid = os.getpid()
        self.stop = threading.Event()
        self._init_abort()

    def _init_abort(self) -> None:
        # What abort() needs: a duplicate of the connection's socket (``_handle``), owned by
        # this object and closed only under ``_abort_lock``, so that shutting it down from
        # another thread can never hit a descriptor number the sender thread (or the garbage
        # collector) closed and the process reused meanwhile. shutdown() acts on the socket
        # itself, so it ends a read or write blocked on the original descriptor at once.
        self._abort_lock = threading.Lock()
        self._aborted = False
        self._busy = False  # a thread is in _post_once: it owns the connection
        self._handle: socket.socket | None = None

    def clone(self) -> HttpSender:
        """A sender with these settings and a connection of its own, for another thread
        (http.client connections are not thread-safe)."""
        other = copy.copy(self)
        other._conn = None
        other._pid = os.getpid()
        other.stop = threading.Event()
        other._init_abort()  # (its own handle: never this one's)
        return other

    def reset(self) -> None:
        """Drop the connection (after fork the child must not share the parent's socket)."""
        handle = self._handle
        self._conn = None
        self._pid = os.getpid()
        self.stop = threading.Event()
        self._init_abort()
        if handle is not None:
            with contextlib.suppress(OSError):  # (our copy only: the parent's socket stays open)
                handle.close()

    def close(self) -> None:
        """Close the connection; later sends reconnect."""
        conn, self._conn = self._conn, None
        self._forget_handle()
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def abort(self) -> None:
        """Stop for good, from any thread, without waiting: no request starts from now on,
        and the one in progress (connecting, sending or waiting for its answer) fails at once
        on the sender's thread (its socket is shut down). Never raises."""
        with self._abort_lock:
            self._aborted = True
            self.stop.set()
            busy = self._busy
            handle = self._handle
            if busy and handle is not None:
                with contextlib.suppress(OSError):  # (not connected yet / already closed by peer)
                    handle.shutdown(socket.SHUT_RDWR)
        if not busy:
            # Idle: nobody else uses the connection, and no request takes it any more (a
            # busy one is closed by its own thread: http.client objects are not thread-safe).
            self.close()

    @property
    def aborted(self) -> bool:
        """Whether :meth:`abort` was called (no request is sent any more)."""
        return self._aborted

    def _forget_handle(self) -> None:
        with self._abort_lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def _check_not_aborted(self) -> None:
        if self._aborted:
            raise ConnectionAbortedError("the exporter was shut down: no request is sent any more")

    def _open_socket(
        self, address: tuple[str, int], timeout: float | None, source_address: Any = None
    ) -> socket.socket:
        """``socket.create_connection`` for the connections this sender makes, with each
        socket registered for :meth:`abort` before it connects (a connect in progress is
        ended too) and checked once connected (an abort during the connect that did not end
        it must still keep the request from going out)."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                with self._abort_lock:
                    self._check_not_aborted()
                    old, self._handle = self._handle, sock.dup()
                if old is not None:  # (a connection replaced: its copy goes with it)
                    with contextlib.suppress(OSError):
                        old.close()
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(addr)
                self._check_not_aborted()
                return sock
            except OSError as exc:
                error = exc
                self._forget_handle()
                sock.close()
                if self._aborted:
                    break
        raise error if error is not None else OSError(f"no address found for {host!r}")

    def _connection(self) -> http.client.HTTPConnection:
        if self._pid != os.getpid():
            self.reset()
        conn = self._conn
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            self.close()  # the collector closed it while idle: not worth a failed request
            conn = None
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout_s, context=self._tls
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            conn._create_connection = self._open_socket  # type: ignore[attr-defined]
            self._conn = conn
        return conn

    def _exchange(
        self, conn: http.client.HTTPConnection, body: bytes, deadline: float | None
    ) -> http.client.HTTPResponse:
        """Send the request on ``conn`` and read the answer's status line and headers. Each
        socket operation waits at most ``timeout_s`` (and never past ``deadline``); the answer
        as a whole must come within ``timeout_s`` of the request going out."""
        timeout = self.timeout_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no time left to send the request")
            timeout = min(timeout, left)
        conn.timeout = timeout  # (a new connection connects with it)
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        # (an abort from here on shuts the connection's socket down: the request fails)
        self._check_not_aborted()
        conn.request("POST", self._path, body=body, headers=self.headers)
        answer_by = time.monotonic() + self.timeout_s
        if deadline is not None:
            answer_by = min(answer_by, deadline)
        conn.response_class = _answer_response(self.timeout_s, answer_by)  # type: ignore[assignment]
        return conn.getresponse()

    def _post_once(self, body: bytes, deadline: float | None = None) -> tuple[int, Mapping[str, str], bytes]:
        with self._abort_lock:
            self._check_not_aborted()
            self._busy = True
        try:
            return self._post_on_connection(body, deadline)
        finally:
            with self._abort_lock:
                self._busy = False
                aborted = self._aborted
            if aborted:  # (abort() left the connection to this thread)
                self.close()

    def _post_on_connection(
        self, body: bytes, deadline: float | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        conn = self._connection()
        reused = conn.sock is not None  # (a new connection connects on its first request)
        try:
            try:
                resp = self._exchange(conn, body, deadline)
            except _STALE_CONNECTION:
                if not reused:
                    raise
                # The collector closed the kept-alive connection as the request went out, before
                # answering (its idle timeout): no failure of the collector. Send again at once on
                # a new connection, within this attempt, as urllib3 does; a new connection's
                # failure is a failed attempt.
                self.close()
                conn = self._connection()
                resp = self._exchange(conn, body, deadline)
            headers = {k.lower(): v for k, v in resp.getheaders()}
            try:
                # Bounded: a collector answering with a huge (or endless) body must not grow this
                # process's memory. What is left unread makes the connection unusable: drop it.
                data = resp.read(_MAX_RESPONSE_BYTES)
            except (OSError, http.client.HTTPException):
                # The status line came: the collector answered (a 2xx took the request); only
                # the rest of its body was lost. Sending again would duplicate the request.
                resp.close()
                self.close()
                return resp.status, headers, b""
            if resp.will_close or not resp.isclosed():
                resp.close()
                self.close()
            return resp.status, headers, data
        except BaseException:
            self.close()
            raise

    def send(
        self,
        payload: bytes,
        retry: RetryPolicy | None = None,
        spooled: bool = False,
        deadline: float | None = None,
        splittable: bool = False,
    ) -> HttpResult:
        """POST ``payload`` (gzipped when ``compress``), retrying per the policy (``retry``
        instead of the sender's own for this call; ``spooled``, ``splittable``: see
        :func:`with_retries`);
        ``deadline`` (``time.monotonic()``): no attempt or wait goes past it (a flush's)."""
        if self._aborted:  # (shut down: not an attempt, nothing counted here)
            return HttpResult(False, error="the exporter was shut down")
        policy = retry or self.retry
        body = gzip.compress(payload, self.compresslevel, mtime=0) if self.compress else payload
        retry_statuses = policy.retry_statuses
        max_retry_after_s = policy.max_retry_after_s

        def once() -> Try:
            try:
                code, headers, data = self._post_once(body, deadline)
            except (OSError, http.client.HTTPException) as exc:
                return Try(retry=True, error=f"{type(exc).__name__}: {exc}")
            if 200 <= code < 300:
                return Try(ok=True, status=code, data=data, content_type=headers.get("content-type"))
            wait = None
            if code in (429, 503):
                after = parse_retry_after(headers.get("retry-after"))
                if after is not None:
                    wait = min(after, max_retry_after_s)
            return Try(retry=code in retry_statuses, status=code, data=data, error=f"HTTP {code}", wait=wait)

        return with_retries(self.counter, self.url, policy, self.stop, once, spooled, deadline, splittable)


#: What a payload spool keeps at most, by default.
DEFAULT_SPOOL_MAX_BYTES = 256 << 20
#: The largest request body (encoded, before gzip) the Zipkin and analytics exporters send, by
#: default: under the usual limits of collectors and proxies (4 MiB gRPC messages, 10-20 MiB
#: HTTP bodies), far above a common batch (1,000 Zipkin spans of ~1 KB).
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
#: The largest ``max_request_bytes`` an exporter takes.
MAX_REQUEST_BYTES_LIMIT = 1 << 30


def checked_max_request_bytes(value: object) -> int:
    """An exporter's ``max_request_bytes``: an int from 1 to 1 GiB."""
    return positive_int("max_request_bytes", value, MAX_REQUEST_BYTES_LIMIT)


def count_dropped(reason: str, name: str, n: int) -> None:
    """Count ``n`` items an exporter dropped in ``dropped.<reason>`` and
    ``dropped.<reason>.<name>`` (``name``: the exporter's)."""
    _stats.incr(f"dropped.{reason}", n)
    _stats.incr(f"dropped.{reason}.{name}", n)


_flight_lock = threading.Lock()  # (all exporters': held only to read or switch a state)


class _Flight:
    """A payload being delivered by an exporter's thread while :meth:`SenderExporter.shutdown`
    may run on another: whichever moves it out of ``SENDING`` first settles it (the thread on
    its result, or shutdown by keeping it in the spool), so it is kept or counted once."""

    SENDING, SETTLING, CLAIMED = 0, 1, 2
    __slots__ = ("items", "payload", "settled", "state")

    def __init__(self, payload: bytes, items: int) -> None:
        self.payload = payload
        self.items = items
        self.state = _Flight.SENDING
        self.settled = threading.Event()  # its thread is done with it


class _Tally:
    """What the requests of one batch (or the part one sending thread took) came to, in items:
    given up, delivered or kept in the spool, rejected by the answer, too large to send."""

    __slots__ = ("failed", "handled", "rejected", "too_large")

    def __init__(self) -> None:
        self.failed = self.handled = self.rejected = self.too_large = 0

    def add(self, other: _Tally) -> None:
        self.failed += other.failed
        self.handled += other.handled
        self.rejected += other.rejected
        self.too_large += other.too_large


#: The most requests of one batch an exporter sends at once (``max_concurrent_requests``).
MAX_CONCURRENT_REQUESTS = 32

#: How long the spool's sender thread holds a drain at most before it looks again (a flush
#: may be waiting for it; its sends give up at this deadline too).
_DRAIN_SLICE_S = 30.0


def _run_spool_sender(ref: weakref.ref[SenderExporter], wake: threading.Event) -> None:
    """The body of a spool's sender thread: :meth:`SenderExporter._spool_step` while the
    exporter lives and is not shut down, sleeping between turns without holding it."""
    while True:
        exporter = ref()
        if exporter is None:
            return  # (dropped without a shutdown)
        pause = exporter._spool_step()
        del exporter
        if pause is None:
            return
        if pause > 0:
            wake.wait(None if pause == math.inf else pause)


class SenderExporter:
    """Lifecycle shared by the exporters that post each batch at once through one
    :class:`HttpSender` (``self._sender``): nothing buffered in memory, stop retrying on
    shutdown, a fresh connection after fork; and, with a spool directory (``_spool``), what
    could not be delivered kept on disk and sent later by a thread of the exporter's own (so
    the export worker never waits on a failing endpoint more than once per outage)."""

    _sender: HttpSender | GrpcSender
    _spool: PayloadSpool | None = None
    #: A failed attempt: new batches go straight to the spool until its sender thread emptied it.
    _spooling = False
    #: The spool's sender thread (one per exporter and process, started when first needed) and
    #: the connection it (or a flush) drains on, used under ``_drain_lock`` only.
    _spool_thread: threading.Thread | None = None
    _spool_sender: HttpSender | GrpcSender | None = None
    _spool_wake: threading.Event
    _spool_thread_lock: threading.Lock
    _drain_lock: threading.Lock
    #: OTLP exporters: the JSON name of the count in a successful answer's partial success
    #: (``rejectedSpans``) and what it counts (``spans``); None: answers are not read.
    _partial: tuple[str, str] | None = None
    #: Items per request at most: bounds the count read from the answer to a spooled request.
    _items_per_request = 512
    #: A request body's bytes at most (encoded, before gzip): a batch whose encoding is larger
    #: goes as several requests; an item larger on its own is dropped. None: no byte cap.
    _max_request_bytes: int | None = None
    #: Senders of their own (one connection each) for the short-lived threads that send a
    #: batch's requests alongside the export worker (:meth:`_init_concurrency`); none: one
    #: request at a time.
    _lane_senders: tuple[HttpSender, ...] = ()

    @property
    def url(self) -> str:
        """The endpoint."""
        return self._sender.url

    @property
    def spool_dir(self) -> str | None:
        """Where undeliverable requests are kept (None: no spool)."""
        return None if self._spool is None else str(self._spool.dir.path)

    def _init_concurrency(self, max_concurrent_requests: object) -> int:
        """Send up to ``max_concurrent_requests`` (1 to :data:`MAX_CONCURRENT_REQUESTS`) of a
        batch's requests at once, each on a connection of its own: against an endpoint with a
        round trip of tens of milliseconds, one request at a time caps the throughput at
        ``points per request / round trip``. Returns the checked value."""
        n = positive_int("max_concurrent_requests", max_concurrent_requests, MAX_CONCURRENT_REQUESTS)
        sender = self._sender
        if isinstance(sender, HttpSender):
            self._lane_senders = tuple(sender.clone() for _ in range(n - 1))
        return n

    def _init_spool(self, spool_dir: Any, spool_max_bytes: int, items_counter: str) -> None:
        """Keep undeliverable payloads in ``spool_dir`` (None: no spool), at most
        ``spool_max_bytes``; ``items_counter`` counts their spans or points once sent."""
        positive_int("spool_max_bytes", spool_max_bytes)
        if spool_dir is None:
            return
        if not isinstance(spool_dir, (str, os.PathLike)):
            raise TypeError(f"spool_dir must be a path or None, got {spool_dir!r}")
        try:
            self._spool = PayloadSpool(
                spool_dir,
                tag=f"payload-{self._sender.counter}",
                counter=self._sender.counter,
                items_counter=items_counter,
                max_bytes=spool_max_bytes,
                # (the name now: a reference to self would keep a dropped exporter alive)
                rejected=functools.partial(count_rejected, self._exporter_name()),
            )
        except OSError as exc:  # (a file there, no permission: said at startup, as for archives)
            raise ConfigurationError(f"spool_dir {str(spool_dir)!r} is not usable: {exc}") from exc
        self._init_spool_sender()

    def _init_spool_sender(self) -> None:
        """The state of the spool's sender thread (at construction, and in a forked child: no
        thread yet; one starts when first needed)."""
        self._drain_lock = threading.Lock()  # one drain at a time: the thread's or a flush's
        self._spool_wake = wake = threading.Event()
        # The thread holds the exporter weakly (one dropped without shutdown must go, and its
        # spool's lock with it); this wakes it to see that the exporter is gone.
        weakref.finalize(self, wake.set)
        self._spool_thread_lock = threading.Lock()
        self._spool_thread = None
        sender = self._sender
        if isinstance(sender, HttpSender):
            self._spool_sender = sender.clone()
        else:  # (gRPC: same settings, a channel of its own, opened when first used)
            clone = copy.copy(sender)
            clone.reset()
            self._spool_sender = clone

    def _send_once(
        self,
        payload: bytes,
        deadline: float | None = None,
        spooled: bool = False,
        sender: HttpSender | GrpcSender | None = None,
        splittable: bool = False,
    ) -> HttpResult:
        # (one attempt: with a spool, retries come from the spool, spaced store-wide)
        if sender is None:
            sender = self._sender
        policy = sender.retry
        result = sender.send(
            payload,
            RetryPolicy(max_attempts=1, retry_statuses=policy.retry_statuses),
            spooled=spooled,
            deadline=deadline,
            splittable=splittable,
        )
        self._note_attempt(result)
        return result

    #: Consecutive failed attempts with a spool, and when (``time.monotonic()``) the spool's
    #: sender thread may try the endpoint again.
    _failures = 0
    _retry_at = 0.0

    def _note_attempt(self, result: HttpResult) -> None:
        """Update the store-wide backoff after an attempt: one failing request per backoff
        interval during an outage, not one (let alone a retry schedule) per new batch."""
        if result.ok or result.rejected:  # (a refusal is an answer: the endpoint is up)
            self._failures = 0
            self._retry_at = 0.0
        elif not self._closed:
            self._failures += 1
            self._retry_at = time.monotonic() + self._sender.retry.backoff(self._failures)
            # (whoever tried, the export worker or a drain: new batches go to the spool now,
            # and the spool's sender thread retries them)
            self._spooling = True

    def _deliver(self, payload: bytes, items: int, sender: HttpSender | None = None) -> HttpResult | None:
        """Send ``payload`` (``items`` spans or points). With a spool, it is tried once and a
        payload that could not be delivered (and was not refused) is kept on disk: None. From
        then on new payloads are kept without a try, behind it, and the spool's sender thread
        retries them (store-wide backoff: :meth:`_note_attempt`), oldest first; once it
        emptied the spool, payloads are sent here again. Kept files found after a delivery
        succeeded (a previous run's) are sent by that thread too.

        After :meth:`shutdown` nothing is sent: the payload is kept (with a spool) or given up.
        While a delivery is in progress :meth:`shutdown` may take it over (``_Flight``).
        ``sender``: one of ``_lane_senders`` (a sending thread's own connection) instead of
        ``_sender``."""
        spool = self._spool
        if (
            spool is not None
            and self._spooling
            and not self._closed
            and len(payload) <= spool.max_bytes  # (one too large is tried and given up, as before)
            and spool.put(payload, items)
        ):
            # The endpoint failed and kept files wait: keep this one behind them without a
            # request, so the export worker goes on taking batches (a hung endpoint would hold
            # it timeout_s per try while its queue overflows); the sender thread retries.
            self._wake_spool_sender()
            return None
        with _flight_lock:
            closed = self._closed
            flight = None if closed else _Flight(payload, items)
            if flight is not None:
                self._flights = (*self._flights, flight)
        if flight is None:
            if spool is not None and spool.put(payload, items):
                return None
            return HttpResult(False, error="the exporter was shut down")
        try:
            # With a spool, one attempt: what fails goes to the spool at once (retried from
            # there) rather than through the retry schedule on the export worker, which would
            # hold it (5 attempts x timeout_s against a hung endpoint) while its queue overflows.
            # (several items: a 413 is split by _delivered, not counted as a rejection)
            split = items > 1
            via = self._sender if sender is None else sender
            result = (
                via.send(payload, splittable=split)
                if spool is None
                else self._send_once(payload, spooled=True, sender=via, splittable=split)
            )
            with _flight_lock:
                if flight.state == _Flight.CLAIMED:
                    return None  # shutdown kept it in the spool (its request was cut off)
                flight.state = _Flight.SETTLING
            if result.ok:
                if spool is not None and len(spool) and not self._closed:
                    self._wake_spool_sender()  # (it sends what is kept, off this thread)
                return result
            if spool is None or result.rejected or not spool.put(payload, items):
                return result
            self._wake_spool_sender()  # (it retries the kept one once the backoff ran out)
            return None
        finally:
            with _flight_lock:
                self._flights = tuple(f for f in self._flights if f is not flight)
            flight.settled.set()

    def _exporter_name(self) -> str:
        """The name the export worker counts this exporter under (``exported.<name>``)."""
        name = getattr(self, "name", None)
        return name if isinstance(name, str) and name else type(self).__name__

    def _partial_success(self, result: HttpResult, items: int) -> int:
        """How many of the ``items`` sent an OTLP collector's successful answer rejected
        (counted and logged: :func:`note_partial_success`); 0 for other exporters."""
        if self._partial is None:
            return 0
        count_key, noun = self._partial
        sender = self._sender
        return note_partial_success(
            result, counter=sender.counter, count_key=count_key, noun=noun, items=items, url=sender.url
        )

    def _drain(self, spool: PayloadSpool, deadline: float) -> None:
        """Send what ``spool`` keeps, on the spool's own connection, until one fails or
        ``deadline`` (``time.monotonic()``) passes; a send in progress gives up at the deadline
        too (a flush's timeout holds even while the endpoint hangs). One drain at a time: a
        second waits for the first (until ``deadline``), so no file is sent twice."""
        if not self._drain_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return
        try:
            spool.drain(functools.partial(self._send_spooled, deadline=deadline), deadline)
        finally:
            self._drain_lock.release()

    def _wake_spool_sender(self) -> None:
        """Wake the spool's sender thread, starting it if this process has none yet (a daemon
        with tracing suppressed; at interpreter exit, when no thread can start, the files wait
        for a flush or the next start)."""
        self._spool_wake.set()
        thread = self._spool_thread
        if thread is not None and thread.is_alive():
            return
        with self._spool_thread_lock:
            thread = self._spool_thread
            if self._closed or (thread is not None and thread.is_alive()):
                return
            thread = _suppressed_thread(
                functools.partial(_run_spool_sender, weakref.ref(self), self._spool_wake),
                f"pitchey-trace-spool-{self._exporter_name()}",
            )
            if start_thread(thread):
                self._spool_thread = thread

    def _spool_step(self) -> float | None:
        """One turn of the spool's sender thread (:func:`_run_spool_sender`): once the backoff
        of the last failed attempt ran out, send what is kept, oldest first, until an attempt
        fails; when the spool is empty, new batches go out directly on the export worker
        again. Returns how long to sleep unless woken (inf: until woken), None to stop."""
        spool = self._spool
        if spool is None or self._closed:
            return None
        self._spool_wake.clear()  # (a batch kept from here on sets it: never slept through)
        if not len(spool):
            self._spooling = False
            return 0.0 if len(spool) else math.inf  # (one kept meanwhile is sent first)
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            return wait  # (woken early by new batches, a flush or shutdown: looks again)
        try:
            self._drain(spool, time.monotonic() + _DRAIN_SLICE_S)
        except Exception as exc:  # (a bug must not end the thread, nor spin it)
            _safety.report(f"spool.{self._exporter_name()}", exc)
            return 1.0
        return 0.0

    def _send_spooled(self, payload: bytes, deadline: float | None = None) -> HttpResult:
        """Send a kept payload once (spool drains), giving up at ``deadline``. What its answer
        says was rejected (or the whole request, when refused: counted by the spool) is counted
        in ``dropped.rejected``; ``exported`` counted the payload when it was kept (as for the
        spool's other losses, ``dropped.spool_cap``)."""
        if self._closed:  # (shut down: no request starts; the file waits for the next start)
            return HttpResult(False, error="the exporter was shut down")
        result = self._send_once(payload, deadline, sender=self._spool_sender)
        if result.ok:
            rejected = self._partial_success(result, self._items_per_request)
            if rejected:
                count_rejected(self._exporter_name(), rejected)
        return result

    def _post_in_chunks(
        self,
        items: Sequence[Any],
        size: int,
        body: Callable[[Sequence[Any]], bytes],
        counter: str,
    ) -> bool | _stats.PartlyRejected:
        """POST ``items`` ``size`` at a time (``body(chunk)`` the payload), counting what was
        delivered under ``counter``; False if every chunk was given up (not kept in the spool).
        With ``_lane_senders``, several chunks at once (:meth:`_post_concurrently`).

        With a byte cap (``_max_request_bytes``), a chunk whose payload is larger goes as
        several requests (:meth:`_fit`), and an item whose payload alone is larger is dropped:
        counted in ``<sender counter>.too_large`` and warned about (at most once a minute).

        OTLP (``_partial``): what a collector's answer says it rejected is not sent again.
        When every chunk went out, those items (and items too large to send) are counted in
        ``dropped.rejected[.<name>]`` (``dropped.request_too_large[.<name>]``) and their number
        returned as a :class:`~pitchey_trace._stats.PartlyRejected`, so the export worker
        counts only the rest in ``exported[.<name>]``: ``exported.<name>`` plus those
        ``dropped`` counters is what the exporter was handed. Chunks given up while others
        went out (or were kept) are counted here in ``dropped.export_failed[.<name>]`` and
        returned in a :class:`~pitchey_trace._stats.PartlyFailed` (the next flush reports the
        loss); when none went out, False: the worker counts the whole batch as given up."""
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        lanes = self._lane_senders[: len(chunks) - 1]
        if lanes and not self._closed:
            tally = self._post_concurrently(chunks, body, counter, lanes)
        else:
            tally = _Tally()
            for chunk in chunks:
                self._post_chunk(chunk, body, counter, tally)
        failed, rejected, too_large = tally.failed, tally.rejected, tally.too_large
        if failed and not tally.handled:
            return False
        name = self._exporter_name()
        if rejected:
            count_rejected(name, rejected)
        if too_large:
            count_dropped("request_too_large", name, too_large)
        if failed:
            count_dropped("export_failed", name, failed)
            return _stats.PartlyFailed(rejected + too_large + failed)  # (the worker counts the rest)
        if rejected or too_large:
            return _stats.PartlyRejected(rejected + too_large)
        return True

    def _post_chunk(
        self,
        chunk: Sequence[Any],
        body: Callable[[Sequence[Any]], bytes],
        counter: str,
        tally: _Tally,
        sender: HttpSender | None = None,
    ) -> None:
        """Send one chunk (as several requests when over the byte cap, or refused as too
        large), on ``sender`` (default ``_sender``), adding what became of its items to
        ``tally``; delivered items are counted under ``counter``."""
        cap = self._max_request_bytes
        payload = body(chunk)
        requests: Sequence[tuple[Sequence[Any], bytes]]
        if cap is not None and len(payload) > cap:
            requests, lost = self._fit(chunk, payload, cap, body)
            tally.too_large += lost
        else:
            requests = ((chunk, payload),)
        for part, result in self._delivered(requests, body, sender):
            if result is not None and not result.ok:
                tally.failed += len(part)
                continue
            tally.handled += len(part)
            if result is None:
                continue  # kept on disk: counted once it is sent
            _stats.incr(counter, len(part))
            tally.rejected += self._partial_success(result, len(part))

    def _post_concurrently(
        self,
        chunks: Sequence[Sequence[Any]],
        body: Callable[[Sequence[Any]], bytes],
        counter: str,
        lanes: Sequence[HttpSender],
    ) -> _Tally:
        """:meth:`_post_chunk` for each of ``chunks``, up to ``1 + len(lanes)`` at once: this
        thread on ``_sender`` and a short-lived daemon thread on each lane sender, each taking
        the next chunk when done with its last (so at most that many payloads are in memory).
        Returns once all are settled (shutdown cuts their requests off, as this thread's); an
        exception in a thread is raised here, as it would have been by this thread."""
        pending = iter(chunks)
        take = threading.Lock()
        tallies: list[_Tally] = []
        errors: list[BaseException] = []

        def lane(sender: HttpSender | None) -> None:
            tally = _Tally()
            tallies.append(tally)
            try:
                while not errors:
                    with take:
                        chunk = next(pending, None)
                    if chunk is None:
                        return
                    self._post_chunk(chunk, body, counter, tally, sender)
            except BaseException as exc:  # (raised by the calling thread below)
                errors.append(exc)

        threads = []
        name = f"pitchey-trace-send-{self._exporter_name()}"
        for sender in lanes:
            thread = _suppressed_thread(functools.partial(lane, sender), name)
            if not start_thread(thread):
                break  # (at interpreter exit no thread starts: this one sends the rest)
            threads.append(thread)
        lane(None)
        for thread in threads:
            thread.join()  # (each send is bounded by timeout_s and the retry policy, and shutdown aborts it)
        if errors:
            raise errors[0]
        total = _Tally()
        for tally in tallies:
            total.add(tally)
        return total

    def _delivered(
        self,
        requests: Sequence[tuple[Sequence[Any], bytes]],
        body: Callable[[Sequence[Any]], bytes],
        sender: HttpSender | None = None,
    ) -> Iterator[tuple[Sequence[Any], HttpResult | None]]:
        """Deliver ``requests`` (items, payload) in order: each item group with the result of
        its request (None: kept in the spool). A request the endpoint refuses as too large
        (413) while it holds several items goes again as two halves, and so on: the endpoint's
        body limit may be below ``max_request_bytes`` (a proxy's ``client_max_body_size``), and
        the items themselves were not refused (counted in ``<counter>.split_too_large``)."""
        pending = list(reversed(requests))
        while pending:
            part, data = pending.pop()
            # (the sender only when a sending thread's own: _deliver's two-argument form stays)
            result = (
                self._deliver(data, len(part)) if sender is None else self._deliver(data, len(part), sender)
            )
            if result is not None and result.status == 413 and len(part) > 1:
                counter = self._sender.counter
                _stats.incr(f"{counter}.split_too_large")
                warn_limited(
                    f"{counter}.split_too_large",
                    "pitchey_trace %s: %s refused a request of %d bytes as too large (HTTP 413): "
                    "sending it as smaller requests (lower max_request_bytes to avoid this)",
                    counter,
                    self._sender.url,
                    len(data),
                )
                half = len(part) // 2
                pending.append((part[half:], body(part[half:])))
                pending.append((part[:half], body(part[:half])))
                continue
            yield part, result

    def _fit(
        self, chunk: Sequence[Any], payload: bytes, cap: int, body: Callable[[Sequence[Any]], bytes]
    ) -> tuple[list[tuple[Sequence[Any], bytes]], int]:
        """``chunk`` (whose ``payload`` is over ``cap`` bytes) as requests of at most ``cap``
        bytes each, in order, and the number of items left out: those whose payload alone is
        over the cap (counted in ``<counter>.too_large``, warned about).

        Each item's own payload is measured (``body([item])``: the request framing is counted
        once per item, so packs err on the small side) and items are packed greedily; a pack
        whose real payload is still over the cap (an encoding that is not additive) is halved
        until it fits."""
        out: list[tuple[Sequence[Any], bytes]] = []
        lost = 0
        pack: list[Any] = []
        pack_bytes = 0

        def close_pack() -> None:
            if pack:
                self._halve_into(out, list(pack), cap, body)
                pack.clear()

        for item in chunk:
            n = len(body([item]))
            if n > cap:
                lost += 1
                continue
            if pack and pack_bytes + n > cap:
                close_pack()
                pack_bytes = 0
            pack.append(item)
            pack_bytes += n
        close_pack()
        self._note_too_large(lost, cap, len(payload))
        return out, lost

    def _note_too_large(self, lost: int, cap: int, request_bytes: int) -> None:
        """Count (``<counter>.too_large``) and warn about ``lost`` items left out of a request
        of ``request_bytes`` because each alone is over ``cap`` (nothing when 0)."""
        if not lost:
            return
        counter = self._sender.counter
        _stats.incr(f"{counter}.too_large", lost)
        warn_limited(
            f"{counter}.too_large",
            "pitchey_trace %s: dropped %d item(s) whose request alone would be larger than "
            "max_request_bytes (%d) (counted in dropped.request_too_large; the request "
            "that held them was %d bytes)",
            counter,
            lost,
            cap,
            request_bytes,
        )

    @staticmethod
    def _halve_into(
        out: list[tuple[Sequence[Any], bytes]],
        items: Sequence[Any],
        cap: int,
        body: Callable[[Sequence[Any]], bytes],
    ) -> None:
        """Append ``items`` to ``out`` as one request, or, while its payload is over ``cap``,
        as the requests of its halves (a single item is kept as it is: it fit on its own)."""
        payload = body(items)
        if len(payload) <= cap or len(items) == 1:
            out.append((items, payload))
            return
        half = len(items) // 2
        SenderExporter._halve_into(out, items[:half], cap, body)
        SenderExporter._halve_into(out, items[half:], cap, body)

    def poll(self) -> None:
        """Called by the export worker when it is idle: with kept payloads (also a previous
        run's), make sure the spool's sender thread runs; it tries them once the backoff
        allows, so an idle process sends its backlog without waiting for new spans. Nothing
        is sent on the export worker."""
        spool = self._spool
        if spool is None or not len(spool) or self._closed:
            return
        self._wake_spool_sender()

    def force_flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered in memory; with a spool, send what it keeps now, without
        waiting for the backoff (after the sender thread's drain in progress, if any): True
        when it is empty after at most ``timeout`` seconds, also while the endpoint hangs."""
        spool = self._spool
        if spool is None or not len(spool):
            return True
        if self._closed:  # (shut down: the files wait for the next start)
            return False
        self._drain(spool, time.monotonic() + (30.0 if timeout is None else max(0.0, timeout)))
        if len(spool):
            return False
        if self._spooling:
            self._wake_spool_sender()  # (it sees the spool empty: batches go out directly again)
        return True

    _closed = False
    #: The deliveries in progress (the export worker's, and its sending threads'), replaced
    #: as a whole under ``_flight_lock``.
    _flights: tuple[_Flight, ...] = ()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop: no request starts from now on, and the one in progress is cut off (its socket
        shut down; a gRPC call cancelled). Within ``timeout`` (default 30 s) the exporter's
        thread settles it: with a spool, kept on disk before this returns; without, given up
        and counted by the export worker (``dropped.export_failed``). A thread that cannot
        settle it in time (stuck resolving the host name) leaves it to this one: kept in the
        spool here. The spool's sender thread is stopped (its request cut off too) and joined
        within ``timeout``; the spool's files stay for the next start. Never raises."""
        deadline = time.monotonic() + (30.0 if timeout is None else max(0.0, timeout))
        sender = self._sender
        with _flight_lock:
            self._closed = True
            flights = self._flights
        sender.stop.set()
        if isinstance(sender, HttpSender):
            sender.abort()  # (closes the connection, or leaves that to the thread using it)
        else:
            sender.close()  # (gRPC: closing the channel cancels the call in progress)
        for lane in self._lane_senders:  # (the sending threads' requests: cut off too)
            lane.abort()
        background = self._spool_sender
        if background is not None:  # (the spool's drains: their request in progress too)
            background.stop.set()
            if isinstance(background, HttpSender):
                background.abort()
            else:
                background.close()
        for flight in flights:
            flight.settled.wait(max(0.0, deadline - time.monotonic()))
            self._claim(flight)
        if self._spool is not None:
            self._spool_wake.set()
            with self._spool_thread_lock:  # (no thread starts once closed: none missed here)
                thread = self._spool_thread
            if thread is not None and thread is not threading.current_thread():
                join_thread(thread, deadline - time.monotonic())
            self._spool.close()

    def _claim(self, flight: _Flight) -> None:
        """Keep in the spool the payload of a delivery its thread did not settle in time (it
        will return None for it: nothing is counted twice). Without a spool, or when the spool
        cannot take it, the thread keeps it and counts it as given up when it returns."""
        spool = self._spool
        if spool is None:
            return
        with _flight_lock:
            if flight.state != _Flight.SENDING:
                return  # settled, or being settled by its own thread
            flight.state = _Flight.CLAIMED
        if not spool.put(flight.payload, flight.items):
            with _flight_lock:
                flight.state = _Flight.SETTLING  # (its thread gives it up and counts it)

    def after_fork(self) -> None:
        """Forget the parent's connections (and its spool files). The child has no spool
        sender thread: one starts when it has files to send."""
        self._sender.reset()
        for lane in self._lane_senders:
            lane.reset()
        self._flights = ()
        if self._spool is not None:
            self._spool.after_fork()
            self._init_spool_sender()
