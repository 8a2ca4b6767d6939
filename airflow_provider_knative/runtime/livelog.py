"""A call's output while it runs: from the function's ``print`` to the client's task log.

Two halves, because a call runs in a worker thread of the server or in a forked child:

``Journal`` (where the function runs) receives every piece the call's ``LogCapture`` takes,
numbers it by byte offset, and hands the new text on every ``FLUSH_SECONDS``: to the server
(``on_text``; a child sends it over its pipe) and, when the runtime keeps records, to the
store (``aN.log.<offset>`` in the call's record), so a replica that did not run the call can
stream it to a client that re-attached there. It stops at ``max_bytes`` (``[knative]
log_max_bytes``) with one line saying so: the task log is not flooded, and the function goes on.
Closing it flushes what is left, before the outcome is recorded, so a reader that finds the
outcome also finds every piece of output.

``LiveLog`` (in the server, on the event loop's side) holds what arrived and wakes the
streams that follow it (``POST /invoke`` and ``GET /invocations/<id>?stream=1`` with
``Accept: application/x-knative-frames``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from airflow_provider_knative.errors import StoreError
from airflow_provider_knative.records import Records

#: how often new output goes to the server (and to its followers)
FLUSH_SECONDS = 0.2
#: how often new output goes to the store (for followers on other replicas)
STORE_SECONDS = 1.0


def _size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def cut_line(max_bytes: int) -> str:
    return (
        f"[... the rest of this call's output is not streamed: it passed [knative] log_max_bytes = "
        f"{max_bytes}; the call goes on, and its pod's log (kubectl logs) has all of it ...]\n"
    )


@dataclass(eq=False)
class Journal:
    """The output of one call, numbered by byte offset, handed on in batches (module docstring)."""

    max_bytes: int
    #: the server's side: ``(text, offset)``
    on_text: Callable[[str, int], None] | None = None
    #: ``(records, call, attempt)``: where followers on other replicas read it
    store: tuple[Records, str, int] | None = None
    _pending: list[str] = field(default_factory=list)
    _written: int = 0  # bytes taken so far (the offset of the next piece)
    _sent: int = 0  # bytes handed to on_text
    _stored: int = 0  # bytes written to the store
    _unstored: list[str] = field(default_factory=list)
    _cut: bool = False
    _last_store: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._cut:
                return
            if self._written + _size(text) > self.max_bytes:
                text = cut_line(self.max_bytes)
                self._cut = True
            self._pending.append(text)
            self._written += _size(text)

    def flush(self, *, final: bool = False) -> None:
        """Hand on what is new (every FLUSH_SECONDS, and once at the end)."""
        with self._lock:
            pending, self._pending = "".join(self._pending), []
            offset = self._sent
            self._sent += _size(pending)
            if pending and self.store is not None:
                self._unstored.append(pending)
            due = bool(self.store is not None and self._unstored) and (
                final or time.monotonic() - self._last_store >= STORE_SECONDS
            )
            unstored, store_at = ("".join(self._unstored), self._stored) if due else ("", 0)
            if due:
                self._unstored = []
                self._stored += _size(unstored)
                self._last_store = time.monotonic()
        if pending and self.on_text is not None:
            self.on_text(pending, offset)
        if unstored:
            assert self.store is not None
            records, call, attempt = self.store
            try:
                records.write_log(call, attempt, store_at, unstored.encode("utf-8", "replace"))
            except StoreError:  # followers elsewhere miss it live; the outcome still has it all
                pass


class Flusher:
    """One thread per process that flushes every open Journal every FLUSH_SECONDS."""

    def __init__(self) -> None:
        self._journals: set[Journal] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, journal: Journal) -> None:
        with self._lock:
            self._journals.add(journal)
            if self._thread is None or not self._thread.is_alive():  # a forked child starts its own
                self._thread = threading.Thread(target=self._run, name="knative-log-flusher", daemon=True)
                self._thread.start()

    def close(self, journal: Journal) -> None:
        """Stop flushing ``journal`` and flush what is left of it, here and now."""
        with self._lock:
            self._journals.discard(journal)
        journal.flush(final=True)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                journals = list(self._journals)
            for journal in journals:
                journal.flush()


FLUSHER = Flusher()


@dataclass(eq=False)
class LiveLog:
    """What arrived of one call's output, for the streams that follow it (on the event loop)."""

    loop: asyncio.AbstractEventLoop
    pieces: list[tuple[int, str]] = field(default_factory=list)
    size: int = 0
    ended: bool = False
    #: set when the function begins: a streaming client then gets frames, not a plain answer
    began: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: when it ended (monotonic), for the registry's retention
    ended_at: float = 0.0

    def append(self, text: str, offset: int) -> None:
        """From any thread: a piece of output at ``offset``."""
        self.loop.call_soon_threadsafe(self._append, text, offset)

    def _append(self, text: str, offset: int) -> None:
        if offset != self.size:  # never a gap or an overlap: pieces come in order, once
            return
        self.pieces.append((offset, text))
        self.size += _size(text)
        self._wake()

    def start(self) -> None:
        """From any thread: the function begins."""
        self.loop.call_soon_threadsafe(self.began.set)

    def end(self) -> None:
        """On the loop: no more output will come."""
        self.ended = True
        self.ended_at = time.monotonic()
        self.began.set()
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def since(self, offset: int) -> list[tuple[int, str]]:
        """The pieces from byte ``offset`` on (a piece that starts before it is cut)."""
        out = []
        for at, text in self.pieces:
            size = _size(text)
            if at + size <= offset:
                continue
            if at < offset:
                text = text.encode("utf-8", "replace")[offset - at :].decode("utf-8", "ignore")
                at = offset
            out.append((at, text))
        return out


class LiveLogs:
    """The server's LiveLogs by ledger key; ended ones are kept a while for re-attaching clients."""

    RETENTION_SECONDS = 600.0
    MAX_ENDED = 256

    def __init__(self) -> None:
        self._logs: dict[str, LiveLog] = {}
        self._lock = threading.Lock()  # added from worker threads, read on the event loop

    def add(self, key: str, live: LiveLog) -> None:
        with self._lock:
            self._forget_old()
            self._logs.setdefault(key, live)

    def get(self, key: str) -> LiveLog | None:
        with self._lock:
            return self._logs.get(key)

    def _forget_old(self) -> None:
        now = time.monotonic()
        ended = [(k, v) for k, v in self._logs.items() if v.ended]
        for key, live in ended:
            if now - live.ended_at > self.RETENTION_SECONDS or len(ended) > self.MAX_ENDED:
                del self._logs[key]
                ended.remove((key, live))
