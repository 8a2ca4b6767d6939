"""The runtime's worker threads: bounded, in order, errors handed back, cancellation safe."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from airflow_provider_knative.runtime.workers import Workers


def test_at_most_max_workers_calls_run_at_once_and_all_answer() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def call(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i * i

    async def main() -> list[int]:
        workers = Workers(3)
        try:
            return await asyncio.gather(*(workers.submit(call, i) for i in range(40)))
        finally:
            workers.shutdown()

    assert asyncio.run(main()) == [i * i for i in range(40)]
    assert peak == 3


def test_an_exception_reaches_the_awaiting_coroutine_as_raised() -> None:
    def fail() -> None:
        raise LookupError("no such function")

    async def main() -> None:
        workers = Workers(1)
        try:
            with pytest.raises(LookupError, match="no such function"):
                await workers.submit(fail)
            assert await workers.submit(lambda: "still serving") == "still serving"
        finally:
            workers.shutdown()

    asyncio.run(main())


def test_a_cancelled_wait_leaves_the_call_running_to_its_end() -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        finished.set()
        return "done"

    async def main() -> None:
        workers = Workers(1)
        try:
            future = workers.submit(slow)
            await asyncio.sleep(0.05)
            future.cancel()
            # the thread carries on and its late answer is dropped without an error on the loop
            assert await workers.submit(lambda: "next") == "next"
            assert finished.is_set()
        finally:
            workers.shutdown()

    asyncio.run(main())


def test_shutdown_cancels_calls_that_have_not_started() -> None:
    gate = threading.Event()

    async def main() -> None:
        workers = Workers(1)
        first = workers.submit(gate.wait, 5)
        queued = workers.submit(lambda: "never")
        await asyncio.sleep(0.05)
        workers.shutdown()
        gate.set()
        assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="shut down"):
            workers.submit(lambda: None)

    asyncio.run(main())


def test_max_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Workers(0)
