"""The KnativeExecutor end to end: unmodified DAGs on a real deployment, and its faults.

A deployment of its own: PostgreSQL, moto S3 (XComs and task logs), api-server, scheduler,
dag-processor, triggerer with ``[core] executor = knative:...KnativeExecutor,LocalExecutor``,
and one runtime process serving its own copy of the DAG folder (the "image": it lacks
``exec_missing.py``), with its own log folder and no database URL that works. Task logs reach
the api-server only through the object store. A signing secret is set on both sides.

The runs that do not disturb the deployment start together; then the runtime and the
scheduler are killed and restarted, one scenario at a time.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import airflow
import httpx
import pytest
from live_log_watch import ticks, watch
from replicas import Balancer
from servers import free_port
from tcp_proxy import RelayProxy

from airflow_provider_knative import protocol
from airflow_provider_knative.localstack.client import StackClient
from airflow_provider_knative.localstack.stack import LocalStack

pytest_plugins = ["e2e_stack"]
pytestmark = pytest.mark.e2e

DAGS = Path(__file__).resolve().parent / "executor_dags"
AIRFLOW_EXAMPLES = Path(airflow.__file__).parent / "example_dags"
SECRET = "executor-e2e-secret"
NEVER_DEADLINE = 6
DRAIN = 20
DONE = ("success", "failed")


@dataclass
class ExecStack:
    stack: LocalStack
    client: StackClient
    token: str
    cold: RelayProxy
    recorder: RelayProxy
    bucket: str
    s3_endpoint: str
    markers: Path
    balancer: Balancer
    replica_ports: list[int]

    # ------------------------------------------------------------------ REST helpers
    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.client.set_paused(dag_id, False, self.token)
        response = self.client.api(
            "POST", f"/dags/{dag_id}/dagRuns", self.token, json={"logical_date": None, "conf": conf or {}}
        )
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.client.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}", self.token).json()["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in DONE:
                return state
            time.sleep(1)
        raise AssertionError(f"{dag_id} {run_id} not done after {timeout} s: {self.tis(dag_id, run_id)}")

    def tis(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.client.api(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", self.token, params={"limit": 1000}
        )
        return response.json()["task_instances"]

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self.client.api("GET", path, self.token).json()

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        response = self.client.api("GET", path, self.token, params={"map_index": map_index})
        assert response.status_code == 200, response.text
        return response.json()["value"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        response = self.client.api("GET", path, self.token, headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        content = response.json().get("content") or []
        return "\n".join(json.dumps(item) if not isinstance(item, str) else item for item in content)

    def log_with(self, text: str, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task log once it holds ``text``: the supervisor uploads it just after the task ends."""
        deadline = time.monotonic() + 30
        while True:
            log = self.log(dag_id, run_id, task_id, try_number)
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(1)

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}-{uuid.uuid4().hex[:8]}.txt"

    def runtime_log(self) -> str:
        return self.stack.process("runtime").log_path.read_text(errors="replace")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_until(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _create_database(postgres_url: str, name: str) -> str:
    from e2e_stack import _postgres_bin

    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    bin_dir = _postgres_bin()
    assert bin_dir is not None
    subprocess.run(
        [str(bin_dir / "createdb"), "-h", host, "-p", port, "-U", "postgres", name],
        check=True,
        capture_output=True,
    )
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def ex(postgres_url: str, moto_server: str) -> Iterator[ExecStack]:
    import boto3

    bucket = f"exec-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    state = Path(tempfile.mkdtemp(prefix="knative-exec-stack-"))
    dags, image = state / "dags", state / "image"
    dags.mkdir()
    image.mkdir()
    for path in DAGS.glob("*.py"):
        shutil.copy(path, dags / path.name)
        if path.name != "exec_missing.py":
            shutil.copy(path, image / path.name)
    for folder in (dags, image):  # one of Airflow's own examples, unmodified
        shutil.copy(AIRFLOW_EXAMPLES / "example_inlet_event_extra.py", folder)
    markers = state / "markers"
    markers.mkdir()
    stack = LocalStack(
        state,
        dags,
        db_url=_create_database(postgres_url, f"exec_{uuid.uuid4().hex[:8]}"),
        executor="knative",
        runtime_dags_folder=image,
        extra_env={
            "AIRFLOW__KNATIVE__XCOM_STORE_URL": f"s3://{bucket}/xcom",
            "AIRFLOW__KNATIVE__S3_ENDPOINT_URL": moto_server,
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"knative+s3://{bucket}/task-logs",
            "AIRFLOW__KNATIVE__SIGNING_SECRET": SECRET,
            "AIRFLOW__KNATIVE__EXECUTOR_HEARTBEAT_GRACE_SECONDS": "15",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
            # a DAG file added while the deployment runs is seen within seconds
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        runtime_env={"AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": str(DRAIN)},
        wait_for_dags=(
            "exec_values",
            "exec_flaky",
            "exec_side_effect",
            "exec_missing",
            "exec_replay",
            "exec_deadline",
            "exec_narrow",
            "read_asset_event",
        ),
    )
    short_port = free_port()
    narrow_port = free_port()
    # a port held but never listened on: connections are refused for the whole module (a free
    # port chosen and released could be taken by another server meanwhile)
    never = socket.socket()
    never.bind(("127.0.0.1", 0))
    cold = RelayProxy(stack.runtime_port, cold_seconds=10)
    recorder = RelayProxy(stack.runtime_port)
    # a Service with three replicas behind a balancer with no affinity (tests/replicas.py)
    replica_ports = [free_port() for _ in range(3)]
    balancer = Balancer(lambda: replica_ports, seed=21)
    stack.env.update(
        {
            "AIRFLOW_CONN_KNATIVE_COLD": json.dumps({"conn_type": "knative", "host": cold.url}),
            "AIRFLOW_CONN_KNATIVE_RECORDED": json.dumps({"conn_type": "knative", "host": recorder.url}),
            "AIRFLOW_CONN_KNATIVE_SHORT": json.dumps(
                {"conn_type": "knative", "host": f"http://127.0.0.1:{short_port}"}
            ),
            "AIRFLOW_CONN_KNATIVE_NARROW": json.dumps(
                {"conn_type": "knative", "host": f"http://127.0.0.1:{narrow_port}"}
            ),
            "AIRFLOW_CONN_KNATIVE_REPLICAS": json.dumps({"conn_type": "knative", "host": balancer.url}),
            "AIRFLOW_CONN_KNATIVE_NEVER": json.dumps(
                {
                    "conn_type": "knative",
                    "host": f"http://127.0.0.1:{never.getsockname()[1]}",
                    "extra": {"startup_deadline_seconds": NEVER_DEADLINE},
                }
            ),
        }
    )
    stack.start()
    # a second "Service" whose requests time out after 35 s (Knative's timeoutSeconds)
    stack.start_runtime("runtime-short", short_port, {"AIRFLOW__KNATIVE__REQUEST_TIMEOUT_SECONDS": "35"})
    # a third whose pod runs one task at a time
    stack.start_runtime("runtime-narrow", narrow_port, {"AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY": "1"})
    for i, port in enumerate(replica_ports):
        stack.start_runtime(f"replica-{i}", port, {"AIRFLOW__KNATIVE__RECORD_LEASE_SECONDS": "10"})
    for port in (short_port, narrow_port, *replica_ports):
        _wait_until(
            lambda p=port: StackClient(f"http://127.0.0.1:{p}").ready("/readyz"), what=f"runtime :{port}"
        )
    client = StackClient(stack.url, timeout=60)
    try:
        yield ExecStack(
            stack,
            client,
            client.login("admin", stack.passwords["admin"]),
            cold,
            recorder,
            bucket,
            moto_server,
            markers,
            balancer,
            replica_ports,
        )
    finally:
        client.close()
        stack.stop()
        balancer.close()
        cold.close()
        recorder.close()
        never.close()
        if not os.environ.get("KNATIVE_KEEP_STACK"):  # keep it to read the components' logs
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(ex: ExecStack) -> dict[str, Any]:
    """The runs that do not disturb the deployment, started together."""
    started: dict[str, Any] = {}
    started["values"] = ex.trigger("exec_values")
    started["flaky"] = ex.trigger("exec_flaky")
    started["cold"] = ex.trigger("exec_cold")
    started["never"] = ex.trigger("exec_never")
    started["missing"] = ex.trigger("exec_missing")
    started["replay_marker"] = ex.marker("replay")
    started["replay"] = ex.trigger("exec_replay", {"path": str(started["replay_marker"])})
    started["deadline_marker"] = ex.marker("deadline")
    started["deadline"] = ex.trigger("exec_deadline", {"path": str(started["deadline_marker"])})
    started["narrow"] = ex.trigger("exec_narrow")
    return started


# ------------------------------------------------------------------ unmodified DAGs


def test_unmodified_dags_run_on_the_executor(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id = runs["values"]
    assert ex.wait("exec_values", run_id) == "success", ex.tis("exec_values", run_id)
    assert ex.xcom("exec_values", run_id, "total") == sum(x * x for x in range(50))
    assert [ex.xcom("exec_values", run_id, "square", map_index=i) for i in (0, 7, 49)] == [0, 49, 2401]
    assert ex.xcom("exec_values", run_id, "stats", key="high") == 49
    assert ex.xcom("exec_values", run_id, "python_op") == {"from": "PythonOperator", "upstream": [0, 1, 2]}
    assert ex.xcom("exec_values", run_id, "bash_op") == "bash-says-40425"
    # a bare float with an integral value is stored packed (SQLite would hand out an int), and
    # the REST API shows its value
    frame_sum = ex.xcom("exec_values", run_id, "frame_sum")
    assert frame_sum["__data__"] == repr(sum(i / 2 for i in range(200_000))) and "packed" in frame_sum
    spilled = ex.xcom("exec_values", run_id, "frame")
    assert f"s3://{ex.bucket}/xcom/exec_values/" in json.dumps(spilled)  # the DataFrame went by reference
    # every task ran in the runtime, but the one that asked for LocalExecutor
    runtime_log = ex.runtime_log()
    tis = {(t["task_id"], t["map_index"]): t for t in ex.tis("exec_values", run_id)}
    assert len(tis) == 50 + 8
    for (task_id, _), ti in tis.items():
        ran_in_runtime = f"task instance {ti['id']} " in runtime_log
        assert ran_in_runtime == (task_id != "via_local"), (
            task_id,
            ti,
            [line for line in runtime_log.splitlines() if task_id in line or ti["id"] in line][:5],
        )
    # the task log reaches the api-server through the object store (no shared disk)
    assert "bash-says-40425" in ex.log_with("bash-says-40425", "exec_values", run_id, "bash_op")


def test_a_failing_task_is_retried_and_its_error_is_in_its_log(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id = runs["flaky"]
    assert ex.wait("exec_flaky", run_id) == "success"
    assert ex.ti("exec_flaky", run_id, "flaky")["try_number"] == 2
    assert "first try fails on purpose" in ex.log_with("first try fails", "exec_flaky", run_id, "flaky", 1)


def test_a_cold_service_is_waited_for_and_then_runs(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id = runs["cold"]
    assert ex.wait("exec_cold", run_id) == "success"
    assert ex.cold.refused >= 3  # 503 for 10 s, retried with backoff, then the task ran
    assert ex.xcom("exec_cold", run_id, "hello") == "hello"


def test_a_full_runtime_queues_workloads_instead_of_bouncing_them(
    ex: ExecStack, runs: dict[str, Any]
) -> None:
    """Two tasks at once, one slot: they run one after another, and none is refused as Busy
    and backed off (it waits in line, as behind Knative's queue-proxy)."""
    run_id = runs["narrow"]
    assert ex.wait("exec_narrow", run_id) == "success", ex.tis("exec_narrow", run_id)
    tis = sorted(ex.tis("exec_narrow", run_id), key=lambda ti: ti["start_date"])
    assert [ti["try_number"] for ti in tis] == [1, 1]
    for earlier, later in itertools.pairwise(tis):
        assert earlier["end_date"] <= later["start_date"], "two tasks ran at once in a one-slot runtime"
    scheduler_log = ex.stack.process("scheduler").log_path.read_text(errors="replace")
    assert "Busy" not in scheduler_log, "a workload was refused as Busy instead of waiting for the slot"


def test_a_service_that_never_comes_up_fails_within_the_deadline(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id = runs["never"]
    assert ex.wait("exec_never", run_id, timeout=120) == "failed"
    ti = ex.ti("exec_never", run_id, "hello")
    text = ex.log_with("startup deadline", "exec_never", run_id, "hello")
    assert "exec-never" in text and "127.0.0.1" in text
    assert "attempt(s)" in text and f"startup deadline {NEVER_DEADLINE} s" in text
    assert ti["duration"] is None or ti["duration"] < 60


def test_a_dag_file_missing_from_the_image_fails_naming_file_and_service(
    ex: ExecStack, runs: dict[str, Any]
) -> None:
    run_id = runs["missing"]
    assert ex.wait("exec_missing", run_id, timeout=120) == "failed"
    text = ex.log_with("DagFileMissing", "exec_missing", run_id, "orphan")
    assert "exec_missing.py" in text and "airflow-tasks" in text and "DagFileMissing" in text
    events = ex.client.api("GET", "/eventLogs", ex.token, params={"dag_id": "exec_missing"}).json()
    assert any(e["event"] == "knative refused" for e in events["event_logs"]), events


def test_a_replayed_workload_request_runs_the_task_at_most_once(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id, marker = runs["replay"], runs["replay_marker"]
    assert ex.wait("exec_replay", run_id) == "success"
    assert _lines(marker) == ["ran"]
    (raw,) = [r for r in ex.recorder.requests if r.startswith(b"POST /workloads")]
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = dict(
        (k.strip().decode(), v.strip().decode())
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    url = ex.stack.runtime_url + protocol.WORKLOADS_PATH

    def post(content: bytes, signed: dict[str, str]) -> httpx.Response:
        hdrs = {"Content-Type": protocol.CONTENT_TYPE, **signed}
        with httpx.stream("POST", url, content=content, headers=hdrs, timeout=60) as response:
            response.read()
            return response

    # 1. the captured request, byte for byte: its signature was already accepted
    assert (
        post(body, {k: v for k, v in headers.items() if k.lower().startswith("x-knative")}).status_code == 401
    )
    # 2. signed afresh, same delivery: the runtime joins the finished run and says how it ended
    again = post(body, protocol.sign(SECRET.encode(), body, path=protocol.WORKLOADS_PATH))
    assert again.status_code == 200 and '"exit"' in again.text
    # 3. a new delivery of the same workload: Airflow refuses to run a task that already ran, and
    # the supervisor that lost that race says "elsewhere", never that the task finished
    request = protocol.WorkloadRequest.decode(body)
    request.delivery = str(uuid.uuid4())
    fresh = request.encode()
    third = post(fresh, protocol.sign(SECRET.encode(), fresh, path=protocol.WORKLOADS_PATH))
    assert third.status_code == 200 and '"elsewhere"' in third.text and '"exit"' not in third.text
    assert _lines(marker) == ["ran"]
    assert ex.ti("exec_replay", run_id, "once")["state"] == "success"


def test_a_task_is_stopped_before_the_knative_request_timeout(ex: ExecStack, runs: dict[str, Any]) -> None:
    run_id = runs["deadline"]
    assert ex.wait("exec_deadline", run_id, timeout=120) == "failed"
    assert _lines(runs["deadline_marker"]) == ["start 1"]  # stopped 15 s before the 35 s timeout
    text = ex.log_with("request timeout", "exec_deadline", run_id, "outlives_the_request")
    assert "shortly before the Knative request timeout" in text and "request_timeout_seconds = 35" in text


def test_a_task_marked_failed_or_cleared_is_stopped_in_the_runtime(ex: ExecStack) -> None:
    failed_marker, cleared_marker = ex.marker("failed"), ex.marker("cleared")
    failed_run = ex.trigger("exec_side_effect", {"path": str(failed_marker), "seconds": 60})
    cleared_run = ex.trigger("exec_side_effect", {"path": str(cleared_marker), "seconds": 25})
    _wait_until(
        lambda: _lines(failed_marker) == ["start 1"] and _lines(cleared_marker) == ["start 1"],
        what="both tasks to start",
    )
    response = ex.client.api(
        "PATCH",
        f"/dags/exec_side_effect/dagRuns/{failed_run}/taskInstances/record",
        ex.token,
        json={"new_state": "failed"},
    )
    assert response.status_code == 200, response.text
    response = ex.client.api(
        "POST",
        "/dags/exec_side_effect/clearTaskInstances",
        ex.token,
        json={"dry_run": False, "dag_run_id": cleared_run, "task_ids": ["record"], "only_failed": False},
    )
    assert response.status_code == 200, response.text
    stopped = time.monotonic()
    assert ex.wait("exec_side_effect", failed_run) == "failed"
    assert ex.wait("exec_side_effect", cleared_run) == "success"
    assert time.monotonic() - stopped < 90
    assert _lines(failed_marker) == ["start 1"]  # stopped: never reached its end
    assert _lines(cleared_marker) == ["start 1", "start 2", "end 2"]


def test_airflows_read_asset_event_example_runs_on_the_executor(ex: ExecStack) -> None:
    """Airflow's ``example_inlet_event_extra.py``, unmodified, on the KnativeExecutor.

    Its asset ``Asset("s3://output/1.txt")`` shares its URI with ``test-asset`` of Airflow's
    ``example_outlet_event_extra.py``. Airflow keeps one active asset per URI: the one whose DAG
    file the dag-processor wrote first; a task with the other in its inlets or outlets fails with
    ``AirflowInactiveAssetInInletOrOutletException`` on every executor, LocalExecutor included.
    With all of Airflow's examples loaded, which file is written first depends on the
    dag-processor's parse order, so ``read_asset_event`` fails in some deployments and not in
    others. Here the order is fixed: the reader's file is in the deployment from the start, the
    producers' file arrives afterwards, and each side behaves as Airflow's rule says.
    """
    for folder in (ex.stack.dags_folder, ex.stack.runtime_dags_folder):
        shutil.copy(AIRFLOW_EXAMPLES / "example_outlet_event_extra.py", folder)
    _wait_until(
        lambda: ex.client.dag_exists("asset_with_extra_by_yield", ex.token),
        timeout=120,
        what="the producers' DAG file to be parsed",
    )
    assets = ex.client.api("GET", "/assets", ex.token, params={"uri_pattern": "s3://output/1.txt"}).json()
    (asset,) = [a for a in assets["assets"] if a["name"] == "s3://output/1.txt"]
    for i in range(3):  # the example prints the extra of every event but the last two
        response = ex.client.api(
            "POST", "/assets/events", ex.token, json={"asset_id": asset["id"], "extra": {"hi": f"bye-{i}"}}
        )
        assert response.status_code == 200, response.text
    runs = {
        dag_id: ex.trigger(dag_id)
        for dag_id in ("read_asset_event", "read_asset_event_from_classic", "asset_with_extra_by_yield")
    }
    assert ex.wait("read_asset_event", runs["read_asset_event"]) == "success"
    assert "bye-0" in ex.log_with("bye-0", "read_asset_event", runs["read_asset_event"], "read_asset_event")
    classic = runs["read_asset_event_from_classic"]
    assert ex.wait("read_asset_event_from_classic", classic) == "success"
    text = ex.log_with("bye-2", "read_asset_event_from_classic", classic, "read_asset_event_from_classic")
    assert '\\"hi\\": \\"bye-2\\"' in text, text[-3000:]  # the last event's extra, as JSON in the log
    # the producer's outlet is the asset Airflow did not activate: the mirror image of the failure
    producer = runs["asset_with_extra_by_yield"]
    assert ex.wait("asset_with_extra_by_yield", producer) == "failed"
    text = ex.log_with("inactive assets", "asset_with_extra_by_yield", producer, "asset_with_extra_by_yield")
    assert "AirflowInactiveAssetInInletOrOutletException" in text
    assert "Asset(name='test-asset', uri='s3://output/1.txt')" in text
    runtime_log = ex.runtime_log()
    for dag_id, run_id in runs.items():
        (ti,) = ex.tis(dag_id, run_id)
        assert f"task instance {ti['id']} " in runtime_log, (dag_id, ti)


def test_deliveries_cut_and_resent_across_replicas_run_every_task_once(ex: ExecStack) -> None:
    """50 tasks on a Service of three replicas behind a balancer with no affinity: some event
    streams are cut after the task started, some requests are cut after delivery, and some
    deliveries are sent again (signed afresh) to a replica picked at random. Every task body runs
    once, and no task that ran fine is failed."""
    rng = random.Random(8)
    captured: list[bytes] = []
    real_cut = ex.balancer.cut

    def cut(head: bytes) -> Any:
        if not head.startswith(b"POST /workloads"):
            return None
        roll = rng.random()
        return ("lines", 1) if roll < 0.3 else "request" if roll < 0.45 else None

    ex.balancer.cut = cut
    ex.balancer.keep = lambda head: head.startswith(b"POST /workloads")
    marker = ex.marker("replicas")
    try:
        run_id = ex.trigger("exec_replicas", {"path": str(marker)})
        _wait_until(lambda: len(_lines(marker)) >= 10, what="tasks to start on the replicas")
        captured = list(ex.balancer.kept)
        resent = []
        for body in rng.sample(captured, min(10, len(captured))):
            port = rng.choice(ex.replica_ports)
            headers = {"Content-Type": protocol.CONTENT_TYPE}
            headers.update(protocol.sign(SECRET.encode(), body, path=protocol.WORKLOADS_PATH))
            with httpx.stream(
                "POST",
                f"http://127.0.0.1:{port}{protocol.WORKLOADS_PATH}",
                content=body,
                headers=headers,
                timeout=60,
            ) as response:
                first = next(response.iter_lines(), "")
            resent.append((response.status_code, first))
        assert ex.wait("exec_replicas", run_id, timeout=300) == "success", ex.tis("exec_replicas", run_id)
    finally:
        ex.balancer.cut = real_cut
    bodies = [ti for ti in ex.tis("exec_replicas", run_id) if ti["task_id"] == "body"]
    assert len(bodies) == 50 and all(ti["state"] == "success" and ti["try_number"] == 1 for ti in bodies)
    assert sorted(int(line) for line in _lines(marker)) == list(range(50))  # each body ran once
    assert ex.xcom("exec_replicas", run_id, "total") == sum(3 * i for i in range(50))
    assert ex.balancer.cuts >= 10
    # a resent delivery is joined (its own replica) or answered from the record ("elsewhere")
    for status, first in resent:
        assert status == 200 and json.loads(first)["event"] in ("accepted", "elsewhere", "exit"), resent


def test_a_tasks_log_reaches_the_ui_while_it_runs(ex: ExecStack) -> None:
    """An unmodified task printing a line a second for 20 s: its log, read through the REST API
    while it runs (uploaded from the pod through the store), holds at least 15 of the lines."""
    run_id = ex.trigger("exec_live")
    seen, final = watch(ex.client, ex.token, "exec_live", run_id, "tick")
    assert len(seen) >= 15, (sorted(seen), final[-3000:])
    assert sorted(ticks(final)) == list(range(20)), final[-3000:]


# ------------------------------------------------------------------ faults of the deployment


def test_a_scheduler_restart_finishes_running_tasks_once(ex: ExecStack) -> None:
    marker = ex.marker("restart")
    run_id = ex.trigger("exec_side_effect", {"path": str(marker), "seconds": 20})
    _wait_until(lambda: _lines(marker) == ["start 1"], what="the task to start")
    # while it runs, its log is already readable (uploaded by the runtime every few seconds)
    _wait_until(
        lambda: "recording try 1" in ex.log("exec_side_effect", run_id, "record"),
        timeout=30,
        what="the live log",
    )
    ex.stack.kill("scheduler", signal.SIGTERM)
    ex.stack.process("scheduler").popen.wait(60)
    ex.stack.restart("scheduler")
    assert ex.wait("exec_side_effect", run_id) == "success"
    assert _lines(marker) == ["start 1", "end 1"]  # ran exactly once
    assert "recorded try 1" in ex.log_with("recorded try 1", "exec_side_effect", run_id, "record")


def test_kill_9_of_the_runtime_mid_task_is_retried_never_a_false_success(ex: ExecStack) -> None:
    marker = ex.marker("kill9")
    run_id = ex.trigger("exec_side_effect", {"path": str(marker), "seconds": 15})
    _wait_until(lambda: _lines(marker) == ["start 1"], what="the task to start")
    ex.stack.kill("runtime", signal.SIGKILL)  # the pod and every process in it
    killed = time.monotonic()
    ex.stack.restart("runtime")
    assert ex.wait("exec_side_effect", run_id, timeout=180) == "success"
    assert _lines(marker) == ["start 1", "start 2", "end 2"]  # try 1 died, try 2 ran whole
    assert ex.ti("exec_side_effect", run_id, "record")["try_number"] == 2
    assert time.monotonic() - killed < 120  # not the scheduler's 300 s heartbeat timeout


def test_sigterm_of_the_runtime_drains_and_stops_what_outlives_the_drain(ex: ExecStack) -> None:
    short, long = ex.marker("drain-short"), ex.marker("drain-long")
    short_run = ex.trigger("exec_side_effect", {"path": str(short), "seconds": 4})
    long_run = ex.trigger("exec_side_effect", {"path": str(long), "seconds": 120})
    _wait_until(lambda: _lines(short) == ["start 1"] and _lines(long) == ["start 1"], what="both to start")
    runtime = ex.stack.process("runtime")
    ex.stack.kill("runtime", signal.SIGTERM)
    runtime.popen.wait(DRAIN + 60)
    assert _lines(short) == ["start 1", "end 1"]  # finished inside the drain
    assert _lines(long) == ["start 1"]  # stopped at the end of the drain, with the reason in its log
    assert "shutting down" in ex.log_with("shutting down", "exec_side_effect", long_run, "record")
    ex.stack.restart("runtime")
    assert ex.wait("exec_side_effect", short_run) == "success"
