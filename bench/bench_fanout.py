"""The fan-out DAG at widths 10, 100 and 1,000: total time and peak memory of the whole stack.

For each width, runs ``fanout_knative`` (mapped @task.knative) and ``fanout_local``
(mapped plain @task) through the gateway on one local stack, sampling the summed RSS of
every process of the stack (api-server, scheduler and its task processes, dag-processor,
triggerer, runtime) every 0.2 s, and counting task instances that did not succeed on
their first try (zombies, SIGTERM-killed, failed). Prints times, peaks and the time ratio
(target <= 1.1x, no zombie or killed tasks), and draws wall time against width for both
to ``docs/bench/fanout_time.png`` (data in ``docs/bench/fanout_time.json``). The plot and
the JSON are rewritten after every width, so an interrupted run still leaves the widths
it finished.

    .venv/bin/python bench/bench_fanout.py [--widths 10 100 1000] [--repeats 2] [--out docs/bench]
    .venv/bin/python bench/bench_fanout.py --replot   # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from plots import DOCS_DIR, Series, plot_curves  # noqa: E402

DAGS = ("fanout_knative", "fanout_local")
#: the contender names of the plot (same colours as in every other plot)
LABELS = {"fanout_knative": "@task.knative", "fanout_local": "@task"}
TARGET = 1.1


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


def summarize(
    rows: list[tuple[int, str, float, float, int]], widths: list[int], repeats: int
) -> dict[str, Any]:
    """Per width and DAG: every run's seconds, the best and the median, peak RSS, bad tasks."""
    out: dict[str, Any] = {
        "machine": f"{platform.node()} ({psutil.cpu_count()} cores)",
        "repeats": repeats,
        "target_ratio": TARGET,
        "widths": [],
        "runs": {LABELS[d]: [] for d in DAGS},
    }
    for width in widths:
        if not any(w == width for w, *_ in rows):
            continue
        out["widths"].append(width)
        for dag in DAGS:
            mine = [r for r in rows if r[0] == width and r[1] == dag]
            out["runs"][LABELS[dag]].append(
                {
                    "seconds": [r[2] for r in mine],
                    "best_s": min(r[2] for r in mine),
                    "median_s": statistics.median(r[2] for r in mine),
                    "peak_rss_gib": max(r[3] for r in mine),
                    "bad_tasks": sum(r[4] for r in mine),
                }
            )
    return out


def draw(result: dict[str, Any], out_dir: Path) -> Path:
    widths = result["widths"]
    return plot_curves(
        out_dir / "fanout_time.png",
        [Series(name, widths, [p["best_s"] for p in points]) for name, points in result["runs"].items()],
        title="Fan-out DAG wall time against width (mapped square + sum, local stack)",
        xlabel="width (mapped task instances)",
        ylabel="wall time, trigger to result (s)",
        xticks=widths,
        yunit="plain",
        note=f"best of {result['repeats']} alternating runs per DAG; one stack, {result['machine']}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each DAG per width, in alternating order so neither pays the warm-up alone",
    )
    parser.add_argument("--out", type=Path, default=DOCS_DIR, help="folder of fanout_time.png/.json")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    args = parser.parse_args()
    json_path = args.out / "fanout_time.json"
    if args.replot:
        print(f"plot: {draw(json.loads(json_path.read_text()), args.out)}")
        return
    rows: list[tuple[int, str, float, float, int]] = []
    png = args.out / "fanout_time.png"
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
                # after every width, so an interrupted run keeps what it measured
                result = summarize(rows, args.widths, args.repeats)
                args.out.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps(result, indent=1))
                png = draw(result, args.out)
            client.close()
    result = summarize(rows, args.widths, args.repeats)
    print(
        "\n| width | @task.knative best (s) | @task best (s) | ratio | target | peak RSS (GiB) | bad tasks |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, width in enumerate(result["widths"]):
        k, t = result["runs"]["@task.knative"][i], result["runs"]["@task"][i]
        ratio = k["best_s"] / t["best_s"]
        verdict = "met" if ratio <= TARGET and k["bad_tasks"] == 0 else "MISSED"
        print(
            f"| {width} | {k['best_s']:.1f} | {t['best_s']:.1f} | {ratio:.2f}x | <= {TARGET}x, no bad tasks: "
            f"{verdict} | {k['peak_rss_gib']:.2f} vs {t['peak_rss_gib']:.2f} | {k['bad_tasks']} vs {t['bad_tasks']} |"
        )
    print(f"plot: {png}\ndata: {json_path}")


if __name__ == "__main__":
    main()
