"""A new user's walkthrough of the docs (quickstart, configuration, middleware, propagation,
sanitizing, api): what the pages say is what the code does, where the walkthrough found them
apart. ``tests/test_docs_snippets.py`` runs the code blocks of every page but
``sanitizing.md``; its one block runs here."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import pitchey_trace as pt
from pitchey_trace import sanitize
from pitchey_trace.exporters import InMemoryExporter

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WALKED = ("quickstart.md", "configuration.md", "middleware.md", "propagation.md", "sanitizing.md")


def page(name: str) -> str:
    """A docs page with its line breaks and indentation folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", (DOCS / name).read_text(encoding="utf-8"))


def python_blocks(name: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (DOCS / name).read_text(encoding="utf-8"), re.M | re.S)


def test_api_md_has_a_section_for_each_public_module_the_user_docs_use() -> None:
    """api.md says names it does not list are private; the modules the user pages import or
    name (``from pitchey_trace import sanitize``, ``pitchey_trace.sampling``...) are listed, so
    ``tests/test_public_api.py`` checks their ``__all__`` too."""
    sections = set(re.findall(r"^## (pitchey_trace[\w.]*)\s*$", (DOCS / "api.md").read_text(), re.M))
    used: dict[str, str] = {}
    for name in WALKED:
        text = (DOCS / name).read_text(encoding="utf-8")
        modules = set(re.findall(r"\bfrom (pitchey_trace(?:\.\w+)+) import", text))
        modules |= set(re.findall(r"\bimport (pitchey_trace(?:\.\w+)+)", text))
        modules |= set(re.findall(r"`(pitchey_trace(?:\.\w+)+)`", text))
        modules |= {f"pitchey_trace.{m}" for m in re.findall(r"\bfrom pitchey_trace import (\w+)", text)}
        for module_name in modules:
            if any(part.startswith("_") for part in module_name.split(".")):
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue  # a name inside a module (`pitchey_trace.web.set_route`), not a module
            if isinstance(module, types.ModuleType) and hasattr(module, "__all__"):
                used.setdefault(module_name, name)
    assert {"pitchey_trace.propagation", "pitchey_trace.sanitize", "pitchey_trace.sampling"} <= set(used)
    missing = {m: used[m] for m in used if m not in sections}
    assert not missing, f"modules the docs use but api.md does not list: {missing}"


def test_sanitizing_md_block_runs_and_masks_what_its_comments_say(monkeypatch: pytest.MonkeyPatch) -> None:
    [block] = python_blocks("sanitizing.md")
    memory = InMemoryExporter()
    target = 'pt.configure(\n    service="pitch-api",\n    sanitizer='
    assert target in block
    block = block.replace(
        target, 'pt.configure(\n    service="pitch-api",\n    exporters=[memory],\n    sanitizer='
    )
    monkeypatch.setenv("PT_HASH_KEY", "a-key-of-16-byte")
    exec(compile(block, "docs/sanitizing.md", "exec"), {"memory": memory})  # noqa: S102
    with pt.span(
        "checkout",
        attributes={
            "internal_note": "vip",
            "salary": 100,
            "session.id": "s-17",
            "msg": "EMP-123456 ann@example.com 4111 1111 1111 1111 from 10.1.2.3",
        },
    ):
        pass
    pt.shutdown()
    [span] = memory.spans()
    attributes = span["attributes"]
    assert (attributes["internal_note"], attributes["salary"]) == ("[REDACTED]", "[REDACTED]")
    assert attributes["session.id"] == "s-17"  # allow=
    assert re.fullmatch(
        r"\[EMPLOYEE\] hash:[0-9a-f]{16} \[CARD \*\*\*\*1111\] from \[IP\]", attributes["msg"]
    )


def test_hashed_key_length_is_documented() -> None:
    """sanitizing.md's hashed mode: a key shorter than 8 bytes is refused, as the page says."""
    with pytest.raises(ValueError, match="8 bytes"):
        sanitize.hashed(key="7 bytes")
    assert sanitize.hashed(key="8 bytes!")
    assert "must be at least 8 bytes long" in page("sanitizing.md")


