"""The on-disk spool of the archive exporters: file naming, ownership and crash recovery.

One exporter instance in one process is an *owner* (``<pid>-<random>``) holding an exclusive
``flock`` on ``<owner>.lock`` for as long as it lives; the kernel releases the lock when the
process dies, however it dies. Its files::

    <owner>.lock
    <owner>.<seq>.<dataset>.<opened>.open                  the open batch, appended to
    <owner>.<seq>.<dataset>.<start>_<end>_<unique>.ready   closed: object name fixed, to upload
    <owner>.<seq>.<tag>.<start>_<end>_<unique>_<items>.ready  a PayloadSpool's request

(``opened``/``start``/``end`` are compact ISO-8601 UTC times like ``20261130T053700Z``.)
On start (and in a forked child) an exporter *adopts* the files of every owner whose lock it
can take - a dead process: ``.open`` files are closed (object name fixed from their opening
time and last modification), everything is renamed into the adopter's namespace in the
original order and queued for upload before any new batch. A ``.ready`` file keeps its object
name, so an upload that was in flight when the process died is retried under the same key
(overwritten, never duplicated). Files of datasets the adopter does not handle are left
alone. Recovered files may end with a torn line; the uploader keeps complete JSON lines only.

The directory must be this user's alone (:func:`check_private_dir`): whoever else can write it
could plant files we adopt and upload as ours, or remove ours; one who can read it reads trace
data. Adoption takes regular files owned by this user only (never through a symbolic link).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; owners are assumed dead on start
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Adopted",
    "PayloadSpool",
    "SpoolDir",
    "UnsafeSpoolDir",
    "check_private_dir",
    "compact_utc",
    "safe_dataset",
]

_DATASET_OK = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_BAD = re.compile(r"[^A-Za-z0-9_-]")
_SPOOL_FILE = re.compile(
    r"^(?P<owner>\d+-[0-9a-f]+)\.(?P<seq>\d{10})\.(?P<ds>[A-Za-z0-9_-]+)\.(?P<stamp>[0-9TZ_a-f]+)\.(?P<state>open|ready)$"
)


# The object name a closed batch's file carries (``new_key_name``); a ``.ready`` file whose
# name holds anything else (left by another tool, or damaged) gets a new one when adopted.
_KEY_NAME = re.compile(r"\d{8}T\d{6}Z_\d{8}T\d{6}Z_[0-9a-f]{16}")
# A payload spool's ``.ready`` file: its object name (unused) and the number of items (spans,
# points) in the request, so that one taken over from a dead process is counted once sent or
# dropped. Files without the count (earlier versions) are taken over too, their count unknown;
# earlier versions take these over as files with an unknown object name (a new one is made).
_KEY_NAME_ITEMS = re.compile(r"(?P<key>\d{8}T\d{6}Z_\d{8}T\d{6}Z_[0-9a-f]{16})_(?P<items>\d{1,12})")

_safe_names: dict[str, str] = {}


def safe_dataset(name: str) -> str:
    """A dataset name usable in file names and object keys (``[A-Za-z0-9_-]``)."""
    safe = _safe_names.get(name)
    if safe is None:
        safe = name if _DATASET_OK.match(name) else (_BAD.sub("_", name)[:100] or "_")
        if len(_safe_names) < 1000:  # dataset names are few; never grow without bound
            _safe_names[name] = safe
    return safe


def compact_utc(time_ns: int) -> str:
    """``20261130T053700Z`` for a Unix time in nanoseconds."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time_ns // 1_000_000_000))


def new_key_name(start_ns: int, end_ns: int) -> str:
    """``<start>_<end>_<unique>`` - the object name (without date folder and suffix)."""
    return f"{compact_utc(start_ns)}_{compact_utc(max(start_ns, end_ns))}_{secrets.token_hex(8)}"


class UnsafeSpoolDir(ConfigurationError):
    """A spool directory that another user could read or write (or a symbolic link)."""


# Where ownership and modes mean something (POSIX); elsewhere the checks are skipped.
_POSIX = hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")


def _make_parents(parent: Path) -> None:
    """Create ``parent`` and its missing ancestors 0700 (``mkdir -p`` makes them as the umask
    says: under umask 0 a missing intermediate directory was world-writable, letting another
    user rename the spool directory out of it)."""
    missing: list[Path] = []
    for p in (parent, *parent.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, 0o700)  # (the umask can only narrow it)
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)  # (raises the usual OSError: a file there...)


