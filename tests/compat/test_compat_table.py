"""``airflow_compat``'s table against the installed Airflow, and what each minor refuses.

Every row says from which minor a name exists; this fails naming the row when a release
changes under it (the new form appears earlier or later than the row says, or the old form
is gone), instead of a user's DAG failing to import.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from servers import BIN

from airflow_provider_knative import airflow_compat, versions
from airflow_provider_knative.errors import AirflowVersionError


@pytest.mark.parametrize("row", airflow_compat.DIFFERENCES, ids=lambda row: row.key)
def test_each_difference_holds_on_this_airflow(row: airflow_compat.Difference) -> None:
    here = versions.AIRFLOW_VERSION
    if row.applies():
        assert airflow_compat.present(row.new), f"{row.key}: {row.new} is missing on Airflow {here}"
    else:
        assert not airflow_compat.present(row.new), (
            f"{row.key}: {row.new} exists on Airflow {here}, earlier than the table's {row.since}: "
            "move the row's `since`"
        )
        if row.old_is_probe:
            assert airflow_compat.present(row.old), f"{row.key}: {row.old} is gone on Airflow {here}"


def test_the_lazy_names_come_from_where_this_airflow_has_them() -> None:
    import importlib

    for name in ("BaseHook", "AirflowException", "AirflowNotFoundException", "KNOWN_CONTEXT_KEYS"):
        row = airflow_compat.difference(name)
        module, _, attr = (row.new if row.applies() else row.old).partition(":")
        assert getattr(airflow_compat, name) is getattr(importlib.import_module(module), attr)


def test_the_installed_version_is_read_from_package_metadata() -> None:
    import airflow

    assert versions.AIRFLOW_VERSION == airflow.__version__
    assert versions.AIRFLOW_MINOR == versions.minor_of(airflow.__version__)


@pytest.mark.parametrize("feature", sorted(airflow_compat.FEATURES))
def test_a_feature_works_or_refuses_naming_the_airflow_it_needs(feature: str) -> None:
    needed = airflow_compat.FEATURES[feature]
    if versions.AIRFLOW_MINOR >= needed:
        airflow_compat.require(feature)
        return
    with pytest.raises(AirflowVersionError) as refused:
        airflow_compat.require(feature)
    message = str(refused.value)
    assert f"needs Airflow {needed[0]}.{needed[1]} or newer" in message
    assert versions.AIRFLOW_VERSION in message and "XCom backend" in message


def test_airflow_cli_starts_with_the_provider_and_keeps_the_url_template(airflow_home) -> None:
    """3.0 and 3.1 format every config default with str.format: '{service}' once broke the CLI."""
    result = subprocess.run(
        [str(BIN / "airflow"), "config", "get-value", "knative", "url_template"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "AIRFLOW__KNATIVE__URL_TEMPLATE"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "http://{service}.{namespace}.svc.cluster.local"


def test_the_runtime_version_header_names_a_skew_of_minors() -> None:
    here = versions.AIRFLOW_VERSION
    same = f"airflow={here}; task-sdk={versions.TASK_SDK_VERSION}"
    assert versions.version_header_value() == same
    assert versions.version_skew(same) is None
    newer = f"{versions.AIRFLOW_MINOR[0]}.{versions.AIRFLOW_MINOR[1] + 1}.0"
    skew = versions.version_skew(f"airflow={newer}; task-sdk=9.9.9", executor=True)
    assert skew is not None and newer in skew and here in skew and "Execution API" in skew
    assert versions.version_skew(None) is None


@pytest.mark.since_airflow("3.1")
def test_a_missing_connection_outside_a_task_means_config_only(airflow_home) -> None:
    """As in the scheduler (the KnativeExecutor): no task process, no such connection."""
    import asyncio

    from airflow_provider_knative.hooks import KnativeHook

    assert KnativeHook("knative_compat_missing").settings.url_template
    assert asyncio.run(KnativeHook("knative_compat_missing").asettings()).url_template
    assert airflow_compat.connection_missing(airflow_compat.AirflowNotFoundException("no"))
    assert not airflow_compat.connection_missing(ImportError("cannot import name 'something_else'"))
    assert not airflow_compat.connection_missing(ValueError("SUPERVISOR_COMMS"))
