"""Real spans for the analysis API and page tests, made by the SDK's own pipeline.

    data = make_traces()            # configures tracing, records three traces, shuts down
    Archive.from_records(data.records)

Start and end times are given explicitly (``start_time_ns`` / ``end(t)``), so durations, the
critical path and the bottleneck are known without sleeping:

* ``orders`` (service shop-api): ``GET /orders/{id}`` 0-120 ms with ``auth.check`` 2-6,
  ``load_order`` 6-70 holding six sequential ``SELECT order_items`` spans (8 ms each, the same
  statement: an N+1) and an event, ``render`` 70-118 (48 ms of self time: the bottleneck) and
  ``publish_event`` 80-90, which runs beside ``render`` and so is off the critical path.
* ``payment`` (services shop-api and payments): ``POST /pay`` 0-50 ms -> client span
  ``call payments`` 5-45 -> ``POST /charge`` in the payments service 10-40, which failed with
  a recorded ``ValueError``, and the payments service's ERROR log record at 30 ms in it (as
  ``export_logs()`` ships it).
* ``hostile`` (service shop-api): a root span named like an HTML injection with a hostile
  attribute value and a child whose name closes tags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pitchey_trace as pt
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.records import app_log_record

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_CHILD = '</div><script>document.title="owned"</script><b>'
HOSTILE_VALUE = "<script>alert(2)</script>&amp;"
STATEMENT = "SELECT * FROM order_items WHERE order_id = 17"
MS = 1_000_000


@dataclass
class TraceData:
    """The records of the three traces and their ids."""

    records: list[dict[str, Any]] = field(default_factory=list)
    orders: str = ""
    payment: str = ""
    hostile: str = ""
    start_ns: int = 0

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The span records of one trace."""
        return [r for r in self.records if r.get("type") == "span" and r["trace_id"] == trace_id]


def _span(name: str, start: int, parent: Any = None, **kwargs: Any) -> Any:
    return pt.start_span(name, context=parent, start_time_ns=start, **kwargs)


def make_traces(start_ns: int | None = None) -> TraceData:
    """Record the three traces (see the module docstring) and return their records.

    Configures tracing (twice: one pipeline per service) and shuts it down before returning.
    """
    t0 = time.time_ns() - 60 * 10**9 if start_ns is None else start_ns
    data = TraceData(start_ns=t0)

    shop = InMemoryExporter()
    pt.configure(service="shop-api", exporters=[shop], sample_rate=1.0)
    root = _span("GET /orders/{id}", t0, kind=pt.SpanKind.SERVER, attributes={"http.request.method": "GET"})
    data.orders = root.trace_id_hex
    _span("auth.check", t0 + 2 * MS, root).end(t0 + 6 * MS)
    load = _span("load_order", t0 + 6 * MS, root, attributes={"order.id": 17})
    load.add_event("cache_miss", {"cache.key": "order:17"}, timestamp_ns=t0 + 7 * MS)
    for i in range(6):
        q = _span(
            "SELECT order_items",
            t0 + (8 + 8 * i) * MS,
            load,
            kind=pt.SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.query.text": STATEMENT},
        )
        q.end(t0 + (16 + 8 * i) * MS)
    load.end(t0 + 70 * MS)
    _span("render", t0 + 70 * MS, root).end(t0 + 118 * MS)
    _span("publish_event", t0 + 80 * MS, root, kind=pt.SpanKind.PRODUCER).end(t0 + 90 * MS)
    root.end(t0 + 120 * MS)

    t1 = t0 + 1000 * MS
    pay = _span("POST /pay", t1, kind=pt.SpanKind.SERVER)
    data.payment = pay.trace_id_hex
    call = _span("call payments", t1 + 5 * MS, pay, kind=pt.SpanKind.CLIENT)
    # Times are explicit, so the caller's spans can end before the callee's span is recorded.
    call.end(t1 + 45 * MS)
    pay.end(t1 + 50 * MS)

    t2 = t0 + 2000 * MS
    evil = _span(HOSTILE_NAME, t2, attributes={"note": HOSTILE_VALUE})
    data.hostile = evil.trace_id_hex
    _span(HOSTILE_CHILD, t2 + 1 * MS, evil).end(t2 + 3 * MS)
    evil.end(t2 + 4 * MS)

    assert pt.force_flush(10)
    pt.shutdown(5)

    payments = InMemoryExporter()
    pt.configure(service="payments", exporters=[payments], sample_rate=1.0)
    charge = _span("POST /charge", t1 + 10 * MS, call.context, kind=pt.SpanKind.SERVER)
    try:
        raise ValueError("card declined for order 4242")
    except ValueError as exc:
        charge.record_exception(exc)
        charge.set_status("error", str(exc))
    charge.end(t1 + 40 * MS)
    assert pt.force_flush(10)
    pt.shutdown(5)
    # what export_logs() ships: the payments service's error log, in the charge span
    declined = app_log_record(
        time_unix_nano=t1 + 30 * MS,
        severity_number=17,
        severity_text="ERROR",
        logger="payments.charge",
        body="card declined for order [CARD]",
        service="payments",
        environment="development",
        trace_id=charge.trace_id,
        span_id=charge.span_id,
        trace_flags=1,
        attributes={"order.id": 4242},
    )

    data.records = shop.records + payments.records + [declined]
    return data


def audit(
    time_unix_nano: int,
    category: str = "security",
    outcome: str = "403",
    action: str = "GET /admin",
    actor: str | None = None,
    trace_id: int = 0,
) -> dict[str, Any]:
    """One schema-v1 audit record (service ``shop-api``) for the analysis tests."""
    from pitchey_trace.records import audit_record

    return audit_record(
        service="shop-api",
        environment="test",
        category=category,
        action=action,
        target=action.partition(" ")[2] or "/",
        outcome=outcome,
        actor=actor,
        time_unix_nano=time_unix_nano,
        trace_id=trace_id,
    )
