"""Session 21: the analytics exporter's cheaper point building gives the same points (checked
against the straightforward mapping, over any values), never fails on an int beyond a double;
the payload spool records each request's item count in its file name (read back by the next
owner, files of earlier versions still taken over)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pitchey_trace import _stats
from pitchey_trace._json import valid_text
from pitchey_trace.exporters import HttpAnalyticsExporter
from pitchey_trace.exporters._http import HttpResult
from pitchey_trace.exporters._spool import PayloadSpool
from pitchey_trace.exporters.http_analytics import DEFAULT_COMPRESSLEVEL, to_data_point

# -- the reference mapping: the documented columns, one plain step at a time -------------------


def _ref_text(value: Any, limit: int) -> str:
    text = "" if value is None else value if isinstance(value, str) else str(value)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: U+FFFD, as the JSON encoding writes them
        text = valid_text(text)
        raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _ref_num(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            f = float(value)
        except OverflowError:
            return 0.0
        return f if math.isfinite(f) else 0.0
    return 0.0


def reference_span_point(r: dict[str, Any], limit: int = 256) -> dict[str, Any]:
    a, res = r.get("attributes") or {}, r.get("resource") or {}
    blobs = ["span"] + [r.get(k) for k in ("service", "environment", "name", "kind", "status", "category")]
    blobs += [r.get(k) for k in ("trace_id", "span_id", "parent_span_id")]
    blobs += [a.get(k) for k in ("http.request.method", "http.route", "db.system.name", "db.operation.name")]
    blobs += [a.get(k) for k in ("db.collection.name", "server.address", "error.type")]
    blobs += [r.get("status_message"), res.get("service.version"), res.get("host.name")]
    index = f"{_ref_text(r.get('service'), 10**9)}:{_ref_text(r.get('name'), 10**9)}"
    return {
        "indexes": [_ref_text(index, 96)],
        "blobs": [_ref_text(b, limit) for b in blobs],
        "doubles": [
            _ref_num(r.get("duration_ms")),
            _ref_num(r.get("start_time_unix_nano", 0)) / 1e6,
            1.0 if r.get("status") == "error" else 0.0,
            _ref_num(a.get("http.response.status_code")),
            _ref_num(a.get("db.response.returned_rows")),
            1.0,
            1.0 if r.get("category") in ("slow", "very_slow") else 0.0,
            float(len(r.get("events") or ())),
        ],
    }


class StrSub(str):
    pass


values = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="ascii"), max_size=300),
    st.text(alphabet="é\ud800x", max_size=200),
    st.integers(),
    st.integers(min_value=2**1020, max_value=2**1100),
    st.booleans(),
    st.floats(),
    st.builds(StrSub, st.text(max_size=20)),
)
span_records = st.fixed_dictionaries(
    {"type": st.just("span")},
    optional={
        k: values
        for k in (
            "service",
            "environment",
            "name",
            "kind",
            "status",
            "category",
            "trace_id",
            "span_id",
            "parent_span_id",
            "status_message",
            "duration_ms",
            "start_time_unix_nano",
        )
    }
    | {
        "attributes": st.dictionaries(
            st.sampled_from(
                [
                    "http.request.method",
                    "http.route",
                    "http.response.status_code",
                    "db.response.returned_rows",
                    "db.system.name",
                    "error.type",
                    "server.address",
                ]
            ),
            values,
        ),
        "resource": st.dictionaries(st.sampled_from(["service.version", "host.name"]), values),
        "events": st.lists(st.just({}), max_size=3),
    },
)


def _same(x: Any, y: Any) -> bool:
    return x.__class__ is y.__class__ and (
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
    )


@settings(max_examples=400, deadline=None)
@given(span_records, st.sampled_from([1, 7, 256]))
def test_span_points_are_the_documented_columns_for_any_values(record: dict[str, Any], limit: int) -> None:
    point = to_data_point(record, limit)
    expected = reference_span_point(record, limit)
    assert point is not None
    assert point == expected
    for got, want in zip(
        point["blobs"] + point["doubles"], expected["blobs"] + expected["doubles"], strict=True
    ):
        assert type(got) in (str, StrSub, float)
        assert _same(got, want) or (isinstance(want, str) and got == want)


def test_an_int_beyond_a_double_is_0_not_a_failed_batch() -> None:
    # (float() raises OverflowError for it: the whole batch was lost on that one attribute)
    huge = 10**400
    record = {"type": "span", "start_time_unix_nano": huge, "attributes": {"http.response.status_code": huge}}
    point = to_data_point(record)
    assert point is not None
    assert point["doubles"][1] == 0.0
    assert point["doubles"][3] == 0.0
    rollup = to_data_point({"type": "rollup", "count": -huge, "duration_sum_ms": huge})
    assert rollup is not None
    assert rollup["doubles"][0] == 0.0
    assert rollup["doubles"][5] == 0.0


def test_the_default_gzip_level_is_the_cheapest() -> None:
    exporter = HttpAnalyticsExporter("http://127.0.0.1:9/ingest")
    try:
        assert DEFAULT_COMPRESSLEVEL == 1
        assert exporter._sender.compresslevel == 1
        assert HttpAnalyticsExporter("http://127.0.0.1:9/i", compresslevel=6)._sender.compresslevel == 6
    finally:
        exporter.shutdown()


# -- the payload spool's item counts -----------------------------------------------------------


def _spool(path: Path, rejected: list[int] | None = None, max_bytes: int = 1 << 20) -> PayloadSpool:
    return PayloadSpool(
        path,
        tag="payload-s21",
        counter="s21",
        items_counter="s21.items",
        max_bytes=max_bytes,
        rejected=None if rejected is None else rejected.append,
    )


def test_the_item_count_is_in_the_file_name_and_read_back_by_the_next_owner(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    assert first.put(b"a" * 10, 7)
    assert first.put(b"b" * 10, 250)
    names = sorted(p.name for p in tmp_path.glob("*.ready"))
    assert [n.rsplit(".", 2)[1].rsplit("_", 1)[1] for n in names] == ["7", "250"]
    first.close()  # (its lock released: as a process that died)

    rejected: list[int] = []
    second = _spool(tmp_path, rejected)
    assert len(second) == 2
    assert _stats.get("s21.spool_recovered") == 2
    # The names keep the count when taken over (a third owner would read it too).
    names = sorted(p.name for p in tmp_path.glob("*.ready"))  # (by owner, then sequence)
    assert [n.rsplit(".", 2)[1].rsplit("_", 1)[1] for n in names] == ["7", "250"]
    answers = [HttpResult(False, 400, rejected=True), HttpResult(True, 200)]
    second.drain(lambda payload: answers.pop(0), time.monotonic() + 5)
    assert rejected == [7]  # refused: not sent again, its items dropped
    assert _stats.get("s21.items") == 250
    assert len(second) == 0
    assert not list(tmp_path.glob("*.ready"))
    second.close()


def test_a_file_without_a_count_is_taken_over_and_sent_uncounted(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    assert first.put(b"x" * 10, 3)
    first.close()
    (path,) = tmp_path.glob("*.ready")
    old_name = path.name.removesuffix(".ready").rpartition("_")[0] + ".ready"  # an earlier version's
    path.rename(tmp_path / old_name)
    second = _spool(tmp_path)
    assert len(second) == 1
    sent: list[bytes] = []
    second.drain(lambda payload: (sent.append(payload), HttpResult(True, 200))[1], time.monotonic() + 5)
    assert sent == [b"x" * 10]
    assert _stats.get("s21.spool_sent") == 1
    assert _stats.get("s21.items") == 0
    second.close()


def test_recovered_items_dropped_by_a_smaller_cap_are_counted(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    assert first.put(b"a" * 100, 40)
    assert first.put(b"b" * 100, 60)
    first.close()
    second = _spool(tmp_path, max_bytes=150)
    assert len(second) == 1
    assert _stats.get("dropped.spool_cap") == 40
    second.close()


def test_missing_parents_of_a_spool_dir_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """``mkdir -p`` made missing parents as the umask said: under umask 0 an intermediate
    directory was world-writable (another user could rename the spool directory out of it)."""
    import stat
    import subprocess
    import sys

    code = (
        "import os, sys; from pathlib import Path; os.umask(0)\n"
        "from pitchey_trace.exporters._spool import check_private_dir\n"
        "check_private_dir(Path(sys.argv[1]) / 'a' / 'b' / 'spool', strict=False)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "spool"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
