"""Import a DAG folder once and build the allowlist of callable functions.

The runtime must never call an arbitrary importable name (``os:system``): the only things
it can run are the ``@task.knative`` functions of the DAGs it loaded, each under the id the
operator sends (``protocol.function_id(dag_id, task_id)``) and with the source hash the
operator computes (``protocol.source_hash``), so a stale image is detected, not run.

DAG files are found and imported the way Airflow's DAG processor does: the file listing is
Airflow's own (``.airflowignore`` in both syntaxes, safe mode), each file gets Airflow's unique
module name, and the folder is on ``sys.path``; so the runtime and the dag-processor always
agree on which files exist, and a file behaves here as it does there.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_knative.functions import DECORATOR_NAME, Function

log = logging.getLogger(__name__)


_current: Registry | None = None


def set_current(registry: Registry) -> None:
    """Remember the registry this process imported (the fork server's children look it up)."""
    global _current
    _current = registry


def current() -> Registry:
    if _current is None:
        raise RuntimeError("no DAG folder was imported in this process")
    return _current


@dataclass
class ImportFailure:
    path: str
    error: str
    traceback: str


@dataclass
class Registry:
    """What one import of the DAG folder produced."""

    functions: dict[str, Function] = field(default_factory=dict)
    failures: list[ImportFailure] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def dag_files(folder: Path) -> list[Path]:
    """The .py files Airflow's dag-processor would parse in ``folder``, sorted for a stable order.

    The listing is Airflow's own (``airflow.utils.file.list_py_file_paths``, what the
    dag-processor calls for a bundle), so ``.airflowignore`` in both syntaxes
    (``[core] dag_ignore_file_syntax``, negations included), ``[core] dag_discovery_safe_mode``
    and ``[core] might_contain_dag_callable`` mean here exactly what they mean there. Zip
    archives, which Airflow also lists, are not served: each is reported once in the log.
    """
    from airflow.configuration import conf
    from airflow.utils.file import list_py_file_paths

    safe_mode = conf.getboolean("core", "dag_discovery_safe_mode", fallback=True)
    found = []
    for name in list_py_file_paths(folder, safe_mode=safe_mode):
        path = Path(name)
        if path.suffix != ".py":
            log.warning(
                "%s: zipped DAG files are not served by the runtime; its @task.knative functions "
                "answer 404. Unpack it into the DAG folder of the image",
                path,
            )
            continue
        found.append(path)
    return sorted(found)


def _module_name(path: Path) -> str:
    """The same unique module name Airflow's DAG processor gives a DAG file."""
    from airflow.utils.file import get_unique_dag_module_name

    return get_unique_dag_module_name(str(path))


def _import_file(path: Path) -> list[Any]:
    """Import one DAG file; return the DAGs it defines (module globals and auto-registered)."""
    from airflow.sdk import DAG
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    name = _module_name(path)
    sys.modules.pop(name, None)
    DagContext.autoregistered_dags.clear()
    DagContext.current_autoregister_module_name = name
    try:
        loader = importlib.machinery.SourceFileLoader(name, str(path))
        spec = importlib.util.spec_from_loader(name, loader)
        if spec is None:  # pragma: no cover - SourceFileLoader always yields a spec
            raise ImportError(f"cannot build an import spec for {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        dags = {id(o): o for o in vars(module).values() if isinstance(o, DAG)}
        for dag, _mod in DagContext.autoregistered_dags:
            dags.setdefault(id(dag), dag)
        return list(dags.values())
    finally:
        DagContext.current_autoregister_module_name = None
        DagContext.autoregistered_dags.clear()


def knative_functions(dags: Iterable[Any], fileloc: str) -> Iterator[Function]:
    """Every ``@task.knative`` task of ``dags`` as an allowlist entry."""
    for dag in dags:
        for task in dag.tasks:
            if getattr(task, "operator_name", None) != DECORATOR_NAME:
                continue
            yield Function.of(task.python_callable, dag.dag_id, task.task_id, fileloc)


def load(
    folder: str | os.PathLike[str], on_failure: Callable[[ImportFailure], None] | None = None
) -> Registry:
    """Import every DAG file in ``folder`` and collect its Knative functions.

    A file that fails to import is recorded (path, error, traceback) and the others are still
    imported, so one report lists every broken file; the caller decides readiness.
    """
    root = Path(folder).resolve()
    registry = Registry()
    if not root.is_dir():
        failure = ImportFailure(str(root), f"DAG folder {root} does not exist or is not a directory", "")
        registry.failures.append(failure)
        if on_failure:
            on_failure(failure)
        return registry
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # DAG files import helpers next to them, as in Airflow
    for path in dag_files(root):
        registry.files.append(str(path))
        try:
            dags = _import_file(path)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            failure = ImportFailure(str(path), f"{type(exc).__name__}: {exc}", traceback.format_exc())
            registry.failures.append(failure)
            if on_failure:
                on_failure(failure)
            continue
        for fn in knative_functions(dags, str(path)):
            existing = registry.functions.get(fn.function_id)
            if existing is not None and existing.fileloc != fn.fileloc:
                failure = ImportFailure(
                    str(path),
                    f"function id {fn.function_id!r} is defined twice: in {existing.fileloc} and here; "
                    "DAG ids must be unique",
                    "",
                )
                registry.failures.append(failure)
                if on_failure:
                    on_failure(failure)
                continue
            registry.functions[fn.function_id] = fn
    return registry
