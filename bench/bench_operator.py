"""Benchmark of the @task.knative invocation path. Prints ratios against baselines measured in
the same run (no absolute targets are asserted anywhere).

1. Per-invocation overhead, loopback, no-op function, small args: the operator path
   (build the Invocation, codec, sign, pooled session, decode the Result) vs a bare
   ``requests.post`` of the same body to the same runtime (and, stricter, vs a pooled
   ``requests.Session.post``). Target: p50 ratio <= 1.3x vs requests.post.
2. A 300 MiB ndarray passed between two @task.knative tasks (dag.test() of
   ``tests/dags/knative_examples.py::knative_big_chain``) through a moto S3 server:
   peak RSS of the Airflow process running the tasks (target <= 300 MB) and the two tasks'
   wall time vs a raw boto3 upload + download of the same bytes to the same server
   (target <= 1.3x).

Run: ``.venv/bin/python bench/bench_operator.py [--calls 500] [--mib 300] [--skip-big]``
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

    from airflow_provider_knative.invoker import Request

    folder = Path(tempfile.mkdtemp(prefix="knative-bench-dags-"))
    (folder / "bench_noop.py").write_text(NOOP_DAG)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    with start_runtime(folder) as rt:
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
            request = Request(request.url, request.body, secret=op.hook.settings.secret)
            assert op._finish(op.hook.invoke(request, op.timeouts()), request.url, context) is None

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
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("knative_examples", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["knative_examples"] = module
spec.loader.exec_module(module)
from airflow_provider_knative.decorators import _KnativeDecoratedOperator

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

run = module.knative_big_chain.test(run_conf={"mib": int(sys.argv[2])})

def vm_hwm_mb():
    # VmHWM starts afresh at exec; getrusage's ru_maxrss would carry the parent's peak over
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
print(json.dumps({
    "state": str(run.state),
    "tasks_seconds": sum(spent),
    "invocations": len(spent),
    "peak_rss_mb": vm_hwm_mb(),
}))
"""


def bench_big(mib: int) -> dict[str, float]:
    import uuid

    import boto3
    import numpy as np
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

        # baseline: the same bytes up and down with boto3's managed transfer
        data = np.arange(mib * 1024 * 1024 // 8, dtype=np.float64).tobytes()
        t = time.perf_counter()
        s3.put_object(Bucket=bucket, Key="raw/blob", Body=data)
        got = s3.get_object(Bucket=bucket, Key="raw/blob")["Body"].read()
        boto_seconds = time.perf_counter() - t
        assert len(got) == len(data)
        del data, got

        with start_runtime(TEST_DAGS, env=env) as rt:
            child_env = {**os.environ, "AIRFLOW__KNATIVE__URL_TEMPLATE": rt.url}
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(TEST_DAGS / "knative_examples.py"), str(mib)],
                env=child_env,
                capture_output=True,
                text=True,
            )
        if child.returncode != 0:
            raise RuntimeError(
                f"the dag.test() process failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
            )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        assert result["state"] == "success", result
    return {
        "mib": mib,
        "peak_rss_mb": result["peak_rss_mb"],
        "tasks_seconds": result["tasks_seconds"],
        "boto3_put_get_seconds": boto_seconds,
        "ratio_vs_boto3": result["tasks_seconds"] / boto_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--mib", type=int, default=300)
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args()
    _env_home()
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True
    )
    overhead = bench_overhead(args.calls)
    print("| measurement | value |\n|---|---|")
    print(f"| operator path p50 (no-op, loopback) | {overhead['operator_p50_ms']:.2f} ms |")
    print(f"| bare requests.post p50 | {overhead['requests_post_p50_ms']:.2f} ms |")
    print(f"| pooled requests.Session.post p50 | {overhead['session_post_p50_ms']:.2f} ms |")
    print(
        f"| **ratio operator / requests.post (target <= 1.3x)** | **{overhead['ratio_vs_requests_post']:.2f}x** |"
    )
    print(f"| ratio operator / Session.post (stricter) | {overhead['ratio_vs_session_post']:.2f}x |")
    if not args.skip_big:
        big = bench_big(args.mib)
        print(
            f"| {big['mib']} MiB ndarray: peak RSS of the Airflow task process (target <= 300 MB) | {big['peak_rss_mb']:.0f} MB |"
        )
        print(
            f"| {big['mib']} MiB ndarray: time of the two invocations (produce + consume) | {big['tasks_seconds']:.2f} s |"
        )
        print(f"| raw boto3 put + get of the same bytes | {big['boto3_put_get_seconds']:.2f} s |")
        print(f"| **ratio invocations / boto3 (target <= 1.3x)** | **{big['ratio_vs_boto3']:.2f}x** |")


if __name__ == "__main__":
    main()
