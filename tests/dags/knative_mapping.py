"""DAGs that map over a large list result (issue: a spilled list could not feed ``.expand()``).

Each DAG runs three ways in ``tests/test_mapping.py``: through the runtime (sync and
deferrable) and with plain ``@task`` under the XCom backend.
"""

from __future__ import annotations

from airflow.sdk import dag, task

BATCHES = 12


def _batches(n_batches: int, rows: int) -> list:
    import numpy as np

    return [np.full(rows, float(i)) for i in range(n_batches)]


def _mapping_dag(dag_id: str, decorator, **kwargs):
    @dag(dag_id=dag_id, schedule=None, params={"rows": 30_000}, tags=["knative-test"])
    def mapping():
        @decorator(**kwargs)
        def make_batches(params=None):
            return _batches(BATCHES, params["rows"])

        @decorator(**kwargs)
        def batch_sum(batch):
            return float(batch.sum())

        @decorator(**kwargs)
        def make_kwargs(params=None):
            return [{"batch": b, "scale": i} for i, b in enumerate(_batches(BATCHES, params["rows"]))]

        @decorator(**kwargs)
        def scaled_sum(batch, scale):
            return float(batch.sum()) * scale

        @decorator(**kwargs)
        def total(sums):
            return sum(sums)

        total.override(task_id="total_expand")(batch_sum.expand(batch=make_batches()))
        total.override(task_id="total_expand_kwargs")(scaled_sum.expand_kwargs(make_kwargs()))

    return mapping()


knative_mapping = _mapping_dag("knative_mapping", task.knative, service="map-worker")
knative_mapping_deferrable = _mapping_dag(
    "knative_mapping_deferrable", task.knative, service="map-worker", deferrable=True
)
plain_mapping = _mapping_dag("plain_mapping", task)
