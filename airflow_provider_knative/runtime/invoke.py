"""Execute one ``POST /invoke``: verify, decode, look up, bind, fetch, run, encode.

All of it runs in a worker thread (never on the event loop), so a CPU-bound function, a
large HMAC or a 200 MB fetch cannot stall ``/healthz``. Every outcome is a
``protocol.Result`` envelope in ``application/x-msgpack`` with an HTTP status that says
what happened — nothing that failed is answered with 200:

====  ==========================================================================
200   the function returned; ``value`` is the result (inline or an ``ObjectRef``)
400   malformed body (not msgpack, wrong shape) or another protocol version
401   missing, wrong or expired signature while a signing secret is configured
404   no such function id in this runtime's allowlist
409   the caller's source hash differs from the deployed function's (redeploy)
413   body over ``[knative] max_body_bytes`` (answered before the body is read)
422   the arguments do not fit the function's signature (the signature is shown)
500   the function raised (type, message, remote traceback, logs) or its result
      cannot be encoded, or an argument could not be fetched from the store
503   the DAG folder is still importing or failed to import
====  ==========================================================================

The error's ``type`` tells the caller which case it is (``SignatureError``,
``UnknownFunction``, ``SourceHashMismatch``, ``ResultEncodingError``, or the user's own
exception type) and its message says what to do.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airflow_provider_knative import codec, protocol, store
from airflow_provider_knative.runtime import logs
from airflow_provider_knative.runtime.loader import Function

#: context keys handed to a function parameter of the same name when the caller did not pass it
CONTEXT_PARAMETERS = ("dag_id", "task_id", "run_id", "map_index", "try_number", "params")

#: module names the loader gives DAG files (as Airflow does): unusual_prefix_<sha1>_<stem>
_GENERATED_MODULE = re.compile(r"unusual_prefix_[0-9a-f]{40}_\w+?\.")


@dataclass(frozen=True)
class Limits:
    """Runtime settings read once at start (``[knative]`` options)."""

    max_body_bytes: int
    log_max_bytes: int
    signing_secret: bytes | None
    signature_max_age_seconds: float


@dataclass
class Outcome:
    """An HTTP answer: status, msgpack body, and a one-line error for the response header."""

    status: int
    body: bytes
    error: str = ""


class Rejected(Exception):
    """The runtime refuses the request before (or instead of) running the function."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def error_outcome(status: int, type_: str, message: str, tb: str = "", capture: Any = None) -> Outcome:
    result = protocol.Result(
        status="error",
        error=protocol.RemoteError(type=type_, message=message, traceback=tb),
        logs=capture.text() if capture is not None else "",
        logs_truncated=bool(capture is not None and capture.truncated),
    )
    return Outcome(status, result.encode(), f"{type_}: {message}")


def _verify(body: bytearray, headers: Mapping[str, str], limits: Limits) -> None:
    if limits.signing_secret is None:
        return
    try:
        protocol.verify(
            limits.signing_secret,
            body,
            headers.get(protocol.TIMESTAMP_HEADER.lower()),
            headers.get(protocol.SIGNATURE_HEADER.lower()),
            max_age_seconds=limits.signature_max_age_seconds,
        )
    except protocol.SignatureError as exc:
        raise Rejected(401, "SignatureError", str(exc)) from None


def _decode(body: bytearray) -> protocol.Invocation:
    try:
        return protocol.Invocation.decode(body)
    except protocol.VersionMismatch as exc:
        raise Rejected(400, "VersionMismatch", str(exc)) from None
    except codec.CodecError as exc:
        raise Rejected(
            400,
            "CodecError",
            f"request body is not an encoded invocation ({exc}); send a protocol.Invocation "
            f"encoded with the provider's codec as {protocol.CONTENT_TYPE}",
        ) from None
    except protocol.ProtocolError as exc:
        raise Rejected(400, "ProtocolError", str(exc)) from None


def _lookup(inv: protocol.Invocation, functions: Mapping[str, Function]) -> Function:
    fn = functions.get(inv.function_id)
    if fn is None:
        # Name nothing that is registered: the id is echoed only as repr, truncated.
        raise Rejected(
            404,
            "UnknownFunction",
            f"no function {inv.function_id[:200]!r} is registered in this runtime. Only "
            "@task.knative functions of the DAG files baked into the image can be called, by "
            "'<dag_id>/<task_id>'; rebuild and redeploy the image with the DAG file that defines it",
        )
    if inv.source_hash != fn.source_hash and not inv.allow_skew:
        raise Rejected(
            409,
            "SourceHashMismatch",
            f"{fn.function_id}: the caller's source hash {inv.source_hash[:12]} differs from the "
            f"deployed function's {fn.source_hash[:12]}: the image runs another version of the DAG "
            "file. Rebuild and redeploy the image (airflow-knative deploy), or set allow_skew to "
            "run the deployed version anyway",
        )
    return fn


def _bind(fn: Function, inv: protocol.Invocation) -> tuple[list[Any], dict[str, Any]]:
    """Check the arguments against the signature; fill context parameters the caller left out."""
    args, kwargs = list(inv.args), dict(inv.kwargs)
    sig = fn.signature
    if sig is None:
        return args, kwargs
    try:
        bound = sig.bind_partial(*args, **kwargs)
        for name in CONTEXT_PARAMETERS:
            param = sig.parameters.get(name)
            if (
                param is not None
                and name in inv.context
                and name not in bound.arguments
                and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
            ):
                kwargs[name] = inv.context[name]
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise Rejected(
            422,
            "ArgumentError",
            f"{fn.function_id}: arguments do not fit {fn.callable.__name__}{sig}: {exc}; the DAG that "
            "called it and the deployed function disagree (redeploy the image)",
        ) from None
    return args, kwargs


