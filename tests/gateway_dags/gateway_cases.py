"""DAGs for the gateway's error paths: a failing function, a slow one, two leaves, one kept paused."""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import dag, task


@dag(schedule=None, catchup=False, tags=["gateway-test"])
def gateway_fails() -> Any:
    @task.knative(service="test-worker")
    def explode(params: dict[str, Any] | None = None) -> None:
        raise ValueError(f"boom: cannot process {params['data']!r}")

    return explode()


@dag(schedule=None, catchup=False, tags=["gateway-test"])
def gateway_slow() -> Any:
    @task
    def nap(params: dict[str, Any] | None = None) -> str:
        seconds = float(params["data"])
        time.sleep(seconds)
        return f"slept {seconds} s"

    return nap()


@dag(schedule=None, catchup=False, tags=["gateway-test"])
def gateway_two_leaves() -> None:
    @task
    def left() -> str:
        return "left"

    @task
    def right() -> str:
        return "right"

    left()
    right()


@dag(schedule=None, catchup=False, tags=["gateway-test"])
def gateway_paused() -> Any:
    @task
    def echo(params: dict[str, Any] | None = None) -> Any:
        return params["data"]

    return echo()


gateway_fails()
gateway_slow()
gateway_two_leaves()
gateway_paused()
