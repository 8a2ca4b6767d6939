"""The KnativeExecutor's metrics reach a real StatsD listener (a UDP socket on 127.0.0.1) through
Airflow's own ``Stats``, configured as Airflow configures it (``[metrics] statsd_on``): sent,
refused, retried (one per resend) and adopted, with the executor driven for real against a
runtime process and a port where nothing listens."""

from __future__ import annotations

import collections
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runtime_process import start_runtime
from servers import free_port
from workload_builder import execute_task

BASIC = Path(__file__).resolve().parent / "runtime_dags" / "basic"


class StatsdListener:
    """Counter packets (``name:value|c``) received on a UDP port, summed by name."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.counters: collections.Counter[str] = collections.Counter()

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            for line in data.decode().splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("c"):
                    self.counters[name] += int(value)

    def knative(self) -> dict[str, int]:
        self.drain()
        return {k: v for k, v in self.counters.items() if k.startswith("airflow.knative_executor.")}


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    listener = StatsdListener()
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    try:
        yield listener
    finally:
        from airflow._shared.observability.metrics.base_stats_logger import NoStatsLogger

        from airflow_provider_knative import airflow_compat

        airflow_compat.stats().initialize(factory=NoStatsLogger, export_legacy_names=False)
        listener.sock.close()


def _finished(executor: Any, key: Any, timeout: float = 60.0) -> Any:
    """Run the scheduler's side of the executor until ``key`` has a final state."""
    deadline = time.monotonic() + timeout
    while key not in executor.event_buffer:
        assert time.monotonic() < deadline, "the executor never reported the task"
        executor.sync()
        time.sleep(0.02)
    return executor.event_buffer[key]


def test_sent_refused_retried_and_adopted_reach_statsd(
    statsd: StatsdListener,
    airflow_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.utils.state import TaskInstanceState

    from airflow_provider_knative.executors import KnativeExecutor

    executor = KnativeExecutor()  # initialises Airflow's Stats from [metrics], as the scheduler does
    executor.start()
    try:
        # a runtime that does not run workloads refuses the task (404 WorkloadsDisabled)
        with start_runtime(BASIC, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as rt:
            monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", rt.url)
            refused = execute_task()
            executor.queue_workload(refused, session=None)
            executor.heartbeat()
            assert _finished(executor, refused.ti.key)[0] == TaskInstanceState.FAILED
        # nothing listens: sent again with backoff until the startup deadline, then refused
        monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AIRFLOW__KNATIVE__STARTUP_DEADLINE_SECONDS", "1.5")
        unreachable = execute_task()
        executor.queue_workload(unreachable, session=None)
        executor.heartbeat()
        state, info = _finished(executor, unreachable.ti.key)
        assert state == TaskInstanceState.FAILED
        attempts = re.search(r"did not become available: (\d+) attempt\(s\)", info)
        assert attempts, info
        resends = int(attempts.group(1)) - 1  # every attempt after the first is a resend
        assert resends >= 1
        # after a scheduler restart, a running task of ours is adopted
        running = SimpleNamespace(
            key=execute_task().ti.key,
            state=TaskInstanceState.RUNNING,
            external_executor_id="knative|delivery-1|airflow-tasks|pod-a",
        )
        assert executor.try_adopt_task_instances([running]) == []
    finally:
        executor.end()
    deadline = time.monotonic() + 30
    expected = {
        "airflow.knative_executor.sent": 2,
        "airflow.knative_executor.refused": 2,
        "airflow.knative_executor.retried": resends,
        "airflow.knative_executor.adopted": 1,
    }
    while statsd.knative() != expected and time.monotonic() < deadline:
        pass
    assert statsd.knative() == expected
