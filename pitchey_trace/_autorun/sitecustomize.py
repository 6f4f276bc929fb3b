"""Started by ``pitchey-trace run`` through ``PYTHONPATH``: instrument this interpreter, then
run the ``sitecustomize`` that was on the path before ours, if any. Never fails the program."""

import os
import sys

try:
    from pitchey_trace.auto import _start_from_environment

    _start_from_environment()
except Exception as exc:  # (pitchey_trace not importable here: run the program untraced)
    sys.stderr.write(f"pitchey-trace run: tracing not started: {exc!r}\n")

# Chain to the next sitecustomize on the path, as if ours were not there.
_here = os.path.dirname(os.path.abspath(__file__))
try:
    import importlib.machinery
    import importlib.util

    _rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["sitecustomize"] = _module
        _spec.loader.exec_module(_module)
except Exception as exc:
    sys.stderr.write(f"pitchey-trace run: the application's sitecustomize failed: {exc!r}\n")
