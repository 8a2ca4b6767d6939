"""What Airflow's providers manager reads: integration, hooks, operators, triggers, decorator,
connection type, plugin and the config section.

Validated against Airflow's own ``provider_info.schema.json`` in tests/test_provider_info.py.
Only dotted names here, never imports of the modules they name: Airflow reads this while it
is itself importing.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_knative import __version__, config
from airflow_provider_knative.connection import connection_type_info

INTEGRATION = "Knative"
PACKAGE = "airflow_provider_knative"


def _modules(*names: str) -> list[dict[str, Any]]:
    return [{"integration-name": INTEGRATION, "python-modules": [f"{PACKAGE}.{n}" for n in names]}]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-knative",
        "name": "Knative",
        "description": "Run task functions inside pre-deployed Knative Services and spill large XCom "
        "values to S3-compatible object storage.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://knative.dev/docs/serving/",
                "tags": ["software"],
            }
        ],
        "hooks": _modules("hooks"),
        "operators": _modules("operators", "decorators"),
        "triggers": _modules("triggers"),
        "task-decorators": [
            {"name": "knative", "class-name": f"{PACKAGE}.decorators.knative_task"},
        ],
        "connection-types": [connection_type_info()],
        "plugins": [
            {"name": "knative_gateway", "plugin-class": f"{PACKAGE}.gateway.plugin.GatewayPlugin"},
        ],
        "executors": ["airflow_provider_knative.executors.KnativeExecutor"],
        "config": config.provider_config_section(),
    }
