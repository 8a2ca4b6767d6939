"""A call's output in the Airflow task log while it runs, read through the REST API.

On the real local deployment (tests/e2e_stack.py: PostgreSQL, api-server, scheduler with
LocalExecutor, dag-processor, triggerer, a runtime): a ``@task.knative`` function prints a
line every second for 20 seconds, once sync and once deferred. While the task runs, its log
read through the REST API (what the UI shows) must hold at least 15 of the lines; once it
ends, each line exactly once, inside the fence, followed by the timing line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from live_log_watch import ticks, watch

if TYPE_CHECKING:
    from e2e_stack import E2EStack

pytest_plugins = ["e2e_stack"]
pytestmark = pytest.mark.e2e


def _trigger(stack: E2EStack, dag_id: str) -> str:
    stack.client.set_paused(dag_id, False, stack.admin)
    response = stack.client.api(
        "POST", f"/dags/{dag_id}/dagRuns", stack.admin, json={"logical_date": None, "conf": {}}
    )
    assert response.status_code == 200, response.text
    return response.json()["dag_run_id"]


@pytest.mark.parametrize("dag_id", ["live_logs", "live_logs_deferrable"])
def test_the_task_log_shows_the_functions_lines_while_it_runs(e2e_stack: E2EStack, dag_id: str) -> None:
    run_id = _trigger(e2e_stack, dag_id)
    seen, final = watch(e2e_stack.client, e2e_stack.admin, dag_id, run_id, "tick")
    assert len(seen) >= 15, (sorted(seen), final[-4000:])
    assert sorted(ticks(final)) == list(range(20)), final[-4000:]  # each line exactly once
    assert "---- remote logs (live), as it runs ----" in final and "---- end of remote logs ----" in final
    assert "Knative call to live: " in final  # where the time went
