"""The KnativeExecutor: ``[core] executor = airflow_provider_knative.executors.KnativeExecutor``.

Importing this package imports the executor module only when ``KnativeExecutor`` is asked for,
so the api-server and the dag-processor, which only check the name, stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_knative.executors.knative_executor import KnativeExecutor

__all__ = ["KnativeExecutor"]


def __getattr__(name: str) -> Any:
    if name == "KnativeExecutor":
        from airflow_provider_knative.executors.knative_executor import KnativeExecutor

        return KnativeExecutor
    raise AttributeError(name)
