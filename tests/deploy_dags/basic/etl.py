"""Deploy-test DAG: KnativeOperator (plain and mapped) and a call to an external URL."""

from __future__ import annotations

from airflow.sdk import dag

from airflow_provider_knative.operators import KnativeOperator


@dag(schedule=None)
def deploy_etl():
    KnativeOperator(
        task_id="load",
        service="etl-runtime",
        payload={"table": "sales"},
        service_settings={"timeout_seconds": 900, "scale_down_delay": "15m", "visibility": "external"},
    )
    KnativeOperator.partial(task_id="transform", service="etl-runtime").expand(payload=[{"p": 1}, {"p": 2}])
    KnativeOperator(task_id="notify", url="http://hooks.example.com/notify", payload={"done": True})


deploy_etl()
