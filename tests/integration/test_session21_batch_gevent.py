"""Session 21: ``os.fork()`` in a program that ran gevent's ``monkey.patch_all()``. The SDK's
fork hook (registered when it is imported) started the child's worker threads before gevent's
own hook ran (registered later, by ``patch_all()``), which requires one thread only: it printed
``Exception ignored ... AssertionError`` and skipped its clean-up. The child must fork quietly
and still export, whichever came first, and a plain fork without gevent keeps working
(tests/unit/test_fork.py). Each program runs in a process of its own (``patch_all()`` is for a
whole process) and exports over OTLP/HTTP JSON to a collector on 127.0.0.1 in the test's
process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.integration import test_session21_gevent as gevent_tests
from tests.support.otlp_json import JsonSpanCollector

pytestmark = pytest.mark.integration

collector = gevent_tests.collector  # (a JsonSpanCollector on 127.0.0.1)
run = gevent_tests.run  # (a program in a child process, both modes)


# argv: collector url, order. The parent forks two children; the first forks a grandchild.
# Each process ends a few spans named after it and shuts down; the parent prints what each
# child's shutdown returned.
PROGRAM = """
import os, sys, threading
url, order = sys.argv[1], sys.argv[2]
if order == "patch_all_first":  # (the SDK imported after it: its hook runs after gevent's)
    from gevent import monkey; monkey.patch_all()
import pitchey_trace as pt
from pitchey_trace.exporters import OTLPExporter

def configure():
    pt.configure(
        service="forky",
        exporters=[OTLPExporter(url, protocol="http/json", compression=None)],
        rollups=None,
    )

if order == "configure_first":  # (pitchey-trace run gunicorn -k gevent --preload)
    configure()
if order in ("configure_first", "import_first"):
    from gevent import monkey; monkey.patch_all()
if order != "configure_first":
    configure()
if order == "no_gevent":
    assert "gevent" not in sys.modules

def work(name):
    for _ in range(3):
        with pt.span(name):
            pass

def fork(name, then=None):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # (started by the fork hooks, before any span or flush could start them)
            threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("pitchey"))
            print(name, "threads", *threads, flush=True)
            work(name)
            if then is not None:
                then()
            code = 0 if pt.shutdown(20) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(name, os.waitstatus_to_exitcode(status), flush=True)

work("parent")
fork("child1", then=lambda: fork("grandchild"))
fork("child2")
print("parent shut down", pt.shutdown(20), flush=True)
"""


@pytest.mark.parametrize("order", ["configure_first", "import_first", "patch_all_first", "no_gevent"])
def test_forked_children_export_quietly_after_patch_all(
    tmp_path: Path, collector: JsonSpanCollector, order: str
) -> None:
    done = run(tmp_path, PROGRAM, collector.url, order)
    assert done.returncode == 0, done.stderr
    # Before, with the SDK imported before patch_all(): gevent's fork hook failed in each child
    # ("Exception ignored in ... after_fork_in_child ... AssertionError").
    assert done.stderr == ""
    threads = "threads pitchey-trace-export-otlp pitchey-trace-pipeline"
    assert done.stdout.splitlines() == [
        f"child1 {threads}",
        f"grandchild {threads}",
        "grandchild 0",
        "child1 0",
        f"child2 {threads}",
        "child2 0",
        "parent shut down True",
    ]
    # Every process exported its own spans, once each, from its own pid.
    assert Counter(s["name"] for s in collector.spans) == {
        "parent": 3,
        "child1": 3,
        "grandchild": 3,
        "child2": 3,
    }
    pids = {
        name: {s["pid"] for s in collector.spans if s["name"] == name}
        for name in ("parent", "child1", "grandchild", "child2")
    }
    assert all(len(p) == 1 for p in pids.values())
    assert len(set().union(*pids.values())) == 4
