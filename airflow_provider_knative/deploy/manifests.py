"""ServiceSpec → a ``serving.knative.dev/v1`` Service manifest (a plain dict).

What a Knative operator expects, and why each part is there:
- cluster-local visibility by default: task functions are internal, never on a public gateway;
- ``containerConcurrency`` (hard limit) and the runtime told the same number, so the pod
  never accepts more calls than it runs;
- ``timeoutSeconds`` explicit, and the runtime's drain timeout equal to it: Knative gives a
  terminating pod ``timeoutSeconds`` of grace, so in-flight calls finish on scale-down;
- autoscaling annotations on the revision template (where Knative reads them), and the
  Prometheus scrape annotations for the runtime's ``GET /metrics``;
- readiness on ``/readyz`` (true only once the DAG folder is imported) and liveness on
  ``/healthz``; no port in probes, Knative fills in the serving port;
- the store settings and the signing secret come from Kubernetes Secrets, never inline;
- labels and annotations lead from a Service back to the DAGs and tasks that use it;
- a securityContext that Pod Security "restricted" admits, set on the container (Knative
  gates the pod-level securityContext behind a feature flag; the container-level fields are
  always allowed and are what the restricted profile checks): non-root, no privilege
  escalation, no capabilities, the runtime's default seccomp profile, and a read-only root
  filesystem with an emptyDir on /tmp (the runtime writes nothing else);
- annotations the user asked for are recorded in an annotation of ours, so a later deploy
  can remove one the user dropped without touching annotations other tools added.

One function builds the container (:func:`container_spec`) and one the revision's pod spec
(:func:`revision_spec`): another kind of Service (same image, another entrypoint) reuses
both with its own arguments, environment and timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.deploy.collect import ServiceSpec
from airflow_provider_knative.deploy.settings import DEFAULT_GPU_RESOURCE

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
LOGGING_CONFIG_CLASS = "airflow_provider_knative.log_config.LOGGING_CONFIG"

#: on every revision template: Prometheus (its kubernetes_sd "pod" role with the usual relabelling)
#: scrapes the runtime's GET /metrics on the user container's port, beside the queue-proxy's own
#: metrics. A Service's ``annotations`` setting may override them (``prometheus.io/scrape: "false"``).
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(CONTAINER_PORT),
    "prometheus.io/path": "/metrics",
}

_AUTOSCALING = {
    "min_scale": "min-scale",
    "max_scale": "max-scale",
    "initial_scale": "initial-scale",
    "target": "target",
    "scale_down_delay": "scale-down-delay",
}


#: Service annotations listing the user's annotation keys, so a removed one can be removed
SERVICE_ANNOTATION_KEYS = ANNOTATION_PREFIX + "service-annotation-keys"
TEMPLATE_ANNOTATION_KEYS = ANNOTATION_PREFIX + "template-annotation-keys"
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"


@dataclass(frozen=True)
class ManifestOptions:
    """Deployment-wide choices (command-line options), as opposed to per-service settings."""

    image: str
    store_secret: str | None = "airflow-knative-store"
    signing_secret: str | None = "airflow-knative-signing"
    dags_folder: str = DAGS_FOLDER_IN_IMAGE
    #: where the KnativeExecutor's tasks reach the Execution API (the api-server's /execution/)
    execution_api_url: str | None = None
    #: ``knative+s3://...``: the object store folder task logs go to (read by the api-server)
    remote_log_folder: str | None = None


#: Knative gives a pod its revision's ``timeoutSeconds`` as termination grace period; the user
#: container's preStop hook first waits for the queue-proxy to drain, which takes at least this
#: long (its drain sleep), so the runtime's own drain gets the rest
KNATIVE_PRESTOP_DRAIN_SECONDS = 30
#: what the runtime needs after its drain: record how each call it still owns ended, then exit
RECORD_MARGIN_SECONDS = 5
#: the shortest drain the runtime is given, whatever the timeout
MIN_DRAIN_SECONDS = 5


def drain_seconds(timeout_seconds: int) -> int:
    """The runtime's ``drain_timeout_seconds`` for a Service with ``timeout_seconds``: what is
    left of Knative's grace period (= the timeout) after the queue-proxy's preStop drain, minus
    the time to record outcomes, so the process exits before the kubelet's SIGKILL."""
    return max(MIN_DRAIN_SECONDS, timeout_seconds - KNATIVE_PRESTOP_DRAIN_SECONDS - RECORD_MARGIN_SECONDS)


def security_context(settings: dict[str, Any]) -> dict[str, Any]:
    """The container's securityContext: everything Pod Security "restricted" requires.

    runAsNonRoot makes the kubelet refuse an image whose user is root (or not numeric), so
    images must say ``USER 50000`` (ours does) rather than a user name.
    """
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": bool(settings.get("read_only_root_filesystem", True)),
    }


def _value_from(reference: dict[str, Any]) -> dict[str, Any]:
    kind = "secretKeyRef" if "secret" in reference else "configMapKeyRef"
    selector = {"name": reference.get("secret") or reference["config_map"], "key": reference["key"]}
    if "optional" in reference:
        selector["optional"] = reference["optional"]
    return {kind: selector}


def _env(spec: ServiceSpec, options: ManifestOptions) -> list[dict[str, Any]]:
    settings = spec.settings
    env: list[dict[str, Any]] = [
        {
            "name": config.OPTIONS["container_concurrency"].env_var,
            "value": str(settings["container_concurrency"]),
        },
        {
            "name": config.OPTIONS["drain_timeout_seconds"].env_var,
            "value": str(drain_seconds(settings["timeout_seconds"])),
        },
    ]
    if options.signing_secret:
        env.append(
            {
                "name": config.OPTIONS["signing_secret"].env_var,
                "valueFrom": {"secretKeyRef": {"name": options.signing_secret, "key": SIGNING_SECRET_KEY}},
            }
        )
    if spec.workloads:
        env += _workload_env(spec, options)
    for name, value in sorted(settings.get("env", {}).items()):
        if isinstance(value, dict):
            env.append({"name": name, "valueFrom": _value_from(value)})
        else:
            env.append({"name": name, "value": value})
    return env


