"""``KnativeInvocationTrigger``: the HTTP call of a deferred Knative task, run in the triggerer.

No worker slot is held while the function runs. The trigger only moves bytes: the operator
builds (and the triggerer signs, per attempt) the request, and the operator reads the answer
in ``execute_complete`` with exactly the code the synchronous path uses, so results, remote
logs and remote errors look the same in both modes.

Trigger kwargs and events are rows in Airflow's database, so both stay small: a request or
response body above the inline threshold is put in the object store and travels as a URL
(the receiving side reads it and deletes it). A large *result* is already a reference inside
the runtime's answer, because the runtime spills results above the invocation's threshold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_knative.connection import settings_from
from airflow_provider_knative.hooks import KnativeHook
from airflow_provider_knative.invoker import (
    InvocationError,
    Request,
    Response,
    RetrySchedule,
    Timeouts,
    pack_bytes,
    read_timeout,
    unpack_bytes,
)


class KnativeInvocationTrigger(BaseTrigger):
    """Send one (already encoded) request to a Knative Service and report the raw answer.

    :param url: full URL to call (service base URL + path), resolved by the operator.
    :param body: the request body packed with :func:`invoker.pack_bytes` (inline or a ref).
    :param timeouts: ``Timeouts.to_dict()``.
    :param knative_conn_id: read in the triggerer for the signing secret (never in kwargs).
    :param store_url: where to put a response body above ``inline_max_bytes``.
    :param key_segments: object store key prefix for such a body (dag/run/task/map).
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
        key_segments: list[str] | tuple[str, ...] = (),
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
        self.key_segments = list(key_segments)

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
                "key_segments": self.key_segments,
            },
        )

    async def _secret(self) -> bytes | None:
        try:
            connection = await KnativeHook.aget_connection(self.knative_conn_id)
        except AirflowNotFoundException:
            connection = None
        return (await asyncio.to_thread(settings_from, connection)).secret

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            body = await asyncio.to_thread(unpack_bytes, self.body, delete=False)
            request = Request(
                url=self.url,
                body=body,
                method=self.method,
                content_type=self.content_type,
                secret=await self._secret(),
            )
            response = await self._invoke(request, Timeouts.from_dict(self.timeouts))
            packed = await asyncio.to_thread(
                pack_bytes,
                response.body,
                inline_max_bytes=self.inline_max_bytes,
                store_url=self.store_url,
                key_segments=(*self.key_segments, "response"),
            )
        except InvocationError as exc:
            yield TriggerEvent({"status": "failed", "error": type(exc).__name__, "message": str(exc)})
            return
        except Exception as exc:  # anything else still has to reach the task, with its cause
            yield TriggerEvent(
                {"status": "failed", "error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"}
            )
            return
        finally:
            await asyncio.to_thread(self._drop_request_body)
        yield TriggerEvent(
            {
                "status": "response",
                "url": self.url,
                "http_status": response.status,
                "content_type": response.content_type,
                "body": packed,
            }
        )

    def _drop_request_body(self) -> None:
        """A spilled request body is needed once; remove it whatever happened."""
        if "ref" in self.body:
            from airflow_provider_knative.store import open_store

            try:
                open_store(self.body["store"]).delete(self.body["ref"])
            except Exception:
                self.log.warning("could not delete spilled request body %s", self.body["ref"], exc_info=True)

    async def _invoke(self, request: Request, timeouts: Timeouts) -> Response:
        """The async twin of ``KnativeHook.invoke``: same schedule, same decisions."""
        schedule = RetrySchedule(request.url, timeouts.startup_deadline)
        limits = httpx.Timeout(timeouts.read, connect=timeouts.connect)
        async with httpx.AsyncClient(timeout=limits, trust_env=False) as client:
            while True:
                schedule.attempt()
                try:
                    answer = await client.request(
                        request.method, request.url, content=request.body, headers=request.headers()
                    )
                except httpx.ReadTimeout:
                    raise read_timeout(request.url, timeouts) from None
                except httpx.TransportError as exc:
                    delay = schedule.failed(f"{type(exc).__name__}: {exc}")
                else:
                    response = Response(
                        answer.status_code, answer.headers.get("content-type", ""), answer.content
                    )
                    if not schedule.retry_status(response):
                        return response
                    delay = schedule.failed(f"HTTP {response.status}")
                self.log.info("%s", schedule.describe(delay))
                await asyncio.sleep(delay)
