"""Which Knative Service runs a task sent to the KnativeExecutor: one rule, in one place.

In order: the task's ``executor_config={"knative": {"service": ..., "namespace": ...,
"conn_id": ...}}``; its queue in ``[knative] executor_queue_services``
(``queue=service,queue=service``); ``[knative] executor_default_service``. The service name
then becomes a URL exactly as for ``@task.knative`` (``KnativeHook.resolve_url``), and
``airflow-knative manifests`` uses this same rule to know which Services to emit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.errors import ConfigError

DEFAULT_CONN_ID = "knative_default"


@dataclass(frozen=True)
class Target:
    service: str
    namespace: str | None = None
    conn_id: str = DEFAULT_CONN_ID


def queue_services() -> dict[str, str]:
    """``[knative] executor_queue_services`` as a mapping (queue -> service)."""
    text = config.get("executor_queue_services") or ""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        queue, sep, service = item.partition("=")
        if not sep or not queue.strip() or not service.strip():
            raise ConfigError(
                f"[knative] executor_queue_services (env AIRFLOW__KNATIVE__EXECUTOR_QUEUE_SERVICES) must "
                f"look like 'queue=service,other=service2', got {item!r}"
            )
        mapping[queue.strip()] = service.strip()
    return mapping


def route(ti: Any) -> Target:
    """The Service for a task instance (anything with ``executor_config`` and ``queue``)."""
    settings: Mapping[str, Any] = ((getattr(ti, "executor_config", None) or {}).get("knative")) or {}
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"executor_config['knative'] of task {getattr(ti, 'task_id', '?')!r} must be a dict like "
            f"{{'service': 'name'}}, got {settings!r}"
        )
    service = settings.get("service") or queue_services().get(getattr(ti, "queue", None) or "")
    return Target(
        service=str(service or config.get("executor_default_service")),
        namespace=settings.get("namespace"),
        conn_id=str(settings.get("conn_id") or DEFAULT_CONN_ID),
    )
