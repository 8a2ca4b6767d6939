"""DAGs → the Knative Services they need.

Parses the DAG folder with Airflow's own DagBag (so "what Airflow sees" and "what we
deploy" cannot disagree), finds every ``@task.knative`` and ``KnativeOperator`` task and every
task the KnativeExecutor runs (by the deployment's ``[core] executor`` and the executor's own
routing rule, ``executors.routing``), and groups them by service: tasks that share a service
share warm pods, so there is one Knative Service per (namespace, service name). A Service
that runs executor tasks is marked ``workloads``. Every problem found is collected, and all
of them are reported together, so one run shows everything to fix.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_knative import errors
from airflow_provider_knative.deploy.settings import (
    DEFAULTS,
    MAPPING_SETTINGS,
    DefaultsFile,
    SettingsError,
    check_combination,
    check_settings,
)
from airflow_provider_knative.functions import DECORATOR_NAME
from airflow_provider_knative.knative.names import InvalidServiceName, is_valid_namespace, service_name

_LEVELS_VAR = "AIRFLOW__LOGGING__NAMESPACE_LEVELS"


class CollectError(errors.CollectError):
    """The DAG folder cannot be turned into services; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ServiceSpec:
    """One Knative Service to deploy, and the tasks that call it."""

    name: str  # the Kubernetes name (DNS-1035, maybe shortened)
    requested_name: str  # as written in the DAG
    namespace: str
    settings: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # "dag_id.task_id"
    #: runs whole Airflow tasks for the KnativeExecutor (POST /workloads)
    workloads: bool = False

    @property
    def dag_ids(self) -> list[str]:
        return sorted({ref.rsplit(".", 1)[0] for ref in self.tasks})


@dataclass
class Collection:
    services: list[ServiceSpec]
    skipped: list[str]  # human-readable notes on knative tasks we do not deploy


@dataclass
class _TaskUse:
    ref: str
    service: Any
    namespace: Any
    url: Any
    settings: Any
    workloads: bool = False


OUR_EXECUTOR = "airflow_provider_knative.executors.KnativeExecutor"


def executor_names(core_executor: str) -> tuple[set[str], bool]:
    """The names a task's ``executor=`` may give the KnativeExecutor in a deployment whose
    ``[core] executor`` is ``core_executor``, and whether it is the default (listed first)."""
    names: set[str] = set()
    default = False
    for position, entry in enumerate(filter(None, (e.strip() for e in core_executor.split(",")))):
        alias, _, path = entry.rpartition(":")
        if path.split(".")[-1] == "KnativeExecutor" and path.startswith("airflow_provider_knative"):
            names.update({path, "KnativeExecutor", *([alias] if alias else [])})
            default = default or position == 0
    return names, default


def _executor_uses(dags: Mapping[str, Any], core_executor: str) -> Iterator[_TaskUse]:
    """The tasks the KnativeExecutor runs, each with the Service the executor would send it to."""
    from airflow_provider_knative.executors import routing

    names, is_default = executor_names(core_executor)
    if not names:
        return
    for dag_id in sorted(dags):
        for task in sorted(dags[dag_id].tasks, key=lambda t: t.task_id):
            chosen = getattr(task, "executor", None)
            if not (chosen in names or (chosen is None and is_default)):
                continue
            target = routing.route(task)
            knative = (getattr(task, "executor_config", None) or {}).get("knative") or {}
            yield _TaskUse(
                f"{dag_id}.{task.task_id}",
                target.service,
                target.namespace,
                None,
                knative.get("service_settings") or {},
                workloads=True,
            )


def _is_knative(task: Any) -> tuple[bool, Mapping[str, Any] | None]:
    """(is a knative task, its partial kwargs when mapped)."""
    from airflow_provider_knative.operators import KnativeOperator

    partial = getattr(task, "partial_kwargs", None)
    operator_class = getattr(task, "operator_class", None)
    if getattr(task, "operator_name", None) == DECORATOR_NAME:
        return True, partial if isinstance(partial, Mapping) else None
    if isinstance(task, KnativeOperator):
        return True, None
    if isinstance(partial, Mapping) and isinstance(operator_class, type):
        if issubclass(operator_class, KnativeOperator):
            return True, partial
    return False, None


