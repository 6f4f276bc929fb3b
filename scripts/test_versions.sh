#!/usr/bin/env bash
# Runs the unit tests on every CPython >= 3.10 found here (pyenv versions, then python3.X on
# PATH), with the C accelerator and on the pure-Python paths (PITCHEY_TRACE_PURE_PYTHON=1).
# For each version: a copy of the tree (the repository itself is never built into), a venv
# with the `dev` extra from PyPI, the C extension built in the copy with its compiler output
# kept, then the two test runs. Not part of `make test` (CI runs CPython 3.11 only).
#
#   VERSIONS="3.10 3.13"  only these minor versions (default: all found)
#   WORKDIR=/tmp/x        where the copies, venvs and logs go (default: $TMPDIR/pitchey-versions)
#   JOBS=2                pytest-xdist workers (default: 0, serial)
#   PYTEST_ARGS="-x"      extra pytest arguments
#   REUSE=1               keep an existing venv of a version (default: made again)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORKDIR:-${TMPDIR:-/tmp}/pitchey-versions}
jobs=${JOBS:-0}
mkdir -p "$work"

declare -A found=()
order=()
add() { # add PYTHON: remembers it under its minor version (first one found wins)
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) and sys.implementation.name == "cpython" else None' 2>/dev/null) || return 0
  [ -n "$v" ] && [ "$v" != None ] || return 0
  if [ -n "${VERSIONS:-}" ] && [[ " $VERSIONS " != *" $v "* ]]; then return 0; fi
  if [ -z "${found[$v]:-}" ]; then
    found[$v]=$1
    order+=("$v")
  fi
}
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for py in $(ls -d "$pyenv_root"/versions/*/bin/python3.[0-9]* 2>/dev/null | grep -E 'python3\.[0-9]+$' | sort -rV); do
  add "$py"
done
for minor in $(seq 10 20); do
  py=$(command -v "python3.$minor" 2>/dev/null) && add "$py"
done
if [ "${#order[@]}" -eq 0 ]; then
  echo "no CPython >= 3.10 found${VERSIONS:+ among: $VERSIONS}" >&2
  exit 1
fi
mapfile -t order < <(printf '%s\n' "${order[@]}" | sort -V)

# "N passed, M failed, ..." -> "passed=N failed=M error=E skipped=S"
counts() {
  local line
  line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)|^(=+ )?(no tests ran)' "$1" | tail -1)
  local word n out=""
  for word in passed failed error skipped; do
    n=$(grep -oE "[0-9]+ ${word}" <<<"$line" | cut -d' ' -f1)
    out+="${word}=${n:-0} "
  done
  printf '%s' "${out% }"
}

status=0
results=()
for v in "${order[@]}"; do
  py=${found[$v]}
  tag=${v/./}
  tree="$work/tree$tag"
  venv="$work/venv$tag"
  log="$work/log$tag"
  mkdir -p "$log"
  echo "== Python $v ($py)"
  # A fresh copy of the tree without local builds, venvs or caches (tar: rsync may be missing).
  rm -rf "$tree" && mkdir -p "$tree"
  (cd "$repo" && tar -c --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./var \
    --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis .) | tar -x -C "$tree"
  if [ "${REUSE:-}" != 1 ] || [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    if ! { "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip &&
      "$venv/bin/python" -m pip install -q "$tree[dev]"; } >"$log/install.txt" 2>&1; then
      echo "   install failed (a dependency without a wheel or sdist for $v?): $log/install.txt"
      tail -5 "$log/install.txt"
      results+=("$v|install failed|-|-|-")
      status=1
      continue
    fi
  fi
  # The accelerator, built where the tests import it from (the copy's own directory).
  if ! (cd "$tree" && "$venv/bin/python" setup.py -q build_ext --inplace) >"$log/build.txt" 2>&1; then
    echo "   C build failed: $log/build.txt"
    status=1
  fi
  warnings=$(grep -cE 'warning:|error:' "$log/build.txt" || true)
  if [ "$warnings" != 0 ]; then
    echo "   compiler: $warnings warning/error line(s):"
    grep -E 'warning:|error:' "$log/build.txt" | sed 's/^/     /'
    status=1
  fi
  for mode in C pure; do
    env_mode=()
    extra=()
    if [ "$mode" = pure ]; then
      env_mode=(PITCHEY_TRACE_PURE_PYTHON=1)
      extra=(--ignore=tests/unit/test_speedups.py)
    elif ! (cd "$tree" && "$venv/bin/python" -c \
      'import pitchey_trace._accel as a, sys; sys.exit(a.build_span_records is None)'); then
      echo "   C accelerator not loaded on $v: the C run would test Python"
      results+=("$v|$mode|not loaded|-|-")
      status=1
      continue
    fi
    xdist=()
    [ "$jobs" != 0 ] && xdist=(-n "$jobs")
    start=$(date +%s)
    (cd "$tree" && env "${env_mode[@]}" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
      "${xdist[@]}" tests/unit "${extra[@]}" ${PYTEST_ARGS:-}) >"$log/unit-$mode.txt" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    [ "$rc" != 0 ] && status=1
    c=$(counts "$log/unit-$mode.txt")
    echo "   $mode: $c (${took}s, exit $rc) log: $log/unit-$mode.txt"
    results+=("$v|$mode|$c|${took}s|$rc")
  done
done

echo
echo "| python | mode | result | time | exit |"
echo "|---|---|---|---|---|"
for r in "${results[@]}"; do
  echo "| ${r//|/ | } |"
done
exit "$status"
