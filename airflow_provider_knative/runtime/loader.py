"""Import a DAG folder once and build the allowlist of callable functions.

The runtime must never call an arbitrary importable name (``os:system``): the only things
it can run are the ``@task.knative`` functions of the DAGs it loaded, each under the id the
operator sends (``protocol.function_id(dag_id, task_id)``) and with the source hash the
operator computes (``protocol.source_hash``), so a stale image is detected, not run.

DAG files are imported the way Airflow's DAG processor does (a unique module name per file,
the folder on ``sys.path``, ``.airflowignore`` honoured, files that mention neither "dag"
nor "airflow" skipped as in Airflow's safe mode), so a file behaves here as it does there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_knative.functions import DECORATOR_NAME, Function

IGNORE_FILE = ".airflowignore"


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


def _ignore_patterns(folder: Path) -> list[tuple[Path, str]]:
    """Glob patterns from every ``.airflowignore`` (Airflow's default ``glob`` syntax)."""
    patterns: list[tuple[Path, str]] = []
    for ignore in sorted(folder.rglob(IGNORE_FILE)):
        for line in ignore.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                patterns.append((ignore.parent, line))
    return patterns


def _ignored(path: Path, patterns: list[tuple[Path, str]]) -> bool:
    for base, pattern in patterns:
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            continue
        pat = pattern.lstrip("/")
        parts = rel.split("/")
        # a pattern matches the file or any folder above it, like gitignore
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("/"):
            if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
                return True
        elif any(fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, "*/" + pat) for c in candidates):
            return True
        elif "/" not in pat and any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def dag_files(folder: Path) -> list[Path]:
    """The .py files Airflow would parse in ``folder``, sorted for a stable import order."""
    patterns = _ignore_patterns(folder)
    found = []
    for path in sorted(folder.rglob("*.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts):
            continue
        if _ignored(path, patterns):
            continue
        try:
            head = path.read_bytes().lower()
        except OSError:
            continue
        if b"dag" in head and b"airflow" in head:  # Airflow's safe-mode heuristic
            found.append(path)
    return found


def _module_name(path: Path) -> str:
    """The same unique module name Airflow's DAG processor gives a DAG file."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()
    return f"unusual_prefix_{digest}_{path.stem}"


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