def _uses(dags: Mapping[str, Any]) -> Iterator[_TaskUse]:
    for dag_id in sorted(dags):
        for task in sorted(dags[dag_id].tasks, key=lambda t: t.task_id):
            is_knative, partial = _is_knative(task)
            if not is_knative:
                continue
            ref = f"{dag_id}.{task.task_id}"
            if partial is not None:
                mapped = set(getattr(getattr(task, "expand_input", None), "value", {}) or {})
                bad = mapped & {"service", "namespace", "service_settings"}
                yield _TaskUse(
                    ref,
                    # a mapped service name is only known at run time: flag it below
                    "{{ mapped }}" if "service" in bad else partial.get("service"),
                    "{{ mapped }}" if "namespace" in bad else partial.get("namespace"),
                    partial.get("url"),
                    partial.get("service_settings") or {},
                )
            else:
                yield _TaskUse(ref, task.service, task.namespace, task.url, task.service_settings)


@contextlib.contextmanager
def _quiet_parse() -> Iterator[Callable[..., Any]]:
    """Yield Airflow's DAG bag (``airflow_compat.bundle_dag_bag``), with parsing kept off stdout
    (the manifests go there) and without Airflow's own import-error log: every import error is
    reported by us, once."""
    saved = os.environ.get(_LEVELS_VAR)
    if "airflow" not in sys.modules:  # Airflow configures its structlog levels at first import
        os.environ[_LEVELS_VAR] = ",".join(
            filter(None, [saved, "airflow.dag_processing=critical", "alembic=warning"])
        )
    try:
        from airflow_provider_knative import airflow_compat

        airflow_compat.require("manifests, deploy, status and xcom-cleanup")
        # Airflow 3.2's DAG bag imports alembic, whose plugin set-up logs at INFO to stdout
        logging.getLogger("alembic").setLevel(logging.WARNING)
        dag_bag = airflow_compat.dag_bag_class()  # imported while Airflow's logging is quieted
    finally:
        if saved is None:
            os.environ.pop(_LEVELS_VAR, None)
        else:
            os.environ[_LEVELS_VAR] = saved
    stdlib_logger = logging.getLogger("airflow.dag_processing")  # set after Airflow's dictConfig
    level = stdlib_logger.level
    stdlib_logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield dag_bag
    finally:
        stdlib_logger.setLevel(level)


def parse_dags(dags_folder: str | Path) -> Mapping[str, Any]:
    """The DAGs in ``dags_folder``; CollectError listing every file that failed to import."""
    folder = Path(dags_folder)
    if not folder.is_dir():
        raise CollectError([f"DAG folder {folder} does not exist or is not a folder"])
    with _quiet_parse() as bundle_dag_bag:
        # BundleDagBag puts the folder on sys.path, as the dag-processor does, so DAG files
        # can import their helper modules.
        bag = bundle_dag_bag(dag_folder=str(folder), bundle_path=folder.resolve())
    if bag.import_errors:
        problems = [f"{len(bag.import_errors)} DAG file(s) in {folder} failed to import:"]
        for path, error in sorted(bag.import_errors.items()):
            problems.append(f"  {path}: {error.strip()}")
        raise CollectError(problems)
    return bag.dags


