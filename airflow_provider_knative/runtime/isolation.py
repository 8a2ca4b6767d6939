"""Where a call runs: in a worker thread of the server, or in a process of its own.

``[knative] isolation = thread`` runs functions in the server's worker threads: the fastest
path, for functions known to be re-entrant, but calls share one interpreter: module globals, ``os.chdir``, environment
variables, signal handlers and the GIL, and a crash (a segfault in a C extension,
``os._exit``) takes down every call in the pod. ``isolation = process`` runs each call in a
child forked from the fork server (``forkserver.py``), as Airflow runs each task in a process
of its own: nothing leaks between calls, CPU-bound calls use every core, and a crash fails
only its own call (``WorkerCrashed``) while the runtime keeps serving. It is the default:
a function that keeps scratch state in a module global is only correct this way once one pod
runs several calls at once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from airflow_provider_knative import protocol, records
from airflow_provider_knative.functions import Function, FunctionInfo
from airflow_provider_knative.runtime import invoke, loader
from airflow_provider_knative.runtime.claims import Claimer, Leases
from airflow_provider_knative.runtime.forkserver import ForkServer

#: ``process`` is the default: an Airflow task runs in a process of its own, and so does a call
MODES = ("thread", "process")


def _nothing() -> None:
    """Thread isolation cannot stop a running call: a cancelled one is only recorded as such
    (its result is discarded when it returns)."""


def run_in_thread(limits: invoke.Limits, leases: Leases | None = None) -> invoke.Runner:
    """Calls run right here, in the server's worker thread that admitted them."""

    def run(
        fn: FunctionInfo, inv: protocol.Invocation, body: bytes | bytearray, ctx: invoke.CallContext
    ) -> invoke.Outcome:
        assert isinstance(fn, Function), "thread isolation needs the imported function"
        claimer = ctx.claimer
        if claimer is None:
            return invoke.run(fn, inv, limits, ctx=ctx)

        def begin() -> tuple[int, bytes, str] | None:
            refusal = claimer()
            if refusal is None and leases is not None:
                leases.hold(claimer.call, claimer.attempt, _nothing)
            return refusal

        try:
            return invoke.run(fn, inv, limits, begin, ctx)
        finally:
            if leases is not None and claimer.claimed:
                leases.release(claimer.call, claimer.attempt)

    return run


class ProcessRunner:
    """Calls run in a child of the fork server, one child per call.

    With records, the child claims the call itself right before the function starts (the
    server cannot: the claim must come after the arguments were fetched, in the child) and
    tells the server, which then holds the lease and can stop the child on a cancel.
    """

    def __init__(self, forks: ForkServer, limits: invoke.Limits, leases: Leases | None = None) -> None:
        self.forks = forks
        self.limits = limits
        self.leases = leases

    def __call__(
        self, fn: FunctionInfo, inv: protocol.Invocation, body: bytes | bytearray, ctx: invoke.CallContext
    ) -> invoke.Outcome:
        claimer = ctx.claimer
        payload: dict[str, Any] = {
            "body": bytes(body),
            "log_max_bytes": self.limits.log_max_bytes,
            "arrived": ctx.arrived,
            "replica": self.limits.replica,
            "live": ctx.on_text is not None,
        }
        if claimer is not None:
            payload["claim"] = claimer.to_wire()
        job = self.forks.submit("invoke", payload)
        outcome = None
        try:
            for message in job.messages():
                if message[0] == "log":
                    if ctx.on_text is not None:
                        ctx.on_text(message[1], message[2])
                elif message[0] == "began":
                    if ctx.on_begin is not None:
                        ctx.on_begin()
                elif message[0] == "claimed":
                    assert claimer is not None
                    claimer.claimed = True
                    if self.leases is not None:
                        self.leases.hold(claimer.call, claimer.attempt, lambda: job.kill(signal.SIGKILL))
                elif message[0] == "follow":
                    assert claimer is not None
                    claimer.holder = records.Claim.decode(message[1])
                else:
                    _, status, answer, error, recorded, phases = message
                    outcome = invoke.Outcome(
                        status, answer, error, phases=invoke.Phases.from_wire(phases) if phases else None
                    )
                    if claimer is not None:
                        claimer.recorded = recorded
        finally:
            if claimer is not None and claimer.claimed and self.leases is not None:
                self.leases.release(claimer.call, claimer.attempt)
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
    """The fork server's ``invoke`` job: run one call in this (fresh) process, emit its outcome.

    Emits ``["claimed"]`` when it won the call's claim, ``["follow", claim]`` when another
    replica holds it, ``["began"]`` and ``["log", text, offset]`` while the function runs, then ``["outcome", status, body, error, recorded]`` (unless it followed;
    ``recorded``: the outcome is in the call's record already).
    """
    body = payload["body"]
    limits = invoke.Limits(
        max_body_bytes=len(body),
        log_max_bytes=payload["log_max_bytes"],
        signing_secret=None,
        signature_max_age_seconds=0.0,
        replica=payload.get("replica", ""),
    )
    claimer = Claimer.from_wire(payload["claim"]) if payload.get("claim") else None

    def begin() -> tuple[int, bytes, str] | None:
        assert claimer is not None
        refusal = claimer()
        if refusal is None:
            emit(["claimed"])
        elif claimer.holder is not None:
            emit(["follow", claimer.holder.encode()])
        return refusal

    live = bool(payload.get("live"))
    ctx = invoke.CallContext(
        arrived=payload.get("arrived", 0.0),
        claimer=claimer,
        on_text=(lambda text, at: emit(["log", text, at])) if live else None,
        on_begin=(lambda: emit(["began"])) if live else None,
    )
    try:
        inv = protocol.Invocation.decode(body)
        fn = loader.current().functions[inv.function_id]
    except Exception as exc:  # the server admitted it, so this is a mismatch between the two
        outcome = invoke.error_outcome(500, "RuntimeInternalError", f"{type(exc).__name__}: {exc}")
    else:
        outcome = invoke.run(fn, inv, limits, begin if claimer is not None else None, ctx)
    if claimer is not None and claimer.holder is not None:
        return  # another replica runs it: the server follows its record
    if claimer is not None:
        # recorded here, as soon as it exists: a pod killed now still leaves the outcome behind
        outcome = replace(invoke.settle(claimer, outcome), phases=outcome.phases)
    phases = outcome.phases.to_wire() if outcome.phases is not None else None
    emit(["outcome", outcome.status, outcome.body, outcome.error, bool(claimer and claimer.recorded), phases])
