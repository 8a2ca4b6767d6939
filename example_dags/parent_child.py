"""A parent DAG that triggers a flaky child DAG and waits for it.

``flaky_child`` fails on purpose on its first ``params["data"]`` tries (default 1): its
``unstable_step`` raises while ``try_number`` is that low, then Airflow's retries make it
succeed. ``trigger_flaky_child`` triggers it with ``TriggerDagRunOperator``
(``wait_for_completion=True``), itself with retries, then reports the child's run id.
The flaky step is a plain ``@task`` because the try number lives in the Airflow task
context; the work after it runs in the ``etl-worker`` Knative Service.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    catchup=False,
    is_paused_upon_creation=False,  # the parent triggers it: a paused child would never run
    params={"data": Param(1, type="integer", minimum=0, description="how many tries fail on purpose")},
    tags=["knative", "example"],
)
def flaky_child() -> Any:
    @task(retries=3, retry_delay=timedelta(seconds=1))
    def unstable_step(params: dict[str, Any] | None = None, ti: Any = None) -> int:
        failures = int((params or {}).get("data", 1))
        if ti.try_number <= failures:
            raise RuntimeError(f"simulated failure on try {ti.try_number} of {failures} planned failures")
        print(f"succeeded on try {ti.try_number}")
        return int(ti.try_number)

    @task.knative(service="etl-worker")
    def report(succeeded_on_try: int) -> dict[str, Any]:
        print(f"child succeeded after {succeeded_on_try - 1} failed tries")
        return {"succeeded_on_try": succeeded_on_try}

    return report(unstable_step())


@dag(
    schedule=None,
    catchup=False,
    params={"data": Param(1, type="integer", minimum=0, description="failures the child simulates")},
    render_template_as_native_obj=True,  # conf={"data": 1}, not "1"
    tags=["knative", "example"],
)
def trigger_flaky_child() -> Any:
    trigger = TriggerDagRunOperator(
        task_id="trigger_child",
        trigger_dag_id="flaky_child",
        conf={"data": "{{ params.data }}"},
        wait_for_completion=True,
        poke_interval=1,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )

    @task.knative(service="etl-worker")
    def summarize(child_run_id: str) -> dict[str, Any]:
        print(f"child run {child_run_id} finished successfully")
        return {"child_run_id": child_run_id, "child_state": "success"}

    return summarize(trigger.output["trigger_run_id"])


flaky_child()
trigger_flaky_child()
