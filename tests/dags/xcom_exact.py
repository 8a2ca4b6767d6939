"""Values that Airflow's default backend keeps (or should keep) exact, each produced by one task
and checked by the next with ``exact_values.assert_same`` (type, dtype, unit, zone at every level).

tests/test_xcom_exact.py runs it with ``dag.test()`` and the Knative XCom backend, then looks at
what each row holds in the database.
"""

from __future__ import annotations

import collections
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pendulum
from airflow.sdk import dag, task

# the checks share tests/exact_values.py; the runtime tests import this folder without tests/ on the path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from exact_values import assert_same, nest


def cases() -> dict[str, Any]:
    return {
        "timestamp_ns": pd.Timestamp("2024-01-01 12:34:56.123456789"),
        "timestamp_tz": {"at": pd.Timestamp("2024-07-01 09:00:00.000000001", tz="Europe/Paris")},
        "float64_in_dict": {"a": np.float64(0.1), "b": np.int64(2), "c": 1.5, "d": np.bool_(True)},
        "nat": pd.NaT,
        "nan_inf": {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-0": -0.0},
        "deep_list_199": nest(199, "list"),  # the deepest plain JSON Airflow's API takes
        "deep_list_200": nest(200, "list"),
        "deep_dict_200": nest(200, "dict"),
        "pendulum": pendulum.datetime(2024, 3, 31, 2, 30, tz="Europe/Paris"),
        "timedelta_ns": pd.Timedelta("1 day 1 ns"),
        "bigint": 2**70,
        "bigint_list": [2**70, -(2**80), 3],
        "non_str_keys": {1: "int", (2, 3): "tuple", None: "none"},
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "large_floats": [1e16, -1.5e300, 9999999999999998.0],
        "nul_in_str": {"k": "a\x00b"},
        "pandas_scalars": [pd.Period("2024-01", freq="M"), pd.Interval(0, 1, closed="both")],
        "numpy_scalars": [np.float32(1.5), np.str_("x"), np.datetime64("2024-01-01T00:00:00.123456789")],
        "naive_and_aware": [
            dt.datetime(2024, 1, 1, 0, 0, 0, 1),
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        ],
        "plain": {"rows": [{"id": 1, "score": 0.5, "ok": True, "tags": None}], "n": 2**64 - 1},
        # bare numbers SQLite's NUMERIC column affinity would change (500.0 -> 500, 2**64-1 -> float)
        "integral_float": 500.0,
        "bare_uint64": 2**64 - 1,
    }


# Airflow 3.3 uploads a task's rendered arguments as JSON and fails the task before it runs
# when they hold NaN or infinity ("Out of range float values are not JSON compliant"), with
# any XCom backend; these values are pulled inside the task instead of passed as arguments.
PULLED = {"nan_inf"}


def _cases_dag(dag_id: str, as_task: Any):
    """One pair of tasks per case: ``make`` returns it, ``check`` compares what it receives.
    ``as_task(task_id)`` is the decorator of both (plain ``@task``, or ``@task.knative``: then
    a function's result crosses the wire twice, runtime -> Airflow as a result and Airflow ->
    runtime as an argument)."""

    @dag(dag_id=dag_id, schedule=None, catchup=False, tags=["test"], default_args={"retries": 0})
    def cases_dag():
        for name in cases():

            @as_task(f"make_{name}")
            def make(name: str = name) -> Any:
                return cases()[name]

            @as_task(f"check_{name}")
            def check(value: Any, name: str = name) -> None:
                assert_same(cases()[name], value)

            @task(task_id=f"check_{name}")
            def pull_and_check(name: str = name, ti: Any = None) -> None:
                assert_same(cases()[name], ti.xcom_pull(task_ids=f"make_{name}"))

            if name in PULLED:
                make() >> pull_and_check()
            else:
                check(make())

    return cases_dag()


the_dag = _cases_dag("xcom_exact", lambda task_id: task(task_id=task_id))
xcom_exact_knative = _cases_dag(
    "xcom_exact_knative", lambda task_id: task.knative(task_id=task_id, service="exact")
)
xcom_exact_knative_deferrable = _cases_dag(
    "xcom_exact_knative_deferrable",
    lambda task_id: task.knative(task_id=task_id, service="exact", deferrable=True),
)
