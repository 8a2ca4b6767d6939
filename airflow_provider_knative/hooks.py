"""``KnativeHook``: where a Knative Service lives and one pooled HTTP session to call it.

Settings come from the ``knative`` connection when there is one and from the ``[knative]``
config section otherwise, so a deployment that only sets ``AIRFLOW__KNATIVE__*`` (the Helm
values, a local ``airflow-knative serve``) needs no connection at all.

A service name becomes a URL by the first of: an explicit ``url=``; the URL template of the
connection or of ``[knative] url_template`` (``{service}`` and ``{namespace}`` filled in);
the Knative Service's ``status.address.url`` read through the Kubernetes API when the template
is ``discover``. Discovered URLs are cached for the life of the process.
"""

from __future__ import annotations

import contextvars
import socket
import threading
from typing import Any

import requests
import urllib3
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_provider_knative import config
from airflow_provider_knative.connection import UI_FIELD_BEHAVIOUR, ServiceSettings, settings_from
from airflow_provider_knative.deploy.names import service_name
from airflow_provider_knative.invoker import (
    InvocationError,
    Request,
    Response,
    RetrySchedule,
    Timeouts,
    read_timeout,
)

#: url_template value that asks for Kubernetes discovery instead of a template
DISCOVER = "discover"

KNATIVE_GROUP, KNATIVE_VERSION, KNATIVE_PLURAL = "serving.knative.dev", "v1", "services"


class NoServiceURLError(ValueError):
    """None of the three URL sources yields a URL for this service."""


def url_from_template(template: str, service: str, namespace: str) -> str | None:
    """The template filled in, or None when the template asks for discovery."""
    if not template or template.strip().lower() == DISCOVER:
        return None
    try:
        return template.format(service=service, namespace=namespace).rstrip("/")
    except (KeyError, IndexError, ValueError) as exc:
        raise config.ConfigError(
            f"URL template {template!r} is invalid ({exc!r}); only {{service}} and {{namespace}} "
            f"may appear in it"
        ) from None


# --------------------------------------------------------------------------------------
# Discovery through the Kubernetes API (cached per process)
# --------------------------------------------------------------------------------------

_discovered: dict[tuple[str, str], str] = {}
_discovered_lock = threading.Lock()


def _custom_objects_api() -> Any:
    """A CustomObjectsApi on the in-cluster config, else the local kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    return client.CustomObjectsApi()


def discover_url(service: str, namespace: str) -> str:
    """The Knative Service's cluster address (``status.address.url``, else ``status.url``)."""
    key = (namespace, service)
    with _discovered_lock:
        if key in _discovered:
            return _discovered[key]
    try:
        api = _custom_objects_api()
        obj = api.get_namespaced_custom_object(
            KNATIVE_GROUP, KNATIVE_VERSION, namespace, KNATIVE_PLURAL, service
        )
    except Exception as exc:
        raise NoServiceURLError(_no_url_message(service, namespace, f"{type(exc).__name__}: {exc}")) from None
    status = (obj or {}).get("status") or {}
    url = ((status.get("address") or {}).get("url")) or status.get("url")
    if not url:
        raise NoServiceURLError(
            _no_url_message(
                service, namespace, "the Knative Service has no status.address.url yet (is it Ready?)"
            )
        )
    url = str(url).rstrip("/")
    with _discovered_lock:
        _discovered[key] = url
    return url


def _no_url_message(service: str, namespace: str, why: str) -> str:
    return (
        f"no URL for Knative service {service!r} in namespace {namespace!r}: {why}. Configure one of: "
        f"(1) url= on the task; (2) a URL template in the 'knative' connection's host or in "
        f"[knative] url_template (AIRFLOW__KNATIVE__URL_TEMPLATE, e.g. "
        f"http://{{service}}.{{namespace}}.svc.cluster.local or http://127.0.0.1:8080); "
        f"(3) url_template = {DISCOVER} with Kubernetes API access (in-cluster or kubeconfig) "
        f"to read the Knative Service's status.address.url."
    )


# --------------------------------------------------------------------------------------
# One pooled session per process
# --------------------------------------------------------------------------------------

#: the connections the current call (of this thread or task) sent requests on, so that
#: ``on_kill`` can shut their sockets down and wake a blocked read
_call_connections: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "knative_call_connections", default=None
)


class _TrackedRequests:
    """Mixin for urllib3 connections: record each one a call sends on (for ``cancel``)."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        tracked = _call_connections.get()
        if tracked is not None:
            tracked.append(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _TrackedHTTPConnection(_TrackedRequests, urllib3.connection.HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedRequests, urllib3.connection.HTTPSConnection):
    pass


class _TrackedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def _shutdown(connection: Any) -> None:
    """Wake a thread blocked reading this connection: shutdown, unlike close, interrupts recv."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


