"""The runtime's ASGI application: the routes, admission, and waiting for outcomes.

Routes: ``POST /invoke[?attempt=N]``, ``GET /invocations/<id>``, ``DELETE /invocations/<id>``,
``POST /workloads``, ``GET /workloads/<delivery>``, ``GET /healthz``, ``GET /readyz``,
``GET /functions``, ``GET /metrics`` (Prometheus; ``metrics.py``). A plain ASGI callable rather than a framework router: the hot path
(``/invoke``) must stay close to a bare uvicorn app per request.

The event loop only admits and moves bytes; the work happens in :func:`invoke.handle` on a
worker thread pool of ``[knative] container_concurrency`` threads (calls beyond it queue), so
health probes are answered while CPU-bound functions run. Admission, before any body byte
is buffered: readiness, ``Content-Type`` (415: a browser's "simple request" cannot reach a
function), the signature headers and their time window when a secret is set (401), the
declared size (413) and a budget for bodies being read at once (503 ``Busy``, which clients
retry: nothing started).

With a store, every call has a record there (``records.py``; see ``claims.py``): any replica
answers ``GET /invocations/<id>`` from it, a duplicate of a call another replica runs waits for
that record, and a cancel reaches the owner through it. Without one, this process's ledger is
the record, and the guarantees hold for one replica only.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from airflow_provider_knative import protocol, records
from airflow_provider_knative.errors import SignatureError, StoreError
from airflow_provider_knative.functions import FunctionInfo
from airflow_provider_knative.runtime import invoke, streams
from airflow_provider_knative.runtime.claims import Claimer, Leases, request_digest
from airflow_provider_knative.runtime.ledger import Ledger
from airflow_provider_knative.runtime.livelog import LiveLog, LiveLogs
from airflow_provider_knative.runtime.loader import ImportFailure
from airflow_provider_knative.runtime.workers import Workers
from airflow_provider_knative.runtime.workload_runs import (
    ADMISSION_WAIT_SECONDS,
    Busy,
    Elsewhere,
    Refused,
    WorkloadRuns,
    record_events,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MSGPACK = protocol.CONTENT_TYPE.encode()
_JSON = b"application/json"
#: the drain ends this long before the process must exit, so late calls still get an answer
DRAIN_MARGIN_SECONDS = 1.0
#: workloads are stopped this long before the drain ends: the supervisor forwards SIGTERM,
#: escalates to SIGKILL after 5 s, and uploads the task's log
WORKLOAD_STOP_SECONDS = 10.0
DRAIN_TIMEOUT_MESSAGE = (
    "the runtime was shutting down (SIGTERM: scale-down or a new revision) and this call did not "
    "finish within [knative] drain_timeout_seconds; it was abandoned and may have partly run. "
    "Airflow's task retries apply"
)
DRAIN_STOP_REASON = (
    "the pod is shutting down (SIGTERM: scale-down or a new revision) and the task did not finish "
    "within [knative] drain_timeout_seconds; Airflow's task retries apply"
)
#: how often a waiting duplicate or status request looks at the ledger
_LEDGER_POLL_SECONDS = 0.05
#: how often (at first, then less often) a request waiting for another replica's call reads its record
_RECORD_POLL_SECONDS = 0.1
_RECORD_POLL_MAX_SECONDS = 1.0
#: the longest a status request may ask the runtime to wait for an outcome
MAX_STATUS_WAIT_SECONDS = 300.0


@dataclass
class RuntimeState:
    """What the routes report; written by the loader thread and the signal handler."""

    functions: dict[str, FunctionInfo] = field(default_factory=dict)
    failures: list[ImportFailure] = field(default_factory=list)
    loaded: bool = False
    draining: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.loaded and not self.failures and not self.draining


def _header_text(message: str) -> bytes:
    """A one-line, latin-1 safe copy of an error message for the X-Knative-Error header."""
    line = " ".join(message.split())[:1000]
    return line.encode("ascii", "replace")


def import_failure_message(failures: list[ImportFailure]) -> str:
    """What a caller is told when the runtime's DAG folder did not import: files and errors."""
    listed = "; ".join(f"{f.path}: {f.error}" for f in failures[:5])
    more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    return (
        f"the runtime's DAG folder failed to import, so no function can run: {listed}{more}. Fix the "
        "DAG files and rebuild/redeploy the image (GET /readyz on the pod shows the same)"
    )


