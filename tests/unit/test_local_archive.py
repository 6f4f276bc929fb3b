"""LocalArchiveExporter: Logpush layout in a real directory, atomic files, fork safety."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema

import pitchey_trace as pt
from pitchey_trace.exporters import LocalArchiveExporter
from pitchey_trace.processors import Rollups
from pitchey_trace.records import json_schema

NAME = re.compile(r"^\d{8}T\d{6}Z_\d{8}T\d{6}Z_[0-9a-f]{16}\.log\.gz$")


def read_archive(root: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = path.relative_to(root).parts
            assert len(rel) == 3
            assert NAME.match(rel[2])
            assert rel[1] == rel[2][:8]
            lines = gzip.decompress(path.read_bytes()).splitlines()
            out.setdefault(rel[0], []).extend(json.loads(x) for x in lines)
    return out


def test_pipeline_writes_every_dataset_in_logpush_layout(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    pt.configure(service="demo", exporters=[LocalArchiveExporter(root)], rollups=Rollups())
    for i in range(50):
        with pt.span("step") as s:
            s.set_attribute("i", i)
    pt.emit_audit("export", "report", "ok")
    assert pt.force_flush(10)
    pt.shutdown(5)
    data = read_archive(root)
    assert sorted(data) == ["audit", "performance", "traces"]
    assert sorted(r["attributes"]["i"] for r in data["traces"]) == list(range(50))
    assert sum(r["count"] for r in data["performance"]) == 50
    for rs in data.values():
        for r in rs:
            jsonschema.validate(r, json_schema())
    assert not [p for p in root.rglob("*.tmp")]  # written via temp file + rename
    assert pt.stats()["local_archive.uploaded"] == 50 + 1 + len(data["performance"])


def test_forked_child_and_parent_each_archive_their_own_records_once(tmp_path: Path) -> None:
    root, spool = tmp_path / "a", tmp_path / "s"
    exp = LocalArchiveExporter(root, spool_dir=spool)
    exp.export([{"type": "span", "who": "parent-before"}])  # open batch, inherited by the child
    pid = os.fork()
    if pid == 0:  # child: the exporter notices the new pid and starts fresh
        code = 1
        try:
            exp.export([{"type": "span", "who": "child"}])
            exp.shutdown(5)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    exp.export([{"type": "span", "who": "parent-after"}])
    exp.shutdown(5)
    who = sorted(r["who"] for r in read_archive(root)["traces"])
    assert who == ["child", "parent-after", "parent-before"]
