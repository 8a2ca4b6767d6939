"""The wire contract between Airflow (operator, trigger) and the runtime in the Knative pod.

One request, one response, both encoded with :mod:`codec` as ``application/x-msgpack``.
Both sides import this module and nothing else defines the shapes, so a change here is a
protocol change: bump ``PROTOCOL_VERSION``.

Signing: ``X-Knative-Timestamp`` (unix seconds), ``X-Knative-Nonce`` (random, per attempt)
and ``X-Knative-Signature: v2=<hex hmac-sha256(secret, "ts.nonce.METHOD.path." + body)>``.
The runtime checks the signature and the timestamp window *before* it parses the body, so
unsigned or stale bytes are never decoded, and it accepts each signature once
(:class:`ReplayGuard`), so a captured request cannot be replayed inside the window either.
Method and path are signed too: a signature for one route is worthless on another.

Every invocation from Airflow carries an id (the task try's identity) and an attempt number
(``POST /invoke?attempt=N``, 1 when absent). The runtime keeps a record of every call in the
object store (``records.py``): a retried or replayed id gets the recorded outcome (or "still
running"), never a second run, on whichever replica it lands; ``GET /invocations/<id>`` asks
about one without starting it, and declares an attempt nobody started void, so the caller may
send the call again as the next attempt (``Result.status == "not_started"``).
``DELETE /invocations/<id>`` asks the replica running it to stop it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import inspect
import secrets
import struct
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from airflow_provider_knative import codec
from airflow_provider_knative.errors import ProtocolError, SignatureError, VersionMismatch

__all__ = [
    "CONTENT_TYPE",
    "INVOCATIONS_PATH",
    "INVOKE_PATH",
    "PROTOCOL_VERSION",
    "Invocation",
    "ProtocolError",
    "RemoteError",
    "ReplayGuard",
    "Result",
    "SignatureError",
    "StoreSettings",
    "VersionMismatch",
    "WorkloadRequest",
    "check_fresh",
    "function_id",
    "sign",
    "source_hash",
    "verify",
    "with_attempt",
]

#: 3: attempts, records across replicas (``not_started``, ``next_attempt``, ``replica``), cancel
PROTOCOL_VERSION = 3
CONTENT_TYPE = "application/x-msgpack"
INVOKE_PATH = "/invoke"
#: ``GET /invocations/<id>?wait=<seconds>``: the outcome of an invocation, without starting it
INVOCATIONS_PATH = "/invocations/"
#: ``POST /workloads``: run an Airflow ``ExecuteTask`` workload (the KnativeExecutor);
#: ``GET /workloads/<delivery>``: what the delivery's record says (workload events)
WORKLOADS_PATH = "/workloads"


def record_path(path: str) -> str:
    """The path under which the runtime answers for the calls it takes at ``path``."""
    return WORKLOADS_PATH + "/" if path.endswith(WORKLOADS_PATH) else INVOCATIONS_PATH


#: the event stream a workload request is answered with: one JSON object per line
EVENTS_CONTENT_TYPE = "application/x-ndjson"
SIGNATURE_HEADER = "X-Knative-Signature"
TIMESTAMP_HEADER = "X-Knative-Timestamp"
NONCE_HEADER = "X-Knative-Nonce"
SIGNATURE_SCHEME = "v2"
#: the error types with which the runtime says "I did not start it" (safe to send again):
#: ``StoreUnavailable``: the claim that must precede every run could not be written
NOT_STARTED_ERRORS = frozenset({"NotReady", "ShuttingDown", "Busy", "StoreUnavailable"})
#: the error type with which the runtime says it has no record of an invocation id (a runtime
#: without a store: its memory is its record)
UNKNOWN_INVOCATION = "UnknownInvocation"
#: A client that can show a call's output while it runs asks for this media type (``Accept``):
#: the answer is then a stream of frames, each a 4-byte big-endian length and a msgpack map:
#: ``{"log": text, "at": offset}`` (the call's output from byte ``offset`` on, as it is
#: printed), then one ``{"end": {"status": ..., "body": <Result>, "error": ...}}`` carrying the
#: answer a client without streaming gets, with the logs it already streamed left out. A call
#: refused before it starts is answered as usual (not as frames). A status query takes
#: ``stream=1&from=<offset>`` to follow a call from where a broken stream left off.
FRAMES_CONTENT_TYPE = "application/x-knative-frames"
STREAM_PARAM = "stream"
FROM_PARAM = "from"
_FRAME_LENGTH = struct.Struct(">I")
#: the largest frame a client accepts (a result is small: large values are references)
MAX_FRAME_BYTES = 512 * 1024 * 1024


def log_frame(text: str, at: int) -> bytes:
    """One frame of a call's output, starting at byte ``at`` of it."""
    return _frame({"log": text, "at": at})