_session: requests.Session | None = None
_session_lock = threading.Lock()


def http_session() -> requests.Session:
    """The process-wide session: keep-alive connections are reused across invocations.

    requests' connection pool is thread-safe for concurrent requests on one Session as long as
    nobody mutates the session's settings, which we never do after creating it.
    """
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=64, max_retries=0)
            adapter.poolmanager.pool_classes_by_scheme = {
                "http": _TrackedHTTPPool,
                "https": _TrackedHTTPSPool,
            }
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.trust_env = False  # no proxy detour to an in-cluster or loopback address
            _session = session
        return _session


class InvocationCancelled(Exception):
    """``on_kill`` abandoned the call."""


class KnativeHook(BaseHook):
    """Resolve a Knative Service's URL and call it with explicit timeouts and cold-start retries.

    :param knative_conn_id: a ``knative`` connection; missing is fine ([knative] config is used).
    """

    conn_name_attr = "knative_conn_id"
    default_conn_name = "knative_default"
    conn_type = "knative"
    hook_name = "Knative"

    def __init__(self, knative_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.knative_conn_id = knative_conn_id
        self._settings: ServiceSettings | None = None
        self._cancelled = threading.Event()
        self._connections: list[Any] = []

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the standard form fields (Airflow < 3.2 reads this; newer reads provider info)."""
        return UI_FIELD_BEHAVIOUR

    @property
    def settings(self) -> ServiceSettings:
        if self._settings is None:
            try:
                connection = self.get_connection(self.knative_conn_id)
            except AirflowNotFoundException:
                connection = None  # config-only setups are normal
            self._settings = settings_from(connection)
        return self._settings

    def get_conn(self) -> requests.Session:
        return http_session()

    def resolve_url(self, service: str | None, namespace: str | None = None, url: str | None = None) -> str:
        """The base URL to call: explicit ``url``, else the template, else discovery."""
        if url:
            return url.rstrip("/")
        if not service:
            raise NoServiceURLError("KnativeOperator needs service= or url=; neither was given")
        settings = self.settings
        ns = namespace or settings.namespace
        # the name `airflow-knative deploy` gave the Service: a long one is shortened with a hash
        name = service_name(service)
        return url_from_template(settings.url_template, name, ns) or discover_url(name, ns)

    def invoke(self, request: Request, timeouts: Timeouts | None = None) -> Response:
        """Send ``request``; retry unavailability until the startup deadline; return the final answer."""
        timeouts = timeouts or self.settings.timeouts
        schedule = RetrySchedule(request.url, timeouts.startup_deadline)
        session = http_session()
        while True:
            if self._cancelled.is_set():
                raise InvocationCancelled(f"call to {request.url} abandoned by on_kill")
            schedule.attempt()
            try:
                response = self._attempt(session, request, timeouts)
            except requests.exceptions.ReadTimeout:
                raise read_timeout(request.url, timeouts) from None
            except requests.exceptions.RequestException as exc:
                if self._cancelled.is_set():
                    raise InvocationCancelled(f"call to {request.url} abandoned by on_kill") from None
                if not isinstance(exc, requests.exceptions.ConnectionError):
                    raise InvocationError(f"{request.url}: {type(exc).__name__}: {_short(exc)}") from None
                delay = schedule.failed(f"{type(exc).__name__}: {_short(exc)}")
            else:
                if not schedule.retry_status(response):
                    return response
                delay = schedule.failed(f"HTTP {response.status}")
            self.log.info("%s", schedule.describe(delay))
            if self._cancelled.wait(delay):
                raise InvocationCancelled(f"call to {request.url} abandoned by on_kill")

    def _attempt(self, session: requests.Session, request: Request, timeouts: Timeouts) -> Response:
        token = _call_connections.set(self._connections)
        try:
            raw = session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers(),
                timeout=(timeouts.connect, timeouts.read),
            )
        finally:
            _call_connections.reset(token)
            self._connections.clear()
        return Response(raw.status_code, raw.headers.get("Content-Type", ""), raw.content)

    def cancel(self) -> None:
        """Abandon the call in progress (``on_kill``): no more attempts, its socket shut down.

        Runs in the SIGTERM handler (on the thread blocked in the call) or on another thread;
        either way the blocked read returns, and the attempt ends as cancelled.
        """
        self._cancelled.set()
        for connection in list(self._connections):
            _shutdown(connection)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
