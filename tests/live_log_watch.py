"""Read a task's log through Airflow's REST API while the task runs, as a user watching the UI.

Used by the end-to-end tests of live output (``@task.knative`` sync and deferred, and the
KnativeExecutor): a function prints ``tick N of 20`` every second for 20 seconds.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

TICK = re.compile(r"tick (\d+) of 20")
RUNNING = ("queued", "running", "deferred", "scheduled", "up_for_reschedule", None)


def task_log(client: Any, token: str, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
    response = client.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        token,
        headers={"Accept": "application/json"},
    )
    if response.status_code != 200:
        return ""
    content = response.json().get("content") or []
    return "\n".join(entry if isinstance(entry, str) else json.dumps(entry) for entry in content)


def ticks(log: str) -> list[int]:
    return [int(n) for n in TICK.findall(log)]


def watch(
    client: Any, token: str, dag_id: str, run_id: str, task_id: str, timeout: float = 300
) -> tuple[set[int], str]:
    """The ticks the task log showed while the task still ran, and its log once it ended.

    The log is read first and the task's state after it: ticks counted from a read whose
    following state read still says "running" were visible before the task ended.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    state: Any = None
    while time.monotonic() < deadline:
        log = task_log(client, token, dag_id, run_id, task_id)
        state = (
            client.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", token)
            .json()
            .get("state")
        )
        if state not in RUNNING:
            break
        seen.update(ticks(log))
        time.sleep(0.5)
    else:
        raise AssertionError(f"{dag_id}.{task_id} did not end within {timeout} s")
    final = ""
    for _ in range(60):  # the last lines (uploaded logs) may come a moment after the end
        final = task_log(client, token, dag_id, run_id, task_id)
        if 19 in ticks(final):
            break
        time.sleep(0.5)
    assert state == "success", (state, final[-3000:])
    return seen, final