def _literal(value: Any, what: str, ref: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "{{" in value:
        problems.append(
            f"{ref}: {what}={value!r} is templated or mapped; deploying needs a literal {what} "
            "known when the DAG is parsed"
        )
        return None
    return value


def collect(
    dags: Mapping[str, Any],
    namespace: str,
    defaults: DefaultsFile | None = None,
    core_executor: str = "",
) -> Collection:
    """Group the knative tasks of ``dags`` into services with merged, checked settings.

    ``core_executor`` is the deployment's ``[core] executor``: the tasks it sends to the
    KnativeExecutor need Services too.
    """
    defaults = defaults or DefaultsFile.empty()
    problems: list[str] = []
    skipped: list[str] = []
    specs: dict[tuple[str, str], ServiceSpec] = {}
    origin: dict[tuple[str, str], dict[str, str]] = {}  # which task set each key

    for use in itertools.chain(_uses(dags), _executor_uses(dags, core_executor)):
        if use.url:
            skipped.append(f"{use.ref}: calls url={use.url!r}, a service not deployed by airflow-knative")
            continue
        requested = _literal(use.service, "service", use.ref, problems)
        ns = _literal(use.namespace, "namespace", use.ref, problems) or namespace
        if requested is None:
            if use.service is None:
                problems.append(
                    f"{use.ref}: has neither service= nor url=; name the Knative Service to run in"
                )
            continue
        if not is_valid_namespace(ns):
            problems.append(f"{use.ref}: namespace {ns!r} is not a valid Kubernetes namespace name")
            continue
        try:
            name = service_name(requested)
            task_settings = check_settings(use.settings, use.ref)
        except (InvalidServiceName, SettingsError) as exc:
            problems.append(f"{use.ref}: {exc}" if isinstance(exc, InvalidServiceName) else str(exc))
            continue
        key = (ns, name)
        spec = specs.get(key)
        if spec is None:
            spec = specs[key] = ServiceSpec(name=name, requested_name=requested, namespace=ns)
            origin[key] = {}
        elif spec.requested_name != requested:
            problems.append(
                f"{use.ref}: service {requested!r} and {spec.tasks[0]}'s service {spec.requested_name!r} "
                f"both shorten to {name!r}; give one of them a shorter name"
            )
            continue
        spec.tasks.append(use.ref)
        spec.workloads = spec.workloads or use.workloads
        _merge_task(spec, origin[key], task_settings, use.ref, problems)

    services = []
    for spec in sorted(specs.values(), key=lambda s: (s.namespace, s.name)):
        merged = _layer(
            DEFAULTS, defaults.defaults, defaults.services.get(spec.requested_name, {}), spec.settings
        )
        try:
            check_combination(merged, f"service {spec.requested_name!r} ({', '.join(spec.tasks)})")
        except SettingsError as exc:
            problems.append(str(exc))
        spec.settings = merged
        services.append(spec)
    unknown = set(defaults.services) - {s.requested_name for s in services}
    if unknown:
        skipped.append(f"defaults file names services no task uses: {', '.join(sorted(unknown))}")
    if problems:
        raise CollectError(problems)
    return Collection(services, skipped)


def _merge_task(
    spec: ServiceSpec, origin: dict[str, str], settings: dict[str, Any], ref: str, problems: list[str]
) -> None:
    """Add one task's settings to its service; the same key with another value is a conflict.

    Mapping settings (``env``, ``annotations``...) are compared entry by entry, so two tasks
    may each add their own variable; everything else is compared whole.
    """
    for key, value in settings.items():
        mapping = key in MAPPING_SETTINGS
        items = value.items() if mapping else [(None, value)]
        for sub, item in items:
            slot = f"{key}.{sub}" if mapping else key
            current = spec.settings.get(key, {}).get(sub) if mapping else spec.settings.get(key)
            if slot in origin and current != item:
                problems.append(
                    f"service {spec.requested_name!r}: conflicting setting {slot}: {origin[slot]} sets "
                    f"{current!r} but {ref} sets {item!r}; tasks sharing a service must agree: set it on "
                    "one of them, or for the service in the --defaults file"
                )
                continue
            origin[slot] = ref
            if mapping:
                spec.settings.setdefault(key, {})[sub] = item
            else:
                spec.settings[key] = item


def _layer(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; mapping settings (``env``, ``annotations``...) merge entry by entry."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in MAPPING_SETTINGS:
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged
