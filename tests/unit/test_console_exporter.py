"""ConsoleExporter: NDJSON lines, the pretty tree, failing streams, dataset filtering."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace.exporters.console import render_tree
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())


@contextmanager
def captured(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """capture_spans, then check every exported record against the JSON Schema."""
    with capture_spans(**configure_kwargs) as mem:
        yield mem
    for rec in mem.records:
        _VALIDATOR.validate(rec)


class BrokenPipeStream(io.StringIO):
    """A stream whose reader went away."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def make_trace() -> None:
    with pt.span("GET /pitches", kind=pt.SpanKind.SERVER):
        with pt.span("load"), pt.span("SELECT pitches", kind=pt.SpanKind.CLIENT):
            pass
        try:
            with pt.span("render"):
                raise ValueError("template missing")
        except ValueError:
            pass


# -- NDJSON -------------------------------------------------------------------------------------
def test_ndjson_lines_equal_the_in_memory_records() -> None:
    stream = io.StringIO()
    with captured(exporters=[pt.ConsoleExporter(stream)]) as mem:
        make_trace()
        with pt.span("unicode", attributes={"title": "Pitch — déjà vu ✓"}):
            pass
        pt.emit_audit("view", "pitch", "success")
    text = stream.getvalue()
    assert text.endswith("\n")
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert parsed == mem.records
    assert len(parsed) >= 6  # 5 spans and an audit record (rollups may follow)
    assert {r["type"] for r in parsed} >= {"span", "audit"}
    unicode_rec = next(r for r in parsed if r.get("name") == "unicode")
    assert unicode_rec["attributes"]["title"] == "Pitch — déjà vu ✓"
    for rec in parsed:
        _VALIDATOR.validate(rec)


def test_export_writes_one_line_per_record() -> None:
    stream = io.StringIO()
    exporter = pt.ConsoleExporter(stream)
    records = [{"type": "custom", "n": i} for i in range(3)]
    assert exporter.export(records) is True
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == records
    assert exporter.export([]) is True
    assert stream.getvalue().count("\n") == 3


def test_default_stream_is_stdout_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = pt.ConsoleExporter()
    assert exporter.export([{"type": "custom", "k": "v"}]) is True
    assert json.loads(capsys.readouterr().out) == {"type": "custom", "k": "v"}


def test_dataset_filter() -> None:
    audit_stream = io.StringIO()
    with captured(exporters=[pt.ConsoleExporter(audit_stream, datasets=["audit"])]) as mem, pt.span("op"):
        pt.emit_audit("read", "pitch", "success")
    lines = [json.loads(line) for line in audit_stream.getvalue().splitlines()]
    assert [r["type"] for r in lines] == ["audit"]
    assert lines == mem.of_type("audit")


# -- pretty tree --------------------------------------------------------------------------------
def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_pretty_renders_an_indented_tree() -> None:
    with captured() as mem:
        make_trace()
        pt.emit_audit("view", "pitch", "success")
    stream = io.StringIO()
    assert pt.ConsoleExporter(stream, pretty=True).export(mem.records) is True
    lines = stream.getvalue().splitlines()
    server = next(r for r in mem.spans() if r["name"] == "GET /pitches")
    assert f"trace {server['trace_id']}" in lines
    by_name = {line.strip().split("  ")[0]: line for line in lines if line.startswith(" ")}
    assert _indent(by_name["GET /pitches"]) == 2
    assert _indent(by_name["load"]) == 4
    assert _indent(by_name["render"]) == 4
    assert _indent(by_name["SELECT pitches"]) == 6
    order = [line.strip().split("  ")[0] for line in lines if line.startswith(" ")]
    assert order == ["GET /pitches", "load", "SELECT pitches", "render"]  # children by start time
    assert by_name["render"].endswith(" !")
    assert not by_name["load"].endswith(" !")
    assert "[server, " in by_name["GET /pitches"]
    assert "[client, fast]" in by_name["SELECT pitches"]
    assert " ms " in by_name["load"]
    assert any(line.startswith("type=audit") and "action=view" in line for line in lines)


def test_pretty_separates_traces_and_orphans_become_roots() -> None:
    with captured() as mem:
        with pt.span("first"):
            pass
        remote = pt.TraceContext(0xFEED, 0xBEEF)
        with pt.span("orphan", context=remote):
            pass
    text = render_tree(mem.spans())
    lines = text.splitlines()
    assert sum(line.startswith("trace ") for line in lines) == 2
    assert f"trace {0xFEED:032x}" in lines
    orphan = next(line for line in lines if line.strip().startswith("orphan"))
    assert _indent(orphan) == 2
    assert render_tree([]) == ""


