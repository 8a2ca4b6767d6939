"""Run the xcom test DAGs for real (``dag.test()``) and read back what Airflow stored."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parent / "dags"


def load_dag(name: str) -> Any:
    """The DAG object defined at module level in tests/dags/<name>.py."""
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.the_dag


def run_dag(name: str, **kwargs: Any) -> Any:
    dag = load_dag(name)
    return dag.test(**kwargs)


def task_states(dr: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dr.get_task_instances(session=session)
        }


def xcom_rows(dag_id: str, run_id: str) -> dict[tuple[str, int, str], Any]:
    """(task_id, map_index, key) -> the JSON Airflow stored, read through Airflow's ORM."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag_id, XComModel.run_id == run_id
            )
        ).all()
    return {(t, m, k): v for t, m, k, v in rows}


def rerun_task(dag: Any, dr: Any, task_id: str) -> str:
    """Run one task instance again as a worker would: QUEUED, then the Execution API ``/run``.

    (``dag.test()`` cannot do this: it deletes and recreates a run with the same run id.)
    """
    from uuid import UUID

    from airflow.sdk.api.datamodels._generated import TaskInstance as SDKTaskInstance
    from airflow.sdk.execution_time.supervisor import run_task_in_process
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        (ti,) = [t for t in dr.get_task_instances(session=session) if t.task_id == task_id]
        ti.try_number += 1  # what the scheduler does when it schedules a cleared task
        ti.state = TaskInstanceState.QUEUED
        session.merge(ti)
        session.commit()
        sdk_ti = SDKTaskInstance(
            id=UUID(str(ti.id)),
            task_id=ti.task_id,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            try_number=ti.try_number,
            map_index=ti.map_index,
            dag_version_id=UUID(str(ti.dag_version_id)),
        )
    result = run_task_in_process(ti=sdk_ti, task=dag.get_task(task_id))
    return result.state.value
