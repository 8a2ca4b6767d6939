"""KnativeOperator with templated headers and a response_check, sync and deferred.

The service URL comes in the run's conf (``{"url": ...}``): tests point it at a local server.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG

from airflow_provider_knative.operators import KnativeOperator


def check_ok(response: Any, ti: Any = None) -> bool:
    """HttpOperator-style: reads the JSON answer, and asks for a context value by name."""
    seen = response.json()["headers"]
    print(f"response_check saw HTTP {response.status_code}, x-run={seen.get('x-run')}, ti={ti is not None}")
    return bool(response.json()["ok"])


def _dag(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, params={"url": "", "path": "/good", "tag": "templated"}) as dag:
        KnativeOperator(
            task_id="call",
            url="{{ params.url }}",
            path="{{ params.path }}",
            method="GET",
            headers={"X-Run": "{{ params.tag }}", "Host": "scorer.example.com"},
            response_check=check_ok,
            deferrable=deferrable,
        )
    return dag


knative_options_sync = _dag("knative_options_sync", deferrable=False)
knative_options_deferred = _dag("knative_options_deferred", deferrable=True)
