"""The XCom backend never changes a value: the plain-JSON rule, and real runs with dag.test().

Plain JSON is taken only when every reader gets back the very same value and type and
Airflow's API accepts it; everything else is packed, which the codec carries exactly.
"""

from __future__ import annotations

import collections
import enum
import json
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pendulum
import pytest
from exact_values import assert_same, nest
from xcom_dagrun import run_dag, task_states, xcom_rows

from airflow_provider_knative import codec
from airflow_provider_knative.xcom import MARKER, KnativeXComBackend

Row = namedtuple("Row", "value")
CTX = {"key": "return_value", "dag_id": "d", "run_id": "r", "task_id": "t"}


def ser(value: Any) -> Any:
    return KnativeXComBackend.serialize_value(value, **CTX)


def de(stored: Any) -> Any:
    return KnativeXComBackend.deserialize_value(Row(stored))


def through_airflow(stored: Any) -> Any:
    """What a task gets back: the DB's JSON column, then Airflow's Execution API models."""
    from airflow.api_fastapi.execution_api.datamodels.xcom import XComResponse as ServerModel
    from airflow.sdk.api.datamodels._generated import XComResponse as ClientModel

    text = json.dumps(stored, allow_nan=False)  # what the JSON column and the API carry
    server = ServerModel.model_validate_json(json.dumps({"key": "k", "value": json.loads(text)}))
    client = ClientModel.model_validate_json(server.model_dump_json())
    return client.value


def is_plain(stored: Any) -> bool:
    return not (type(stored) is dict and MARKER in stored)


# --------------------------------------------------------------------------------------
# Airflow's own limit, measured on its real models
# --------------------------------------------------------------------------------------


#: measured on Airflow 3.3.2's models (the test below fails if Airflow changes it)
AIRFLOW_LIMIT = 199


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("inner", [1, None, "x"])
def test_the_plain_json_depth_limit_is_what_airflows_models_take(
    file_store: str, kind: str, inner: Any
) -> None:
    from pydantic import ValidationError

    deepest = nest(AIRFLOW_LIMIT, kind, inner)
    assert through_airflow(deepest) == deepest
    with pytest.raises(ValidationError, match=r"recursion limit|json_invalid|nested"):
        through_airflow(nest(AIRFLOW_LIMIT + 1, kind, inner))
    assert is_plain(ser(deepest))
    past = ser(nest(AIRFLOW_LIMIT + 1, kind, inner))
    assert not is_plain(past)  # packed: it travels, and Airflow's API serves the marker
    assert_same(nest(AIRFLOW_LIMIT + 1, kind, inner), de(through_airflow(past)))


def test_one_depth_rule_for_plain_json_and_the_codec() -> None:
    from airflow_provider_knative import xcom

    assert xcom.AIRFLOW_JSON_MAX_DEPTH == AIRFLOW_LIMIT
    assert xcom.PLAIN_JSON_MAX_DEPTH == min(
        AIRFLOW_LIMIT, codec.MAX_DEPTH
    )  # never plain what the codec refuses


def test_the_rest_api_model_serves_the_deepest_plain_value() -> None:
    # what the UI and `GET .../xcomEntries/{key}` answer with (python-mode validation allows
    # more nesting than JSON parsing, so the Execution API's 200 levels is the binding limit)
    import datetime as dt

    from airflow.api_fastapi.core_api.datamodels.xcom import XComResponseNative

    now = dt.datetime.now(dt.timezone.utc)
    row = {
        "key": "k",
        "timestamp": now,
        "logical_date": None,
        "map_index": -1,
        "task_id": "t",
        "dag_id": "d",
        "run_id": "r",
        "dag_run": {"dag_model": {"dag_display_name": "d"}, "run_after": now},
        "task": {"task_display_name": "t"},
        "value": nest(AIRFLOW_LIMIT, "dict"),
    }
    served = json.loads(XComResponseNative.model_validate(row).model_dump_json())
    assert served["value"] == nest(AIRFLOW_LIMIT, "dict")


def test_the_limit_also_holds_for_mapped_xcom_slices() -> None:
    from airflow.api_fastapi.execution_api.datamodels.xcom import XComSequenceSliceResponse

    deepest = nest(AIRFLOW_LIMIT, "list")
    assert XComSequenceSliceResponse.model_validate_json(json.dumps([deepest, deepest])).root[0] == deepest


