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

import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from airflow_provider_knative import aws, codec, functions, protocol, records, spill
from airflow_provider_knative.errors import (
    ArgumentMismatch,
    KnativeError,
    ReferenceFetchError,
    ResultEncodingError,
    SignatureError,
    StoreError,
)
from airflow_provider_knative.functions import Function, FunctionInfo
from airflow_provider_knative.runtime import claims, livelog, logs
from airflow_provider_knative.runtime.ledger import Entry, Ledger

_log = logging.getLogger("airflow_provider_knative.runtime")
aws.install()  # [knative] aws_conn_id: an Airflow connection (e.g. AIRFLOW_CONN_... from a Secret) for S3

#: module names the loader gives DAG files (as Airflow does): unusual_prefix_<sha1>_<stem>
_GENERATED_MODULE = re.compile(r"unusual_prefix_[0-9a-f]{40}_\w+?\.")


@dataclass(frozen=True)
class Limits:
    """Runtime settings read once at start (``[knative]`` options)."""

    max_body_bytes: int
    log_max_bytes: int
    signing_secret: bytes | None
    signature_max_age_seconds: float
    #: this runtime, as answers name it (``claims.replica_name()``)
    replica: str = ""


@dataclass
class Phases:
    """Where a call's time went on this replica, and the bytes it moved.

    Wall-clock seconds (``time.time()``: a forked child and the server read the same clock),
    so the spans of a trace can be made after the fact in the server, from what a child
    measured. The timing line in the task log, the trace spans and the metrics all come from it.
    """

    arrived: float = 0.0  # the server had the whole request
    started: float = 0.0  # a worker (a thread, or a forked process) began on it
    fetch: tuple[float, float] = (0.0, 0.0)  # arguments passed by reference
    fetched_bytes: int = 0
    call: tuple[float, float] = (0.0, 0.0)  # the function itself
    spill: tuple[float, float] = (0.0, 0.0)  # encoding the result, spilling it when large
    spilled_bytes: int = 0

    def timings(self) -> dict[str, float]:
        """Durations for ``protocol.Result.timings``."""
        return {
            "queued": max(0.0, self.started - self.arrived) if self.arrived else 0.0,
            "fetch": self.fetch[1] - self.fetch[0],
            "fetched_bytes": self.fetched_bytes,
            "call": self.call[1] - self.call[0],
            "spill": self.spill[1] - self.spill[0],
            "spilled_bytes": self.spilled_bytes,
        }

    def to_wire(self) -> list[Any]:
        return [
            self.arrived,
            self.started,
            *self.fetch,
            self.fetched_bytes,
            *self.call,
            *self.spill,
            self.spilled_bytes,
        ]

    @classmethod
    def from_wire(cls, data: list[Any]) -> Phases:
        arrived, started, f0, f1, fb, c0, c1, s0, s1, sb = data
        return cls(arrived, started, (f0, f1), fb, (c0, c1), (s0, s1), sb)


@dataclass
class CallContext:
    """What the runtime knows of one admitted call besides its invocation.

    ``claimer`` claims it in the record right before the function starts (None: no records,
    or no id); ``on_text``/``on_begin`` tell the server's ``livelog.LiveLog`` the call's output
    as it is printed and when the function begins (a forked child sends them over its pipe).
    """

    arrived: float = 0.0
    claimer: claims.Claimer | None = None
    on_text: Callable[[str, int], None] | None = None
    on_begin: Callable[[], None] | None = None
    #: the function's id, once looked up (the runtime's metrics and spans name it)
    function: str = ""


@dataclass
class Outcome:
    """An HTTP answer: status, msgpack body, and a one-line error for the response header.

    ``pending`` instead: this invocation id is already running or has run in this process (a
    retry or a replay); the caller waits for that entry's outcome rather than running it again.
    ``follow`` instead: another replica holds the claim of ``(call, attempt)``; the caller
    waits for its outcome in the record.
    """

    status: int
    body: bytes
    error: str = ""
    pending: Entry[Outcome] | None = None
    follow: tuple[str, int] | None = None
    #: where the time went, when the function ran here
    phases: Phases | None = None

    @classmethod
    def of(cls, finished: records.Finished) -> Outcome:
        return cls(finished.status, finished.body, finished.error)


