"""Traces: the runtime's spans (a real process exporting OTLP/HTTP to a receiver on 127.0.0.1),
tracing off, and a ``@task.knative`` task run with Airflow's traces on whose spans and the
runtime's share one trace, sync (``dag.test()``) and deferred (the trigger in a process of its
own, as in a triggerer)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import TEST_DAGS
from otlp_receiver import Receiver, Span, otlp_receiver
from runtime_process import RuntimeProcess, start_runtime

from airflow_provider_knative import protocol

HERE = Path(__file__).resolve().parent
BASIC = HERE / "runtime_dags" / "basic"
SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code
#: the runtime exports to the receiver over OTLP/HTTP, quickly (the SDK's default delay is 5 s)
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
)


def otel_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "AIRFLOW__KNATIVE__SIGNING_SECRET": "",
        **extra,
    }


@pytest.fixture(autouse=True)
def _no_inherited_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def call(
    rt: RuntimeProcess, function: str, *args: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = protocol.Invocation(
        function_id=function, source_hash=rt.functions()[function], args=list(args), kwargs={}
    ).encode()
    return httpx.post(
        rt.url + protocol.INVOKE_PATH,
        content=body,
        headers={"content-type": protocol.CONTENT_TYPE, **(headers or {})},
        timeout=60,
    )


def of_trace(spans: list[Span], trace_id: str) -> dict[str, Span]:
    return {s.name: s for s in spans if s.trace_id == trace_id}


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Receiver, RuntimeProcess]]:
    with otlp_receiver() as receiver, start_runtime(BASIC, env=otel_env(receiver)) as rt:
        yield receiver, rt


def test_runtime_spans_are_children_of_the_callers_span(traced: tuple[Receiver, RuntimeProcess]) -> None:
    receiver, rt = traced
    header, trace_id, parent = traceparent()
    resp = call(rt, "runtime_basic/add", 20, 22, headers={"traceparent": header})
    assert resp.status_code == 200
    names = {"knative.runtime", "knative.fetch", "knative.function", "knative.spill"}
    spans = of_trace(receiver.wait_for(lambda got: names <= set(of_trace(got, trace_id))), trace_id)
    server = spans["knative.runtime"]
    assert server.parent_id == parent and server.kind == SERVER
    assert server.service == "airflow-knative-runtime"
    assert server.attributes["knative.function_id"] == "runtime_basic/add"
    assert server.attributes["http.response.status_code"] == 200
    assert ":" in server.attributes["knative.replica"]  # host:pid
    fetch, function, spill = spans["knative.fetch"], spans["knative.function"], spans["knative.spill"]
    assert {fetch.parent_id, function.parent_id, spill.parent_id} == {server.span_id}
    # in order, inside the server span
    assert server.start_ns <= fetch.start_ns <= fetch.end_ns <= function.start_ns
    assert function.start_ns <= function.end_ns <= spill.start_ns <= spill.end_ns <= server.end_ns
    assert all(s.status != ERROR for s in spans.values())


def test_a_function_that_raises_marks_its_span_an_error(traced: tuple[Receiver, RuntimeProcess]) -> None:
    receiver, rt = traced
    header, trace_id, parent = traceparent()
    assert call(rt, "runtime_basic/fail", "boom", headers={"traceparent": header}).status_code == 500
    spans = of_trace(receiver.wait_for(lambda got: "knative.function" in of_trace(got, trace_id)), trace_id)
    assert spans["knative.function"].status == ERROR and spans["knative.runtime"].status == ERROR
    assert "knative.spill" not in spans  # it never got there
    assert spans["knative.runtime"].parent_id == parent


def test_unsampled_callers_get_no_spans_and_untraced_ones_a_trace_of_their_own(
    traced: tuple[Receiver, RuntimeProcess],
) -> None:
    receiver, rt = traced
    header, unsampled, _ = traceparent(sampled=False)
    assert call(rt, "runtime_basic/add", 1, headers={"traceparent": header}).status_code == 200
    marker = str(uuid.uuid4())  # a call without a traceparent, made after it
    assert call(rt, "runtime_basic/add", 2, headers={"x-test-marker": marker}).status_code == 200
    # spans leave in the order they are made: once the later call's root span is here, the
    # unsampled call's would be too
    before = {s.trace_id for s in receiver.spans}
    spans = receiver.wait_for(
        lambda got: any(
            s.name == "knative.runtime" and s.trace_id not in before and not s.parent_id for s in got
        )
    )
    assert not [s for s in spans if s.trace_id == unsampled]


def test_tracing_off_imports_nothing_from_opentelemetry_and_sends_nothing(tmp_path: Path) -> None:
    dump = tmp_path / "modules.txt"
    with otlp_receiver() as receiver:
        # no OTEL_* at all: the server process never imports OpenTelemetry
        with start_runtime(
            BASIC,
            env={"AIRFLOW__KNATIVE__SIGNING_SECRET": ""},
            wrapper=[sys.executable, str(HERE / "module_dump.py"), str(dump)],
        ) as rt:
            header, _, _ = traceparent()
            assert call(rt, "runtime_basic/add", 1, 2, headers={"traceparent": header}).status_code == 200
            assert rt.stop() == 0
        imported = dump.read_text().split()
        assert "airflow_provider_knative.runtime.server" in imported  # the dump is the server's
        assert not [m for m in imported if m.startswith("opentelemetry")]
        # OTEL_SDK_DISABLED wins over an endpoint: nothing reaches the receiver, not even at exit
        env = otel_env(receiver, OTEL_SDK_DISABLED="true")
        with start_runtime(BASIC, env=env) as rt:
            assert call(rt, "runtime_basic/add", 1, 2, headers={"traceparent": header}).status_code == 200
            assert rt.stop() == 0
        assert receiver.requests == 0


# --- a task run with Airflow's traces on ----------------------------------------------------


@pytest.fixture(scope="module")
def task_runtime(airflow_home: Path) -> Iterator[tuple[Receiver, RuntimeProcess]]:
    with otlp_receiver() as receiver, start_runtime(TEST_DAGS, env=otel_env(receiver)) as rt:
        yield receiver, rt


def airflow_traced_env(receiver: Receiver, rt: RuntimeProcess, service: str) -> dict[str, str]:
    """A worker's or triggerer's environment with Airflow's traces on, exporting to the receiver."""
    env = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    env.update(
        AIRFLOW__TRACES__OTEL_ON="True",
        OTEL_TRACES_EXPORTER="otlp_proto_http",  # Airflow loads the exporter this names
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_SERVICE_NAME=service,
        AIRFLOW__KNATIVE__URL_TEMPLATE=rt.url,
        AIRFLOW__KNATIVE__SIGNING_SECRET="",
    )
    return env