def _refs(value: Any, found: list[codec.ObjectRef]) -> None:
    if isinstance(value, codec.ObjectRef):
        found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refs(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _refs(item, found)


def _replace(value: Any, fetched: Mapping[codec.ObjectRef, Any]) -> Any:
    if isinstance(value, codec.ObjectRef):
        return fetched[value]
    if isinstance(value, list):
        return [_replace(v, fetched) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace(v, fetched) for v in value)
    if isinstance(value, dict):
        return {k: _replace(v, fetched) for k, v in value.items()}
    return value


def _store_for(ref: codec.ObjectRef, settings: protocol.StoreSettings | None) -> Any:

    if settings is not None and ref.url.startswith(settings.url.rstrip("/") + "/"):
        return store.open_store(settings.url)
    return store.open_store()  # the runtime's own [knative] xcom_store_url; refuses foreign URLs


def _fetch_one(ref: codec.ObjectRef, settings: protocol.StoreSettings | None) -> Any:
    return store.load_ref(ref, _store_for(ref, settings))


def _fetch(args: list[Any], kwargs: dict[str, Any], inv: protocol.Invocation) -> tuple[list[Any], dict]:
    """Replace every ObjectRef in the arguments by its value, fetching them in parallel."""
    found: list[codec.ObjectRef] = []
    _refs(args, found)
    _refs(kwargs, found)
    if not found:
        return args, kwargs
    unique = list(dict.fromkeys(found))
    try:
        if len(unique) == 1:
            values = [_fetch_one(unique[0], inv.store)]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(unique))) as pool:
                values = list(pool.map(lambda r: _fetch_one(r, inv.store), unique))
    except Exception as exc:
        raise Rejected(
            500,
            type(exc).__name__,
            f"cannot fetch an argument passed by reference: {exc}",
        ) from None
    fetched = dict(zip(unique, values, strict=True))
    return _replace(args, fetched), _replace(kwargs, fetched)


def prepare(fn: Function, inv: protocol.Invocation) -> tuple[list[Any], dict[str, Any]]:
    """The arguments to call ``fn`` with: checked against its signature, context parameters
    filled in, references fetched from the store. Local mode uses this too, so a function
    sees exactly what it would see in the pod. Raises Rejected."""
    args, kwargs = _bind(fn, inv)
    return _fetch(args, kwargs, inv)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__") or _GENERATED_MODULE.match(module + "."):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _clean(text: str) -> str:
    """Drop the generated module prefix Airflow-style DAG imports put on names."""
    return _GENERATED_MODULE.sub("", text)


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the user's function down, without the runtime's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return _clean("".join(traceback.format_exception(type(exc), exc, tb)))


def call(fn: Function, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the function; an async one gets an event loop of its own in this thread."""
    result = fn.callable(*args, **kwargs)
    if fn.is_async or inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def _result_value(value: Any, inv: protocol.Invocation) -> Any:
    """The value to answer with: inline, or spilled to the store as an ObjectRef when large."""
    settings = inv.store
    try:
        if settings is None:  # the caller gave no store: always inline, but check it encodes
            codec.dumps(value)
            return value
        segments = [s for s in settings.key_prefix.split("/") if s]
        segments += [str(inv.context.get(k, "_")) for k in ("dag_id", "run_id", "task_id")]
        try:
            target = store.open_store(settings.url)
            spilled = store.encode_or_spill(value, settings.inline_max_bytes, segments, target)
        except TypeError:
            raise
        except Exception as exc:
            raise Rejected(
                500, type(exc).__name__, f"cannot spill the result to {settings.url}: {exc}"
            ) from None
    except TypeError as exc:
        raise Rejected(
            500,
            "ResultEncodingError",
            f"{inv.function_id}: the return value cannot be sent back: "
            f"{_clean(str(exc)).replace('value', 'result', 1)}. Return plain data, numpy arrays, "
            "DataFrames or Arrow tables (no pickle)",
        ) from None
    return spilled if isinstance(spilled, codec.ObjectRef) else value


def handle(
    body: bytearray,
    headers: Mapping[str, str],
    functions: Mapping[str, Function],
    limits: Limits,
) -> Outcome:
    """Answer one invocation. Runs in a worker thread; never raises."""
    started = time.perf_counter()
    capture = None
    try:
        _verify(body, headers, limits)
        inv = _decode(body)
        fn = _lookup(inv, functions)
        args, kwargs = prepare(fn, inv)
        capture, token = logs.start(limits.log_max_bytes)
        try:
            value = call(fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit from sys.exit() in a task is a task failure too
            return error_outcome(500, _type_name(exc), str(exc), _user_traceback(exc), capture)
        finally:
            logs.stop(token)
        result = protocol.Result(
            status="ok",
            value=_result_value(value, inv),
            logs=capture.text(),
            logs_truncated=capture.truncated,
            duration_seconds=time.perf_counter() - started,
        )
        return Outcome(200, result.encode())
    except Rejected as exc:
        return error_outcome(exc.status, exc.type, exc.message, capture=capture)
    except Exception as exc:  # a bug in the runtime: report it, keep serving
        tb = traceback.format_exc()
        return error_outcome(500, "RuntimeInternalError", f"{type(exc).__name__}: {exc}", tb, capture)
