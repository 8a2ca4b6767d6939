"""What Airflow's providers manager reads: decorator, connection type, config section."""

from __future__ import annotations

from typing import Any

from airflow_provider_knative import __version__, config
from airflow_provider_knative.connection import connection_type_info


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-knative",
        "name": "Knative",
        "description": "Run task functions inside pre-deployed Knative Services and spill large XCom "
        "values to S3-compatible object storage.",
        "versions": [__version__],
        "task-decorators": [
            {"name": "knative", "class-name": "airflow_provider_knative.decorators.knative_task"},
        ],
        "connection-types": [connection_type_info()],
        "executors": ["airflow_provider_knative.executors.KnativeExecutor"],
        "config": config.provider_config_section(),
    }
