"""Pure rules behind the KnativeExecutor and the runtime's memory, without servers.

Which Service a task goes to (one rule, used by the executor and by ``manifests``), which
``[core] executor`` entries name the KnativeExecutor, the workload request's wire form, and
the runtime's invocation ledger (what it remembers, for how long, and what it never forgets).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_knative import protocol
from airflow_provider_knative.deploy.collect import executor_names
from airflow_provider_knative.errors import ConfigError, ProtocolError, VersionMismatch
from airflow_provider_knative.executors import routing
from airflow_provider_knative.runtime.ledger import Ledger


def _ti(executor_config=None, queue="default"):
    return SimpleNamespace(task_id="t", executor_config=executor_config, queue=queue)


def test_routing_prefers_executor_config_then_queue_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__EXECUTOR_QUEUE_SERVICES", "gpu=gpu-tasks, etl=etl-tasks")
    monkeypatch.setenv("AIRFLOW__KNATIVE__EXECUTOR_DEFAULT_SERVICE", "everything")
    explicit = routing.route(_ti({"knative": {"service": "mine", "namespace": "ns", "conn_id": "c"}}, "gpu"))
    assert explicit == routing.Target("mine", "ns", "c")
    assert routing.route(_ti(queue="gpu")).service == "gpu-tasks"
    assert routing.route(_ti(queue="etl")) == routing.Target("etl-tasks", None, routing.DEFAULT_CONN_ID)
    assert routing.route(_ti(queue="other")).service == "everything"
    assert routing.route(_ti({"kubernetes": {}})).service == "everything"


def test_routing_errors_say_what_to_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__EXECUTOR_QUEUE_SERVICES", "gpu")
    with pytest.raises(ConfigError, match=r"queue=service,other=service2.*'gpu'"):
        routing.route(_ti(queue="gpu"))
    monkeypatch.delenv("AIRFLOW__KNATIVE__EXECUTOR_QUEUE_SERVICES")
    with pytest.raises(ConfigError, match=r"must be a dict like \{'service': 'name'\}"):
        routing.route(_ti({"knative": "gpu-tasks"}))


@pytest.mark.parametrize(
    ("core", "names", "default"),
    [
        ("LocalExecutor", set(), False),
        (
            "LocalExecutor,knative:airflow_provider_knative.executors.KnativeExecutor",
            {"knative", "KnativeExecutor", "airflow_provider_knative.executors.KnativeExecutor"},
            False,
        ),
        (
            "airflow_provider_knative.executors.KnativeExecutor",
            {"KnativeExecutor", "airflow_provider_knative.executors.KnativeExecutor"},
            True,
        ),
        ("kn:airflow_provider_knative.executors.knative_executor.KnativeExecutor, LocalExecutor", None, True),
    ],
)
def test_executor_names_in_core_executor(core: str, names: set[str] | None, default: bool) -> None:
    found, is_default = executor_names(core)
    assert is_default is default
    if names is not None:
        assert found == names
    else:
        assert "kn" in found


def test_workload_request_round_trip_and_refusals() -> None:
    request = protocol.WorkloadRequest(
        "d-1", '{"ti": {}}', executor="LocalExecutor", server="http://a/execution/"
    )
    assert protocol.WorkloadRequest.decode(request.encode()) == request
    with pytest.raises(VersionMismatch, match="speaks version"):
        protocol.WorkloadRequest.decode(protocol.codec.dumps({"v": 1, "delivery": "d", "workload": "{}"}))
    with pytest.raises(ProtocolError, match="delivery"):
        protocol.WorkloadRequest.decode(
            protocol.codec.dumps({"v": protocol.PROTOCOL_VERSION, "workload": "{}"})
        )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ledger_runs_an_id_once_and_remembers_the_outcome() -> None:
    ledger: Ledger[str] = Ledger()
    entry, fresh = ledger.begin("a")
    assert fresh and not entry.done.is_set()
    again, fresh_again = ledger.begin("a")
    assert again is entry and not fresh_again  # a retry or replay joins, never runs
    ledger.finish("a", "outcome")
    assert entry.done.is_set() and ledger.get("a").outcome == "outcome"


def test_ledger_forgets_finished_outcomes_by_age_and_size_but_never_a_running_call() -> None:
    clock = Clock()
    ledger: Ledger[bytes] = Ledger(retention_seconds=60, max_bytes=10, size_of=len, clock=clock)
    ledger.begin("running")
    for name in ("old", "mid"):
        ledger.begin(name)
        ledger.finish(name, b"12345")
        clock.now += 10
    assert ledger.get("old") is not None and ledger.get("mid") is not None
    ledger.begin("new")
    ledger.finish("new", b"12345")  # 15 bytes recorded > 10: the oldest finished one goes
    assert ledger.get("old") is None and ledger.get("mid") is not None
    clock.now += 120  # past retention: every finished outcome goes
    assert ledger.get("mid") is None and ledger.get("new") is None
    assert ledger.get("running") is not None and len(ledger) == 1
