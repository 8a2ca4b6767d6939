"""Per-service deployment settings: the one table of accepted keys, their checks and defaults.

Settings come from ``service_settings={...}`` on ``@task.knative`` / ``KnativeOperator`` and
from a defaults file; both are checked here, so a typo such as ``min_scael`` is an error
that lists the valid keys instead of a setting that silently does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from airflow_provider_knative import config
from airflow_provider_knative.errors import SettingsError

# Environment variables Knative reserves (the webhook rejects them) or that we set ourselves.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
MANAGED_ENV = frozenset(
    {
        config.OPTIONS["container_concurrency"].env_var,
        config.OPTIONS["drain_timeout_seconds"].env_var,
        config.OPTIONS["signing_secret"].env_var,
    }
)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: annotation prefixes whose keys this tool writes itself (from other settings or as bookkeeping)
RESERVED_ANNOTATION_PREFIXES = ("airflow-provider-knative/",)
#: autoscaling annotations that have their own setting (the setting is the one way to set them)
DERIVED_ANNOTATIONS = {
    "autoscaling.knative.dev/min-scale": "min_scale",
    "autoscaling.knative.dev/max-scale": "max_scale",
    "autoscaling.knative.dev/initial-scale": "initial_scale",
    "autoscaling.knative.dev/target": "target",
    "autoscaling.knative.dev/scale-down-delay": "scale_down_delay",
}
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = {"m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9)}
_UNITS.update({"T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)})
_UNITS.update({f"{u}i": Decimal(1024 ** (i + 1)) for i, u in enumerate("KMGTPE")})


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"must be a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise SettingsError(f"must be {bound}, got {value}")
        return value

    return check


def _target(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SettingsError(f"must be a number above 0 (concurrent requests per pod), got {value!r}")
    return value


def quantity_value(text: str) -> Decimal:
    """The number a Kubernetes quantity stands for (``500m`` → 0.5, ``1Gi`` → 1073741824)."""
    match = _QUANTITY.match(text)
    if not match:
        raise SettingsError(
            f"must be a Kubernetes quantity such as '500m', '2', '512Mi' or '1Gi', got {text!r}"
        )
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
        raise SettingsError(f"is not a number: {text!r}") from None
    unit = match.group(3)
    return number * _UNITS[unit] if unit else number


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"must be a Kubernetes quantity such as '500m' or '1Gi', got {value!r}")
    text = str(value)
    if quantity_value(text) <= 0:
        raise SettingsError(f"must be above zero, got {text!r}")
    return text


def _duration(value: Any) -> str:
    """Knative's scale-down-delay: a Go duration between 0s and 1h; plain numbers are seconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
        text = f"{value}s"
    elif isinstance(value, str) and value and (match := _DURATION.match(value)):
        h, m, s = (int(g or 0) for g in match.groups())
        seconds, text = h * 3600 + m * 60 + s, value
    else:
        raise SettingsError(f"must be a duration such as '30s', '15m' or '1h' (or seconds), got {value!r}")
    if not 0 <= seconds <= 3600:
        raise SettingsError(f"must be between 0s and 1h (Knative's limit), got {value!r}")
    return text


def _dns_subdomain(value: Any) -> str:
    if not isinstance(value, str) or not _DNS_SUBDOMAIN.match(value) or len(value) > 253:
        raise SettingsError(f"must be a Kubernetes object name (lowercase, digits, '-', '.'), got {value!r}")
    return value


