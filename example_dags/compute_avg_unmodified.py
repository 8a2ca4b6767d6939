"""The average workflow as an ordinary Airflow DAG: no Knative in it anywhere.

Plain ``@task`` steps, a ``BashOperator`` and a mapped task. Nothing here mentions Knative:
run it with ``[core] executor = airflow_provider_knative.executors.KnativeExecutor`` (or with
the KnativeExecutor first in a list of executors) and every task runs inside a pre-deployed
Knative Service; with LocalExecutor it runs locally, unchanged. ``airflow-knative local-stack
--executor knative`` runs it that way.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param, dag, task


@dag(
    dag_id="compute_avg_unmodified",
    schedule=None,
    catchup=False,
    params={"data": Param([1, 2, 3, 4], type="array", description="the numbers to average")},
    tags=["example"],
)
def compute_avg_unmodified() -> Any:
    @task
    def extract(params: dict[str, Any] | None = None) -> list[float]:
        data = (params or {}).get("data")
        if not isinstance(data, list) or not data:
            raise ValueError(f"params['data'] must be a non-empty list of numbers, got {data!r}")
        return [float(x) for x in data]

    @task
    def square(x: float) -> float:
        return x * x

    @task(multiple_outputs=True)
    def moments(numbers: list[float], squares: list[float]) -> dict[str, float]:
        n = len(numbers)
        mean = sum(numbers) / n
        return {"mean": mean, "variance": sum(squares) / n - mean * mean, "count": n}

    report = BashOperator(
        task_id="report",
        bash_command="echo \"average {{ ti.xcom_pull(task_ids='moments', key='mean') }} on $(hostname)\"",
    )

    @task
    def average(mean: float) -> float:
        return mean

    numbers = extract()
    stats = moments(numbers, square.expand(x=numbers))
    stats >> report
    return average(stats["mean"])


compute_avg_unmodified()
