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
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from airflow_provider_knative import versions
from airflow_provider_knative.errors import AirflowVersionError
from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

EXAMPLES = REPO / "example_dags"


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
def test_gateway_runs_an_unmodified_dag_on_the_knative_executor(stack) -> None:
    deployment, client, token = stack
    answer = client.run_workflow("compute_avg_unmodified", [2, 4, 6, 8], token, timeout=240, unpause=True)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["output"] == 5.0 and body["state"] == "success", body
    run_id = body["dag_run_id"]
    tis = client.api(
        "GET", f"/dags/compute_avg_unmodified/dagRuns/{run_id}/taskInstances", token, params={"limit": 100}
    ).json()["task_instances"]
    runtime_log = deployment.process("runtime").log_path.read_text(errors="replace")
    assert tis and all(f"task instance {ti['id']} " in runtime_log for ti in tis), runtime_log[-3000:]


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