class Rejected(KnativeError):
    """The runtime refuses the request before (or instead of) running the function (never
    leaves the runtime: it becomes an HTTP answer)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def error_outcome(
    status: int, type_: str, message: str, tb: str = "", capture: Any = None, phases: Phases | None = None
) -> Outcome:
    result = protocol.Result(
        status="error",
        error=protocol.RemoteError(type=type_, message=message, traceback=tb),
        logs=capture.text() if capture is not None else "",
        logs_truncated=bool(capture is not None and capture.truncated),
        timings=phases.timings() if phases is not None else {},
    )
    return Outcome(status, result.encode(), f"{type_}: {message}", phases=phases)


def running_outcome() -> Outcome:
    """The answer to a status request while the invocation is still running (202)."""
    return Outcome(202, protocol.Result(status="running").encode())


def verify(
    body: bytes | bytearray | memoryview,
    headers: Mapping[str, str],
    limits: Limits,
    guard: protocol.ReplayGuard | None,
    *,
    method: str = "POST",
    path: str = protocol.INVOKE_PATH,
) -> str:
    """Check the signature (when a secret is set) and that it was not used before; raise Rejected(401).

    Returns the signature ("" without a secret), which the record of the call keeps so that a
    replay of this very request is refused on every replica.
    """
    if limits.signing_secret is None:
        return ""
    try:
        signature, sent = protocol.verify(
            limits.signing_secret,
            body,
            headers,
            method=method,
            path=path,
            max_age_seconds=limits.signature_max_age_seconds,
        )
        if guard is not None:
            guard.check(signature, sent)
    except SignatureError as exc:
        raise Rejected(401, "SignatureError", str(exc)) from None
    return signature


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


def _lookup(inv: protocol.Invocation, functions_: Mapping[str, FunctionInfo]) -> FunctionInfo:
    fn = functions_.get(inv.function_id)
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


def _prepare(
    fn: Function, inv: protocol.Invocation, fetched: list[codec.ObjectRef]
) -> tuple[list[Any], dict[str, Any]]:
    """``functions.prepare`` with its failures turned into HTTP answers."""
    try:
        return functions.prepare(fn, inv, fetched)
    except ArgumentMismatch as exc:
        raise Rejected(422, "ArgumentError", str(exc)) from None
    except ReferenceFetchError as exc:
        cause = exc.__cause__
        raise Rejected(500, type(cause or exc).__name__, str(exc)) from None


def _encode_result(value: Any, inv: protocol.Invocation) -> Any:
    try:
        return functions.encode_result(value, inv, inv.function_id)
    except ResultEncodingError as exc:
        raise Rejected(500, "ResultEncodingError", _clean(str(exc))) from None
    except StoreError as exc:
        url = inv.store.url if inv.store else "the store"
        raise Rejected(500, type(exc).__name__, f"cannot spill the result to {url}: {exc}") from None


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__") or _GENERATED_MODULE.match(module + "."):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _clean(text: str) -> str:
    """Drop the generated module prefix Airflow-style DAG imports put on names."""
    return _GENERATED_MODULE.sub("", text)


_OWN_FILES = frozenset({__file__, functions.__file__})


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the user's function down, without the runtime's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    return _clean("".join(traceback.format_exception(type(exc), exc, tb)))


#: how a call is run once admitted (see ``isolation``)
Runner = Callable[[FunctionInfo, protocol.Invocation, bytes | bytearray, CallContext], "Outcome"]


def ledger_key(call: str, attempt: int) -> str:
    """One attempt of one call, as this process's ledger knows it."""
    return f"{call}#{attempt}"


def handle(
    body: bytearray,
    headers: Mapping[str, str],
    functions_: Mapping[str, FunctionInfo],
    limits: Limits,
    run: Runner,
    guard: protocol.ReplayGuard | None = None,
    ledger: Ledger[Outcome] | None = None,
    records_: records.Records | None = None,
    attempt: int = 1,
    on_key: Callable[[str], None] | None = None,
    path: str = protocol.INVOKE_PATH,
    ctx: CallContext | None = None,
) -> Outcome:
    """Answer one invocation. Runs in a worker thread; never raises.

    ``run`` calls the function (in this thread, or in a process of its own: see
    ``isolation``). An invocation id seen before in this process is not run again: the answer
    is ``Outcome(pending=entry)`` and the caller waits for that entry's outcome. With
    ``records_``, the call is claimed in the store right before it starts; a claim held by
    another replica is answered ``Outcome(follow=...)`` (wait for its record), and the outcome
    is recorded before it is answered. ``on_key`` is told the ledger key as soon as it is known,
    and ``ctx.function`` is the function's id once it was looked up.
    """
    try:
        signature = verify(body, headers, limits, guard, path=path)
        inv = _decode(body)
        fn = _lookup(inv, functions_)
    except Rejected as exc:
        return error_outcome(exc.status, exc.type, exc.message)
    # a signed request without an id is recorded by its signature: a replay is refused everywhere
    call = inv.invocation_id or (f"signed:{signature}" if signature and records_ is not None else "")
    ctx = ctx or CallContext()
    ctx.function = fn.function_id  # a registered id: safe as a metric label
    if ledger is None or not call:
        return run(fn, inv, body, ctx)
    digest = claims.request_digest(body)
    key = ledger_key(call, attempt)
    if on_key is not None:
        on_key(key)
    entry, fresh = ledger.begin(key, request=(digest, call, attempt))
    if not fresh:
        if entry.request[0] != digest:
            return error_outcome(
                409,
                "RequestMismatch",
                f"invocation id {call!r} is already used by another request in this runtime; one id is "
                "one request. Clear the task so Airflow gives it a new try number",
            )
        return Outcome(0, b"", pending=entry)
    claimer = claims.Claimer(call, attempt, digest, signature, records_) if records_ is not None else None
    ctx.claimer = claimer
    outcome = Outcome(500, b"")
    try:
        outcome = run(fn, inv, body, ctx)
        if claimer is not None:
            outcome = replace(settle(claimer, outcome), phases=outcome.phases)
    finally:
        if claimer is not None and not claimer.claimed and claimer.holder is None:
            # refused before its claim (the store was down, the attempt void, the arguments
            # wrong): it never started, so this is no outcome of the call to remember
            ledger.forget(key)
        else:
            ledger.finish(key, outcome)
    return outcome


