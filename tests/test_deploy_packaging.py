"""docker/, values.yaml, deploy/rbac.yaml: parsed, and wired with the keys the code reads.

No Docker engine or Helm runs here; these tests keep the files consistent with the code
(option names from config.OPTIONS, the runtime command, Secret names and keys).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import tomllib
import yaml

from airflow_provider_knative import config
from airflow_provider_knative.deploy.collect import ServiceSpec
from airflow_provider_knative.deploy.manifests import SIGNING_SECRET_KEY, ManifestOptions, service_manifest
from airflow_provider_knative.deploy.settings import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
KNOWN_ENV = {o.env_var for o in config.OPTIONS.values()}
XCOM_BACKEND = "airflow_provider_knative.xcom.KnativeXComBackend"


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker" / "docker-compose.yaml").read_text())


def _dockerfile(name: str) -> list[tuple[str, str]]:
    text = (REPO / "docker" / name).read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _knative_keys(env: dict[str, Any]) -> set[str]:
    return {k for k in env if k.startswith("AIRFLOW__KNATIVE__")}


def _runtime_manifest() -> dict[str, Any]:
    spec = ServiceSpec(name="w", requested_name="w", namespace="default", settings=dict(DEFAULTS))
    return service_manifest(spec, ManifestOptions(image="img"))


def test_compose_wires_the_xcom_backend_store_and_runtime() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__XCOM_BACKEND"] == XCOM_BACKEND
        assert _knative_keys(env) <= KNOWN_ENV, name
        assert {"AIRFLOW__KNATIVE__XCOM_STORE_URL", "AIRFLOW__KNATIVE__S3_ENDPOINT_URL"} <= set(env)
    airflow_env = services["airflow-scheduler"]["environment"]
    runtime_env = services["knative-runtime"]["environment"]
    assert _knative_keys(runtime_env) <= KNOWN_ENV
    for key in (
        "AIRFLOW__KNATIVE__XCOM_STORE_URL",
        "AIRFLOW__KNATIVE__S3_ENDPOINT_URL",
        "AIRFLOW__KNATIVE__SIGNING_SECRET",
    ):
        assert runtime_env[key] == airflow_env[key], key  # one store, one shared secret
    assert "${KNATIVE_SIGNING_SECRET:?" in airflow_env["AIRFLOW__KNATIVE__SIGNING_SECRET"]  # never inline

    # every invocation goes to the runtime container, on the port it listens on
    target = urlparse(airflow_env["AIRFLOW__KNATIVE__URL_TEMPLATE"])
    assert target.hostname == "knative-runtime" and str(target.port) == runtime_env["PORT"]

    # the bucket of the store URL is the one minio-init creates, on the endpoint's host
    bucket = urlparse(airflow_env["AIRFLOW__KNATIVE__XCOM_STORE_URL"]).netloc
    assert f"mc mb --ignore-existing local/{bucket}" in " ".join(services["minio-init"]["command"])
    assert urlparse(airflow_env["AIRFLOW__KNATIVE__S3_ENDPOINT_URL"]).hostname in services

    # the runtime container gets what a Knative Service would give it
    manifest_env = {
        e["name"]: e.get("value")
        for e in _runtime_manifest()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for key in ("AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY", "AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS"):
        assert runtime_env[key] == manifest_env[key], key
    assert services["knative-runtime"]["build"]["dockerfile"] == "docker/Dockerfile.runtime"
    assert services["airflow-scheduler"]["build"]["dockerfile"] == "docker/Dockerfile.airflow"


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image", "")
        if "build" in service:
            continue
        assert re.search(r":[\w.-]*\d", image) and not image.endswith(":latest"), (name, image)


def test_xcom_backend_class_exists() -> None:
    import importlib

    module, _, name = XCOM_BACKEND.rpartition(".")
    assert hasattr(importlib.import_module(module), name)


def test_runtime_dockerfile_matches_the_manifest_and_the_knative_contract() -> None:
    instructions = _dockerfile("Dockerfile.runtime")
    base = next(arg for op, arg in instructions if op == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    entrypoint = yaml.safe_load(next(arg for op, arg in instructions if op == "ENTRYPOINT"))
    container = _runtime_manifest()["spec"]["template"]["spec"]["containers"][0]
    assert entrypoint == container["command"] + container["args"]  # same command, same folder
    user = next(arg for op, arg in instructions if op == "USER")
    assert user not in ("root", "0")
    assert any(op == "ENV" and "PORT=8080" in arg for op, arg in instructions)
    install = " ".join(arg for op, arg in instructions if op == "RUN" and "pip install" in arg)
    extras = re.search(r"\[([\w,]+)\]", install)
    assert extras is not None
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    assert set(extras.group(1).split(",")) == {"runtime", "data"} and {"runtime", "data"} <= set(declared)
    assert any("uvicorn" in dep for dep in declared["runtime"])
    copied = [shlex.split(arg)[-1] for op, arg in instructions if op == "COPY"]
    assert "/opt/airflow/dags/" in copied


def test_airflow_dockerfile_pins_airflow_3() -> None:
    instructions = _dockerfile("Dockerfile.airflow")
    base = next(arg for op, arg in instructions if op == "FROM")
    assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+(-python3\.\d+)?", base), base
    install = " ".join(arg for op, arg in instructions if op == "RUN")
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install and "/tmp/provider[" in install


def test_helm_values_wire_the_backend_store_and_secrets() -> None:
    values = yaml.safe_load((REPO / "values.yaml").read_text())
    assert values["airflowVersion"].startswith("3.")
    assert values["images"]["airflow"]["repository"] and values["images"]["airflow"]["tag"]
    assert values["config"]["core"]["xcom_backend"] == XCOM_BACKEND
    assert set(values["config"]["knative"]) <= set(config.OPTIONS)
    defaults = ManifestOptions(image="x")
    (signing,) = [s for s in values["secret"] if s["envName"] == config.OPTIONS["signing_secret"].env_var]
    assert (signing["secretName"], signing["secretKey"]) == (defaults.signing_secret, SIGNING_SECRET_KEY)
    assert {s["envName"] for s in values["secret"]} <= KNOWN_ENV | {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert env_from == [{"secretRef": {"name": defaults.store_secret}}]  # the runtime's Secret too
    text = (REPO / "values.yaml").read_text()
    for key in ("AIRFLOW__KNATIVE__XCOM_STORE_URL", "AIRFLOW__KNATIVE__S3_ENDPOINT_URL"):
        assert key in KNOWN_ENV and f"--from-literal={key}=" in text  # documented Secret layout


#: values the chart deprecated (release notes of chart 1.20 and 1.21: moved under
#: workers.celery / workers.kubernetes); using one keeps working today and breaks later
DEPRECATED_CHART_KEYS = [
    ("workers", "serviceAccount"),
    ("workers", "safeToEvict"),
    ("workers", "hostAliases"),
    ("workers", "priorityClassName"),
    ("workers", "runtimeClassName"),
    ("workers", "schedulerName"),
    ("workers", "extraContainers"),
    ("workers", "extraInitContainers"),
    ("workers", "extraVolumes"),
    ("workers", "command"),
    ("workers", "securityContexts"),
    ("workers", "containerLifecycleHooks"),
    ("workers", "kerberosSidecar"),
    ("workers", "kerberosInitContainer"),
    ("workers", "terminationGracePeriodSeconds"),
    ("workers", "nodeSelector"),
    ("securityContext",),
]


def test_helm_values_use_no_deprecated_chart_keys() -> None:
    values = yaml.safe_load((REPO / "values.yaml").read_text())
    used = []
    for path in DEPRECATED_CHART_KEYS:
        node: Any = values
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            used.append(".".join(path))
    assert not used, f"values.yaml uses deprecated chart keys: {used}"
    for executor in ("celery", "kubernetes"):  # the replacements are there, with fixed names
        account = values["workers"][executor]["serviceAccount"]
        assert account["create"] is True and account["name"]
