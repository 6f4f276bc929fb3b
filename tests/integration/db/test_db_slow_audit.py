"""Slow queries (pg_sleep), the tail policy keeping their traces, and sensitive-table audit
records, against a real server."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg import errors

import pitchey_trace as pt
from pitchey_trace import db
from pitchey_trace.db import instrument
from pitchey_trace.testing import capture_spans

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]


def test_slow_query_event_and_warning(conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    db.configure(slow_threshold_ms=250)  # far above any SELECT 1, even on a loaded machine
    instrument(conn)
    caplog.set_level(logging.WARNING, logger="pitchey_trace.db")
    with capture_spans() as mem:
        conn.execute("SELECT pg_sleep(0.4), 'marker-5521'").fetchone()
        conn.execute("SELECT 1").fetchone()
    slow, fast = mem.spans("SELECT")
    (event,) = [e for e in slow["events"] if e["name"] == "slow_query"]
    assert event["attributes"]["db.query.duration_ms"] >= 400
    assert event["attributes"]["db.slow_threshold_ms"] == 250.0
    assert not fast["events"]
    (record,) = [r for r in caplog.records if r.name == "pitchey_trace.db"]
    assert record.levelno == logging.WARNING
    assert record.trace_id == slow["trace_id"]  # type: ignore[attr-defined]
    message = record.getMessage()
    assert slow["trace_id"] in message
    assert "SELECT pg_sleep(?), ?" in message
    assert "marker-5521" not in message


def test_slow_query_off(conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    db.configure(slow_threshold_ms=None)
    instrument(conn)
    with capture_spans() as mem:
        conn.execute("SELECT pg_sleep(0.05)")
    assert not mem.spans()[0]["events"]
    assert not [r for r in caplog.records if r.name == "pitchey_trace.db"]


def test_tail_policy_keeps_the_slow_trace(conn: Conn) -> None:
    db.configure(slow_threshold_ms=250)
    instrument(conn)
    with capture_spans(sample_rate=0.0, slow_threshold_ms=250) as mem:
        with pt.span("slow-request"):
            conn.execute("SELECT pg_sleep(0.4)")
        with pt.span("fast-request"):
            conn.execute("SELECT 1")
    names = {s["name"] for s in mem.spans()}
    assert names == {"slow-request", "SELECT"}
    assert mem.spans("SELECT")[0]["events"][0]["name"] == "slow_query"


@pytest.fixture
def sensitive(conn: Conn) -> Conn:
    conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE NOT NULL)")
    conn.execute("CREATE TABLE payments (id int, user_id int, cents int)")
    conn.execute("CREATE TABLE pitches (id int, owner int)")
    conn.execute("INSERT INTO users VALUES (1, 'owner-8812@example.org')")
    return conn


def test_sensitive_table_access_emits_audit_records(sensitive: Conn) -> None:
    instrument(sensitive)
    with capture_spans() as mem:
        sensitive.execute("SELECT email FROM users WHERE id = %s", (1,)).fetchone()
        sensitive.execute("INSERT INTO payments VALUES (1, 1, 73519)")
        sensitive.execute("SELECT p.id FROM pitches p JOIN users u ON u.id = p.owner").fetchall()
        sensitive.execute("SELECT count(*) FROM pitches").fetchone()
        with pytest.raises(errors.UniqueViolation):
            sensitive.execute("INSERT INTO users VALUES (2, 'owner-8812@example.org')")
    audits = mem.of_type("audit")
    assert [(a["action"], a["target"], a["outcome"]) for a in audits] == [
        ("SELECT", "users", "success"),
        ("INSERT", "payments", "success"),
        ("SELECT", "users", "success"),
        ("INSERT", "users", "error"),
    ]
    spans = {s["span_id"]: s for s in mem.spans()}
    for audit in audits:
        assert audit["category"] == "data_access"
        span = spans[audit["span_id"]]
        assert audit["trace_id"] == span["trace_id"]
        assert audit["action"] == span["attributes"]["db.operation.name"]
        assert audit["attributes"]["db.system.name"] == "postgresql"
    assert audits[-1]["attributes"]["error.type"] == "23505"
    text = repr(audits)
    assert "owner-8812" not in text
    assert "73519" not in repr([{k: v for k, v in a.items() if "time" not in k} for a in audits])


def test_audit_actor_from_baggage_and_configurable_tables(sensitive: Conn) -> None:
    db.configure(sensitive_tables=["pitches"])
    instrument(sensitive)
    parent = pt.TraceContext(0x1234, 0x5678, baggage=(("user.id", "u-77"),))
    with capture_spans() as mem, pt.use_context(parent), pt.span("handler"):
        sensitive.execute("SELECT id FROM pitches").fetchall()
        sensitive.execute("SELECT email FROM users").fetchall()  # no longer sensitive
    (audit,) = mem.of_type("audit")
    assert audit["target"] == "pitches"
    assert audit["actor"] == "u-77"
    assert audit["trace_id"] == f"{0x1234:032x}"


def test_audit_is_emitted_even_when_the_trace_is_not_sampled(sensitive: Conn) -> None:
    instrument(sensitive)
    with capture_spans(sample_rate=0.0, keep_errors=False, slow_threshold_ms=None, rollups=None) as mem:
        sensitive.execute("SELECT id FROM users").fetchall()
    assert mem.spans() == []
    assert [a["target"] for a in mem.of_type("audit")] == ["users"]
