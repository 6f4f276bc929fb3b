"""A new user's walkthrough of quickstart.md, configuration.md, middleware.md and README.md,
from a built wheel in a fresh virtualenv: the claims it found untrue, pinned to what the code
does. (``tests/test_session19_walkthrough.py`` pins the previous walkthrough's findings;
``tests/test_docs_snippets.py`` runs the code blocks.)"""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def page(name: str) -> str:
    """A docs page with its line breaks and indentation folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", (DOCS / name).read_text(encoding="utf-8"))


def keyword_options(function: object) -> set[str]:
    return {
        p.name
        for p in inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        if p.kind is p.KEYWORD_ONLY
    }


def test_init_aiohttp_takes_the_asgi_options_but_error_response() -> None:
    """middleware.md said ``init_aiohttp(app, **options)`` takes "the options of
    ``ASGITracingMiddleware``"; ``error_response`` is not one of them (aiohttp answers an
    unhandled exception with its own 500 page), and passing it is a ``TypeError``."""
    from aiohttp import web

    from pitchey_trace.web import ASGITracingMiddleware, aiohttp_middleware, init_aiohttp

    asgi = keyword_options(ASGITracingMiddleware.__init__)
    assert asgi - keyword_options(aiohttp_middleware) == {"error_response"}
    assert keyword_options(aiohttp_middleware) <= asgi
    with pytest.raises(TypeError, match="error_response"):
        init_aiohttp(web.Application(), error_response=False)
    assert (
        "`init_aiohttp(app, **options)` (the options of `ASGITracingMiddleware` but `error_response`"
        in page("middleware.md")
    )


SIGTERMED = textwrap.dedent(
    """
    import os, signal, time
    import pitchey_trace as pt
    import pitchey_trace.auto

    pitchey_trace.auto.instrument_all()
    with pt.span("before_sigterm"):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # (the signal ends the process first)
    """
)


@pytest.mark.parametrize("flush_variable", [None, "true"])
def test_instrument_all_leaves_the_sigterm_flush_to_the_variable(
    flush_variable: str | None, tmp_path: Path
) -> None:
    """quickstart.md said ``auto.instrument_all()`` "does the same" as ``pitchey-trace run``;
    it does not turn the SIGTERM flush on (only ``run`` sets the variable): without
    ``PITCHEY_TRACE_FLUSH_ON_SIGTERM=true`` a SIGTERM loses the buffered span, with it the span
    is exported. Either way the process ends by the signal."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PITCHEY_TRACE_EXPORTER": "console"}
    if os.environ.get("PITCHEY_TRACE_PURE_PYTHON"):
        env["PITCHEY_TRACE_PURE_PYTHON"] = os.environ["PITCHEY_TRACE_PURE_PYTHON"]
    if flush_variable is not None:
        env["PITCHEY_TRACE_FLUSH_ON_SIGTERM"] = flush_variable
    script = tmp_path / "sigtermed.py"
    script.write_text(SIGTERMED)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert ('"name":"before_sigterm"' in proc.stdout) is (flush_variable is not None), proc.stdout
    text = page("quickstart.md")
    assert (
        "pitchey_trace.auto.instrument_all()` first thing at startup does the same, but for the SIGTERM flush"
        in text
    )
    assert "without `PITCHEY_TRACE_FLUSH_ON_SIGTERM=true`" in text
