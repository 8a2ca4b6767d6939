"""What a user sees: the XCom tab of a real Airflow 3 api-server in a real (headless) Chromium,
and the REST API's XCom entries, for a task that returned a tuple, a ~1 MB DataFrame and a
50 MB ndarray through the Knative XCom backend.

The DAG runs with ``dag.test()`` on the session's SQLite database; then ``airflow api-server``
(Airflow's own UI and REST API, no plugin involved in rendering XComs) serves that database
on a free loopback port, and Debian's Chromium, driven through chromedriver, opens each task's
XCom tab. Screenshots are saved in the test's temporary directory (the path is printed).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from browser import chromium
from servers import BIN, free_port, stop_process
from xcom_dagrun import run_dag, task_states, xcom_rows

DAG_ID = "xcom_ui"

#: per task: text that must be visible on its XCom tab (and in the REST API's stringified value)
EXPECTED = {
    "make_tuple": ["(1,2,three)"],
    "make_frame": [
        "spilled@version=1(DataFrame 25000 rows x 4 cols",
        "Paris",
        "Berlin",
        "2024-01-01 00:04:00",
    ],
    "make_array": ["spilled@version=1(ndarray float64 (6553600,), 50.0 MiB", "[0.000000e+00, 1.000000e+00"],
}


def _run_the_dag() -> str:
    dr = run_dag(DAG_ID)
    assert str(dr.state) == "success", task_states(dr)
    rows = xcom_rows(DAG_ID, dr.run_id)
    assert "packed" in rows[("make_tuple", -1, "return_value")]
    assert "ref" in rows[("make_frame", -1, "return_value")]
    assert rows[("make_array", -1, "return_value")]["size"] > 50 * 1024 * 1024
    return str(dr.run_id)


@pytest.fixture(scope="module")
def ui(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``airflow api-server`` on the session's database (no login: all users are admins), and
    the id of a run of the DAG, made with ``dag.test()`` while the api-server starts."""
    port = free_port()
    log = tmp_path_factory.mktemp("api-server") / "api-server.log"
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": "xcom-ui-test-secret-0123456789abcdef",
        "AIRFLOW__API__SECRET_KEY": "xcom-ui-test-key-0123456789abcdef",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "airflow"),
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        run_id = _run_the_dag()
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"api-server exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
            try:
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"api-server not up after 90 s:\n{log.read_text()[-5000:]}")
            time.sleep(0.3)
        yield url, run_id
    finally:
        stop_process(proc)


def test_rest_api_xcom_entries_carry_the_preview(ui: tuple[str, str]) -> None:
    api_server, xcom_run = ui
    token = httpx.get(f"{api_server}/auth/token", timeout=30).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for task_id, snippets in EXPECTED.items():
        entry = f"{api_server}/api/v2/dags/{DAG_ID}/dagRuns/{quote(xcom_run, safe='')}/taskInstances/{task_id}/xcomEntries/return_value"
        raw = httpx.get(entry, headers=headers, timeout=30)
        assert raw.status_code == 200, raw.text
        stored = raw.json()["value"]  # the stored JSON, as it is
        assert stored["__knative_xcom__"] == 1 and stored["preview"], stored
        assert len(stored["preview"]) <= 1000
        shown = httpx.get(entry, params={"deserialize": "true"}, headers=headers, timeout=30)
        assert shown.status_code == 200, shown.text
        text = shown.json()["value"]  # what the UI renders: Airflow's stringify of it
        assert isinstance(text, str), text
        for snippet in snippets:
            assert snippet in text, (task_id, snippet, text)
        assert "packed" not in text and "S05D" not in text  # never the base64 frame


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


def test_xcom_tab_shows_the_preview_in_a_real_browser(
    ui: tuple[str, str], browser: object, tmp_path: Path
) -> None:
    api_server, xcom_run = ui
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    run = quote(xcom_run, safe="")
    # log in (all users are admins here): the cookie is set, then the UI opens
    driver.get(f"{api_server}/auth/token/login?next=/dags/{DAG_ID}")  # type: ignore[attr-defined]
    shots = []
    for task_id, snippets in EXPECTED.items():
        driver.get(f"{api_server}/dags/{DAG_ID}/runs/{run}/tasks/{task_id}/xcom")  # type: ignore[attr-defined]

        def shown(d: object, snippets: list[str] = snippets) -> str | bool:
            cells = d.find_elements(By.CSS_SELECTOR, '[data-testid="xcom-value"]')  # type: ignore[attr-defined]
            text = "\n".join(c.text for c in cells if c.is_displayed())  # .text: visible text only
            return text if text and all(s in text for s in snippets) else False

        try:
            visible = WebDriverWait(driver, 30).until(shown)
        finally:
            shot = tmp_path / f"xcom_tab_{task_id}.png"
            driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
            shots.append(shot)
            print(f"screenshot: {shot}")
        assert "S05D" not in str(visible)
        assert shot.stat().st_size > 10_000
    print("screenshots in", tmp_path)
