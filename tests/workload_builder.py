"""A real ``ExecuteTask`` workload (the scheduler's message to an executor) for tests that need
one without a scheduler: for a task that does not exist, so a runtime refuses or the test decides."""

from __future__ import annotations

import uuid
from typing import Any


def execute_task(dag_rel_path: str = "no_such_dag_file.py", **ti: Any) -> Any:
    from airflow.executors import workloads
    from airflow.executors.workloads import TaskInstanceDTO
    from airflow.executors.workloads.base import BundleInfo

    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "task_id": "t",
        "dag_id": "d",
        "run_id": f"r-{uuid.uuid4()}",
        "try_number": 1,
        "dag_version_id": uuid.uuid4(),
        "map_index": -1,
        "queue": "default",
        "pool_slots": 1,
        "priority_weight": 1,
        **ti,
    }
    return workloads.ExecuteTask(
        token="not-used",
        dag_rel_path=dag_rel_path,
        bundle_info=BundleInfo(name="dags-folder", version=None),
        log_path=None,
        ti=TaskInstanceDTO(**fields),
    )
