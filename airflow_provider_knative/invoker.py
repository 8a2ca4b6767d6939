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
again (``GET /invocations/<id>?attempt=N``), and any replica answers from the call's record in
the object store: the recorded outcome (the function's answer, or a definite failure: the pod
running it stopped, or it was cancelled), "still running" (then it waits for it), or "not
started": the query declared that attempt void, so a late copy can never start, and the flow
sends the call again as attempt ``N+1``. "Unknown" (:class:`OutcomeUnknownError`, Airflow's
task retries decide) remains only where the record cannot be read, or where the runtime keeps
no record in a store. ``idempotent=True`` allows sending it again instead.
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
    a call whose connection broke instead of running it again. ``attempt`` numbers the sends
    of one invocation that the runtime's record tells apart (see :func:`call_flow`).
    """

    url: str
    body: bytes
    method: str = "POST"
    content_type: str = protocol.CONTENT_TYPE
    secret: bytes | None = field(default=None, repr=False)
    invocation_id: str = ""
    headers_extra: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1

    def headers(self, secret: bytes | None = None, now: float | None = None) -> dict[str, str]:
        """Headers for one attempt, signed afresh (a retry after a long cold start must not carry
        a timestamp or nonce the runtime has already seen)."""
        headers = {"Accept": f"{protocol.CONTENT_TYPE}, */*;q=0.5", **self.headers_extra}
        if self.body or self.method not in ("GET", "HEAD", "DELETE"):
            headers["Content-Type"] = self.content_type
        key = self.secret or secret
        if key:
            path = _path_of(self.url)
            headers.update(protocol.sign(key, self.body, method=self.method, path=path, now=now))
        return headers

    def at_attempt(self, attempt: int) -> Request:
        """This invocation sent as attempt ``attempt`` (``POST /invoke?attempt=N``)."""
        return replace(self, url=protocol.with_attempt(self.base_url, attempt), attempt=attempt)

    @property
    def base_url(self) -> str:
        """The URL without the attempt (the service's invocation URL)."""
        return self.url.split("?", 1)[0] if self.invocation_id else self.url

    def status_request(self, wait: float, *, probe: bool = False) -> Request:
        """``GET /invocations/<id>``: the outcome of this invocation, without starting it.

        Asked about attempt ``self.attempt``: an attempt nobody claimed is declared void (so it
        can never start) unless ``probe`` (look without writing anything, before a first send).
        """
        return replace(self, url=self._record_url(f"wait={wait:g}", probe=probe), body=b"", method="GET")

    def cancel_request(self) -> Request:
        """``DELETE /invocations/<id>``: stop this invocation on whichever replica runs it."""
        return replace(self, url=self._record_url(""), body=b"", method="DELETE")

    def _record_url(self, query: str, *, probe: bool = False) -> str:
        base = self.base_url
        route = protocol.record_path(base)
        for suffix in (protocol.INVOKE_PATH, protocol.WORKLOADS_PATH):
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        url = f"{base}{route}{quote(self.invocation_id, safe='')}"
        params = [query] if query else []
        if probe:
            params.append(f"{protocol.PROBE_PARAM}=1")
        url = f"{url}?{'&'.join(params)}" if params else url
        return protocol.with_attempt(url, self.attempt)


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


@dataclass
class ClientTiming:
    """The caller's side of where a call's time went (monotonic seconds): from the first attempt
    (``started``) to the send of the attempt that ran (``sent``: before it, the Service was
    waited for: connection retries, 503s, scale from zero) to the answer (``ended``)."""

    started: float
    sent: float = 0.0
    ended: float = 0.0
    #: requests sent up to the one that ran (refused connections, 503s, a restored call's probe)
    attempts: int = 0
    _sends: int = 0

    def sending(self, request: Request, now: float) -> None:
        self._sends += 1
        if request.method != "GET":  # the call itself, not a status query about it
            self.sent = now
            self.attempts = self._sends

    @property
    def waiting(self) -> float:
        return max(0.0, (self.sent or self.started) - self.started)

    @property
    def total(self) -> float:
        return max(0.0, self.ended - self.started)

    def to_dict(self) -> dict[str, float]:
        return {"waiting": self.waiting, "total": self.total, "attempts": float(self.attempts)}


def timing_line(client: Mapping[str, float], pod: Mapping[str, float], replica: str, where: str) -> str:
    """The one line a call's task log ends with: where its time went, adding up to its total."""

    def size(n: float) -> str:
        value = float(n)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or unit == "GiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} GiB"  # pragma: no cover

    total, waiting = client.get("total", 0.0), client.get("waiting", 0.0)
    parts = {key: pod.get(key, 0.0) for key in ("queued", "fetch", "call", "spill")}
    other = max(0.0, total - waiting - sum(parts.values()))
    attempts = int(client.get("attempts", 1))
    return (
        f"Knative call to {where}: {total:.2f} s = waiting for the Service {waiting:.2f} s "
        f"({attempts} attempt{'s' if attempts != 1 else ''}) + queued in the pod {parts['queued']:.2f} s "
        f"+ fetching arguments {parts['fetch']:.2f} s ({size(pod.get('fetched_bytes', 0))}) "
        f"+ the function {parts['call']:.2f} s + spilling the result {parts['spill']:.2f} s "
        f"({size(pod.get('spilled_bytes', 0))}) + transfer and encoding {other:.2f} s; "
        f"ran on {replica or 'an unnamed pod'}"
    )


class LogFollower:
    """A call's output as the runtime streams it (``protocol.FRAMES_CONTENT_TYPE``): each new
    piece goes to ``on_log`` once, in order, and the follower remembers how far it got, so a
    stream that broke is resumed from there (``GET /invocations/<id>?stream=1&from=N``) on
    whichever replica answers, and no piece is shown twice. No I/O: the hook feeds it bytes.
    """

    def __init__(self, on_log: Callable[[str], None]) -> None:
        self.on_log = on_log
        self.offset = 0
        self._reader = protocol.FrameReader()

    def prepare(self, request: Request) -> Request:
        """The request as sent by a client that follows the output: frames accepted, and a
        status query asks for the output from where this follower is."""
        if not request.invocation_id:
            return request
        headers = {
            **request.headers_extra,
            "Accept": f"{protocol.FRAMES_CONTENT_TYPE}, {protocol.CONTENT_TYPE};q=0.9",
        }
        url = request.url
        if request.method == "GET" and protocol.INVOCATIONS_PATH in url:
            joiner = "&" if "?" in url else "?"
            url = f"{url}{joiner}{protocol.STREAM_PARAM}=1&{protocol.FROM_PARAM}={self.offset}"
        return replace(request, url=url, headers_extra=headers)

    def begin(self) -> None:
        """A new answer starts (a fresh stream of frames)."""
        self._reader = protocol.FrameReader()

    def feed(self, data: bytes) -> Response | None:
        """Bytes of a frames answer: the final Response once its end frame arrives."""
        for frame in self._reader.feed(data):
            if "log" in frame:
                self._show(str(frame["log"]), int(frame.get("at", self.offset)))
            else:
                end = frame["end"]
                return Response(int(end["status"]), protocol.CONTENT_TYPE, bytes(end["body"]))
        return None

    def _show(self, text: str, at: int) -> None:
        data = text.encode("utf-8", "replace")
        if at + len(data) <= self.offset:
            return  # shown before the stream broke
        if at < self.offset:
            data = data[self.offset - at :]
        self.offset = max(self.offset, at) + len(data)
        self.on_log(data.decode("utf-8", "replace"))


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
    """Flow step: wait this many seconds (``message`` says why, for the task log); ``retry``:
    before sending again what did not start (not a poll of a call that runs)."""

    seconds: float
    message: str
    retry: bool = True


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


def next_attempt(response: Response) -> int:
    """The attempt to send again with, when the runtime says no attempt of the call started
    (``Result.status == "not_started"``); 0 otherwise."""
    if not _is_protocol_body(response) or response.status not in (404, 409):
        return 0
    try:
        result = protocol.Result.decode(response.body)
    except (codec.CodecError, protocol.ProtocolError):
        return 0
    return result.next_attempt if result.status == "not_started" and result.next_attempt > 0 else 0


def call_flow(
    request: Request,
    timeouts: Timeouts,
    *,
    idempotent: bool = False,
    probe_first: bool = False,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> Flow:
    """The decisions of one invocation, as a generator (see the module docstring).

    ``probe_first``: ask where the invocation stands before sending it (a restored trigger:
    an earlier triggerer may have sent it already); it is sent only if no attempt of it
    started, and otherwise followed to its outcome.
    """

    def new_schedule() -> RetrySchedule:
        return RetrySchedule(request.url, timeouts.startup_deadline, clock=clock, rng=rng)

    schedule = new_schedule()
    started = clock()
    current = request
    asking = False  # sending GET /invocations/<id> instead of the invocation itself
    cause = ""  # why we are asking
    poll_wait = min(POLL_WAIT_SECONDS, max(0.1, timeouts.read / 2))
    sent = request  # the attempt last sent (or, before any, the first)

    def ask(reason: str, *, probe: bool = False) -> None:
        nonlocal asking, current, schedule, cause
        asking, current, schedule, cause = (
            True,
            sent.status_request(0.0 if probe else poll_wait, probe=probe),
            new_schedule(),
            reason,
        )

    def send(attempt: int) -> None:
        nonlocal asking, current, schedule, sent
        sent = request.at_attempt(attempt)
        asking, current, schedule = False, sent, new_schedule()

    if probe_first and request.invocation_id:
        ask("restored: it may have been sent before", probe=True)

    while True:
        if clock() - started > timeouts.read + timeouts.startup_deadline:
            raise read_timeout(request.url, timeouts)
        schedule.attempt()
        outcome = yield Send(current)
        assert outcome is not None
        if isinstance(outcome, TransportFailure) and outcome.kind is FailureKind.TIMEOUT:
            raise read_timeout(request.url, timeouts)
        resend = next_attempt(outcome) if isinstance(outcome, Response) and request.invocation_id else 0
        if resend:  # provably never started anywhere: send it (again), as that attempt
            send(resend)
            continue
        step = _next_step(
            outcome, request, asking=asking, probing=PROBE_QUERY in current.url, idempotent=idempotent
        )
        if step is _Next.FINAL:
            assert isinstance(outcome, Response)
            if idempotent and request.invocation_id and _pod_gone(outcome):
                send(sent.attempt + 1)  # running it again is harmless: do, rather than fail the try
                continue
            return outcome
        if step is _Next.UNKNOWN:
            raise _unknown_outcome(request, cause if asking else _reason(outcome))
        if step is _Next.POLL:
            yield Wait(
                0.0, f"{request.url}: invocation {request.invocation_id} is still running", retry=False
            )
        elif step is _Next.FOLLOW:
            ask(cause)  # it runs: follow it (from now on, an attempt nobody claimed is voided)
        elif step is _Next.SEND:
            send(sent.attempt)  # a runtime without records: its memory cannot tell
        elif step is _Next.ASK:
            ask(_reason(outcome))
        if step is not _Next.RETRY:
            continue
        try:
            delay = schedule.failed(_reason(outcome))
        except ServiceUnavailableError as exc:
            if asking:
                raise _unknown_outcome(request, f"{cause}; then: {exc}") from None
            raise
        yield Wait(delay, schedule.describe(delay))


def _pod_gone(response: Response) -> bool:
    """Whether the answer says the pod running the call went away under it."""
    error = _runtime_error(response)
    return error is not None and error.type in protocol.POD_GONE_ERRORS


class _Next(enum.Enum):
    """What an answer means for the flow (see :func:`_read_answer`)."""

    FINAL = "the answer is the outcome"
    RETRY = "nothing started: send the same again after a backoff"
    ASK = "it may have started: ask about it"
    POLL = "it is still running: ask again"
    FOLLOW = "a probe found it running: follow it"
    SEND = "a probe found no record to consult: send it"
    UNKNOWN = "nobody can say how it ended"


def _next_step(
    outcome: Response | TransportFailure, request: Request, *, asking: bool, probing: bool, idempotent: bool
) -> _Next:
    """The flow's reading of an attempt's result (a pure decision: see the module docstring)."""
    if isinstance(outcome, TransportFailure):
        if outcome.kind is FailureKind.BROKEN and not (idempotent or asking):
            return _Next.ASK if request.invocation_id else _Next.UNKNOWN
        return _Next.RETRY
    response = outcome
    if asking:
        if response.status == 202:
            return _Next.FOLLOW if probing else _Next.POLL
        error = _runtime_error(response)
        if response.status == 404 and error is not None and error.type == protocol.UNKNOWN_INVOCATION:
            return _Next.SEND if probing else _Next.UNKNOWN
        return _Next.RETRY if response.status in GATEWAY_STATUSES else _Next.FINAL
    if response.status not in GATEWAY_STATUSES:
        return _Next.FINAL
    if not_started(response) or idempotent:
        return _Next.RETRY
    # a plain HTTP service answered 502/503/504: that is its answer
    return _Next.ASK if request.invocation_id else _Next.FINAL


#: how a probe's URL is told apart (``Request.status_request(probe=True)``)
PROBE_QUERY = f"{protocol.PROBE_PARAM}=1"


def _unknown_outcome(request: Request, reason: str) -> OutcomeUnknownError:
    if request.invocation_id and "RecordUnavailable" in reason:
        known = (
            f"and the record of invocation {request.invocation_id!r} in the object store could not be "
            "read, so nobody can tell whether it ran"
        )
    elif request.invocation_id:
        known = (
            f"and the runtime that answered has no record of invocation {request.invocation_id!r}: it "
            "never arrived, or ran on a pod that has since gone (a runtime without a store keeps its "
            "record in memory: set [knative] xcom_store_url on it)"
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
