"""Each public module's ``__all__`` equals the names documented in docs/api.md, and every
documented name exists and has a docstring."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in API_DOC.read_text().splitlines():
        heading = re.match(r"^## (pitchey_trace[\w.]*)\s*$", line)
        if heading:
            current = heading.group(1)
            sections[current] = []
            continue
        item = re.match(r"^- `([\w.]+)`", line)
        if item and current:
            sections[current].append(item.group(1))
    return sections


DOCS = documented()


def test_doc_lists_the_main_modules() -> None:
    assert {"pitchey_trace", "pitchey_trace.exporters", "pitchey_trace.testing"} <= set(DOCS)


@pytest.mark.parametrize("module_name", sorted(DOCS))
def test_all_equals_documented_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = DOCS[module_name]
    assert len(names) == len(set(names)), "a name is documented twice"
    assert sorted(module.__all__) == sorted(names)
    for name in names:
        obj = getattr(module, name)
        if callable(obj):
            assert obj.__doc__, f"{module_name}.{name} has no docstring"


def test_private_modules_stay_private() -> None:
    import pitchey_trace as pt

    assert not [n for n in pt.__all__ if n.startswith("_") and n != "__version__"]
