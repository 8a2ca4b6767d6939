"""Unmodified DAGs for the KnativeExecutor end-to-end tests: nothing here mentions Knative.

The stack's default executor is the KnativeExecutor; ``via_local`` asks for LocalExecutor.
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import dag, task

WIDTH = 50


def _python_operator_callable(ti=None):
    return {"from": "PythonOperator", "upstream": ti.xcom_pull(task_ids="numbers")[:3]}


@dag(dag_id="exec_values", schedule=None, catchup=False, tags=["executor-test"])
def exec_values():
    @task
    def numbers() -> list[int]:
        return list(range(WIDTH))

    @task
    def square(x: int) -> int:
        return x * x

    @task
    def total(squares: list[int]) -> int:
        return sum(squares)

    @task(multiple_outputs=True)
    def stats(values: list[int]) -> dict[str, int]:
        return {"low": min(values), "high": max(values), "count": len(values)}

    @task
    def frame(rows: int = 200_000):
        import pandas as pd

        return pd.DataFrame({"x": range(rows), "y": [float(i) / 2 for i in range(rows)]})

    @task
    def frame_sum(df) -> float:
        return float(df["y"].sum())

    @task(executor="LocalExecutor")
    def via_local(low: int, high: int) -> dict[str, object]:
        import os

        return {"span": high - low, "pid": os.getpid()}

    python_op = PythonOperator(task_id="python_op", python_callable=_python_operator_callable)
    bash_op = BashOperator(
        task_id="bash_op", bash_command="echo bash-says-{{ ti.xcom_pull(task_ids='total') }}"
    )

    nums = numbers()
    t = total(square.expand(x=nums))
    s = stats(nums)
    via_local(s["low"], s["high"])
    nums >> python_op
    t >> bash_op
    frame_sum(frame())


exec_values()


@dag(dag_id="exec_flaky", schedule=None, catchup=False, tags=["executor-test"])
def exec_flaky():
    @task(retries=1, retry_delay=1)
    def flaky(ti=None) -> int:
        if ti.try_number == 1:
            raise RuntimeError("first try fails on purpose")
        return ti.try_number

    flaky()


exec_flaky()


@dag(
    dag_id="exec_side_effect",
    schedule=None,
    catchup=False,
    params={"path": "", "seconds": 1.0, "service": ""},
    tags=["executor-test"],
)
def exec_side_effect():
    @task(retries=1, retry_delay=1)
    def record(params=None, ti=None) -> int:
        """Appends 'start N' and 'end N' (N: the try) around a sleep: the run count is visible."""
        import time

        with open(params["path"], "a") as fh:
            fh.write(f"start {ti.try_number}\n")
        print(f"recording try {ti.try_number}", flush=True)
        time.sleep(float(params["seconds"]))
        with open(params["path"], "a") as fh:
            fh.write(f"end {ti.try_number}\n")
        print(f"recorded try {ti.try_number}")
        return ti.try_number

    record()


exec_side_effect()


def _routed(dag_id: str, conn_id: str):
    @dag(dag_id=dag_id, schedule=None, catchup=False, tags=["executor-test"])
    def routed():
        @task(executor_config={"knative": {"service": dag_id.replace("_", "-"), "conn_id": conn_id}})
        def hello() -> str:
            return "hello"

        hello()

    return routed()


exec_cold = _routed("exec_cold", "knative_cold")
exec_never = _routed("exec_never", "knative_never")


@dag(dag_id="exec_replay", schedule=None, catchup=False, params={"path": ""}, tags=["executor-test"])
def exec_replay():
    @task(executor_config={"knative": {"service": "exec-replay", "conn_id": "knative_recorded"}})
    def once(params=None) -> str:
        with open(params["path"], "a") as fh:
            fh.write("ran\n")
        return "ran"

    once()


exec_replay()


@dag(dag_id="exec_deadline", schedule=None, catchup=False, params={"path": ""}, tags=["executor-test"])
def exec_deadline():
    @task(executor_config={"knative": {"service": "exec-deadline", "conn_id": "knative_short"}})
    def outlives_the_request(params=None) -> None:
        import time

        with open(params["path"], "a") as fh:
            fh.write("start 1\n")
        time.sleep(60)
        with open(params["path"], "a") as fh:
            fh.write("end 1\n")

    outlives_the_request()


exec_deadline()


@dag(dag_id="exec_narrow", schedule=None, catchup=False, tags=["executor-test"])
def exec_narrow():
    """Two tasks at once against a runtime that runs one at a time (container_concurrency 1)."""

    @task(executor_config={"knative": {"service": "exec-narrow", "conn_id": "knative_narrow"}})
    def slow(i: int) -> int:
        import time

        time.sleep(1)
        return i

    slow.expand(i=[0, 1])


exec_narrow()