# --------------------------------------------------------------------------------------
# The rule, value by value
# --------------------------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Mode(str, enum.Enum):
    FAST = "fast"


class MyList(list):
    pass


STAY_PLAIN = [
    None,
    True,
    0,
    -(2**63),
    2**63 - 1,
    [2**64 - 1],
    1.5,
    [0.0],
    5e-324,
    [9999999999999998.0, -9999999999999998.0],
    "",
    "héllo ✓",
    [],
    {},
    {"rows": [{"id": 1, "score": 0.25, "ok": False, "tags": None}]},
    {"__private": 1, "_knative": 2},
]


@pytest.mark.parametrize("value", STAY_PLAIN, ids=repr)
def test_exact_json_values_stay_plain_and_readable(file_store: str, value: Any) -> None:
    stored = ser(value)
    assert is_plain(stored) and stored is value
    assert_same(value, de(through_airflow(stored)))


GO_PACKED = [
    # types JSON would silently turn into their base type
    np.float64(1.5),
    {"f": np.float64(0.1)},
    np.int64(3),
    np.bool_(True),
    np.str_("x"),
    collections.OrderedDict(a=1),
    collections.Counter(a=1),
    collections.defaultdict(list, a=[1]),
    # values Airflow's API or PostgreSQL would refuse or change
    float("nan"),
    [float("inf")],
    {"x": float("-inf")},
    -0.0,
    [1e16],
    # bare numbers SQLite's NUMERIC column affinity changes (inside a container they are text)
    500.0,
    0.0,
    -9999999999999998.0,
    2**63,
    2**64 - 1,
    {"big": -1.5e300},
    2**64,
    -(2**63) - 1,
    "a\x00b",
    {"k\x00": 1},
    {"__classname__": "builtins.tuple", "__version__": 1, "__data__": [1]},
    [{"__data__": 1}],
    "lone \ud800",
    nest(200, "list"),
    nest(200, "dict"),
    # and the types JSON has no form for
    (1, 2),
    {1: "int key"},
    pd.Timestamp("2024-01-01 00:00:00.000000001"),
    pd.NaT,
    pendulum.datetime(2024, 1, 1, tz="Europe/Paris"),
]


@pytest.mark.parametrize("value", GO_PACKED, ids=lambda v: repr(v)[:40])
def test_everything_else_is_packed_and_comes_back_exactly(file_store: str, value: Any) -> None:
    stored = ser(value)
    # beside the value, a marker carries a preview and the keys Airflow's UI renders (test_xcom_preview.py)
    display = {"preview", "__classname__", "__version__", "__data__"}
    assert not is_plain(stored) and set(stored) - display == {MARKER, "packed"}
    assert_same(value, de(through_airflow(stored)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Color.RED, r"value: cannot encode <enum 'Color'>, an enum member"),
        ({"c": Mode.FAST}, r"value\['c'\]: cannot encode <enum 'Mode'>"),
        ({"rows": [0, MyList([1])]}, r"value\['rows'\]\[1\]: cannot encode .*MyList.*subclass of list"),
    ],
)
def test_values_json_would_change_and_the_codec_refuses_fail_with_the_path(
    file_store: str, value: Any, message: str
) -> None:
    # JSON would store an IntEnum as its int and a str enum as its str: never silently
    with pytest.raises(TypeError, match=message):
        ser(value)


# --------------------------------------------------------------------------------------
# Real Airflow runs: dag.test() with the backend configured by conftest
# --------------------------------------------------------------------------------------


def test_dag_carries_every_case_exactly(file_store: str, airflow_home: Path) -> None:
    dr = run_dag("xcom_exact")
    states = task_states(dr)
    failed = sorted(k for k, v in states.items() if v != "success")
    assert str(dr.state) == "success" and not failed, failed
    cases = sys.modules["xcom_exact"].cases()
    rows = xcom_rows("xcom_exact", dr.run_id)
    stored = {
        task[len("make_") :]: value for (task, _, key), value in rows.items() if task.startswith("make_")
    }
    assert set(stored) == set(cases)
    plain = {name for name, value in stored.items() if is_plain(value)}
    assert plain == {"deep_list_199", "plain"}, plain
    for name, value in stored.items():
        # every row is valid JSON that Airflow's API serves, and reads back as the value
        assert_same(cases[name], de(through_airflow(value)), f"value of {name}")
