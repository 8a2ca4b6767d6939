"""The ``[knative]`` configuration section: one table of options, read lazily.

Every option is readable as ``AIRFLOW__KNATIVE__<KEY>`` from the environment (that is all
the runtime container has) and, inside an Airflow process, from ``airflow.cfg`` through
Airflow's own ``conf``. The table below is also what ``provider_info`` declares, so
``airflow config list`` shows exactly these keys. Bad values are reported at first use with
the key's name and the environment variable that sets it.

This module imports nothing from Airflow at import time: the runtime image stays small.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_knative.errors import ConfigError

__all__ = ["OPTIONS", "SECTION", "ConfigError", "Option", "get", "provider_config_section", "signing_secret"]

SECTION = "knative"


@dataclass(frozen=True)
class Option:
    key: str
    type: type
    default: Any
    description: str
    sensitive: bool = False
    example: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        return f"AIRFLOW__{SECTION.upper()}__{self.key.upper()}"


_KIB = 1024
_MIB = 1024 * 1024

OPTIONS: dict[str, Option] = {
    o.key: o
    for o in [
        # --- XCom backend and object store -------------------------------------------------
        Option(
            "xcom_store_url",
            str,
            "",
            "Where spilled XCom values and large invocation payloads live: s3://bucket/prefix "
            "or file:///absolute/path. Empty means file://$AIRFLOW_HOME/knative_xcom, so a "
            "local setup needs nothing else.",
            example="s3://my-bucket/airflow/xcom",
        ),
        Option(
            "xcom_inline_max_bytes",
            int,
            64 * _KIB,
            "Encoded values up to this many bytes stay inline in Airflow's database (readable "
            "in the UI); larger ones are spilled to the store and only a reference is kept.",
        ),
        Option(
            "xcom_preview_max_chars",
            int,
            1000,
            "Every XCom this backend stores packed or spilled carries a preview of at most this "
            "many characters (the repr of a small value; the first rows or items of a large "
            "one), which the UI's XCom tab and the REST API show. The preview of a spilled value "
            "puts its first rows in Airflow's database; 0 stores none.",
        ),
        Option(
            "s3_endpoint_url",
            str,
            "",
            "Endpoint of an S3-compatible server (MinIO, Ceph, moto). Empty means AWS.",
            example="http://minio.minio.svc:9000",
        ),
        Option("s3_region_name", str, "", "Region for the S3 client. Empty means boto3's default chain."),
        Option(
            "aws_conn_id",
            str,
            "",
            "An Airflow connection (type aws) whose credentials, endpoint_url and region_name the "
            "object store uses; through the amazon provider's AwsBaseHook when it is installed "
            "(role assumption and all), else from the connection's login, password and extras. "
            "Empty means boto3's default chain (environment, profile, IRSA). s3_endpoint_url and "
            "s3_region_name, when set, win over the connection's.",
            example="aws_default",
        ),
        Option(
            "checksum",
            str,
            "blake3",
            "The checksum of every object written to the store, checked on every read: blake3 "
            "(cryptographic, fast enough to keep up with the copy), sha256 (cryptographic, slower than "
            "the copy) or xxh3-128 (fastest, detects corruption but not forgery: only where the bucket "
            "is as trusted as Airflow's database). References name their algorithm, so any is read.",
            choices=("blake3", "sha256", "xxh3-128"),
        ),
        Option(
            "transfer_concurrency",
            int,
            8,
            "Parallel parts per object for multipart uploads and ranged downloads.",
        ),
        Option(
            "transfer_chunk_bytes",
            int,
            16 * _MIB,
            "Part size for multipart uploads and ranged downloads (S3 needs at least 5 MiB).",
        ),
        # --- Invocation (hook, operator, trigger) ------------------------------------------
        Option(
            "url_template",
            str,
            "http://{service}.{namespace}.svc.cluster.local",
            "How a service name becomes a URL when neither url= nor the connection says "
            "otherwise. {service} and {namespace} are filled in; a fixed URL such as "
            "http://127.0.0.1:8080 sends every service to one local runtime.",
        ),
        Option("namespace", str, "default", "Kubernetes namespace of the Knative Services."),
        Option(
            "signing_secret",
            str,
            "",
            "Shared secret for HMAC-SHA256 signatures on invocations. Set the same value on "
            "Airflow and on the runtime; without it the runtime accepts unsigned calls and "
            "warns at start.",
            sensitive=True,
        ),
        Option(
            "signing_secret_file",
            str,
            "",
            "A file holding the signing secret (a mounted Kubernetes Secret); used when "
            "signing_secret is empty.",
        ),
        Option(
            "local_mode",
            bool,
            False,
            "Run @task.knative functions in the Airflow task process through the same codec "
            "round trip instead of calling a service (for dag.test() and debugging).",
        ),
        Option(
            "default_deferrable",
            bool,
            None,
            "Default for deferrable= on KnativeOperator and @task.knative (true: the HTTP call "
            "runs in the triggerer and no worker slot is held while the function runs). Empty "
            "means Airflow's own [operators] default_deferrable decides, as for other deferrable "
            "operators; set, it wins over that for Knative tasks only.",
        ),
        Option("connect_timeout_seconds", float, 10.0, "TCP connect timeout of one HTTP attempt."),
        Option(
            "invoke_timeout_seconds",
            float,
            3600.0,
            "Read timeout of one invocation: the longest a function may run before the call is abandoned.",
        ),
        Option(
            "startup_deadline_seconds",
            float,
            120.0,
            "How long connection errors and 502/503/504 answers (cold start, scale from "
            "zero, overload) are retried with backoff before the task fails.",
        ),
        # --- Workflow gateway (/knative in the api-server) --------------------------------
        Option(
            "gateway_timeout_seconds",
            float,
            60.0,
            "How long POST /knative/runWorkflow waits for the run to finish when the request "
            "does not say (body field timeout). Past it the gateway answers 202 with the run id "
            "and a URL to poll; the run itself goes on.",
        ),
        Option(
            "gateway_poll_interval_seconds",
            float,
            0.2,
            "How often the gateway checks the run's state in the database while it waits "
            "(asynchronously: a waiting request holds no worker thread).",
        ),
        # --- Runtime (inside the Knative container) ----------------------------------------
        Option(
            "container_concurrency",
            int,
            16,
            "Invocations the runtime runs at once; match the Knative Service's "
            "containerConcurrency. Calls beyond it wait.",
        ),
        Option(
            "max_body_bytes",
            int,
            64 * _MIB,
            "Largest invocation body the runtime accepts (413 above it); bigger arguments "
            "travel by reference through the store.",
        ),
        Option(
            "drain_timeout_seconds",
            float,
            30.0,
            "On SIGTERM the runtime stops accepting and waits this long for in-flight calls.",
        ),
        Option(
            "log_max_bytes",
            int,
            1 * _MIB,
            "Captured log of one invocation is cut to this size, with a marker where it was cut.",
        ),
        Option(
            "signature_max_age_seconds",
            int,
            300,
            "Signed invocations older (or newer) than this are refused; inside the window each "
            "signature is accepted once, so a captured request cannot be replayed.",
        ),
        Option(
            "isolation",
            str,
            "process",
            "How the runtime runs each call: process (each call in a process of its own, forked from "
            "a process that imported the DAG folder once, as Airflow runs each task: nothing leaks "
            "between calls, CPU-bound calls use every core, a crash fails only its own call, a cancel "
            "stops it) or thread (in a worker thread of the server: faster, for functions known to be "
            "re-entrant; calls share module globals, the working directory, signal handlers and the "
            "GIL, a crash takes down the pod, and a cancelled call runs on to its end).",
            choices=("thread", "process"),
        ),
        Option(
            "record_lease_seconds",
            float,
            30.0,
            "The runtime keeps a record of every call in the store (xcom_store_url, when it is set): "
            "the replica running a call renews a lease on it six times per this period. A call whose "
            "lease is older than this is abandoned (its pod is gone): a definite failure, reported to "
            "whoever asks. Pods' clocks must agree to well within it.",
        ),
        Option(
            "record_retention_seconds",
            float,
            86400.0,
            "airflow-knative xcom-cleanup removes the record of a call (its claim, lease and outcome "
            "in the store's _records/ folder) once it has not changed for this long. Keep it longer "
            "than any call and any triggerer outage, so a restored trigger still finds the outcome.",
        ),
        # --- KnativeExecutor ---------------------------------------------------------------
        Option(
            "executor_default_service",
            str,
            "airflow-tasks",
            "The Knative Service that runs a task sent to the KnativeExecutor when neither its "
            "executor_config={'knative': {'service': ...}} nor executor_queue_services names one.",
        ),
        Option(
            "executor_queue_services",
            str,
            "",
            "Queue-to-Service routing for the KnativeExecutor: 'queue=service,other=service2'. A task's "
            "queue= picks its Service.",
            example="gpu=gpu-tasks,etl=etl-tasks",
        ),
        Option(
            "executor_heartbeat_grace_seconds",
            float,
            30.0,
            "When the KnativeExecutor loses a task's event stream (pod or scheduler restarted), it follows "
            "the task in the database and fails it (so Airflow retries it) once its heartbeat is this "
            "old: sooner than the scheduler's own task_instance_heartbeat_timeout (300 s).",
        ),
        Option(
            "workloads",
            bool,
            False,
            "Let the runtime run whole Airflow tasks for the KnativeExecutor (POST /workloads): each "
            "in a process forked from one that imported Airflow and the DAG folder, under the task "
            "SDK's own supervisor. airflow-knative manifests sets it on the executor's Services.",
        ),
        Option(
            "request_timeout_seconds",
            float,
            0.0,
            "The Knative Service's timeoutSeconds, as the runtime sees it: a task the executor sent is "
            "stopped (SIGTERM, so Airflow's retries apply) this many seconds minus 15 after it started, "
            "before Knative cuts the request. 0: no limit (outside Knative).",
        ),
        Option(
            "allow_unsigned",
            bool,
            False,
            "Let the runtime serve unsigned invocations on a non-loopback address (no signing "
            "secret). Off by default: without a secret, anyone who reaches the port runs the "
            "DAG's functions. Loopback binds only warn.",
        ),
    ]
}


def _airflow_conf() -> Any | None:
    """Airflow's ``conf`` if this process already imported Airflow; never imports it."""
    for name in ("airflow.configuration", "airflow.sdk.configuration"):
        module = sys.modules.get(name)
        if module is not None:
            try:
                return module.conf
            except AttributeError:
                continue
    return None


