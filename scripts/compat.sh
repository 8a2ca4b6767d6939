#!/usr/bin/env bash
# The compatibility suite on the other supported Airflow minors, each in a venv of its own
# (.compat/<minor>), Airflow installed the way its users install it: with that minor's
# constraints (constraints/airflow-<minor>.txt; scripts/constraints.sh says where they come
# from). The full suite (scripts/test.sh) covers Airflow 3.3 in .venv.
#
#   scripts/compat.sh install [MINOR...]   create or refresh the venvs (uv: seconds when cached)
#   scripts/compat.sh run [MINOR...]       run tests/compat in each (junit in .compat/junit-<minor>.xml)
#   scripts/compat.sh summary              per minor: how many compatibility tests ran and passed
#
# MINOR defaults to every one below. 3.0 is the XCom backend only: tests that need 3.1 are
# deselected there (their refusal on 3.0 is tested instead), never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A PATCH=([3.0]=3.0.6 [3.1]=3.1.8 [3.2]=3.2.2)
MINORS=(3.2 3.1 3.0)
UV=${UV:-.venv/bin/uv}
mkdir -p .compat

install_one() {
  local m=$1 venv=.compat/$1 start=$SECONDS extras=data,runtime,kubernetes,compat
  [ -x "$venv/bin/python" ] || "$UV" venv -q --python "${PYTHON:-python3}" "$venv"
  # the XCom backend alone on 3.0: the runtime extra needs the task SDK of 3.1+
  [ "$m" = 3.0 ] && extras=data,compat
  VIRTUAL_ENV=$PWD/$venv "$UV" pip install -q \
    -c "constraints/airflow-$m.txt" "apache-airflow[postgres]==${PATCH[$m]}" -e ".[$extras]"
  echo "installed Airflow ${PATCH[$m]} in $venv in $((SECONDS - start)) s"
}

run_one() {
  local m=$1 venv=.compat/$1 start=$SECONDS paths=(tests/compat)
  [ "$m" = 3.0 ] || paths+=(tests/test_airflow_compat.py)  # the private API (@task.knative's .expand())
  echo "== compatibility suite on Airflow ${PATCH[$m]} ($venv)"
  local rc=0
  "$venv/bin/python" -m pytest "${paths[@]}" -q -p no:cacheprovider --junitxml=".compat/junit-$m.xml" \
    -o junit_suite_name="airflow-${PATCH[$m]}" || rc=$?
  echo "== Airflow ${PATCH[$m]}: compatibility suite took $((SECONDS - start)) s"
  return $rc
}

cmd=${1:-}
shift || true
[ $# -gt 0 ] && MINORS=("$@")
case "$cmd" in
  install) for m in "${MINORS[@]}"; do install_one "$m"; done ;;
  run)
    failed=0
    for m in "${MINORS[@]}"; do run_one "$m" || failed=1; done
    exit $failed
    ;;
  summary) exec .venv/bin/python scripts/compat_summary.py .compat ;;
  *) echo "usage: $0 install|run|summary [MINOR...]" >&2; exit 2 ;;
esac