class RuntimeApp:
    """ASGI app. ``pool`` runs invocations; ``state`` is shared with the loader."""

    def __init__(
        self,
        state: RuntimeState,
        limits: invoke.Limits,
        pool: Workers,
        run: invoke.Runner,
        *,
        body_budget_bytes: int | None = None,
        on_expire: Callable[[], None] | None = None,
        records_: records.Records | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.state = state
        self.limits = limits
        self.pool = pool
        self.run = run
        self.on_expire = on_expire
        self.guard = protocol.ReplayGuard(limits.signature_max_age_seconds) if limits.signing_secret else None
        self.ledger: Ledger[invoke.Outcome] = Ledger(size_of=lambda o: len(o.body))
        #: the record of every call in the store (None: this process's ledger is the only record)
        self.records = records_
        self.leases = leases
        #: the output of the calls running here, for the clients that follow it live
        self.live_logs = LiveLogs()
        self.in_flight = 0
        self.body_budget = body_budget_bytes or limits.max_body_bytes * 2
        self.buffering = 0  # bytes of bodies being read right now
        self._lock = threading.Lock()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._expired = False
        self.outlived = 0
        #: the workloads of the KnativeExecutor, when this runtime accepts them
        self.workloads: WorkloadRuns | None = None
        #: told of every answered call, in its worker thread (metrics, spans: see ``observability``)
        self.observe: Callable[[Mapping[str, str], invoke.CallContext, invoke.Outcome], None] | None = None
        #: ``GET /metrics``: the Prometheus exposition and its content type (None: no metrics)
        self.metrics: Callable[[], tuple[bytes, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == protocol.INVOKE_PATH:
            if method != "POST":
                await self._json(send, 405, {"error": "use POST /invoke with a msgpack invocation"})
                return
            await self._invoke(scope, receive, send)
        elif path.startswith(protocol.INVOCATIONS_PATH) and method in ("GET", "DELETE"):
            await self._status(scope, send)
        elif path == protocol.WORKLOADS_PATH and method == "POST":
            await self._workload(scope, receive, send)
        elif path.startswith(protocol.WORKLOADS_PATH + "/") and method == "GET":
            await self._workload_status(scope, send)
        elif path == "/healthz":
            await self._json(send, 200, {"status": "ok", "in_flight": self.in_flight})
        elif path == "/readyz":
            await self._readyz(send)
        elif path == "/metrics" and self.metrics is not None:
            await self._plain(send, 200, *self.metrics())
        elif path == "/functions":
            await self._json(
                send,
                200,
                {
                    "functions": [
                        {
                            "id": f.function_id,
                            "source_hash": f.source_hash,
                            "dag_id": f.dag_id,
                            "task_id": f.task_id,
                        }
                        for f in self.state.functions.values()
                    ]
                },
            )
        else:
            await self._json(
                send,
                404,
                {"error": f"no route {path}; try /invoke, /invocations/<id>, /healthz, /readyz, /functions"},
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _readyz(self, send: Send) -> None:
        state = self.state
        if state.ready:
            await self._json(send, 200, {"status": "ready", "functions": len(state.functions)})
            return
        if state.draining:
            reason = "shutting down"
        elif state.failures:
            reason = "DAG folder failed to import"
        else:
            reason = "importing the DAG folder"
        body: dict[str, Any] = {"status": "not ready", "reason": reason}
        if state.failures:
            body["import_errors"] = [{"file": f.path, "error": f.error} for f in state.failures]
        await self._json(send, 503, body)

    # ------------------------------------------------------------------ POST /invoke

    def _refusal(self, headers: dict[str, str]) -> invoke.Outcome | None:
        """Why this request is refused before its body is read, or None to read it."""
        state = self.state
        if state.failures:
            return invoke.error_outcome(500, "DagImportError", import_failure_message(state.failures))
        if state.draining:
            return invoke.error_outcome(
                503, "ShuttingDown", "the runtime is shutting down; retry on another pod"
            )
        if not state.loaded:
            return invoke.error_outcome(503, "NotReady", "the runtime is still importing its DAG folder")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != protocol.CONTENT_TYPE:
            return invoke.error_outcome(
                415,
                "UnsupportedMediaType",
                f"POST {protocol.INVOKE_PATH} takes Content-Type {protocol.CONTENT_TYPE} (an encoded "
                f"protocol.Invocation), got {media or 'none'!r}",
            )
        if self.limits.signing_secret is not None:
            try:
                protocol.check_fresh(headers, max_age_seconds=self.limits.signature_max_age_seconds)
            except SignatureError as exc:
                return invoke.error_outcome(401, "SignatureError", str(exc))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return _too_large(int(declared), self.limits.max_body_bytes)
        return None

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self.buffering and self.buffering + size > self.body_budget:
                return False
            self.buffering += size
            return True

    def _release(self, size: int) -> None:
        with self._lock:
            self.buffering -= size

    async def _admit(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[bytearray, dict[str, str]] | None:
        """The body and headers of a request that passed admission; None once refused (answered)."""
        headers = _headers(scope)
        refusal = self._refusal(headers)
        if refusal is not None:
            await self._respond(send, refusal)
            return None
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length")
        reserved = int(declared) if declared is not None and declared.isdigit() else limit
        if not self._reserve(reserved):
            await self._respond(
                send,
                invoke.error_outcome(
                    503, "Busy", "this runtime is reading as many request bodies as it may hold; retry"
                ),
            )
            return None
        try:
            body = await self._read_body(receive, limit)
        finally:
            self._release(reserved)
        if body is None:
            return None
        if isinstance(body, invoke.Outcome):
            await self._respond(send, body)
            return None
        return body, headers

    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            attempt = _attempt(scope)
        except ValueError as exc:
            await self._respond(send, invoke.error_outcome(400, "ProtocolError", str(exc)))
            return
        admitted = await self._admit(scope, receive, send)
        if admitted is None:
            return
        body, headers = admitted
        live = LiveLog(asyncio.get_running_loop())
        run = asyncio.ensure_future(self._execute(body, headers, attempt, _signed_path(scope), live))
        if not streams.accepts_frames(headers):
            await self._respond(send, await self._resolved(run))
            return
        # a client that shows the output as it happens: frames once the function running here
        # prints (or has run a while); a duplicate follows the run it joined; a call that ends
        # silently before that, or is refused, is answered as usual
        await asyncio.wait({run}, timeout=streams.QUICK_SECONDS)  # most calls end here: no cost
        if not run.done():
            worth = asyncio.ensure_future(live.worth_streaming(streams.QUIET_SECONDS))
            await asyncio.wait({run, worth}, return_when=asyncio.FIRST_COMPLETED)
            worth.cancel()
        if not run.done():
            await streams.follow_live(send, live, self._answer(self._resolved(run)))
            return
        outcome = run.result()
        if outcome.pending is not None:
            joined = self.live_logs.get(invoke.ledger_key(*outcome.pending.request[1:]))
            if joined is not None:
                await streams.follow_live(send, joined, self._answer(self._wait_entry(outcome.pending, None)))
                return
        if outcome.follow is not None and self.records is not None:
            await streams.follow_record(send, self.records, *outcome.follow)
            return
        await self._respond(send, await self._resolved(run))

    async def _answer(self, outcome: Awaitable[invoke.Outcome]) -> streams.Answer:
        final = await outcome
        if final.follow is not None:
            final = await self._follow(*final.follow, deadline=None)
        return final.status, final.body, final.error

    # ------------------------------------------------------------------ POST /workloads

    async def _workload(self, scope: Scope, receive: Receive, send: Send) -> None:
        runs = self.workloads
        if runs is None:
            await self._respond(
                send,
                invoke.error_outcome(
                    404,
                    "WorkloadsDisabled",
                    "this runtime does not run Airflow task workloads: start it with [knative] workloads = true "
                    "(airflow-knative manifests sets it on the KnativeExecutor's Services)",
                ),
            )
            return
        try:
            attempt = _attempt(scope)
        except ValueError as exc:
            await self._respond(send, invoke.error_outcome(400, "ProtocolError", str(exc)))
            return
        admitted = await self._admit(scope, receive, send)
        if admitted is None:
            return
        body, headers = admitted
        try:
            signature = invoke.verify(
                body, headers, self.limits, self.guard, method="POST", path=_signed_path(scope)
            )
            request = protocol.WorkloadRequest.decode(body)
        except invoke.Rejected as exc:
            await self._respond(send, invoke.error_outcome(exc.status, exc.type, exc.message))
            return
        except protocol.VersionMismatch as exc:
            await self._respond(send, invoke.error_outcome(400, "VersionMismatch", str(exc)))
            return
        except (protocol.ProtocolError, protocol.codec.CodecError) as exc:
            await self._respond(send, invoke.error_outcome(400, "ProtocolError", str(exc)))
            return
        server = os.environ.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") or request.server
        claim = (
            Claimer(request.delivery, attempt, request_digest(body), signature, runs.records)
            if runs.records is not None
            else None
        )
        try:
            run = await runs.admit(request, executor=request.executor, server=server, claim=claim)
        except Busy:
            await self._respond(
                send,
                invoke.error_outcome(
                    503,
                    "Busy",
                    f"this runtime runs {runs.capacity} workloads already ([knative] container_concurrency) "
                    f"and none finished within {ADMISSION_WAIT_SECONDS:g} s",
                ),
            )
            return
        except Refused as exc:
            await self._respond(send, invoke.Outcome(*exc.answer))
            return
        except Elsewhere as exc:  # another replica holds the delivery: say so, from its record
            await self._events(send, _aiter(exc.events))
            return
        assert run.first is not None
        first = await run.first
        if first[0] == "refused":
            await self._respond(send, invoke.error_outcome(422, first[1], first[2]))
            return
        await self._events(send, runs.events(run))

    async def _events(self, send: Send, events: AsyncIterator[dict[str, Any]]) -> None:
        """A workload event stream (one JSON object per line)."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", protocol.EVENTS_CONTENT_TYPE.encode())],
            }
        )
        async for event in events:
            await send(
                {"type": "http.response.body", "body": json.dumps(event).encode() + b"\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    async def _workload_status(self, scope: Scope, send: Send) -> None:
        """``GET /workloads/<delivery>``: what the delivery's record says, as workload events."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        delivery = unquote(raw_path[len(protocol.WORKLOADS_PATH) + 1 :])
        headers = _headers(scope)
        runs = self.workloads
        try:
            invoke.verify(b"", headers, self.limits, self.guard, method="GET", path=_signed_path(scope))
            attempt = _attempt(scope)
        except invoke.Rejected as exc:
            await self._respond(send, invoke.error_outcome(exc.status, exc.type, exc.message))
            return
        except ValueError as exc:
            await self._respond(send, invoke.error_outcome(400, "ProtocolError", str(exc)))
            return
        run = runs.runs.get(delivery) if runs is not None else None
        if runs is not None and run is not None:  # it runs here: the events so far, then as they come
            await self._events(send, runs.events(run))
            return
        if runs is None or runs.records is None:
            # Without a store this process's memory is the only record. Saying "not started" is
            # still safe for a delivery: Airflow's ti_run refuses a task instance that is no longer
            # queued, and a supervisor refused so ends "elsewhere", never as a finished task.
            await self._respond(
                send,
                invoke.Outcome(*records.not_started(delivery, records.NotStarted(attempt, voided=False))),
            )
            return
        probe = protocol.PROBE_PARAM in parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            state = await asyncio.to_thread(runs.records.state, delivery, attempt, void=not probe)
        except StoreError as exc:
            await self._respond(send, invoke.Outcome(*records.unreadable(delivery, runs.records.where, exc)))
            return
        if isinstance(state, records.NotStarted):
            await self._respond(send, invoke.Outcome(*records.not_started(delivery, state)))
            return
        await self._events(send, _aiter(record_events(state, delivery)))

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytearray | invoke.Outcome | None:
        body = bytearray()
        more = True
        while more:
            chunk = await receive()
            if chunk["type"] == "http.disconnect":
                return None
            body += chunk.get("body", b"")
            more = chunk.get("more_body", False)
            if len(body) > limit:
                return _too_large(len(body), limit, so_far=True)
        return body

    async def _execute(
        self,
        body: bytearray,
        headers: dict[str, str],
        attempt: int = 1,
        path: str = protocol.INVOKE_PATH,
        live: LiveLog | None = None,
    ) -> invoke.Outcome:
        """Run the call on a worker; its first answer (which may say: wait for a run that
        started before, here or on another replica; see :meth:`_resolved`)."""
        keys: list[str] = []

        def on_key(key: str) -> None:  # on the worker thread, as soon as the key is known
            keys.append(key)
            if live is not None:
                self.live_logs.add(key, live)

        ctx = invoke.CallContext(
            arrived=time.time(),
            on_text=live.append if live is not None else None,
            on_begin=live.start if live is not None else None,
        )
        future = self.pool.submit(self._handle, body, headers, attempt, on_key, path, ctx)
        self._waiting.add(future)
        try:
            return await future
        except asyncio.CancelledError:
            if not self._expired:
                raise
            # the drain is over: the record says how the call ended (Leases.stop_all wrote it)
            entry = self.ledger.get(keys[0]) if keys else None
            if entry is not None and entry.done.is_set() and entry.outcome is not None:
                return entry.outcome
            return self._drain_timeout()
        finally:
            self._waiting.discard(future)
            if live is not None:
                live.end()

    async def _resolved(self, run: Awaitable[invoke.Outcome]) -> invoke.Outcome:
        """The answer of a call: its own, or that of the run it joined here or follows elsewhere."""
        outcome = await run
        if outcome.pending is not None:  # the same invocation id is running or has run here
            outcome = await self._wait_entry(outcome.pending, deadline=None)
        if outcome.follow is not None:  # another replica runs it: its record answers
            outcome = await self._follow(*outcome.follow, deadline=None)
        return outcome

    def _handle(
        self,
        body: bytearray,
        headers: dict[str, str],
        attempt: int,
        on_key: Callable[[str], None],
        path: str,
        ctx: invoke.CallContext,
    ) -> invoke.Outcome:
        """Worker-thread side; counts itself so shutdown knows whether calls are still running."""
        with self._lock:
            self.in_flight += 1
        try:
            outcome = invoke.handle(
                body,
                headers,
                self.state.functions,
                self.limits,
                self.run,
                self.guard,
                self.ledger,
                self.records,
                attempt=attempt,
                on_key=on_key,
                path=path,
                ctx=ctx,
            )
            if self.observe is not None:
                self.observe(headers, ctx, outcome)
            return outcome
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _wait_entry(self, entry: Any, deadline: float | None) -> invoke.Outcome:
        """The recorded outcome of a ledger entry, waiting on the loop (no thread held)."""
        while not entry.done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return invoke.running_outcome()
            if self._expired:
                return self._drain_timeout()
            await asyncio.sleep(_LEDGER_POLL_SECONDS)
        if entry.outcome is None and self.records is not None and entry.request:
            # forgotten: refused before its claim; where the call stands is the record's to say
            return invoke.Outcome(0, b"", follow=(entry.request[1], entry.request[2]))
        if entry.outcome is None:  # forgotten: the first request was refused before it ran
            return invoke.error_outcome(
                404, protocol.UNKNOWN_INVOCATION, "the invocation was refused before it started"
            )
        return entry.outcome

    # ------------------------------------------------------------------ GET / DELETE /invocations/<id>

    async def _status(self, scope: Scope, send: Send) -> None:
        """Where a call stands (``GET``), or stop it (``DELETE``): from the record when there is
        one, whichever replica ran it; else from this process's ledger."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        invocation_id = unquote(raw_path[len(protocol.INVOCATIONS_PATH) :])
        headers = _headers(scope)
        try:
            invoke.verify(
                b"", headers, self.limits, self.guard, method=scope["method"], path=_signed_path(scope)
            )
        except invoke.Rejected as exc:
            await self._respond(send, invoke.error_outcome(exc.status, exc.type, exc.message))
            return
        params = parse_qs(query)
        try:
            wait = min(max(0.0, float(params.get("wait", ["0"])[0])), MAX_STATUS_WAIT_SECONDS)
            attempt = _attempt(scope)
        except ValueError:
            wait, attempt = 0.0, 1
        probe = params.get(protocol.PROBE_PARAM, ["0"])[0] not in ("", "0")
        if scope["method"] == "DELETE":
            await self._respond(send, await self._cancel(invocation_id, attempt))
            return
        if params.get(protocol.STREAM_PARAM, ["0"])[0] not in ("", "0") and streams.accepts_frames(headers):
            if await self._stream_status(send, invocation_id, attempt, params, probe):
                return
        deadline = time.monotonic() + wait
        entry = self.ledger.get(invoke.ledger_key(invocation_id, attempt))
        if entry is not None and (self.records is None or not entry.done.is_set()):
            outcome = await self._wait_entry(entry, deadline=deadline)
            if outcome.follow is not None:
                outcome = await self._follow(*outcome.follow, deadline=deadline)
        elif self.records is None:
            outcome = invoke.error_outcome(
                404,
                protocol.UNKNOWN_INVOCATION,
                f"this runtime has no record of invocation {invocation_id[:200]!r}: it never arrived here, "
                "or this pod started after it ran (this runtime keeps no record in a store: set [knative] "
                "xcom_store_url on it so that every replica can answer for every call)",
            )
        else:
            outcome = await self._follow(invocation_id, attempt, deadline=deadline, void=not probe)
        await self._respond(send, outcome)

    async def _stream_status(
        self, send: Send, call: str, attempt: int, params: dict[str, list[str]], probe: bool
    ) -> bool:
        """``GET /invocations/<id>?stream=1&from=N``: follow the call's output from byte N to its
        answer, on whichever replica runs it. False when there is nothing to follow here (no
        record and no run: the plain answer says so)."""
        try:
            offset = max(0, int(params.get(protocol.FROM_PARAM, ["0"])[0]))
        except ValueError:
            offset = 0
        key = invoke.ledger_key(call, attempt)
        live, entry = self.live_logs.get(key), self.ledger.get(key)
        if live is not None and entry is not None:
            await streams.follow_live(send, live, self._answer(self._wait_entry(entry, None)), offset)
            return True
        if self.records is None:
            return False
        await streams.follow_record(send, self.records, call, attempt, offset, void=not probe)
        return True

    async def _follow(
        self, call: str, attempt: int, *, deadline: float | None, void: bool = False
    ) -> invoke.Outcome:
        """The record's answer for ``(call, attempt)``, waiting (on the loop, no worker thread held)
        while another replica runs it: until ``deadline`` (then 202), or for good."""
        assert self.records is not None
        delay = _RECORD_POLL_SECONDS
        while True:
            try:
                state = await asyncio.to_thread(self.records.state, call, attempt, void=void)
            except StoreError as exc:
                return invoke.Outcome(*records.unreadable(call, self.records.where, exc))
            if isinstance(state, records.Finished):
                return invoke.Outcome.of(state)
            if isinstance(state, records.NotStarted):
                return invoke.Outcome(*records.not_started(call, state))
            attempt = state.claim.attempt
            if self._expired:
                return self._drain_timeout()
            if deadline is not None and time.monotonic() >= deadline:
                return invoke.Outcome(
                    202, protocol.Result(status="running", replica=state.claim.owner).encode()
                )
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            delay = min(_RECORD_POLL_MAX_SECONDS, delay * 2)

    async def _cancel(self, call: str, attempt: int) -> invoke.Outcome:
        """``DELETE /invocations/<id>``: stop the call wherever it runs (a task marked failed)."""
        why = "the task was marked failed or cleared in Airflow (DELETE /invocations/<id>)"
        if self.records is None:
            return invoke.error_outcome(
                501,
                "CancelUnsupported",
                "this runtime keeps no record in a store, so a cancel cannot reach the pod running the "
                "call; set [knative] xcom_store_url on the runtime",
            )
        try:
            await asyncio.to_thread(self.records.request_cancel, call, why)
        except StoreError as exc:
            return invoke.error_outcome(
                503, "RecordUnavailable", f"the cancel of {call[:200]!r} could not be recorded: {exc}"
            )
        if self.leases is not None and self.leases.held(call):
            await asyncio.to_thread(self.leases.cancel, call, why)
        # an attempt nobody claimed is declared void: the call can no longer start anywhere
        outcome = await self._follow(call, attempt, deadline=time.monotonic(), void=True)
        if outcome.status == 202:
            return invoke.Outcome(202, protocol.Result(status="running").encode())
        return outcome

    # ------------------------------------------------------------------ drain

    def start_drain(self, drain_seconds: float) -> None:
        """SIGTERM: stop admitting; calls still running at the end of the drain get an answer
        saying so (instead of a bare 500 from the server when it gives up on them)."""
        self.state.draining = True
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, drain_seconds - DRAIN_MARGIN_SECONDS), self._expire)
        if self.workloads is not None:
            stop = max(0.0, drain_seconds - WORKLOAD_STOP_SECONDS)
            loop.call_later(stop, self.workloads.stop_all, DRAIN_STOP_REASON)

    def _expire(self) -> None:
        self._expired = True
        #: calls the drain gave up on (the process then exits 1)
        self.outlived = len(self._waiting)
        if self.leases is not None:
            # every call this replica owns ends with a recorded outcome before the process exits
            self.outlived = max(self.outlived, self.leases.stop_all(self._drain_stopped))
        for future in list(self._waiting):
            future.cancel()
        if self.on_expire is not None:
            self.on_expire()
        if self.workloads is not None:
            self.workloads.stop_all(DRAIN_STOP_REASON)

    def _drain_timeout(self) -> invoke.Outcome:
        return invoke.error_outcome(500, "DrainTimeout", DRAIN_TIMEOUT_MESSAGE)

    def _drain_stopped(self, call: str, attempt: int) -> records.Finished:
        assert self.records is not None
        status, body, error = records.error_answer(
            500, "DrainTimeout", f"{DRAIN_TIMEOUT_MESSAGE} (pod {self.records.owner})"
        )
        return records.Finished(
            status, body, error, attempt=attempt, owner=self.records.owner, at=time.time(), how="abandoned"
        )

    def call_ended(self, call: str, attempt: int, final: records.Finished) -> None:
        """A call this replica owns ended early (cancelled, or stopped by the drain): whoever waits
        for it here gets the recorded outcome now."""
        self.ledger.finish(invoke.ledger_key(call, attempt), invoke.Outcome.of(final))

    # ------------------------------------------------------------------ responses

    @staticmethod
    async def _respond(send: Send, outcome: invoke.Outcome) -> None:
        headers = [(b"content-type", _MSGPACK), (b"content-length", str(len(outcome.body)).encode())]
        if outcome.error:
            headers.append((b"x-knative-error", _header_text(outcome.error)))
        await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        await send({"type": "http.response.body", "body": outcome.body})

    @staticmethod
    async def _json(send: Send, status: int, payload: Any) -> None:
        await RuntimeApp._plain(send, status, json.dumps(payload).encode(), _JSON.decode())

    @staticmethod
    async def _plain(send: Send, status: int, body: bytes, content_type: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _aiter(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def _attempt(scope: Scope) -> int:
    """The attempt number of a request (``?attempt=N``; 1 when absent)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(protocol.ATTEMPT_PARAM)
    if not values:
        return 1
    text = values[0]
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise ValueError(f"{protocol.ATTEMPT_PARAM} must be a whole number from 1, got {text[:20]!r}")
    return int(text)


def _headers(scope: Scope) -> dict[str, str]:
    """A request's headers (lower-case names, as ASGI gives them)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _signed_path(scope: Scope) -> str:
    """The path and query a request's signature covers."""
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return raw_path + ("?" + query if query else "")


def _too_large(size: int, limit: int, so_far: bool = False) -> invoke.Outcome:
    what = f"more than {limit}" if so_far else str(size)
    return invoke.error_outcome(
        413,
        "RequestTooLarge",
        f"invocation body is {what} bytes; this runtime accepts at most {limit} ([knative] "
        "max_body_bytes). Large arguments travel by reference: let the XCom backend spill them "
        "to the object store",
    )
