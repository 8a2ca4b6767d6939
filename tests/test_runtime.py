"""The Knative runtime as a real process on 127.0.0.1, driven over HTTP.

One runtime serves most tests (module fixture, small body and log limits so the limits are
cheap to hit); tests that need other settings or kill the process start their own.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from runtime_process import RuntimeProcess, start_runtime

from airflow_provider_knative import codec, protocol

DAGS = Path(__file__).resolve().parent / "runtime_dags"
BASIC = DAGS / "basic"
MAX_BODY = 1024 * 1024
LOG_MAX = 8192


@pytest.fixture(scope="module")
def rt() -> RuntimeProcess:
    env = {
        "AIRFLOW__KNATIVE__MAX_BODY_BYTES": str(MAX_BODY),
        "AIRFLOW__KNATIVE__LOG_MAX_BYTES": str(LOG_MAX),
        "AIRFLOW__KNATIVE__SIGNING_SECRET": "",
    }
    with start_runtime(BASIC, env=env) as runtime:
        yield runtime


def post(rt: RuntimeProcess, body: bytes, **headers: str) -> tuple[httpx.Response, protocol.Result]:
    headers = {"Content-Type": protocol.CONTENT_TYPE, **headers}
    resp = httpx.post(rt.url + protocol.INVOKE_PATH, content=body, headers=headers, timeout=30)
    assert resp.headers["content-type"] == protocol.CONTENT_TYPE
    return resp, protocol.Result.decode(resp.content)


def invocation(rt: RuntimeProcess, fn: str, *args: object, **kwargs: object) -> protocol.Invocation:
    return protocol.Invocation(function_id=fn, source_hash=rt.functions()[fn], args=list(args), kwargs=kwargs)


# --- results, errors, logs ----------------------------------------------------------------


def test_result_and_health_endpoints(rt: RuntimeProcess) -> None:
    resp, result = rt.invoke("runtime_basic/add", 2, b=40)
    assert resp.status_code == 200 and result.ok and result.value == 42
    assert result.error is None and result.duration_seconds > 0
    assert httpx.get(rt.url + "/healthz").json() == {"status": "ok", "in_flight": 0}
    ready = httpx.get(rt.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["functions"] == 13


def test_only_knative_tasks_are_registered(rt: RuntimeProcess) -> None:
    ids = set(rt.functions())
    assert "runtime_basic/add" in ids and "runtime_basic/async_add" in ids
    assert "runtime_basic/plain_python" not in ids  # a @task, not @task.knative
    resp, result = rt.invoke("runtime_basic/plain_python", source_hash="0" * 64)
    assert resp.status_code == 404 and result.error.type == "UnknownFunction"


def test_source_hashes_match_what_airflow_computes(rt: RuntimeProcess) -> None:
    """The operator hashes the function it finds in Airflow's own DAG bag: same value."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(BASIC))
    assert not bag.import_errors
    dag = bag.dags["runtime_basic"]
    expected = {
        protocol.function_id(dag.dag_id, t.task_id): protocol.source_hash(t.python_callable)
        for t in dag.tasks
        if getattr(t, "operator_name", None) == "@task.knative"
    }
    assert rt.functions() == expected


def test_user_exception_is_500_with_remote_traceback_and_logs(rt: RuntimeProcess) -> None:
    resp, result = rt.invoke("runtime_basic/fail", "disk full")
    assert resp.status_code == 500
    assert result.status == "error" and not result.ok
    assert result.error.type == "TaskFailed"
    assert result.error.message == "disk full"
    assert 'runtime_basic.py", line' in result.error.traceback
    assert "raise TaskFailed(message)" in result.error.traceback
    assert "invoke.py" not in result.error.traceback  # the runtime's own frames are cut
    assert "unusual_prefix_" not in result.error.traceback
    assert result.logs == "about to fail\n"
    assert resp.headers["x-knative-error"] == "TaskFailed: disk full"


def test_async_function_and_context_parameters(rt: RuntimeProcess) -> None:
    _, result = rt.invoke("runtime_basic/async_add", 3, 4)
    assert result.value == 7
    _, result = rt.invoke("runtime_basic/with_params", 1, context={"params": {"p": 1}, "run_id": "manual__1"})
    assert result.value == {"x": 1, "params": {"p": 1}, "run_id": "manual__1"}
    # an explicit argument wins over the context
    _, result = rt.invoke("runtime_basic/with_params", 1, params={"mine": 2}, context={"params": {"p": 1}})
    assert result.value["params"] == {"mine": 2}


