"""Router: records to datasets, alone and through the pipeline."""

from __future__ import annotations

from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace.exporters import InMemoryExporter
from pitchey_trace.processors import DEFAULT_DATASETS, Router, audit_category, in_dataset, record_type


def rec(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, **extra}


def test_default_router_sends_each_type_to_its_dataset() -> None:
    r = Router()
    assert r(rec("span")) == ["traces"]
    assert r(rec("audit", category="request")) == ["audit"]
    assert r(rec("rollup")) == ["performance"]
    assert r(rec("log")) == ["logs"]
    assert r(rec("span", dataset="special")) == []  # an explicit dataset key wins
    assert _stats.get("filtered.unrouted") == 1
    assert set(DEFAULT_DATASETS) == {"traces", "audit", "performance", "logs"}


def test_custom_datasets_add_to_the_defaults_or_replace_them() -> None:
    r = Router({"security": audit_category("security"), "traces": record_type("span", "audit")})
    assert r(rec("audit", category="security")) == ["traces", "audit", "security"]
    assert r(rec("audit", category="request")) == ["traces", "audit"]
    only = Router({"errors": lambda x: x.get("status") == "error"}, defaults=False)
    assert only(rec("span", status="error")) == ["errors"]
    assert only(rec("span", status="ok")) == []
    assert repr(in_dataset("audit")) == "in_dataset('audit')"
    assert "audit_category('security')" in repr(r)


def test_router_rejects_bad_configuration() -> None:
    with pytest.raises(TypeError):
        Router({"x": "not callable"})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        Router({"": record_type("span")})


@pytest.mark.allow_internal_errors
def test_a_failing_filter_only_affects_its_own_dataset() -> None:
    def boom(r: dict[str, Any]) -> bool:
        raise RuntimeError("bad filter")

    r = Router({"broken": boom})
    assert r(rec("span")) == ["traces"]
    assert _stats.get("internal_errors.router.broken") == 1


def test_pipeline_routes_through_the_router_to_subscribed_exporters() -> None:
    security = InMemoryExporter(datasets={"security"})
    traces = InMemoryExporter(datasets={"traces"})
    everything = InMemoryExporter()
    pt.configure(
        service="r",
        exporters=[security, traces, everything],
        rollups=None,
        router=Router({"security": audit_category("security")}),
    )
    with pt.span("a"):
        pt.emit_audit("login", "session", "denied", category="security")
        pt.emit_audit("GET /", "route", "200")
    assert pt.force_flush(10)
    assert [r["action"] for r in security.records] == ["login"]
    assert [r["name"] for r in traces.records] == ["a"]
    assert len(everything.records) == 3
