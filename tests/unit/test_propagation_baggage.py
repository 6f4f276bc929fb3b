"""W3C Baggage (https://www.w3.org/TR/baggage/): header parsing and formatting, limits, and
the baggage helpers (set_baggage / with_baggage / get_baggage / baggage_entries).

Each test names the spec section it checks.
"""

from __future__ import annotations

import pitchey_trace as pt
from pitchey_trace import _stats
from pitchey_trace import propagation as prop
from pitchey_trace._context import suppress_tracing
from pitchey_trace._span import Span, TraceContext
from pitchey_trace.testing import capture_spans

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- §3.2 header content ----------------------------------------------------------------------
def test_parse_members_properties_and_ows() -> None:
    # §3.2.1.1 list-member = key OWS "=" OWS value *( OWS ";" OWS property )
    header = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue"
    assert prop.parse_baggage(header) == (("key1", "value1"), ("key2", "value2"), ("key3", "value3"))


def test_parse_percent_decodes_utf8() -> None:
    # §3.2.1.4 value: percent-encoded UTF-8.
    assert prop.parse_baggage("user=J%C3%BCrgen%20M%2C,emoji=%F0%9F%98%80") == (
        ("user", "Jürgen M,"),
        ("emoji", "\U0001f600"),
    )


def test_parse_skips_invalid_members_only() -> None:
    # §3.2.1.3 key = token; §3.2.1.4 baggage-octet excludes space, DQUOTE, "," ";" "\".
    header = 'ok=1,a b=2,(k)=3,sp=a b,q=a"b,bs=a\\b,nokey,=v,bad=%FF,é=1,fine=2'
    # (§value: percent-encoded octets that are not UTF-8 become U+FFFD; the member stays)
    assert prop.parse_baggage(header) == (("ok", "1"), ("bad", "\ufffd"), ("fine", "2"))
    assert prop.parse_baggage("a=x%C3%28y,b=%E2%82") == (("a", "x\ufffd(y"), ("b", "\ufffd"))
    assert prop.parse_baggage("") == ()
    assert prop.parse_baggage(None) == ()


def test_parse_empty_value_and_repeated_key() -> None:
    assert prop.parse_baggage("a=,b=2,a=3") == (("a", "3"), ("b", "2"))


def test_parse_member_limit() -> None:
    # §3.3.1 limits: at least 64 list-members must be propagated; we keep up to 180.
    header = ",".join(f"k{i}=v" for i in range(300))
    parsed = prop.parse_baggage(header)
    assert len(parsed) == prop.MAX_BAGGAGE_MEMBERS == 180
    assert parsed[0] == ("k0", "v")
    assert parsed[-1] == ("k179", "v")
    assert len(prop.parse_baggage(",".join(f"k{i}=v" for i in range(64)))) == 64


def test_parse_byte_limit_never_keeps_partial_members() -> None:
    # §3.3.1 limits: at least 8192 bytes; "MUST NOT propagate partial list-members".
    members = [f"k{i:03d}={'v' * 95}" for i in range(100)]  # 100 bytes each with the comma
    parsed = prop.parse_baggage(",".join(members))
    assert len(parsed) == 81  # 81 * 100 - 1 = 8099 <= 8192 < 8199
    assert all(v == "v" * 95 for _, v in parsed)
    assert prop.parse_baggage("k=" + "v" * 9000) == ()


def test_format_percent_encodes_and_round_trips() -> None:
    entries = (("user", "Jürgen M"), ("list", "a,b;c"), ("pct", "100%"), ("plain", "x-y_z.1~!"))
    header = prop.format_baggage(entries)
    assert header == "user=J%C3%BCrgen%20M,list=a%2Cb%3Bc,pct=100%25,plain=x-y_z.1~!"
    assert prop.parse_baggage(header) == entries
    assert prop.format_baggage({"a": "1"}) == "a=1"
    assert prop.format_baggage(()) == ""


def test_format_applies_limits_and_skips_invalid_keys() -> None:
    many = tuple((f"k{i}", "v") for i in range(300))
    assert len(prop.parse_baggage(prop.format_baggage(many))) == 180
    big = tuple((f"k{i:03d}", "v" * 1000) for i in range(20))
    header = prop.format_baggage(big)
    assert len(header.encode()) <= prop.MAX_BAGGAGE_BYTES
    assert len(prop.parse_baggage(header)) == 8
    assert prop.format_baggage((("bad key", "1"), ("good", "2"))) == "good=2"


