"""Functions for the many-replica tests (``tests/test_replicas.py``): each leaves a trace.

``record`` appends ``<key> start <time> <pid>`` to a file, sleeps, appends ``<key> end <time>``
and returns a value made from its key, so a test can tell, for every call, whether its function
began, whether it finished, how many times it ran, and whether the value that came back is its
own. Appends of one short line are atomic on Linux, so concurrent calls on several replicas
share one file.
"""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="replica_calls", schedule=None, tags=["knative-test"])
def replica_calls():
    @task.knative(service="replicas", retries=0)
    def record(path: str, key: str, seconds: float) -> str:
        import os
        import time

        with open(path, "a") as fh:
            fh.write(f"{key} start {time.time():.6f} {os.getpid()}\n")
        time.sleep(seconds)
        with open(path, "a") as fh:
            fh.write(f"{key} end {time.time():.6f}\n")
        return f"value of {key}"

    @task.knative(service="replicas", retries=0)
    def talk(key: str, lines: int, every: float) -> int:
        """Prints a numbered line every ``every`` seconds: its output is followed as it runs."""
        import time

        for i in range(lines):
            print(f"{key} line {i} at {time.time():.3f}", flush=True)
            time.sleep(every)
        return lines

    record("", "", 0.0)
    talk("", 0, 0.0)


replica_calls()
