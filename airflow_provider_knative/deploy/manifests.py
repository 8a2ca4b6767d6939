"""ServiceSpec → a ``serving.knative.dev/v1`` Service manifest (a plain dict).

What a Knative operator expects, and why each part is there:
- cluster-local visibility by default: task functions are internal, never on a public gateway;
- ``containerConcurrency`` (hard limit) and the runtime told the same number, so the pod
  never accepts more calls than it runs;
- ``timeoutSeconds`` explicit, and the runtime's drain timeout equal to it: Knative gives a
  terminating pod ``timeoutSeconds`` of grace, so in-flight calls finish on scale-down;
- autoscaling annotations on the revision template (where Knative reads them);
- readiness on ``/readyz`` (true only once the DAG folder is imported) and liveness on
  ``/healthz``; no port in probes, Knative fills in the serving port;
- the store settings and the signing secret come from Kubernetes Secrets, never inline;
- labels and annotations lead from a Service back to the DAGs and tasks that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.deploy.collect import ServiceSpec

API_VERSION = "serving.knative.dev/v1"
KIND = "Service"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "airflow-provider-knative"
NAME_LABEL = "app.kubernetes.io/name"
VISIBILITY_LABEL = "networking.knative.dev/visibility"
ANNOTATION_PREFIX = "airflow-provider-knative/"
SERVICE_ANNOTATION = ANNOTATION_PREFIX + "service"
DAGS_ANNOTATION = ANNOTATION_PREFIX + "dag-ids"
TASKS_ANNOTATION = ANNOTATION_PREFIX + "task-ids"
AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
SIGNING_SECRET_KEY = "signing-secret"
CONTAINER_PORT = 8080
DAGS_FOLDER_IN_IMAGE = "/opt/airflow/dags"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

_AUTOSCALING = {
    "min_scale": "min-scale",
    "max_scale": "max-scale",
    "initial_scale": "initial-scale",
    "target": "target",
    "scale_down_delay": "scale-down-delay",
}


@dataclass(frozen=True)
class ManifestOptions:
    """Deployment-wide choices (command-line options), as opposed to per-service settings."""

    image: str
    store_secret: str | None = "airflow-knative-store"
    signing_secret: str | None = "airflow-knative-signing"
    dags_folder: str = DAGS_FOLDER_IN_IMAGE


def _env(spec: ServiceSpec, options: ManifestOptions) -> list[dict[str, Any]]:
    settings = spec.settings
    env: list[dict[str, Any]] = [
        {
            "name": config.OPTIONS["container_concurrency"].env_var,
            "value": str(settings["container_concurrency"]),
        },
        {
            "name": config.OPTIONS["drain_timeout_seconds"].env_var,
            "value": str(settings["timeout_seconds"]),
        },
    ]
    if options.signing_secret:
        env.append(
            {
                "name": config.OPTIONS["signing_secret"].env_var,
                "valueFrom": {"secretKeyRef": {"name": options.signing_secret, "key": SIGNING_SECRET_KEY}},
            }
        )
    env.extend({"name": k, "value": v} for k, v in sorted(settings.get("env", {}).items()))
    return env


def _resources(settings: dict[str, Any]) -> dict[str, Any]:
    requests = {k: settings[k] for k in ("cpu", "memory") if settings.get(k)}
    limits = {}
    if settings.get("cpu_limit"):
        limits["cpu"] = settings["cpu_limit"]
    memory_limit = settings.get("memory_limit") or settings.get("memory")
    if memory_limit:
        limits["memory"] = memory_limit
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def service_manifest(spec: ServiceSpec, options: ManifestOptions) -> dict[str, Any]:
    """The Knative Service for ``spec``: deterministic, so re-running it changes nothing."""
    settings = spec.settings
    labels = {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: spec.name}
    if settings.get("visibility", "cluster-local") == "cluster-local":
        labels[VISIBILITY_LABEL] = "cluster-local"
    annotations = {
        SERVICE_ANNOTATION: spec.requested_name,
        DAGS_ANNOTATION: ",".join(spec.dag_ids),
        TASKS_ANNOTATION: ",".join(sorted(spec.tasks)),
    }
    template_annotations = {
        AUTOSCALING_PREFIX + annotation: str(settings[key])
        for key, annotation in _AUTOSCALING.items()
        if settings.get(key) is not None
    }
    container: dict[str, Any] = {
        "name": "runtime",
        "image": settings.get("image") or options.image,
        "command": ["airflow-knative"],
        "args": ["serve", "--dags-folder", options.dags_folder],
        "ports": [{"name": "http1", "containerPort": CONTAINER_PORT}],
        "env": _env(spec, options),
        "readinessProbe": {"httpGet": {"path": "/readyz"}},
        "livenessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 3},
    }
    if options.store_secret:
        container["envFrom"] = [{"secretRef": {"name": options.store_secret}}]
    resources = _resources(settings)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "containerConcurrency": settings["container_concurrency"],
        "timeoutSeconds": settings["timeout_seconds"],
        "containers": [container],
    }
    if settings.get("service_account"):
        pod_spec["serviceAccountName"] = settings["service_account"]
    template_metadata: dict[str, Any] = {"labels": {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: spec.name}}
    if template_annotations:
        template_metadata["annotations"] = template_annotations
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"template": {"metadata": template_metadata, "spec": pod_spec}},
    }


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order written (what people expect to read)."""
    import yaml

    return "".join("---\n" + yaml.safe_dump(m, sort_keys=False) for m in manifests)
