"""Benchmark of the @task.knative invocation path. Prints ratios against baselines measured in
the same run (no absolute targets are asserted anywhere).

1. Per-invocation overhead, loopback, no-op function, small args: the operator path
   (build the Invocation, codec, sign, pooled session, decode the Result) vs a bare
   ``requests.post`` of the same body to the same runtime (and, stricter, vs a pooled
   ``requests.Session.post``). Target: p50 ratio <= 1.3x vs requests.post.
2. A 300 MiB ndarray passed between two @task.knative tasks (dag.test() of
   ``tests/dags/knative_examples.py::knative_big_chain``) through a moto S3 server: the
   result is spilled by the runtime, passed by reference, fetched by the runtime. Peak RSS of
   the Airflow process running the tasks (target <= 300 MB) and the two invocations' wall
   time (median of ``--runs`` rounds, after a warm-up round) against the same work done by
   hand in the same process, alternating order: ``np.arange``, boto3's managed
   ``upload_fileobj`` + ``download_fileobj`` with the store's part size and concurrency,
   ``sum`` (target <= 1.3x). Also printed: the managed transfer alone, and single-stream
   ``put_object`` + ``get_object`` (which moto favours: it copies the whole object for
   every ranged GET).

Run: ``python bench/bench_operator.py [--calls 500] [--mib 300] [--runs 5] [--skip-big]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

NOOP_DAG = """
from airflow.sdk import dag, task

@dag(dag_id="bench_noop", schedule=None)
def bench_noop():
    @task.knative(service="bench")
    def noop(a, b, c=None):
        return None

    noop(1, "two", c=[3.0])

the_dag = bench_noop()
"""


def _env_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="knative-bench-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__XCOM_BACKEND": "airflow_provider_knative.xcom.KnativeXComBackend",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": (home / "store").as_uri(),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    return home


def bench_overhead(calls: int) -> dict[str, float]:
    import importlib.util

    import requests
    from runtime_process import start_runtime

    folder = Path(tempfile.mkdtemp(prefix="knative-bench-dags-"))
    (folder / "bench_noop.py").write_text(NOOP_DAG)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    # thread isolation, no store: the operator's path against the runtime's cheapest answer
    with start_runtime(
        folder, env={"AIRFLOW__KNATIVE__ISOLATION": "thread", "AIRFLOW__KNATIVE__XCOM_STORE_URL": ""}
    ) as rt:
        os.environ["AIRFLOW__KNATIVE__URL_TEMPLATE"] = rt.url
        spec = importlib.util.spec_from_file_location("bench_noop", folder / "bench_noop.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        op = module.the_dag.task_dict["noop"]

        class TI:
            map_index, try_number, run_id = -1, 1, "bench"

        context = {"ti": TI(), "run_id": "bench", "params": {}}

        def operator_call() -> None:
            request = op.build_request(context)
            assert op.answer(op.hook.invoke(request, op.timeouts()), request.url, context) is None

        body = op.build_request(context).body
        url = rt.url + "/invoke"
        headers = {"Content-Type": "application/x-msgpack"}
        session = requests.Session()

        def bare_post() -> None:
            assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 200

        def session_post() -> None:
            assert session.post(url, data=body, headers=headers, timeout=10).status_code == 200

        samples: dict[str, list[float]] = {"operator": [], "requests.post": [], "session.post": []}
        fns = {"operator": operator_call, "requests.post": bare_post, "session.post": session_post}
        for fn in fns.values():  # warm up connections and caches
            for _ in range(20):
                fn()
        for _ in range(calls):  # interleaved, so drift hits all three alike
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    p50 = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    return {
        "operator_p50_ms": p50["operator"],
        "requests_post_p50_ms": p50["requests.post"],
        "session_post_p50_ms": p50["session.post"],
        "ratio_vs_requests_post": p50["operator"] / p50["requests.post"],
        "ratio_vs_session_post": p50["operator"] / p50["session.post"],
    }


CHILD = r"""
import importlib.util, io, json, os, sys, time

