"""The service the demo traces: a Starlette app over PostgreSQL (helpers for ``demo.py``).

It is written the way a real service is, tracing included, and it leaks secrets into spans
on purpose (an ``Authorization`` header copied into an attribute, a password in a span
event, an e-mail address in an exception message) so the demo can show that none of them
reaches the archive. Routes:

=========================  ===================================================================
``GET /pitches/{id}``      a pitch with owner, media and comment count: several queries, one span
``GET /search?q=``         count and page queries in parallel (``asyncio.gather``, two pool
                           connections)
``POST /pitches``          a transaction; a duplicate title is a unique violation -> 409
``POST /signup``           a transaction that sends a welcome mail; a bounce rolls it back -> 500
``POST /login``            password check; a wrong password -> 401 and a security audit event
``GET /users/{id}``        bearer token checked against ``auth_tokens``; reads the sensitive
                           ``users`` table (data_access audit); bad token 401, someone else 403
``GET /slow``              a report query slower than the slow threshold (``pg_sleep``)
``GET /healthz``           health check, excluded from tracing
=========================  ===================================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import uvicorn
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import pitchey_trace as pt
from pitchey_trace.db import instrument_async, traced_query, traced_transaction
from pitchey_trace.web import ASGITracingMiddleware, auth_failure, set_user

SLOW_QUERY_S = 0.2  # the /slow report; the demo's slow threshold is below it
PAGE_SIZE = 5
WORDS = ["solar", "kettle", "drone", "garden", "bike", "coffee", "robot", "violin", "cargo", "tiny"]

SCHEMA = """
CREATE TABLE users (
    id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE, password_hash text NOT NULL
);
CREATE TABLE auth_tokens (token_hash text PRIMARY KEY, user_id int NOT NULL REFERENCES users (id));
CREATE TABLE pitches (
    id serial PRIMARY KEY, owner_id int NOT NULL REFERENCES users (id), title text NOT NULL UNIQUE,
    views int NOT NULL DEFAULT 0
);
CREATE TABLE pitch_media (pitch_id int NOT NULL REFERENCES pitches (id), url text NOT NULL);
CREATE TABLE comments (pitch_id int NOT NULL REFERENCES pitches (id), body text NOT NULL);
"""


@dataclass(frozen=True)
class DemoUser:
    """A seeded user and the secrets the client knows about them."""

    id: int
    name: str
    email: str
    password: str
    token: str


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed` put in the database."""

    users: list[DemoUser]
    pitch_titles: list[str]


def hash_secret(value: str) -> str:
    """What the database stores instead of a password or a token (a salted digest)."""
    return hashlib.sha256(b"pitchey-demo-salt:" + value.encode()).hexdigest()


def seed(dsn: str, rng: random.Random, n_users: int = 8, n_pitches: int = 60) -> Seeded:
    """Create the tables and fill them (plain psycopg: this runs before tracing is set up)."""
    first = ["ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken", "radia", "tim"]
    users = []
    for i in range(n_users):
        name = first[i % len(first)]
        users.append(
            DemoUser(
                id=i + 1,
                name=name.title(),
                email=f"{name}.{rng.randrange(1000, 9999)}@pitchey.example",
                password=f"{rng.choice(WORDS).title()}-{rng.choice(WORDS)}-{rng.randrange(1000, 9999)}!",
                token="ptk_live_" + "".join(rng.choice("0123456789abcdef") for _ in range(32)),
            )
        )
    titles = [f"{a} {b}" for a in WORDS for b in WORDS if a != b]
    rng.shuffle(titles)
    titles = titles[:n_pitches]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (id, name, email, password_hash) VALUES (%s, %s, %s, %s)",
                [(u.id, u.name, u.email, hash_secret(u.password)) for u in users],
            )
            cur.execute("SELECT setval('users_id_seq', %s)", (n_users,))
            cur.executemany(
                "INSERT INTO auth_tokens (token_hash, user_id) VALUES (%s, %s)",
                [(hash_secret(u.token), u.id) for u in users],
            )
            cur.executemany(
                "INSERT INTO pitches (id, owner_id, title) VALUES (%s, %s, %s)",
                [(i + 1, rng.randrange(1, n_users + 1), t) for i, t in enumerate(titles)],
            )
            cur.execute("SELECT setval('pitches_id_seq', %s)", (len(titles),))
            cur.executemany(
                "INSERT INTO pitch_media (pitch_id, url) VALUES (%s, %s)",
                [
                    (p, f"https://cdn.pitchey.example/{p}/{k}.png")
                    for p in range(1, len(titles) + 1)
                    for k in range(rng.randrange(1, 4))
                ],
            )
            cur.executemany(
                "INSERT INTO comments (pitch_id, body) VALUES (%s, %s)",
                [(p, f"comment {k}") for p in range(1, len(titles) + 1) for k in range(rng.randrange(0, 5))],
            )
    return Seeded(users=users, pitch_titles=titles)


