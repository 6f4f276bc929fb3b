"""aiohttp traced by pitchey-trace: server spans named after resources, client sessions, logs.

.venv/bin/python examples/aiohttp_app.py              # serve on 127.0.0.1:8080 (PORT=...)
curl -i localhost:8080/pitches/42                     # note the X-Trace-Id response header
.venv/bin/python examples/aiohttp_app.py --demo       # start, call itself, print, exit

aiohttp.access lines are logged after the request's span ended: they carry empty trace ids.
The /boom traceback on stderr is expected (its log line carries the 500's trace id).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from aiohttp import ClientSession, web

import pitchey_trace as pt
from pitchey_trace.web import (
    TraceContextFilter,
    TraceFormatter,
    init_aiohttp,
    instrument_aiohttp_client,
    set_user,
)

log = logging.getLogger("pitch_aio")


def create_app() -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/pitches/{pitch_id}")
    async def get_pitch(request: web.Request) -> web.Response:
        pitch_id = int(request.match_info["pitch_id"])
        with pt.span("load_pitch", attributes={"pitch.id": pitch_id}):
            log.info("loading pitch %s", pitch_id)
            await asyncio.sleep(0.002)
        return web.json_response({"id": pitch_id, "title": "Quiet drums"})

    @routes.get("/me")
    async def me(request: web.Request) -> web.Response:
        user = request.headers.get("X-User-Id")
        if user is None:
            raise web.HTTPUnauthorized()  # a 401 response: request and security audit records
        set_user(user)
        return web.json_response({"user": user})

    @routes.get("/feed")
    async def feed(request: web.Request) -> web.Response:
        # The instrumented client session continues the trace into the call it makes.
        async with ClientSession() as session:
            async with session.get(f"http://{request.host}/pitches/1") as r:
                first = await r.json()
        return web.json_response({"feed": [first]})

    @routes.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("the 500 response and the error log carry the same trace id")

    app = web.Application()
    app.add_routes(routes)
    return init_aiohttp(app, traceresponse=True)  # type: ignore[no-any-return]


def setup() -> None:
    pt.configure(service="pitch-aio", exporters=[pt.ConsoleExporter(pretty=True)])
    instrument_aiohttp_client()
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(TraceFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


async def demo() -> None:
    """Serve on a free port, call a few endpoints, print what the client sees, stop."""
    app = create_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    with pt.suppress_tracing():  # the demo's own calls are not part of the traces
        async with ClientSession() as session:
            for path, headers in (
                ("/pitches/42", {}),
                ("/me", {"X-User-Id": "u-7"}),
                ("/me", {}),
                ("/feed", {}),
                ("/boom", {}),
            ):
                async with session.get(base + path, headers=headers) as r:
                    await r.read()
                    print(f"GET {path:<12} -> {r.status}  X-Trace-Id: {r.headers.get('X-Trace-Id', '-')}")
    await runner.cleanup()
    pt.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="aiohttp traced by pitchey-trace")
    parser.add_argument("--demo", action="store_true", help="start, call a few endpoints, exit")
    setup()
    if parser.parse_args().demo:
        asyncio.run(demo())
    else:
        web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
