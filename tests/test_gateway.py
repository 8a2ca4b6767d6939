"""The workflow gateway on the real deployment: results, errors, auth, timeouts.

Runs against the session's end-to-end stack (PostgreSQL, moto S3, api-server with the
plugin, scheduler, triggerer, runtime), through HTTP exactly as a user's client would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from e2e_stack import E2EStack

pytest_plugins = ["e2e_stack"]  # one deployment per session, shared with test_e2e.py
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(e2e_stack: E2EStack) -> E2EStack:
    return e2e_stack


def test_success_returns_the_result_task_output(gw: E2EStack) -> None:
    response = gw.client.run_workflow("compute_avg_distributed", [2, 4, 9], gw.admin, unpause=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == 5.0
    assert body["state"] == "success"
    assert body["result_task_id"] == "average"
    run = gw.client.api("GET", f"/dags/compute_avg_distributed/dagRuns/{body['dag_run_id']}", gw.admin)
    assert run.json()["conf"] == {"data": [2, 4, 9]}
    assert run.json()["logical_date"] is None


def test_failed_run_names_the_failed_task_and_its_error(gw: E2EStack) -> None:
    response = gw.client.run_workflow("gateway_fails", "bad-input", gw.admin, unpause=True)
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["state"] == "failed"
    assert "output" not in body
    assert "explode" in body["detail"]
    [failed] = body["failed_tasks"]
    assert failed["task_id"] == "explode"
    assert "boom: cannot process 'bad-input'" in failed["error"]


def test_timeout_answers_202_then_the_poll_url_gives_the_result(gw: E2EStack) -> None:
    response = gw.client.run_workflow("gateway_slow", 4, gw.admin, timeout=0.5, unpause=True)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] in ("queued", "running")
    assert body["poll_url"].endswith(f"/knative/runs/gateway_slow/{body['dag_run_id']}")
    assert response.headers["location"] == body["poll_url"]
    assert gw.client.poll(body["poll_url"], gw.admin).status_code == 202  # still running
    done = gw.client.poll(body["poll_url"], gw.admin, wait=120)
    assert done.status_code == 200, done.text
    assert done.json()["output"] == "slept 4.0 s"
    assert done.json()["dag_run_id"] == body["dag_run_id"]


def test_unauthenticated_is_401(gw: E2EStack) -> None:
    response = gw.client.run_workflow("compute_avg_distributed", [1], None)
    assert response.status_code == 401
    assert gw.client.poll("/knative/runs/compute_avg_distributed/x", None).status_code == 401


def test_user_without_trigger_permission_is_403(gw: E2EStack) -> None:
    response = gw.client.run_workflow("compute_avg_distributed", [1], gw.viewer)
    assert response.status_code == 403, response.text


def test_unknown_dag_is_404(gw: E2EStack) -> None:
    response = gw.client.run_workflow("no_such_dag", [1], gw.admin)
    assert response.status_code == 404
    assert "no_such_dag" in response.json()["detail"]
    assert gw.client.poll("/knative/runs/compute_avg_distributed/no_such_run", gw.admin).status_code == 404


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "input"),
        ({"input": [1], "timeout": "soon"}, "timeout"),
        ({"input": [1], "timeout": -1}, "timeout"),
        ({"input": [1], "inputs": [2]}, "inputs"),
    ],
)
def test_malformed_body_is_422_with_the_reason(gw: E2EStack, body: dict, reason: str) -> None:
    response = gw.client.http.post(
        "/knative/runWorkflow/compute_avg_distributed", json=body, headers=gw.client.auth(gw.admin)
    )
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(reason in err["loc"] for err in errors), errors
    assert all(err["msg"] for err in errors)


def test_not_json_is_422(gw: E2EStack) -> None:
    response = gw.client.http.post(
        "/knative/runWorkflow/compute_avg_distributed",
        content=b"{not json",
        headers={**gw.client.auth(gw.admin), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "json" in response.text.lower()


def test_paused_dag_is_409_unless_asked_to_unpause(gw: E2EStack) -> None:
    gw.client.set_paused("gateway_paused", True, gw.admin)
    response = gw.client.run_workflow("gateway_paused", {"x": 1}, gw.admin)
    assert response.status_code == 409
    assert "paused" in response.json()["detail"]
    assert '"unpause": true' in response.json()["detail"]
    assert gw.client.api("GET", "/dags/gateway_paused", gw.admin).json()["is_paused"] is True

    response = gw.client.run_workflow("gateway_paused", {"x": 1}, gw.admin, unpause=True)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"x": 1}
    assert gw.client.api("GET", "/dags/gateway_paused", gw.admin).json()["is_paused"] is False


def test_several_leaves_without_a_marked_result_is_409_listing_them(gw: E2EStack) -> None:
    response = gw.client.run_workflow("gateway_two_leaves", None, gw.admin, unpause=True)
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert detail["leaves"] == ["left", "right"]
    assert "dag.add_result" in detail["message"]
