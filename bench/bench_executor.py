"""KnativeExecutor against LocalExecutor on one local stack, and the runtime's memory per task.

Runs a 20-task chain and a 200-way mapped fan-out twice each way (alternating, the
KnativeExecutor first in ``[core] executor``, LocalExecutor for the ``*_local`` DAGs through
``default_args``), timing each DAG run from its start to its end in Airflow's own records.
Then holds 16 tasks (``container_concurrency``) in the runtime at once and samples the
runtime's process tree: unique memory (USS) per task in flight. Prints the ratios
(target: <= 1.2x LocalExecutor's wall time).

    .venv/bin/python bench/bench_executor.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

HERE = Path(__file__).resolve().parent
PAIRS = (("chain_knative", "chain_local"), ("fanout200_knative", "fanout200_local"))


def run_once(client: StackClient, token: str, dag_id: str) -> float:
    """Seconds from the run's start to its end, as Airflow recorded them."""
    client.set_paused(dag_id, False, token)
    run_id = client.api("POST", f"/dags/{dag_id}/dagRuns", token, json={"logical_date": None}).json()[
        "dag_run_id"
    ]
    while True:
        run = client.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", token).json()
        if run["state"] in ("success", "failed"):
            break
        time.sleep(0.5)
    if run["state"] != "success":
        raise SystemExit(f"{dag_id} run {run_id} failed")
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    return (end - start).total_seconds()


def tree_uss(pid: int) -> tuple[int, int]:
    """Unique memory of a process tree, and how many processes it holds."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().uss
        except psutil.Error:
            pass
    return total, len(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    dags = state / "dags"
    shutil.copytree(HERE / "executor_dags", dags)
    stack = LocalStack(
        state, dags, executor="knative", wait_for_dags=tuple(d for pair in PAIRS for d in pair)
    )
    stack.start()
    try:
        client = StackClient(stack.url, timeout=60)
        token = client.login("admin", stack.passwords["admin"])
        for pair in PAIRS:  # warm both paths (first DAG run, first fork) outside the measurement
            for dag_id in pair:
                run_once(client, token, dag_id)
        times: dict[str, list[float]] = {d: [] for pair in PAIRS for d in pair}
        for i in range(args.repeats):
            for knative, local in PAIRS:
                for dag_id in (knative, local) if i % 2 == 0 else (local, knative):
                    times[dag_id].append(run_once(client, token, dag_id))
        print(f"{'DAG':<22}{'median s':>10}   runs")
        for dag_id, values in times.items():
            print(f"{dag_id:<22}{statistics.median(values):>10.1f}   {', '.join(f'{v:.1f}' for v in values)}")
        for knative, local in PAIRS:
            ratio = statistics.median(times[knative]) / statistics.median(times[local])
            verdict = "met" if ratio <= 1.2 else "MISSED"
            print(f"{knative} / {local}: {ratio:.2f}x LocalExecutor (target <= 1.2x: {verdict})")

        runtime = stack.process("runtime").popen.pid
        idle, idle_procs = tree_uss(runtime)
        peak = {"uss": 0, "procs": 0}

        def sample(stop: threading.Event) -> None:
            while not stop.is_set():
                uss, procs = tree_uss(runtime)
                if procs > peak["procs"] or (procs == peak["procs"] and uss > peak["uss"]):
                    peak.update(uss=uss, procs=procs)
                stop.wait(0.5)

        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(stop,), daemon=True)
        sampler.start()
        run_once(client, token, "hold_16")
        stop.set()
        sampler.join()
        in_flight = (peak["procs"] - idle_procs) // 2  # a supervisor and a task process per task
        per_task = (peak["uss"] - idle) / max(1, in_flight)
        print(
            f"runtime idle: {idle / 2**20:.0f} MiB unique in {idle_procs} processes; with {in_flight} tasks in flight "
            f"(container_concurrency 16, all succeeded): {peak['uss'] / 2**20:.0f} MiB, "
            f"{per_task / 2**20:.1f} MiB unique memory per task"
        )
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