def end_frame(status: int, body: bytes, error: str = "") -> bytes:
    """The last frame: the answer (HTTP status, Result body, one-line error)."""
    return _frame({"end": {"status": status, "body": bytes(body), "error": error}})


def _frame(data: dict[str, Any]) -> bytes:
    packed = msgpack.packb(data, use_bin_type=True)
    return _FRAME_LENGTH.pack(len(packed)) + packed


class FrameReader:
    """Frames out of a byte stream, fed as the bytes arrive (either HTTP library's chunks)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _FRAME_LENGTH.size:
            (size,) = _FRAME_LENGTH.unpack_from(self._buffer)
            if size > MAX_FRAME_BYTES:
                raise ProtocolError(f"a frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
            if len(self._buffer) < _FRAME_LENGTH.size + size:
                break
            raw = bytes(self._buffer[_FRAME_LENGTH.size : _FRAME_LENGTH.size + size])
            del self._buffer[: _FRAME_LENGTH.size + size]
            try:
                frame = msgpack.unpackb(raw, raw=False)
            except Exception as exc:
                raise ProtocolError(f"malformed frame: {exc}") from None
            _require(
                isinstance(frame, dict) and ("log" in frame or "end" in frame), "frame must be log or end"
            )
            frames.append(frame)
        return frames


#: the error types of a call whose pod went away under it (its lease expired, or the drain at
#: scale-down outlived it): a definite failure; an idempotent call is sent again as a new attempt
ABANDONED = "Abandoned"
POD_GONE_ERRORS = frozenset({ABANDONED, "DrainTimeout"})
#: the error type of a call stopped on request (``DELETE /invocations/<id>``)
CANCELLED = "Cancelled"
#: the query parameter that numbers the attempts of one call (``records.py``)
ATTEMPT_PARAM = "attempt"
#: ``GET /invocations/<id>?probe=1``: where the call stands, without declaring anything void
#: (a restored trigger asks before it sends)
PROBE_PARAM = "probe"


def with_attempt(path: str, attempt: int) -> str:
    """``path`` for attempt ``attempt`` of a call (the first attempt needs no parameter)."""
    if attempt <= 1:
        return path
    return f"{path}{'&' if '?' in path else '?'}{ATTEMPT_PARAM}={attempt}"


def function_id(dag_id: str, task_id: str) -> str:
    """The id a function is called by: its DAG and task, the same on both sides.

    Module names are not stable across processes (Airflow imports DAG files under generated
    names) but DAG and task ids are, and they are exactly what the runtime's allowlist holds.
    """
    return f"{dag_id}/{task_id}"


def source_hash(fn: Callable[..., Any]) -> str:
    """sha256 of the function's source, so the runtime can refuse a stale deployment."""
    target = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        source = repr(code.co_code) if code is not None else repr(target)
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass
class StoreSettings:
    """Where the runtime may spill a large result and how large "large" is."""

    url: str
    inline_max_bytes: int
    key_prefix: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"url": self.url, "inline_max_bytes": self.inline_max_bytes, "key_prefix": self.key_prefix}

    @classmethod
    def from_wire(cls, data: Any) -> StoreSettings | None:
        if data is None:
            return None
        _require(isinstance(data, dict), "store must be a map or nil")
        url, limit, prefix = data.get("url"), data.get("inline_max_bytes"), data.get("key_prefix", "")
        _require(isinstance(url, str) and url != "", "store.url must be a non-empty string")
        _require(
            isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0, "store.inline_max_bytes"
        )
        _require(isinstance(prefix, str), "store.key_prefix must be a string")
        return cls(url=url, inline_max_bytes=limit, key_prefix=prefix)


