"""A call's output in the Airflow task log while it runs, read through the REST API.

On the real local deployment (tests/e2e_stack.py: PostgreSQL, api-server, scheduler with
LocalExecutor, dag-processor, triggerer, a runtime): a ``@task.knative`` function prints a
line every second for 20 seconds, once sync and once deferred. While the task runs, its log
read through the REST API (what the UI shows) must hold at least 15 of the lines; once it
ends, each line exactly once, inside the fence, followed by the timing line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from browser import chromium
from live_log_watch import ticks, watch

if TYPE_CHECKING:
    from e2e_stack import E2EStack

pytest_plugins = ["e2e_stack"]
pytestmark = pytest.mark.e2e
#: the cookie Airflow's UI keeps the user's token in
COOKIE = "_token"


def _trigger(stack: E2EStack, dag_id: str) -> str:
    stack.client.set_paused(dag_id, False, stack.admin)
    response = stack.client.api(
        "POST", f"/dags/{dag_id}/dagRuns", stack.admin, json={"logical_date": None, "conf": {}}
    )
    assert response.status_code == 200, response.text
    return response.json()["dag_run_id"]


def test_the_ui_shows_the_lines_while_the_task_runs_then_the_timing_line(
    e2e_stack: E2EStack, tmp_path: Path
) -> None:
    """The task's page in the real UI (headless Chromium), while the function still prints, then
    once it ended: the lines come in as they are printed; the last line says where the time
    went. Screenshots in the test's temporary folder (docs/live_logs*.png are such shots)."""
    from selenium.webdriver.support.ui import WebDriverWait

    run_id = _trigger(e2e_stack, "live_logs")
    page = f"{e2e_stack.stack.url}/dags/live_logs/runs/{quote(run_id, safe='')}/tasks/tick"
    with chromium(1500, 1000) as driver:
        driver.get(e2e_stack.stack.url + "/api/v2/version")  # the cookie's site, before setting it
        driver.add_cookie({"name": COOKIE, "value": e2e_stack.admin, "path": "/"})
        driver.get(page)

        def text(d: object) -> str:
            return d.find_element("tag name", "body").text  # type: ignore[attr-defined]

        def running_with(n: int) -> Callable[[object], bool]:
            return lambda d: sum(f"tick {i} of 20" in text(d) for i in range(20)) >= n

        try:
            WebDriverWait(driver, 120, poll_frequency=1).until(running_with(5))
            state = e2e_stack.client.api(
                "GET", f"/dags/live_logs/dagRuns/{run_id}/taskInstances/tick", e2e_stack.admin
            ).json()["state"]
        finally:
            driver.save_screenshot(str(tmp_path / "live_logs_running.png"))
        assert state == "running", state  # the lines were on screen before the task ended
        deadline = time.monotonic() + 120
        while "Knative call to live" not in text(driver) and time.monotonic() < deadline:
            driver.refresh()  # the UI follows a running task's log; a finished one is read again
            time.sleep(2)
        driver.save_screenshot(str(tmp_path / "live_logs_done.png"))
        shown = text(driver)
    print("screenshots in", tmp_path)
    assert "Knative call to live: " in shown and "ran on " in shown
    assert all(f"tick {i} of 20" in shown for i in range(20))


@pytest.mark.parametrize("dag_id", ["live_logs", "live_logs_deferrable"])
def test_the_task_log_shows_the_functions_lines_while_it_runs(e2e_stack: E2EStack, dag_id: str) -> None:
    run_id = _trigger(e2e_stack, dag_id)
    seen, final = watch(e2e_stack.client, e2e_stack.admin, dag_id, run_id, "tick")
    assert len(seen) >= 15, (sorted(seen), final[-4000:])
    assert sorted(ticks(final)) == list(range(20)), final[-4000:]  # each line exactly once
    assert "---- remote logs (live), as it runs ----" in final and "---- end of remote logs ----" in final
    assert "Knative call to live: " in final  # where the time went
