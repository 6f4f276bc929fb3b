"""A throwaway PostgreSQL server for tests, started from the installed server binaries.

    from tests.support.pgserver import postgres_server, scratch_schema

    with postgres_server() as server:          # PITCHEY_TEST_PG_DSN, or a fresh local server
        with scratch_schema(server.dsn) as dsn:  # a private schema, dropped afterwards
            psycopg.connect(dsn)

* Binaries: ``PITCHEY_TEST_PG_BIN``, else ``initdb``/``pg_ctl`` on ``PATH``, else
  ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``.
* Each :class:`LocalPostgres` owns a fresh temporary directory (data dir, unix socket dir, log),
  listens on ``127.0.0.1`` at a free port (retried if another process takes the port first) and
  on its own socket, runs with ``fsync=off`` and trusts local connections as ``postgres``.
  Every process gets its own server, so pytest-xdist workers never share one.
* PostgreSQL refuses to run as root: as root, every server command runs as the ``postgres`` OS
  user (``runuser -u postgres --``) and the temporary directory is handed to that user.
* A small watchdog process stops the server and deletes its directory if the process that
  started it dies without calling :meth:`LocalPostgres.stop` (a killed test run leaves nothing).
* ``PITCHEY_TEST_PG_DSN`` set: :func:`postgres_server` uses that server instead and starts
  nothing (``dsn_unix`` is then None).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_DSN",
    "LocalPostgres",
    "PgServer",
    "PostgresUnavailable",
    "find_bin_dir",
    "postgres_server",
    "scratch_schema",
    "server_from_env",
]

ENV_DSN = "PITCHEY_TEST_PG_DSN"
ENV_BIN = "PITCHEY_TEST_PG_BIN"
OS_USER = "postgres"  # the unprivileged account servers run under when we are root
DB_USER = "postgres"  # the superuser initdb creates

#: Server settings for tests: fast (no durability) and small.
DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "60",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start."""


@dataclass(frozen=True)
class PgServer:
    """Where a running server can be reached."""

    dsn: str
    """libpq connection string over TCP (always set)."""
    dsn_unix: str | None
    """Connection string over the unix socket (None for an external server)."""
    host: str
    port: int
    socket_dir: str | None
    external: bool


