"""A throwaway RabbitMQ node for the tests, started from the installed Debian package
(``rabbitmq-server``, installed by scripts/bootstrap.sh) on free ports of 127.0.0.1.

    with rabbitmq_server() as port: ...     # AMQP on 127.0.0.1:port, user guest / guest

or, in a test module, the fixtures ``amqp_port = rabbitmq.amqp_port`` (one node for the
module) and ``channel = rabbitmq.channel`` (a pika channel on it).

Everything the node writes (database, logs, config, the Erlang cookie in $HOME) lives in a
temporary directory, and the node gets its own name and its own epmd port, so several nodes
(parallel test runs) never meet. On exit the node is stopped with SIGTERM (the start script
turns it into a clean shutdown), killed if it lingers, and its epmd is told to quit. Readiness
is checked with a raw AMQP handshake, not pika, so an instrumented pika never traces it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# rabbitmq-server in /usr/sbin switches to the rabbitmq user; this one runs as whoever calls it.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts_amqp(port: int) -> bool:
    """True once the broker answers the AMQP 0-9-1 protocol header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            reply = s.recv(7)
            # a method frame (type 1) on channel 0
            return len(reply) == 7 and reply[0] == 1 and reply[1:3] == b"\x00\x00"
    except OSError:
        return False


def _epmd_binary() -> str | None:
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return str(candidate)
    return None


#: Start attempts: a port picked free can be taken by another process (a server of a parallel
#: test worker) before the broker binds it; the broker then exits with a listen error.
START_ATTEMPTS = 3


@contextmanager
def rabbitmq_server() -> Iterator[int]:
    """Yield the AMQP port of a running RabbitMQ node (default vhost ``/``, ``guest``)."""
    if not SERVER.exists():
        raise RuntimeError(
            "rabbitmq-server is missing: scripts/bootstrap.sh installs it (Debian package rabbitmq-server)"
        )
    for attempt in range(1, START_ATTEMPTS + 1):
        port, dist_port, epmd_port = _free_port(), _free_port(), _free_port()
        with tempfile.TemporaryDirectory(prefix="pitchey-rabbitmq-") as tmp:
            base = Path(tmp)
            env = _configure(base, port, dist_port, epmd_port)
            output = open(base / "startup.log", "wb")  # noqa: SIM115  (closed in the finally below)
            proc = subprocess.Popen(
                [str(SERVER)],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: nothing of it outlives the stop
            )
            try:
                deadline = time.monotonic() + START_TIMEOUT_S
                while not _accepts_amqp(port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = (base / "startup.log").read_text(errors="replace")[-3000:]
                        if attempt < START_ATTEMPTS and ("listen_error" in log or "eaddrinuse" in log):
                            break  # a port was taken meanwhile: again, on other ports
                        raise RuntimeError(f"rabbitmq-server did not start:\n{log}")
                    time.sleep(0.1)
                else:
                    yield port
                    return
            finally:
                _stop(proc, env)
                output.close()


def _configure(base: Path, port: int, dist_port: int, epmd_port: int) -> dict[str, str]:
    """Write the node's configuration files under ``base``; its environment."""
    tmp = str(base)
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = 127.0.0.1:{port}\n"
        "loopback_users = none\n"
        "log.console = false\n"
        "log.file.level = warning\n"
    )
    (base / "enabled_plugins").write_text("[].\n")  # no management plugin: a faster start
    (base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
    return {
        **os.environ,
        "HOME": tmp,  # the Erlang cookie
        "RABBITMQ_NODENAME": f"pitchey-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        # its own epmd, on a port of its own, that it can stop without touching anyone else's
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }


def _stop(proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    proc.terminate()  # the start script stops the node cleanly on SIGTERM
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (beam, its helpers)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)
    epmd = _epmd_binary()
    if epmd is not None:  # epmd daemonizes out of the group: ask it (ours alone) to quit
        subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=10, check=False)


@pytest.fixture(scope="module")
def amqp_port() -> Iterator[int]:
    """A fixture: the AMQP port of a node for the test module (it takes a few seconds to start)."""
    with rabbitmq_server() as port:
        yield port


@pytest.fixture
def channel(amqp_port: int) -> Iterator[Any]:
    """A fixture: a pika ``BlockingChannel`` on the module's node, its connection closed after."""
    import pika  # (here: the readiness check above never uses pika)

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_port))
    yield connection.channel()
    if connection.is_open:
        connection.close()
