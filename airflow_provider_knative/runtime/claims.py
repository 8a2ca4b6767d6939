"""The runtime's side of the record of a call (``records.py``): claiming, leases, cancelling.

``Claimer`` is handed to the code that runs a call, which calls it right before the function
starts (after the arguments were fetched: that is idempotent work): the claim is the point of
no return. With thread isolation it runs in the server's worker thread; with process isolation
in the forked child, which rebuilds it from :meth:`Claimer.to_wire`. A claim that another
replica holds, or that a status query declared void, is answered from the record instead.

``Leases`` is one thread of the server that, for every call this replica owns, renews the
lease (so other replicas know it is alive) and looks for a cancel request; at the end of the
drain it records how each unfinished call ended before the process exits.

Without a store (``records is None``) none of this happens: the process's memory (the ledger)
is the only record, and the guarantees hold for one replica only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_knative import config, records, store
from airflow_provider_knative.errors import StoreError
from airflow_provider_knative.records import Finished, Records

log = logging.getLogger("airflow_provider_knative.runtime")

#: how often the lease thread looks at what it holds
TICK_SECONDS = 0.5
#: the "answer" of a claim held by another replica with the same request: wait for its record
FOLLOW: tuple[int, bytes, str] = (0, b"", "follow")


def replica_name() -> str:
    """This runtime process as the record names it: the pod (the hostname, in Knative) and the
    process id (several runtimes on one host, in the local stack and the tests)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_records(kind: str, owner: str | None = None) -> Records | None:
    """The records of ``kind`` in ``[knative] xcom_store_url``, when one is configured.

    Only an explicitly configured store counts: the default (a folder under ``$AIRFLOW_HOME``)
    is private to one pod, and a record only one replica can read is no record at all.
    """
    url = (config.raw("xcom_store_url") or "").strip()
    if not url:
        return None
    return Records(
        store.open_store(url),
        kind,
        owner=owner or replica_name(),
        lease_seconds=float(config.get("record_lease_seconds")),
    )


def warm() -> None:
    """Open the records' store before the fork server forks (an S3 client costs tens of
    milliseconds to build; every child inherits this one, with no connection open yet)."""
    opened = open_records(records.INVOCATIONS)
    if opened is not None:
        getattr(opened.store, "client", None)


def request_digest(body: bytes | bytearray | memoryview) -> str:
    """What binds an id to its request: the SHA-256 of the whole request body."""
    return hashlib.sha256(body).hexdigest()