spec = importlib.util.spec_from_file_location("knative_examples", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["knative_examples"] = module
spec.loader.exec_module(module)
from airflow_provider_knative import config
from airflow_provider_knative.decorators import _KnativeDecoratedOperator

mib, runs, bucket = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

# time only the invocations (the data path), not dag.test()'s per-task scheduling
spent = []
_execute = _KnativeDecoratedOperator.execute
def timed_execute(self, context):
    t = time.perf_counter()
    try:
        return _execute(self, context)
    finally:
        spent.append(time.perf_counter() - t)
_KnativeDecoratedOperator.execute = timed_execute

# the baseline: the same work by hand with boto3's managed transfer, the same part size and
# concurrency as the store (produce the array, upload it, download it, sum it). Set up only
# after the first dag.test() has been measured, so its imports do not count in the peak RSS.
def baseline_setup():
    global np, s3, transfer
    import boto3, numpy as np
    from boto3.s3.transfer import TransferConfig
    part, threads = config.get("transfer_chunk_bytes"), config.get("transfer_concurrency")
    s3 = boto3.client("s3", endpoint_url=os.environ["AIRFLOW__KNATIVE__S3_ENDPOINT_URL"])
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads)

class ViewReader(io.RawIOBase):
    # a seekable file over the array's memory, so the upload reads it without a first copy
    def __init__(self, view):
        self.view, self.pos = view, 0
    def readable(self): return True
    def seekable(self): return True
    def tell(self): return self.pos
    def seek(self, pos, whence=0):
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.view.nbytes + pos
        return self.pos
    def read(self, n=-1):
        end = self.view.nbytes if n < 0 else min(self.pos + n, self.view.nbytes)
        out = bytes(self.view[self.pos:end])
        self.pos = end
        return out

