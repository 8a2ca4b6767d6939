"""``manifests``, ``deploy``, ``status`` and ``xcom-cleanup`` on every supported minor.

The DAG folder is parsed with the minor's own DAG bag (``BundleDagBag`` from 3.2, ``DagBag``
before); the Kubernetes API is the fake one the full suite uses (``tests/fake_kube_api.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from fake_kube_api import FakeKnativeApi, run_deploy_cli, validation_errors

from airflow_provider_knative import cli

pytestmark = pytest.mark.since_airflow("3.1")
EXAMPLES = REPO / "example_dags"


def test_manifests_deploy_and_status_of_the_example_dags(tmp_path: Path) -> None:
    code, out, err = run_deploy_cli(["manifests", "--dags-folder", str(EXAMPLES), "--image", "reg/dags:1"])
    assert code == 0, err
    manifests = [m for m in yaml.safe_load_all(out) if m]
    names = {m["metadata"]["name"] for m in manifests}
    assert {"avg-worker", "pandas-worker"} <= names, names
    for manifest in manifests:
        assert validation_errors(manifest) == [], manifest["metadata"]["name"]
    with FakeKnativeApi(ready_delay=0.2) as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        code, out, err = run_deploy_cli(
            [
                *("deploy", "--dags-folder", str(EXAMPLES), "--image", "reg/dags:1"),
                *("--kubeconfig", kubeconfig, "--poll-interval", "0.05", "--timeout", "60"),
            ]
        )
        assert code == 0, out + err
        code, out, err = run_deploy_cli(["status", "--kubeconfig", kubeconfig, "-o", "json"])
        assert code == 0, err
        ready = {item["name"]: item["ready"] for item in json.loads(out)["items"]}
        assert ready == dict.fromkeys(names, "True")


def test_xcom_cleanup_reads_this_airflows_xcom_table(
    file_store: str, airflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["xcom-cleanup", "--dry-run", "--min-age-seconds", "0"]) == 0
    assert file_store in capsys.readouterr().out
