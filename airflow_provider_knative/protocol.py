"""The wire contract between Airflow (operator, trigger) and the runtime in the Knative pod.

One request, one response, both encoded with :mod:`codec` as ``application/x-msgpack``.
Both sides import this module and nothing else defines the shapes, so a change here is a
protocol change: bump ``PROTOCOL_VERSION``.

Signing: ``X-Knative-Timestamp`` (unix seconds) and ``X-Knative-Signature:
v1=<hex hmac-sha256(secret, timestamp + "." + body)>``. The runtime checks the signature
and the timestamp window *before* it parses the body, so unsigned or replayed bytes are never
decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_knative import codec

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/x-msgpack"
INVOKE_PATH = "/invoke"
SIGNATURE_HEADER = "X-Knative-Signature"
TIMESTAMP_HEADER = "X-Knative-Timestamp"
SIGNATURE_SCHEME = "v1"


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol."""


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
    version: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.version,
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
            raise VersionMismatch(version)
        fn, src = data.get("fn"), data.get("src")
        _require(isinstance(fn, str) and fn != "", "fn must be a non-empty string")
        _require(isinstance(src, str), "src must be a string")
        args, kwargs, ctx = data.get("args", []), data.get("kwargs", {}), data.get("ctx", {})
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
            version=version,
        )


class VersionMismatch(ProtocolError):
    def __init__(self, got: Any) -> None:
        self.got = got
        super().__init__(
            f"protocol version {got!r} is not supported: this runtime speaks version "
            f"{PROTOCOL_VERSION}; deploy the same provider version on Airflow and in the image"
        )


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


@dataclass
class Result:
    """What the runtime answers: ``ok`` with the return value, or ``error``; logs either way."""

    status: str  # "ok" | "error"
    value: Any = None
    error: RemoteError | None = None
    logs: str = ""
    logs_truncated: bool = False
    duration_seconds: float = 0.0
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
        }

    def encode(self) -> bytes:
        return codec.dumps(self.to_wire())

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview) -> Result:
        data = codec.loads(body)
        _require(isinstance(data, dict), "result must be a map")
        status = data.get("status")
        _require(status in ("ok", "error"), "status must be 'ok' or 'error'")
        error = data.get("error")
        return cls(
            status=status,
            value=data.get("value"),
            error=RemoteError.from_wire(error) if error is not None else None,
            logs=str(data.get("logs", "")),
            logs_truncated=bool(data.get("logs_truncated", False)),
            duration_seconds=float(data.get("duration", 0.0)),
            version=int(data.get("v", PROTOCOL_VERSION)),
        )


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(f"malformed invocation: {what}")


# --------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------


def _mac(secret: bytes, timestamp: str, body: bytes | bytearray | memoryview) -> str:
    mac = hmac.new(secret, timestamp.encode() + b".", hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign(secret: bytes, body: bytes | bytearray | memoryview, now: float | None = None) -> dict[str, str]:
    """Headers that prove the body came from a holder of ``secret``, at this time."""
    timestamp = str(int(now if now is not None else time.time()))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"{SIGNATURE_SCHEME}={_mac(secret, timestamp, body)}",
    }


class SignatureError(ProtocolError):
    """Missing, malformed, wrong or expired signature (answered with 401)."""


def verify(
    secret: bytes,
    body: bytes | bytearray | memoryview,
    timestamp: str | None,
    signature: str | None,
    *,
    max_age_seconds: float,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless the headers sign ``body`` within the time window."""
    if not timestamp or not signature:
        raise SignatureError(
            f"invocation is not signed: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required because "
            "this runtime has a signing secret; set the same [knative] signing_secret in Airflow"
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
        raise SignatureError(f"{SIGNATURE_HEADER} must look like '{SIGNATURE_SCHEME}=<hex>'")
    if not hmac.compare_digest(digest, _mac(secret, timestamp, body)):
        raise SignatureError("signature does not match the body: wrong signing secret or altered request")
