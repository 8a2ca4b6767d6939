"""The runtime's ASGI application: ``/healthz``, ``/readyz``, ``/functions``, ``POST /invoke``.

A plain ASGI callable rather than a framework router: the whole app is four routes, and the
hot path (``/invoke``) must stay within 2x a bare uvicorn app per request. The event loop
only moves bytes; everything else happens in :func:`invoke.handle` on a worker thread
pool whose size is ``[knative] container_concurrency`` (calls beyond it queue), so health
probes are answered while CPU-bound functions run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_knative import protocol
from airflow_provider_knative.functions import Function
from airflow_provider_knative.runtime import invoke
from airflow_provider_knative.runtime.loader import ImportFailure

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MSGPACK = protocol.CONTENT_TYPE.encode()
_JSON = b"application/json"


@dataclass
class RuntimeState:
    """What the routes report; written by the loader thread and the signal handler."""

    functions: dict[str, Function] = field(default_factory=dict)
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


class RuntimeApp:
    """ASGI app. ``pool`` runs invocations; ``state`` is shared with the loader."""

    def __init__(self, state: RuntimeState, limits: invoke.Limits, pool: ThreadPoolExecutor) -> None:
        self.state = state
        self.limits = limits
        self.pool = pool
        self.guard = protocol.ReplayGuard(limits.signature_max_age_seconds) if limits.signing_secret else None
        self.in_flight = 0
        self._lock = threading.Lock()

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
        elif path == "/healthz":
            await self._json(send, 200, {"status": "ok", "in_flight": self.in_flight})
        elif path == "/readyz":
            await self._readyz(send)
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
                send, 404, {"error": f"no route {path}; try /invoke, /healthz, /readyz, /functions"}
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

    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        if not state.ready:
            if state.failures:
                files = ", ".join(f.path for f in state.failures)
                message = f"the runtime's DAG folder failed to import ({files}); see the pod log"
            elif state.draining:
                message = "the runtime is shutting down; retry on another pod"
            else:
                message = "the runtime is still importing its DAG folder; retry shortly"
            await self._respond(send, invoke.error_outcome(503, "NotReady", message))
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._respond(send, _too_large(int(declared), limit))
            return
        body = bytearray()
        more = True
        while more:
            chunk = await receive()
            if chunk["type"] == "http.disconnect":
                return
            body += chunk.get("body", b"")
            more = chunk.get("more_body", False)
            if len(body) > limit:
                await self._respond(send, _too_large(len(body), limit, so_far=True))
                return
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self.pool, self._handle, body, headers)
        await self._respond(send, outcome)

    def _handle(self, body: bytearray, headers: dict[str, str]) -> invoke.Outcome:
        """Worker-thread side; counts itself so shutdown knows whether calls are still running."""
        with self._lock:
            self.in_flight += 1
        try:
            return invoke.handle(body, headers, self.state.functions, self.limits, self.guard)
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    async def _respond(send: Send, outcome: invoke.Outcome) -> None:
        headers = [(b"content-type", _MSGPACK), (b"content-length", str(len(outcome.body)).encode())]
        if outcome.error:
            headers.append((b"x-knative-error", _header_text(outcome.error)))
        await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        await send({"type": "http.response.body", "body": outcome.body})

    @staticmethod
    async def _json(send: Send, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _too_large(size: int, limit: int, so_far: bool = False) -> invoke.Outcome:
    what = f"more than {limit}" if so_far else str(size)
    return invoke.error_outcome(
        413,
        "RequestTooLarge",
        f"invocation body is {what} bytes; this runtime accepts at most {limit} ([knative] "
        "max_body_bytes). Large arguments travel by reference: let the XCom backend spill them "
        "to the object store",
    )
