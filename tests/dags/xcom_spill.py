"""One spilled value and its consumer: for the clear/purge, cleanup and store-failure tests."""

from __future__ import annotations

import numpy as np
from airflow.sdk import dag, task


@dag(schedule=None, catchup=False, tags=["test"], default_args={"retries": 0})
def xcom_spill():
    @task
    def produce() -> np.ndarray:
        return np.arange(200_000, dtype=np.float64)  # 1.6 MB: spilled

    @task
    def consume(value: np.ndarray) -> int:
        assert value.shape == (200_000,) and value[-1] == 199_999.0
        return int(value.sum())

    consume(produce())


the_dag = xcom_spill()
