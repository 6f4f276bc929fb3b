"""The package as a user gets it: a wheel built from this tree and installed without any extra,
then used from outside the source tree by an interpreter that sees no other package. Guards
what the tests that import from the tree cannot see: package data (``py.typed``, the schema,
the analysis pages), the compiled accelerator, the console script's entry point, and that the
core runs with no third-party dependency at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]

USER_CODE = textwrap.dedent(
    """
    import importlib.resources, io, json, os, sys
    from contextlib import redirect_stderr, redirect_stdout

    site = os.environ["SITE"]
    import pitchey_trace as pt
    assert pt.__file__.startswith(site), pt.__file__
    for name in ("orjson", "starlette", "psycopg", "boto3", "opentelemetry"):  # no extra is installed
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise AssertionError(name + " is importable: the check is not isolated")

    from pitchey_trace import _accel
    assert _accel.build_span_records is not None, "the C accelerator is missing from the wheel"
    files = importlib.resources.files("pitchey_trace")
    assert (files / "py.typed").is_file()
    assert "span" in json.loads((files / "schema" / "record-v1.json").read_text())["$defs"]
    for page in ("index.html", "trace.html", "app.js", "style.css"):
        assert (files / "analysis" / "static" / page).read_text().strip(), page
    assert "_start_from_environment" in (files / "_autorun" / "sitecustomize.py").read_text()
    import pitchey_trace.auto as auto
    auto.instrument_all(configure=False)  # no supported library is installed: the stdlib's only
    assert auto.instrumented() == {"logging", "threading"}

    from pitchey_trace.exporters.memory import InMemoryExporter
    mem = InMemoryExporter()
    pt.configure(service="packaged", exporters=[mem])
    with pt.span("checkout", {"card": "4111 1111 1111 1111"}):
        with pt.span("charge"):
            pass
    assert pt.force_flush(10)
    spans = {r["name"]: r for r in mem.spans()}
    assert spans["charge"]["parent_span_id"] == spans["checkout"]["span_id"]
    assert "4111" not in json.dumps(spans["checkout"]), "the default sanitizer did not run"
    pt.shutdown()

    from pitchey_trace.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["--version"])
        except SystemExit as exc:
            assert exc.code == 0
        code = main(["serve", "--archive", site])  # the analysis extra is not installed
    assert out.getvalue().strip() == "pitchey-trace " + pt.__version__
    assert code == 2 and "pip install 'pitchey-trace[analysis]'" in err.getvalue(), err.getvalue()
    try:
        import pitchey_trace.otel  # noqa: F401  (needs the otel-api extra)
    except ImportError as exc:
        assert "pip install 'pitchey-trace[otel-api]'" in str(exc), exc
    else:
        raise AssertionError("pitchey_trace.otel imported without opentelemetry-api")
    guarded = (
        ("pitchey_trace.celery", "celery"),
        ("pitchey_trace.db", "postgres"),
        ("pitchey_trace.redis", "redis"),
        ("pitchey_trace.botocore", "s3"),
        ("pitchey_trace.grpc", "grpc"),
        ("pitchey_trace.amqp", "amqp"),
    )
    for module, extra in guarded:
        try:
            __import__(module)
        except ImportError as exc:
            assert f"pip install 'pitchey-trace[{extra}]'" in str(exc), exc
        else:
            raise AssertionError(f"{module} imported without its driver")
    print("ok")
    """
)


def test_wheel_installs_and_runs_without_extras(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "pitchey_trace",
        src / "pitchey_trace",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=600,
    )
    [wheel] = (tmp_path / "dist").glob("pitchey_trace-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    entry = next(site.glob("pitchey_trace-*.dist-info")) / "entry_points.txt"
    assert "pitchey-trace = pitchey_trace.cli:main" in entry.read_text()
    assert "MIT License" in next(site.glob("pitchey_trace-*.dist-info/licenses/LICENSE")).read_text()
    # -S: no site module, so none of this environment's packages; -s: no user site either.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PITCHEY_TRACE_", "OTEL_"))}
    env.update(PYTHONPATH=str(site), SITE=str(site))
    run = subprocess.run(
        [sys.executable, "-S", "-s", "-c", USER_CODE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")
