"""Run example DAGs with ``dag.test()`` in a process whose DAG folder is ``example_dags/``.

``python run_example.py JOBS_JSON``, where each job is ``{"file", "dag_id", "conf",
"deferrable"}``, prints one ``RESULT`` JSON line per job: the run's state and, per task, the
JSON the XCom backend stored (inline value or marker) and, when it is JSON, the value a
downstream task receives. A process of its own because Airflow reads its DAG folder once and
the test session's is ``tests/dags``; one process for every job, because importing Airflow
and parsing the DAGs dominate on a busy machine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_provider_knative import airflow_compat, config
    from airflow_provider_knative.xcom import KnativeXComBackend

    os.environ["AIRFLOW__KNATIVE__DEFAULT_DEFERRABLE"] = str(bool(job["deferrable"])).lower()
    config.forget_cached()
    path = Path(job["file"]).resolve()
    bag = airflow_compat.bundle_dag_bag(dag_folder=str(path), bundle_path=path.parent)
    assert not bag.import_errors, bag.import_errors
    dag_run = bag.dags[job["dag_id"]].test(run_conf=job["conf"])
    with create_session() as session:
        rows = session.execute(
            select(XComModel.task_id, XComModel.value).where(
                XComModel.dag_id == job["dag_id"],
                XComModel.run_id == dag_run.run_id,
                XComModel.key == "return_value",
            )
        ).all()
    tasks = {}
    for task_id, stored in rows:
        value = KnativeXComBackend.deserialize_value(SimpleNamespace(value=stored))
        try:
            json.dumps(value)
        except TypeError:
            value = repr(type(value))
        tasks[task_id] = {"stored": stored, "value": value}
    return {"job": job, "state": str(dag_run.state), "tasks": tasks}


if __name__ == "__main__":
    for job in json.loads(sys.argv[1]):
        print("RESULT " + json.dumps(run(job), default=str), flush=True)
