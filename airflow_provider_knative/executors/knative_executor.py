"""``KnativeExecutor``: unmodified Airflow tasks (any operator) run in pre-deployed Knative Services.

Each task is one HTTP request to a warm, autoscaled Knative Service: the scheduler's
``ExecuteTask`` workload goes in the request; the runtime runs it under the task SDK's own
supervisor, exactly as Airflow's workers do, and keeps the response open as a stream of
events (``accepted``, ``alive``, ``exit``). One open request per running task is also the
signal Knative's autoscaler counts. The pod needs no database credentials: the task talks to
the api-server's Execution API with the workload's short-lived token.

What the executor trusts: the task's state in Airflow's database. An ``exit`` is reported as
"the process finished" (as LocalExecutor does) and the scheduler compares it with the state the
supervisor wrote. Only what prevents a task from starting is reported as a failure at once: a
service that never came up within the startup deadline, or a refusal retrying cannot fix (a
DAG file missing from the image, an unknown bundle, a bad signature, another protocol
version); the reason, naming the service, goes to the scheduler's log, the event log and the
task's log.

Delivery: every workload is sent with the delivery id the scheduler pre-assigns to each
QUEUED transition (``pre_assigns_external_executor_id``). Sending it again is safe: the runtime
joins a delivery it already runs, and Airflow's ``ti_run`` refuses a task instance that is no
longer QUEUED, so a task body never runs twice. Task instance keys are reused by reschedules
and clears; events of a superseded delivery are ignored.

A stream that breaks after ``accepted`` (runtime or scheduler restarted) leaves the key
"detached": it is reconciled from the database every few seconds, and failed (so Airflow
retries it) once its heartbeat is older than ``[knative] executor_heartbeat_grace_seconds``,
much sooner than the scheduler's own 300 s heartbeat timeout. After a scheduler restart, tasks
still running are adopted the same way.

Configure it alone (``[core] executor = airflow_provider_knative.executors.KnativeExecutor``)
or beside others (``LocalExecutor,knative:airflow_provider_knative.executors.KnativeExecutor``;
tasks opt in with ``executor="knative"``). A task goes to the Service named by
``executor_config={"knative": {"service": ...}}``, else by its queue in ``[knative]
executor_queue_services``, else ``[knative] executor_default_service``; the URL resolves exactly
as ``@task.knative``'s does.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.executors.base_executor import BaseExecutor

from airflow_provider_knative import airflow_compat, config, protocol
from airflow_provider_knative.errors import InvocationError, KnativeError
from airflow_provider_knative.executors import routing, skew, stats, task_log
from airflow_provider_knative.invoker import Request, Timeouts, read_result

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancekey import TaskInstanceKey

#: prefix of the external executor id the executor records for its tasks: "knative|<delivery>|<service>"
EXTERNAL_ID_PREFIX = "knative|"
#: how often detached tasks are reconciled with the database
RECONCILE_SECONDS = 5.0
#: how long a stream may stay silent: the runtime sends ``alive`` every 5 s
STREAM_READ_TIMEOUT_SECONDS = 30.0
#: the events after which a workload stream has nothing more to say
_FINAL_EVENTS = frozenset({protocol.EVENT_EXIT, protocol.EVENT_ELSEWHERE, protocol.EVENT_REFUSED})


async def _events(lines: Any) -> Any:
    """The workload events of an event stream (one JSON object per line)."""
    async for line in lines:
        if line.strip():
            yield json.loads(line)


def httpx_errors() -> type[Exception]:
    """The transport errors of a stream that breaks while it is read."""
    import httpx

    return httpx.TransportError


@dataclass
class _Event:
    kind: str  # accepted | exit | refused | lost
    key: TaskInstanceKey
    delivery: str
    info: str = ""


class KnativeExecutor(BaseExecutor):
    """Run Airflow tasks in Knative Services (see the module docstring)."""

    is_local = False
    is_production = True
    serve_logs = False
    pre_assigns_external_executor_id = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Cheap on purpose: the api-server builds an executor only to call get_task_log.
        super().__init__(*args, **kwargs)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._in_flight: dict[TaskInstanceKey, Future[None]] = {}
        self._deliveries: dict[TaskInstanceKey, str] = {}
        self._log_paths: dict[TaskInstanceKey, str] = {}
        self._detached: dict[TaskInstanceKey, tuple[float, str]] = {}
        self._last_reconcile = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        airflow_compat.require("KnativeExecutor")  # refuses on Airflow 3.0, naming the version needed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="knative-executor-io", daemon=True
        )
        self._thread.start()
        self.log.info("KnativeExecutor started (default service %r)", config.get("executor_default_service"))

    def end(self) -> None:
        """Stop sending; tasks keep running remotely and the next scheduler adopts them."""
        self.sync()
        if self._loop is not None:
            for future in list(self._in_flight.values()):
                future.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)

    def terminate(self) -> None:
        self.end()

    # ------------------------------------------------------------------ sending

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        from airflow.executors import workloads as airflow_workloads

        for workload in workloads:
            if not isinstance(workload, airflow_workloads.ExecuteTask):
                raise KnativeError(
                    f"KnativeExecutor runs task workloads only, not {type(workload).__name__}; route "
                    "callbacks and connection tests to another executor"
                )
            key = workload.ti.key
            self.queued_tasks.pop(key, None)
            # BaseExecutor does not mark it running in 3.3: without this, parallelism and
            # has_task() would not see the task
            self.running.add(key)
            delivery = airflow_compat.workload_delivery_id(workload) or str(uuid.uuid4())
            self._deliveries[key] = delivery
            self._log_paths[key] = str(workload.log_path or "")
            self._detached.pop(key, None)
            assert self._loop is not None, "start() was not called"
            self._in_flight[key] = asyncio.run_coroutine_threadsafe(
                self._deliver(key, workload, delivery), self._loop
            )

    async def _deliver(self, key: TaskInstanceKey, workload: Any, delivery: str) -> None:
        """I/O thread: send one workload and follow its stream until it exits or breaks."""
        from airflow.configuration import conf

        from airflow_provider_knative.hooks import KnativeHook

        def put(kind: str, info: str = "") -> None:
            self._events.put(_Event(kind, key, delivery, info))
            stats.count(kind, target.service)

        target = routing.route(workload.ti)
        hook = KnativeHook(target.conn_id)
        accepted = False
        stats.count("sent", target.service)
        try:
            base = await asyncio.to_thread(hook.resolve_url, target.service, target.namespace)
            url = base + protocol.WORKLOADS_PATH
            body = protocol.WorkloadRequest(
                delivery=delivery,
                workload=workload.model_dump_json(),
                executor=conf.get("core", "executor"),
                server=conf.get("core", "execution_api_server_url", fallback="") or "",
            ).encode()
            settings = await hook.asettings()
            await asyncio.to_thread(skew.check_runtime, hook, base, key)  # named in the logs, once per URL
            timeouts = Timeouts(
                settings.timeouts.connect, STREAM_READ_TIMEOUT_SECONDS, settings.timeouts.startup_deadline
            )
            # What provably did not start is sent again (connection refused, 503 not started, an
            # attempt the record declared void); a delivery that may have started is asked about
            # (GET /workloads/<delivery>), which any replica answers from its record.
            request = Request(url, body, invocation_id=delivery)
            try:
                async with hook.astream(request, timeouts) as (head, lines):
                    if head.status != 200:
                        put("refused", _refusal(head, url, target.service))
                        return
                    async for event in _events(lines):
                        accepted = self._event(event, put, delivery, target.service) or accepted
                        if event.get("event") in _FINAL_EVENTS:
                            return
            except (InvocationError, httpx_errors()) as exc:
                if not accepted:
                    raise
                lost = f"{type(exc).__name__}: {exc}"
            else:
                lost = "the workload stream ended without an exit event"
            # the stream broke after the task started: ask the delivery's record where it stands
            status = Request(request.status_request(0.0).url, b"", method="GET")
            async with hook.astream(status, timeouts, idempotent=True) as (head, lines):
                if head.status == 200:
                    async for event in _events(lines):
                        self._event(event, put, delivery, target.service)
                        if event.get("event") in _FINAL_EVENTS:
                            return
            put("lost", lost)
        except asyncio.CancelledError:
            raise
        except InvocationError as exc:
            if accepted:
                put("lost", str(exc))
            else:
                put("refused", f"Knative Service {target.service!r}: {exc}")
        except KnativeError as exc:  # no URL for the service, bad configuration
            put("refused", f"Knative Service {target.service!r}: {exc}")
        except Exception as exc:  # the stream broke: the task may be running; the database decides
            put("lost", f"{type(exc).__name__}: {exc}")
        finally:
            stats.count("retried", target.service, hook.retries)

    @staticmethod
    def _event(event: dict[str, Any], put: Any, delivery: str, service: str) -> bool:
        """Report one workload event to the scheduler's side; True once the task was accepted."""
        kind = event.get("event")
        if kind == protocol.EVENT_ACCEPTED:
            put("accepted", f"{EXTERNAL_ID_PREFIX}{delivery}|{service}|{event.get('runtime')}")
            return True
        if kind == protocol.EVENT_EXIT:
            put("exit", f"code {event.get('code')}" + (f": {event['reason']}" if event.get("reason") else ""))
        elif kind == protocol.EVENT_ELSEWHERE:
            put("elsewhere", f"{event.get('reason') or 'runs elsewhere'} (pod {event.get('runtime')})")
        elif kind == protocol.EVENT_REFUSED:
            put(
                "refused",
                f"Knative Service {service!r} refused the task: {event.get('type')}: {event.get('message')}",
            )
        return False

    # ------------------------------------------------------------------ back to the scheduler

    def sync(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            key = event.key
            if self._deliveries.get(key) != event.delivery:
                continue  # a superseded delivery of a reused key: reporting it would fail the new one
            if event.kind == "accepted":
                self.running_state(key, event.info)
                continue
            if event.kind == "elsewhere":
                # another replica (or another delivery's supervisor) runs the task: never report
                # it finished; follow it in the database like a task whose stream was lost
                self.log.info("%s runs elsewhere (%s); following it in the database", key, event.info)
                self._in_flight.pop(key, None)
                self._detached[key] = (time.monotonic(), event.info)
                continue
            self._in_flight.pop(key, None)
            self._deliveries.pop(key, None)
            log_path = self._log_paths.pop(key, "")
            if event.kind == "exit":
                self.success(key, info=f"Knative: the task process finished ({event.info})")
            elif event.kind == "refused":
                self.log.error("Knative could not start %s: %s", key, event.info)
                task_log.record_refusal(key, log_path, event.info)
                self.fail(key, info=event.info)
            elif event.kind == "lost":
                self.log.warning("lost the stream of %s (%s); following it in the database", key, event.info)
                self._detached[key] = (time.monotonic(), event.info)
        if self._detached and time.monotonic() - self._last_reconcile > RECONCILE_SECONDS:
            self._last_reconcile = time.monotonic()
            self._reconcile()

    def _reconcile(self) -> None:
        """Detached and adopted tasks: finished ones free their slot, silent ones are failed."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.sdk import timezone
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        grace = timedelta(seconds=config.get("executor_heartbeat_grace_seconds"))
        startup = config.get("startup_deadline_seconds")
        now = timezone.utcnow()
        alive = (TaskInstanceState.QUEUED, TaskInstanceState.RUNNING, TaskInstanceState.RESTARTING)
        with create_session() as session:
            for key, (since, why) in list(self._detached.items()):
                row = session.execute(
                    select(TaskInstance.state, TaskInstance.try_number, TaskInstance.last_heartbeat_at).where(
                        TaskInstance.dag_id == key.dag_id,
                        TaskInstance.task_id == key.task_id,
                        TaskInstance.run_id == key.run_id,
                        TaskInstance.map_index == key.map_index,
                    )
                ).one_or_none()
                if row is None or row.try_number != key.try_number or row.state not in alive:
                    del self._detached[key]
                    self.running.discard(key)  # finished, or moved on: the scheduler knows
                    continue
                if row.state == TaskInstanceState.QUEUED:
                    if time.monotonic() - since > startup:
                        del self._detached[key]
                        self.fail(key, info=f"Knative: the task never started after its stream broke ({why})")
                    continue
                beat = row.last_heartbeat_at
                if beat is None or now - beat > grace:
                    del self._detached[key]
                    message = (
                        f"Knative: lost the task ({why}) and it has not heartbeated for over "
                        f"{grace.total_seconds():g} s ([knative] executor_heartbeat_grace_seconds): the pod "
                        "is gone; Airflow's retries apply"
                    )
                    task_log.record_event(key, "knative task lost", message)
                    self.fail(key, info=message)

    # ------------------------------------------------------------------ the scheduler's safety nets

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """After a scheduler restart: running tasks (and queued ones we sent) are followed in
        the database; the others are handed back to the scheduler to be queued again."""
        from airflow.utils.state import TaskInstanceState

        refused = []
        for ti in tis:
            ours = (ti.external_executor_id or "").startswith(EXTERNAL_ID_PREFIX)
            if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.RESTARTING) or ours:
                self.running.add(ti.key)
                self._detached[ti.key] = (time.monotonic(), "adopted after a scheduler restart")
                stats.count("adopted", _service_of(ti.external_executor_id or ""))
            else:
                refused.append(ti)
        return refused

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """The scheduler gave up on a task stuck in QUEUED: stop sending it. If a runtime still
        starts it later, ``ti_run`` refuses it unless the task was queued again."""
        future = self._in_flight.pop(ti.key, None)
        if future is not None:
            future.cancel()
        self.running.discard(ti.key)
        self.queued_tasks.pop(ti.key, None)
        self._detached.pop(ti.key, None)
        self._deliveries.pop(ti.key, None)

    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """Called by the api-server while the task runs. The pod is not addressable, so the live
        log comes through remote logging; this only says where it comes from."""
        external = ti.external_executor_id or ""
        if not external.startswith(EXTERNAL_ID_PREFIX):
            return [], []
        service, runtime = _service_of(external), [*external.split("|"), "", "", ""][3]
        return [
            f"running in Knative Service {service!r} (pod {runtime}); the log above is uploaded every few "
            "seconds through remote logging ([logging] remote_base_log_folder)"
        ], []


def _service_of(external_executor_id: str) -> str:
    """The Service named in an external executor id this executor recorded ("" for another's)."""
    if not external_executor_id.startswith(EXTERNAL_ID_PREFIX):
        return ""
    return [*external_executor_id.split("|"), "", ""][2]


def _refusal(head: Any, url: str, service: str) -> str:
    """The runtime's refusal, as one sentence naming the service and the reason."""
    try:
        read_result(head, url)
    except KnativeError as exc:
        return f"Knative Service {service!r} refused the task: {exc}"
    return f"Knative Service {service!r} answered HTTP {head.status} instead of a workload stream"
