"""Session 18: the analysis server's DNS-rebinding check (``allowed_hosts`` / ``serve
--allow-host``): a request whose ``Host`` is a name nobody allowed gets a 403."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from pitchey_trace.analysis import Archive
from pitchey_trace.analysis.api import create_app
from pitchey_trace.cli import build_parser


def _get(app: Any, host: str | None, path: str = "/api/overview") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            request = client.build_request("GET", path)
            if host is None:
                del request.headers["host"]
            else:
                request.headers["host"] = host
            return await client.send(request)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8080", 200),
        ("[::1]:8080", 200),
        ("localhost:8080", 200),
        ("LOCALHOST", 200),
        ("app.localhost", 200),
        ("10.1.2.3", 200),
        ("traces.internal:8080", 200),  # allowed by name
        ("Traces.Internal.", 403),  # (a trailing dot is another name to the browser's origin)
        ("evil.example", 403),
        ("evil.example:8080", 403),
        ("127.0.0.1.evil.example", 403),
        ("localhost.evil.example", 403),
        ("", 403),
    ],
)
def test_only_ip_addresses_localhost_and_allowed_names_are_answered(host: str, status: int) -> None:
    app = create_app(Archive.from_records([]), allowed_hosts=["traces.internal"])
    response = _get(app, host)
    assert response.status_code == status, response.text
    if status == 403:
        assert "--allow-host" in response.json()["error"]
        assert response.headers["x-content-type-options"] == "nosniff"  # (the security headers too)


def test_healthz_and_a_missing_host_are_answered_and_star_or_none_allows_any() -> None:
    checked = create_app(Archive.from_records([]), allowed_hosts=[])
    assert _get(checked, "evil.example", "/healthz").status_code == 200
    assert _get(checked, "evil.example", "/").status_code == 403
    assert _get(checked, None).status_code == 200  # (HTTP/1.0: no name a page could choose)
    for app in (
        create_app(Archive.from_records([]), allowed_hosts=["*"]),
        create_app(Archive.from_records([])),
    ):
        assert _get(app, "evil.example").status_code == 200


@pytest.mark.parametrize("bad", ["traces.internal", [""], [None]])
def test_allowed_hosts_must_be_a_list_of_names(bad: Any) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        create_app(Archive.from_records([]), allowed_hosts=bad)


def test_serve_takes_allow_host_repeated() -> None:
    args = build_parser().parse_args(["serve", "-a", "x", "--allow-host", "a.example", "--allow-host", "*"])
    assert args.allow_host == ["a.example", "*"]
    assert build_parser().parse_args(["serve", "-a", "x"]).allow_host == []


@contextmanager
def _serving(app: Any) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _raw(port: int, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET /api/overview HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_rebound_name_is_refused_by_a_real_server() -> None:
    """What a browser sends after DNS rebinding: the attacker's name as Host, on 127.0.0.1."""
    with _serving(create_app(Archive.from_records([]), allowed_hosts=["127.0.0.1"])) as port:
        assert _raw(port, "evil.example").startswith(b"HTTP/1.1 403 ")
        assert _raw(port, f"127.0.0.1:{port}").startswith(b"HTTP/1.1 200 ")
