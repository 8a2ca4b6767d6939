"""An unmodified task that prints a line every second for 20 seconds, on the KnativeExecutor:
its log must reach the UI while it runs (tests/test_executor_e2e.py)."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="exec_live", schedule=None, catchup=False, tags=["executor-test"])
def exec_live():
    @task
    def tick() -> int:
        import time

        for i in range(20):
            print(f"tick {i} of 20", flush=True)
            time.sleep(1)
        return 20

    tick()


exec_live()
