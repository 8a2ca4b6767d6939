"""DAG served by the runtime in tests/test_isolation.py: functions that keep module state,
change the working directory or crash, to show what thread and process isolation share."""

from __future__ import annotations

import logging
import time

from airflow.sdk import dag, task

log = logging.getLogger("runtime_isolation")


class TaskFailed(Exception):
    """A user-defined exception: its name must reach the caller."""


#: module state a function keeps between its own statements
_SCRATCH: dict[str, object] = {}


@dag(schedule=None, dag_id="runtime_isolation")
def runtime_isolation():
    @task.knative(service="rt")
    def add(a, b=0):
        return a + b

    @task.knative(service="rt")
    def chatty(tag, lines=3, pause=0.0):
        for i in range(lines):
            print(f"{tag} print {i}")
            log.info("%s log %d", tag, i)
            time.sleep(pause)
        return tag

    @task.knative(service="rt")
    def fail(message):
        print("about to fail")
        raise TaskFailed(message)

    @task.knative(service="rt")
    def scratch(value, pause=0.2):
        """Keeps scratch state in a module global: correct only if no other call shares it."""
        _SCRATCH["value"] = value
        time.sleep(pause)
        return _SCRATCH["value"]

    @task.knative(service="rt")
    def scratch_until(value, gate):
        """Sets the module global, says so (``<gate>.set``), and reads it back once ``gate``
        exists: a test orders two calls without guessing how long anything takes."""
        import os

        _SCRATCH["value"] = value
        open(f"{gate}.set", "a").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        return _SCRATCH["value"]

    @task.knative(service="rt")
    def visits():
        """How many calls this process has served: 1 in process isolation, every time."""
        _SCRATCH["visits"] = int(_SCRATCH.get("visits", 0)) + 1
        return _SCRATCH["visits"]

    @task.knative(service="rt")
    def crash(how):
        import os
        import signal

        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGSEGV)

    @task.knative(service="rt")
    def chdir(path):
        import os

        before = os.getcwd()
        os.chdir(path)
        return before

    add(1, 2)
    chatty("t")
    fail("boom")
    scratch(1)
    scratch_until(1, "")
    visits()
    crash("exit")
    chdir("/")


isolation_dag = runtime_isolation()
