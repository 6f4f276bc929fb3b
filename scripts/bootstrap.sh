#!/usr/bin/env bash
# Installs what a fresh machine lacks: the Debian packages the integration tests use
# (PostgreSQL server binaries, Chromium, redis-server, rabbitmq-server) and the project's virtual environment with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
need_apt=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
# chromium renders the analysis pages in the browser tests (tests/integration/analysis): only
# `make test` asks for it (WITH_BROWSER=1), so the demo's first run does not download it.
if [ "${WITH_BROWSER:-}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium)
fi
# redis-server backs the Redis integration tests (tests/integration/test_redis.py): make test only.
if [ "${WITH_BROWSER:-}" = 1 ] && ! command -v redis-server >/dev/null 2>&1; then
  need_apt+=(redis-server)
fi
# rabbitmq-server backs the RabbitMQ integration tests (tests/integration/test_amqp.py): make test only.
if [ "${WITH_BROWSER:-}" = 1 ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  need_apt+=(rabbitmq-server)
fi
# wrk drives the middleware benchmark (make bench); it falls back to a Python load generator.
if [[ "${EXTRA_EXTRAS:-}" == *bench* ]] && ! command -v wrk >/dev/null 2>&1; then
  need_apt+=(wrk)
fi
# valgrind counts instructions for bench/count_middleware.py (a figure the load of the machine does not move).
if [[ "${EXTRA_EXTRAS:-}" == *bench* ]] && ! command -v valgrind >/dev/null 2>&1; then
  need_apt+=(valgrind)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need_apt[*]} (run as root or install them)" >&2
  fi
fi
extras="dev${EXTRA_EXTRAS:-}"
# The stamp covers what the install builds from: a changed C accelerator is rebuilt too.
stamp="$VENV/.installed-$(cat pyproject.toml setup.py pitchey_trace/_speedups.c | sha1sum | cut -c1-12)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
