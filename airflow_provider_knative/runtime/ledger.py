"""What this runtime has run, by invocation id: the memory behind "at most once".

Every invocation from Airflow carries an id (the task try's identity). The first request
with an id runs the function; any later request with the same id (a client retry after a
broken connection, a replay, a triggerer that restarted) gets the recorded outcome, or waits
for it while the first is still running. ``GET /invocations/<id>`` reads the ledger without
ever starting anything, which is how a client learns the outcome of a call whose connection
broke.

The memory is per process and bounded: finished outcomes are kept for ``retention_seconds``
and at most ``max_bytes`` of them (oldest evicted first); running entries are never evicted.
A pod that dies forgets, and then the client is told "unknown", never a second run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: how long a finished outcome stays available to a client that lost its connection
DEFAULT_RETENTION_SECONDS = 3600.0
#: the most memory recorded outcomes may hold (bodies are small: large results are references)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class Entry(Generic[T]):
    """One invocation id: running until ``outcome`` is set."""

    started: float
    #: what identifies the request that began it (the runtime keeps its digest and signature)
    request: Any = None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: T | None = None
    finished: float = 0.0
    size: int = 0


class Ledger(Generic[T]):
    """Thread-safe record of invocation ids and their outcomes (see the module docstring)."""

    def __init__(
        self,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        size_of: Callable[[T], int] = lambda _: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._clock = clock
        self._entries: OrderedDict[str, Entry[T]] = OrderedDict()
        self._finished_bytes = 0
        self._lock = threading.Lock()

    def begin(self, invocation_id: str, request: Any = None) -> tuple[Entry[T], bool]:
        """The entry for ``invocation_id`` and whether the caller must run it (first sight)."""
        with self._lock:
            self._evict()
            entry = self._entries.get(invocation_id)
            if entry is not None:
                return entry, False
            entry = Entry(started=self._clock(), request=request)
            self._entries[invocation_id] = entry
            return entry, True

    def finish(self, invocation_id: str, outcome: T) -> None:
        """Record the outcome of a run this caller began; wake everyone waiting for it.

        The first outcome stays: a call ended early (cancelled, or stopped by the drain) keeps
        that outcome when its thread returns later."""
        with self._lock:
            entry = self._entries.get(invocation_id)
            if entry is None or entry.done.is_set():
                return
            entry.outcome = outcome
            entry.finished = self._clock()
            entry.size = self._size_of(outcome)
            self._finished_bytes += entry.size
            self._entries.move_to_end(invocation_id)
            entry.done.set()
            self._evict()

    def forget(self, invocation_id: str) -> None:
        """Drop a running entry whose run never started the function (refused before the call)."""
        with self._lock:
            entry = self._entries.pop(invocation_id, None)
            if entry is not None:
                self._finished_bytes -= entry.size
                entry.done.set()

    def get(self, invocation_id: str) -> Entry[T] | None:
        with self._lock:
            self._evict()
            return self._entries.get(invocation_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict(self) -> None:
        """Drop finished entries past retention, then the oldest finished ones over the byte cap."""
        now = self._clock()
        for key in list(self._entries):
            if self._finished_bytes <= self.max_bytes and not self._expired(self._entries[key], now):
                # entries are kept in finishing order, running ones before: stop at the first keeper
                if self._entries[key].done.is_set():
                    break
                continue
            entry = self._entries[key]
            if not entry.done.is_set():
                continue  # never evict a running call
            del self._entries[key]
            self._finished_bytes -= entry.size

    def _expired(self, entry: Entry[T], now: float) -> bool:
        return entry.done.is_set() and now - entry.finished > self.retention_seconds