@dataclass
class Invocation:
    """What the operator asks the runtime to do."""

    function_id: str
    source_hash: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    store: StoreSettings | None = None
    allow_skew: bool = False
    #: the task try's identity; the runtime runs an id at most once (empty: no such memory)
    invocation_id: str = ""
    version: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "id": self.invocation_id,
            "fn": self.function_id,
            "src": self.source_hash,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "ctx": self.context,
            "store": self.store.to_wire() if self.store else None,
            "allow_skew": self.allow_skew,
        }

    def encode(self) -> bytes:
        return codec.dumps(self.to_wire())

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview) -> Invocation:
        """Parse a request body. Raises CodecError for bad bytes, ProtocolError for bad shape."""
        data = codec.loads(body)
        _require(isinstance(data, dict), "invocation must be a map")
        version = data.get("v")
        if version != PROTOCOL_VERSION:
            raise version_mismatch(version)
        fn, src = data.get("fn"), data.get("src")
        _require(isinstance(fn, str) and fn != "", "fn must be a non-empty string")
        _require(isinstance(src, str), "src must be a string")
        args, kwargs, ctx = data.get("args", []), data.get("kwargs", {}), data.get("ctx", {})
        invocation_id = data.get("id", "")
        _require(isinstance(invocation_id, str) and len(invocation_id) <= 1024, "id must be a short string")
        _require(isinstance(args, list), "args must be a list")
        _require(isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs), "kwargs must be a map")
        _require(isinstance(ctx, dict), "ctx must be a map")
        return cls(
            function_id=fn,
            source_hash=src,
            args=args,
            kwargs=kwargs,
            context=ctx,
            store=StoreSettings.from_wire(data.get("store")),
            allow_skew=bool(data.get("allow_skew", False)),
            invocation_id=invocation_id,
            version=version,
        )


def invocation_id(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The id of one task try's invocation: the same on every attempt and every replay of it."""
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}"


def version_mismatch(got: Any) -> VersionMismatch:
    return VersionMismatch(
        f"protocol version {got!r} is not supported: this runtime speaks version "
        f"{PROTOCOL_VERSION}; deploy the same provider version on Airflow and in the image"
    )


@dataclass
class WorkloadRequest:
    """What the KnativeExecutor asks a runtime to run: one Airflow ``ExecuteTask`` workload.

    ``workload`` is the workload's own JSON (Airflow's pydantic model, as the scheduler made
    it), carried as text so the runtime validates it with the same model. ``delivery`` is the
    id of this delivery (the scheduler's pre-assigned external executor id): a task instance
    key is reused by reschedules and clears, a delivery id never is. The runtime answers a
    delivery it already runs by joining it, never by starting a second supervisor.
    """

    delivery: str
    workload: str
    #: the scheduler's ``[core] executor``: the task runner checks every task's ``executor=``
    #: against it while parsing the DAG, so the pod must know the same names
    executor: str = ""
    #: the Execution API URL the scheduler's tasks use (the runtime's own setting wins)
    server: str = ""
    version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return codec.dumps(
            {
                "v": self.version,
                "delivery": self.delivery,
                "workload": self.workload,
                "executor": self.executor,
                "server": self.server,
            }
        )

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview) -> WorkloadRequest:
        data = codec.loads(body)
        _require(isinstance(data, dict), "workload request must be a map")
        if data.get("v") != PROTOCOL_VERSION:
            raise version_mismatch(data.get("v"))
        delivery, workload = data.get("delivery"), data.get("workload")
        _require(isinstance(delivery, str) and 0 < len(delivery) <= 200, "delivery must be a short string")
        _require(isinstance(workload, str) and workload != "", "workload must be the workload's JSON")
        executor, server = data.get("executor", ""), data.get("server", "")
        _require(isinstance(executor, str) and isinstance(server, str), "executor and server must be strings")
        return cls(delivery=delivery, workload=workload, executor=executor, server=server)


