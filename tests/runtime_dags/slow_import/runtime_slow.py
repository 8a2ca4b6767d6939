"""A DAG file that takes a while to import: /readyz must stay 503 until it is done."""

import os
import time

from airflow.sdk import dag, task

time.sleep(float(os.environ.get("RUNTIME_TEST_IMPORT_DELAY", "2")))


@dag(schedule=None, dag_id="runtime_slow")
def runtime_slow():
    @task.knative(service="rt")
    def hello():
        return "hello"

    hello()


the_dag = runtime_slow()
