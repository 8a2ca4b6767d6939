"""Run the test DAGs of ``tests/dags/knative_examples.py`` with ``dag.test()`` and read XComs.

Shared by the operator, decorator and trigger tests (and ``bench/bench_operator.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

from conftest import TEST_DAGS

_MODULE = "knative_examples"


def examples(name: str = _MODULE) -> ModuleType:
    """A DAG module, imported once from the DAGs folder (dag.test() needs the file there)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, TEST_DAGS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, module: str = _MODULE) -> Any:
    """``dag.test()`` of one DAG of a test DAG module; returns the DagRun."""
    dag = getattr(examples(module), dag_id)
    return dag.test(run_conf=conf)


def task_states(run: Any) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
    return {(task_id, map_index): str(state) for task_id, map_index, state in rows}


def stored_xcom(run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The raw JSON the XCom backend put in Airflow's database (a ref marker, or inline)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
                XComModel.map_index == map_index,
            )
        )


def xcom_value(run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The XCom value as a task would receive it (through the configured backend)."""
    from types import SimpleNamespace

    from airflow_provider_knative.xcom import KnativeXComBackend

    return KnativeXComBackend.deserialize_value(
        SimpleNamespace(value=stored_xcom(run, task_id, key, map_index))
    )