def _journal(limits: Limits, ctx: CallContext) -> livelog.Journal | None:
    """Where the call's output goes while it runs: the server (its followers) and, when the
    call is claimed in a store, the record (followers on other replicas)."""
    claimer = ctx.claimer
    store = (claimer.book, claimer.call, claimer.attempt) if claimer is not None and claimer.claimed else None
    if ctx.on_text is None and store is None:
        return None
    return livelog.Journal(limits.log_max_bytes, on_text=ctx.on_text, store=store)


def settle(claimer: claims.Claimer, outcome: Outcome) -> Outcome:
    """After a run: record the outcome of a claimed call (the record's outcome is the answer);
    a claim held elsewhere is followed; a call refused before its claim is answered as it is."""
    if claimer.holder is not None:
        return Outcome(0, b"", follow=(claimer.call, claimer.attempt))
    if not claimer.claimed or claimer.recorded:
        return outcome
    book = claimer.book
    mine = book.finished(claimer.call, claimer.attempt, outcome.status, outcome.body, outcome.error)
    deadline = time.monotonic() + records.OUTCOME_WRITE_SECONDS
    delay = 0.1
    while True:
        try:
            final = Outcome.of(book.finish(claimer.call, mine))
            claimer.recorded = True
            return final
        except StoreError as exc:
            if time.monotonic() + delay > deadline:
                # the caller still gets the true answer; later readers of the record will find the
                # lease expired and say "abandoned": a definite failure, never a wrong value
                _log.error("could not record the outcome of %s in %s: %s", claimer.call, book.where, exc)
                return outcome
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def run(
    fn: Function,
    inv: protocol.Invocation,
    limits: Limits,
    begin: Callable[[], tuple[int, bytes, str] | None] | None = None,
    ctx: CallContext | None = None,
) -> Outcome:
    """Prepare the arguments, call the function, encode the result; every failure an Outcome.

    ``begin`` runs right before the function (the claim): an answer from it is returned instead.
    ``ctx`` says when the request arrived and where the output goes while it runs.
    """
    ctx = ctx or CallContext()
    phases = Phases(arrived=ctx.arrived, started=time.time())
    started = time.perf_counter()
    capture = None
    journal = None
    try:
        fetched: list[codec.ObjectRef] = []
        args, kwargs = _prepare(fn, inv, fetched)
        phases.fetch = (phases.started, time.time())
        phases.fetched_bytes = sum(ref.size for ref in fetched)
        if begin is not None:
            refusal = begin()
            if refusal is not None:
                return Outcome(*refusal)
        journal = _journal(limits, ctx)
        capture, token = logs.start(limits.log_max_bytes, journal.write if journal is not None else None)
        if ctx.on_begin is not None:
            ctx.on_begin()
        call_start = time.time()
        try:
            value = functions.call(fn, args, kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit from sys.exit() in a task is a task failure too
            phases.call = (call_start, time.time())
            return error_outcome(500, _type_name(exc), str(exc), _user_traceback(exc), capture, phases)
        finally:
            logs.stop(token)
            if journal is not None:  # all of the output is out before the outcome is recorded
                livelog.FLUSHER.close(journal)
        phases.call = (call_start, time.time())
        encoded = _encode_result(value, inv)
        phases.spill = (phases.call[1], time.time())
        phases.spilled_bytes = spill.referenced_bytes(encoded) if encoded is not value else 0
        result = protocol.Result(
            status="ok",
            value=encoded,
            logs=capture.text(),
            logs_truncated=capture.truncated,
            duration_seconds=time.perf_counter() - started,
            timings=phases.timings(),
            replica=limits.replica,
        )
        return Outcome(200, result.encode(), phases=phases)
    except Rejected as exc:
        return error_outcome(exc.status, exc.type, exc.message, capture=capture)
    except Exception as exc:  # a bug in the runtime: report it, keep serving
        tb = traceback.format_exc()
        return error_outcome(500, "RuntimeInternalError", f"{type(exc).__name__}: {exc}", tb, capture)
