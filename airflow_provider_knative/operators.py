"""KnativeOperator: invoke a Knative Service from a DAG, synchronously or deferred.

Two kinds of service are called the same way:

* any HTTP service (``payload=``, ``method=``, ``path=``, ``content_type=``): a JSON or raw
  body goes out, the JSON (or text, or bytes) answer is the task's return value;
* the provider's runtime (``@task.knative``, see ``decorators.py``): the body is a
  ``protocol.Invocation``, the answer a ``protocol.Result`` whose captured logs are re-emitted
  here and whose remote exception fails the task with the remote traceback.

Both run through :class:`hooks.KnativeHook` (sync) or :class:`triggers.KnativeInvocationTrigger`
(deferred) and are read back by the same :meth:`KnativeOperator._finish`, so the two modes
behave identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_provider_knative import config, protocol
from airflow_provider_knative.hooks import InvocationCancelled, KnativeHook, NoServiceURLError
from airflow_provider_knative.invoker import (
    InvocationError,
    RemoteFunctionError,
    Request,
    Response,
    Timeouts,
    encode_payload,
    pack_bytes,
    read_raw,
    read_result,
    unpack_bytes,
)

DEFAULT_CONN_ID = "knative_default"
REMOTE_LOG_END = "---- end of remote logs ----"


class KnativeFunctionError(AirflowException):
    """The function raised inside the Knative Service. Message: remote type, message, traceback."""

    def __init__(self, message: str, remote_type: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type


class KnativeOperator(BaseOperator):
    """Invoke a Knative Service.

    :param service: Knative Service name (templated); the URL comes from ``url=``, the
        connection's or ``[knative] url_template``, or Kubernetes discovery.
    :param namespace: its namespace (templated; default: connection, then ``[knative] namespace``).
    :param url: explicit base URL (templated); skips template and discovery.
    :param payload: body for a non-Python service (templated): bytes/str as is, else JSON.
    :param method: HTTP method for ``payload`` calls.
    :param path: path appended to the service URL for ``payload`` calls (templated).
    :param content_type: Content-Type for ``payload`` (default by type of payload).
    :param knative_conn_id: a ``knative`` connection; a missing one means config only.
    :param deferrable: run the HTTP call in the triggerer (default ``[knative] default_deferrable``).
    :param connect_timeout: seconds; overrides connection/config.
    :param invoke_timeout: seconds the service may take to answer; overrides connection/config.
    :param startup_deadline: seconds to retry connection errors and 502/503/504 (cold start).
    :param service_settings: per-service deployment settings used by ``airflow-knative manifests``
        (container_concurrency, timeout_seconds, min_scale, max_scale, ...); not used at run time.
    """

    template_fields: Sequence[str] = ("service", "namespace", "url", "payload", "path")
    ui_color = "#e3f1ff"

    def __init__(
        self,
        *,
        service: str | None = None,
        namespace: str | None = None,
        url: str | None = None,
        payload: Any = None,
        knative_conn_id: str = DEFAULT_CONN_ID,
        service_settings: Mapping[str, Any] | None = None,
        method: str = "POST",
        path: str = "/",
        content_type: str | None = None,
        deferrable: bool | None = None,
        connect_timeout: float | None = None,
        invoke_timeout: float | None = None,
        startup_deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.namespace = namespace
        self.url = url
        self.payload = payload
        self.knative_conn_id = knative_conn_id
        self.service_settings = dict(service_settings or {})
        self.method = method.upper()
        self.path = path
        self.content_type = content_type
        self.deferrable = config.get("default_deferrable") if deferrable is None else bool(deferrable)
        self.connect_timeout = connect_timeout
        self.invoke_timeout = invoke_timeout
        self.startup_deadline = startup_deadline
        if not service and not url:
            raise ValueError(
                f"{self.task_id}: KnativeOperator needs service= (a Knative Service name) or url="
            )

    # ------------------------------------------------------------------ building blocks

    @cached_property
    def hook(self) -> KnativeHook:
        return KnativeHook(self.knative_conn_id)

    def timeouts(self) -> Timeouts:
        """Per-task overrides over the connection/config values."""
        base = self.hook.settings.timeouts
        return Timeouts(
            connect=base.connect if self.connect_timeout is None else float(self.connect_timeout),
            read=base.read if self.invoke_timeout is None else float(self.invoke_timeout),
            startup_deadline=base.startup_deadline
            if self.startup_deadline is None
            else float(self.startup_deadline),
        )

    def base_url(self) -> str:
        try:
            return self.hook.resolve_url(self.service, self.namespace, self.url)
        except (NoServiceURLError, config.ConfigError) as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None

    def build_request(self, context: Any) -> Request:
        """The HTTP request this task sends (a JSON/raw payload here; an Invocation in @task.knative)."""
        body, content_type = encode_payload(self.payload, self.content_type)
        path = self.path if self.path.startswith("/") else "/" + self.path
        target = self.base_url() + (path if path != "/" else "")
        return Request(url=target or "/", body=body, method=self.method, content_type=content_type)

    @property
    def speaks_protocol(self) -> bool:
        """Whether the answer is a runtime ``protocol.Result`` (True for ``@task.knative``)."""
        return False

    # ------------------------------------------------------------------ execution

    def execute(self, context: Any) -> Any:
        request = self.build_request(context)
        timeouts = self.timeouts()
        if self.deferrable:
            self._defer(request, timeouts, context)
        request = dataclasses.replace(request, secret=self.hook.settings.secret)
        self.log.info("Calling %s (%s, %d-byte body)", request.url, request.method, len(request.body))
        try:
            response = self.hook.invoke(request, timeouts)
        except InvocationCancelled as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None
        except InvocationError as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None
        self.log.info("%s answered HTTP %d with %d bytes", request.url, response.status, len(response.body))
        return self._finish(response, request.url, context)

    def _key_segments(self, context: Any) -> tuple[str, ...]:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return (
            "_knative_bodies",
            self.dag_id,
            str(context.get("run_id") or getattr(ti, "run_id", "_")),
            self.task_id,
            str(map_index if map_index is not None and map_index >= 0 else "_"),
        )

    def _defer(self, request: Request, timeouts: Timeouts, context: Any) -> None:
        from airflow_provider_knative.triggers import KnativeInvocationTrigger

        store_url = config.get("xcom_store_url")
        inline = config.get("xcom_inline_max_bytes")
        segments = self._key_segments(context)
        self.log.info("Deferring the call to %s to the triggerer", request.url)
        self.defer(
            trigger=KnativeInvocationTrigger(
                url=request.url,
                body=pack_bytes(
                    request.body, inline_max_bytes=inline, store_url=store_url, key_segments=segments
                ),
                timeouts=timeouts.to_dict(),
                knative_conn_id=self.knative_conn_id,
                method=request.method,
                content_type=request.content_type,
                store_url=store_url,
                inline_max_bytes=inline,
                key_segments=segments,
            ),
            method_name="execute_complete",
            # the trigger enforces the real limits; this only stops a lost trigger from waiting forever
            timeout=timedelta(seconds=timeouts.startup_deadline + timeouts.read + 60),
        )

    def execute_complete(self, context: Any, event: Mapping[str, Any] | None = None) -> Any:
        """Resume after the trigger: the same reading of the answer as the synchronous path."""
        if not event:
            raise AirflowException(f"{self.task_id}: the trigger ended without an event")
        if event.get("status") != "response":
            raise AirflowException(f"{self.task_id}: {event.get('message') or event}")
        body = unpack_bytes(event["body"])
        response = Response(int(event["http_status"]), str(event.get("content_type", "")), body)
        return self._finish(response, str(event.get("url", self._where())), context)

    def _finish(self, response: Response, url: str, context: Any) -> Any:
        if not self.speaks_protocol:
            try:
                return read_raw(response, url)
            except InvocationError as exc:
                raise AirflowException(f"{self.task_id}: {exc}") from None
        try:
            result = read_result(response, url)
        except RemoteFunctionError as exc:
            self.emit_remote_logs(exc.result)
            raise KnativeFunctionError(
                f"{self.task_id}: the function failed in {self._where()}: {exc}", exc.remote.type
            ) from None
        except InvocationError as exc:
            raise AirflowException(f"{self.task_id}: {exc}") from None
        self.emit_remote_logs(result)
        return self.result_value(result, context)

    def result_value(self, result: protocol.Result, context: Any) -> Any:
        """What the task returns for a successful Result (the decorator refines this)."""
        return result.value

    def _where(self) -> str:
        return self.service or self.url or "the service"

    def emit_remote_logs(self, result: protocol.Result) -> None:
        """Re-emit what the function logged or printed, fenced so it is not mistaken for ours."""
        if not result.logs:
            return
        cut = " (truncated: [knative] log_max_bytes)" if result.logs_truncated else ""
        self.log.info(
            "---- remote logs (%s, %.2f s)%s ----\n%s\n%s",
            self._where(),
            result.duration_seconds,
            cut,
            result.logs.rstrip("\n"),
            REMOTE_LOG_END,
        )

    def on_kill(self) -> None:
        """Abandon the call: no further attempts, the in-flight response is closed."""
        if "hook" in self.__dict__:
            self.hook.cancel()
