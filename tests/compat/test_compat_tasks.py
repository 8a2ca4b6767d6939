"""``@task.knative``, ``KnativeOperator``, the runtime and the connection on every supported minor.

The example DAGs ``compute_avg`` and ``pandas_etl`` run with ``dag.test()`` through a real
runtime process (serving ``example_dags/``) and the XCom backend, sync and deferrable; the
DataFrame of ``pandas_etl`` goes through S3 (moto) by reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO
from knative_dagrun import run_dag
from runtime_process import RuntimeProcess, start_runtime
from test_decorators import test_local_mode_runs_the_dag_in_process  # noqa: F401 - local mode, here too
from test_operators_options import json_service  # noqa: F401 - a fixture

from airflow_provider_knative import versions

pytestmark = pytest.mark.since_airflow("3.1")

EXAMPLES = REPO / "example_dags"
SECRET = "compat-secret"
HERE = Path(__file__).resolve().parent
#: (example, deferrable) -> (file, DAG id, conf)
EXAMPLE_RUNS = {
    ("compute_avg", False): ("compute_avg.py", "compute_avg_distributed", {"data": [1, 2, 3, 4, 10]}),
    ("compute_avg", True): ("compute_avg.py", "compute_avg_distributed", {"data": [1, 2, 3, 4, 10]}),
    ("pandas_etl", False): ("pandas_etl.py", "pandas_etl", {"data": 100_000}),
    ("pandas_etl", True): ("pandas_etl.py", "pandas_etl", {"data": 100_000}),
}


@pytest.fixture(scope="module")
def runtime(airflow_home: Path, moto_server: str) -> Iterator[RuntimeProcess]:
    env = {"AIRFLOW__KNATIVE__SIGNING_SECRET": SECRET, "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server}
    with start_runtime(EXAMPLES, env=env, timeout=120) as rt:
        yield rt


@pytest.fixture(scope="module")
def example_runs(runtime: RuntimeProcess, moto_server: str) -> dict[tuple[str, bool], dict[str, Any]]:
    """Every example run, sync and deferrable, in one ``dag.test()`` process (``run_example.py``);
    the XCom store is a bucket on the moto S3 server."""
    import boto3

    bucket = f"compat-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    jobs = [
        {"file": str(EXAMPLES / file), "dag_id": dag_id, "conf": conf, "deferrable": deferrable}
        for (_, deferrable), (file, dag_id, conf) in EXAMPLE_RUNS.items()
    ]
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__KNATIVE__URL_TEMPLATE": runtime.url,
        "AIRFLOW__KNATIVE__SIGNING_SECRET": SECRET,
        "AIRFLOW__KNATIVE__XCOM_STORE_URL": f"s3://{bucket}/xcom",
        "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server,
    }
    result = subprocess.run(
        [sys.executable, str(HERE / "run_example.py"), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    output = result.stdout + result.stderr
    prefix = "RESULT "
    runs = [json.loads(line[len(prefix) :]) for line in result.stdout.splitlines() if line.startswith(prefix)]
    assert result.returncode == 0 and len(runs) == len(jobs), output[-6000:]
    # every task of the deferrable runs (4 + 3) deferred to the trigger
    assert output.count("Deferring the call to") == 7, output[-6000:]
    return {
        (Path(run["job"]["file"]).stem, run["job"]["deferrable"]): {**run, "bucket": bucket, "output": output}
        for run in runs
    }


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_compute_avg_example_runs_through_the_runtime(example_runs: dict, deferrable: bool) -> None:
    run = example_runs[("compute_avg", deferrable)]
    assert run["state"] == "success", run["output"][-6000:]
    values = {task: t["value"] for task, t in run["tasks"].items()}
    assert values == {
        "extract": [1.0, 2.0, 3.0, 4.0, 10.0],
        "compute_sum": 20.0,
        "compute_count": 5,
        "average": 4.0,
    }


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_pandas_etl_example_passes_its_frame_by_reference_through_s3(
    example_runs: dict, deferrable: bool
) -> None:
    import numpy as np
    import pandas as pd

    run = example_runs[("pandas_etl", deferrable)]
    assert run["state"] == "success", run["output"][-6000:]
    rows = 100_000
    extracted = run["tasks"]["extract"]["stored"]
    assert extracted["ref"].startswith(f"s3://{run['bucket']}/xcom/pandas_etl/"), extracted  # spilled
    assert "DataFrame 100000 rows" in extracted["summary"]
    rng = np.random.default_rng(42)  # what extract() computed in the runtime, computed here
    frame = pd.DataFrame(
        {
            "store": rng.integers(0, 50, rows),
            "units": rng.integers(1, 10, rows),
            "price": rng.random(rows) * 100,
        }
    )
    revenue = (frame["units"] * frame["price"]).groupby(frame["store"]).sum()
    assert run["tasks"]["load"]["value"] == {
        "stores": 50,
        "revenue": round(float(revenue.sum()), 2),
        "top_store": int(revenue.idxmax()),
    }


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_knative_operator_with_response_check_asking_for_ti(
    json_service,  # noqa: F811 - the fixture imported above
    airflow_home: Path,
    capfd: pytest.CaptureFixture[str],
    mode: str,
) -> None:
    run = run_dag(f"knative_options_{mode}", {"url": json_service.url}, module="knative_options")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-3000:]
    assert "response_check saw HTTP 200, x-run=templated, ti=True" in out  # determine_kwargs gave ti
    if mode == "deferred":
        assert "Deferring the call to" in out


def test_runtime_serves_the_examples_and_names_its_airflow(runtime: RuntimeProcess) -> None:

    answer = httpx.get(runtime.url + "/readyz", timeout=10)
    assert answer.status_code == 200
    assert answer.headers[versions.RUNTIME_VERSION_HEADER] == versions.version_header_value()
    assert "compute_avg_distributed/average" in runtime.functions()


def test_test_button_reports_the_runtime_ready(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_knative.hooks import KnativeHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_KNATIVE_COMPAT", json.dumps({"conn_type": "knative", "host": runtime.url})
    )
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", runtime.url)
    ok, message = KnativeHook("knative_compat").test_connection()
    assert ok, message
    assert "the runtime is ready" in message and "skew" not in message


def test_connection_form_as_the_ui_gets_it() -> None:
    """The UI's connection form comes from the hook-meta service (3.2+: provider info's
    conn-fields; 3.1: the hook's wtforms widgets, with wtforms and FAB mocked)."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    knative = meta["knative"]
    assert knative.hook_name == "Knative"
    extra = knative.extra_fields or {}
    for field in ("namespace", "headers", "verify", "ca_bundle", "test_service", "invoke_timeout_seconds"):
        assert field in extra, sorted(extra)
    assert extra["test_service"]["schema"]["title"] == "Service for the Test button"
    assert knative.standard_fields is not None and knative.standard_fields.password.title == "Signing secret"


