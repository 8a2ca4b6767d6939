"""The workloads this runtime runs for the KnativeExecutor, as seen from the HTTP server.

One :class:`Run` per delivery id. Its supervisor runs in a fork server child (``workload.py``);
here the server keeps what the executor needs to hear: ``accepted``, ``alive`` every few
seconds (the open request is also what keeps Knative from scaling the pod away), and ``exit``.
A second request for the same delivery joins the run instead of starting another. The run
never stops because its client went away: after a scheduler restart the task goes on, and
the new scheduler adopts it from the database.

The runtime stops a run itself in two cases, each with a reason the task log and the executor
see: shortly before the Knative request timeout (``[knative] request_timeout_seconds``), so
Airflow's retries apply instead of the request being cut; and at the end of the drain when the
pod shuts down. Stopping means SIGTERM to the supervisor, which forwards it to the task and
escalates to SIGKILL after a few seconds, as on any Airflow worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_knative import protocol, task_logs
from airflow_provider_knative.errors import KnativeError
from airflow_provider_knative.runtime.forkserver import ForkServer, Job

log = logging.getLogger("airflow_provider_knative.runtime")

#: seconds between ``alive`` events on a workload stream
ALIVE_SECONDS = 5.0
#: seconds between uploads of a running task's log (when remote logging is configured)
LOG_UPLOAD_SECONDS = 5.0
#: a run is stopped this long before the Knative request timeout, so its answer still arrives
TIMEOUT_MARGIN_SECONDS = 15.0
#: how long a finished run is remembered (a resent delivery joins it instead of starting again)
RETENTION_SECONDS = 3600.0
#: after SIGTERM, how long a stopped task may take to end before its processes are killed
TASK_KILL_GRACE_SECONDS = 5.0
#: how long a workload waits in line for a free slot before the answer is 503 ``Busy``. Knative's
#: queue-proxy queues in front of a full pod the same way; without it (direct access, the local
#: stack) a burst of tasks would bounce off a full runtime and back off for seconds while slots
#: free up. Shorter than the executor's stream read timeout, so the client is still there.
ADMISSION_WAIT_SECONDS = 20.0


@dataclass
class Run:
    """One delivery of one workload."""

    delivery: str
    job: Job
    log_relpath: str
    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    first: asyncio.Future[tuple[Any, ...]] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    finished_at: float = 0.0
    stop_reason: str = ""
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class Busy(KnativeError):
    """The runtime runs as many workloads as it may (``container_concurrency``)."""


class WorkloadRuns:
    """The runs of this runtime (see the module docstring). Lives on the event loop."""

    def __init__(self, forks: ForkServer, *, capacity: int, request_timeout: float) -> None:
        self.forks = forks
        self.capacity = capacity
        self.request_timeout = request_timeout
        self.runtime = socket.gethostname()
        self.remote_logs = task_logs.remote_folder_from_env()
        self.runs: dict[str, Run] = {}
        self._line: list[object] = []  # workloads waiting for a slot, first come first served
        self._slots_changed = asyncio.Event()

    @property
    def active(self) -> int:
        return sum(1 for run in self.runs.values() if not run.finished)

    def _full(self) -> bool:
        return bool(self.capacity) and self.active >= self.capacity

    def _slot_event(self) -> None:
        self._slots_changed.set()
        self._slots_changed = asyncio.Event()

    async def admit(
        self,
        request: protocol.WorkloadRequest,
        executor: str,
        server: str,
        wait: float = ADMISSION_WAIT_SECONDS,
    ) -> Run:
        """The run of this delivery, waiting in line up to ``wait`` seconds while every slot is
        taken; raises Busy if none frees up by then (nothing started, so the client sends it again)."""
        if request.delivery in self.runs or (not self._line and not self._full()):
            return self.start_or_join(request, executor, server)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        ticket = object()
        self._line.append(ticket)
        try:
            while (self._line[0] is not ticket or self._full()) and request.delivery not in self.runs:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Busy
                changed = self._slots_changed
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass
            return self.start_or_join(request, executor, server)
        finally:
            self._line.remove(ticket)
            self._slot_event()  # the next in line may go now

    def start_or_join(self, request: protocol.WorkloadRequest, executor: str, server: str) -> Run:
        """The run of this delivery: the one already going, or a new one. Raises Busy when full."""
        self._forget_old()
        existing = self.runs.get(request.delivery)
        if existing is not None:
            return existing
        if self.capacity and self.active >= self.capacity:
            raise Busy
        loop = asyncio.get_running_loop()
        try:
            parsed = json.loads(request.workload)
        except ValueError:
            parsed = {}
        log_relpath = str(parsed.get("log_path") or "")
        ti = parsed.get("ti") or {}
        log.info(
            "workload %s: task instance %s (%s.%s, map index %s, try %s)",
            request.delivery,
            ti.get("id"),
            ti.get("dag_id"),
            ti.get("task_id"),
            ti.get("map_index"),
            ti.get("try_number"),
        )
        job = self.forks.submit(
            "workload", {"workload": request.workload, "executor": executor, "server": server}
        )
        run = Run(delivery=request.delivery, job=job, log_relpath=log_relpath, first=loop.create_future())
        self.runs[request.delivery] = run
        threading.Thread(
            target=self._pump, args=(run, loop), name=f"knative-workload-{job.id}", daemon=True
        ).start()
        if self.request_timeout:
            after = max(1.0, self.request_timeout - TIMEOUT_MARGIN_SECONDS)
            reason = (
                f"stopped by the runtime {after:g} s after it started, shortly before the Knative request "
                f"timeout ([knative] request_timeout_seconds = {self.request_timeout:g}); Airflow's task "
                "retries apply. Raise the Service's timeout_seconds for longer tasks"
            )
            run.timers.append(loop.call_later(after, self.stop, run, reason))
        if self.remote_logs and log_relpath:
            run.timers.append(loop.call_later(LOG_UPLOAD_SECONDS, self._upload_log, run, loop))
        return run

    def _forget_old(self) -> None:
        now = time.monotonic()
        for delivery, run in list(self.runs.items()):
            if run.finished and now - run.finished_at > RETENTION_SECONDS:
                del self.runs[delivery]

    def _pump(self, run: Run, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: move the child's messages onto the event loop, in order."""
        try:
            for message in run.job.messages():
                loop.call_soon_threadsafe(self._on_message, run, message)
            loop.call_soon_threadsafe(self._on_exit, run, run.job.exit_status)
        except RuntimeError:  # the loop is closed: the server is stopping; finish() takes over
            pass

    def finish(self, timeout: float) -> bool:
        """After the server stopped: wait for stopped workloads to exit, then upload their logs
        (the event loop is gone, so this runs here). True if none was still running."""
        deadline = time.monotonic() + timeout
        outlived = [r for r in self.runs.values() if not r.finished]
        while any(r.job.exit_status is None and not r.finished for r in self.runs.values()):
            if time.monotonic() > deadline or not self.forks.alive:
                break
            time.sleep(0.1)
        if self.remote_logs:
            for run in self.runs.values():
                if run.log_relpath and not run.finished:
                    self._upload_now(run)
        return not outlived

    def _emit(self, run: Run, event: dict[str, Any]) -> None:
        run.events.append(event)
        run.changed.set()
        run.changed = asyncio.Event()

    def _on_message(self, run: Run, message: list[Any]) -> None:
        kind = message[0]
        if kind == "refused" and run.first is not None and not run.first.done():
            run.first.set_result(("refused", message[1], message[2]))
        elif kind == "accepted":
            if run.first is not None and not run.first.done():
                run.first.set_result(("accepted",))
            self._emit(
                run, {"event": protocol.EVENT_ACCEPTED, "runtime": self.runtime, "pid": message[1].get("pid")}
            )
        elif kind == "exit":
            event: dict[str, Any] = {"event": protocol.EVENT_EXIT, "code": message[1]}
            if run.stop_reason:
                event["reason"] = run.stop_reason
            self._emit(run, event)

    def _on_exit(self, run: Run, status: int | None) -> None:
        for timer in run.timers:
            timer.cancel()
        if run.first is not None and not run.first.done():
            why = "the fork server died" if status is None else f"its process ended with status {status}"
            run.first.set_result(("refused", "WorkerCrashed", f"the workload did not start: {why}"))
        elif not any(e["event"] == protocol.EVENT_EXIT for e in run.events):
            # the supervisor died without saying how the task ended: Airflow's state decides
            self._emit(
                run, {"event": protocol.EVENT_EXIT, "code": None, "reason": f"supervisor ended ({status})"}
            )
        run.finished = True
        run.finished_at = time.monotonic()
        run.changed.set()
        self._slot_event()
        if self.remote_logs and run.log_relpath:
            asyncio.get_running_loop().run_in_executor(None, self._upload_now, run)
        log.info("workload %s finished (%s)", run.delivery, run.events[-1] if run.events else status)

    def stop(self, run: Run, reason: str) -> None:
        """Ask the supervisor to stop its task (it forwards SIGTERM, then escalates)."""
        if run.finished:
            return
        run.stop_reason = reason
        log.warning("stopping workload %s: %s", run.delivery, reason)
        self._note_in_task_log(run, reason)
        # SIGTERM to the supervisor: it forwards it to the task, whose on_kill() cleans up. An
        # Airflow task does not end on SIGTERM by itself, so after a grace the task's processes
        # are killed; the supervisor then reports the try as failed and uploads its log.
        run.job.kill(signal.SIGTERM, target="leader")
        run.timers.append(
            asyncio.get_running_loop().call_later(TASK_KILL_GRACE_SECONDS, self._kill_task, run)
        )

    @staticmethod
    def _kill_task(run: Run) -> None:
        if not run.finished:
            run.job.kill(signal.SIGKILL, target="others")

    def _note_in_task_log(self, run: Run, reason: str) -> None:
        """Say why in the task's own log, where its author looks (the supervisor appends too)."""
        if not run.log_relpath:
            return
        line = {
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "level": "error",
            "event": f"Knative runtime {self.runtime}: {reason}",
            "logger": "airflow_provider_knative.runtime",
        }
        try:
            with open(task_logs.local_log_folder() / run.log_relpath, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        except OSError as exc:
            log.warning("could not note the stop in the task log of %s: %s", run.delivery, exc)

    def stop_all(self, reason: str) -> None:
        for run in list(self.runs.values()):
            self.stop(run, reason)

    async def events(self, run: Run) -> AsyncIterator[dict[str, Any]]:
        """The run's events from the start, then as they come, with ``alive`` in between."""
        sent = 0
        while True:
            while sent < len(run.events):
                yield run.events[sent]
                sent += 1
            if run.finished:
                return
            waiting = run.changed
            try:
                await asyncio.wait_for(waiting.wait(), ALIVE_SECONDS)
            except TimeoutError:
                yield {"event": protocol.EVENT_ALIVE}

    # ------------------------------------------------------------------ live task logs

    def _upload_log(self, run: Run, loop: asyncio.AbstractEventLoop) -> None:
        if run.finished:
            return
        loop.run_in_executor(None, self._upload_now, run)
        run.timers.append(loop.call_later(LOG_UPLOAD_SECONDS, self._upload_log, run, loop))

    def _upload_now(self, run: Run) -> None:
        assert self.remote_logs is not None
        local = task_logs.local_log_folder() / run.log_relpath
        if not local.is_file():
            return
        try:
            task_logs.upload_file(self.remote_logs, Path(local), run.log_relpath)
        except Exception as exc:  # the next upload tries again; the supervisor uploads at the end
            log.warning("could not upload the live log of workload %s: %s", run.delivery, exc)
