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
