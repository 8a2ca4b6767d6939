"""The package's structure rules, checked on the source so a change that breaks one fails here.

* imports point one way: the Airflow-facing layer never reaches into the runtime (the pod's
  server) or the deploy tool, and the data/wire layer imports nothing from Airflow;
* one home per policy: only ``knative/api.py`` imports the kubernetes client, only
  ``store.py`` builds object keys, only ``functions.py`` names the decorator;
* one error family: every exception class the package defines is a ``KnativeError``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import airflow_provider_knative
from airflow_provider_knative.errors import KnativeError

PACKAGE = Path(airflow_provider_knative.__file__).parent
NAME = "airflow_provider_knative"

#: what users and Airflow import: must not depend on the pod's server or the deploy tool
AIRFLOW_FACING = [
    "hooks",
    "operators",
    "triggers",
    "decorators",
    "xcom",
    "cleanup",
    "connection",
    "provider_info",
    "airflow_compat",
    "aws",
    "tracecontext",
]
#: the wire and data layer: imported by the runtime image and by Airflow alike
DATA_LAYER = [
    "errors",
    "codec",
    "protocol",
    "store",
    "spill",
    "walk",
    "invoker",
    "functions",
    "config",
    "preview",
    "versions",
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        found[".".join([NAME, *parts])] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (lazy imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_path(short: str) -> Path:
    return MODULES[f"{NAME}.{short}"]


@pytest.mark.parametrize("module", AIRFLOW_FACING)
def test_airflow_facing_modules_never_import_the_runtime_or_deploy(module: str) -> None:
    bad = {
        name
        for name in _imports(_module_path(module))
        if name.startswith((f"{NAME}.runtime", f"{NAME}.deploy", f"{NAME}.localstack", f"{NAME}.gateway"))
    }
    assert not bad, f"{module} imports {sorted(bad)}: the Airflow-facing layer must not depend on them"


@pytest.mark.parametrize("module", DATA_LAYER)
def test_data_layer_imports_nothing_above_it(module: str) -> None:
    above = (
        f"{NAME}.hooks",
        f"{NAME}.operators",
        f"{NAME}.triggers",
        f"{NAME}.decorators",
        f"{NAME}.xcom",
        f"{NAME}.runtime",
        f"{NAME}.deploy",
        f"{NAME}.gateway",
        f"{NAME}.knative",
    )
    # config alone may read airflow.cfg (lazily, when it runs inside an Airflow process)
    airflow = module != "config"
    bad = {
        name
        for name in _imports(_module_path(module))
        if name.startswith(above) or (airflow and (name == "airflow" or name.startswith("airflow.")))
    }
    assert not bad, f"{module} imports {sorted(bad)}; the wire and data layer stays below Airflow"


def test_only_the_knative_api_module_imports_the_kubernetes_client() -> None:
    users = sorted(
        name for name, path in MODULES.items() if any(i.split(".")[0] == "kubernetes" for i in _imports(path))
    )
    assert users == [f"{NAME}.knative.api"]


def test_only_the_store_module_builds_object_keys() -> None:
    """Keys come from ``store.task_key``/``ObjectStore.new_key``; nobody else mints one."""
    offenders = []
    for name, path in MODULES.items():
        if name == f"{NAME}.store":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("new_key", "_new_key"):
                offenders.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and node.value in (".knc", ".bin"):
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def _modules_holding(constant: str) -> list[str]:
    return sorted(
        name
        for name, path in MODULES.items()
        if any(
            isinstance(n, ast.Constant) and n.value == constant for n in ast.walk(ast.parse(path.read_text()))
        )
    )


def test_the_decorator_name_is_written_once() -> None:
    assert _modules_holding("@task.knative") == [f"{NAME}.functions"]


def test_knative_api_constants_live_in_one_place() -> None:
    assert _modules_holding("serving.knative.dev") == [f"{NAME}.knative.api"]


def _all_exception_classes() -> list[type]:
    classes = {}
    for info in pkgutil.walk_packages(airflow_provider_knative.__path__, f"{NAME}."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith(NAME):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [classes[k] for k in sorted(classes)]


def test_every_provider_exception_is_a_knative_error() -> None:
    classes = _all_exception_classes()
    assert len(classes) >= 20  # the walk really found them
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, KnativeError)]
    assert not strays, f"exceptions outside the KnativeError tree: {strays}"


def test_cancelled_is_an_invocation_error() -> None:
    """One ``except InvocationError`` catches every way a call can end without a result."""
    from airflow_provider_knative.errors import InvocationCancelled, InvocationError, OutcomeUnknownError

    assert issubclass(InvocationCancelled, InvocationError)
    assert issubclass(OutcomeUnknownError, InvocationError)