@pytest.mark.before_airflow("3.3")
def test_a_runtime_of_a_newer_airflow_is_named_by_the_test_button_and_the_executor(
    airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real runtime from the full suite's venv (Airflow 3.3) under this older Airflow."""
    from airflow_provider_knative.executors import skew
    from airflow_provider_knative.hooks import KnativeHook

    newer = REPO / ".venv" / "bin" / "python"
    assert newer.exists(), "the full suite's venv (.venv, Airflow 3.3) is needed: scripts/test.sh makes it"
    with start_runtime(EXAMPLES, env={"AIRFLOW_HOME": str(tmp_path)}, python=newer, timeout=120) as rt:
        header = httpx.get(rt.url + "/healthz", timeout=10).headers[versions.RUNTIME_VERSION_HEADER]
        theirs = versions.parse_version_header(header)["airflow"]
        assert versions.minor_of(theirs) == (3, 3)
        monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", rt.url)
        ok, message = KnativeHook("knative_compat_skew").test_connection()
        assert ok, message
        assert f"version skew: the runtime runs Airflow {theirs}" in message
        assert f"this Airflow is {versions.AIRFLOW_VERSION}" in message
        with caplog.at_level("WARNING", logger=skew.__name__):
            found = skew.check_runtime(KnativeHook("knative_compat_skew"), rt.url, key=None)
        assert found is not None and "Execution API" in found and theirs in found
        assert found in caplog.text
