# Every target creates/updates .venv first (scripts/bootstrap.sh), so a fresh clone needs only `make`.
PY := .venv/bin/python
.PHONY: setup demo test test-unit lint typecheck bench bench-setup clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) examples/demo.py

test:
	@WITH_BROWSER=1 bash scripts/bootstrap.sh
	$(PY) -m pytest -q -n 2 --dist loadgroup tests
	@echo "unit tests again on the pure-Python paths (no C accelerator):"
	PITCHEY_TRACE_PURE_PYTHON=1 $(PY) -m pytest -q -n 2 -p no:cacheprovider tests/unit --ignore=tests/unit/test_speedups.py

test-unit: setup
	$(PY) -m pytest -q tests/unit

# The unit tests on every CPython >= 3.10 found (pyenv or PATH), with and without the C
# accelerator, each in its own venv and copy of the tree under $TMPDIR (not part of `make test`).
.PHONY: test-versions
test-versions:
	bash scripts/test_versions.sh

lint: setup
	$(PY) -m ruff check pitchey_trace tests examples bench
	$(PY) -m ruff format --check pitchey_trace tests examples bench
	$(PY) -m mypy pitchey_trace

typecheck: setup
	$(PY) -m mypy pitchey_trace tests/typing

bench-setup:
	@EXTRA_EXTRAS=,bench bash scripts/bootstrap.sh

bench: bench-setup
	$(PY) bench/run_all.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache var build pitchey_trace/*.so
