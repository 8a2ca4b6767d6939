"""A wide fan-out: ``.expand`` over N items (N = the input, default 100), then one sum.

``fanout_knative`` maps the square step onto the ``fanout-worker`` Knative Service;
``fanout_local`` is the same DAG with plain ``@task`` (benchmark baseline). N above
``[core] max_map_length`` (1024 by default) is refused by Airflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, dag, task


def items(params: dict[str, Any] | None = None) -> list[int]:
    width = (params or {}).get("data", 100)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"params['data'] is the fan-out width, a positive whole number; got {width!r}")
    return list(range(width))


def square(x: int) -> int:
    return x * x


def total(values: Any) -> int:
    values = list(values)
    print(f"summing {len(values)} mapped results")
    return sum(values)


def _fanout_dag(dag_id: str, as_task: Callable[[Callable[..., Any]], Any], doc: str) -> Any:
    @dag(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        max_active_tasks=64,
        params={"data": Param(100, type="integer", minimum=1, description="fan-out width")},
        tags=["knative", "example"],
        doc_md=doc,
    )
    def workflow() -> Any:
        return task(total)(as_task(square).expand(x=task(items)()))

    return workflow()


fanout_knative = _fanout_dag(
    "fanout_knative",
    lambda fn: task.knative(service="fanout-worker")(fn),
    "Fan-out over `params['data']` items; each mapped task runs in the `fanout-worker` service.",
)
fanout_local = _fanout_dag("fanout_local", task, "Same fan-out with plain `@task` (benchmark baseline).")
