"""Every example DAG on a real deployment: PostgreSQL, moto S3, LocalExecutor, triggerer, runtime.

All runs are started at once through the gateway (``timeout: 0`` answers 202 with a poll
URL), so they overlap on the 2-core machine; each test then polls its own run and checks
the values, the spilled objects in the bucket, the remote functions' logs in the Airflow
task logs, the flaky child's retries and the deferrable task's trip through the triggerer.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from e2e_stack import E2EStack

pytest_plugins = ["e2e_stack"]  # one deployment per session, shared with test_gateway.py
pytestmark = pytest.mark.e2e

FANOUT_WIDTH = 20  # width 100 and 1,000 are measured by bench/bench_fanout.py
TRANSACTIONS = [
    {"id": "a", "amount": 100.0, "currency": "USD"},
    {"id": "b", "amount": 10.0, "currency": "GBP"},
    {"id": "c", "amount": 5.0, "currency": "USD"},
]
INPUTS: dict[str, Any] = {
    "compute_avg_distributed": [1, 2, 3, 4],
    "currency_etl": TRANSACTIONS,
    "fanout_knative": FANOUT_WIDTH,
    "pandas_etl": 200_000,
    "trigger_flaky_child": 1,
}


@pytest.fixture(scope="module")
def runs(e2e_stack: E2EStack) -> dict[str, str]:
    """Start every example at once; dag_id -> poll URL."""
    polls = {}
    for dag_id, data in INPUTS.items():
        response = e2e_stack.client.run_workflow(dag_id, data, e2e_stack.admin, timeout=0, unpause=True)
        assert response.status_code == 202, response.text
        polls[dag_id] = response.json()["poll_url"]
    return polls


def result(stack: E2EStack, runs: dict[str, str], dag_id: str) -> dict[str, Any]:
    response = stack.client.poll(runs[dag_id], stack.admin, wait=240)
    assert response.status_code == 200, response.text
    return response.json()


def task_log(
    stack: E2EStack, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index=-1
) -> str:
    response = stack.client.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        stack.admin,
        params={"map_index": map_index},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    return "\n".join(json.dumps(entry) for entry in response.json()["content"])  # events and error details


def xcom_value(stack: E2EStack, dag_id: str, run_id: str, task_id: str) -> Any:
    response = stack.client.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        stack.admin,
    )
    assert response.status_code == 200, response.text
    return response.json()["value"]


def test_average_and_remote_logs_in_the_task_log(e2e_stack: E2EStack, runs: dict[str, str]) -> None:
    body = result(e2e_stack, runs, "compute_avg_distributed")
    assert body["output"] == 2.5
    log = task_log(e2e_stack, "compute_avg_distributed", body["dag_run_id"], "average")
    assert "average = 10" in log and "2.5" in log  # printed inside the runtime process
    assert "remote logs" in log
    assert "extracted 4 numbers" in task_log(
        e2e_stack, "compute_avg_distributed", body["dag_run_id"], "extract"
    )


def test_mapped_currency_etl_with_a_deferrable_load(e2e_stack: E2EStack, runs: dict[str, str]) -> None:
    body = result(e2e_stack, runs, "currency_etl")
    usd = round(round(100.0 * 0.92, 2) + round(5.0 * 0.92, 2), 2)
    gbp = round(10.0 * 1.17, 2)
    assert body["output"] == {
        "total_eur": round(usd + gbp, 2),
        "count": 2,
        "by_currency": {"USD": usd, "GBP": gbp},
    }
    run_id = body["dag_run_id"]
    mapped = e2e_stack.client.api(
        "GET", f"/dags/currency_etl/dagRuns/{run_id}/taskInstances/convert/listMapped", e2e_stack.admin
    ).json()
    assert mapped["total_entries"] == 3
    assert {ti["state"] for ti in mapped["task_instances"]} == {"success"}
    assert "converted b: 10.0 GBP -> 11.7 EUR" in task_log(
        e2e_stack, "currency_etl", run_id, "convert", map_index=1
    )
    # load is deferrable: its HTTP call ran in the triggerer, and its remote log still reached the task log
    load_log = task_log(e2e_stack, "currency_etl", run_id, "load")
    assert "loaded report: 2 currencies" in load_log
    assert "defer" in load_log.lower()
    logs = e2e_stack.stack.home / "logs" / "dag_id=currency_etl" / f"run_id={run_id}" / "task_id=load"
    [trigger_log] = logs.glob("attempt=1.log.trigger.*.log")  # written by the triggerer process
    text = trigger_log.read_text(errors="replace")
    assert "Trigger fired event" in text and "'http_status': 200" in text


def test_fanout_sums_every_mapped_result(e2e_stack: E2EStack, runs: dict[str, str]) -> None:
    body = result(e2e_stack, runs, "fanout_knative")
    assert body["output"] == sum(x * x for x in range(FANOUT_WIDTH))
    mapped = e2e_stack.client.api(
        "GET",
        f"/dags/fanout_knative/dagRuns/{body['dag_run_id']}/taskInstances/square/listMapped",
        e2e_stack.admin,
    ).json()
    assert mapped["total_entries"] == FANOUT_WIDTH


def test_pandas_etl_spills_the_dataframe_to_the_bucket(e2e_stack: E2EStack, runs: dict[str, str]) -> None:
    import numpy as np
    import pandas as pd

    body = result(e2e_stack, runs, "pandas_etl")
    rng = np.random.default_rng(42)
    rows = 200_000
    frame = pd.DataFrame(
        {
            "store": rng.integers(0, 50, rows),
            "units": rng.integers(1, 10, rows),
            "price": rng.random(rows) * 100,
        }
    )
    revenue = (frame["units"] * frame["price"]).groupby(frame["store"]).sum()
    assert body["output"]["stores"] == 50
    assert math.isclose(body["output"]["revenue"], round(float(revenue.sum()), 2), rel_tol=1e-9)
    assert body["output"]["top_store"] == int(revenue.idxmax())

    stored = xcom_value(e2e_stack, "pandas_etl", body["dag_run_id"], "extract")
    assert stored["__knative_xcom__"] == 1, stored  # the DB holds only a reference...
    assert stored["ref"].startswith(f"s3://{e2e_stack.bucket}/xcom/")
    assert "DataFrame" in stored["summary"]
    bucket, key = stored["ref"][len("s3://") :].split("/", 1)
    head = e2e_stack.s3().head_object(Bucket=bucket, Key=key)  # ...and the object is in the bucket
    assert head["ContentLength"] == stored["size"] > 1_000_000


def test_parent_retries_the_flaky_child_until_it_succeeds(e2e_stack: E2EStack, runs: dict[str, str]) -> None:
    body = result(e2e_stack, runs, "trigger_flaky_child")
    child_run = body["output"]["child_run_id"]
    assert body["output"]["child_state"] == "success"
    ti = e2e_stack.client.api(
        "GET", f"/dags/flaky_child/dagRuns/{child_run}/taskInstances/unstable_step", e2e_stack.admin
    ).json()
    assert ti["state"] == "success"
    assert ti["try_number"] == 2  # failed once on purpose, then succeeded on the retry
    first_try = task_log(e2e_stack, "flaky_child", child_run, "unstable_step", try_number=1)
    assert "simulated failure on try 1" in first_try
    child = e2e_stack.client.api("GET", f"/dags/flaky_child/dagRuns/{child_run}", e2e_stack.admin).json()
    assert child["state"] == "success"
    assert child["conf"] == {"data": 1}
    assert "child succeeded after 1 failed tries" in task_log(e2e_stack, "flaky_child", child_run, "report")