# -- helpers ------------------------------------------------------------------------------------
def test_get_baggage_and_entries_from_context_or_current() -> None:
    ctx = TraceContext(1, 2, 1, (), (("user.id", "u-1"), ("tenant", "acme")))
    assert prop.get_baggage("tenant", ctx) == "acme"
    assert prop.get_baggage("missing", ctx) is None
    assert prop.baggage_entries(ctx) == {"user.id": "u-1", "tenant": "acme"}
    assert prop.get_baggage("tenant") is None
    assert prop.baggage_entries() == {}
    with pt.use_context(ctx):
        assert prop.get_baggage("user.id") == "u-1"
        assert prop.baggage_entries() == {"user.id": "u-1", "tenant": "acme"}


def test_set_baggage_reaches_children_inject_and_restores() -> None:
    with capture_spans() as exporter, pt.span("request") as request:
        with prop.set_baggage({"user.id": "u-17"}, tenant="acme") as scope:
            assert pt.current_span() is scope
            assert prop.get_baggage("user.id") == "u-17"
            pt.current_span().set_attribute("via.scope", True)  # reaches the real span
            headers: dict[str, str] = {}
            prop.inject(headers)
            with pt.span("child") as child:
                assert child.baggage == (("user.id", "u-17"), ("tenant", "acme"))
                assert isinstance(child, Span)
                assert child.local_root is False  # the scope stands for "request"
        assert prop.get_baggage("user.id") is None
        assert pt.current_span() is request
    assert headers["baggage"] == "user.id=u-17,tenant=acme"
    extracted = prop.extract(headers)
    assert extracted is not None
    assert extracted.span_id == request.span_id
    (req,) = exporter.spans("request")
    (kid,) = exporter.spans("child")
    assert req["attributes"]["via.scope"] is True
    assert kid["parent_span_id"] == req["span_id"]


def test_set_baggage_nested_update_and_remove() -> None:
    with pt.use_context(TraceContext(1, 2, 1, (), (("a", "1"), ("b", "2")))):
        with prop.with_baggage("a", "9"):
            assert prop.baggage_entries() == {"a": "9", "b": "2"}
            with prop.set_baggage(b=None, c="3"):
                assert prop.baggage_entries() == {"a": "9", "c": "3"}
            assert prop.baggage_entries() == {"a": "9", "b": "2"}
        assert prop.baggage_entries() == {"a": "1", "b": "2"}


def test_set_baggage_invalid_entries_are_ignored_with_a_warning() -> None:
    with pt.use_context(TraceContext(1, 2, 1)), prop.set_baggage({"bad key": "x", "ok": "1"}):
        assert prop.baggage_entries() == {"ok": "1"}
    assert _stats.get("misuse.baggage_invalid") == 1


def test_set_baggage_while_suppressed_changes_nothing() -> None:
    with suppress_tracing(), prop.set_baggage(a="1"):
        assert pt.current_span() is pt.INVALID_SPAN
        assert prop.get_baggage("a") is None


def test_set_baggage_outside_any_span_is_local_only() -> None:
    with prop.set_baggage(a="1"):
        assert prop.get_baggage("a") == "1"
        headers: dict[str, str] = {}
        prop.inject(headers)
        assert headers == {}  # no trace to carry it


def test_extracted_baggage_flows_to_server_span_and_downstream() -> None:
    ctx = prop.extract({"traceparent": TP, "baggage": "user.id=u-3"})
    with capture_spans(), pt.span("server", kind=pt.SpanKind.SERVER, context=ctx):
        assert prop.get_baggage("user.id") == "u-3"
        with pt.span("client", kind=pt.SpanKind.CLIENT):
            out: dict[str, str] = {}
            prop.inject(out)
    assert out["baggage"] == "user.id=u-3"


def test_audit_actor_defaults_to_baggage_user_id() -> None:
    with capture_spans() as exporter, pt.span("request"), prop.with_baggage("user.id", "u-42"):
        pt.emit_audit("pitch.update", "pitch:7", "success")
    (audit,) = exporter.of_type("audit")
    assert audit["actor"] == "u-42"


def test_scope_forwards_span_api() -> None:
    with capture_spans() as exporter:
        span = pt.start_span("manual")
        with span, prop.with_baggage("k", "v") as scope:
            assert scope.wrapped is span
            assert scope.is_recording
            assert scope.name == "manual"  # span fields come from the span
            assert scope.attributes is span.attributes
            scope.add_event("e", {"n": 1})
            scope.set_status("error", "boom")
            scope.update_name("renamed")
            assert not scope.is_ended
    (record,) = exporter.spans("renamed")
    assert record["status"] == "error"
    assert [e["name"] for e in record["events"]] == ["e"]
    assert "BaggageScope" in repr(scope)
