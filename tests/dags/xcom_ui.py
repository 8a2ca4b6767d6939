"""Three XComs a user looks at in the UI: a small tuple (packed inline), a ~1 MB DataFrame and
a 50 MB ndarray (both spilled to the store). For tests/test_xcom_ui.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
from airflow.sdk import dag, task

FRAME_ROWS = 25_000
ARRAY_ITEMS = 6_553_600  # float64: 50 MiB


@dag(schedule=None, catchup=False, tags=["test"], default_args={"retries": 0})
def xcom_ui():
    @task
    def make_tuple() -> tuple:
        return (1, 2, "three")

    @task
    def make_frame() -> pd.DataFrame:
        rows = np.arange(FRAME_ROWS)
        return pd.DataFrame(
            {
                "city": np.array(["Paris", "Berlin", "Lagos", "Lima"])[rows % 4],
                "temp": np.round(15 + 10 * np.sin(rows / 100), 2),
                "count": rows.astype(np.int64),
                "when": pd.date_range("2024-01-01", periods=FRAME_ROWS, freq="min"),
            }
        )

    @task
    def make_array() -> np.ndarray:
        return np.arange(ARRAY_ITEMS, dtype=np.float64)

    make_tuple()
    make_frame()
    make_array()


the_dag = xcom_ui()
