"""``[knative] isolation``: what calls share in thread mode, and that process mode shares nothing.

Against real runtime processes on 127.0.0.1: each call in process mode runs in a child forked
from the fork server, so module globals, the working directory and crashes stay inside it.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_process import RuntimeProcess, start_runtime

pytestmark = pytest.mark.fault

ISOLATION = Path(__file__).resolve().parent / "runtime_dags" / "isolation"


@pytest.fixture(scope="module")
def process_rt() -> Iterator[RuntimeProcess]:
    env = {"AIRFLOW__KNATIVE__ISOLATION": "process", "AIRFLOW__KNATIVE__SIGNING_SECRET": ""}
    with start_runtime(ISOLATION, env=env) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def thread_rt() -> Iterator[RuntimeProcess]:
    env = {"AIRFLOW__KNATIVE__ISOLATION": "thread", "AIRFLOW__KNATIVE__SIGNING_SECRET": ""}
    with start_runtime(ISOLATION, env=env) as runtime:
        yield runtime


def _sixteen_scratch_calls(rt: RuntimeProcess) -> list[tuple[int, object]]:
    source = rt.functions()["runtime_isolation/scratch"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(rt.invoke, "runtime_isolation/scratch", i, source_hash=source) for i in range(16)
        ]
        return [(i, f.result()[1].value) for i, f in enumerate(futures)]


def test_sixteen_concurrent_calls_mutating_a_global_are_all_correct_in_process_mode(
    process_rt: RuntimeProcess,
) -> None:
    results = _sixteen_scratch_calls(process_rt)
    assert all(value == i for i, value in results), results


def _overlapping_calls(rt: RuntimeProcess, tmp_path: Path) -> tuple[object, object]:
    """Call "a" sets the global and waits; call "b" sets it meanwhile; then "a" reads it back.
    Ordered by files the calls write and wait for, so no step depends on the machine's speed."""
    gate = tmp_path / "gate"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(rt.invoke, "runtime_isolation/scratch_until", "a", str(gate))
        deadline = time.monotonic() + 60
        while not Path(f"{gate}.set").exists():
            assert time.monotonic() < deadline and not first.done(), "call a never set the global"
            time.sleep(0.01)
        already_open = tmp_path / "open"
        already_open.touch()
        second = rt.invoke("runtime_isolation/scratch_until", "b", str(already_open))[1].value
        gate.touch()
        return first.result(timeout=60)[1].value, second


def test_thread_mode_shares_module_globals_as_the_readme_says(
    thread_rt: RuntimeProcess, tmp_path: Path
) -> None:
    assert _overlapping_calls(thread_rt, tmp_path) == ("b", "b")  # what process isolation is for
    assert [thread_rt.invoke("runtime_isolation/visits")[1].value for _ in range(3)][-1] >= 3


def test_process_mode_keeps_each_calls_globals_its_own(process_rt: RuntimeProcess, tmp_path: Path) -> None:
    assert _overlapping_calls(process_rt, tmp_path) == ("a", "b")


def test_every_call_starts_from_the_imported_state_in_process_mode(process_rt: RuntimeProcess) -> None:
    assert [process_rt.invoke("runtime_isolation/visits")[1].value for _ in range(3)] == [1, 1, 1]
    first = process_rt.invoke("runtime_isolation/chdir", "/tmp")[1].value
    second = process_rt.invoke("runtime_isolation/chdir", "/")[1].value
    assert first == second != "/tmp"  # the first call's chdir did not leak into the second


@pytest.mark.parametrize(("how", "said"), [("exit", "exited with status 3"), ("segv", "SIGSEGV")])
def test_a_crash_fails_only_its_own_call(process_rt: RuntimeProcess, how: str, said: str) -> None:
    resp, result = process_rt.invoke("runtime_isolation/crash", how)
    assert resp.status_code == 500 and result.error.type == "WorkerCrashed"
    assert said in result.error.message and "runtime_isolation/crash" in result.error.message
    assert process_rt.proc.poll() is None
    assert process_rt.invoke("runtime_isolation/add", 2, 3)[1].value == 5


def test_logs_errors_and_results_look_the_same_in_both_modes(
    process_rt: RuntimeProcess, thread_rt: RuntimeProcess
) -> None:
    for rt in (process_rt, thread_rt):
        resp, result = rt.invoke("runtime_isolation/chatty", "iso", lines=3, pause=0)
        assert resp.status_code == 200 and result.value == "iso"
        assert "iso print 2" in result.logs and "iso log 2" in result.logs
        resp, result = rt.invoke("runtime_isolation/fail", "boom")
        assert resp.status_code == 500 and result.error.type == "TaskFailed"
        assert "raise TaskFailed(message)" in result.error.traceback and "about to fail" in result.logs


def test_the_default_is_process_isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a setting, one pod's concurrent calls do not share a module global (issue 20: 16
    concurrent calls of such a function returned 45 wrong values out of 48 with threads)."""
    monkeypatch.delenv("AIRFLOW__KNATIVE__ISOLATION", raising=False)
    with start_runtime(ISOLATION, env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}) as runtime:
        assert _overlapping_calls(runtime, tmp_path) == ("a", "b")
        assert "process isolation" in runtime.output()
