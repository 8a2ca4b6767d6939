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


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ARG defaults of a Dockerfile."""
    found = {}
    for op, arg in instructions:
        if op == "ARG" and "=" in arg:
            key, _, value = arg.partition("=")
            found[key.strip()] = value.strip().strip('"')
    return found


def _declared_extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_runtime_dockerfile_matches_the_manifest_and_the_knative_contract() -> None:
    instructions = _dockerfile("Dockerfile.runtime")
    base = next(arg for op, arg in instructions if op == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    entrypoint = yaml.safe_load(next(arg for op, arg in instructions if op == "ENTRYPOINT"))
    container = _runtime_manifest()["spec"]["template"]["spec"]["containers"][0]
    assert entrypoint == container["command"] + container["args"]  # same command, same folder
    user = next(arg for op, arg in reversed(instructions) if op == "USER")
    assert user.isdigit() and user != "0"  # numeric: runAsNonRoot can only verify a numeric user
    assert any(op == "ENV" and "PORT=8080" in arg for op, arg in instructions)
    install = " ".join(arg for op, arg in instructions if op == "RUN" and "pip install" in arg)
    assert '"/src[${EXTRAS}]"' in install
    extras = _args(instructions)["EXTRAS"].split(",")
    assert extras == ["runtime"] and set(extras) <= set(_declared_extras())  # data is opt-in
    compose_extras = _compose()["services"]["knative-runtime"]["build"]["args"]["EXTRAS"].split(",")
    assert set(compose_extras) <= set(_declared_extras())
    copied = [shlex.split(arg)[-1] for op, arg in instructions if op == "COPY"]
    assert "/opt/airflow/dags/" in copied


def _runtime_imports() -> set[str]:
    """Top-level modules the runtime's own code imports (the pod runs nothing else of ours
    besides the data layer, which the base dependencies cover)."""
    import ast

    names = set()
    for path in (REPO / "airflow_provider_knative" / "runtime").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_the_runtime_extra_holds_only_what_the_runtime_imports() -> None:
    """Each distribution of the ``runtime`` extra provides a module the runtime imports."""
    import importlib.metadata

    provided: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provided.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    imported = _runtime_imports()
    for requirement in _declared_extras()["runtime"]:
        dist = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
        assert provided.get(dist, set()) & imported, (
            f"{dist} is in the runtime extra but the runtime never imports it"
        )
    assert {"uvicorn", "airflow"} <= imported


def test_compose_gives_the_runtime_its_drain_time_and_a_read_only_root() -> None:
    runtime = _compose()["services"]["knative-runtime"]
    drain = int(runtime["environment"]["AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS"])
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(runtime["stop_grace_period"]))
    assert match and any(match.groups()), runtime["stop_grace_period"]
    grace = int(match.group(1) or 0) * 60 + int(match.group(2) or 0)
    assert drain + 5 <= grace <= drain + 60  # the drain finishes, then the process exits
    container = _runtime_manifest()["spec"]["template"]["spec"]["containers"][0]
    assert runtime["read_only"] is container["securityContext"]["readOnlyRootFilesystem"] is True
    assert runtime["tmpfs"] == [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is excluded when it or one of its parent folders matches a
    pattern (``*`` and ``?`` stay within one path element, ``**`` spans any number)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern[1:] if negate else pattern)
        if any(compiled.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_and_the_copied_files_in() -> None:
    patterns = _dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        ".local-stack/postgres/data/base/1",
        "airflow_provider_knative/__pycache__/codec.cpython-311.pyc",
        "tests/__pycache__/conftest.cpython-311-pytest-8.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/codec.meta.json",
        ".ruff_cache/0.5/123",
        ".hypothesis/examples/1",
        "bench/results/fanout.json",
        "airflow_provider_knative.egg-info/PKG-INFO",
        "dist/airflow_provider_knative-0.1.0.whl",
        ".env",
    ]:
        assert _ignored(path, patterns), path
    copied = ["pyproject.toml", "README.md", "airflow_provider_knative/__init__.py", "example_dags/fanout.py"]
    copied += [str(p.relative_to(REPO)) for p in (REPO / "airflow_provider_knative").rglob("*.py")]
    for name in ("Dockerfile.runtime", "Dockerfile.airflow"):
        for op, arg in _dockerfile(name):
            if op == "COPY":
                sources = [a for a in shlex.split(arg)[:-1] if not a.startswith("--")]
                copied += [s.replace("${DAGS}", "example_dags").rstrip("/") for s in sources]
    for path in copied:
        assert not _ignored(path, patterns), path


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


def test_helm_values_show_the_multi_executor_setup() -> None:
    """Celery by default, the KnativeExecutor for tasks that ask for it by its alias; task
    logs through the object store (the executor's pods share no disk with the api-server)."""
    from airflow_provider_knative.deploy.collect import executor_names
    from airflow_provider_knative.deploy.manifests import LOGGING_CONFIG_CLASS

    values = yaml.safe_load((REPO / "values.yaml").read_text())
    names, is_default = executor_names(values["config"]["core"]["executor"])
    assert "knative" in names and not is_default
    assert values["config"]["core"]["execution_api_server_url"].endswith("/execution/")
    assert values["config"]["logging"]["logging_config_class"] == LOGGING_CONFIG_CLASS
    assert values["config"]["logging"]["remote_base_log_folder"].startswith("knative+s3://")


def test_the_images_and_the_helm_values_carry_one_airflow_version() -> None:
    """The runtime image, the Airflow image and values.yaml say which Airflow they carry, and it
    is the same one (a runtime of another minor than the scheduler is a version skew)."""
    runtime = _dockerfile("Dockerfile.runtime")
    version = _args(runtime)["AIRFLOW_VERSION"]
    install = " ".join(arg for op, arg in runtime if op == "RUN" and "pip install" in arg)
    assert '"apache-airflow-core==${AIRFLOW_VERSION}"' in install  # the task SDK follows core's minor
    assert ("LABEL", 'org.apache.airflow.version="${AIRFLOW_VERSION}"') in runtime
    base = next(arg for op, arg in _dockerfile("Dockerfile.airflow") if op == "FROM")
    values = yaml.safe_load((REPO / "values.yaml").read_text())
    assert base.startswith(f"apache/airflow:{version}-")
    assert values["airflowVersion"] == values["defaultAirflowTag"] == version
    assert values["images"]["airflow"]["tag"].startswith(f"{version}-")
