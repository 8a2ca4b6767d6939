"""One HTTP invocation of a Knative Service: what to send, when to retry, how to read the answer.

The sync path (``KnativeHook`` with ``requests``) and the async path (``KnativeInvocationTrigger``
with ``httpx``) each own only their I/O loop of a dozen lines; every decision lives here, once:

* :class:`Request` - URL, method, body and headers, signed afresh on every attempt (a retry
  after a long cold start must not carry a timestamp the runtime already considers stale);
* :class:`RetrySchedule` - connection errors and 502/503/504 (Knative's activator and
  queue-proxy during a cold start, scale-down or overload) are retried with exponential
  backoff and full jitter until the startup deadline; anything else is final;
* :func:`read_result` / :func:`read_raw` - turn the final answer into a value or a clear error.

Nothing here imports Airflow, so the errors are plain exceptions; the operator turns them
into task failures.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_knative import codec, protocol

#: gateway statuses Knative answers while a revision is starting, scaling down or overloaded
RETRY_STATUSES = frozenset({502, 503, 504})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
#: how much of an unexpected response body an error message quotes
EXCERPT_CHARS = 2000


class InvocationError(Exception):
    """The service could not be called or answered something that is not a result."""


class ServiceUnavailableError(InvocationError):
    """The service kept refusing connections or answering 502/503/504 until the deadline."""


class InvocationTimeout(InvocationError):
    """The function did not answer within the read timeout; the call is abandoned, not retried."""


class HTTPStatusError(InvocationError):
    """A final HTTP status that is neither a result nor worth retrying (4xx, bare 500, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteFunctionError(InvocationError):
    """The function raised: carries the remote type, message, traceback and captured logs."""

    def __init__(self, result: protocol.Result) -> None:
        self.result = result
        error = result.error or protocol.RemoteError("RemoteError", "the runtime reported an error")
        self.remote = error
        text = f"{error.type}: {error.message}"
        if error.traceback:
            text += (
                f"\n---- remote traceback ----\n{error.traceback.rstrip()}\n---- end of remote traceback ----"
            )
        super().__init__(text)


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
    """What one invocation sends. ``secret`` never leaves the process (not in trigger kwargs)."""

    url: str
    body: bytes
    method: str = "POST"
    content_type: str = protocol.CONTENT_TYPE
    secret: bytes | None = field(default=None, repr=False)

    def headers(self, now: float | None = None) -> dict[str, str]:
        headers = {"Content-Type": self.content_type, "Accept": f"{protocol.CONTENT_TYPE}, */*;q=0.5"}
        if self.secret:
            headers.update(protocol.sign(self.secret, self.body, now=now))
        return headers


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes


def read_timeout(url: str, timeouts: Timeouts) -> InvocationTimeout:
    return InvocationTimeout(
        f"{url} did not answer within {timeouts.read:g} s ([knative] invoke_timeout_seconds or "
        f"invoke_timeout_seconds=); the call was abandoned"
    )


class RetrySchedule:
    """Decides, after each failed attempt, how long to wait, or that the deadline has passed.

    Full jitter (a random wait between half and all of the exponential step) keeps a burst of
    tasks that all hit a cold service from retrying in lockstep.
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

    def retry_status(self, response: Response) -> bool:
        return response.status in RETRY_STATUSES

    def describe(self, delay: float) -> str:
        """The log line for a retry, the same in the worker and the triggerer."""
        return (
            f"{self.url} unavailable ({self.last_reason}), attempt {self.attempts}; retrying in {delay:.2f} s"
        )


def _excerpt(response: Response) -> str:
    text = response.body[:EXCERPT_CHARS].decode("utf-8", errors="replace")
    more = "..." if len(response.body) > EXCERPT_CHARS else ""
    return f"{text}{more}" if text else "(empty body)"


def _is_protocol_body(response: Response) -> bool:
    return response.content_type.split(";")[0].strip().lower() == protocol.CONTENT_TYPE


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
        if response.status in (200, 500):
            raise RemoteFunctionError(result)
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


# --------------------------------------------------------------------------------------
# Small envelopes for trigger kwargs and trigger events (they land in Airflow's database)
# --------------------------------------------------------------------------------------


def pack_bytes(
    data: bytes, *, inline_max_bytes: int, store_url: str, key_segments: tuple[str, ...]
) -> dict[str, Any]:
    """``{"b64": ...}`` when small, else the bytes go to the object store and ``{"ref": url}``.

    Trigger kwargs and events are rows in the metadata DB; anything above the inline
    threshold travels as a reference the receiving side reads (and deletes) itself.
    """
    if len(data) <= inline_max_bytes:
        return {"b64": base64.b64encode(data).decode("ascii")}
    from airflow_provider_knative.store import open_store

    store = open_store(store_url)
    stored = store.put(store.new_key(*key_segments, suffix=".bin"), [data])
    return {"ref": stored.url, "store": store_url, "size": stored.size}


def unpack_bytes(packed: Mapping[str, Any], *, delete: bool = True) -> bytes:
    """The bytes :func:`pack_bytes` packed; a spilled body is deleted once read."""
    if "b64" in packed:
        return base64.b64decode(packed["b64"])
    from airflow_provider_knative.store import open_store

    store = open_store(packed["store"])
    data = bytes(store.get(packed["ref"]))
    if delete:
        store.delete(packed["ref"])
    return data
