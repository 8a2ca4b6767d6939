"""A pandas ETL that passes a large DataFrame between Knative functions.

``extract`` builds a DataFrame of ``params["data"]`` rows (default 200,000, about 5 MB):
far above ``[knative] xcom_inline_max_bytes``, so it is spilled to the object store as
Arrow IPC and only a reference goes through Airflow's database and the HTTP calls.
``transform`` aggregates it; ``load`` returns a small summary (the DAG's output).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    catchup=False,
    params={"data": Param(200_000, type="integer", minimum=1, description="rows to generate")},
    tags=["knative", "example"],
)
def pandas_etl() -> Any:
    @task.knative(service="pandas-worker")
    def extract(params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import pandas as pd

        rows = int((params or {}).get("data", 200_000))
        rng = np.random.default_rng(42)
        frame = pd.DataFrame(
            {
                "store": rng.integers(0, 50, rows),
                "units": rng.integers(1, 10, rows),
                "price": rng.random(rows) * 100,
            }
        )
        print(f"extracted {rows} rows, {frame.memory_usage(deep=True).sum()} bytes")
        return frame

    @task.knative(service="pandas-worker")
    def transform(frame: Any) -> Any:
        frame = frame.assign(revenue=frame["units"] * frame["price"])
        per_store = frame.groupby("store", as_index=False)["revenue"].sum()
        print(f"transformed {len(frame)} rows into {len(per_store)} stores")
        return per_store

    @task.knative(service="pandas-worker")
    def load(per_store: Any) -> dict[str, Any]:
        summary = {
            "stores": len(per_store),
            "revenue": round(float(per_store["revenue"].sum()), 2),
            "top_store": int(per_store.loc[per_store["revenue"].idxmax(), "store"]),
        }
        print(f"loaded summary {summary}")
        return summary

    return load(transform(extract()))


pandas_etl()
