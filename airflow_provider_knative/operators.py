"""KnativeOperator: invoke a Knative Service from a DAG (work in progress: constructor contract)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

DEFAULT_CONN_ID = "knative_default"


class KnativeOperator(BaseOperator):
    """Invoke a Knative Service.

    ``service_settings`` are per-service deployment settings (container_concurrency,
    timeout_seconds, min_scale, max_scale, initial_scale, target, scale_down_delay, cpu,
    memory, ...) that ``airflow-knative manifests`` turns into the Knative Service spec.
    """

    template_fields: Sequence[str] = ("service", "namespace", "url", "payload")

    def __init__(
        self,
        *,
        service: str | None = None,
        namespace: str | None = None,
        url: str | None = None,
        payload: Any = None,
        knative_conn_id: str = DEFAULT_CONN_ID,
        service_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.namespace = namespace
        self.url = url
        self.payload = payload
        self.knative_conn_id = knative_conn_id
        self.service_settings = dict(service_settings or {})

    def execute(self, context: Any) -> Any:
        raise NotImplementedError("completed by the operator work (issue 4)")
