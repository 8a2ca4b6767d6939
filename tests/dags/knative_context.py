"""``@task.knative`` functions that read Airflow's context through ``**kwargs``, the way many
Airflow tasks are written (tests/test_decorators.py runs them in local mode and through a runtime)."""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="knative_context_kwargs", schedule=None, params={"who": "world"}, tags=["knative-test"])
def context_kwargs():
    @task.knative(service="ctx-worker")
    def greet(**kwargs):
        return {
            "greeting": f"hello {kwargs['params']['who']}",
            "keys": sorted(kwargs),
            "ids": [kwargs["dag_id"], kwargs["task_id"], kwargs["map_index"], kwargs["try_number"]],
            "run_id": kwargs["run_id"],
        }

    @task.knative(service="ctx-worker")
    def shout(word, **context):
        return f"{word.upper()} from map index {context['map_index']}"

    greet()
    shout.expand(word=["a", "b"])


@dag(dag_id="knative_context_ti", schedule=None, tags=["knative-test"])
def context_ti():
    @task.knative(service="ctx-worker")
    def wants_ti(**kwargs):
        return kwargs["ti"].task_id

    wants_ti()


knative_context_kwargs = context_kwargs()
knative_context_ti = context_ti()
