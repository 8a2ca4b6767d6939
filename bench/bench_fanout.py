"""The fan-out DAG at width 100 and 1,000: total time and peak memory of the whole stack.

For each width, runs ``fanout_knative`` (mapped @task.knative) and ``fanout_local``
(mapped plain @task) through the gateway on one local stack, sampling the summed RSS of
every process of the stack (api-server, scheduler and its task processes, dag-processor,
triggerer, runtime) every 0.2 s, and counting task instances that did not succeed on
their first try (zombies, SIGTERM-killed, failed). Prints times, peaks and the time ratio
(target <= 1.1x, no zombie or killed tasks).

    .venv/bin/python bench/bench_fanout.py [--widths 100 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil

from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
DAGS = ("fanout_knative", "fanout_local")


class PeakRss:
    """Peak of the summed RSS of a set of process trees, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bad_tasks(client: StackClient, token: str, dag_id: str, run_id: str) -> int:
    """Mapped task instances that failed or needed more than one try (zombie/SIGTERM/retry)."""
    response = client.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/square/listMapped",
        token,
        params={"limit": 2000},
    )
    tis = response.json()["task_instances"]
    return sum(1 for ti in tis if ti["state"] != "success" or ti["try_number"] > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each DAG per width, in alternating order so neither pays the warm-up alone",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as state:
        stack = LocalStack(
            Path(state),
            REPO / "example_dags",
            wait_for_dags=DAGS,
            extra_env={"AIRFLOW__API__MAXIMUM_PAGE_LIMIT": "2000"},
        )
        with stack:
            client = StackClient(stack.url)
            token = client.login("admin", stack.passwords["admin"])
            for dag_id in DAGS:  # warm-up, not recorded: the first run of a fresh stack is slow
                client.run_workflow(dag_id, 10, token, timeout=600, unpause=True)
            for width in args.widths:
                runs = [d for rep in range(args.repeats) for d in (DAGS if rep % 2 else DAGS[::-1])]
                for dag_id in runs:
                    with PeakRss(stack.pids()) as rss:
                        started = time.perf_counter()
                        response = client.run_workflow(dag_id, width, token, timeout=3600, unpause=True)
                        elapsed = time.perf_counter() - started
                    body = response.json()
                    expected = sum(x * x for x in range(width))
                    if response.status_code != 200 or body["output"] != expected:
                        raise RuntimeError(
                            f"{dag_id} width {width}: {response.status_code} {response.text[:500]}"
                        )
                    bad = bad_tasks(client, token, dag_id, body["dag_run_id"])
                    rows.append((width, dag_id, elapsed, rss.peak / 2**30, bad))
                    print(
                        f"width {width:5d} {dag_id:15s} {elapsed:7.1f} s  peak RSS {rss.peak / 2**30:5.2f} GiB  "
                        f"zombie/killed/retried tasks: {bad}",
                        flush=True,
                    )
            client.close()
    for width in args.widths:
        t = {dag: min(e for w, d, e, _, _ in rows if w == width and d == dag) for dag in DAGS}
        print(
            f"width {width}: best {t['fanout_knative']:.1f} s vs {t['fanout_local']:.1f} s, ratio "
            f"@task.knative / @task = {t['fanout_knative'] / t['fanout_local']:.2f}x (target <= 1.1x)"
        )


if __name__ == "__main__":
    main()
