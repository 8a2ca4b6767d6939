"""The provider is discoverable: entry point, provider info, `airflow config list` and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from airflow_provider_knative import config
from airflow_provider_knative.provider_info import get_provider_info

BIN = Path(sys.executable).parent


def test_entry_point_points_at_provider_info() -> None:
    (ep,) = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("airflow_provider_knative")
    ]
    info = ep.load()()
    assert info == get_provider_info()
    assert info["package-name"] == "airflow-provider-knative"
    assert info["name"] and info["description"]
    assert info["config"] == config.provider_config_section()


def test_airflow_discovers_the_provider_and_its_decorator() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-provider-knative" in manager.providers
    assert "knative" in manager.taskflow_decorators


def test_airflow_config_list_shows_the_knative_section(airflow_home: Path) -> None:
    result = subprocess.run(
        [str(BIN / "airflow"), "config", "list", "--section", "knative", "--defaults"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for key in ("xcom_store_url", "xcom_inline_max_bytes", "s3_endpoint_url"):
        assert key in result.stdout


def test_console_script_lists_xcom_cleanup() -> None:
    result = subprocess.run(
        [str(BIN / "airflow-knative"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "xcom-cleanup" in result.stdout


# --------------------------------------------------------------------------------------
# Provider info is complete and valid against Airflow's own schema
# --------------------------------------------------------------------------------------


def _airflow_schema() -> dict:
    import json

    import airflow

    path = Path(airflow.__file__).parent / "provider_info.schema.json"
    return json.loads(path.read_text())


def test_provider_info_validates_against_airflows_schema() -> None:
    import jsonschema

    schema = _airflow_schema()
    info = get_provider_info()
    jsonschema.validate(info, schema)  # raises with the offending path
    unknown = set(info) - set(schema["properties"]) - {"versions"}
    assert not unknown, f"keys Airflow does not know: {sorted(unknown)}"


def test_provider_info_declares_every_kind_of_component() -> None:
    info = get_provider_info()
    for kind in ("integrations", "hooks", "operators", "triggers", "task-decorators", "connection-types"):
        assert info.get(kind), f"provider info declares no {kind}"
    assert [p["name"] for p in info["plugins"]] == ["knative_gateway"]
    names = {i["integration-name"] for i in info["integrations"]}
    for kind in ("hooks", "operators", "triggers"):
        for entry in info[kind]:
            assert entry["integration-name"] in names, f"{kind}: {entry} names an undeclared integration"


def test_every_declared_module_and_class_imports() -> None:
    import importlib

    from airflow.sdk import BaseHook, BaseOperator
    from airflow.triggers.base import BaseTrigger

    def import_string(dotted: str) -> object:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)

    info = get_provider_info()
    bases = {"hooks": BaseHook, "operators": BaseOperator, "triggers": BaseTrigger}
    for kind, base in bases.items():
        for entry in info[kind]:
            for module_name in entry["python-modules"]:
                module = importlib.import_module(module_name)
                found = [
                    v
                    for v in vars(module).values()
                    if isinstance(v, type) and issubclass(v, base) and v.__module__ == module_name
                ]
                assert found, f"{kind}: {module_name} defines no {base.__name__}"
    for plugin in info["plugins"]:
        assert import_string(plugin["plugin-class"]).name == plugin["name"]
    for executor in info.get("executors", []):  # added with the KnativeExecutor
        import_string(executor)
    for conn in info["connection-types"]:
        assert import_string(conn["hook-class-name"]).conn_type == conn["connection-type"]


def test_airflow_discovers_hooks_triggers_and_plugin() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    manager.initialize_providers_triggers()
    manager.initialize_providers_plugins()
    assert "knative" in manager.hooks
    assert "airflow_provider_knative.triggers" in {t.trigger_class_name for t in manager.trigger}
    assert [p.name for p in manager.plugins if p.provider_name == "airflow-provider-knative"] == [
        "knative_gateway"
    ]


def test_the_gateway_plugin_is_registered_once_whatever_lazy_discover_providers_says(
    tmp_path: Path,
) -> None:
    """The entry point and provider info both name the plugin: Airflow must load it once, with
    no "already registered" plugin import error, with lazy provider discovery on or off."""
    script = (
        "from airflow import plugins_manager\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "print(sorted(p.name for p in plugins), sorted(errors))\n"
    )
    for lazy in ("True", "False"):
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy,
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"),
        }
        result = subprocess.run(  # cwd: not the repository, whose *.egg-info is a second copy
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "['knative_gateway'] []", (lazy, result.stdout)
