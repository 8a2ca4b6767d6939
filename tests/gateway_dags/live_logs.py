"""A function that prints a line every second for 20 seconds, run sync and deferred: its
output must reach the Airflow task log while it runs (tests/test_live_logs.py)."""

from __future__ import annotations

from airflow.sdk import dag, task


def _live(dag_id: str, deferrable: bool):
    @dag(dag_id=dag_id, schedule=None, catchup=False, tags=["knative-test"])
    def live():
        @task.knative(service="live", deferrable=deferrable, retries=0)
        def tick() -> int:
            import time

            for i in range(20):
                print(f"tick {i} of 20", flush=True)
                time.sleep(1)
            return 20

        tick()

    return live()


live_logs = _live("live_logs", deferrable=False)
live_logs_deferrable = _live("live_logs_deferrable", deferrable=True)