#: events of a workload stream (``{"event": ..., ...}`` per line)
EVENT_ACCEPTED = "accepted"  # the supervisor is starting: {"runtime": pod, "pid": supervisor pid}
EVENT_ALIVE = "alive"  # every few seconds while it runs
EVENT_EXIT = "exit"  # {"code": exit code, "reason": why it stopped when the runtime stopped it}
#: {"runtime": pod, "reason": ...}: this delivery runs (or ran) elsewhere: another replica holds
#: its claim, or another delivery of the task's try won Airflow's ti_run race. Not an end of the
#: task: the executor follows the task in Airflow's database
EVENT_ELSEWHERE = "elsewhere"
#: {"type": ..., "message": ...}: in a delivery's record, the runtime refused to start it (the
#: original request was answered 422 with the same reason)
EVENT_REFUSED = "refused"


@dataclass
class RemoteError:
    """A failure inside the function (or the runtime), with the remote traceback."""

    type: str
    message: str
    traceback: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_wire(cls, data: Any) -> RemoteError:
        _require(isinstance(data, dict), "error must be a map")
        return cls(
            type=str(data.get("type", "Exception")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )


#: every ``Result.status``: ``running`` answers a status query while the call runs;
#: ``not_started`` says no attempt of it ran: send it again as ``next_attempt``
RESULT_STATUSES = ("ok", "error", "running", "not_started")


@dataclass
class Result:
    """What the runtime answers: ``ok`` with the return value, or ``error``; logs either way."""

    status: str  # one of RESULT_STATUSES
    value: Any = None
    error: RemoteError | None = None
    logs: str = ""
    logs_truncated: bool = False
    duration_seconds: float = 0.0
    #: the pod (and runtime process) that ran the call, or that the record names
    replica: str = ""
    #: with ``not_started``: the attempt number to send the call again with
    next_attempt: int = 0
    #: where the time went in the pod, in seconds (and bytes): ``queued`` (waiting for a worker),
    #: ``fetch``/``fetched_bytes`` (arguments passed by reference), ``call`` (the function),
    #: ``spill``/``spilled_bytes`` (encoding the result, and writing it to the store when large)
    timings: dict[str, float] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "status": self.status,
            "value": self.value,
            "error": self.error.to_wire() if self.error else None,
            "logs": self.logs,
            "logs_truncated": self.logs_truncated,
            "duration": self.duration_seconds,
            "replica": self.replica,
            "next_attempt": self.next_attempt,
            "timings": self.timings,
        }

    def encode(self) -> bytes:
        return codec.dumps(self.to_wire())

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview) -> Result:
        data = codec.loads(body)
        _require(isinstance(data, dict), "result must be a map")
        status = data.get("status")
        _require(status in RESULT_STATUSES, f"status must be one of {', '.join(RESULT_STATUSES)}")
        error = data.get("error")
        return cls(
            status=status,
            value=data.get("value"),
            error=RemoteError.from_wire(error) if error is not None else None,
            logs=str(data.get("logs", "")),
            logs_truncated=bool(data.get("logs_truncated", False)),
            duration_seconds=float(data.get("duration", 0.0)),
            replica=str(data.get("replica", "")),
            next_attempt=int(data.get("next_attempt", 0) or 0),
            timings=_timings(data.get("timings")),
            version=int(data.get("v", PROTOCOL_VERSION)),
        )


