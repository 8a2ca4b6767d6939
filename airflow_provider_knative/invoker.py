"""One HTTP invocation of a Knative Service: what to send, what is safe to retry, how to read it.

Every decision lives here, once, free of I/O: :func:`call_flow` is a generator that yields
what to do next (:class:`Send` a request, :class:`Wait` a while) and is sent back what
happened (a :class:`Response` or a :class:`TransportFailure`), the way httpx's auth flows
work. ``KnativeHook.invoke`` (requests) and ``KnativeHook.ainvoke`` (httpx, in the
triggerer) only drive it, so the sync and deferrable paths cannot drift apart.

The retry rule is *at most once*. A request is sent again only when it provably did not
start the function:

* the connection could not be made (refused, unreachable, connect timeout);
* the runtime itself answered that it did not start it (503 ``NotReady``/``ShuttingDown``);
* a gateway answered 503 without having forwarded it (Knative's activator or queue-proxy
  overloaded, Envoy's "no healthy upstream"); a 503 that reports a reset or disconnect of the
  upstream, a 502 and a 504 may have been forwarded, so they are not in this list.

When the request may have reached the function (the connection broke after it was sent, a
502/504, a reset), the flow asks the runtime about the invocation's id instead of sending it
again (``GET /invocations/<id>``): the recorded outcome, or "still running" (then it waits for
it), or "unknown", which fails the try with :class:`OutcomeUnknownError`; Airflow's task
retries decide what happens next. ``idempotent=True`` allows sending it again instead.
"""

from __future__ import annotations

import enum
import json
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from airflow_provider_knative import codec, protocol
from airflow_provider_knative.errors import (
    HTTPStatusError,
    InvocationError,
    InvocationTimeout,
    OutcomeUnknownError,
    RemoteFunctionError,
    ServiceUnavailableError,
)

#: gateway statuses Knative answers while a revision is starting, scaling down or overloaded
GATEWAY_STATUSES = frozenset({502, 503, 504})
#: words in a gateway's 503 that mean it lost a connection it had forwarded on
_FORWARDED_WORDS = ("reset", "disconnect", "terminat", "broken pipe")
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
#: how long the runtime may hold one ``GET /invocations/<id>`` open waiting for the outcome
POLL_WAIT_SECONDS = 30.0
#: how much of an unexpected response body an error message quotes
EXCERPT_CHARS = 2000


@dataclass(frozen=True)
class Timeouts:
    """Explicit limits of one call: TCP connect, waiting for the answer, retrying unavailability."""

    connect: float
    read: float
    startup_deadline: float

    def to_dict(self) -> dict[str, float]:
        return {"connect": self.connect, "read": self.read, "startup_deadline": self.startup_deadline}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timeouts:
        return cls(float(data["connect"]), float(data["read"]), float(data["startup_deadline"]))


@dataclass(frozen=True)
class Request:
    """What one invocation sends. ``secret`` never leaves the process (not in trigger kwargs).

    ``invocation_id`` is set for calls to the provider's runtime: it lets the flow ask about
    a call whose connection broke instead of running it again.
    """

    url: str
    body: bytes
    method: str = "POST"
    content_type: str = protocol.CONTENT_TYPE
    secret: bytes | None = field(default=None, repr=False)
    invocation_id: str = ""
    headers_extra: Mapping[str, str] = field(default_factory=dict)

    def headers(self, secret: bytes | None = None, now: float | None = None) -> dict[str, str]:
        """Headers for one attempt, signed afresh (a retry after a long cold start must not carry
        a timestamp or nonce the runtime has already seen)."""
        headers = {"Accept": f"{protocol.CONTENT_TYPE}, */*;q=0.5", **self.headers_extra}
        if self.body or self.method not in ("GET", "HEAD"):
            headers["Content-Type"] = self.content_type
        key = self.secret or secret
        if key:
            path = _path_of(self.url)
            headers.update(protocol.sign(key, self.body, method=self.method, path=path, now=now))
        return headers

    def status_request(self, wait: float) -> Request:
        """``GET /invocations/<id>``: the outcome of this invocation, without starting it."""
        base = self.url[: -len(protocol.INVOKE_PATH)] if self.url.endswith(protocol.INVOKE_PATH) else self.url
        url = f"{base}{protocol.INVOCATIONS_PATH}{quote(self.invocation_id, safe='')}?wait={wait:g}"
        return replace(self, url=url, body=b"", method="GET")


def _path_of(url: str) -> str:
    """The path (and query) the server sees, which the signature covers."""
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


@dataclass
class Response:
    """A final HTTP answer. ``status_code``, ``content``, ``text`` and ``json()`` read as on a
    ``requests.Response``, so an ``HttpOperator``-style ``response_check`` works unchanged."""

    status: int
    content_type: str
    body: bytes

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def content(self) -> bytes:
        return self.body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class FailureKind(enum.Enum):
    """What a transport failure says about whether the request reached the service."""

    NOT_SENT = "not sent"  # no connection was made: the function cannot have started
    TIMEOUT = "read timeout"  # sent, and no answer within the read timeout
    BROKEN = "broken"  # sent (perhaps), then the connection broke: it may have run


