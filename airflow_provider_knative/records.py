"""The record of a call, kept in the object store where every replica and Airflow can read it.

A Knative Service is many pods behind a balancer with no affinity, and any of them may be
scaled away at any moment. What "at most once" and "never an invented outcome" depend on (has
this call started, who runs it, is it still running, how did it end) therefore cannot live in
one process's memory. It lives here, next to the spilled values, under the store's one key
layout (``store.record_key``), one folder per call. For a call ``C`` and its attempt ``N``:

``aN.claim``
    written create-only (``ObjectStore.create``) by the replica about to run it, right before
    the function starts. Of two replicas racing for it, exactly one wins and runs the call;
    every other one answers from the record. It binds the id to a digest of the request
    (another request with the same id is refused, never answered with this one's outcome) and
    remembers the request's signature (a replay of it is refused on every replica).
    A status query that finds no claim writes a *void* claim instead: that attempt can then
    never start (a late copy of the request is refused), and the caller may safely send the
    call again as attempt ``N+1``.
``aN.lease``
    rewritten by the owner while the call runs (every ``lease / 6`` seconds). A claim whose
    lease is older than ``lease`` seconds belongs to a replica that is gone: the call is
    *abandoned*, a definite failure that names the pod and when it was last seen.
``aN.outcome``
    written create-only when the call ends: the runtime's answer (a small ``protocol.Result``;
    large values are already references). The first outcome written is the outcome: the
    owner's answer, or "abandoned" written by a replica that found the lease expired, or
    "cancelled". An owner that loses that race discards its result and answers with the record.
``aN.log.<offset>``
    the call's output from byte ``offset`` on, written while it runs (``runtime/livelog.py``),
    so a client that re-attaches on another replica still follows it live.
``cancel``
    written by whoever is asked to cancel the call (a task marked failed in the UI); the owner
    reads it when it renews its lease and stops the call.

Wall clocks of the pods are compared (claim and lease times): they must agree to well within
the lease (Kubernetes nodes run NTP; signatures already require agreement within
``signature_max_age_seconds``). Records are removed by ``airflow-knative xcom-cleanup`` after
``[knative] record_retention_seconds``.

This module knows the format and the decisions; it does no HTTP and imports nothing from
Airflow. A store error is raised as ``StoreError``: a claim that cannot be written means
nothing started, and a record that cannot be read is the only "unknown" left.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import msgpack

from airflow_provider_knative import protocol, store
from airflow_provider_knative.errors import StoreError

__all__ = [
    "DELIVERIES",
    "INVOCATIONS",
    "Claim",
    "Finished",
    "NotStarted",
    "Records",
    "Running",
    "State",
]

#: the two kinds of call with a record: ``@task.knative`` invocations, the executor's deliveries
INVOCATIONS = "invocations"
DELIVERIES = "deliveries"
#: seconds an owner has to renew its lease before its call is presumed abandoned
DEFAULT_LEASE_SECONDS = 30.0
#: the owner renews its lease this many times per lease period
RENEWALS_PER_LEASE = 6
#: an outcome that cannot be written is tried again for this long before the answer goes out
#: without it (the record then says "abandoned" to later readers: a definite failure)
OUTCOME_WRITE_SECONDS = 10.0

ABANDONED = protocol.ABANDONED
CANCELLED = protocol.CANCELLED


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Claim:
    """Who runs attempt ``attempt`` of call ``call`` (or, with ``void``, that nobody ever will)."""

    call: str
    attempt: int
    owner: str = ""
    #: random per write: the writer recognises its own claim even if a retried write saw it exist
    token: str = ""
    digest: str = ""
    signature: str = ""
    at: float = 0.0
    lease: float = DEFAULT_LEASE_SECONDS
    void: bool = False
    note: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Claim:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class Finished:
    """How a call ended: the answer every replica gives for it from now on.

    ``status`` and ``body`` are the HTTP answer (``body`` an encoded ``protocol.Result``);
    ``how`` is ``returned`` (the function's own answer), ``abandoned`` or ``cancelled``.
    """

    status: int
    body: bytes
    error: str = ""
    attempt: int = 1
    owner: str = ""
    at: float = 0.0
    how: str = "returned"

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Finished:
        raw = msgpack.unpackb(data, raw=False)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class Running:
    """The call runs on ``claim.owner``; its lease was last renewed at ``renewed``."""

    claim: Claim
    renewed: float


@dataclass(frozen=True)
class NotStarted:
    """No attempt of the call runs or has run; send it again as ``next_attempt``.

    ``voided``: attempt ``next_attempt - 1`` was declared void by this query (or before), so a
    late copy of it can never start.
    """

    next_attempt: int
    voided: bool


State = Finished | Running | NotStarted


def error_answer(status: int, type_: str, message: str) -> tuple[int, bytes, str]:
    """An error answer in the runtime's wire format: ``(status, Result body, one-line error)``."""
    body = protocol.Result(status="error", error=protocol.RemoteError(type=type_, message=message)).encode()
    return status, body, f"{type_}: {message}"


def not_started_answer(status: int, type_: str, message: str, next_attempt: int) -> tuple[int, bytes, str]:
    """No attempt of a call runs or ran: the caller sends it again as ``next_attempt``."""
    body = protocol.Result(
        status="not_started",
        error=protocol.RemoteError(type=type_, message=message),
        next_attempt=next_attempt,
    ).encode()
    return status, body, f"{type_}: {message}"


def not_started(call: str, state: NotStarted) -> tuple[int, bytes, str]:
    """The answer to a status query that found no attempt of ``call`` started."""
    how = (
        f"its attempt {state.next_attempt - 1} was declared void, so a late copy of it can never start"
        if state.voided
        else f"its attempt {state.next_attempt} has not reached any replica"
    )
    return not_started_answer(
        404,
        "NotStarted",
        f"invocation {call[:200]!r} never started: {how}; send it again as attempt {state.next_attempt}",
        state.next_attempt,
    )


def unreadable(call: str, where: str, exc: Exception) -> tuple[int, bytes, str]:
    """The answer when the record of ``call`` cannot be read: the one "unknown" left."""
    return error_answer(
        503,
        "RecordUnavailable",
        f"the record of {call[:200]!r} cannot be read from {where} ({exc}), so nobody can tell how it "
        "stands; ask again once the store is back",
    )


class Records:
    """The records of one kind of call in one store, as seen by replica ``owner``."""

    def __init__(
        self,
        object_store: store.ObjectStore,
        kind: str,
        *,
        owner: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = object_store
        self.kind = kind
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._clock = clock

    @property
    def where(self) -> str:
        """Where the records live, for messages: the store's URL."""
        return self.store.root_url

    def _key(self, call: str, part: str) -> str:
        return store.record_key(self.kind, call, part)

    def claim_of(self, call: str, attempt: int) -> Claim | None:
        """The claim (or void) of one attempt, as written; None if there is none."""
        data = self.store.read(self._key(call, f"a{attempt}.claim"))
        return Claim.decode(data) if data is not None else None

    def _read_finished(self, call: str, attempt: int) -> Finished | None:
        data = self.store.read(self._key(call, f"a{attempt}.outcome"))
        return Finished.decode(data) if data is not None else None

    # ------------------------------------------------------------------ the owner's side

    def claim(self, call: str, attempt: int, *, digest: str, signature: str = "") -> tuple[bool, Claim]:
        """Try to become the one replica that runs this attempt: ``(won, the claim in force)``.

        Call it right before the function starts: a won claim means "it may have begun".
        Raises StoreError when the store cannot be written (then nothing may start).
        """
        mine = Claim(
            call=call,
            attempt=attempt,
            owner=self.owner,
            token=secrets.token_hex(8),
            digest=digest,
            signature=signature,
            at=self._clock(),
            lease=self.lease_seconds,
        )
        if self.store.create(self._key(call, f"a{attempt}.claim"), mine.encode()):
            return True, mine
        existing = self.claim_of(call, attempt)
        if existing is None:  # pragma: no cover - records are only removed long after they end
            raise StoreError(f"the claim of {call!r} attempt {attempt} vanished while being read")
        # a retried write (after a timeout) finds the object its first try created: still ours
        return existing.token == mine.token, existing

    def renew(self, call: str, attempt: int) -> None:
        """The owner is alive and still running the call."""
        lease = {"owner": self.owner, "at": self._clock()}
        self.store.write(self._key(call, f"a{attempt}.lease"), json.dumps(lease).encode())

    def write_log(self, call: str, attempt: int, offset: int, data: bytes) -> None:
        """A piece of the call's output, from byte ``offset`` on (for followers on other replicas)."""
        self.store.write(self._key(call, f"a{attempt}.log.{offset:012d}"), data)

    def read_log(self, call: str, attempt: int, offset: int) -> bytes | None:
        """The piece of output written at byte ``offset``, if there is one yet."""
        return self.store.read(self._key(call, f"a{attempt}.log.{offset:012d}"))

    def cancel_requested(self, call: str) -> bool:
        return self.store.read(self._key(call, "cancel")) is not None

    def finish(self, call: str, finished: Finished) -> Finished:
        """Record how the call ended; returns the outcome in force (another may have won)."""
        if self.store.create(self._key(call, f"a{finished.attempt}.outcome"), finished.encode()):
            return finished
        existing = self._read_finished(call, finished.attempt)
        if existing is None:  # pragma: no cover - see claim()
            raise StoreError(f"the outcome of {call!r} attempt {finished.attempt} vanished while being read")
        return existing

    def finished(self, call: str, attempt: int, status: int, body: bytes, error: str = "") -> Finished:
        """This replica's answer for a call it ran, as a record."""
        return Finished(status, body, error, attempt=attempt, owner=self.owner, at=self._clock())

    # ------------------------------------------------------------------ everyone's side

    def state(self, call: str, attempt: int = 1, *, void: bool = True) -> State:
        """Where attempt ``attempt`` of ``call`` stands (following later attempts that exist).

        With ``void`` (a status query after a broken connection), an attempt nobody claimed is
        declared void, so it can never start; without it (a probe before sending), nothing is
        written. An expired lease is turned into an "abandoned" outcome here.
        """
        attempt = max(1, attempt)
        while True:
            claim = self.claim_of(call, attempt)
            if claim is None:
                if not void:
                    return NotStarted(next_attempt=attempt, voided=False)
                if self._void(call, attempt):
                    return NotStarted(next_attempt=attempt + 1, voided=True)
                continue  # a claim (or a void) appeared meanwhile: read it
            if claim.void:
                attempt += 1  # a later attempt may exist: follow it
                if self.claim_of(call, attempt) is None:
                    return NotStarted(next_attempt=attempt, voided=True)
                continue
            finished = self._read_finished(call, attempt)
            if finished is not None:
                return finished
            renewed = claim.at
            lease = self.store.read(self._key(call, f"a{attempt}.lease"))
            if lease is not None:
                renewed = max(renewed, float(json.loads(lease).get("at", 0.0)))
            now = self._clock()
            if now - renewed <= claim.lease:
                return Running(claim, renewed)
            return self.finish(call, self._abandoned(claim, renewed, now))

    def _void(self, call: str, attempt: int) -> bool:
        void = Claim(call=call, attempt=attempt, void=True, at=self._clock(), note=f"voided by {self.owner}")
        return self.store.create(self._key(call, f"a{attempt}.claim"), void.encode())

    def _abandoned(self, claim: Claim, renewed: float, now: float) -> Finished:
        status, body, error = error_answer(
            500,
            ABANDONED,
            f"{self.kind[:-1]} {claim.call!r} (attempt {claim.attempt}) was abandoned: the pod "
            f"{claim.owner} that ran it stopped renewing its lease at {_iso(renewed)} and has not been "
            f"heard of for {now - renewed:.0f} s (lease {claim.lease:g} s), so it is gone (scaled down, "
            "evicted or killed) and the call may have partly run. It is not run again here; Airflow's "
            "task retries decide",
        )
        return Finished(
            status, body, error, attempt=claim.attempt, owner=claim.owner, at=now, how="abandoned"
        )

    def cancelled(self, call: str, attempt: int, why: str) -> Finished:
        """The outcome of a call stopped on request (a task marked failed or cleared)."""
        status, body, error = error_answer(
            500, CANCELLED, f"{self.kind[:-1]} {call!r} was cancelled on this pod ({self.owner}): {why}"
        )
        return Finished(
            status, body, error, attempt=attempt, owner=self.owner, at=self._clock(), how="cancelled"
        )

    def request_cancel(self, call: str, why: str) -> None:
        """Ask whoever runs ``call`` to stop it (idempotent)."""
        note = {"by": self.owner, "at": self._clock(), "why": why}
        self.store.create(self._key(call, "cancel"), json.dumps(note).encode())