# -- the data layer ------------------------------------------------------------------------------
@traced_query(table="pitches", name="load_pitch")
async def load_pitch(conn: psycopg.AsyncConnection[Any], pitch_id: int) -> dict[str, Any] | None:
    """The pitch page's data: five statements under one ``load_pitch`` span."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, owner_id, title, views FROM pitches WHERE id = %s", (pitch_id,))
        pitch = await cur.fetchone()
        if pitch is None:
            return None
        await cur.execute("SELECT name FROM users WHERE id = %s", (pitch["owner_id"],))
        owner = await cur.fetchone()
        pitch["owner"] = owner["name"] if owner else None
        await cur.execute("SELECT url FROM pitch_media WHERE pitch_id = %s", (pitch_id,))
        pitch["media"] = [r["url"] for r in await cur.fetchall()]
        await cur.execute("SELECT count(*) AS n FROM comments WHERE pitch_id = %s", (pitch_id,))
        row = await cur.fetchone()
        pitch["comments"] = row["n"] if row else 0
    await conn.execute("UPDATE pitches SET views = views + 1 WHERE id = %s", (pitch_id,))
    return pitch


@traced_query(table="pitches", name="search_pitches")
async def search(pool: AsyncConnectionPool, term: str, page: int) -> dict[str, Any]:
    """Total and one page of matches, fetched at the same time on two pooled connections."""
    pattern = f"%{term}%"

    async def count() -> int:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM pitches WHERE title ILIKE %s", (pattern,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def page_rows() -> list[str]:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT title FROM pitches WHERE title ILIKE %s ORDER BY title LIMIT %s OFFSET %s",
                (pattern, PAGE_SIZE, page * PAGE_SIZE),
            )
            return [r[0] for r in await cur.fetchall()]

    total, rows = await asyncio.gather(count(), page_rows())
    return {"total": total, "page": page, "results": rows}


@pt.traced(name="authenticate")
async def authenticate(conn: psycopg.AsyncConnection[Any], authorization: str) -> int | None:
    """The user id of a bearer token, or None (the span is marked as failed)."""
    span = pt.current_span()
    # A careless line copied from a debugging session: the sanitizer must mask it on export.
    span.set_attribute("http.request.header.authorization", authorization)
    token = authorization.removeprefix("Bearer ").strip()
    cur = await conn.execute("SELECT user_id FROM auth_tokens WHERE token_hash = %s", (hash_secret(token),))
    row = await cur.fetchone()
    if row is None:
        span.set_status("error", "invalid token")
        return None
    return int(row[0])


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Compare a password with the stored digest, in a span that fails on a mismatch."""
    with pt.span("verify_password") as span:
        ok = stored_hash is not None and hmac.compare_digest(stored_hash, hash_secret(password))
        if not ok:
            span.set_status("error", "password mismatch")
        return ok


class MailBounced(Exception):
    """The mail server refused the recipient."""


@pt.traced(name="smtp send", kind=pt.SpanKind.CLIENT)
async def send_welcome_mail(email: str) -> None:
    """Pretend to talk to a mail server; addresses at bounce.example bounce."""
    await asyncio.sleep(0.004)
    if email.endswith("@bounce.example"):
        # The message carries the address, as real mail libraries' messages do.
        raise MailBounced(f"550 5.1.1 mailbox unavailable: {email}")


# -- HTTP handlers -------------------------------------------------------------------------------
def _pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def get_pitch(request: Request) -> Response:
    try:
        pitch_id = int(request.path_params["pitch_id"])
    except ValueError:
        return JSONResponse({"error": "not found"}, status_code=404)
    async with _pool(request).connection() as conn:
        pitch = await load_pitch(conn, pitch_id)
    if pitch is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse(pitch)


async def search_pitches(request: Request) -> Response:
    term = request.query_params.get("q", "")
    page = int(request.query_params.get("page", "0") or 0)
    return JSONResponse(await search(_pool(request), term, page))


