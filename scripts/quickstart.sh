#!/usr/bin/env bash
# The README's first command: install into .venv, start the embedded local stack (Airflow
# api-server/scheduler/dag-processor/triggerer on SQLite + LocalExecutor, a Knative runtime
# on loopback serving example_dags/, the file:// store), run compute_avg_distributed through
# the gateway with [1,2,3,4] and print {"output": 2.5}. Ctrl-C stops everything; pass --once
# to stop right after the result. Other flags go to `airflow-knative local-stack`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import airflow_provider_knative, airflow.providers.standard, pandas, uvicorn" 2>/dev/null; then
  echo "installing into .venv (a few minutes the first time) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  # Airflow with its constraints, as Airflow asks (constraints/: where they come from, README)
  .venv/bin/python -m pip install -q -c constraints/airflow-3.3.txt -e ".[data,runtime]" apache-airflow-providers-standard
fi

export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m airflow_provider_knative.localstack.cli local-stack "$@"