def run_traced_dag(receiver: Receiver, rt: RuntimeProcess, dag_id: str) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "traced_dagrun.py"), dag_id],
        env=airflow_traced_env(receiver, rt, "airflow-worker"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"state"')]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["state"] == "success" and result["provider"] == "TracerProvider", result
    return result


@pytest.mark.parametrize("dag_id", ["knative_traced", "knative_traced_deferrable"])
def test_one_task_run_is_one_trace_across_airflow_and_the_runtime(
    task_runtime: tuple[Receiver, RuntimeProcess], dag_id: str
) -> None:
    receiver, rt = task_runtime
    run = run_traced_dag(receiver, rt, dag_id)
    trace_id = run["trace_id"]
    spans = receiver.wait_for(
        lambda got: {"knative.invoke", "knative.function"} <= set(of_trace(got, trace_id))
    )
    mine = [s for s in spans if s.trace_id == trace_id]
    (invoke,) = [s for s in mine if s.name == "knative.invoke"]
    (server,) = [s for s in mine if s.name == "knative.runtime"]
    # the worker's span (the task's span stand-in) -> knative.invoke (worker or triggerer) -> the runtime
    assert invoke.service == "airflow-worker" and invoke.kind == CLIENT
    assert invoke.parent_id == run["span_id"]
    assert invoke.attributes["http.response.status_code"] == 200
    assert server.service == "airflow-knative-runtime" and server.parent_id == invoke.span_id
    assert server.attributes["knative.function_id"] == f"{dag_id}/double"
    assert {
        s.parent_id for s in mine if s.name in ("knative.fetch", "knative.function", "knative.spill")
    } == {server.span_id}
    assert invoke.start_ns <= server.start_ns <= server.end_ns <= invoke.end_ns


@pytest.mark.parametrize("triggerer_traces", [True, False])
def test_a_deferred_call_carries_the_tasks_context_to_the_triggerer_process(
    task_runtime: tuple[Receiver, RuntimeProcess], tmp_path: Path, triggerer_traces: bool
) -> None:
    """The trigger runs where no span of the task is current (its own process): the context the
    task deferred under comes in its kwargs. A triggerer that traces makes its own knative.invoke
    under it; one that does not sends the carried context on as it is."""
    receiver, rt = task_runtime
    header, trace_id, deferred_under = traceparent()
    function = "knative_traced_deferrable/double"
    body = protocol.Invocation(function_id=function, source_hash=rt.functions()[function], args=[5]).encode()
    kwargs = {
        "url": rt.url + protocol.INVOKE_PATH,
        "body": {"b64": base64.b64encode(body).decode()},
        "timeouts": {"connect": 10.0, "read": 60.0, "startup_deadline": 30.0},
        "invocation_id": f"deferred-{uuid.uuid4()}",
        "traceparent": header,
    }
    (tmp_path / "triggers.json").write_text(json.dumps([kwargs]))
    env = airflow_traced_env(receiver, rt, "airflow-triggerer")
    if not triggerer_traces:
        env["AIRFLOW__TRACES__OTEL_ON"] = "False"
    proc = subprocess.run(
        [sys.executable, str(HERE / "trigger_host.py"), str(tmp_path / "triggers.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"id"')]
    assert proc.returncode == 0 and events, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert events[0]["event"]["http_status"] == 200
    spans = of_trace(receiver.wait_for(lambda got: "knative.function" in of_trace(got, trace_id)), trace_id)
    if triggerer_traces:
        invoke = spans["knative.invoke"]
        assert invoke.service == "airflow-triggerer" and invoke.parent_id == deferred_under
        assert spans["knative.runtime"].parent_id == invoke.span_id
    else:
        assert "knative.invoke" not in spans
        assert spans["knative.runtime"].parent_id == deferred_under