async def create_pitch(request: Request) -> Response:
    body = await request.json()
    async with _pool(request).connection() as conn:
        try:
            async with traced_transaction(conn, name="create_pitch"):
                cur = await conn.execute(
                    "INSERT INTO pitches (owner_id, title) VALUES (%s, %s) RETURNING id",
                    (body["owner_id"], body["title"]),
                )
                row = await cur.fetchone()
                assert row is not None
                pitch_id = int(row[0])
                await conn.execute(
                    "INSERT INTO pitch_media (pitch_id, url) VALUES (%s, %s)",
                    (pitch_id, f"https://cdn.pitchey.example/{pitch_id}/cover.png"),
                )
        except psycopg.errors.UniqueViolation:
            return JSONResponse({"error": "a pitch with this title exists"}, status_code=409)
    return JSONResponse({"id": pitch_id}, status_code=201)


async def signup(request: Request) -> Response:
    body = await request.json()
    async with _pool(request).connection() as conn:
        # A bounce escapes the block: the transaction rolls back and the app answers 500.
        async with traced_transaction(conn, name="signup"):
            cur = await conn.execute(
                "INSERT INTO users (name, email, password_hash) VALUES (%s, %s, %s) RETURNING id",
                (body["name"], body["email"], hash_secret(body["password"])),
            )
            row = await cur.fetchone()
            assert row is not None
            user_id = int(row[0])
            await send_welcome_mail(body["email"])
    return JSONResponse({"id": user_id}, status_code=201)


async def login(request: Request) -> Response:
    body = await request.json()
    email, password = str(body.get("email", "")), str(body.get("password", ""))
    # Careless: the whole form in a span event. The sanitizer masks the e-mail and password.
    pt.current_span().add_event("login.attempt", {"email": email, "password": password})
    async with _pool(request).connection() as conn:
        cur = await conn.execute("SELECT id, password_hash FROM users WHERE email = %s", (email,))
        row = await cur.fetchone()
    if not verify_password(row[1] if row else None, password):
        auth_failure("bad_password")
        return JSONResponse({"error": "wrong e-mail or password"}, status_code=401)
    assert row is not None
    set_user(row[0])
    return JSONResponse({"user_id": row[0]})


async def get_user(request: Request) -> Response:
    try:
        user_id = int(request.path_params["user_id"])
    except ValueError:
        return JSONResponse({"error": "not found"}, status_code=404)
    async with _pool(request).connection() as conn:
        caller = await authenticate(conn, request.headers.get("authorization", ""))
        if caller is None:
            auth_failure("invalid_token")
            return JSONResponse({"error": "invalid token"}, status_code=401)
        set_user(caller)
        if caller != user_id:
            return JSONResponse({"error": "forbidden"}, status_code=403)  # security audit by the middleware
        # The data_access audit record of the query takes its actor from the baggage.
        with pt.set_baggage({"user.id": str(caller)}):
            cur = await conn.execute("SELECT id, name, email FROM users WHERE id = %s", (user_id,))
            row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"id": row[0], "name": row[1], "email": row[2]})


async def slow_report(request: Request) -> Response:
    async with _pool(request).connection() as conn:
        cur = await conn.execute(
            "SELECT owner_id, count(*) FROM pitches, pg_sleep(%s) GROUP BY owner_id ORDER BY owner_id",
            (SLOW_QUERY_S,),
        )
        rows = await cur.fetchall()
    return JSONResponse({"pitches_per_owner": {str(r[0]): r[1] for r in rows}})


async def healthz(request: Request) -> Response:
    async with _pool(request).connection() as conn:
        await conn.execute("SELECT 1")
    return Response("ok")


def make_app(dsn: str) -> ASGITracingMiddleware:
    """The Starlette app, wrapped in the tracing middleware (outermost, so it sees every
    request and the 500s Starlette answers for unhandled exceptions)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Each pooled connection is instrumented when the pool opens it.
        pool = AsyncConnectionPool(
            dsn, min_size=4, max_size=8, kwargs={"autocommit": True}, configure=instrument_async, open=False
        )
        await pool.open(wait=True)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    routes = [
        Route("/pitches/{pitch_id}", get_pitch, methods=["GET"]),
        Route("/pitches", create_pitch, methods=["POST"]),
        Route("/search", search_pitches, methods=["GET"]),
        Route("/signup", signup, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/users/{user_id}", get_user, methods=["GET"]),
        Route("/slow", slow_report, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return ASGITracingMiddleware(Starlette(routes=routes, lifespan=lifespan))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a background thread; yields the
    base URL and stops the server when the block exits."""
    # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (no ~40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
