"""``KnativeHook``: where a Knative Service lives, and the call to it, sync and async.

``invoke`` (requests, one pooled session per process, in the worker) and ``ainvoke`` (httpx,
in the triggerer) sit side by side and only drive ``invoker.call_flow``, which makes every
retry decision, so both paths behave the same. Library exceptions become
``invoker.TransportFailure`` in one function per library.

Settings come from the ``knative`` connection when there is one and from the ``[knative]``
config section otherwise, so a deployment that only sets ``AIRFLOW__KNATIVE__*`` (the Helm
values, a local ``airflow-knative serve``) needs no connection at all.

A service name becomes a URL by the first of: an explicit ``url=``; the URL template of the
connection or of ``[knative] url_template`` (``{service}`` and ``{namespace}`` filled in);
the Knative Service's ``status.address.url`` read through the Kubernetes API when the template
is ``discover``. Discovered URLs are cached for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import requests
import urllib3

from airflow_provider_knative import airflow_compat, config, protocol, tracecontext, versions
from airflow_provider_knative.airflow_compat import BaseHook
from airflow_provider_knative.connection import (
    UI_FIELD_BEHAVIOUR,
    ServiceSettings,
    TLSSettings,
    settings_from,
)
from airflow_provider_knative.errors import (
    ClusterError,
    InvocationCancelled,
    InvocationError,
    KnativeError,
    NoServiceURLError,
    TLSError,
)
from airflow_provider_knative.invoker import (
    ClientTiming,
    FailureKind,
    LogFollower,
    Outcome,
    Request,
    Response,
    Send,
    Timeouts,
    TransportFailure,
    Wait,
    call_flow,
)
from airflow_provider_knative.knative.names import service_name

#: url_template value that asks for Kubernetes discovery instead of a template
DISCOVER = "discover"


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


def discover_url(service: str, namespace: str) -> str:
    """The Knative Service's address, read through the Kubernetes API (cached per process)."""
    from airflow_provider_knative.knative.api import discover_url as read_address

    try:
        return read_address(service, namespace)
    except ClusterError as exc:
        raise NoServiceURLError(_no_url_message(service, namespace, str(exc))) from None


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


def _requests_failure(exc: requests.RequestException) -> TransportFailure:
    """requests' exceptions, translated once: did the request leave this process?"""
    detail = f"{type(exc).__name__}: {_short(exc)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransportFailure(FailureKind.NOT_SENT, detail)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return TransportFailure(FailureKind.TIMEOUT, detail)
    if isinstance(exc, requests.exceptions.ConnectionError):
        cause = exc.args[0] if exc.args else None
        reason = getattr(cause, "reason", cause)
        if isinstance(
            reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
        ):
            return TransportFailure(FailureKind.NOT_SENT, detail)
    return TransportFailure(FailureKind.BROKEN, detail)


