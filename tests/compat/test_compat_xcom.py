"""The XCom backend on every minor it supports (3.0 included): values through a real DAG run."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from xcom_dagrun import run_dag, task_states, xcom_rows


def _backend() -> Any:
    """The backend as the task SDK resolves it from ``[core] xcom_backend`` (the conftest sets it).

    Imported through Airflow, as a task process does: on 3.0, importing the provider's module
    before Airflow's XCom module is a circular import (3.0 resolves the backend at import)."""
    from airflow.sdk.execution_time.xcom import XCom

    from airflow_provider_knative.xcom import KnativeXComBackend

    assert XCom is KnativeXComBackend
    return XCom


def _through_the_database(value: Any) -> Any:
    """serialize_value as the task SDK calls it, the JSON column, then deserialize_value."""
    stored = _backend().serialize_value(
        value, key="return_value", task_id="t", dag_id="compat", run_id="r", map_index=-1
    )
    return stored, _backend().deserialize_value(SimpleNamespace(value=json.loads(json.dumps(stored))))


def test_inline_packed_and_spilled_values_come_back_exactly(file_store: str) -> None:
    plain = {"rows": [1, 2, 3], "name": "x"}
    stored, back = _through_the_database(plain)
    assert stored == plain and back == plain  # plain JSON stays readable in the UI
    when = dt.datetime(2024, 7, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stored, back = _through_the_database((1, "two", when))
    assert "packed" in stored and back == (1, "two", when) and type(back) is tuple
    array = np.arange(100_000, dtype=np.float64)
    stored, back = _through_the_database(array)
    assert stored["ref"].startswith(file_store) and np.array_equal(back, array)


def test_a_dag_passes_a_spilled_array_through_s3_and_purge_deletes_it(
    s3_store: str, moto_server: str, airflow_home: Any
) -> None:
    import boto3

    run = run_dag("xcom_spill")
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    rows = xcom_rows("xcom_spill", run.run_id)
    produced = rows[("produce", -1, "return_value")]
    assert produced["ref"].startswith(s3_store + "/xcom_spill/")  # the array went by reference
    assert rows[("consume", -1, "return_value")] == sum(range(200_000))  # and came back whole
    bucket, _, key = produced["ref"][len("s3://") :].partition("/")
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.head_object(Bucket=bucket, Key=key)
    # what Airflow calls when a task is cleared (3.0's task SDK never calls it; 3.1+ does)
    _backend().purge(
        SimpleNamespace(
            value=produced, dag_id="xcom_spill", run_id=run.run_id, task_id="produce", map_index=-1
        )
    )
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key=key)
