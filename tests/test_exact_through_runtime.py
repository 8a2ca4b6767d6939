"""Issue 14's values through a real runtime process: made by a ``@task.knative`` function (the
result crosses the wire), then passed to another one (the argument crosses it again), each
checked there for the same type, dtype, unit, zone and precision; sync and deferrable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from conftest import TEST_DAGS
from runtime_process import RuntimeProcess, serving_tasks
from xcom_dagrun import load_dag, task_states


@pytest.fixture(scope="module")
def runtime(airflow_home) -> Iterator[RuntimeProcess]:
    with serving_tasks(TEST_DAGS, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as rt:
        yield rt


@pytest.mark.parametrize("dag_id", ["xcom_exact_knative", "xcom_exact_knative_deferrable"])
def test_every_case_crosses_the_runtime_exactly(
    dag_id: str, runtime: RuntimeProcess, file_store: str
) -> None:
    load_dag("xcom_exact")
    dr = getattr(sys.modules["xcom_exact"], dag_id).test()
    states = task_states(dr)
    failed = sorted(k for k, v in states.items() if v != "success")
    assert str(dr.state) == "success" and not failed, (failed, runtime.output()[-3000:])
    assert len(states) == 2 * len(sys.modules["xcom_exact"].cases())
