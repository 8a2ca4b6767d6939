"""``GET /metrics`` of the runtime as a real process: parsed with Prometheus' own text parser,
its counters checked against the exact calls a test made (both isolation modes), its gauges
against calls held running, and the executor's workloads by outcome."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtime_process import RuntimeProcess, start_runtime
from workload_builder import execute_task

from airflow_provider_knative import codec, protocol, store

BASIC = Path(__file__).resolve().parent / "runtime_dags" / "basic"
NO_SECRET = {"AIRFLOW__KNATIVE__SIGNING_SECRET": ""}
P = "knative_runtime_"


def scrape(rt: RuntimeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``, parsed by prometheus_client's parser: (name, labels) -> value."""
    resp = httpx.get(rt.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((P + name, tuple(sorted(labels.items()))), 0.0)


def family(samples: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of one metric (all label sets) that are not zero."""
    return {labels: v for (n, labels), v in samples.items() if n == P + name and v}


def until(rt: RuntimeProcess, condition: Callable[[dict[Any, float]], bool], timeout: float = 60.0) -> dict:
    """Scrape until ``condition`` holds (never a fixed sleep); the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(rt)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never got there; last scrape: {samples}")
        time.sleep(0.05)


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_counters_match_the_calls_made(isolation: str, tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    env = {**NO_SECRET, "AIRFLOW__KNATIVE__ISOLATION": isolation, "AIRFLOW__KNATIVE__XCOM_STORE_URL": url}
    target = store.open_store(url)
    arr = np.arange(10_000, dtype="float64")
    stored = target.put(target.new_key("test"), codec.encode_chunks(arr))
    ref = codec.ObjectRef(stored.url, stored.size, stored.sha256, codec.summarize(arr))
    spill_to = protocol.StoreSettings(url=url, inline_max_bytes=1024, key_prefix="metrics")
    with start_runtime(BASIC, env=env) as rt:
        before = scrape(rt)
        assert not family(before, "invocations_total")  # a fresh process has counted nothing
        for i in range(3):
            resp, result = rt.invoke("runtime_basic/add", i, 1, invocation_id=f"add-{i}-{uuid.uuid4()}")
            assert resp.status_code == 200 and result.value == i + 1
        for _ in range(2):
            assert rt.invoke("runtime_basic/fail", "boom")[0].status_code == 500
        assert rt.invoke("runtime_basic/add", 1, 2, 3, 4)[0].status_code == 422  # too many arguments
        assert rt.invoke("no_such/function")[0].status_code == 404
        malformed = httpx.post(
            rt.url + protocol.INVOKE_PATH,
            content=b"\x00junk",
            headers={"content-type": protocol.CONTENT_TYPE},
        )
        assert malformed.status_code == 400
        resp, result = rt.invoke("runtime_basic/array_stats", ref, store=spill_to)
        assert resp.status_code == 200, result.error
        resp, made = rt.invoke("runtime_basic/make_array", 5_000, 1.5, store=spill_to)
        assert resp.status_code == 200 and isinstance(made.value, codec.ObjectRef)
        # the same invocation id sent again joins the recorded call: answered, not run again
        again_id = f"again-{uuid.uuid4()}"
        assert rt.invoke("runtime_basic/add", 5, 5, invocation_id=again_id)[1].value == 10
        assert rt.invoke("runtime_basic/add", 5, 5, invocation_id=again_id)[1].value == 10

        after = scrape(rt)
        assert family(after, "invocations_total") == {
            (("function", "runtime_basic/add"), ("outcome", "ok")): 4,
            (("function", "runtime_basic/add"), ("outcome", "joined")): 1,
            (("function", "runtime_basic/add"), ("outcome", "rejected")): 1,
            (("function", "runtime_basic/fail"), ("outcome", "error")): 2,
            (("function", ""), ("outcome", "rejected")): 2,  # unknown function, malformed body
            (("function", "runtime_basic/array_stats"), ("outcome", "ok")): 1,
            (("function", "runtime_basic/make_array"), ("outcome", "ok")): 1,
        }
        # durations: one observation per call that ran here (not the refused, not the joined)
        ran = {"runtime_basic/add": 4, "runtime_basic/fail": 2, "runtime_basic/array_stats": 1}
        ran["runtime_basic/make_array"] = 1
        for function, count in ran.items():
            assert value(after, "invocation_duration_seconds_count", function=function) == count
            for phase in ("queued", "fetch", "function"):
                assert value(after, "invocation_phase_seconds_count", function=function, phase=phase) == count
            spilled = (
                0 if function == "runtime_basic/fail" else count
            )  # a function that raised spills nothing
            assert value(after, "invocation_phase_seconds_count", function=function, phase="spill") == spilled
            total = value(after, "invocation_duration_seconds_sum", function=function)
            phases = sum(
                value(after, "invocation_phase_seconds_sum", function=function, phase=phase)
                for phase in ("queued", "fetch", "function", "spill")
            )
            assert 0 < phases <= total + 1e-6  # the phases fit in the call's duration
            assert value(after, "invocation_duration_seconds_bucket", function=function, le="+Inf") == count
        assert family(after, "fetched_bytes_total") == {
            (("function", "runtime_basic/array_stats"),): stored.size
        }
        assert family(after, "spilled_bytes_total") == {
            (("function", "runtime_basic/make_array"),): made.value.size
        }
        assert value(after, "invocations_in_flight") == 0 and value(after, "invocations_waiting") == 0
        assert value(after, "records_held", kind="invocations") == 0
        cold = re.search(r"cold start (\d+\.\d+) s", rt.output())
        assert cold and value(after, "cold_start_seconds") == pytest.approx(float(cold.group(1)))
        assert value(after, "cold_start_step_seconds", step="server_up") > 0
        assert after[("process_resident_memory_bytes", ())] > 0  # the process collector is there


def test_in_flight_waiting_and_records_held_while_calls_run(tmp_path: Path) -> None:
    env = {
        **NO_SECRET,
        "AIRFLOW__KNATIVE__CONTAINER_CONCURRENCY": "1",
        "AIRFLOW__KNATIVE__XCOM_STORE_URL": (tmp_path / "store").as_uri(),
    }
    first, second = tmp_path / "first", tmp_path / "second"
    with start_runtime(BASIC, env=env) as rt, concurrent.futures.ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(rt.invoke, "runtime_basic/wait_for_file", str(first), invocation_id=str(uuid.uuid4()))
        ]
        until(rt, lambda s: value(s, "invocations_in_flight") == 1)
        calls.append(
            pool.submit(
                rt.invoke, "runtime_basic/wait_for_file", str(second), invocation_id=str(uuid.uuid4())
            )
        )
        held = until(
            rt,
            lambda s: (
                value(s, "invocations_waiting") == 1 and value(s, "records_held", kind="invocations") == 1
            ),
        )
        assert value(held, "invocations_in_flight") == 1  # one slot (container_concurrency 1), one waits
        first.touch()
        until(rt, lambda s: value(s, "invocations_waiting") == 0 and value(s, "invocations_in_flight") == 1)
        second.touch()
        assert [call.result()[0].status_code for call in calls] == [200, 200]
        done = until(rt, lambda s: value(s, "invocations_in_flight") == 0)
        assert value(done, "records_held", kind="invocations") == 0
        assert value(done, "invocations_total", function="runtime_basic/wait_for_file", outcome="ok") == 2
        queued = value(
            done, "invocation_phase_seconds_sum", function="runtime_basic/wait_for_file", phase="queued"
        )
        assert queued > 0  # the second call's wait for the slot is in the queued phase


def test_workloads_by_outcome(airflow_home: Path) -> None:
    env = {**NO_SECRET, "AIRFLOW__KNATIVE__WORKLOADS": "true"}
    with start_runtime(BASIC, env=env) as rt:

        def send(workload: str) -> httpx.Response:
            body = protocol.WorkloadRequest(str(uuid.uuid4()), workload, executor="", server="").encode()
            return httpx.post(
                rt.url + protocol.WORKLOADS_PATH,
                content=body,
                headers={"content-type": protocol.CONTENT_TYPE},
                timeout=60,
            )

        missing = send(execute_task("no_such_dag_file.py").model_dump_json())
        assert missing.status_code == 422 and b"DagFileMissing" in missing.content
        broken = send(json.dumps({"not": "a workload"}))  # the child cannot even read it: it dies
        assert broken.status_code == 422 and b"WorkerCrashed" in broken.content
        samples = until(
            rt,
            lambda s: sum(family(s, "workloads_total").values()) == 2 and value(s, "workloads_running") == 0,
        )
        assert family(samples, "workloads_total") == {
            (("outcome", "refused"),): 1,
            (("outcome", "crashed"),): 1,
        }
        assert value(samples, "workload_duration_seconds_count") == 2
        assert value(samples, "records_held", kind="deliveries") == 0