@dataclass(frozen=True)
class TransportFailure:
    """A failed attempt, translated from the HTTP library at one boundary per library."""

    kind: FailureKind
    detail: str


@dataclass(frozen=True)
class Send:
    """Flow step: send this request and report the Response or TransportFailure."""

    request: Request


@dataclass(frozen=True)
class Wait:
    """Flow step: wait this many seconds (``message`` says why, for the task log)."""

    seconds: float
    message: str


Outcome = Response | TransportFailure | None
Flow = Generator[Send | Wait, Outcome, Response]


class RetrySchedule:
    """Decides, after each failed attempt, how long to wait, or that the deadline has passed.

    Full jitter (a random wait between half and all of the exponential step) keeps a burst of
    tasks that all hit a cold service from retrying in lockstep. ``clock`` and ``rng`` are
    injectable so the schedule can be tested without sleeping.
    """

    def __init__(
        self,
        url: str,
        deadline_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self.deadline_seconds = deadline_seconds
        self.attempts = 0
        self.last_reason = ""
        self._clock = clock
        self._rng = rng
        self._start = clock()

    def attempt(self) -> None:
        """Count an attempt about to be made."""
        self.attempts += 1

    def failed(self, reason: str) -> float:
        """Record a retryable failure; the seconds to wait, or raise once the deadline is spent."""
        self.last_reason = reason
        elapsed = self._clock() - self._start
        remaining = self.deadline_seconds - elapsed
        if remaining <= 0:
            raise ServiceUnavailableError(
                f"{self.url} did not become available: {self.attempts} attempt(s) over {elapsed:.1f} s "
                f"(startup deadline {self.deadline_seconds:g} s, [knative] startup_deadline_seconds); "
                f"last: {reason}. Check that the Knative Service exists and is Ready "
                f"(airflow-knative status) and that the URL is right."
            )
        step = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (self.attempts - 1))
        return min(remaining, step * (0.5 + 0.5 * self._rng()))

    def describe(self, delay: float) -> str:
        """The log line for a retry, the same in the worker and the triggerer."""
        return (
            f"{self.url} unavailable ({self.last_reason}), attempt {self.attempts}; retrying in {delay:.2f} s"
        )


def _runtime_error(response: Response) -> protocol.RemoteError | None:
    """The runtime's error in a protocol answer, if that is what the response is."""
    if not _is_protocol_body(response):
        return None
    try:
        return protocol.Result.decode(response.body).error
    except (codec.CodecError, protocol.ProtocolError):
        return None


def not_started(response: Response) -> bool:
    """Whether a gateway-status answer proves the function was not started (see module doc)."""
    if response.status not in GATEWAY_STATUSES:
        return False
    error = _runtime_error(response)
    if error is not None:
        return error.type in protocol.NOT_STARTED_ERRORS
    if response.status != 503:
        return False  # 502/504: a proxy forwarded it and lost it, or gave up waiting
    text = response.body[:EXCERPT_CHARS].decode("utf-8", "replace").lower()
    return not any(word in text for word in _FORWARDED_WORDS)


def _reason(outcome: Response | TransportFailure) -> str:
    if isinstance(outcome, TransportFailure):
        return outcome.detail
    error = _runtime_error(outcome)
    return f"HTTP {outcome.status}" + (f" {error.type}: {error.message}" if error else "")


def read_timeout(url: str, timeouts: Timeouts) -> InvocationTimeout:
    return InvocationTimeout(
        f"{url} did not answer within {timeouts.read:g} s ([knative] invoke_timeout_seconds or "
        f"invoke_timeout_seconds=); the call was abandoned"
    )