def find_bin_dir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    env = os.environ.get(ENV_BIN)
    if env:
        candidates.append(Path(env))
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            # Resolve the Debian-style symlink so pg_ctl finds its sibling ``postgres``.
            candidates.append(Path(found).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))

    def version_key(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
        candidates.append(Path(found))
    for cand in candidates:
        if all((cand / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return cand
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, via pg_config "
        "or in /usr/lib/postgresql/*/bin; install the Debian 'postgresql' package "
        f"(scripts/bootstrap.sh does) or set {ENV_DSN}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# The watchdog: a separate interpreter that waits for the owner process to die, then stops
# the server immediately and removes its directory. Killed by stop() when shutdown is orderly.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
owner, pid_file, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        break
    except PermissionError:
        pass
    time.sleep(0.5)
try:
    with open(pid_file) as f:
        pid = int(f.readline())
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the data is throwaway
    for _ in range(100):
        os.kill(pid, 0)
        time.sleep(0.1)
except (OSError, ValueError):
    pass
shutil.rmtree(base, ignore_errors=True)
"""


class LocalPostgres:
    """One throwaway server: ``start()`` it (or use it as a context manager), ``stop()`` it.

    ``settings`` are extra ``-c name=value`` server settings on top of :data:`DEFAULT_SETTINGS`.
    """

    def __init__(self, *, settings: Mapping[str, str] | None = None, bin_dir: Path | None = None) -> None:
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.bin_dir = bin_dir
        self.base: Path | None = None
        self.server: PgServer | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()

    # -- paths -------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None
        return self.base / "sock"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "server.log"

    def _cmd(self, args: list[str]) -> list[str]:
        if _as_root():
            return ["runuser", "-u", OS_USER, "--", *args]
        return args

    def _give_to_server_user(self, path: Path) -> None:
        if _as_root():
            import pwd

            pw = pwd.getpwnam(OS_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, args: list[str], what: str) -> None:
        out = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""
            raise PostgresUnavailable(
                f"{what} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}\n{log}"
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PgServer:
        """initdb into a fresh temporary directory and start the server; returns where it is."""
        if self.server is not None:
            return self.server
        bin_dir = self.bin_dir or find_bin_dir()
        # /tmp is traversable by the server user; pytest's tmp_path (0700, root) would not be.
        self.base = Path(tempfile.mkdtemp(prefix="pitchey-pg-"))
        try:
            for path in (self.base, self.data_dir, self.socket_dir):
                path.mkdir(mode=0o700, exist_ok=True)
                self._give_to_server_user(path)
            self.log_file.touch()
            self._give_to_server_user(self.log_file)
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    DB_USER,
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                "initdb",
            )
            self.server = self._start_on_free_port(bin_dir)
            self._start_watchdog()
        except BaseException:
            self._remove_dir()
            raise
        return self.server

    def _start_on_free_port(self, bin_dir: Path) -> PgServer:
        last: Exception | None = None
        for _ in range(8):
            port = _free_port()
            opts = [f"-p {port}", f"-k {self.socket_dir}", "-c listen_addresses=127.0.0.1"]
            opts += [f"-c {key}={value}" for key, value in self.settings.items()]
            try:
                self._run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-o",
                        " ".join(opts),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "pg_ctl start",
                )
            except PostgresUnavailable as exc:
                # Someone took the port between our probe and the server's bind: try another.
                if "could not bind" in str(exc) or "already in use" in str(exc):
                    last = exc
                    continue
                raise
            return PgServer(
                dsn=f"host=127.0.0.1 port={port} user={DB_USER} dbname=postgres",
                dsn_unix=f"host={self.socket_dir} port={port} user={DB_USER} dbname=postgres",
                host="127.0.0.1",
                port=port,
                socket_dir=str(self.socket_dir),
                external=False,
            )
        raise PostgresUnavailable(f"no free port for PostgreSQL after 8 attempts: {last}")

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(os.getpid()),
                str(self.data_dir / "postmaster.pid"),
                str(self.base),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives a Ctrl-C sent to the test run's process group
        )

    def postmaster_pid(self) -> int | None:
        """The server's process id while it runs."""
        if self.base is None:
            return None
        try:
            with open(self.data_dir / "postmaster.pid") as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not stop its parent's server
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back clients, exit
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        self.server = None
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_from_env() -> PgServer | None:
    """The server named by ``PITCHEY_TEST_PG_DSN``, or None when the variable is unset."""
    dsn = os.environ.get(ENV_DSN, "").strip()
    if not dsn:
        return None
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return PgServer(
        dsn=dsn,
        dsn_unix=None,
        host=str(params.get("host") or "localhost"),
        port=int(params.get("port") or 5432),
        socket_dir=None,
        external=True,
    )


@contextlib.contextmanager
def postgres_server(settings: Mapping[str, str] | None = None) -> Iterator[PgServer]:
    """The server from ``PITCHEY_TEST_PG_DSN``, or a throwaway local one stopped on exit."""
    external = server_from_env()
    if external is not None:
        yield external
        return
    with LocalPostgres(settings=settings) as server:
        yield server


@contextlib.contextmanager
def scratch_schema(dsn: str) -> Iterator[str]:
    """Create a uniquely named schema, yield a DSN whose ``search_path`` is that schema, and
    drop the schema (with everything in it) afterwards. Lets tests share one server, including
    an external one, and still use natural table names."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, options=f"-c search_path={name}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def asyncpg_args(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect(**asyncpg_args(dsn))`` for a libpq DSN of these helpers (asyncpg takes
    URLs, not key=value strings); ``-c name=value`` options become ``server_settings``."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    args: dict[str, Any] = {
        "host": params.get("host") or "localhost",
        "port": int(params.get("port") or 5432),
        "user": params.get("user"),
        "database": params.get("dbname"),
    }
    if params.get("password"):
        args["password"] = params["password"]
    settings = {}
    for option in str(params.get("options") or "").split("-c"):
        name, sep, value = option.strip().partition("=")
        if sep:
            settings[name.strip()] = value.strip()
    if settings:
        args["server_settings"] = settings
    return args


if __name__ == "__main__":  # manual use: start a server and keep it until Enter
    with postgres_server() as srv:
        print(srv.dsn)
        print(srv.dsn_unix)
        input("server running; press Enter to stop ")