def _timings(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    return {
        str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(f"malformed invocation: {what}")


# --------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------


def _mac(secret: bytes, signed: str, body: bytes | bytearray | memoryview) -> str:
    mac = hmac.new(secret, signed.encode() + b".", hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def _signed_text(timestamp: str, nonce: str, method: str, path: str) -> str:
    return f"{timestamp}.{nonce}.{method.upper()}.{path}"


def sign(
    secret: bytes,
    body: bytes | bytearray | memoryview,
    *,
    method: str = "POST",
    path: str = INVOKE_PATH,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that prove this request (method, path, body) came from a holder of ``secret``, now.

    A fresh nonce per call makes every signature unique, so the runtime can refuse a
    signature it has already seen without refusing a legitimate retry of the same body.
    """
    timestamp = str(int(now if now is not None else time.time()))
    nonce = nonce or secrets.token_hex(12)
    digest = _mac(secret, _signed_text(timestamp, nonce, method, path), body)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: f"{SIGNATURE_SCHEME}={digest}",
    }


def check_fresh(
    headers: Mapping[str, str], *, max_age_seconds: float, now: float | None = None
) -> tuple[str, str, str]:
    """The signature headers (lower-case keys), if present and inside the time window.

    Cheap, and needs no body: the runtime calls it before reading a body at all, so an
    unsigned or stale request cannot make it buffer megabytes. Raises SignatureError.
    """
    timestamp = headers.get(TIMESTAMP_HEADER.lower())
    signature = headers.get(SIGNATURE_HEADER.lower())
    nonce = headers.get(NONCE_HEADER.lower(), "")
    if not timestamp or not signature:
        raise SignatureError(
            f"invocation is not signed: {TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER} are "
            "required because this runtime has a signing secret; set the same [knative] signing_secret "
            "in Airflow"
        )
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} must be unix seconds") from None
    current = now if now is not None else time.time()
    if abs(current - sent) > max_age_seconds:
        raise SignatureError(
            f"signature timestamp is {int(current - sent)} s off this runtime's clock (limit "
            f"{int(max_age_seconds)} s): replayed request or clock skew"
        )
    scheme, _, digest = signature.partition("=")
    if scheme != SIGNATURE_SCHEME or not digest:
        raise SignatureError(
            f"{SIGNATURE_HEADER} must look like '{SIGNATURE_SCHEME}=<hex>' (a caller with another "
            "provider version? deploy the same version on Airflow and in the image)"
        )
    if len(nonce) > 64:
        raise SignatureError(f"{NONCE_HEADER} is longer than 64 characters")
    return timestamp, nonce, digest


def verify(
    secret: bytes,
    body: bytes | bytearray | memoryview,
    headers: Mapping[str, str],
    *,
    method: str,
    path: str,
    max_age_seconds: float,
    now: float | None = None,
) -> tuple[str, float]:
    """Check the signature headers (lower-case keys) of a request; raise SignatureError.

    Returns the signature and its timestamp, for :class:`ReplayGuard`.
    """
    timestamp, nonce, digest = check_fresh(headers, max_age_seconds=max_age_seconds, now=now)
    expected = _mac(secret, _signed_text(timestamp, nonce, method, path), body)
    if not hmac.compare_digest(digest, expected):
        raise SignatureError("signature does not match the request: wrong signing secret or altered request")
    return digest, float(timestamp)


class ReplayGuard:
    """Accepts each valid signature once while its timestamp is inside the window.

    Only requests that passed :func:`verify` reach it, so only holders of the secret can add
    entries; each is forgotten once its timestamp leaves the window (after which the
    timestamp check refuses the request anyway).
    """

    def __init__(self, max_age_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._seen: set[str] = set()
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()
        self._lock = threading.Lock()

    def check(self, signature: str, timestamp: float) -> None:
        """Raise SignatureError if ``signature`` was accepted before; else remember it."""
        now = self._clock()
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.discard(self._expiry.popleft()[1])
            if signature in self._seen:
                raise SignatureError(
                    "this signed request was already accepted once: a replay (or a client that resent "
                    "the same signature); every attempt must be signed afresh"
                )
            self._seen.add(signature)
            # the expiry deque stays sorted enough: timestamps arrive in roughly increasing order,
            # and an entry kept a little longer only costs memory, never a wrong answer
            self._expiry.append((timestamp + self.max_age_seconds + 1, signature))