def managed():
    t0 = time.perf_counter()
    arr = np.arange(mib * 1024 * 1024 // 8, dtype=np.float64)
    t1 = time.perf_counter()
    s3.upload_fileobj(ViewReader(memoryview(arr).cast("B")), bucket, "raw/managed", Config=transfer)
    out = io.BytesIO()
    s3.download_fileobj(bucket, "raw/managed", out, Config=transfer)
    t2 = time.perf_counter()
    total = float(np.frombuffer(out.getbuffer(), dtype=np.float64).sum())
    assert total == float(arr.sum())
    s3.delete_object(Bucket=bucket, Key="raw/managed")
    return time.perf_counter() - t0, t2 - t1

def single():
    arr = np.arange(mib * 1024 * 1024 // 8, dtype=np.float64)
    t = time.perf_counter()
    s3.put_object(Bucket=bucket, Key="raw/single", Body=ViewReader(memoryview(arr).cast("B")))
    got = s3.get_object(Bucket=bucket, Key="raw/single")["Body"].read()
    assert len(got) == arr.nbytes
    s3.delete_object(Bucket=bucket, Key="raw/single")
    return time.perf_counter() - t

def vm_hwm_mb():
    # VmHWM starts afresh at exec; getrusage's ru_maxrss would carry the parent's peak over
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

ours, by_hand, transfer_only, single_stream, peaks, states = [], [], [], [], [], []
for i in range(runs + 1):  # the first round warms up the runtime, the imports and moto
    # alternate which goes first, so drift hits both alike
    first_ours = i % 2 == 0
    if not first_ours:
        hand = managed()
    spent.clear()
    run = module.knative_big_chain.test(run_conf={"mib": mib})
    states.append(str(run.state))
    peaks.append(vm_hwm_mb())
    if i == 0:
        baseline_setup()
    if first_ours:
        hand = managed()
    one = single()
    if i:
        ours.append(sum(spent))
        by_hand.append(hand[0])
        transfer_only.append(hand[1])
        single_stream.append(one)
print(json.dumps({
    "states": states, "ours": ours, "managed_by_hand": by_hand, "managed_transfer": transfer_only,
    "single_stream": single_stream, "peak_rss_mb_after_first_run": peaks[0],
}))
"""


def bench_big(mib: int, runs: int) -> dict[str, float]:
    import uuid

    import boto3
    from conftest import TEST_DAGS
    from runtime_process import start_runtime
    from servers import BIN, running_moto_server

    with running_moto_server() as endpoint:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=bucket)
        env = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": f"s3://{bucket}/xcom",
            "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": endpoint,
        }
        os.environ.update(env)
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True)
        with start_runtime(TEST_DAGS, env=env) as rt:
            child_env = {**os.environ, "AIRFLOW__KNATIVE__URL_TEMPLATE": rt.url}
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(TEST_DAGS / "knative_examples.py"),
                    str(mib),
                    str(runs),
                    bucket,
                ],
                env=child_env,
                capture_output=True,
                text=True,
            )
        if child.returncode != 0:
            raise RuntimeError(
                f"the dag.test() process failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
            )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        assert all(s == "success" for s in result["states"]), result
    med = {
        k: statistics.median(result[k])
        for k in ("ours", "managed_by_hand", "managed_transfer", "single_stream")
    }
    return {
        "mib": mib,
        "runs": runs,
        "peak_rss_mb": result["peak_rss_mb_after_first_run"],
        "tasks_seconds": med["ours"],
        "managed_by_hand_seconds": med["managed_by_hand"],
        "managed_transfer_seconds": med["managed_transfer"],
        "single_stream_seconds": med["single_stream"],
        "ratio_vs_managed_by_hand": med["ours"] / med["managed_by_hand"],
        "ratio_vs_managed_transfer": med["ours"] / med["managed_transfer"],
        "ratio_vs_single_stream": med["ours"] / med["single_stream"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5, help="big-chain rounds (after one warm-up)")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    _env_home()
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True
    )
    print("| measurement | value |\n|---|---|")
    if not args.skip_overhead:
        overhead = bench_overhead(args.calls)
        print(f"| operator path p50 (no-op, loopback) | {overhead['operator_p50_ms']:.2f} ms |")
        print(f"| bare requests.post p50 | {overhead['requests_post_p50_ms']:.2f} ms |")
        print(f"| pooled requests.Session.post p50 | {overhead['session_post_p50_ms']:.2f} ms |")
        print(
            f"| **ratio operator / requests.post (target <= 1.3x)** | **{overhead['ratio_vs_requests_post']:.2f}x** |"
        )
        print(f"| ratio operator / Session.post (stricter) | {overhead['ratio_vs_session_post']:.2f}x |")
    if not args.skip_big:
        big = bench_big(args.mib, args.runs)
        mib, runs = big["mib"], big["runs"]
        print(
            f"| {mib} MiB ndarray: peak RSS of the Airflow task process (target <= 300 MB) | {big['peak_rss_mb']:.0f} MB |"
        )
        print(
            f"| {mib} MiB ndarray: the two invocations (produce + consume), median of {runs} | {big['tasks_seconds']:.2f} s |"
        )
        print(
            f"| the same by hand: np.arange, boto3 managed upload_fileobj + download_fileobj "
            f"(same part size and concurrency), sum | {big['managed_by_hand_seconds']:.2f} s |"
        )
        print(f"| of which the managed transfer alone | {big['managed_transfer_seconds']:.2f} s |")
        print(
            f"| single-stream put_object + get_object (moto favours it) | {big['single_stream_seconds']:.2f} s |"
        )
        print(
            f"| **ratio invocations / by hand with managed transfer (target <= 1.3x)** | "
            f"**{big['ratio_vs_managed_by_hand']:.2f}x** |"
        )
        print(
            f"| ratio invocations / managed transfer alone (stricter) | {big['ratio_vs_managed_transfer']:.2f}x |"
        )
        print(f"| ratio invocations / single stream (info) | {big['ratio_vs_single_stream']:.2f}x |")


if __name__ == "__main__":
    main()