def test_logs_of_concurrent_calls_are_not_mixed(rt: RuntimeProcess) -> None:
    tags = [f"call{i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(len(tags)) as pool:
        results = list(pool.map(lambda tag: rt.invoke("runtime_basic/chatty", tag, lines=15)[1], tags))
    for tag, result in zip(tags, results, strict=True):
        assert result.ok and result.value == tag
        lines = result.logs.splitlines()
        assert len(lines) == 30, result.logs
        assert all(line.startswith(f"{tag} print") or f"runtime_basic: {tag} log" in line for line in lines)
        assert [line for line in lines if "print" in line] == [f"{tag} print {i}" for i in range(15)]
    # printed output also reaches the pod log (kubectl logs)
    assert "call3 print 14" in rt.output()


def test_logs_are_cut_at_the_limit_with_a_marker(rt: RuntimeProcess) -> None:
    _, result = rt.invoke("runtime_basic/flood", 200_000)
    assert result.ok and result.logs_truncated
    assert len(result.logs.encode()) <= LOG_MAX + 200
    assert result.logs.startswith("first line\n")
    assert result.logs.endswith("last line\n")
    assert "bytes of log cut by the Knative runtime" in result.logs


# --- bad input: a 4xx with a message, and the server stays up ------------------------------


def test_malformed_bodies_are_400(rt: RuntimeProcess) -> None:
    resp, result = post(rt, b"this is not msgpack")
    assert resp.status_code == 400 and result.error.type == "CodecError"
    assert "not an encoded invocation" in result.error.message
    resp, result = post(rt, codec.dumps([1, 2, 3]))
    assert resp.status_code == 400 and result.error.type == "ProtocolError"
    resp, result = post(rt, codec.dumps({"v": protocol.PROTOCOL_VERSION, "fn": 7, "src": ""}))
    assert resp.status_code == 400 and "fn must be a non-empty string" in result.error.message


def test_protocol_version_mismatch_names_both_versions(rt: RuntimeProcess) -> None:
    inv = invocation(rt, "runtime_basic/add", 1)
    inv.version = 99
    resp, result = post(rt, inv.encode())
    assert resp.status_code == 400 and result.error.type == "VersionMismatch"
    assert "99" in result.error.message and f"version {protocol.PROTOCOL_VERSION}" in result.error.message


@pytest.mark.parametrize("fn", ["os:system", "builtins:eval", "os.system", "runtime_basic/nope", "../x"])
def test_unknown_and_importable_names_are_refused(rt: RuntimeProcess, fn: str) -> None:
    resp, result = rt.invoke(fn, "echo pwned > /tmp/knative-pwned", source_hash="0" * 64)
    assert resp.status_code == 404 and result.error.type == "UnknownFunction"
    assert "runtime_basic/add" not in result.error.message  # lists nothing registered
    assert not Path("/tmp/knative-pwned").exists()


def test_source_hash_mismatch_is_409_unless_skew_allowed(rt: RuntimeProcess) -> None:
    resp, result = rt.invoke("runtime_basic/add", 1, 2, source_hash="f" * 64)
    assert resp.status_code == 409 and result.error.type == "SourceHashMismatch"
    assert "redeploy" in result.error.message.lower()
    inv = protocol.Invocation(
        function_id="runtime_basic/add", source_hash="f" * 64, args=[1, 2], allow_skew=True
    )
    resp, result = post(rt, inv.encode())
    assert resp.status_code == 200 and result.value == 3


def test_arguments_that_do_not_fit_are_422_with_the_signature(rt: RuntimeProcess) -> None:
    resp, result = rt.invoke("runtime_basic/add", 1, c=3)
    assert resp.status_code == 422 and result.error.type == "ArgumentError"
    assert "add(a, b=0)" in result.error.message and "'c'" in result.error.message
    resp, result = rt.invoke("runtime_basic/add")
    assert resp.status_code == 422 and "missing a required argument: 'a'" in result.error.message


def test_unencodable_result_is_500_naming_type_and_path(rt: RuntimeProcess) -> None:
    resp, result = rt.invoke("runtime_basic/bad_result")
    assert resp.status_code == 500 and result.error.type == "ResultEncodingError"
    assert "result['rows'][2]" in result.error.message
    assert "Unencodable" in result.error.message


def test_body_over_the_limit_is_413(rt: RuntimeProcess) -> None:
    big = invocation(rt, "runtime_basic/add", b"x" * (MAX_BODY + 10), 1).encode()
    resp, result = post(rt, big)
    assert resp.status_code == 413 and result.error.type == "RequestTooLarge"
    assert str(MAX_BODY) in result.error.message and "by reference" in result.error.message

    def chunked():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    resp, result = post(rt, chunked())  # type: ignore[arg-type]
    assert resp.status_code == 413 and result.error.type == "RequestTooLarge"


def test_wrong_method_and_route(rt: RuntimeProcess) -> None:
    assert httpx.get(rt.url + "/invoke").status_code == 405
    assert httpx.get(rt.url + "/nope").status_code == 404


def test_server_survives_all_bad_input(rt: RuntimeProcess) -> None:
    for body in (b"", b"\x00" * 100, b"KNC1" + b"\xff" * 60, codec.dumps({"v": 1})):
        resp = httpx.post(rt.url + "/invoke", content=body, headers={"Content-Type": protocol.CONTENT_TYPE})
        assert resp.status_code == 400
    assert rt.proc.poll() is None
    assert rt.invoke("runtime_basic/add", 1, 1)[1].value == 2


# --- concurrency ---------------------------------------------------------------------------


def _wait_in_flight(rt: RuntimeProcess, n: int, timeout: float = 60.0) -> None:
    """Until ``n`` calls run in the runtime at once (its own count), not a guessed delay."""
    deadline = time.monotonic() + timeout
    while httpx.get(rt.url + "/healthz", timeout=10).json()["in_flight"] < n:
        assert time.monotonic() < deadline, f"{n} calls never ran at once"
        time.sleep(0.02)


def test_cpu_bound_calls_do_not_block_health_probes(rt: RuntimeProcess) -> None:
    done = threading.Event()

    def burn() -> None:
        rt.invoke("runtime_basic/burn", 3.0)

    threads = [threading.Thread(target=burn) for _ in range(4)]
    for t in threads:
        t.start()
    _wait_in_flight(rt, 4)
    answered = []
    for _ in range(5):
        resp = httpx.get(rt.url + "/healthz", timeout=5)
        answered.append((resp.status_code, any(t.is_alive() for t in threads)))
    for t in threads:
        t.join()
    done.set()
    # every probe answered while the CPU-bound calls were still running
    assert answered == [(200, True)] * 5


# --- readiness -----------------------------------------------------------------------------


def test_readiness_turns_200_only_after_the_import() -> None:
    env = {"RUNTIME_TEST_IMPORT_DELAY": "2"}
    with start_runtime(DAGS / "slow_import", env=env, wait_ready=False) as runtime:
        assert httpx.get(runtime.url + "/healthz").status_code == 200
        ready = httpx.get(runtime.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "importing the DAG folder"
        resp, result = runtime.invoke("runtime_slow/hello", source_hash="0" * 64)
        assert resp.status_code == 503 and result.error.type == "NotReady"
        runtime.wait_for("/readyz", 200)
        resp, result = runtime.invoke("runtime_slow/hello")
        assert resp.status_code == 200 and result.value == "hello"


def test_import_error_keeps_readyz_503_and_names_the_file() -> None:
    with start_runtime(DAGS / "broken", wait_ready=False) as runtime:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = httpx.get(runtime.url + "/readyz").json()
            if "import_errors" in body:
                break
            time.sleep(0.05)
        ready = httpx.get(runtime.url + "/readyz")
        assert ready.status_code == 503
        (error,) = ready.json()["import_errors"]
        assert error["file"].endswith("runtime_broken.py")
        assert "broken on purpose" in error["error"]
        resp, result = runtime.invoke("x/y", source_hash="0" * 64)
        # a broken DAG folder does not heal by retrying: the call fails at once, and the task's
        # error names the file and the error (not just "HTTP 503")
        assert resp.status_code == 500 and result.error.type == "DagImportError"
        assert "failed to import" in result.error.message and "broken on purpose" in result.error.message
        assert "runtime_broken.py" in result.error.message
        assert runtime.proc.poll() is None
        output = runtime.output()
    assert "runtime_broken.py" in output and "RuntimeError: this DAG file is broken on purpose" in output
    assert "NOT READY" in output


# --- security ------------------------------------------------------------------------------


def test_signed_invocations_only_when_a_secret_is_set(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t\n")
    env = {"AIRFLOW__KNATIVE__SIGNING_SECRET": "", "AIRFLOW__KNATIVE__SIGNING_SECRET_FILE": str(secret_file)}
    with start_runtime(BASIC, env=env) as runtime:
        body = invocation(runtime, "runtime_basic/add", 1, 2).encode()
        resp, result = post(runtime, body)
        assert resp.status_code == 401 and result.error.type == "SignatureError"
        assert "not signed" in result.error.message
        # checked before parsing: garbage without a signature is 401, not 400
        assert post(runtime, b"garbage")[0].status_code == 401
        resp, result = post(runtime, body, **protocol.sign(b"wrong", body))
        assert resp.status_code == 401 and "does not match" in result.error.message
        resp, result = post(runtime, body, **protocol.sign(b"s3cr3t", body, now=time.time() - 3600))
        assert resp.status_code == 401 and "replayed" in result.error.message
        tampered = invocation(runtime, "runtime_basic/add", 1, 3).encode()
        assert post(runtime, tampered, **protocol.sign(b"s3cr3t", body))[0].status_code == 401
        resp, result = runtime.invoke("runtime_basic/add", 1, 2, secret=b"s3cr3t")
        assert resp.status_code == 200 and result.value == 3
        assert "SECURITY" not in runtime.output()


def test_missing_secret_is_warned_about(rt: RuntimeProcess) -> None:
    assert "SECURITY: no signing secret is configured" in rt.output()


# --- storage: pass by reference ------------------------------------------------------------


def test_reference_argument_and_spilled_result_through_a_file_store(
    rt: RuntimeProcess, file_store: str
) -> None:
    import numpy as np

    from airflow_provider_knative import store

    target = store.open_store(file_store)
    arr = np.arange(100_000, dtype="float64")
    stored = target.put(target.new_key("test"), codec.encode_chunks(arr))
    ref = codec.ObjectRef(stored.url, stored.size, stored.sha256, codec.summarize(arr))
    settings = protocol.StoreSettings(url=file_store, inline_max_bytes=1024, key_prefix="runtime/results")

    resp, result = rt.invoke("runtime_basic/array_stats", ref, store=settings)
    assert resp.status_code == 200, result.error
    assert result.value == {"sum": float(arr.sum()), "shape": [100_000], "dtype": "float64"}
    assert len(resp.request.content) < 2048

    resp, result = rt.invoke(
        "runtime_basic/make_array",
        50_000,
        2.5,
        store=settings,
        context={"dag_id": "d", "run_id": "r:1", "task_id": "t"},
    )
    assert resp.status_code == 200 and isinstance(result.value, codec.ObjectRef)
    assert len(resp.content) < 2048
    assert result.value.url.startswith(file_store + "/runtime/results/d/r_1/t/")
    assert result.value.summary == "ndarray float64 (50000,)"
    back = codec.loads(target.get(result.value.url))
    assert back.shape == (50_000,) and float(back.sum()) == 125_000.0

    # a small result stays inline
    _, result = rt.invoke("runtime_basic/add", 1, 2, store=settings)
    assert result.value == 3

    # a reference that does not match its object is refused, not silently used
    bad = codec.ObjectRef(stored.url, stored.size, "0" * 64)
    resp, result = rt.invoke("runtime_basic/array_stats", bad, store=settings)
    assert resp.status_code == 500 and result.error.type == "ObjectCorruptError"
    assert "the reference says" in result.error.message


# --- SIGTERM -------------------------------------------------------------------------------


def test_sigterm_drains_16_in_flight_calls_then_exits_0(tmp_path: Path) -> None:
    """Each call runs until the test opens its gate, so no step depends on how fast a loaded
    machine is: all 16 run, SIGTERM, no new connection is accepted, and the 16 still finish."""
    env = {"AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY": "16", "AIRFLOW__KNATIVE__DRAIN_TIMEOUT_SECONDS": "60"}
    gate = tmp_path / "gate"
    runtime = start_runtime(BASIC, env=env)
    try:
        source = runtime.functions()["runtime_basic/wait_for_file"]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [
                pool.submit(runtime.invoke, "runtime_basic/wait_for_file", str(gate), source_hash=source)
                for _ in range(16)
            ]
            _wait_in_flight(runtime, 16)
            runtime.terminate()
            deadline = time.monotonic() + 30
            while True:  # the listening socket closes: no longer accepting
                try:
                    httpx.get(runtime.url + "/healthz", timeout=2)
                except httpx.ConnectError:
                    break
                assert time.monotonic() < deadline, "still accepting connections 30 s after SIGTERM"
                time.sleep(0.02)
            assert not any(f.done() for f in futures)  # the drain holds them
            gate.touch()
            results = [f.result(timeout=60) for f in futures]
        assert [(r.status_code, res.value) for r, res in results] == [(200, str(gate))] * 16
        assert runtime.proc.wait(timeout=60) == 0
    finally:
        runtime.stop()
    assert "draining in-flight calls" in runtime.output()


def test_console_script_serves_on_dollar_port(tmp_path: Path) -> None:
    """The container entrypoint: ``airflow-knative serve`` listens on $PORT when --port is absent."""
    import subprocess

    from runtime_process import CONSOLE_SCRIPT
    from servers import free_port

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CONSOLE_SCRIPT, "--dags-folder", str(BASIC), "--host", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PORT": str(port)},
        )
    with RuntimeProcess(proc, port, log_path) as runtime:
        runtime.wait_for("/readyz")
        assert runtime.invoke("runtime_basic/add", 5, 5)[1].value == 10
