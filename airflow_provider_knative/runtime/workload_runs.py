"""The workloads this runtime runs for the KnativeExecutor, as seen from the HTTP server.

One :class:`Run` per delivery id. Its supervisor runs in a fork server child (``workload.py``);
here the server keeps what the executor needs to hear: ``accepted``, ``alive`` every few
seconds (the open request is also what keeps Knative from scaling the pod away), and ``exit``.
A second request for the same delivery joins the run instead of starting another. The run
never stops because its client went away: after a scheduler restart the task goes on, and
the new scheduler adopts it from the database.

With a store, every delivery has a record (``records.py``): a replica starts a supervisor only
after its create-only claim of the delivery won. A replica that loses answers from the record
instead: "elsewhere" (another pod runs it; the executor follows the task in Airflow's database)
or the recorded end of it. A supervisor that loses Airflow's own ``ti_run`` race (another
delivery of the same try started first) ends with "elsewhere" too, never with "exit": the
executor must not report a task as finished that another supervisor runs.

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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_knative import protocol, records, task_logs
from airflow_provider_knative.errors import KnativeError, StoreError
from airflow_provider_knative.runtime.claims import FOLLOW, Claimer, Leases
from airflow_provider_knative.runtime.forkserver import ForkServer, Job

log = logging.getLogger("airflow_provider_knative.runtime")

#: seconds between ``alive`` events on a workload stream
ALIVE_SECONDS = 5.0
#: seconds between uploads of a running task's log (when remote logging is configured): the UI
#: shows a task's lines within about this long, as it does for a local worker's
LOG_UPLOAD_SECONDS = 1.5
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
#: what the record says of a task whose pod stopped (SIGTERM) before its supervisor ended
DRAIN_STOPPED = (
    "the pod running it shut down (SIGTERM: scale-down or a new revision) before its supervisor "
    "ended; Airflow's state of the task decides"
)


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
    #: the claim this run holds in the record (None without a store)
    claim: Claimer | None = None
    recorded: bool = False


class Busy(KnativeError):
    """The runtime runs as many workloads as it may (``container_concurrency``)."""


class Refused(KnativeError):
    """The delivery's record refuses it: ``answer`` is the HTTP answer (status, Result, error)."""

    def __init__(self, answer: tuple[int, bytes, str]) -> None:
        super().__init__(answer[2])
        self.answer = answer


class Elsewhere(KnativeError):
    """Another replica holds the delivery's claim: ``events`` is what the record says of it."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__("delivered elsewhere")
        self.events = events


def record_events(state: records.State, delivery: str) -> list[dict[str, Any]]:
    """What a delivery's record says, as workload events: its recorded end, or "elsewhere"."""
    if isinstance(state, records.Finished) and state.how == "returned":
        return [json.loads(line) for line in state.body.splitlines() if line.strip()]
    if isinstance(state, records.Finished):  # abandoned: its pod is gone; Airflow's state decides
        return [{"event": protocol.EVENT_ELSEWHERE, "runtime": state.owner, "reason": state.error}]
    if isinstance(state, records.Running):
        return [
            {
                "event": protocol.EVENT_ELSEWHERE,
                "runtime": state.claim.owner,
                "reason": f"delivery {delivery} runs on pod {state.claim.owner}",
            }
        ]
    return []