_cfg_cache: dict[str, str | None] = {}


def forget_cached() -> None:
    """Drop the airflow.cfg values ``cached=True`` reads kept, so the next read sees the file
    as it is now (a long-lived process after airflow.cfg changed, or a test)."""
    _cfg_cache.clear()


def raw(key: str, *, cached: bool = False) -> str | None:
    """The configured text of ``key``: environment first, then airflow.cfg, else None.

    ``cached=True`` looks airflow.cfg up once per process (Airflow's ``conf.get`` costs tens
    of microseconds, too much on a per-XCom path); the environment is still read every time.
    """
    option = OPTIONS[key]
    value = os.environ.get(option.env_var)
    if value is not None:
        return value
    if cached and key in _cfg_cache:
        return _cfg_cache[key]
    conf = _airflow_conf()
    if conf is not None:
        try:
            value = conf.get(SECTION, key, fallback=None)
        except Exception:  # a broken airflow.cfg must not hide our own defaults
            value = None
        if cached:
            _cfg_cache[key] = value
    return value


def _convert(option: Option, text: str) -> Any:
    where = f"[{SECTION}] {option.key} (env {option.env_var})"
    if option.type is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where} must be true or false, got {text!r}")
    if option.type in (int, float):
        try:
            number = option.type(text.strip())
        except ValueError:
            kind = "a whole number" if option.type is int else "a number"
            raise ConfigError(f"{where} must be {kind}, got {text!r}") from None
        if number < 0:
            raise ConfigError(f"{where} must not be negative, got {text!r}")
        return number
    value = text.strip()
    if option.choices and value not in option.choices:
        raise ConfigError(f"{where} must be one of {', '.join(option.choices)}, got {text!r}")
    return value


