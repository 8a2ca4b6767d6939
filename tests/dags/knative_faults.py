"""DAGs for the fault suite (``tests/test_faults.py``): a function with a visible side effect.

``record`` appends a line to a file before it sleeps, so a test can count how many times the
function body really ran, whatever the task's state says.
"""

from __future__ import annotations

from airflow.sdk import dag, task


def _side_effect_dag(dag_id: str, **knative_kwargs):
    @dag(dag_id=dag_id, schedule=None, params={"path": "", "seconds": 0.0}, tags=["knative-test"])
    def side_effect():
        @task.knative(service="fx", retries=0, **knative_kwargs)
        def record(params=None):
            import time

            with open(params["path"], "a") as fh:
                fh.write("ran\n")
            time.sleep(params["seconds"])
            with open(params["path"]) as fh:
                return len(fh.read().splitlines())

        record()

    return side_effect()


knative_side_effect = _side_effect_dag("knative_side_effect")
knative_side_effect_deferrable = _side_effect_dag("knative_side_effect_deferrable", deferrable=True)
knative_side_effect_idempotent = _side_effect_dag("knative_side_effect_idempotent", idempotent=True)
