"""The fault suite: a killed pod, broken connections, replays and hostile requests.

Every test here reproduces a finding of the fault review (issue "Hold up under faults") on a
real runtime process, through ``dag.test()`` or raw HTTP, and checks what a user would see:
the task's state, its error, and how many times the function body really ran (a file the
function appends to). ``pytest -m fault`` runs the suite alone. The codec's hostile-input
tests (nesting, allocation bombs, fuzzing) live with the codec tests.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import TEST_DAGS
from knative_dagrun import run_dag as run_example
from knative_dagrun import task_states, xcom_value
from runtime_process import RuntimeProcess, start_runtime
from servers import free_port
from tcp_proxy import TcpProxy, read_message

from airflow_provider_knative import protocol

pytestmark = pytest.mark.fault

SECRET = "fault-suite-secret"


def run_dag(dag_id: str, conf: dict) -> object:
    return run_example(dag_id, conf, module="knative_faults")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> int:
    """A port for a runtime that may be killed and restarted; tasks are routed to it."""
    chosen = free_port()
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", f"http://127.0.0.1:{chosen}")
    monkeypatch.setenv("AIRFLOW__KNATIVE__STARTUP_DEADLINE_SECONDS", "60")
    # a killed pod's calls are found abandoned once their lease is this old (default 30 s)
    monkeypatch.setenv("AIRFLOW__KNATIVE__RECORD_LEASE_SECONDS", "3")
    return chosen


class CuttingProxy(TcpProxy):
    """A proxy that cuts the first ``cuts`` connections to ``/invoke``.

    ``after="request"``: the request reaches the runtime whole, then the client's connection
    is closed without an answer (the runtime keeps running the function). ``after="headers"``:
    the client gets the response head and half the body, then the connection is closed.
    Later connections pass through untouched.
    """

    def __init__(self, target_port: int, *, after: str, cuts: int = 1) -> None:
        super().__init__(target_port)
        self.after = after
        self.cuts = cuts
        self.cut = 0

    def handle(self, client: socket.socket, head: bytes, body: bytes) -> None:
        cutting = head.startswith(b"POST /invoke") and self.cut < self.cuts
        if not cutting:
            super().handle(client, head, body)
            return
        self.cut += 1
        with self.upstream() as upstream:
            upstream.sendall(head + b"\r\n\r\n" + body)
            if self.after == "request":
                # cut once the function runs (it writes its marker first): not after a guessed delay,
                # which a loaded machine can outlast before the runtime even reads the request
                marker = Path(protocol.Invocation.decode(body).context["params"]["path"])
                _wait_until(lambda: _lines(marker) >= 1, timeout=60)
                client.shutdown(socket.SHUT_RDWR)
                return
            answer = read_message(upstream)
            assert answer is not None
            client.sendall(answer[0] + b"\r\n\r\n" + answer[1][: len(answer[1]) // 2])
            client.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def runtime(port: int, airflow_home: Path) -> Iterator[RuntimeProcess]:
    with start_runtime(TEST_DAGS, port=port) as rt:
        yield rt


# ------------------------------------------------------------------ finding 1: calls cut mid-execution


def _kill_and_restart(runtime: RuntimeProcess, marker: Path, started: list[RuntimeProcess]) -> None:
    try:
        _wait_until(lambda: _lines(marker) >= 1, timeout=60)
    except TimeoutError:
        return  # the task never reached the function: the test's assertions say why
    runtime.proc.send_signal(signal.SIGKILL)  # the pod dies mid-call
    runtime.proc.wait()
    started.append(start_runtime(TEST_DAGS, port=runtime.port))  # Knative starts a new pod


def _run_with_a_kill(dag_id: str, runtime: RuntimeProcess, marker: Path) -> object:
    """Run the DAG while the runtime is SIGKILLed mid-call and a new one starts on its port."""
    started: list[RuntimeProcess] = []
    killer = threading.Thread(target=_kill_and_restart, args=(runtime, marker, started))
    killer.start()
    try:
        return run_dag(dag_id, conf={"path": str(marker), "seconds": 3.0})
    finally:
        killer.join()
        for rt in started:
            rt.stop()


@pytest.mark.parametrize("dag_id", ["knative_side_effect", "knative_side_effect_deferrable"])
def test_sigkill_mid_call_never_runs_the_function_twice(
    dag_id: str, runtime: RuntimeProcess, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "ran.txt"
    run = _run_with_a_kill(dag_id, runtime, marker)
    out = capfd.readouterr().out
    assert task_states(run)[("record", -1)] == "failed", out[-3000:]
    assert _lines(marker) == 1  # never a second run, and never a success for an unknown outcome
    # a definite failure that names the pod that stopped, never "unknown"
    assert "was abandoned: the pod" in out and "stopped renewing its lease" in out


def test_idempotent_calls_may_run_again_after_a_kill(
    runtime: RuntimeProcess, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "ran.txt"
    run = _run_with_a_kill("knative_side_effect_idempotent", runtime, marker)
    assert task_states(run)[("record", -1)] == "success", capfd.readouterr().out[-3000:]
    assert _lines(marker) == 2 and xcom_value(run, "record") == 2


@pytest.mark.parametrize("after", ["request", "headers"])
@pytest.mark.parametrize("dag_id", ["knative_side_effect", "knative_side_effect_deferrable"])
def test_a_broken_connection_gets_the_recorded_outcome_not_a_second_run(
    after: str, dag_id: str, runtime: RuntimeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = CuttingProxy(runtime.port, after=after)
    monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", proxy.url)
    marker = tmp_path / "ran.txt"
    try:
        run = run_dag(dag_id, conf={"path": str(marker), "seconds": 1.0})
    finally:
        proxy.close()
    assert proxy.cut == 1
    assert task_states(run)[("record", -1)] == "success"
    assert _lines(marker) == 1 and xcom_value(run, "record") == 1


# ------------------------------------------------------------------ finding 4: replays


@pytest.fixture
def signed_runtime(airflow_home: Path) -> Iterator[RuntimeProcess]:
    with start_runtime(TEST_DAGS, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": SECRET}) as rt:
        yield rt


def _record_body(rt: RuntimeProcess, marker: Path, invocation_id: str = "") -> bytes:
    fn = "knative_side_effect/record"
    return protocol.Invocation(
        fn,
        rt.functions()[fn],
        context={"params": {"path": str(marker), "seconds": 0.0}},
        invocation_id=invocation_id,
    ).encode()


def test_a_replayed_signed_request_does_not_run_again(signed_runtime: RuntimeProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    body = _record_body(signed_runtime, marker)
    headers = {"Content-Type": protocol.CONTENT_TYPE, **protocol.sign(SECRET.encode(), body)}
    url = signed_runtime.url + protocol.INVOKE_PATH
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == 200
    for _ in range(21):  # the review replayed one captured request 21 times
        again = httpx.post(url, content=body, headers=headers)
        assert again.status_code == 401
        assert "already accepted once" in protocol.Result.decode(again.content).error.message
    assert _lines(marker) == 1


def test_a_resent_invocation_id_returns_the_recorded_outcome(
    signed_runtime: RuntimeProcess, tmp_path: Path
) -> None:
    """Signed afresh (a client retry), the same invocation id is answered from the ledger."""
    marker = tmp_path / "ran.txt"
    body = _record_body(signed_runtime, marker, invocation_id="knative_side_effect/r1/record/-1/1")
    url = signed_runtime.url + protocol.INVOKE_PATH
    answers = []
    for _ in range(3):
        headers = {"Content-Type": protocol.CONTENT_TYPE, **protocol.sign(SECRET.encode(), body)}
        answers.append(protocol.Result.decode(httpx.post(url, content=body, headers=headers).content).value)
    assert answers == [1, 1, 1] and _lines(marker) == 1
    status_path = protocol.INVOCATIONS_PATH + "knative_side_effect%2Fr1%2Frecord%2F-1%2F1?wait=0"
    headers = protocol.sign(SECRET.encode(), b"", method="GET", path=status_path)
    status = httpx.get(signed_runtime.url + status_path, headers=headers)
    assert status.status_code == 200 and protocol.Result.decode(status.content).value == 1
    unsigned = httpx.get(signed_runtime.url + status_path)
    assert unsigned.status_code == 401


# ------------------------------------------------------------------ finding 5: content type


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_anything_but_msgpack_is_refused_with_415(
    runtime: RuntimeProcess, tmp_path: Path, content_type: str | None
) -> None:
    """A web page's CORS "simple request" (text/plain, a form) must not reach a function."""
    marker = tmp_path / "ran.txt"
    body = _record_body(runtime, marker)
    headers = {"Content-Type": content_type} if content_type else {}
    resp = httpx.post(runtime.url + protocol.INVOKE_PATH, content=body, headers=headers)
    assert resp.status_code == 415
    assert protocol.CONTENT_TYPE in protocol.Result.decode(resp.content).error.message
    assert not marker.exists()