def test_pretty_through_the_pipeline() -> None:
    stream = io.StringIO()
    with captured(exporters=[pt.ConsoleExporter(stream, pretty=True)]), pt.span("solo"):
        pass
    out = stream.getvalue()
    assert out.startswith("trace ") or "\ntrace " in out
    assert "  solo  " in out


# -- failing streams ----------------------------------------------------------------------------
def test_closed_stream_returns_false() -> None:
    stream = io.StringIO()
    stream.close()
    exporter = pt.ConsoleExporter(stream)
    assert exporter.export([{"type": "custom"}]) is False
    exporter.force_flush()  # must not raise
    exporter.shutdown()


def test_broken_pipe_returns_false() -> None:
    exporter = pt.ConsoleExporter(BrokenPipeStream(), pretty=True)
    assert exporter.export([{"type": "audit", "action": "a"}]) is False


def test_closed_stream_in_the_pipeline_counts_export_failures_and_never_raises() -> None:
    stream = io.StringIO()
    stream.close()
    with captured(exporters=[pt.ConsoleExporter(stream)], rollups=None) as mem:
        for i in range(3):
            with pt.span(f"op {i}") as s:
                s.set_attribute("i", i)
    assert len(mem.spans()) == 3  # the other exporter is unaffected
    stats = pt.stats()
    assert stats["dropped.export_failed"] == 3
    assert stats["dropped.export_failed.console"] == 3
    assert stats["internal_errors"] == 0


def test_shutdown_leaves_the_callers_stream_open() -> None:
    stream = io.StringIO()
    with captured(exporters=[pt.ConsoleExporter(stream)]), pt.span("op"):
        pass
    assert not stream.closed
    assert '"name":"op"' in stream.getvalue()


def test_a_lone_surrogate_or_a_huge_int_does_not_cost_the_batch() -> None:
    # orjson refuses both (a str UTF-8 cannot carry; an int beyond 64 bits): once, that lost
    # every record of the batch. Now only the odd value changes (U+FFFD; the int is exact).
    out = io.StringIO()
    pt.configure(service="s", exporters=[pt.ConsoleExporter(stream=out)], rollups=None)
    with pt.span("before"):
        pass
    with pt.span("bad\ud800name", {"k": "v\udcff", "big": 1 << 70}):
        pass
    with pt.span("after"):
        pass
    assert pt.force_flush(5)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["name"] for r in lines] == ["before", "bad\ufffdname", "after"]
    assert lines[1]["attributes"] == {"k": "v\ufffd", "big": 1 << 70}
    assert pt.stats().get("dropped.export_failed", 0) == 0


def test_encode_ndjson_leaves_out_only_a_record_it_cannot_encode() -> None:
    from pitchey_trace import _json, _stats

    cyclic: dict[str, Any] = {"type": "custom"}
    cyclic["self"] = cyclic
    before = _stats.get("dropped.encode_error")
    text = _json.encode_ndjson([{"a": 1}, cyclic, {"b": "\ud83d\ude00"}, {"c": 1 << 64}])
    assert [json.loads(line) for line in text.splitlines()] == [{"a": 1}, {"b": "😀"}, {"c": 1 << 64}]
    assert _stats.get("dropped.encode_error") == before + 1
    assert (
        _json.dumps({"x": "\ud800", "n": -(1 << 65)}) == '{"x":"\ufffd","n":-36893488147419103232}'.encode()
    )


def test_nan_and_infinity_are_written_as_null_on_every_path() -> None:
    # NaN / Infinity are not JSON: a browser's JSON.parse or a collector refuses the whole
    # document. orjson writes null; the stdlib path (no orjson, or a value orjson refuses in
    # the same record) wrote NaN until now.
    from pitchey_trace import _json

    odd = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "ok": 1.5}
    expected = {"nan": None, "inf": [None, None], "ok": 1.5}
    assert json.loads(_json.lenient_dumps(odd), parse_constant=lambda c: pytest.fail(c)) == expected
    both = _json.dumps({**odd, "big": 1 << 70})  # the int sends it down the stdlib path
    assert json.loads(both, parse_constant=lambda c: pytest.fail(c)) == {**expected, "big": 1 << 70}
