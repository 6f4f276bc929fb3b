"""Code written against the OpenTelemetry API, recorded by pitchey-trace.

    .venv/bin/python examples/opentelemetry_api.py

A "payments" library instrumented with the OpenTelemetry API (as many libraries are) is called
from application code that uses pitchey-trace. With ``pitchey_trace.otel.install()`` both kinds
of span form one trace, pass the sanitizer, and go to the same exporters: here the console,
drawn as a tree. Needs the ``otel-api`` extra (``opentelemetry-api``).
"""

from __future__ import annotations

from opentelemetry import trace

import pitchey_trace as pt
from pitchey_trace.otel import install

# -- a library instrumented with the OpenTelemetry API (it knows nothing of pitchey-trace) -------
tracer = trace.get_tracer("payments", "3.2.0")


def charge(card: str, cents: int) -> str:
    with tracer.start_as_current_span("payments.charge", kind=trace.SpanKind.CLIENT) as span:
        span.set_attribute("payment.amount_cents", cents)
        span.set_attribute("payment.card", card)  # a card number: the sanitizer masks it
        with tracer.start_as_current_span("payments.fraud_check"):
            pass
        if cents > 100_000:
            raise ValueError("amount over the limit")
        return "ch_0001"


# -- the application, traced with pitchey-trace ------------------------------------------------------
def checkout(cents: int) -> None:
    with pt.span("checkout", {"cart.items": 3}):
        with pt.span("reserve_stock"):
            pass
        try:
            print("charged:", charge("4111 1111 1111 1111", cents))
        except ValueError as exc:
            print("refused:", exc)


if __name__ == "__main__":
    kept = pt.InMemoryExporter()  # to show one exported attribute below
    pt.configure(service="shop", exporters=[pt.ConsoleExporter(pretty=True), kept])
    install()
    checkout(2_500)
    checkout(250_000)
    pt.shutdown()
    exported = next(r for r in kept.spans() if r["name"] == "payments.charge")
    print("card as exported:", repr(exported["attributes"]["payment.card"]))
    print("instrumentation scope:", exported["attributes"]["otel.scope.name"])
