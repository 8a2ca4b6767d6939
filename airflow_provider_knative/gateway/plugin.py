"""The Airflow plugin that mounts the workflow gateway at ``/knative`` in the api-server.

Every Airflow component loads plugins, but only the api-server reads ``fastapi_apps``; so the
FastAPI app (and the api-server modules it needs) is imported on first access, not when a
scheduler or a task process imports this module.

Airflow finds the plugin in two places, and it must be registered exactly once:

* the ``airflow.plugins`` entry point (pyproject.toml) names :data:`KnativeGatewayPlugin`;
  Airflow loads entry points always;
* provider info (``plugins``) names :class:`GatewayPlugin`; Airflow loads those only with
  ``[core] lazy_discover_providers = False``.

Both would register the same plugin name, and Airflow reports the second as a plugin import
error ("already registered"). So the entry point's name resolves to the plugin only when
Airflow will not load provider plugins, and to None (which Airflow skips silently) otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow import settings
from airflow.plugins_manager import AirflowPlugin

from airflow_provider_knative import airflow_compat
from airflow_provider_knative.errors import AirflowVersionError

log = logging.getLogger(__name__)


class GatewayPlugin(AirflowPlugin):
    """``POST /knative/runWorkflow/{dag_id}`` and ``GET /knative/runs/{dag_id}/{run_id}``."""

    name = "knative_gateway"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The gateway app; none (and an error in the api-server's log) on an Airflow too old for it,
        so the api-server itself still starts."""
        try:
            airflow_compat.require("the workflow gateway")
        except AirflowVersionError as exc:
            log.error("%s: /knative is not mounted", exc)
            return []
        from airflow_provider_knative.gateway.app import describe

        return [describe()]


#: what the ``airflow.plugins`` entry point loads (see the module docstring)
KnativeGatewayPlugin: type[GatewayPlugin] | None = GatewayPlugin if settings.LAZY_LOAD_PROVIDERS else None