def _workload_env(spec: ServiceSpec, options: ManifestOptions) -> list[dict[str, Any]]:
    """What a Service running the KnativeExecutor's tasks needs: no database, only the
    Execution API, the same DAG bundle as the scheduler, and the task logs' destination."""
    env = [
        {"name": config.OPTIONS["workloads"].env_var, "value": "true"},
        {
            "name": config.OPTIONS["request_timeout_seconds"].env_var,
            "value": str(spec.settings["timeout_seconds"]),
        },
        {"name": "AIRFLOW__CORE__DAGS_FOLDER", "value": options.dags_folder},
    ]
    if options.execution_api_url:
        env.append({"name": "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "value": options.execution_api_url})
    if options.remote_log_folder:
        env += [
            {"name": "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS", "value": LOGGING_CONFIG_CLASS},
            {"name": "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER", "value": options.remote_log_folder},
        ]
    return env


def _env_from(settings: dict[str, Any], options: ManifestOptions) -> list[dict[str, Any]]:
    """The store Secret first, then the user's sources (a later source wins on a clash)."""
    sources: list[dict[str, Any]] = []
    if options.store_secret:
        sources.append({"secretRef": {"name": options.store_secret}})
    for source in settings.get("env_from", []):
        kind = "secretRef" if "secret" in source else "configMapRef"
        ref: dict[str, Any] = {"name": source.get("secret") or source["config_map"]}
        if "optional" in source:
            ref["optional"] = source["optional"]
        entry: dict[str, Any] = {kind: ref}
        if "prefix" in source:
            entry["prefix"] = source["prefix"]
        sources.append(entry)
    return sources


def _resources(settings: dict[str, Any]) -> dict[str, Any]:
    requests = {k: settings[k] for k in ("cpu", "memory") if settings.get(k)}
    limits = {}
    if settings.get("cpu_limit"):
        limits["cpu"] = settings["cpu_limit"]
    memory_limit = settings.get("memory_limit") or settings.get("memory")
    if memory_limit:
        limits["memory"] = memory_limit
    if settings.get("gpu"):
        # extended resources are limits only: Kubernetes sets the request equal to the limit
        limits[settings.get("gpu_resource") or DEFAULT_GPU_RESOURCE] = str(settings["gpu"])
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def runtime_args(options: ManifestOptions) -> list[str]:
    """Arguments of ``airflow-knative`` for the function runtime (the image's ENTRYPOINT too)."""
    return ["serve", "--dags-folder", options.dags_folder]


def container_spec(
    spec: ServiceSpec,
    options: ManifestOptions,
    args: list[str],
    extra_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The one container of a Service: image, command, env, probes, resources, security.

    ``args`` and ``extra_env`` are what differs between kinds of Service built from one image.
    """
    settings = spec.settings
    container: dict[str, Any] = {
        "name": "runtime",
        "image": settings.get("image") or options.image,
        "command": ["airflow-knative"],
        "args": list(args),
        "ports": [{"name": "http1", "containerPort": CONTAINER_PORT}],
        "env": _env(spec, options) + list(extra_env or []),
        "readinessProbe": {"httpGet": {"path": "/readyz"}},
        "livenessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": security_context(settings),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH}],
    }
    env_from = _env_from(settings, options)
    if env_from:
        container["envFrom"] = env_from
    resources = _resources(settings)
    if resources:
        container["resources"] = resources
    return container


def revision_spec(spec: ServiceSpec, container: dict[str, Any], timeout_seconds: int) -> dict[str, Any]:
    """The revision template's pod spec around ``container``."""
    settings = spec.settings
    pod_spec: dict[str, Any] = {
        "containerConcurrency": settings["container_concurrency"],
        "timeoutSeconds": timeout_seconds,
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
    }
    if settings.get("service_account"):
        pod_spec["serviceAccountName"] = settings["service_account"]
    if settings.get("image_pull_secrets"):
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings["image_pull_secrets"]]
    return pod_spec


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
        **SCRAPE_ANNOTATIONS,
        **{
            AUTOSCALING_PREFIX + annotation: str(settings[key])
            for key, annotation in _AUTOSCALING.items()
            if settings.get(key) is not None
        },
    }
    # the user's annotations (settings refuse our own keys), and a record of which they are
    for record, user, target in (
        (TEMPLATE_ANNOTATION_KEYS, settings.get("annotations", {}), template_annotations),
        (SERVICE_ANNOTATION_KEYS, settings.get("service_annotations", {}), annotations),
    ):
        if user:
            annotations[record] = ",".join(sorted(user))
            target.update(sorted(user.items()))
    container = container_spec(spec, options, runtime_args(options))
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
        "spec": {
            "template": {
                "metadata": template_metadata,
                "spec": revision_spec(spec, container, settings["timeout_seconds"]),
            }
        },
    }


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order written (what people expect to read)."""
    import yaml

    return "".join("---\n" + yaml.safe_dump(m, sort_keys=False) for m in manifests)


def to_json(manifests: list[dict[str, Any]]) -> str:
    """One ``v1/List`` (what ``kubectl get -o json`` prints and ``kubectl apply -f`` accepts)."""
    import json

    return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}, indent=2) + "\n"
