"""``KnativeInvocationTrigger``: the HTTP call of a deferred Knative task, run in the triggerer.

No worker slot is held while the function runs. The trigger only moves bytes through
``KnativeHook.ainvoke`` (the same retry rules, signing and errors as the synchronous path);
the operator builds the request and reads the answer in ``execute_complete`` with exactly the
code the synchronous path uses, so results, remote logs and remote errors look the same in
both modes.

Trigger kwargs and events are rows in Airflow's database, so both stay small: a request or
response body above the inline threshold is put in the object store and travels as a URL
(``spill.pack_bytes``; the receiving side reads it and deletes it). A large *result* is
already a reference inside the runtime's answer, because the runtime spills results above the
invocation's threshold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_knative import aws, spill, tracecontext
from airflow_provider_knative.errors import KnativeError
from airflow_provider_knative.hooks import KnativeHook
from airflow_provider_knative.invoker import Request, Timeouts
from airflow_provider_knative.remote_output import RemoteOutput

aws.install()  # the triggerer reads and writes bodies in the store: [knative] aws_conn_id applies


class KnativeInvocationTrigger(BaseTrigger):
    """Send one (already encoded) request to a Knative Service and report the raw answer.

    :param url: full URL to call (service base URL + path), resolved by the operator.
    :param body: the request body packed with :func:`spill.pack_bytes` (inline or a ref).
    :param timeouts: ``Timeouts.to_dict()``.
    :param knative_conn_id: read in the triggerer for the signing secret (never in kwargs).
    :param store_url: where to put a response body above ``inline_max_bytes``.
    :param owner: ``spill.Owner`` fields (dag/run/task/map) for the keys of spilled bodies.
    :param invocation_id: the task try's id, so a broken call is asked about, not re-run.
    :param idempotent: allow sending the request again when it may have run.
    :param traceparent: the W3C trace context the task deferred under ("" when not traced), so
        the call and the runtime's spans join the task's trace (``tracecontext``).
    """

    def __init__(
        self,
        *,
        url: str,
        body: dict[str, Any],
        timeouts: dict[str, float],
        knative_conn_id: str = KnativeHook.default_conn_name,
        method: str = "POST",
        content_type: str = "application/x-msgpack",
        store_url: str = "",
        inline_max_bytes: int = 64 * 1024,
        owner: dict[str, Any] | None = None,
        invocation_id: str = "",
        idempotent: bool = False,
        headers: dict[str, str] | None = None,
        traceparent: str = "",
        output: bool = False,
        label: str = "",
    ) -> None:
        super().__init__()
        self.url = url
        self.body = body
        self.timeouts = timeouts
        self.knative_conn_id = knative_conn_id
        self.method = method
        self.content_type = content_type
        self.store_url = store_url
        self.inline_max_bytes = inline_max_bytes
        self.owner = dict(owner or {})
        self.invocation_id = invocation_id
        self.idempotent = idempotent
        self.headers = dict(headers or {})
        self.traceparent = traceparent
        self.output = output
        self.label = label

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "url": self.url,
                "body": self.body,
                "timeouts": self.timeouts,
                "knative_conn_id": self.knative_conn_id,
                "method": self.method,
                "content_type": self.content_type,
                "store_url": self.store_url,
                "inline_max_bytes": self.inline_max_bytes,
                "owner": self.owner,
                "invocation_id": self.invocation_id,
                "idempotent": self.idempotent,
                "headers": self.headers,
                "traceparent": self.traceparent,
                "output": self.output,
                "label": self.label,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # A cancelled trigger (triggerer restart) keeps its spilled request body: the trigger
        # runs again elsewhere, asks the call's record first (probe_first) and follows the call
        # an earlier triggerer sent instead of sending it again.
        try:
            with tracecontext.resumed(self.traceparent):  # the task's span, from the worker
                event = await self._call()
        except KnativeError as exc:
            event = {"status": "failed", "error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # anything else still has to reach the task, with its cause
            event = {
                "status": "failed",
                "error": type(exc).__name__,
                "message": f"{type(exc).__name__}: {exc}",
            }
        await asyncio.to_thread(self._drop_request_body)
        yield TriggerEvent(event)

    def _request(self, body: bytes) -> Request:
        return Request(
            url=self.url,
            body=body,
            method=self.method,
            content_type=self.content_type,
            invocation_id=self.invocation_id,
            headers_extra=self.headers,
        )

    async def _call(self) -> dict[str, Any]:
        body = await asyncio.to_thread(spill.unpack_bytes, self.body, delete=False)
        hook = KnativeHook(self.knative_conn_id)
        # the function's output, in the task log as it runs (the triggerer's lines are the task's)
        sink = RemoteOutput(self.log, self.label or self.url) if self.output else None
        try:
            # Airflow restores a trigger (same kwargs) after its triggerer died: the call may
            # already run on some replica, so its record is asked before anything is sent
            response = await hook.ainvoke(
                self._request(body),
                Timeouts.from_dict(self.timeouts),
                idempotent=self.idempotent,
                probe_first=bool(self.invocation_id) and not self.idempotent,
                on_log=sink,
            )
        finally:
            if sink is not None:
                sink.close()
        packed = await asyncio.to_thread(
            spill.pack_bytes,
            response.body,
            inline_max_bytes=self.inline_max_bytes,
            store_url=self.store_url,
            owner=spill.Owner(**self.owner),
            name="_response",
        )
        return {
            "status": "response",
            "url": self.url,
            "http_status": response.status,
            "content_type": response.content_type,
            "body": packed,
            "timing": hook.timing.to_dict(),
        }

    async def on_kill(self) -> None:
        """The deferred task was marked failed or cleared (Airflow 3.3+ calls this on a user's
        cancel only, not when the triggerer stops): stop the call on the replica running it."""
        if self.invocation_id:
            await KnativeHook(self.knative_conn_id).acancel(self._request(b""))

    def _drop_request_body(self) -> None:
        """A spilled request body is needed once; remove it whatever happened."""
        try:
            spill.drop_packed(self.body)
        except KnativeError:
            self.log.warning("could not delete spilled request body %s", self.body.get("ref"), exc_info=True)
