"""End-to-end demo on embedded defaults: a tiny simulated service traced by pitchey-trace.

Run with ``make demo``. It needs no external service: spans are printed as a tree on stdout.
"""

from __future__ import annotations

import asyncio
import random
import time

import pitchey_trace as pt


@pt.traced(name="db.load_pitch", kind=pt.SpanKind.CLIENT)
def load_pitch(pitch_id: int) -> dict[str, object]:
    time.sleep(0.002)
    return {"id": pitch_id, "title": f"pitch {pitch_id}"}


@pt.traced
async def render(pitch: dict[str, object]) -> str:
    await asyncio.sleep(0.001)
    return f"<h1>{pitch['title']}</h1>"


async def handle_request(pitch_id: int) -> str:
    with pt.span(
        "GET /pitches/{id}", kind=pt.SpanKind.SERVER, attributes={"http.route": "/pitches/{id}"}
    ) as s:
        pitch = load_pitch(pitch_id)
        if pitch_id % 5 == 0:
            s.add_event("cache_miss")
        html = await render(pitch)
        s.set_attribute("http.response.status_code", 200)
        return html


async def main() -> None:
    pt.configure(service="pitch-api", environment="demo", exporters=[pt.ConsoleExporter(pretty=True)])
    random.seed(7)
    await asyncio.gather(*(handle_request(i) for i in range(1, 6)))
    try:
        with pt.span("GET /pitches/{id}", kind=pt.SpanKind.SERVER):
            raise LookupError("pitch 404 not found")
    except LookupError:
        pass
    pt.shutdown()
    print("stats:", {k: v for k, v in pt.stats().items() if "." not in k})


if __name__ == "__main__":
    asyncio.run(main())
