"""The Airflow plugin that mounts the workflow gateway at ``/knative`` in the api-server.

Registered through the ``airflow.plugins`` entry point (pyproject.toml). Every Airflow
component loads plugins, but only the api-server reads ``fastapi_apps``; so the FastAPI app
(and the api-server modules it needs) is imported on first access, not when a scheduler or
a task process imports this module.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class KnativeGatewayPlugin(AirflowPlugin):
    """``POST /knative/runWorkflow/{dag_id}`` and ``GET /knative/runs/{dag_id}/{run_id}``."""

    name = "knative_gateway"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from airflow_provider_knative.gateway.app import describe

        return [describe()]
