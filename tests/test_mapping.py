"""A large list result feeds ``.expand()`` and ``.expand_kwargs()``, each mapped task getting
only its own item, by reference when the item is large.

Twelve batches of 30,000 float64 values (~240 KB each, ~2.9 MB in all): over the 64 KiB inline
limit as a whole, so the list is stored item by item. Through a real runtime (sync and
deferrable) and with plain ``@task`` under the XCom backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import TEST_DAGS
from knative_dagrun import run_dag, stored_xcom, task_states, xcom_value
from runtime_process import RuntimeProcess, serving_tasks

from airflow_provider_knative import codec
from airflow_provider_knative.xcom import MARKER, pass_references

BATCHES = 12
ROWS = 30_000
EXPECTED_SUMS = [float(i * ROWS) for i in range(BATCHES)]


@pytest.fixture(scope="module")
def runtime(airflow_home) -> Iterator[RuntimeProcess]:
    with serving_tasks(TEST_DAGS, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as rt:
        yield rt


def _check(run) -> None:
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    assert xcom_value(run, "total_expand") == sum(EXPECTED_SUMS)
    assert xcom_value(run, "total_expand_kwargs") == sum(s * i for i, s in enumerate(EXPECTED_SUMS))
    for i in range(BATCHES):
        assert xcom_value(run, "batch_sum", map_index=i) == EXPECTED_SUMS[i]
    # the list is stored item by item: a small packed list of references, one object per batch
    stored = stored_xcom(run, "make_batches")
    assert stored[MARKER] == 1 and "packed" in stored and len(stored["packed"]) < 16_000
    from types import SimpleNamespace

    from airflow_provider_knative.xcom import KnativeXComBackend

    with pass_references():
        items = KnativeXComBackend.deserialize_value(SimpleNamespace(value=stored))
    assert type(items) is list and len(items) == BATCHES
    assert all(isinstance(item, codec.ObjectRef) for item in items)
    assert items[3].summary == f"ndarray float64 ({ROWS},)"
    # a task that reads the list whole gets the arrays themselves
    whole = xcom_value(run, "make_batches")
    assert [float(b.sum()) for b in whole] == EXPECTED_SUMS


@pytest.mark.parametrize("dag_id", ["knative_mapping", "knative_mapping_deferrable"])
def test_knative_list_result_feeds_expand_and_expand_kwargs(dag_id, runtime, capfd) -> None:
    run = run_dag(dag_id, module="knative_mapping")
    _check(run) if str(run.state) == "success" else pytest.fail(capfd.readouterr().out[-5000:])


def test_plain_task_list_result_feeds_expand_under_the_backend(airflow_home, capfd) -> None:
    run = run_dag("plain_mapping", module="knative_mapping")
    _check(run) if str(run.state) == "success" else pytest.fail(capfd.readouterr().out[-5000:])