def _env_reference(name: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """``{secret: NAME, key: KEY}`` or ``{config_map: NAME, key: KEY}`` (+ ``optional``)."""
    kinds = [k for k in ("secret", "config_map") if k in item]
    unknown = set(item) - {"secret", "config_map", "key", "optional"}
    if len(kinds) != 1 or unknown or "key" not in item:
        raise SettingsError(
            f"{name} must be a string, a number, or a reference {{secret: NAME, key: KEY}} / "
            f"{{config_map: NAME, key: KEY}} (optionally optional: true), got {dict(item)!r}"
        )
    key = item["key"]
    if not isinstance(key, str) or not re.match(r"^[-._a-zA-Z0-9]+$", key):
        raise SettingsError(f"{name}: key {key!r} is not a valid Secret/ConfigMap key")
    reference: dict[str, Any] = {kinds[0]: _dns_subdomain_in(name, item[kinds[0]]), "key": key}
    if "optional" in item:
        if not isinstance(item["optional"], bool):
            raise SettingsError(f"{name}: optional must be true or false, got {item['optional']!r}")
        reference["optional"] = item["optional"]
    return reference


def _dns_subdomain_in(where: str, value: Any) -> str:
    try:
        return _dns_subdomain(value)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from None


def _env(value: Any) -> dict[str, Any]:
    """Plain values become strings; Secret/ConfigMap keys stay references (never values)."""
    if not isinstance(value, Mapping):
        raise SettingsError(f"must be a mapping of variable name to value, got {value!r}")
    env: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise SettingsError(f"variable name {name!r} is not a valid environment variable name")
        if name in RESERVED_ENV:
            raise SettingsError(f"{name} is reserved by Knative and set by it; remove it")
        if name in MANAGED_ENV:
            raise SettingsError(f"{name} is derived from the service settings; set those instead")
        if isinstance(item, Mapping):
            env[name] = _env_reference(name, item)
        elif isinstance(item, bool) or not isinstance(item, str | int | float):
            raise SettingsError(f"{name} must be a string or number, got {item!r}")
        else:
            env[name] = str(item)
    return env


def _env_from(value: Any) -> list[dict[str, Any]]:
    """Whole Secrets/ConfigMaps as variables: ``[{secret: NAME}, {config_map: NAME, prefix: P}]``."""
    if not isinstance(value, list | tuple):
        raise SettingsError(f"must be a list such as [{{secret: db-credentials}}], got {value!r}")
    sources: list[dict[str, Any]] = []
    for item in value:
        kinds = [k for k in ("secret", "config_map") if isinstance(item, Mapping) and k in item]
        if not isinstance(item, Mapping) or len(kinds) != 1 or set(item) - {*kinds, "prefix", "optional"}:
            raise SettingsError(
                "entries must be {secret: NAME} or {config_map: NAME}, optionally with prefix and "
                f"optional, got {item!r}"
            )
        source: dict[str, Any] = {kinds[0]: _dns_subdomain(item[kinds[0]])}
        prefix = item.get("prefix")
        if prefix is not None:
            if not isinstance(prefix, str) or not _ENV_NAME.match(prefix):
                raise SettingsError(f"prefix {prefix!r} is not a valid start of a variable name")
            source["prefix"] = prefix
        if "optional" in item:
            if not isinstance(item["optional"], bool):
                raise SettingsError(f"optional must be true or false, got {item['optional']!r}")
            source["optional"] = item["optional"]
        sources.append(source)
    return sources


def _qualified_name(value: Any, what: str) -> str:
    """A Kubernetes qualified name: optional DNS-subdomain prefix, '/', name of at most 63 chars."""
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{what} must be a non-empty string, got {value!r}")
    prefix, _, name = value.rpartition("/")
    if (prefix and (not _DNS_SUBDOMAIN.match(prefix) or len(prefix) > 253)) or (
        not _NAME_PART.match(name) or len(name) > 63
    ):
        raise SettingsError(
            f"{what} {value!r} is not a valid Kubernetes key: an optional DNS prefix and '/', "
            "then at most 63 letters, digits, '-', '_' or '.'"
        )
    return value


def _annotations(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise SettingsError(f"must be a mapping of annotation key to string value, got {value!r}")
    annotations: dict[str, str] = {}
    for key, item in value.items():
        _qualified_name(key, "annotation key")
        if key.startswith(RESERVED_ANNOTATION_PREFIXES):
            raise SettingsError(f"annotation {key!r} is written by airflow-knative itself; remove it")
        if key in DERIVED_ANNOTATIONS:
            raise SettingsError(
                f"annotation {key!r} comes from the {DERIVED_ANNOTATIONS[key]!r} setting; set that"
            )
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise SettingsError(f"annotation {key!r} must be a string (or a number), got {item!r}")
        annotations[key] = str(item)
    return annotations


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError(f"must be a list of Secret names, got {value!r}")
    names = [_dns_subdomain(v) for v in value]
    if len(set(names)) != len(names):
        raise SettingsError(f"names a Secret twice: {names!r}")
    return names


def _extended_resource(value: Any) -> str:
    """An extended resource name such as ``nvidia.com/gpu``: domain-prefixed, not kubernetes.io."""
    name = _qualified_name(value, "resource name")
    domain = name.rpartition("/")[0]
    if not domain or domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        raise SettingsError(
            f"resource name {value!r} must be an extended resource with a vendor domain, "
            "such as 'nvidia.com/gpu' or 'amd.com/gpu'"
        )
    return name


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"must be true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise SettingsError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


def _image(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise SettingsError(f"must be a container image reference such as 'registry/app:1.2', got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    key: str
    check: Callable[[Any], Any]
    description: str


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting(
            "container_concurrency",
            _integer(1, 1000),
            "Hard limit of requests one pod serves at once (spec.template.spec.containerConcurrency); "
            "also given to the runtime as AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY.",
        ),
        Setting(
            "timeout_seconds",
            _integer(1, 3600),
            "Longest a request may take (timeoutSeconds). Above 600 the cluster's "
            "max-revision-timeout-seconds must be raised too.",
        ),
        Setting(
            "min_scale", _integer(0), "autoscaling.knative.dev/min-scale: pods kept warm (0 = scale to zero)."
        ),
        Setting(
            "max_scale",
            _integer(0),
            "autoscaling.knative.dev/max-scale: upper bound of pods (0 = unlimited).",
        ),
        Setting(
            "initial_scale", _integer(0), "autoscaling.knative.dev/initial-scale: pods of a new revision."
        ),
        Setting(
            "target",
            _target,
            "autoscaling.knative.dev/target: concurrent requests per pod the autoscaler aims for.",
        ),
        Setting(
            "scale_down_delay", _duration, "autoscaling.knative.dev/scale-down-delay, e.g. '15m' (0s..1h)."
        ),
        Setting("cpu", _quantity, "CPU request of the runtime container, e.g. '500m'."),
        Setting(
            "memory",
            _quantity,
            "Memory request, e.g. '512Mi'; also the memory limit unless memory_limit is set.",
        ),
        Setting("cpu_limit", _quantity, "CPU limit (none by default: limits throttle, requests schedule)."),
        Setting("memory_limit", _quantity, "Memory limit; defaults to the memory request."),
        Setting(
            "gpu",
            _integer(1, 64),
            "GPUs per pod: a limit on gpu_resource (nvidia.com/gpu unless set otherwise).",
        ),
        Setting(
            "gpu_resource",
            _extended_resource,
            "Extended resource the gpu count is for, e.g. 'amd.com/gpu' (default nvidia.com/gpu).",
        ),
        Setting(
            "env",
            _env,
            "Environment variables: plain values, or {secret: NAME, key: KEY} / {config_map: NAME, key: KEY} "
            "references (a secret never appears in the manifest).",
        ),
        Setting(
            "env_from",
            _env_from,
            "Whole Secrets/ConfigMaps as variables: [{secret: NAME}, {config_map: NAME, prefix: P}].",
        ),
        Setting(
            "annotations",
            _annotations,
            "Annotations on the revision template (the pods), e.g. autoscaling.knative.dev/metric.",
        ),
        Setting("service_annotations", _annotations, "Annotations on the Knative Service object itself."),
        Setting("image_pull_secrets", _names, "Secrets (in the service's namespace) to pull the image with."),
        Setting(
            "read_only_root_filesystem",
            _boolean,
            "true (default): the container's root filesystem is read-only and /tmp is an emptyDir; "
            "false if DAG code writes elsewhere.",
        ),
        Setting("visibility", _choice("cluster-local", "external"), "cluster-local (default) or external."),
        Setting("service_account", _dns_subdomain, "Kubernetes service account the pods run as."),
        Setting("image", _image, "Image for this service instead of --image."),
    ]
}

DEFAULTS: dict[str, Any] = {
    "container_concurrency": config.OPTIONS["container_concurrency"].default,
    "timeout_seconds": 600,
    "cpu": "250m",
    "memory": "512Mi",
    "visibility": "cluster-local",
    "read_only_root_filesystem": True,
}

#: settings that are mappings: tasks and defaults layers merge them key by key
MAPPING_SETTINGS = ("env", "annotations", "service_annotations")


def valid_keys() -> str:
    return ", ".join(sorted(SETTINGS))


def check_settings(settings: Any, where: str) -> dict[str, Any]:
    """Validated, normalized copy of ``settings``; SettingsError names ``where`` and the key."""
    if not isinstance(settings, Mapping):
        raise SettingsError(f"{where}: service_settings must be a mapping, got {type(settings).__name__}")
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        setting = SETTINGS.get(key)
        if setting is None:
            raise SettingsError(
                f"{where}: unknown service setting {key!r}; valid settings are: {valid_keys()}"
            )
        try:
            checked[key] = setting.check(value)
        except SettingsError as exc:
            raise SettingsError(f"{where}: service setting {key!r} {exc}") from None
    return checked


def check_combination(settings: Mapping[str, Any], where: str) -> None:
    """Checks across keys, on the merged settings of one service."""
    low, high = settings.get("min_scale"), settings.get("max_scale")
    if low is not None and high and low > high:
        raise SettingsError(f"{where}: min_scale {low} is above max_scale {high}")
    initial = settings.get("initial_scale")
    if initial is not None and high and initial > high:
        raise SettingsError(f"{where}: initial_scale {initial} is above max_scale {high}")
    target, concurrency = settings.get("target"), settings.get("container_concurrency")
    if target is not None and concurrency and target > concurrency:
        raise SettingsError(
            f"{where}: target {target} is above container_concurrency {concurrency}; a pod never "
            "receives more than container_concurrency requests, so lower the target"
        )
    if settings.get("gpu_resource") and not settings.get("gpu"):
        raise SettingsError(
            f"{where}: gpu_resource {settings['gpu_resource']} is set but gpu (the count) is not"
        )
    for request, limit in (("cpu", "cpu_limit"), ("memory", "memory_limit")):
        if settings.get(request) and settings.get(limit):
            if quantity_value(settings[request]) > quantity_value(settings[limit]):
                raise SettingsError(
                    f"{where}: {request} {settings[request]} is above {limit} {settings[limit]}"
                )


@dataclass(frozen=True)
class DefaultsFile:
    """``--defaults FILE``: ``defaults:`` for every service and ``services: {name: {...}}``."""

    defaults: dict[str, Any]
    services: dict[str, dict[str, Any]]

    @classmethod
    def empty(cls) -> DefaultsFile:
        return cls({}, {})

    @classmethod
    def load(cls, path: str | Path) -> DefaultsFile:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"defaults file {path}: cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"defaults file {path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"defaults", "services"}:
            raise SettingsError(
                f"defaults file {path}: expected a mapping with 'defaults:' (settings for every service) "
                f"and/or 'services:' (settings per service name), got keys {sorted(data) if isinstance(data, dict) else data!r}"
            )
        defaults = check_settings(data.get("defaults") or {}, f"{path}: defaults")
        services_raw = data.get("services") or {}
        if not isinstance(services_raw, dict):
            raise SettingsError(f"defaults file {path}: 'services' must map service names to settings")
        services = {
            str(name): check_settings(values or {}, f"{path}: services.{name}")
            for name, values in services_raw.items()
        }
        return cls(defaults, services)
