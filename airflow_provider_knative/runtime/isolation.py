"""Where a call runs: in a worker thread of the server, or in a process of its own.

``[knative] isolation = thread`` (the default) runs functions in the server's worker threads:
the fastest path, but calls share one interpreter: module globals, ``os.chdir``, environment
variables, signal handlers and the GIL, and a crash (a segfault in a C extension,
``os._exit``) takes down every call in the pod. ``isolation = process`` runs each call in a
child forked from the fork server (``forkserver.py``), as Airflow runs each task in a process
of its own: nothing leaks between calls, CPU-bound calls use every core, and a crash fails
only its own call (``WorkerCrashed``) while the runtime keeps serving.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from airflow_provider_knative import protocol
from airflow_provider_knative.functions import Function, FunctionInfo
from airflow_provider_knative.runtime import invoke, loader
from airflow_provider_knative.runtime.forkserver import ForkServer

MODES = ("thread", "process")


def run_in_thread(limits: invoke.Limits) -> invoke.Runner:
    """Calls run right here, in the server's worker thread that admitted them."""

    def run(fn: FunctionInfo, inv: protocol.Invocation, body: bytes | bytearray) -> invoke.Outcome:
        assert isinstance(fn, Function), "thread isolation needs the imported function"
        return invoke.run(fn, inv, limits)

    return run


class ProcessRunner:
    """Calls run in a child of the fork server, one child per call."""

    def __init__(self, forks: ForkServer, limits: invoke.Limits) -> None:
        self.forks = forks
        self.limits = limits

    def __call__(self, fn: FunctionInfo, inv: protocol.Invocation, body: bytes | bytearray) -> invoke.Outcome:
        job = self.forks.submit("invoke", {"body": bytes(body), "log_max_bytes": self.limits.log_max_bytes})
        outcome = None
        for status, answer, error in job.messages():
            outcome = invoke.Outcome(status, answer, error)
        if outcome is not None:
            return outcome
        return invoke.error_outcome(500, "WorkerCrashed", crash_message(fn.function_id, job.exit_status))

    def kill_all(self) -> None:
        """Stop every call still running (the drain is over)."""
        for job in self.forks.running():
            job.kill(signal.SIGKILL)  # the call and everything it started


def crash_message(function_id: str, status: int | None) -> str:
    if status is None:
        how = "the runtime's fork server died"
    elif status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        how = f"its process was killed by {name}"
    else:
        how = f"its process exited with status {status} (os._exit?)"
    return (
        f"{function_id}: {how} before it answered. With process isolation a crash stays inside its "
        "own call and the runtime keeps serving; Airflow's task retries apply"
    )


def run_in_child(payload: dict[str, Any], emit: Callable[[Any], None]) -> None:
    """The fork server's ``invoke`` job: run one call in this (fresh) process, emit its outcome."""
    body = payload["body"]
    limits = invoke.Limits(
        max_body_bytes=len(body),
        log_max_bytes=payload["log_max_bytes"],
        signing_secret=None,
        signature_max_age_seconds=0.0,
    )
    try:
        inv = protocol.Invocation.decode(body)
        fn = loader.current().functions[inv.function_id]
    except Exception as exc:  # the server admitted it, so this is a mismatch between the two
        outcome = invoke.error_outcome(500, "RuntimeInternalError", f"{type(exc).__name__}: {exc}")
    else:
        outcome = invoke.run(fn, inv, limits)
    emit([outcome.status, outcome.body, outcome.error])