def check_private_dir(path: Path, *, tighten: bool = False, strict: bool = True) -> None:
    """Make sure ``path`` is a directory only this user can write: a real directory (not a
    symbolic link), owned by the effective uid, not writable by group or others, in a parent
    that nobody else can rename it out of (owned by this user or root, and not writable by
    others unless sticky, like ``/tmp``). A missing one is created 0700 (whatever the umask).
    ``tighten``: one of ours that others may write is made 0700 instead of refused (the
    default spool's per-user directory, made 0775 by older versions under umask 002: what it
    holds is checked on its own). ``strict=False`` (a directory the application chose): only
    what shows another user at work is refused (a symbolic link, an owner other than this user
    or root, writable by everyone without the sticky bit); a root-owned or group-writable one
    (a container volume: Kubernetes' ``fsGroup`` makes them 2775) and its parent are the
    deployment's choice. Raises :class:`UnsafeSpoolDir` (a ConfigurationError) saying why, or
    OSError when it cannot be created or opened."""
    parent = path.parent
    _make_parents(parent)
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    if not _POSIX:  # pragma: no cover - Windows: no uid/mode semantics to check
        return
    euid = os.geteuid()
    pst = os.stat(parent)  # (a symlinked ancestor is fine: only who may change the entry counts)
    if strict and (pst.st_uid not in (0, euid) or (pst.st_mode & 0o002 and not pst.st_mode & stat.S_ISVTX)):
        raise UnsafeSpoolDir(
            f"spool_dir {str(path)!r} is not safe: its parent directory {str(parent)!r} "
            f"(owner uid {pst.st_uid}, mode {stat.S_IMODE(pst.st_mode):04o}) lets another user "
            "replace it; use a directory inside one only you (or root) can write"
        )
    # Checked on an open descriptor, not the name: what we check is what we opened.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafeSpoolDir(f"spool_dir {str(path)!r} is not safe: it is a symbolic link") from None
        raise  # (a file, say: not usable, as before)
    try:
        st = os.fstat(fd)
        if st.st_uid == euid and (created or (tighten and st.st_mode & 0o022)):
            os.fchmod(fd, 0o700)  # (mkdir's mode is reduced by the umask, never widened)
            st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != euid and (strict or st.st_uid != 0):
        raise UnsafeSpoolDir(
            f"spool_dir {str(path)!r} is not safe: it is owned by uid {st.st_uid}, not by this "
            f"user (uid {euid}); another user created it"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (0o022 if strict else 0o002) and (strict or not mode & stat.S_ISVTX):
        raise UnsafeSpoolDir(
            f"spool_dir {str(path)!r} is not safe: mode {mode:04o} lets other users write it "
            f"(chmod 700 {str(path)!r})"
        )


@dataclass
class Adopted:
    """A spool file taken over from a dead owner, renamed into ours, ready to upload."""

    path: Path
    dataset: str
    key_name: str
    size: int
    items: int | None = None  # (payload spools: the request's item count, when recorded)


class SpoolDir:
    """This owner's view of a spool directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # (strict for the default path: logpush.default_spool_dir checked it already)
        check_private_dir(self.path, strict=False)
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock_fd: int | None = None
        self._finalizer: weakref.finalize[Any, SpoolDir] | None = None
        self._seq = 0
        self.discarded_open = 0
        self.skipped = 0
        self._lock()

    def _lock(self) -> None:
        # Lock under a temporary name, then rename: a visible lock file is always locked, so
        # nobody can mistake a starting owner for a dead one.
        tmp = self.path / f".{self.owner}.lock.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self.path / f"{self.owner}.lock")
        self._lock_fd = fd
        # An owner dropped without release() (an exporter whose shutdown timed out while its
        # thread still used the spool, then went away) must not keep its lock until the process
        # exits: its files would stay unadoptable by every later owner in this process. Once
        # the object is unreachable nothing can write through it, so its lock can go.
        finalizer = weakref.finalize(self, _drop_lock, self.path / f"{self.owner}.lock", fd, os.getpid())
        finalizer.atexit = False  # (at exit the kernel releases the lock, as before)
        self._finalizer = finalizer

    def release(self) -> None:
        """Give up ownership (remaining files become adoptable by the next start)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        self._detach_finalizer()
        _drop_lock(self.path / f"{self.owner}.lock", fd)

    def _detach_finalizer(self) -> None:
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited lock descriptor without touching the parent's
        lock (closing our copy does not release a flock the parent still holds)."""
        fd, self._lock_fd = self._lock_fd, None
        self._detach_finalizer()  # (its lock file is the parent's: never unlinked here)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def next_seq(self) -> int:
        """The next batch sequence number of this owner."""
        self._seq += 1
        return self._seq

    def open_path(self, seq: int, dataset: str, opened_ns: int) -> Path:
        """Path of an open batch file."""
        return self.path / f"{self.owner}.{seq:010d}.{dataset}.{compact_utc(opened_ns)}.open"

    def ready_path(self, seq: int, dataset: str, key_name: str, items: int | None = None) -> Path:
        """Path of a closed batch file whose object name is ``key_name`` (``items``: a payload
        spool's item count, kept in the name as ``<key_name>_<items>``)."""
        stamp = key_name if items is None else f"{key_name}_{items}"
        return self.path / f"{self.owner}.{seq:010d}.{dataset}.{stamp}.ready"

    def _owner_is_dead(self, owner: str) -> tuple[bool, int | None]:
        """Try to take a foreign owner's lock: (dead?, fd holding its lock or None)."""
        lock_path = self.path / f"{owner}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return True, None
        except OSError:
            return False, None
        if fcntl is None:  # pragma: no cover
            return True, fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False, None
        return True, fd

    def adopt_orphans(self, datasets: frozenset[str] | None, *, open_files: bool = True) -> list[Adopted]:
        """Take over the files of dead owners (only datasets in ``datasets``; all when None),
        in their original order. Returns them renamed into this owner's namespace.
        ``open_files=False``: a dead owner's ``.open`` files (writes it never finished) are
        deleted, not adopted; the number deleted is in :attr:`discarded_open`. Entries that are
        not regular files (a directory, a FIFO: reading one would fail forever or block; a
        symbolic link: it would upload whatever it points to) or are owned by another user
        (not written by us) are left alone, counted in :attr:`skipped`."""
        self.discarded_open = 0
        self.skipped = 0
        by_owner: dict[str, list[tuple[int, re.Match[str]]]] = {}
        lock_owners: list[str] = []
        for entry in os.listdir(self.path):
            if entry.endswith(".lock"):
                lock_owners.append(entry[: -len(".lock")])
                continue
            m = _SPOOL_FILE.match(entry)
            if m is None or m["owner"] == self.owner:
                continue
            by_owner.setdefault(m["owner"], []).append((int(m["seq"]), m))
        for owner in lock_owners:  # stale locks of dead owners that left no files
            if owner != self.owner and owner not in by_owner:
                dead, fd = self._owner_is_dead(owner)
                if dead:
                    try:
                        os.unlink(self.path / f"{owner}.lock")
                    except OSError:
                        pass
                if fd is not None:
                    os.close(fd)
        out: list[Adopted] = []
        for owner in sorted(by_owner):
            dead, fd = self._owner_is_dead(owner)
            if not dead:
                continue
            try:
                leftovers = False
                for _seq, m in sorted(by_owner[owner], key=lambda t: t[0]):
                    ds = m["ds"]
                    if datasets is not None and ds not in datasets:
                        leftovers = True
                        continue
                    src = self.path / m.string
                    try:
                        st = os.lstat(src)
                    except FileNotFoundError:  # another process adopted it first
                        continue
                    if not stat.S_ISREG(st.st_mode) or (_POSIX and st.st_uid != os.geteuid()):
                        self.skipped += 1
                        continue
                    if m["state"] == "open" and not open_files:
                        with contextlib.suppress(OSError):
                            src.unlink()
                            self.discarded_open += 1
                        continue
                    items: int | None = None
                    counted = _KEY_NAME_ITEMS.fullmatch(m["stamp"]) if m["state"] == "ready" else None
                    if counted is not None:
                        key_name, items = counted["key"], int(counted["items"])
                    elif m["state"] == "ready" and _KEY_NAME.fullmatch(m["stamp"]):
                        key_name = m["stamp"]
                    elif m["state"] == "ready":  # (its time range unknown: up to its last write)
                        key_name = new_key_name(st.st_mtime_ns, st.st_mtime_ns)
                    else:
                        opened = _parse_compact(m["stamp"])
                        key_name = new_key_name(opened, max(opened, st.st_mtime_ns))
                    dst = self.ready_path(self.next_seq(), ds, key_name, items)
                    try:
                        os.rename(src, dst)
                    except FileNotFoundError:
                        continue
                    out.append(Adopted(dst, ds, key_name, st.st_size, items))
                if not leftovers:
                    try:
                        os.unlink(self.path / f"{owner}.lock")
                    except OSError:
                        pass
            finally:
                if fd is not None:
                    os.close(fd)
        return out


def _drop_lock(lock_path: Path, fd: int, pid: int | None = None) -> None:
    """Unlink an owner's lock file, then close its descriptor (which releases the flock).
    Never raises (also runs from a finalizer). ``pid``: only in that process (a forked child
    must never unlink the lock file of its parent, which still owns it, nor close a number its
    own code may have closed and reused)."""
    if pid is not None and pid != os.getpid():
        return
    with contextlib.suppress(OSError):
        os.unlink(lock_path)
    with contextlib.suppress(OSError):
        os.close(fd)


def _warn_limited(kind: str, message: str, *args: object) -> None:
    """``_http.warn_limited`` (at most once a minute per kind; imported here, as ``_http``
    imports this module)."""
    from pitchey_trace.exporters._http import warn_limited

    warn_limited(kind, message, *args)


def _parse_compact(stamp: str) -> int:
    try:
        t = time.strptime(stamp, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return time.time_ns()
    import calendar

    return calendar.timegm(t) * 1_000_000_000


class PayloadSpool:
    """Request payloads an HTTP or gRPC exporter could not deliver, kept on disk until they are.

    Each payload is one file in a directory of the exporter's own (``SpoolDir``'s ownership and
    crash recovery: written as ``.open``, fsynced, renamed ``.ready``), sent again oldest first
    once the endpoint answers. At most ``max_bytes`` are kept: beyond, the oldest files go
    (counted in ``dropped.spool_cap`` and ``<counter>.spool_dropped``). A payload larger than
    ``max_bytes`` on its own is not kept at all (:meth:`put` returns False, counted in
    ``<counter>.spool_oversize``, warned about at most once a minute): keeping it would push
    every kept payload out and still break the cap. Files left by a process that died are
    taken over at construction and sent like the others. A file's name ends with the number of
    items (spans, points) of its request (``<owner>.<seq>.<tag>.<key>_<items>.ready``), so
    those of a dead process's files are counted too: in ``items_counter`` once sent, in
    ``dropped.spool_cap`` when the cap deletes them, through ``rejected`` when the endpoint
    refuses them. (Files of earlier versions, without the count, are sent uncounted.)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tag: str,
        counter: str,
        items_counter: str,
        max_bytes: int,
        rejected: Callable[[int], None] | None = None,
    ) -> None:
        self.tag = safe_dataset(tag)
        self.counter = counter
        self.items_counter = items_counter
        self.max_bytes = max_bytes
        self._rejected = rejected  # counts the items of a kept request the endpoint refused
        self._open(path)

    def _open(self, path: str | os.PathLike[str]) -> None:
        """Own a place in the directory and take over the files of processes that died."""
        self._lock = threading.Lock()
        self._sending: Path | None = None  # the file a drain is sending (see _trim)
        self.dir = SpoolDir(path)
        # (path, size, items): items are read from the name of a file taken over from a dead
        # process (0: unknown, a file of an earlier version, not counted). A payload still
        # ``.open`` was never completely written (the process died during ``put``): sending a
        # truncated request would only be refused, so it is deleted.
        self._files: deque[tuple[Path, int, int]] = deque(
            (a.path, a.size, a.items or 0)
            for a in self.dir.adopt_orphans(frozenset({self.tag}), open_files=False)
        )
        if self.dir.discarded_open:
            _stats.incr(f"{self.counter}.spool_invalid", self.dir.discarded_open)
        if self.dir.skipped:  # (not regular files of ours: never sent)
            _stats.incr(f"{self.counter}.spool_skipped", self.dir.skipped)
        self.bytes = sum(size for _, size, _ in self._files)
        if self._files:
            _stats.incr(f"{self.counter}.spool_recovered", len(self._files))
        with self._lock:
            self._trim()

    def _trim(self) -> None:
        """Delete the oldest files until at most ``max_bytes`` are kept (lock held). (:meth:`put`
        never keeps a payload larger than the cap; a file taken over from a dead process may be,
        when the cap is now smaller: it goes too.) The file a drain is sending is passed over:
        dropping it would count it in ``dropped.spool_cap`` while it is being delivered; the
        drain trims again once it is done with it."""
        while self.bytes > self.max_bytes and self._files:
            if self._files[0][0] != self._sending:
                path, size, lost = self._files.popleft()
            elif len(self._files) > 1:
                path, size, lost = self._files[1]
                del self._files[1]
            else:
                return  # (only the one being sent: at most one payload over the cap, briefly)
            self.bytes -= size
            with contextlib.suppress(OSError):
                path.unlink()
            _stats.incr("dropped.spool_cap", lost)
            _stats.incr(f"{self.counter}.spool_dropped")

    def __len__(self) -> int:
        return len(self._files)

    def put(self, payload: bytes, items: int) -> bool:
        """Keep ``payload`` (``items`` spans or points in it); False when it cannot be written,
        or is larger than ``max_bytes`` on its own (then nothing kept is deleted for it)."""
        if len(payload) > self.max_bytes:
            _stats.incr(f"{self.counter}.spool_oversize")
            _warn_limited(
                f"{self.counter}.spool_oversize",
                "pitchey_trace %s: a request of %d bytes is larger than the whole spool "
                "(spool_max_bytes=%d): not kept, given up as without a spool",
                self.counter,
                len(payload),
                self.max_bytes,
            )
            return False
        now = time.time_ns()
        with self._lock:
            seq = self.dir.next_seq()
            opened = self.dir.open_path(seq, self.tag, now)
            # (the item count in the name: counted once sent, also by the next process)
            ready = self.dir.ready_path(seq, self.tag, new_key_name(now, now), max(0, items))
            try:
                # (0600: the payload holds trace data; only this user may read it)
                fd = os.open(opened, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.rename(opened, ready)
            except OSError:
                with contextlib.suppress(OSError):
                    opened.unlink()
                _stats.incr(f"{self.counter}.spool_error")
                return False
            self._files.append((ready, len(payload), items))
            self.bytes += len(payload)
            _stats.incr(f"{self.counter}.spooled")
            self._trim()
        return True

    def drain(self, send: Callable[[bytes], Any], deadline: float) -> None:
        """Send the kept payloads oldest first (``send`` returns an ``HttpResult``) until one
        cannot be delivered, or ``deadline`` (``time.monotonic()``) passes."""
        while time.monotonic() < deadline:
            with self._lock:
                if not self._files:
                    return
                path, size, items = self._files[0]
                self._sending = path  # (a put's _trim leaves it alone meanwhile)
            done = False  # (still unreachable, or send raised: kept for later)
            try:
                try:
                    payload = path.read_bytes()
                except OSError:  # gone (another owner's cleanup) or unreadable: nothing to send
                    payload = None
                if payload is None:
                    done = True
                else:
                    result = send(payload)
                    done = result.ok or result.rejected
                    if result.ok:
                        _stats.incr(f"{self.counter}.spool_sent")
                        if items:
                            _stats.incr(self.items_counter, items)
                    elif result.rejected and items and self._rejected is not None:
                        self._rejected(items)  # (not sent again: its items are dropped)
            finally:
                with self._lock:
                    self._sending = None
                    if done and self._files and self._files[0][0] == path:
                        self._files.popleft()
                        self.bytes -= size
                    self._trim()  # (what it passed over while this one was sent)
            if not done:
                return
            with contextlib.suppress(OSError):
                path.unlink()

    def after_fork(self) -> None:
        """In a forked child: the files stay the parent's; the child keeps its own from now,
        and takes over those of processes that died (a pre-fork server's recycled workers)."""
        self.dir.forget_after_fork()
        self._open(self.dir.path)

    def close(self) -> None:
        """Give the directory up: what is left is sent by the next exporter that opens it."""
        self.dir.release()
