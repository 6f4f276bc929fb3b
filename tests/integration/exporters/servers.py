"""Real network helpers for the exporter tests, all on 127.0.0.1 with free ports:

* :class:`RecordingServer` - an HTTP server that records every request and answers from a
  script: a status (e.g. 500, 429 with ``Retry-After``) or a hang until released;
* :class:`FaultProxy` - a TCP proxy in front of the S3 server that can go down (connections
  reset) or answer ``503 Slow Down``, to simulate a storage outage without losing its state;
* :func:`start_moto` - moto's S3 server (server mode, real HTTP) in a thread;
* :class:`GrpcCollector` - a grpcio server answering one OTLP export method, recording what
  it received.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer: ``status``/``headers``/``body``, or ``hang`` seconds (bounded) first;
    ``drop``: read the request, then close the connection without answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    hang: float = 0.0
    drop: bool = False


class RecordingServer:
    """Threaded HTTP server recording requests; answers ``script`` replies in order, then 200.
    With ``idle_timeout_s`` it closes a keep-alive connection idle that long, as collectors and
    load balancers do."""

    def __init__(
        self,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.tls = tls  # (certificate file, key file): serve https
        self.release = threading.Event()  # ends every hang early
        self.in_flight = 0
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout_s

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                with outer._cond:
                    reply = outer.script.popleft() if outer.script else Reply()
                    outer.in_flight += 1
                    outer.requests.append(
                        Recorded("POST", self.path, dict(self.headers.items()), raw, body, time.monotonic())
                    )
                    outer._cond.notify_all()
                try:
                    if reply.drop:
                        self.close_connection = True
                        return
                    if reply.hang:
                        outer.release.wait(reply.hang)
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a test of timeouts): nothing to answer
                finally:
                    with outer._cond:
                        outer.in_flight -= 1
                        outer._cond.notify_all()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            if client_ca is not None:  # mutual TLS: a client without a certificate it trusts is refused
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if not isinstance(host, str):  # (typed str | bytes; an AF_INET server's is a str)
            host = bytes(host).decode()
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def reply(self, *replies: Reply) -> None:
        """Queue replies for the next requests."""
        with self._cond:
            self.script.extend(replies)

    def wait_requests(self, n: int, timeout: float = 20.0) -> bool:
        """Wait until ``n`` requests arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def self_signed_certificate(folder: Path, key_password: bytes | None = None) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, signed by itself: ``(cert file, key file)``.
    Trusting the certificate file as a CA makes TLS to a test server on 127.0.0.1 verify.
    With ``key_password`` the key file is encrypted with it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pitchey-trace test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(key_password)
            if key_password
            else serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


class FaultProxy:
    """TCP proxy to ``target``; ``mode`` is "up", "down" (reset every connection) or "503"."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "up"
        self.refused = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def set_mode(self, mode: str) -> None:
        """Switch mode; going down also cuts every open connection."""
        assert mode in ("up", "down", "503")
        with self._lock:
            self.mode = mode
            conns = list(self._conns) if mode != "up" else []
        for c in conns:
            self._kill(c)

    def _kill(self, c: socket.socket) -> None:
        try:
            c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            mode = self.mode
            if mode == "down":
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: the client sees "connection reset"
                continue
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        if mode == "503":
            self.refused += 1
            try:
                client.settimeout(5)
                client.recv(65536)
                body = (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                    b"<Message>Please reduce your request rate.</Message></Error>"
                )
                client.sendall(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self._kill(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            self._kill(client)
            return
        with self._lock:
            self._conns.update((client, upstream))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._conns.discard(src)
                    self._conns.discard(dst)
                self._kill(src)
                self._kill(dst)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.set_mode("down")


def start_moto() -> tuple[Any, str]:
    """moto's S3 server on 127.0.0.1 (free port) in a thread: (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


#: Credentials for moto (any value works); no real AWS config or instance metadata is read.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/pitchey-trace-tests",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/pitchey-trace-tests",
}


class S3:
    """A boto3 client straight to moto plus helpers to read what the exporters wrote."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def new_bucket(self) -> str:
        name = f"pt-{secrets.token_hex(6)}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def records(self, bucket: str, key: str) -> list[dict[str, Any]]:
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in gzip.decompress(body).splitlines()]

    def all_records(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        return [r for k in self.keys(bucket, prefix) for r in self.records(bucket, k)]


class GrpcCollector:
    """A grpcio server answering the unary ``method`` (``/package.Service/Export``), recording
    each request's size and the request decoded as ``message``; ``options`` go to
    ``grpc.server`` (e.g. a small ``grpc.max_receive_message_length``). Stop it with
    ``server.stop(None)``."""

    def __init__(self, method: str, message: Any, options: list[tuple[str, Any]] | None = None) -> None:
        from concurrent import futures

        import grpc

        self.requests: list[Any] = []
        self.sizes: list[int] = []
        self.message = message
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        service, name = method.strip("/").split("/")
        handler = grpc.method_handlers_generic_handler(
            service, {name: grpc.unary_unary_rpc_method_handler(self.export)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def export(self, request: bytes, context: Any) -> bytes:
        self.sizes.append(len(request))
        self.requests.append(self.message.FromString(request))
        return b""


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers (a hung collector or
    storage); every connection is closed on exit."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        srv.close()
        for conn in held:
            conn.close()


def wait_until(cond: Any, timeout: float = 20.0) -> bool:
    """Whether ``cond()`` became true within ``timeout`` seconds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def numbered_span(seq: int) -> dict[str, Any]:
    """A minimal span record named ``op<seq>``."""
    return {"schema": 1, "type": "span", "service": "s20", "name": f"op{seq}", "status": "ok"}
