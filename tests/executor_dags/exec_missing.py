"""A DAG the scheduler has and the runtime's image does not (the test copies every other file)."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="exec_missing", schedule=None, catchup=False, tags=["executor-test"])
def exec_missing():
    @task
    def orphan() -> str:
        return "never runs"

    orphan()


exec_missing()