# ------------------------------------------------------------------ finding 7: the smaller points


def test_too_many_headers_are_refused_with_431(runtime: RuntimeProcess) -> None:
    headers = {f"x-h{i}": "v" for i in range(2000)}
    resp = httpx.get(runtime.url + "/healthz", headers=headers)
    assert resp.status_code == 431
    assert httpx.get(runtime.url + "/healthz").status_code == 200


def test_a_slow_request_head_is_cut_off(runtime: RuntimeProcess) -> None:
    """Slowloris: a head that never finishes gets a 408 and the connection is closed."""
    from airflow_provider_knative.runtime.http import HEADER_TIMEOUT_SECONDS

    with socket.create_connection(("127.0.0.1", runtime.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(HEADER_TIMEOUT_SECONDS * 3)
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        # cut by the head timeout (with a loaded machine's slack), not by the later body timeout
        assert time.monotonic() - started < HEADER_TIMEOUT_SECONDS * 2
        assert sock.recv(4096) == b""  # closed


def test_unsigned_bodies_are_refused_before_they_are_read(signed_runtime: RuntimeProcess) -> None:
    """Without a valid-looking signature nothing is buffered: the 401 comes before the body."""
    with socket.create_connection(("127.0.0.1", signed_runtime.port)) as sock:
        sock.sendall(
            b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-msgpack\r\n"
            b"Content-Length: 60000000\r\n\r\n"
        )
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401")


def test_the_import_error_reaches_the_task_log(
    airflow_home: Path, tmp_path: Path, capfd, monkeypatch
) -> None:
    broken = Path(__file__).resolve().parent / "runtime_dags" / "broken"
    with start_runtime(broken, wait_ready=False) as rt:
        _wait_until(lambda: "import_errors" in httpx.get(rt.url + "/readyz").json())
        monkeypatch.setenv("AIRFLOW__KNATIVE__URL_TEMPLATE", rt.url)
        run = run_dag("knative_side_effect", conf={"path": str(tmp_path / "x"), "seconds": 0.0})
    out = capfd.readouterr().out
    assert task_states(run)[("record", -1)] == "failed"
    assert "DagImportError" in out and "runtime_broken.py" in out and "broken on purpose" in out


def _call_outliving_the_drain(
    rt: RuntimeProcess, marker: Path
) -> tuple[threading.Thread, list[httpx.Response]]:
    """A 30 s call, started (its marker written) before this returns; its answer lands in the list."""
    body = protocol.Invocation(
        "knative_side_effect/record",
        rt.functions()["knative_side_effect/record"],
        context={"params": {"path": str(marker), "seconds": 30.0}},
    ).encode()
    answers: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                rt.url + protocol.INVOKE_PATH,
                content=body,
                headers={"Content-Type": protocol.CONTENT_TYPE},
                timeout=60,
            )
        )
    )
    caller.start()
    _wait_until(lambda: _lines(marker) == 1)
    return caller, answers


