"""Acceptance: example DAGs run with dag.test() against the runtime as a real process.

The runtime (``airflow-knative serve`` on 127.0.0.1) imports the same ``tests/dags`` folder;
``AIRFLOW__KNATIVE__URL_TEMPLATE`` sends every service to it, and both sides share a signing
secret, so every call here is also signed and verified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from knative_dagrun import run_dag, stored_xcom, task_states, xcom_value
from runtime_process import RuntimeProcess, start_runtime

SECRET = "operator-tests-secret"


@pytest.fixture(scope="module")
def runtime(airflow_home) -> Iterator[RuntimeProcess]:
    from conftest import TEST_DAGS

    env = {"AIRFLOW__KNATIVE__SIGNING_SECRET": SECRET}
    saved = {
        k: os.environ.get(k) for k in ("AIRFLOW__KNATIVE__SIGNING_SECRET", "AIRFLOW__KNATIVE__URL_TEMPLATE")
    }
    with start_runtime(TEST_DAGS, env=env) as rt:
        os.environ["AIRFLOW__KNATIVE__SIGNING_SECRET"] = SECRET
        os.environ["AIRFLOW__KNATIVE__URL_TEMPLATE"] = rt.url
        try:
            yield rt
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def test_average_dag_sums_counts_and_averages_params(runtime, capfd):
    run = run_dag("knative_average", conf={"data": [10, "20", 33.5]})
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-5000:]
    assert xcom_value(run, "extract") == [10, "20", 33.5]
    assert xcom_value(run, "compute_sum") == 63.5
    assert xcom_value(run, "compute_count") == 3
    assert xcom_value(run, "compute_avg") == pytest.approx(63.5 / 3)
    # the function's print() is fenced into the Airflow task log (line by line as it runs, or at
    # once for a call that ended within 50 ms), and the call's last line says where its time went
    opened = out.index("---- remote logs (avg-worker")
    line = out.index("extracting 3 values", opened)
    closed = out.index("---- end of remote logs ----", line)
    timing = out.index("Knative call to avg-worker: ", closed)
    assert re.match(
        r"Knative call to avg-worker: \d+\.\d\d s = waiting for the Service \d+\.\d\d s \(1 attempt\) \+ "
        r"queued in the pod \d+\.\d\d s \+ fetching arguments .* \+ the function \d+\.\d\d s \+ "
        r"spilling the result .* ran on \S+:\d+",
        out[timing:],
    ), out[timing : timing + 400]


def test_average_dag_deferrable(runtime, capfd):
    run = run_dag("knative_average_deferrable")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-5000:]
    assert "Deferring the call to" in out
    assert xcom_value(run, "compute_avg") == 2.5
    assert "extracting 4 values" in out  # remote logs survive the trip through the triggerer


def test_mapped_fan_out_of_100_then_reduce(runtime, capfd):
    run = run_dag("knative_fanout")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-5000:]
    states = task_states(run)
    assert sorted(i for (t, i) in states if t == "square") == list(range(100))
    assert all(s == "success" for s in states.values()), states
    assert xcom_value(run, "square", map_index=42) == {"x": 42, "square": 1764, "map_index": 42}
    assert xcom_value(run, "reduce") == sum(x * x for x in range(100))


def test_multiple_outputs_push_each_key(runtime, capfd):
    run = run_dag("knative_outputs")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-5000:]
    assert xcom_value(run, "stats", key="low") == 2
    assert xcom_value(run, "stats", key="high") == 9
    assert xcom_value(run, "stats", key="span") == (2, 9)  # a tuple stays a tuple
    assert xcom_value(run, "spread") == 7


def test_failing_function_fails_the_task_with_remote_traceback(runtime, capfd):
    run = run_dag("knative_failing")
    out = capfd.readouterr().out
    assert str(run.state) == "failed"
    assert task_states(run)[("explode", -1)] == "failed"
    # remote logs first, then the error with the remote exception and its traceback
    logs_at = out.index("about to divide by zero")
    error_at = out.index("ZeroDivisionError: division by zero")
    assert logs_at < error_at
    assert "---- remote traceback ----" in out
    assert "_helper_that_fails" in out  # a frame that exists only in the pod's traceback
    assert "return 1 / d" in out


@pytest.mark.slow
def test_300_mb_array_passes_between_tasks_by_reference(s3_store, moto_server, airflow_home, capfd):
    """produce -> consume with a 300 MiB ndarray: the worker sends and stores only references."""
    from conftest import TEST_DAGS

    env = {"AIRFLOW__KNATIVE__XCOM_STORE_URL": s3_store, "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server}
    with start_runtime(TEST_DAGS, env=env) as rt:
        os.environ["AIRFLOW__KNATIVE__URL_TEMPLATE"] = rt.url
        try:
            run = run_dag("knative_big_chain", conf={"mib": 300})
        finally:
            os.environ.pop("AIRFLOW__KNATIVE__URL_TEMPLATE", None)
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-5000:]
    n = 300 * 1024 * 1024 // 8
    assert xcom_value(run, "consume") == {"n": n, "sum": float(n * (n - 1) // 2), "last": float(n - 1)}
    marker = stored_xcom(run, "produce")
    assert marker["ref"].startswith(s3_store + "/"), marker
    assert marker["size"] > 300 * 1024 * 1024 and marker["summary"] == f"ndarray float64 ({n},)"
    # both invocations carried only small bodies: the array never went through the worker
    sizes = [int(s) for s in re.findall(r"Calling http://\S+/invoke \(POST, (\d+)-byte body\)", out)]
    assert len(sizes) == 2 and max(sizes) < 4096, sizes
