"""DAGs of bench/bench_executor.py: the same work on the KnativeExecutor and on LocalExecutor."""

from __future__ import annotations

from airflow.sdk import dag, task

CHAIN = 20
WIDTH = 200


def _chain(dag_id: str, executor: str | None):
    @dag(dag_id=dag_id, schedule=None, catchup=False, default_args={"executor": executor} if executor else {})
    def chain():
        @task
        def step(x: int) -> int:
            return x + 1

        value = step.override(task_id="step_0")(0)
        for i in range(1, CHAIN):
            value = step.override(task_id=f"step_{i}")(value)

    return chain()


def _fanout(dag_id: str, executor: str | None):
    @dag(dag_id=dag_id, schedule=None, catchup=False, default_args={"executor": executor} if executor else {})
    def fanout():
        @task
        def numbers() -> list[int]:
            return list(range(WIDTH))

        @task
        def square(x: int) -> int:
            return x * x

        @task
        def total(values: list[int]) -> int:
            return sum(values)

        total(square.expand(x=numbers()))

    return fanout()


def _hold(dag_id: str, width: int):
    @dag(dag_id=dag_id, schedule=None, catchup=False)
    def hold():
        @task
        def sleeper(i: int) -> int:
            import time

            time.sleep(20)
            return i

        sleeper.expand(i=list(range(width)))

    return hold()


chain_knative = _chain("chain_knative", None)
chain_local = _chain("chain_local", "LocalExecutor")
fanout_knative = _fanout("fanout200_knative", None)
fanout_local = _fanout("fanout200_local", "LocalExecutor")
hold_16 = _hold("hold_16", 16)
