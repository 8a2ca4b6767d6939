"""DAG served by the runtime in tests/test_runtime*.py (not parsed by dag.test(): outside tests/dags)."""

from __future__ import annotations

import logging
import os
import time

from airflow.sdk import dag, task

log = logging.getLogger("runtime_basic")


class Unencodable:
    pass


class TaskFailed(Exception):
    """A user-defined exception: its name must reach the caller."""


@dag(schedule=None, dag_id="runtime_basic")
def runtime_basic():
    @task.knative(service="rt")
    def add(a, b=0):
        return a + b

    @task.knative(service="rt")
    def noop():
        return None

    @task.knative(service="rt")
    def fail(message):
        print("about to fail")
        raise TaskFailed(message)

    @task.knative(service="rt")
    def chatty(tag, lines=20, pause=0.005):
        for i in range(lines):
            print(f"{tag} print {i}")
            log.info("%s log %d", tag, i)
            time.sleep(pause)
        return tag

    @task.knative(service="rt")
    def flood(n_bytes):
        print("first line")
        for _ in range(n_bytes // 100):
            print("x" * 99)
        print("last line")
        return n_bytes

    @task.knative(service="rt")
    def sleepy(seconds):
        time.sleep(seconds)
        return seconds

    @task.knative(service="rt")
    def wait_for_file(path, timeout=60.0):
        """Runs until ``path`` exists: a test decides when it ends, not a guessed duration."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.01)
        return path

    @task.knative(service="rt")
    def burn(seconds):
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            n += 1
        return n

    @task.knative(service="rt")
    def bad_result():
        return {"rows": [1, 2, Unencodable()]}

    @task.knative(service="rt")
    def with_params(x, params=None, run_id=None):
        return {"x": x, "params": params, "run_id": run_id}

    @task.knative(service="rt")
    def array_stats(arr):
        return {"sum": float(arr.sum()), "shape": list(arr.shape), "dtype": str(arr.dtype)}

    @task.knative(service="rt")
    def make_array(n, fill):
        import numpy as np

        return np.full(n, fill, dtype="float64")

    @task.knative(service="rt")
    async def async_add(a, b):
        return a + b

    @task
    def plain_python():
        return "not callable through the runtime"

    add(1, 2)
    noop()
    fail("boom")
    chatty("t")
    flood(10)
    sleepy(0)
    wait_for_file("")
    burn(0)
    bad_result()
    with_params(1)
    array_stats([1])
    make_array(1, 0.0)
    async_add(1, 2)
    plain_python()


the_dag = runtime_basic()
