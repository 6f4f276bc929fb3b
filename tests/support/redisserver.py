"""Throwaway redis-servers for the tests: started from the installed binary (Debian package
``redis-server``) on a free port of 127.0.0.1, no persistence, stopped afterwards.

    with redis_server() as port: ...            # a plain server
    with redis_cluster_server() as port: ...    # a one-node cluster that owns every slot

or, in a test module, the fixture ``redis_port = redisserver.redis_port`` (a plain server for
the module).

The helpers talk to the servers over raw sockets, not redis-py, so an instrumented client never
traces them."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CLUSTER_SLOTS = 16384


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is missing: scripts/bootstrap.sh installs it (Debian package redis-server)"
        )
    return binary


def _command(port: int, *args: str) -> bytes:
    """Send one command (RESP array) and return the raw reply (small replies only)."""
    packed = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(packed)
        reply = s.recv(65536)
        # A bulk string ($<length>) may arrive in pieces: read until it is complete.
        if reply.startswith(b"$") and b"\r\n" in reply:
            header, _, body = reply.partition(b"\r\n")
            while len(body) < int(header[1:]) + 2:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            reply = header + b"\r\n" + body
        return reply


#: Start attempts: a port picked free can be taken by another process (a server of a parallel
#: test worker) before redis-server binds it; it then exits.
START_ATTEMPTS = 3


class _Exited(RuntimeError):
    """redis-server exited before it was ready (its port was taken, say)."""


def _wait(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise _Exited(f"redis-server exited before it could {what}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not {what}")
        time.sleep(0.05)


def _ours(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether the server answering on ``port`` is ``proc`` (not another test's on that port)."""
    return f"process_id:{proc.pid}\r\n".encode() in _command(port, "INFO", "server")


@contextmanager
def _running(args: list[str], cwd: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _base_args(port: int) -> list[str]:
    return [_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


@contextmanager
def _started(args_for: Callable[[int], list[str]], cwd: str | None = None) -> Iterator[tuple[int, Any]]:
    """A redis-server on a free port (``args_for(port)``: its command line) that answers as
    itself; (port, process). Started again on another port when it exits first."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        with _running(args_for(port), cwd=cwd) as proc:
            try:
                _wait(proc, functools.partial(_ours, port, proc), "start")
            except _Exited:
                if attempt < START_ATTEMPTS:
                    continue
                raise
            yield port, proc
            return


@contextmanager
def redis_server() -> Iterator[int]:
    """Yield the port of a running redis-server."""
    with _started(_base_args) as (port, _):
        yield port


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """A fixture: the port of a plain redis-server for the test module."""
    with redis_server() as port:
        yield port


@contextmanager
def redis_cluster_server() -> Iterator[int]:
    """Yield the port of a one-node redis cluster (``--cluster-enabled yes``) whose node owns
    all 16384 slots, once ``CLUSTER INFO`` reports ``cluster_state:ok``. Its state file
    (nodes.conf) lives in a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pitchey-redis-cluster-") as workdir:

        def args_for(port: int) -> list[str]:
            Path(workdir, "nodes.conf").unlink(missing_ok=True)  # (an earlier attempt's)
            # The cluster bus defaults to port + 10000, which may be taken or above 65535: pick
            # it too.
            return [
                *_base_args(port),
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"{workdir}/nodes.conf",
                "--cluster-port", str(_free_port()),
                "--dir", workdir,
            ]  # fmt: skip

        with _started(args_for, cwd=workdir) as (port, proc):
            reply = _command(port, "CLUSTER", "ADDSLOTSRANGE", "0", str(CLUSTER_SLOTS - 1))
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"CLUSTER ADDSLOTSRANGE failed: {reply!r}")
            formed = functools.partial(_cluster_ok, port)
            _wait(proc, formed, "form a cluster")
            yield port


def _cluster_ok(port: int) -> bool:
    return b"cluster_state:ok" in _command(port, "CLUSTER", "INFO")
