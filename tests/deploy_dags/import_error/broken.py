"""A DAG file that fails at import: deploy must name this file and the error."""

import module_that_does_not_exist_anywhere  # noqa: F401
from airflow.sdk import dag


@dag(schedule=None)
def deploy_broken():
    pass


deploy_broken()
