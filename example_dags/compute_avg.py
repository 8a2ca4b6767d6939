"""The average workflow: extract -> (sum, count) -> average, each step a Knative function.

``compute_avg_distributed`` runs every step in the ``avg-worker`` Knative Service;
``compute_avg_local`` is the same DAG with plain ``@task`` (the benchmark's baseline).
Trigger it with ``POST /knative/runWorkflow/compute_avg_distributed {"input": [1, 2, 3, 4]}``
-> ``{"output": 2.5, ...}``: the gateway passes the input as ``conf["data"]``, which
overrides the ``data`` param.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, dag, task


def extract(params: dict[str, Any] | None = None) -> list[float]:
    """The numbers to average, from ``params["data"]``; anything else is a clear error."""
    data = (params or {}).get("data")
    if not isinstance(data, list) or not data:
        raise ValueError(f"params['data'] must be a non-empty list of numbers, got {data!r}")
    try:
        numbers = [float(x) for x in data]
    except (TypeError, ValueError):
        raise ValueError(f"params['data'] must hold only numbers, got {data!r}") from None
    print(f"extracted {len(numbers)} numbers")
    return numbers


def compute_sum(numbers: list[float]) -> float:
    total = sum(numbers)
    print(f"sum of {len(numbers)} numbers = {total}")
    return total


def compute_count(numbers: list[float]) -> int:
    return len(numbers)


def average(total: float, count: int) -> float:
    result = total / count
    print(f"average = {total} / {count} = {result}")
    return result


def _average_dag(dag_id: str, as_task: Callable[[Callable[..., Any]], Any], doc: str) -> Any:
    @dag(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        params={"data": Param([1, 2, 3, 4], type="array", description="the numbers to average")},
        tags=["knative", "example"],
        doc_md=doc,
    )
    def workflow() -> Any:
        numbers = as_task(extract)()
        return as_task(average)(as_task(compute_sum)(numbers), as_task(compute_count)(numbers))

    return workflow()


compute_avg_distributed = _average_dag(
    "compute_avg_distributed",
    lambda fn: task.knative(service="avg-worker")(fn),
    "Average of `params['data']`; every step runs in the `avg-worker` Knative Service.",
)
compute_avg_local = _average_dag(
    "compute_avg_local",
    task,
    "Same as compute_avg_distributed with plain `@task` (benchmark baseline).",
)
