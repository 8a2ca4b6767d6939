"""The threads that run calls off the event loop, and the cheap way answers come back to it.

``loop.run_in_executor(ThreadPoolExecutor)`` costs about 50 us of CPU per call on the
event loop's side alone (a ``concurrent.futures.Future`` with its condition variable, a
pure-Python idle semaphore, an ``asyncio`` future chained to it, one wake-up of the loop per
answer): a quarter of what a no-op invocation cost. Here a call is a tuple in a C
``SimpleQueue`` and an ``asyncio`` future; a worker puts its answer in a deque and wakes the
loop only when no wake-up is pending already, so under load many answers come back with one
wake-up.

What stays the same as with the executor: at most ``max_workers`` calls run at once (more
wait in the queue, in order), threads start only when no idle one can take a call, a call
never runs on the event loop, and a future cancelled by the loop (the drain ran out) leaves
its call running to the end while nobody waits for its answer.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None


class Workers:
    """``max_workers`` threads running ``fn(*args)`` for the event loop (see the module docstring)."""

    def __init__(self, max_workers: int, name: str = "knative-invoke") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads blocked in get(); changed under _lock, read racily by submit()
        self._lock = threading.Lock()
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]]
        self._done = collections.deque()
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a worker thread; the answer arrives in the returned future.

        Call it from the event loop's thread, always the same loop.
        """
        if self._closed:
            raise RuntimeError("the worker threads are shut down")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((future, fn, args))
        # Racy on purpose: a thread just finishing a call may not count as idle yet, which can
        # only start a thread that was not needed (never more than max_workers).
        if self._idle < self._jobs.qsize() and len(self._threads) < self.max_workers:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return future

    @property
    def waiting(self) -> int:
        """Calls submitted that no worker has taken yet (every one is busy): for ``/metrics``."""
        return self._jobs.qsize()

    def _work(self) -> None:
        jobs, lock, done = self._jobs, self._lock, self._done
        while True:
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
            if job is _STOP:
                return
            future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the waiting coroutine, as the executor does
                result, error = None, exc
            done.append((future, result, error))
            del job, future, result, error
            # Appended before the flag is read: the loop clears the flag before it empties the
            # deque, so an answer is either seen by a pending drain or schedules its own.
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        """On the loop: hand every finished call's answer to its future."""
        self._wake_pending = False
        done = self._done
        while done:
            future, result, error = done.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def shutdown(self) -> None:
        """Drop the calls that have not started and let the threads end after their current call."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(job[0].cancel)
        for _ in self._threads:
            self._jobs.put(_STOP)
