"""A DAG file that fails to import: the runtime must stay not-ready and say which file and why."""

from airflow.sdk import dag

raise RuntimeError("this DAG file is broken on purpose")

dag  # noqa: B018
