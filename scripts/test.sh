#!/usr/bin/env bash
# The README's test command: installs everything into .venv from nothing, then runs the
# linters, the type checker and the whole test suite (end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# PostgreSQL (Debian package) for the end-to-end tests on a real local deployment.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
  else
    echo "PostgreSQL is missing and cannot be installed here: the end-to-end tests will be skipped" >&2
  fi
fi

# Chromium and chromedriver (Debian packages) for the XCom tab test in a real browser.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "chromium/chromium-driver are missing and cannot be installed here: the browser test will be skipped" >&2
  fi
fi

export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy airflow_provider_knative
pytest "$@"
