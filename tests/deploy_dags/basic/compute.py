"""Deploy-test DAG: tasks sharing one service, a mapped task, a per-task namespace."""

from __future__ import annotations

from airflow.sdk import dag, task

LONG_NAME = "feature-engineering-for-the-quarterly-revenue-forecast-model-training"


@dag(schedule=None)
def deploy_compute():
    @task.knative(
        service="avg-worker",
        service_settings={"min_scale": 1, "max_scale": 5, "container_concurrency": 8, "target": 6},
    )
    def extract(params=None):
        return [1, 2, 3]

    @task.knative(service="avg-worker", service_settings={"min_scale": 1, "env": {"LOG_FORMAT": "json"}})
    def double(x):
        return x * 2

    @task.knative(service="avg-worker")
    def total(xs):
        return sum(xs)

    total(double.expand(x=extract()))

    @task.knative(service=LONG_NAME, namespace="ml", service_settings={"memory": "2Gi", "cpu": "1"})
    def features():
        return {"rows": 10}

    features()


deploy_compute()