class WorkloadRuns:
    """The runs of this runtime (see the module docstring). Lives on the event loop."""

    def __init__(
        self,
        forks: ForkServer,
        *,
        capacity: int,
        request_timeout: float,
        records_: records.Records | None = None,
    ) -> None:
        self.forks = forks
        self.capacity = capacity
        self.request_timeout = request_timeout
        self.records = records_
        self.leases = Leases(records_, lambda *_: None) if records_ is not None else None
        self.runtime = records_.owner if records_ is not None else socket.gethostname()
        self.remote_logs = task_logs.remote_folder_from_env()
        self.runs: dict[str, Run] = {}
        self._line: list[object] = []  # workloads waiting for a slot, first come first served
        self._slots_changed = asyncio.Event()
        self._claiming: dict[str, asyncio.Future[None]] = {}
        #: told when a run this replica started has ended (the runtime's metrics)
        self.on_ended: Callable[[Run], None] | None = None
        self._reserved = 0  # slots held for deliveries whose claim is being written

    @property
    def active(self) -> int:
        return sum(1 for run in self.runs.values() if not run.finished)

    def _full(self) -> bool:
        # a slot being claimed is taken: its run starts the moment its claim is won
        return bool(self.capacity) and self.active + self._reserved >= self.capacity

    def _slot_event(self) -> None:
        self._slots_changed.set()
        self._slots_changed = asyncio.Event()

    async def admit(
        self,
        request: protocol.WorkloadRequest,
        executor: str,
        server: str,
        wait: float = ADMISSION_WAIT_SECONDS,
        claim: Claimer | None = None,
    ) -> Run:
        """The run of this delivery, waiting in line up to ``wait`` seconds while every slot is
        taken; raises Busy if none frees up by then (nothing started, so the client sends it again).

        With ``claim`` (a store keeps records), the delivery starts only if the claim is won:
        raises Elsewhere when another replica holds it, Refused when the record refuses it."""
        if request.delivery in self.runs or (not self._line and not self._full()):
            return await self._claimed(request, executor, server, claim)
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
            return await self._claimed(request, executor, server, claim)
        finally:
            self._line.remove(ticket)
            self._slot_event()  # the next in line may go now

    async def _claimed(
        self, request: protocol.WorkloadRequest, executor: str, server: str, claim: Claimer | None
    ) -> Run:
        """Start (or join) the run once its claim is won; see :meth:`admit`."""
        existing = self.runs.get(request.delivery)
        if existing is not None or claim is None:
            return self.start_or_join(request, executor, server)
        pending = self._claiming.get(request.delivery)
        if pending is not None:  # the same delivery arrived here twice at once: one claim
            await asyncio.shield(pending)
            return await self._claimed(request, executor, server, None)
        self._claiming[request.delivery] = asyncio.get_running_loop().create_future()
        self._reserved += 1  # the slot stays this delivery's while its claim is written
        try:
            answer = await asyncio.to_thread(claim)
        finally:
            self._reserved -= 1
            self._claiming.pop(request.delivery).set_result(None)
        if answer is FOLLOW:
            assert self.records is not None
            try:
                state = await asyncio.to_thread(self.records.state, claim.call, claim.attempt, void=False)
            except StoreError as exc:
                raise Refused(records.unreadable(claim.call, self.records.where, exc)) from None
            raise Elsewhere(record_events(state, request.delivery))
        if answer is not None:
            raise Refused(answer)
        # no await since the reservation was given back: the slot is still free for this run
        run = self.start_or_join(request, executor, server)
        run.claim = claim
        if self.leases is not None:
            loop = asyncio.get_running_loop()

            def cancel() -> None:
                loop.call_soon_threadsafe(self.stop, run, "a cancel was requested")

            self.leases.hold(claim.call, claim.attempt, cancel)
        return run

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
        # every delivery this replica owns ends with a record before the process exits
        for run in self.runs.values():
            self._record(run, "" if run.finished else DRAIN_STOPPED)
        if self.leases is not None:
            self.leases.close()
        return not outlived

    def _emit(self, run: Run, event: dict[str, Any]) -> None:
        run.events.append(event)
        run.changed.set()
        run.changed = asyncio.Event()

    def _record(self, run: Run, stopped: str) -> None:
        """Write how the run ended into its record (once): its events, or with ``stopped``, that
        the pod stopped before it ended. Runs in a thread (store I/O)."""
        claim = run.claim
        if claim is None or run.recorded or self.records is None:
            return
        run.recorded = True
        events = list(run.events)
        if stopped:
            events.append({"event": protocol.EVENT_ELSEWHERE, "runtime": self.runtime, "reason": stopped})
        body = b"".join(json.dumps(e).encode() + b"\n" for e in events if e["event"] != protocol.EVENT_ALIVE)
        try:
            self.records.finish(claim.call, self.records.finished(claim.call, claim.attempt, 200, body))
        except StoreError as exc:  # readers will find the lease expired: "elsewhere", the DB decides
            log.error("could not record how workload %s ended: %s", run.delivery, exc)
        finally:
            if self.leases is not None:
                self.leases.release(claim.call, claim.attempt)

    def _on_message(self, run: Run, message: list[Any]) -> None:
        kind = message[0]
        if kind == "refused" and run.first is not None and not run.first.done():
            run.first.set_result(("refused", message[1], message[2]))
            # kept for the record (the answer itself is a 422): a resent delivery learns why
            run.events.append({"event": protocol.EVENT_REFUSED, "type": message[1], "message": message[2]})
        elif kind == "superseded":
            # Airflow's ti_run refused this supervisor: another delivery of the try runs the task.
            # Never "exit": the executor would report a task as finished that runs fine elsewhere
            if run.first is not None and not run.first.done():
                run.first.set_result(("accepted",))
            self._emit(
                run, {"event": protocol.EVENT_ELSEWHERE, "runtime": self.runtime, "reason": message[1]}
            )
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
        elif not any(e["event"] in (protocol.EVENT_EXIT, protocol.EVENT_ELSEWHERE) for e in run.events):
            # the supervisor died without saying how the task ended: Airflow's state decides
            self._emit(
                run, {"event": protocol.EVENT_EXIT, "code": None, "reason": f"supervisor ended ({status})"}
            )
        run.finished = True
        run.finished_at = time.monotonic()
        run.changed.set()
        self._slot_event()
        if self.on_ended is not None:
            self.on_ended(run)
        if run.claim is not None:
            asyncio.get_running_loop().run_in_executor(None, self._record, run, "")
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