@dataclass
class Claimer:
    """Claims one attempt of one call right before it starts (see the module docstring).

    ``answer`` builds the runtime's HTTP answer ``(status, body, error)`` for a claim it lost;
    ``claimed`` is set once the claim is won.
    """

    call: str
    attempt: int
    digest: str
    signature: str
    book: Records
    claimed: bool = False
    #: the outcome is in the record already (a forked child wrote it as soon as it had it)
    recorded: bool = False
    #: the claim in force when it was lost to another replica (follow its record)
    holder: records.Claim | None = None

    def __call__(self) -> tuple[int, bytes, str] | None:
        """None: the call may start now. Otherwise the answer to give instead of running it."""
        try:
            won, claim = self.book.claim(
                self.call, self.attempt, digest=self.digest, signature=self.signature
            )
        except StoreError as exc:
            return records.error_answer(
                503,
                "StoreUnavailable",
                f"nothing was started: the claim that must precede every run could not be written to "
                f"{self.book.where} ({exc}); send it again once the store is back",
            )
        if won:
            self.claimed = True
            return None
        return self.refused(claim) or FOLLOW

    def refused(self, claim: records.Claim) -> tuple[int, bytes, str] | None:
        """The answer for a claim held by someone else; None: follow the holder's record."""
        if claim.void:
            return records.not_started_answer(
                409,
                "AttemptVoided",
                f"attempt {self.attempt} of {self.call!r} was declared void ({claim.note}) after its "
                "connection broke, so it never runs; send it again as the next attempt",
                self.attempt + 1,
            )
        if claim.digest != self.digest:
            return records.error_answer(
                409,
                "RequestMismatch",
                f"{self.book.kind[:-1]} id {self.call!r} was already used by another request (a different function "
                "version or other arguments: a task re-run outside the scheduler with the same try number "
                f"can do that); it ran on {claim.owner}. One id is one request: this one is refused, and "
                "it is not answered with the other's outcome. Clear the task so Airflow gives it a new "
                "try number",
            )
        if self.signature and claim.signature == self.signature:
            return records.error_answer(
                401,
                "SignatureError",
                "this signed request was already accepted once (by the pod "
                f"{claim.owner}): a replay; every attempt must be signed afresh",
            )
        self.holder = claim
        return None

    def to_wire(self) -> dict[str, Any]:
        """What a forked child needs to claim for the server (its records open in the child)."""
        return {
            "call": self.call,
            "attempt": self.attempt,
            "digest": self.digest,
            "signature": self.signature,
            "kind": self.book.kind,
            "owner": self.book.owner,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Claimer:
        opened = open_records(data["kind"], owner=data["owner"])
        if opened is None:  # pragma: no cover - the server only sends a claim when it has a store
            raise StoreError("the runtime's store is not configured in the fork server")
        return cls(data["call"], data["attempt"], data["digest"], data["signature"], opened)


@dataclass
class _Held:
    call: str
    attempt: int
    #: stop the call: kill its process, or (thread isolation) only record it as ended
    stop: Callable[[], None]
    renewed: float = field(default_factory=time.monotonic)
    ended: bool = False


class Leases:
    """The calls this replica owns: their leases renewed, cancel requests heeded (a thread)."""

    def __init__(self, records_: Records, on_ended: Callable[[str, int, Finished], None]) -> None:
        self.records = records_
        #: told when a call ends by cancel or drain, with the outcome in force
        self.on_ended = on_ended
        self.every = max(0.2, records_.lease_seconds / records.RENEWALS_PER_LEASE)
        self._held: dict[tuple[str, int], _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knative-leases", daemon=True)
        self._thread.start()

    def hold(self, call: str, attempt: int, stop: Callable[[], None]) -> None:
        with self._lock:
            self._held[(call, attempt)] = _Held(call, attempt, stop)

    def release(self, call: str, attempt: int) -> None:
        with self._lock:
            self._held.pop((call, attempt), None)

    def held(self, call: str) -> list[tuple[str, int]]:
        with self._lock:
            return [key for key in self._held if key[0] == call]

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if not h.ended and now - h.renewed >= self.every]
            for held in due:
                try:
                    if self.records.cancel_requested(held.call):
                        self.cancel(
                            held.call, "a cancel was requested (the task was marked failed or cleared)"
                        )
                        continue
                    self.records.renew(held.call, held.attempt)
                    held.renewed = now
                except StoreError as exc:  # the next tick tries again; the lease is generous
                    log.warning("could not renew the lease of %s: %s", held.call, exc)

    def cancel(self, call: str, why: str) -> bool:
        """Stop the attempts of ``call`` this replica runs, recording them as cancelled."""
        return self._end(call, lambda attempt: self.records.cancelled(call, attempt, why))

    def stop_all(self, outcome: Callable[[str, int], Finished]) -> int:
        """The drain is over: record how every call still running ended, then stop it."""
        with self._lock:
            calls = {call for call, _ in self._held}
        return sum(self._end(call, functools.partial(outcome, call)) for call in calls)

    def _end(self, call: str, outcome: Callable[[int], Finished]) -> bool:
        with self._lock:
            mine = [h for h in self._held.values() if h.call == call and not h.ended]
            for held in mine:
                held.ended = True
        for held in mine:
            try:
                final = self.records.finish(call, outcome(held.attempt))
            except StoreError as exc:
                log.error("could not record how %s ended: %s", call, exc)
                final = outcome(held.attempt)
            held.stop()
            self.on_ended(call, held.attempt, final)
        return bool(mine)

    def close(self) -> None:
        self._stop.set()