def test_a_call_past_the_drain_is_told_the_pod_was_shutting_down(airflow_home: Path, tmp_path: Path) -> None:
    env = {"AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": "3"}
    with start_runtime(TEST_DAGS, env=env) as rt:
        caller, answers = _call_outliving_the_drain(rt, tmp_path / "ran.txt")
        rt.terminate()
        caller.join(60)
        code = rt.proc.wait(timeout=60)  # its own exit: no second SIGTERM from the test
    (resp,) = answers
    error = protocol.Result.decode(resp.content).error
    assert resp.status_code == 500 and error.type == "DrainTimeout"
    assert "shutting down" in error.message and "drain_timeout_seconds" in error.message
    assert code == 1  # a call was still running when the process gave up on it


@pytest.mark.parametrize("in_flight", [True, False], ids=["a-call-outlives-the-drain", "clean-drain"])
def test_more_sigterms_while_the_runtime_exits_do_not_change_its_exit_code(
    airflow_home: Path, tmp_path: Path, in_flight: bool
) -> None:
    """Knative sends one SIGTERM, but anyone may send more (``docker stop`` again, a test's stop())
    at any moment of the drain or of the exit after it: the exit code stays the drain's (1 when a
    call outlived it, else 0), never the signal's -15. Signals arrive every millisecond until the
    process is gone, so they land in every phase of the exit, whatever the machine's load."""
    env = {"AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": "2"}
    with start_runtime(TEST_DAGS, env=env) as rt:
        caller = _call_outliving_the_drain(rt, tmp_path / "ran.txt")[0] if in_flight else None
        rt.terminate()
        deadline = time.monotonic() + 60
        while rt.proc.poll() is None and time.monotonic() < deadline:
            rt.proc.send_signal(signal.SIGTERM)  # a no-op once the process is reaped
            time.sleep(0.001)
        code = rt.proc.wait(timeout=5)
        if caller is not None:
            caller.join(60)
    assert code == (1 if in_flight else 0), rt.output()[-3000:]


def test_an_unsigned_runtime_refuses_to_listen_beyond_loopback(airflow_home: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "AIRFLOW__KNATIVE__SIGNING_SECRET": "", "AIRFLOW__KNATIVE__ALLOW_UNSIGNED": "false"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "airflow_provider_knative.runtime", "serve"),
            *("--dags-folder", str(TEST_DAGS), "--host", "0.0.0.0", "--port", str(free_port())),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a signing secret" in result.stderr
    assert "AIRFLOW__KNATIVE__ALLOW_UNSIGNED" in result.stderr


def test_a_store_write_failure_is_one_clear_error_not_a_wall_of_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from airflow_provider_knative import store
    from airflow_provider_knative.errors import SpilledValueError
    from airflow_provider_knative.xcom import spill

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", dead)
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", "s3://bucket/xcom")
    store.forget_stores()
    try:
        with pytest.raises(SpilledValueError) as err:
            spill(np.zeros(100_000), key="k", dag_id="d", run_id="r", task_id="t")
    finally:
        store.forget_stores()
    lines = "".join(traceback.format_exception(err.value)).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert "s3://bucket/xcom/d/r/t/k/" in lines[-1] and dead in lines[-1]