def get(key: str, *, cached: bool = False) -> Any:
    """The typed value of ``[knative] key``; raises ConfigError naming the key when invalid.

    ``cached``: see ``raw``.
    """
    option = OPTIONS[key]
    text = raw(key, cached=cached)
    if text is None or text.strip() == "":
        return default(key)
    return _convert(option, text)


def default(key: str) -> Any:
    """The built-in default, with the store folder resolved under ``$AIRFLOW_HOME``."""
    if key == "xcom_store_url":
        home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
        return Path(home, "knative_xcom").resolve().as_uri()
    return OPTIONS[key].default


def signing_secret() -> bytes | None:
    """The shared signing secret, from the option or the file it names; None when unset."""
    secret = get("signing_secret")
    if not secret:
        path = get("signing_secret_file")
        if path:
            try:
                secret = Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"[{SECTION}] signing_secret_file (env {OPTIONS['signing_secret_file'].env_var}) "
                    f"names {path!r}, which cannot be read: {exc.strerror}"
                ) from None
            if not secret:
                raise ConfigError(f"[{SECTION}] signing_secret_file {path!r} is empty")
    return secret.encode() if secret else None


def provider_config_section() -> dict[str, Any]:
    """The ``config`` entry of provider info, generated from the same table."""
    options = {}
    for option in OPTIONS.values():
        type_name = {str: "string", int: "integer", float: "float", bool: "boolean"}[option.type]
        shown_default = "" if option.key == "xcom_store_url" or option.default is None else option.default
        options[option.key] = {
            "description": option.description,
            "version_added": "0.1.0",
            "type": type_name,
            "example": option.example,
            "default": None
            if shown_default == ""
            else str(shown_default).lower()
            if option.type is bool
            else str(shown_default),
            "sensitive": option.sensitive,
        }
        if "{" in str(options[option.key]["default"] or ""):
            # Airflow 3.0 and 3.1 expand every default with str.format unless it is a template:
            # "{service}" would raise KeyError and take their whole CLI down (airflow db migrate)
            options[option.key]["is_template"] = True
    return {
        SECTION: {
            "description": "Knative task execution and the spilling XCom backend.",
            "options": options,
        }
    }
