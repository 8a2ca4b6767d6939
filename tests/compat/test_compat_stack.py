"""The KnativeExecutor and the workflow gateway on a real deployment, on every minor they support.

One deployment per minor: api-server (with the gateway), scheduler with
``KnativeExecutor,LocalExecutor``, dag-processor, triggerer, one runtime; SQLite and a
``file://`` store (the full suite on 3.3 runs the same on PostgreSQL and S3, with faults).
The gateway triggers the unmodified average DAG (plain ``@task``, a BashOperator, a mapped
task), whose tasks run in the runtime under the task SDK's supervisor (``run_workload`` on 3.3,
``supervise`` before), and answers its output; it also runs the ``@task.knative`` example.
On Airflow 3.0 both refuse at start, naming the version they need.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from airflow_provider_knative import versions
from airflow_provider_knative.errors import AirflowVersionError
from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

EXAMPLES = REPO / "example_dags"
DONE = ("success", "failed")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[LocalStack, StackClient, str]]:
    state = Path(tempfile.mkdtemp(prefix="knative-compat-stack-"))
    dags = state / "dags"
    dags.mkdir()
    for name in ("compute_avg.py", "compute_avg_unmodified.py"):
        shutil.copy(EXAMPLES / name, dags / name)
    deployment = LocalStack(
        state,
        dags,
        executor="knative",
        extra_env={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True"},
        wait_for_dags=("compute_avg_unmodified", "compute_avg_distributed"),
    )
    deployment.start()
    client = StackClient(deployment.url, timeout=60)
    try:
        yield deployment, client, client.login("admin", deployment.passwords["admin"])
    finally:
        client.close()
        deployment.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.since_airflow("3.1")
def test_an_unmodified_dag_runs_on_the_knative_executor(stack) -> None:
    deployment, client, token = stack
    dag_id = "compute_avg_unmodified"
    client.set_paused(dag_id, False, token)
    answer = client.api(
        "POST", f"/dags/{dag_id}/dagRuns", token, json={"logical_date": None, "conf": {"data": [2, 4, 6, 8]}}
    )
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["dag_run_id"]
    deadline = time.monotonic() + 240
    while (state := client.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", token).json()["state"]) not in DONE:
        assert time.monotonic() < deadline, f"{dag_id} still {state} after 240 s"
        time.sleep(1)
    tis = client.api(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", token, params={"limit": 100}
    ).json()["task_instances"]
    assert state == "success", tis
    average = client.api(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/average/xcomEntries/return_value", token
    )
    from airflow_provider_knative.xcom import KnativeXComBackend

    stored = average.json()["value"]  # the JSON the XCom backend stored: inline or a marker
    assert KnativeXComBackend.deserialize_value(SimpleNamespace(value=stored)) == 5.0, average.text
    # every task ran in the runtime, under the task SDK's supervisor
    runtime_log = deployment.process("runtime").log_path.read_text(errors="replace")
    assert len(tis) == 1 + 4 + 3 and all(f"task instance {ti['id']} " in runtime_log for ti in tis), (
        runtime_log[-3000:]
    )
    # the gateway answers which task is the result: 3.3 reads the @dag's return value; before,
    # nothing marks it, and two leaves are named as ambiguous with what to do on this version
    answer = client.run_workflow(dag_id, [2, 4, 6, 8], token, timeout=240)
    if versions.AIRFLOW_MINOR >= (3, 3):
        assert answer.status_code == 200 and answer.json()["output"] == 5.0, answer.text
    else:
        assert answer.status_code == 409, answer.text
        assert "cannot mark a DAG's result (Airflow 3.3 can): give the DAG a single leaf task" in answer.text


@pytest.mark.since_airflow("3.1")
def test_gateway_runs_the_knative_example(stack) -> None:
    _, client, token = stack
    answer = client.run_workflow("compute_avg_distributed", [1, 2, 3, 4], token, timeout=240, unpause=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == 2.5


@pytest.mark.before_airflow("3.1")
def test_airflow_3_0_refuses_everything_but_the_xcom_backend_by_name() -> None:
    from airflow.sdk import dag, task

    from airflow_provider_knative.executors import KnativeExecutor
    from airflow_provider_knative.gateway.plugin import GatewayPlugin

    with pytest.raises(AirflowVersionError, match=r"needs Airflow 3\.1 or newer; this is Airflow 3\.0"):

        @dag(schedule=None)
        def uses_knative():
            @task.knative(service="svc")
            def f() -> int:
                return 1

            f()

        uses_knative()
    with pytest.raises(AirflowVersionError, match=r"KnativeExecutor needs Airflow 3\.1"):
        KnativeExecutor().start()
    assert GatewayPlugin().fastapi_apps == []  # the api-server starts, without /knative
    assert versions.AIRFLOW_MINOR == (3, 0)