def _httpx_failure(exc: Exception) -> TransportFailure:
    """httpx's exceptions, translated once: did the request leave this process?"""
    import httpx

    detail = f"{type(exc).__name__}: {_short(exc) or 'connection failed'}"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransportFailure(FailureKind.NOT_SENT, detail)
    if isinstance(exc, httpx.ReadTimeout):
        return TransportFailure(FailureKind.TIMEOUT, detail)
    return TransportFailure(FailureKind.BROKEN, detail)


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
        #: the invocation in progress (``cancel`` asks the runtime to stop it)
        self._current: Request | None = None
        #: sends retried so far because nothing started (cold start, 503 not started): for metrics
        self.retries = 0
        #: where the last call's time went, on this side (``invoke``/``ainvoke`` set it)
        self.timing = ClientTiming(0.0)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the standard form fields (Airflow < 3.2 reads this; newer reads provider info)."""
        return airflow_compat.hook_field_behaviour(UI_FIELD_BEHAVIOUR)

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields (Airflow < 3.2 reads this; newer reads provider info)."""
        from airflow_provider_knative.connection import connection_type_info

        return airflow_compat.connection_form_widgets(connection_type_info()["conn-fields"])

    @property
    def settings(self) -> ServiceSettings:
        """Connection merged over ``[knative]``, read once per hook (sync callers)."""
        if self._settings is None:
            try:
                connection = self.get_connection(self.knative_conn_id)
            except Exception as exc:
                if not airflow_compat.connection_missing(exc):
                    raise
                connection = None  # config-only setups are normal
            self._settings = settings_from(connection)
        return self._settings

    async def asettings(self) -> ServiceSettings:
        """The same settings, read without blocking the triggerer's event loop."""
        if self._settings is None:
            try:
                connection = await self.aget_connection(self.knative_conn_id)
            except Exception as exc:
                if not airflow_compat.connection_missing(exc):
                    raise
                connection = None
            self._settings = await asyncio.to_thread(settings_from, connection)
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

    # ------------------------------------------------------------------ the UI's Test button

    def test_connection(self) -> tuple[bool, str]:
        """Ask the runtime the connection points at whether it is ready (``GET /readyz``).

        The URL is the connection's: a fixed URL as it is, a template with ``{service}`` (or
        ``discover``) filled in with the ``test_service`` extra. Headers and TLS settings apply
        as on a real call. Returns ``(ok, message)``; the message says what answered, or what
        to fix.
        """
        try:
            settings = self.settings
            template = settings.url_template.strip()
            needs_service = "{service}" in template or template.lower() == DISCOVER or not template
            if needs_service and not settings.test_service:
                return False, (
                    f"the URL template {template!r} needs a service name: set the connection's "
                    f"'test_service' extra (Service for the Test button) to one of your Knative "
                    f"Services, or use a fixed URL"
                )
            base = self.resolve_url(settings.test_service or "connection-test", settings.namespace)
        except KnativeError as exc:
            return False, str(exc)
        url = f"{base}{READY_PATH}"
        timeouts = settings.timeouts
        try:
            raw = http_session().get(
                url,
                headers=dict(settings.headers),
                timeout=(timeouts.connect, min(TEST_READ_TIMEOUT_SECONDS, timeouts.read)),
                **settings.tls.requests_kwargs(),
            )
        except requests.RequestException as exc:
            try:
                _raise_if_tls(url, exc)
            except TLSError as tls:
                return False, str(tls)
            return False, (
                f"cannot reach {url}: {type(exc).__name__}: {_short(exc)}. Check the connection's URL "
                f"template, that the service exists (airflow-knative status), and the network path"
            )
        ok, message = _readiness(url, raw.status_code, raw.headers.get("Content-Type", ""), raw.content)
        skew = versions.version_skew(raw.headers.get(versions.RUNTIME_VERSION_HEADER))
        return ok, f"{message}; {skew}" if skew else message

    # ------------------------------------------------------------------ the call, sync and async
    # Both loops only drive invoker.call_flow, which makes every decision; they differ in the
    # HTTP library and in how they wait.

    @tracecontext.traced  # the task's trace context goes with the call (traceparent)
    def invoke(
        self,
        request: Request,
        timeouts: Timeouts | None = None,
        *,
        idempotent: bool = False,
        probe_first: bool = False,
        on_log: Callable[[str], None] | None = None,
    ) -> Response:
        """Send ``request`` and return the final answer (see ``invoker.call_flow`` for retries).

        ``on_log`` receives the call's output while it runs, each piece once, also across a
        broken stream (the runtime's frames). ``self.timing`` says where the time went.
        Raises InvocationError subclasses: ServiceUnavailableError past the startup deadline,
        InvocationTimeout, OutcomeUnknownError, InvocationCancelled after ``cancel()``.
        """
        settings = self.settings
        timeouts = timeouts or settings.timeouts
        flow = call_flow(request, timeouts, idempotent=idempotent, probe_first=probe_first)
        follower = LogFollower(on_log) if on_log is not None else None
        self.timing = ClientTiming(time.monotonic())
        outcome: Outcome = None
        self._current = request
        try:
            while True:
                self._check_cancelled(request)
                try:
                    step = flow.send(outcome)
                except StopIteration as done:
                    return done.value
                if isinstance(step, Wait):
                    self.log.info("%s", step.message)
                    self.retries += step.retry
                    if self._cancelled.wait(step.seconds):
                        self._check_cancelled(request)
                    outcome = None
                else:
                    self.timing.sending(step.request, time.monotonic())
                    outcome = self._send(step, settings, timeouts, follower)
        finally:
            self.timing.ended = time.monotonic()
            self._current = None

    @tracecontext.traced
    async def ainvoke(
        self,
        request: Request,
        timeouts: Timeouts | None = None,
        *,
        idempotent: bool = False,
        probe_first: bool = False,
        on_log: Callable[[str], None] | None = None,
    ) -> Response:
        """The async twin of :meth:`invoke` (httpx, for the triggerer): same flow, same errors."""
        settings = await self.asettings()
        timeouts = timeouts or settings.timeouts
        follower = LogFollower(on_log) if on_log is not None else None
        self.timing = ClientTiming(time.monotonic())
        # no proxies from the environment (in-cluster and loopback addresses); CA bundles from it
        # are honoured through settings.tls
        try:
            async with await _async_client(timeouts, settings.tls) as client:
                return await self._adrive(
                    call_flow(request, timeouts, idempotent=idempotent, probe_first=probe_first),
                    lambda step: self._asend(client, step, settings, follower),
                )
        finally:
            self.timing.ended = time.monotonic()

    @contextlib.asynccontextmanager
    async def astream(
        self, request: Request, timeouts: Timeouts | None = None, *, idempotent: bool = False
    ) -> AsyncIterator[tuple[Response, AsyncIterator[str]]]:
        """Like :meth:`ainvoke`, but a 200 answer is not read whole: yields ``(head, lines)``.

        For the executor's workload streams: the same flow decides every retry until the
        service answers; a 200 answer's body then stays open and arrives line by line. Any
        other final answer is read whole (``head.body``) and ``lines`` is empty.
        """
        import httpx

        settings = await self.asettings()
        timeouts = timeouts or settings.timeouts
        opened: list[Any] = []  # the 200 answer being streamed, at most one

        async def send(step: Send) -> Response | TransportFailure:
            while opened:  # an earlier attempt's stream: its answer was not final
                await opened.pop().aclose()
            req = step.request
            try:
                answer = await client.send(
                    client.build_request(
                        req.method,
                        req.url,
                        content=req.body,
                        headers={**settings.headers, **req.headers(settings.secret)},
                    ),
                    stream=True,
                )
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise InvocationError(f"{req.url}: {type(exc).__name__}: {_short(exc)}") from None
            except httpx.TransportError as exc:
                _raise_if_tls(req.url, exc)
                return _httpx_failure(exc)
            content_type = answer.headers.get("content-type", "")
            if answer.status_code == 200:
                opened.append(answer)
                return Response(200, content_type, b"")
            try:
                return Response(answer.status_code, content_type, await answer.aread())
            except httpx.TransportError as exc:
                return _httpx_failure(exc)
            finally:
                await answer.aclose()

        async with await _async_client(timeouts, settings.tls) as client:
            try:
                head = await self._adrive(call_flow(request, timeouts, idempotent=idempotent), send)
                yield head, (opened[0].aiter_lines() if opened else _no_lines())
            finally:
                for answer in opened:
                    await answer.aclose()

    async def _adrive(
        self, flow: Any, send: Callable[[Send], Awaitable[Response | TransportFailure]]
    ) -> Response:
        """Drive ``flow`` with ``send``, sleeping on the event loop between attempts."""
        outcome: Outcome = None
        while True:
            try:
                step = flow.send(outcome)
            except StopIteration as done:
                return done.value
            if isinstance(step, Wait):
                self.log.info("%s", step.message)
                self.retries += step.retry
                await asyncio.sleep(step.seconds)
                outcome = None
            else:
                self.timing.sending(step.request, time.monotonic())
                outcome = await send(step)

    def _send(
        self, step: Send, settings: ServiceSettings, timeouts: Timeouts, follower: LogFollower | None = None
    ) -> Response | TransportFailure:
        request = follower.prepare(step.request) if follower is not None else step.request
        token = _call_connections.set(self._connections)
        try:
            raw = http_session().request(
                request.method,
                request.url,
                data=request.body,
                headers={**settings.headers, **request.headers(settings.secret)},
                timeout=(timeouts.connect, timeouts.read),
                stream=follower is not None,
                **settings.tls.requests_kwargs(),
            )
            content_type = raw.headers.get("Content-Type", "")
            if follower is None or not _is_frames(content_type):
                return Response(raw.status_code, content_type, raw.content)
            follower.begin()
            try:
                for chunk in raw.iter_content(chunk_size=None):
                    final = follower.feed(chunk)
                    if final is not None:
                        return final
            finally:
                raw.close()
            return TransportFailure(FailureKind.BROKEN, "the stream ended before the call's answer")
        except requests.RequestException as exc:
            self._check_cancelled(request)
            if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
                raise InvocationError(f"{request.url}: {type(exc).__name__}: {_short(exc)}") from None
            _raise_if_tls(request.url, exc)
            return _requests_failure(exc)
        finally:
            _call_connections.reset(token)
            self._connections.clear()

    @staticmethod
    async def _asend(
        client: Any, step: Send, settings: ServiceSettings, follower: LogFollower | None = None
    ) -> Response | TransportFailure:
        import httpx

        request = follower.prepare(step.request) if follower is not None else step.request
        try:
            built = client.build_request(
                request.method,
                request.url,
                content=request.body,
                headers={**settings.headers, **request.headers(settings.secret)},
            )
            answer = await client.send(built, stream=True)
            try:
                content_type = answer.headers.get("content-type", "")
                if follower is None or not _is_frames(content_type):
                    return Response(answer.status_code, content_type, await answer.aread())
                follower.begin()
                async for chunk in answer.aiter_raw():
                    final = follower.feed(chunk)
                    if final is not None:
                        return final
                return TransportFailure(FailureKind.BROKEN, "the stream ended before the call's answer")
            finally:
                await answer.aclose()
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise InvocationError(f"{request.url}: {type(exc).__name__}: {_short(exc)}") from None
        except httpx.TransportError as exc:
            _raise_if_tls(request.url, exc)
            return _httpx_failure(exc)

    def _check_cancelled(self, request: Request) -> None:
        if self._cancelled.is_set():
            raise InvocationCancelled(f"call to {request.url} abandoned by on_kill")

    def cancel(self) -> None:
        """Abandon the call in progress (``on_kill``): no more attempts, its socket shut down,
        and the runtime asked to stop it on whichever replica runs it.

        Runs in the SIGTERM handler (on the thread blocked in the call) or on another thread;
        either way the blocked read returns, and the attempt ends as cancelled.
        """
        self._cancelled.set()
        for connection in list(self._connections):
            _shutdown(connection)
        current = self._current
        if current is not None and current.invocation_id:
            self._send_cancel(current)

    def _send_cancel(self, request: Request) -> None:
        """``DELETE /invocations/<id>``, best effort and briefly (a task being killed cannot wait)."""
        settings = self.settings
        cancel = request.cancel_request()
        try:
            answer = http_session().delete(
                cancel.url,
                headers={**settings.headers, **cancel.headers(settings.secret)},
                timeout=(min(settings.timeouts.connect, CANCEL_TIMEOUT_SECONDS), CANCEL_TIMEOUT_SECONDS),
                **settings.tls.requests_kwargs(),
            )
            self.log.info(
                "asked %s to stop invocation %s: HTTP %d",
                cancel.url,
                request.invocation_id,
                answer.status_code,
            )
        except requests.RequestException as exc:
            self.log.warning(
                "could not ask %s to stop invocation %s: %s", cancel.url, request.invocation_id, exc
            )

    async def acancel(self, request: Request) -> None:
        """The async twin of the cancel request (a deferred task marked failed: ``Trigger.on_kill``)."""
        import httpx

        settings = await self.asettings()
        cancel = request.cancel_request()
        timeouts = Timeouts(
            min(settings.timeouts.connect, CANCEL_TIMEOUT_SECONDS), CANCEL_TIMEOUT_SECONDS, 0.0
        )
        try:
            async with await _async_client(timeouts, settings.tls) as client:
                answer = await client.delete(
                    cancel.url, headers={**settings.headers, **cancel.headers(settings.secret)}
                )
            self.log.info(
                "asked %s to stop invocation %s: HTTP %d",
                cancel.url,
                request.invocation_id,
                answer.status_code,
            )
        except httpx.HTTPError as exc:
            self.log.warning(
                "could not ask %s to stop invocation %s: %s", cancel.url, request.invocation_id, exc
            )


