"""``KnativeOperator``: call a Knative Service (any HTTP service) from a DAG, sync or deferred.

A JSON or raw body goes out; the JSON (or text, or bytes) answer is the task's return value.
The call runs through :class:`hooks.KnativeHook` (``invoke`` in the worker, ``ainvoke`` in the
triggerer when deferred), and both paths read the answer with the same
:meth:`KnativeOperator.read_response`, so the two modes behave identically.

This operator knows nothing about ``@task.knative``: the decorated operator (``decorators.py``)
builds a different request and reads a different answer by overriding ``build_request`` and
``read_response``, the two named extension points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_knative import airflow_compat, aws, config, spill, tracecontext
from airflow_provider_knative.airflow_compat import AirflowException
from airflow_provider_knative.errors import KnativeError, ResponseCheckFailed
from airflow_provider_knative.hooks import KnativeHook
from airflow_provider_knative.invoker import (
    Request,
    Response,
    Timeouts,
    encode_payload,
    read_raw,
)
from airflow_provider_knative.remote_output import RemoteOutput

DEFAULT_CONN_ID = KnativeHook.default_conn_name
aws.install()  # deferred bodies go through the store: [knative] aws_conn_id applies
#: HTTP methods that may be sent twice by their definition (RFC 9110, section 9.2.2)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def default_deferrable() -> bool:
    """``deferrable=`` when a task does not say: ``[knative] default_deferrable`` when it is set,
    else Airflow's own ``[operators] default_deferrable`` (as KubernetesPodOperator and
    HttpOperator read it), else False."""
    own = config.get("default_deferrable")
    if own is not None:
        return bool(own)
    from airflow.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


@contextlib.contextmanager
def airflow_errors(task_id: str) -> Iterator[None]:
    """The one place the provider's errors become Airflow's: an ``AirflowException`` naming the
    task, whose message is the provider's (which already says what to do). An error that is
    already an Airflow exception passes unchanged."""
    try:
        yield
    except AirflowException:
        raise
    except KnativeError as exc:
        raise AirflowException(f"{task_id}: {exc}") from None


class KnativeOperator(BaseOperator):
    """Invoke a Knative Service (any HTTP service: a JSON or raw body out, the answer back).

    :param service: Knative Service name (templated); the URL comes from ``url=``, the
        connection's or ``[knative] url_template``, or Kubernetes discovery.
    :param namespace: its namespace (templated; default: connection, then ``[knative] namespace``).
    :param url: explicit base URL (templated); skips template and discovery.
    :param payload: the body (templated): bytes/str as is, else JSON.
    :param method: HTTP method.
    :param path: path appended to the service URL (templated).
    :param content_type: Content-Type for ``payload`` (default by type of payload).
    :param headers: extra HTTP headers (templated), over the connection's ``headers`` extra; for
        example ``{"Host": "scorer.prod.example.com"}`` for a Knative ingress.
    :param response_check: a callable given the final answer (``status_code``, ``text``,
        ``json()``, ``content``) and, by name, any context values it asks for; returning False
        fails the task, as on ``HttpOperator``. It runs after error statuses are handled.
    :param knative_conn_id: a ``knative`` connection; a missing one means config only.
    :param deferrable: run the HTTP call in the triggerer (default: ``[knative] default_deferrable``
        when set, else ``[operators] default_deferrable``).
    :param connect_timeout: seconds; overrides connection/config.
    :param invoke_timeout: seconds the service may take to answer; overrides connection/config.
    :param startup_deadline: seconds to retry what provably did not reach the service
        (connection refused, a gateway's "not ready" 503).
    :param idempotent: whether sending the request twice is harmless, so a call whose connection
        broke after sending may be sent again (default: True for GET, HEAD, OPTIONS, PUT, DELETE).
    :param service_settings: per-service deployment settings used by ``airflow-knative manifests``
        (container_concurrency, timeout_seconds, min_scale, max_scale, ...); not used at run time.
    """

    template_fields: Sequence[str] = ("service", "namespace", "url", "payload", "path", "headers")
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
        idempotent: bool | None = None,
        headers: Mapping[str, str] | None = None,
        response_check: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> None:
        airflow_compat.require("@task.knative and KnativeOperator")  # a clear error on Airflow 3.0
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
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.headers: Any = {} if headers is None else headers  # checked when rendered (templated)
        self.response_check = response_check
        self.connect_timeout = connect_timeout
        self.invoke_timeout = invoke_timeout
        self.startup_deadline = startup_deadline
        self.idempotent = self.method in IDEMPOTENT_METHODS if idempotent is None else bool(idempotent)
        #: where the call's time went on this side (set by execute / execute_complete)
        self.client_timing: dict[str, float] = {}
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
        return self.hook.resolve_url(self.service, self.namespace, self.url)

    def build_request(self, context: Any) -> Request:
        """The HTTP request this task sends."""
        body, content_type = encode_payload(self.payload, self.content_type)
        path = self.path if self.path.startswith("/") else "/" + self.path
        target = self.base_url() + (path if path != "/" else "")
        return Request(
            url=target or "/",
            body=body,
            method=self.method,
            content_type=content_type,
            headers_extra=self.request_headers(),
        )

    def request_headers(self) -> dict[str, str]:
        """The task's extra headers (rendered), checked to be names and values of text."""
        if not isinstance(self.headers, Mapping):
            raise TypeError(
                f"{self.task_id}: headers= must be a mapping of names to values, got {self.headers!r}"
            )
        return {str(k): str(v) for k, v in self.headers.items()}

    def read_response(self, response: Response, url: str, context: Any) -> Any:
        """What the task returns for the final answer: parsed JSON, text or bytes."""
        return read_raw(response, url)

    # ------------------------------------------------------------------ execution

    def output_sink(self) -> RemoteOutput | None:
        """What shows the service's output in the task log while the call runs (the runtime of
        ``@task.knative`` streams it); None: this operator does not follow it."""
        return None

    def execute(self, context: Any) -> Any:
        with airflow_errors(self.task_id):
            request = self.build_request(context)
            timeouts = self.timeouts()
            if self.deferrable:
                self._defer(request, timeouts, context)
            self.log.info("Calling %s (%s, %d-byte body)", request.url, request.method, len(request.body))
            sink = self.output_sink()
            try:
                response = self.hook.invoke(request, timeouts, idempotent=self.idempotent, on_log=sink)
            finally:
                if sink is not None:
                    sink.close()
                self.client_timing = self.hook.timing.to_dict()
            self.log.info(
                "%s answered HTTP %d with %d bytes", request.url, response.status, len(response.body)
            )
            return self.answer(response, request.url, context)

    def answer(self, response: Response, url: str, context: Any) -> Any:
        """The task's result for the final answer, sync or deferred: read, then ``response_check``."""
        value = self.read_response(response, url, context)
        if self.response_check is not None:
            kwargs = airflow_compat.determine_kwargs(self.response_check, [response], context or {})
            if not self.response_check(response, **kwargs):
                raise ResponseCheckFailed(
                    f"response_check returned False for the answer of {url} (HTTP {response.status}, "
                    f"{len(response.body)} bytes): {response.body[:300].decode('utf-8', 'replace')}"
                )
        return value

    @staticmethod
    def _owner(context: Any) -> spill.Owner:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return spill.Owner(
            dag_id=getattr(ti, "dag_id", None),
            run_id=str(context.get("run_id") or getattr(ti, "run_id", "_")),
            task_id=getattr(ti, "task_id", None),
            map_index=map_index if isinstance(map_index, int) else None,
        )

    def _defer(self, request: Request, timeouts: Timeouts, context: Any) -> None:
        from airflow_provider_knative.triggers import KnativeInvocationTrigger

        store_url = config.get("xcom_store_url")
        inline = config.get("xcom_inline_max_bytes")
        owner = self._owner(context)
        self.log.info("Deferring the call to %s to the triggerer", request.url)
        self.defer(
            trigger=KnativeInvocationTrigger(
                url=request.url,
                body=spill.pack_bytes(
                    request.body, inline_max_bytes=inline, store_url=store_url, owner=owner, name="_request"
                ),
                timeouts=timeouts.to_dict(),
                knative_conn_id=self.knative_conn_id,
                method=request.method,
                content_type=request.content_type,
                store_url=store_url,
                inline_max_bytes=inline,
                owner=vars(owner),
                invocation_id=request.invocation_id,
                idempotent=self.idempotent,
                headers=dict(request.headers_extra),
                traceparent=tracecontext.current(),  # the triggerer calls under the task's span
                output=self.output_sink() is not None,
                label=self.service or request.url,
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
        with airflow_errors(self.task_id):
            body = spill.unpack_bytes(event["body"])
            response = Response(int(event["http_status"]), str(event.get("content_type", "")), body)
            self.client_timing = dict(event.get("timing") or {})
            return self.answer(response, str(event.get("url", self.service or self.url)), context)

    def on_kill(self) -> None:
        """Abandon the call: no further attempts, the in-flight response is closed."""
        if "hook" in self.__dict__:
            self.hook.cancel()
