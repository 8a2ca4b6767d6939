"""KnativeInvocationTrigger: serializable with small kwargs, importable by the triggerer, and
run for real (asyncio + httpx) against the runtime process; big bodies travel as references."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Iterator

import pytest
from conftest import TEST_DAGS
from runtime_process import RuntimeProcess, start_runtime
from servers import free_port

from airflow_provider_knative import protocol, store
from airflow_provider_knative.invoker import Timeouts, read_result
from airflow_provider_knative.spill import Owner, pack_bytes, unpack_bytes
from airflow_provider_knative.triggers import KnativeInvocationTrigger


@pytest.fixture(scope="module")
def runtime(airflow_home) -> Iterator[RuntimeProcess]:
    with start_runtime(TEST_DAGS) as rt:
        yield rt


def _first_event(trigger: KnativeInvocationTrigger) -> dict:
    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    return asyncio.run(first())


def _trigger(url: str, body: bytes, *, inline: int = 65536, **kw) -> KnativeInvocationTrigger:
    packed = pack_bytes(
        body,
        inline_max_bytes=inline,
        store_url=store.open_store().root_url,
        owner=Owner("dag", "run", "task"),
        name="_request",
    )
    return KnativeInvocationTrigger(
        url=url,
        body=packed,
        timeouts=Timeouts(2.0, 30.0, kw.pop("deadline", 5.0)).to_dict(),
        knative_conn_id="none",
        store_url=store.open_store().root_url,
        inline_max_bytes=inline,
        owner={"dag_id": "dag", "run_id": "run", "task_id": "task"},
        **kw,
    )


def _invocation(values: list) -> bytes:
    return protocol.Invocation(
        "knative_average/compute_sum",
        protocol.source_hash(_compute_sum_source()),
        args=[values],
    ).encode()


def _compute_sum_source():
    from knative_dagrun import examples

    return examples().knative_average.task_dict["compute_sum"].python_callable


def test_serialize_round_trip_is_small_json_and_importable(runtime):
    trigger = _trigger(runtime.url + "/invoke", _invocation([1, 2]))
    path, kwargs = trigger.serialize()
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is KnativeInvocationTrigger
    text = json.dumps(kwargs)
    assert len(text) < 2048 and "secret" not in text.lower()
    again = KnativeInvocationTrigger(**json.loads(text))
    assert again.serialize() == (path, kwargs)


def test_trigger_calls_the_runtime_and_reports_the_answer(runtime):
    event = _first_event(_trigger(runtime.url + "/invoke", _invocation([1.5, 2.5])))
    assert event["status"] == "response" and event["http_status"] == 200
    from airflow_provider_knative.invoker import Response

    response = Response(event["http_status"], event["content_type"], unpack_bytes(event["body"]))
    assert read_result(response, runtime.url).value == 4.0


def test_large_request_and_response_bodies_travel_through_the_store(runtime):
    """Bodies over the inline limit are store refs in kwargs and in the event, deleted once read."""
    from knative_dagrun import examples

    from airflow_provider_knative.invoker import Response

    values = list(range(20000))
    extract = examples().knative_average.task_dict["extract"].python_callable
    body = protocol.Invocation(
        "knative_average/extract", protocol.source_hash(extract), context={"params": {"data": values}}
    ).encode()
    trigger = _trigger(runtime.url + "/invoke", body, inline=1024)
    assert "ref" in trigger.body and len(json.dumps(trigger.serialize()[1])) < 2048
    event = _first_event(trigger)
    assert event["status"] == "response" and "ref" in event["body"], event
    assert len(json.dumps(event)) < 2048
    objects = {o.url for o in store.open_store().list()}
    assert trigger.body["ref"] not in objects  # the spilled request body is gone once sent
    assert event["body"]["ref"] in objects
    answer = Response(event["http_status"], event["content_type"], unpack_bytes(event["body"]))
    assert event["body"]["ref"] not in {o.url for o in store.open_store().list()}
    assert read_result(answer, runtime.url).value == values


def test_unreachable_service_yields_a_failed_event_with_the_reason():
    url = f"http://127.0.0.1:{free_port()}/invoke"
    event = _first_event(_trigger(url, b"x", deadline=0.5))
    assert event["status"] == "failed" and event["error"] == "ServiceUnavailableError"
    assert url in event["message"] and "startup deadline 0.5 s" in event["message"]
