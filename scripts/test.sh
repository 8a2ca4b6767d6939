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

# Debian packages: PostgreSQL for the end-to-end tests on a real local deployment, Chromium and
# chromedriver for the XCom tab test in a real browser. One `apt-get update`, one install.
missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and cannot install here: the end-to-end and browser tests will be skipped" >&2
  fi
fi

export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy airflow_provider_knative
pytest "$@"