def call_flow(
    request: Request,
    timeouts: Timeouts,
    *,
    idempotent: bool = False,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> Flow:
    """The decisions of one invocation, as a generator (see the module docstring)."""

    def new_schedule() -> RetrySchedule:
        return RetrySchedule(request.url, timeouts.startup_deadline, clock=clock, rng=rng)

    schedule = new_schedule()
    started = clock()
    current = request
    asking = False  # sending GET /invocations/<id> instead of the invocation itself
    cause = ""  # why we are asking
    poll_wait = min(POLL_WAIT_SECONDS, max(0.1, timeouts.read / 2))

    def ask(reason: str) -> None:
        nonlocal asking, current, schedule, cause
        asking, current, schedule, cause = True, request.status_request(poll_wait), new_schedule(), reason

    while True:
        if clock() - started > timeouts.read + timeouts.startup_deadline:
            raise read_timeout(request.url, timeouts)
        schedule.attempt()
        outcome = yield Send(current)
        assert outcome is not None
        if isinstance(outcome, Response):
            if asking:
                if outcome.status == 202:
                    yield Wait(0.0, f"{request.url}: invocation {request.invocation_id} is still running")
                    continue
                error = _runtime_error(outcome)
                if outcome.status == 404 and error is not None and error.type == protocol.UNKNOWN_INVOCATION:
                    raise _unknown_outcome(request, cause)
                if outcome.status not in GATEWAY_STATUSES:
                    return outcome  # the outcome the runtime recorded
            elif outcome.status not in GATEWAY_STATUSES:
                return outcome
            elif not (not_started(outcome) or idempotent):
                if not request.invocation_id:
                    return outcome  # a plain HTTP service answered 502/503/504: that is its answer
                ask(_reason(outcome))
                continue
        elif outcome.kind is FailureKind.TIMEOUT:
            raise read_timeout(request.url, timeouts)
        elif outcome.kind is FailureKind.BROKEN and not (idempotent or asking):
            if not request.invocation_id:
                raise _unknown_outcome(request, outcome.detail)
            ask(outcome.detail)
            continue
        try:
            delay = schedule.failed(_reason(outcome))
        except ServiceUnavailableError as exc:
            if asking:
                raise _unknown_outcome(request, f"{cause}; then: {exc}") from None
            raise
        yield Wait(delay, schedule.describe(delay))


def _unknown_outcome(request: Request, reason: str) -> OutcomeUnknownError:
    if request.invocation_id:
        known = (
            f"and the runtime that answered has no record of invocation {request.invocation_id!r}: it "
            "never arrived, or ran on a pod that has since gone"
        )
    else:
        known = "and this service keeps no record of calls"
    return OutcomeUnknownError(
        f"{request.url}: the connection broke after the request was sent ({reason}), {known}. It is "
        f"not sent again, so the function never runs twice; Airflow's task retries decide. Set "
        f"idempotent=True on the task if running it twice is harmless."
    )


# --------------------------------------------------------------------------------------
# Reading the final answer
# --------------------------------------------------------------------------------------


def _excerpt(response: Response) -> str:
    text = response.body[:EXCERPT_CHARS].decode("utf-8", errors="replace")
    more = "..." if len(response.body) > EXCERPT_CHARS else ""
    return f"{text}{more}" if text else "(empty body)"


def _is_protocol_body(response: Response) -> bool:
    return response.content_type.split(";")[0].strip().lower() == protocol.CONTENT_TYPE


def remote_function_error(result: protocol.Result) -> RemoteFunctionError:
    error = result.error or protocol.RemoteError("RemoteError", "the runtime reported an error")
    text = f"{error.type}: {error.message}"
    if error.traceback:
        text += f"\n---- remote traceback ----\n{error.traceback.rstrip()}\n---- end of remote traceback ----"
    return RemoteFunctionError(result, text)


def read_result(response: Response, url: str) -> protocol.Result:
    """The runtime's Result, or an error that says what came back instead.

    Function errors arrive as HTTP 500 with a Result body: those raise RemoteFunctionError
    (the user's error, with the remote traceback). A 409 is a version skew, a 4xx a refused
    request; the runtime's message is quoted.
    """
    if _is_protocol_body(response):
        try:
            result = protocol.Result.decode(response.body)
        except (codec.CodecError, protocol.ProtocolError) as exc:
            raise InvocationError(
                f"{url} answered HTTP {response.status} with a malformed result: {exc}"
            ) from None
        if result.ok and response.status == 200:
            return result
        if response.status in (200, 500) and result.status == "error":
            raise remote_function_error(result)
        error = result.error or protocol.RemoteError("Error", "(no message)")
        raise HTTPStatusError(
            f"{url} refused the invocation with HTTP {response.status} {error.type}: {error.message}",
            response.status,
        )
    hint = {
        401: " (signature refused: set the same [knative] signing_secret in Airflow and the runtime)",
        404: " (no runtime there? a Knative runtime serves POST " + protocol.INVOKE_PATH + ")",
        409: " (the deployed function differs from this DAG: redeploy the service image)",
        413: " (request too large: raise [knative] max_body_bytes or pass large values through XCom)",
    }.get(response.status, "")
    raise HTTPStatusError(
        f"{url} answered HTTP {response.status}{hint}: {_excerpt(response)}", response.status
    )


def read_raw(response: Response, url: str) -> Any:
    """The answer of a non-Python service: parsed JSON, text, or bytes; an error for >= 400."""
    if response.status >= 400:
        raise HTTPStatusError(f"{url} answered HTTP {response.status}: {_excerpt(response)}", response.status)
    media = response.content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return json.loads(response.body) if response.body else None
        except ValueError as exc:
            raise InvocationError(f"{url} answered {media} that is not valid JSON: {exc}") from None
    if media.startswith("text/") or media in ("", "application/xml"):
        return response.body.decode("utf-8", errors="replace")
    if media == protocol.CONTENT_TYPE:
        return codec.loads(response.body)
    return bytes(response.body)


def encode_payload(payload: Any, content_type: str | None) -> tuple[bytes, str]:
    """Body and content type for a non-Python service: bytes/str as they are, else JSON."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), content_type or "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode(), content_type or "text/plain; charset=utf-8"
    if payload is None:
        return b"", content_type or "application/json"
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"payload cannot be sent as JSON ({exc}); pass bytes or str with content_type= for other formats"
        ) from None
    return text.encode(), content_type or "application/json"
