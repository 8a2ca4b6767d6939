"""Gateway round trip of the average workflow on the warm local stack (median of N).

Starts the embedded stack (SQLite, LocalExecutor, file:// store, one runtime), runs each
DAG once to warm up, then times N ``POST /knative/runWorkflow`` calls of
``compute_avg_distributed`` (@task.knative) and ``compute_avg_local`` (plain @task),
alternating, and prints the medians and their ratio (target <= 1.1x; the system we
replace needed ~20 s per call on a Knative cluster).

    .venv/bin/python bench/bench_gateway.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
DAGS = ("compute_avg_distributed", "compute_avg_local")


def round_trip(client: StackClient, token: str, dag_id: str) -> float:
    started = time.perf_counter()
    response = client.run_workflow(dag_id, [1, 2, 3, 4], token, timeout=120, unpause=True)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json()["output"] != 2.5:
        raise RuntimeError(f"{dag_id}: {response.status_code} {response.text[:500]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as state:
        with LocalStack(Path(state), REPO / "example_dags", wait_for_dags=DAGS) as stack:
            client = StackClient(stack.url)
            token = client.login("admin", stack.passwords["admin"])
            for dag_id in DAGS:
                round_trip(client, token, dag_id)  # warm-up: unpause, first parse, connections
            times: dict[str, list[float]] = {d: [] for d in DAGS}
            for _ in range(args.runs):
                for dag_id in DAGS:
                    times[dag_id].append(round_trip(client, token, dag_id))
            client.close()
    medians = {d: statistics.median(t) for d, t in times.items()}
    for dag_id in DAGS:
        runs = ", ".join(f"{t:.2f}" for t in times[dag_id])
        print(f"{dag_id:26s} median {medians[dag_id]:6.2f} s  (runs: {runs})")
    ratio = medians["compute_avg_distributed"] / medians["compute_avg_local"]
    print(f"ratio @task.knative / @task: {ratio:.2f}x (target <= 1.1x)")
    print(f"vs the replaced system (~20 s): {20.0 / medians['compute_avg_distributed']:.1f}x faster")


if __name__ == "__main__":
    main()
