#!/usr/bin/env bash
# The README's test command: installs everything into .venv from nothing, then runs the
# linters, the type checker and the whole test suite (end-to-end tests included) on Airflow
# 3.3, then the compatibility suite on each older supported Airflow minor (scripts/compat.sh),
# and prints per minor how many compatibility tests ran and passed.
#
# With arguments (a subset of the tests for pytest), only the 3.3 suite runs; COMPAT=1 forces
# the other minors too, COMPAT=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
COMPAT=${COMPAT:-$([ $# -eq 0 ] && echo 1 || echo 0)}
mark() { echo "[test.sh] $1 at $((SECONDS - START)) s"; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip uv
# Airflow is installed with its release's constraints, as its users install it
# (constraints/airflow-3.3.txt; scripts/constraints.sh says where they come from). uv resolves
# and installs it in a fraction of pip's time.
VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip install -q -c constraints/airflow-3.3.txt -e ".[test]"
mark "Airflow 3.3 installed"

mkdir -p .compat
if [ "$COMPAT" = 1 ]; then
  # the other minors' venvs install while the 3.3 suite runs (network and disk, little CPU)
  scripts/compat.sh install >.compat/install.log 2>&1 &
  compat_install=$!
fi

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
mark "linters and mypy done"
airflow_version=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("apache-airflow-core"))')
rc=0
pytest "$@" --durations=25 --junitxml=.compat/junit-3.3.xml -o junit_suite_name="airflow-$airflow_version" || rc=$?
mark "Airflow $airflow_version suite done"

if [ "$COMPAT" = 1 ]; then
  wait "$compat_install" || { cat .compat/install.log; echo "installing the other Airflow minors failed" >&2; exit 1; }
  cat .compat/install.log
  scripts/compat.sh run || rc=1
  mark "compatibility suites done"
  scripts/compat.sh summary || rc=1
fi
exit $rc