def test_sanitizing_md_becomes_examples() -> None:
    """Every "`X` becomes `Y`" of sanitizing.md that is a whole text (no "..." elided) is what
    ``Sanitizer().scrub`` gives (on both the compiled and the pure-Python runs)."""
    pairs = re.findall(r"`([^`]+)` becomes `([^`]+)`", page("sanitizing.md"))
    checked = 0
    scrubber = sanitize.Sanitizer()
    for text, expected in pairs:
        if "..." in text or text.startswith("IN ("):  # elided, or SQL (db.query.text only)
            continue
        assert scrubber.scrub(text) == expected, text
        checked += 1
    assert checked >= 10


def test_middleware_md_names_every_option_of_the_middleware() -> None:
    from pitchey_trace.web import ASGITracingMiddleware, WSGITracingMiddleware

    text = page("middleware.md")
    for cls in (ASGITracingMiddleware, WSGITracingMiddleware):
        options = [
            p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
        ]
        assert "trace_id_header" in options
        for option in options:
            assert re.search(rf"`{option}(=[^`]*)?`", text), (
                f"{cls.__name__}({option}=) is not in middleware.md"
            )


def test_exported_log_outside_a_span_has_trace_flags_0_as_middleware_md_says() -> None:
    from pitchey_trace.web import export_logs, stop_export_logs

    memory = InMemoryExporter()
    pt.configure(service="docs", exporters=[memory])
    export_logs("INFO")
    try:
        logging.getLogger("walkthrough").warning("outside any span")
    finally:
        stop_export_logs()
    pt.shutdown()
    [record] = [r for r in memory.records if r["type"] == "log"]
    assert (record["trace_id"], record["span_id"], record["trace_flags"]) == (None, None, 0)
    assert "`trace_id` and `span_id` are None and `trace_flags` is 0" in page("middleware.md")


@pytest.mark.parametrize(
    ("value", "detected"), [("false", False), ("OFF", False), ("0", False), ("yes", True), ("flase", None)]
)
def test_resource_detection_values_of_configuration_md(
    value: str, detected: bool | None, tmp_path: Path
) -> None:
    """``PITCHEY_TRACE_RESOURCE_DETECTION``: the values configuration.md lists turn detection
    off or on; any other value is refused with one line (None: refused)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pitchey_trace.cli", "config", "--json"],
        env={"PATH": "/usr/bin:/bin", "PITCHEY_TRACE_RESOURCE_DETECTION": value, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if detected is None:
        assert proc.returncode == 2, proc.stderr
        assert "PITCHEY_TRACE_RESOURCE_DETECTION must be true or false, got 'flase'" in proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert ("os.type" in json.loads(proc.stdout)["resource"]) is detected
    assert "any other value (a typo such as `flase`) is a `ConfigurationError` at `configure()`" in page(
        "configuration.md"
    )


DJANGO_PROJECT = textwrap.dedent(
    """
    import json, sys
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        SECRET_KEY="test-only",
        MIDDLEWARE=["pitchey_trace.web.django.PitcheyRouteMiddleware"],
    )
    django.setup()

    import httpx
    from django.http import JsonResponse
    from django.urls import path

    from pitchey_trace.testing import capture_spans
    from pitchey_trace.web import WSGITracingMiddleware
    from django.core.wsgi import get_wsgi_application
    from tests.integration.web.conftest import run_waitress


    def get_pitch(request, pitch_id):
        return JsonResponse({"id": pitch_id})


    urlpatterns = [path("pitches/<int:pitch_id>/", get_pitch)]

    with capture_spans() as memory:
        with run_waitress(WSGITracingMiddleware(get_wsgi_application())) as server:
            assert httpx.get(server.url + "/pitches/7/").status_code == 200
    print(json.dumps([(s["name"], s["attributes"].get("http.route")) for s in memory.spans()]))
    """
)


@pytest.mark.integration
def test_django_snippet_names_the_span_django_gives(tmp_path: Path) -> None:
    """examples/django_settings_snippet.py says which span a URL pattern gives; a Django
    project served by waitress gives that one."""
    import examples.django_settings_snippet as snippet

    doc = re.sub(r"\s+", " ", snippet.__doc__ or "")
    [shown] = re.findall(r"the span ``(GET [^`]+)``", doc)
    script = tmp_path / "project.py"
    script.write_text(DJANGO_PROJECT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [(name, route)] = json.loads(proc.stdout.splitlines()[-1])
    assert name == shown == "GET /pitches/<int:pitch_id>/"
    assert route == "/pitches/<int:pitch_id>/"