async def _async_client(timeouts: Timeouts, tls: TLSSettings) -> Any:
    """An httpx client with the call's timeouts and TLS settings (its SSL context is built off
    the event loop: loading a CA bundle reads files). No proxies from the environment."""
    import httpx

    verify = await asyncio.to_thread(tls.ssl_context)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeouts.read, connect=timeouts.connect), trust_env=False, verify=verify
    )


def _is_frames(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == protocol.FRAMES_CONTENT_TYPE


async def _no_lines() -> AsyncIterator[str]:
    return
    yield


#: how long a cancel request (``on_kill``) may take: the task is being killed
CANCEL_TIMEOUT_SECONDS = 5.0
#: the runtime's readiness endpoint, which the Test button calls
READY_PATH = "/readyz"
#: how long the Test button waits for the answer (a cold Knative Service may be scaling up)
TEST_READ_TIMEOUT_SECONDS = 30.0


def _readiness(url: str, status: int, content_type: str, body: bytes) -> tuple[bool, str]:
    """The Test button's verdict on the runtime's ``/readyz`` answer."""
    import json

    data: Any = None
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    if not isinstance(data, dict):
        return False, (
            f"{url} answered HTTP {status} ({content_type or 'no content type'}): "
            f"{body[:300].decode('utf-8', 'replace') or '(empty)'}; this is not an airflow-knative runtime "
            f"(airflow-knative serve answers JSON there). Check the URL template and the headers extra"
        )
    if status == 200 and data.get("status") == "ready":
        return True, f"{url}: the runtime is ready, serving {data.get('functions', '?')} function(s)"
    errors = "; ".join(f"{e.get('file')}: {e.get('error')}" for e in data.get("import_errors") or [])
    return False, (
        f"{url} answered HTTP {status}: the runtime is not ready ({data.get('reason', data)})"
        + (f"; import errors: {errors}" if errors else "")
    )


def _ssl_error(exc: BaseException) -> BaseException | None:
    """The TLS handshake error somewhere in an exception's chain (causes, contexts, wrapped args).

    A connection that merely ends (``SSLEOFError``, ``SSLZeroReturnError``, a syscall error) is
    not one: over TLS that is how a pod dying mid-call looks, and the retry rules handle it.
    """
    import ssl

    ended = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)

    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError) and not isinstance(item, ended):
            return item
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None


def _raise_if_tls(url: str, exc: BaseException) -> None:
    """A TLS failure is final (the next attempt fails alike): raise it with what to fix."""
    cause = _ssl_error(exc)
    if cause is None:
        return
    raise TLSError(
        f"{url}: TLS handshake failed ({type(cause).__name__}: {_short(cause)}). If the service's "
        f"certificate is signed by a private CA, give that CA's PEM bundle in the 'knative' "
        f"connection's ca_bundle extra (or $REQUESTS_CA_BUNDLE / $SSL_CERT_FILE); if it asks for a "
        f"client certificate, set the client_cert and client_key extras"
    ) from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."
