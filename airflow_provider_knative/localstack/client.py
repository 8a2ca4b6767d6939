"""A small HTTP client for a running deployment: log in, call the gateway, read the REST API.

Used by ``local-stack``, the end-to-end tests and the benchmarks, so all three talk to
Airflow exactly the way a user's script would (``POST /auth/token``, bearer JWT).
"""

from __future__ import annotations

from typing import Any

import httpx

from airflow_provider_knative.errors import StackError

__all__ = ["StackClient", "StackError"]


class StackClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    # --- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health`` or None while the api-server is not answering."""
        try:
            response = self.http.get("/api/v2/monitor/health")
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def ready(self, path: str) -> bool:
        try:
            return self.http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    # --- auth ------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> str:
        """A bearer JWT from the auth manager (``POST /auth/token``)."""
        response = self.http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise StackError(f"login as {username!r} failed: {response.status_code} {response.text[:300]}")
        return str(response.json()["access_token"])

    @staticmethod
    def auth(token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    # --- gateway ---------------------------------------------------------------------------
    def run_workflow(
        self,
        dag_id: str,
        data: Any,
        token: str | None,
        *,
        timeout: float | None = None,
        unpause: bool = False,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {"input": data, "unpause": unpause}
        if timeout is not None:
            body["timeout"] = timeout
        wait = (timeout if timeout is not None else 60.0) + 30.0
        return self.http.post(
            f"/knative/runWorkflow/{dag_id}",
            json=body,
            headers=self.auth(token),
            timeout=http_timeout or wait,
        )

    def poll(self, poll_url: str, token: str | None, wait: float = 0) -> httpx.Response:
        return self.http.get(poll_url, params={"wait": wait}, headers=self.auth(token), timeout=wait + 30)

    # --- REST API --------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(token), **kwargs.pop("headers", {})}
        return self.http.request(method, f"/api/v2{path}", headers=headers, **kwargs)

    def dag_exists(self, dag_id: str, token: str) -> bool:
        return self.api("GET", f"/dags/{dag_id}", token).status_code == 200

    def set_paused(self, dag_id: str, paused: bool, token: str) -> None:
        response = self.api("PATCH", f"/dags/{dag_id}", token, json={"is_paused": paused})
        if response.status_code != 200:
            raise StackError(f"cannot set is_paused={paused} on {dag_id}: {response.text[:300]}")
