"""An unmodified DAG for the KnativeExecutor on a Service with several replicas.

``body`` is mapped 50 ways and sent to the ``knative_replicas`` connection: three runtime
processes behind a balancer with no affinity that cuts some of the event streams and some
requests after delivery. Each mapped task appends its map index to a file before it sleeps,
so the test sees how many times each task body really ran.
"""

from __future__ import annotations

from airflow.sdk import dag, task

WIDTH = 50


@dag(dag_id="exec_replicas", schedule=None, catchup=False, params={"path": ""}, tags=["executor-test"])
def exec_replicas():
    @task(executor_config={"knative": {"conn_id": "knative_replicas"}})
    def body(i: int, params=None) -> int:
        import time

        with open(params["path"], "a") as fh:
            fh.write(f"{i}\n")
        time.sleep(2)
        return i * 3

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    total(body.expand(i=list(range(WIDTH))))


exec_replicas()
