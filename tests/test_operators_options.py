"""Airflow's conventions on KnativeOperator and @task.knative: ``[operators] default_deferrable``,
templated ``headers=``, and ``response_check`` as on HttpOperator (sync and deferred)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowException
from knative_dagrun import run_dag
from test_hooks import _Server

from airflow_provider_knative.operators import KnativeOperator

OPERATORS_ENV = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"
KNATIVE_ENV = "AIRFLOW__KNATIVE__DEFAULT_DEFERRABLE"


def _deferrable_of_both(**kwargs: Any) -> tuple[bool, bool]:
    """``deferrable`` of a KnativeOperator and of a @task.knative task built now."""
    with DAG(dag_id="defaults", schedule=None):
        op = KnativeOperator(task_id="op", service="svc", **kwargs)

        @task.knative(service="svc", **kwargs)
        def fn():
            return 1

        decorated = fn().operator
    return op.deferrable, decorated.deferrable


@pytest.mark.parametrize(
    ("operators", "knative", "explicit", "expected"),
    [
        (None, None, None, False),  # nothing set: synchronous, as before
        ("true", None, None, True),  # Airflow's own switch turns Knative tasks deferrable too
        ("false", None, None, False),
        ("true", "false", None, False),  # [knative] default_deferrable, when set, wins
        ("false", "true", None, True),
        (None, "true", None, True),
        ("true", "true", False, False),  # deferrable= on the task wins over both
        ("false", "false", True, True),
    ],
)
def test_default_deferrable_precedence(
    monkeypatch: pytest.MonkeyPatch,
    operators: str | None,
    knative: str | None,
    explicit: bool | None,
    expected: bool,
) -> None:
    for name, value in ((OPERATORS_ENV, operators), (KNATIVE_ENV, knative)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    kwargs = {} if explicit is None else {"deferrable": explicit}
    assert _deferrable_of_both(**kwargs) == (expected, expected)


def test_operators_default_deferrable_from_airflow_cfg(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.configuration import conf

    monkeypatch.delenv(OPERATORS_ENV, raising=False)
    monkeypatch.delenv(KNATIVE_ENV, raising=False)
    conf.set("operators", "default_deferrable", "True")
    try:
        assert _deferrable_of_both() == (True, True)
    finally:
        conf.remove_option("operators", "default_deferrable")
    assert _deferrable_of_both() == (False, False)


# ---------------------------------------------------------------------- headers and response_check


@pytest.fixture
def json_service() -> Iterator[_Server]:
    """Answers every request with the JSON of the request's headers."""

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        seen = {k.lower(): v for k, v in headers.items()}
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"ok": path != "/bad", "headers": seen}).encode(),
        )

    server = _Server(handle)
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_templated_headers_and_response_check(
    json_service: _Server, airflow_home: Path, capfd: pytest.CaptureFixture[str], mode: str
) -> None:
    run = run_dag(f"knative_options_{mode}", {"url": json_service.url}, module="knative_options")
    out = capfd.readouterr().out
    assert str(run.state) == "success", out[-3000:]
    assert "response_check saw HTTP 200, x-run=templated, ti=True" in out
    (_method, path, headers, _body) = json_service.requests[-1]
    assert path == "/good"
    assert {k.lower(): v for k, v in headers.items()}["host"] == "scorer.example.com"
    if mode == "deferred":
        assert "Deferring the call to" in out

    run = run_dag(
        f"knative_options_{mode}", {"url": json_service.url, "path": "/bad"}, module="knative_options"
    )
    out = capfd.readouterr().out
    assert str(run.state) == "failed", out[-3000:]
    assert f"call: response_check returned False for the answer of {json_service.url}/bad (HTTP 200" in out


def test_response_check_false_fails_execute_with_the_answer(json_service: _Server) -> None:
    op = KnativeOperator(
        task_id="t", url=json_service.url, path="/bad", method="GET", response_check=lambda r: False
    )
    with pytest.raises(AirflowException, match=r"t: response_check returned False .*\"ok\": false"):
        op.execute({})
    op = KnativeOperator(
        task_id="t", url=json_service.url, path="/good", method="GET", response_check=lambda r: True
    )
    assert op.execute({})["ok"] is True


def test_headers_must_be_a_mapping() -> None:
    op = KnativeOperator(task_id="t", url="http://127.0.0.1:1", headers=["Host: x"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers= must be a mapping"):
        op.build_request({})
