"""The XCom backend: unit behaviour, and real Airflow 3 runs (``dag.test()``) on file:// and S3."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import sys
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from blake3 import blake3
from xcom_dagrun import load_dag, rerun_task, run_dag, task_states, xcom_rows

from airflow_provider_knative import codec, store
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.walk import leaves
from airflow_provider_knative.xcom import (
    MARKER,
    KnativeXComBackend,
    SpilledValueError,
    pass_references,
)

Row = namedtuple("Row", "value")  # what Airflow hands deserialize_value and purge
#: what a marker carries for people (the preview and the keys Airflow's UI renders), beside the value
DISPLAY = {"preview", "__classname__", "__version__", "__data__"}
CTX = {"key": "return_value", "dag_id": "d", "run_id": "manual__2024-01-01T00:00:00+00:00", "task_id": "t"}


def ser(value: Any, **kw: Any) -> Any:
    return KnativeXComBackend.serialize_value(value, **{**CTX, **kw})


def de(stored: Any) -> Any:
    return KnativeXComBackend.deserialize_value(Row(stored))


def through_db_json(stored: Any) -> Any:
    """What comes back out of the JSON column: proves the stored form is plain JSON."""
    return json.loads(json.dumps(stored, allow_nan=False))


def objects(url: str) -> list[str]:
    return sorted(o.url for o in store.open_store(url).list())


# --------------------------------------------------------------------------------------
# Unit behaviour (file store)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**63 - 1,
        [2**64 - 1],
        1.5,
        "",
        "héllo ✓",
        [],
        {},
        [1, [2, {"a": None}]],
        {"k": [True, 1.0]},
    ],
)
def test_json_values_are_stored_as_themselves(file_store: str, value: Any) -> None:
    stored = ser(value)
    assert stored == value and type(stored) is type(value)
    back = de(through_db_json(stored))
    assert back == value and type(back) is type(value)
    assert objects(file_store) == []


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [1, (2, 3)],
        {1: "int key"},
        {"nan": float("nan")},
        [float("inf")],
        b"\x00bytes",
        {"s": {1, 2}},
        frozenset({"a"}),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.date(2024, 1, 1),
        np.arange(10),
        np.float32(1.5),
        pd.DataFrame({"a": [1, 2]}),
    ],
    ids=repr,
)
def test_other_small_values_are_packed_inline(file_store: str, value: Any) -> None:
    stored = through_db_json(ser(value))
    assert set(stored) - DISPLAY == {MARKER, "packed"}
    back = de(stored)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    elif isinstance(value, dict) and "nan" in value:
        assert np.isnan(back["nan"])
    else:
        assert back == value and type(back) is type(value)
    assert objects(file_store) == []


def test_value_that_looks_like_a_marker_round_trips_unchanged(file_store: str) -> None:
    lookalikes = [
        {MARKER: 1, "ref": "file:///etc/passwd", "size": 1, "sha256": "0" * 64},
        {MARKER: 1, "packed": "not base64!"},
        {MARKER: 99},
    ]
    for value in lookalikes:
        stored = through_db_json(ser(value))
        assert set(stored) - DISPLAY == {MARKER, "packed"}
        assert de(stored) == value


def test_large_values_spill_with_a_self_describing_reference(file_store: str) -> None:
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    stored = through_db_json(ser(array))
    assert stored[MARKER] == 1
    assert stored["summary"] == "ndarray float64 (1000, 1000)"
    assert stored["ref"].startswith(file_store + "/d/manual__2024-01-01T00_00_00_00_00/t/return_value/")
    data = Path(stored["ref"][len("file://") :]).read_bytes()
    assert stored["size"] == len(data) and stored["sha256"] == "blake3:" + blake3(data).hexdigest()
    back = de(stored)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable  # a private copy the task may modify


def test_threshold_is_the_inline_limit(file_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_INLINE_MAX_BYTES", "100")
    assert ser("x" * 98) == "x" * 98  # 100 bytes of JSON
    stored = ser("x" * 99)
    assert "ref" in stored and stored["summary"] == "str of 99 chars"
    assert de(stored) == "x" * 99
    packed = ser((1, 2))
    assert "packed" in packed
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_INLINE_MAX_BYTES", "0")
    assert "ref" in ser((1, 2)) and ser(None) != None  # noqa: E711 - even null spills at 0


def test_object_ref_is_stored_as_is_without_download(file_store: str) -> None:
    ref = ObjectRef(url="s3://elsewhere/never/fetched.knc", size=123, sha256="ab" * 32, summary="ndarray x")
    stored = ser(ref)
    assert {k: v for k, v in stored.items() if k not in DISPLAY} == {
        MARKER: 1,
        "ref": ref.url,
        "size": 123,
        "sha256": "ab" * 32,
        "summary": "ndarray x",
    }
    with pass_references():
        assert de(stored) == ref


def test_pass_references_returns_the_ref_only_inside_the_block(file_store: str) -> None:
    stored = ser(np.zeros(100_000))
    with pass_references():
        ref = de(stored)
        assert isinstance(ref, ObjectRef) and ref.url == stored["ref"] and ref.size == stored["size"]
        assert de(ser({"small": 1})) == {"small": 1}  # inline values are unaffected
        assert isinstance(de(ser((1,))), tuple)
    np.testing.assert_array_equal(de(stored), np.zeros(100_000))


def test_unencodable_value_names_the_path_and_writes_nothing(file_store: str) -> None:
    with pytest.raises(TypeError, match=r"value\['rows'\]\[1\].*object"):
        ser({"rows": [1, object()]})
    with pytest.raises(TypeError, match="dtype object"):
        ser(np.array([object()] * 10_000))
    assert objects(file_store) == []


def test_purge_deletes_the_spilled_object_and_ignores_inline_values(file_store: str) -> None:
    stored = ser(np.zeros(100_000))
    assert objects(file_store) == [stored["ref"]]
    KnativeXComBackend.purge(Row(ser({"a": 1})))
    KnativeXComBackend.purge(Row(None))
    assert objects(file_store) == [stored["ref"]]
    KnativeXComBackend.purge(Row(stored))
    assert objects(file_store) == []
    KnativeXComBackend.purge(Row(stored))  # already gone: no error


def test_purge_of_a_ref_outside_the_store_does_not_touch_it(
    file_store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    KnativeXComBackend.purge(Row({MARKER: 1, "ref": outside.as_uri(), "size": 7, "sha256": "0" * 64}))
    assert outside.read_text() == "keep me"
    assert "outside the configured store" in caplog.text


# --------------------------------------------------------------------------------------
# Bad input: every failure names the URL, and serialize raises before any row exists
# --------------------------------------------------------------------------------------


def test_deleted_object_gives_a_clear_error_naming_the_url(file_store: str) -> None:
    stored = ser(np.ones(100_000))
    store.open_store().delete(stored["ref"])
    with pytest.raises(SpilledValueError, match=r"does not exist") as err:
        de(stored)
    assert stored["ref"] in str(err.value)


def test_corrupted_object_gives_a_clear_error_naming_the_url(file_store: str) -> None:
    stored = ser(np.ones(100_000))
    path = Path(stored["ref"][len("file://") :])
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SpilledValueError, match="corrupt: blake3") as err:
        de(stored)
    assert stored["ref"] in str(err.value)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(SpilledValueError, match=r"corrupt: .* bytes, the reference says") as err:
        de(stored)
    assert stored["ref"] in str(err.value)


def test_ref_outside_the_configured_store_is_refused(file_store: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(codec.dumps("secret"))
    with pytest.raises(SpilledValueError, match="outside the configured store") as err:
        de({MARKER: 1, "ref": secret.as_uri(), "size": 1, "sha256": "0" * 64})
    assert secret.as_uri() in str(err.value)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({MARKER: 2, "packed": ""}, "newer airflow-provider-knative"),
        ({MARKER: 1, "packed": "%%%"}, "not valid base64"),
        ({MARKER: 1, "packed": base64.b64encode(b"KNC1garbage").decode()}, "inline XCom value is corrupt"),
        ({MARKER: 1, "ref": 5, "size": 1, "sha256": "x"}, "malformed"),
        ({MARKER: 1}, "neither 'packed' nor 'ref'"),
    ],
)
def test_malformed_markers_raise_clear_errors(file_store: str, stored: dict, message: str) -> None:
    with pytest.raises(SpilledValueError, match=message):
        de(stored)


def test_unwritable_store_raises_before_any_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store folder should be")
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", blocker.as_uri())
    store.forget_stores()
    with pytest.raises(SpilledValueError, match=r"cannot spill XCom 'return_value' of d\.t") as err:
        ser(np.zeros(100_000))
    assert blocker.as_uri() in str(err.value)
    store.forget_stores()


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 store whose endpoint is a closed port on 127.0.0.1; yields the endpoint."""
    with socket.socket() as s:  # a port that nothing listens on once this block ends
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", "s3://bucket/xcom")
    store.forget_stores()
    yield f"http://127.0.0.1:{closed}"
    store.forget_stores()


def test_s3_unreachable_names_the_url(unreachable_s3: str) -> None:
    with pytest.raises(SpilledValueError, match="unreachable") as err:
        ser(np.zeros(100_000))
    assert "s3://bucket/xcom/d/" in str(err.value) and unreachable_s3 in str(err.value)
    with pytest.raises(SpilledValueError, match="unreachable") as err:
        de({MARKER: 1, "ref": "s3://bucket/xcom/d/x.knc", "size": 1, "sha256": "0" * 64})
    assert "s3://bucket/xcom/d/x.knc" in str(err.value)


def test_s3_bucket_missing_names_the_url(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_STORE_URL", "s3://no-such-bucket-here/xcom")
    store.forget_stores()
    try:
        with pytest.raises(SpilledValueError, match="bucket 'no-such-bucket-here' does not exist") as err:
            ser(np.zeros(100_000))
        assert "s3://no-such-bucket-here/xcom/d/" in str(err.value)
    finally:
        store.forget_stores()


def test_s3_deleted_and_corrupted_objects_name_the_url(s3_store: str) -> None:
    import boto3

    from airflow_provider_knative.config import get

    stored = ser(np.ones(100_000))
    assert stored["ref"].startswith(s3_store + "/")
    np.testing.assert_array_equal(de(stored), np.ones(100_000))
    client = boto3.client("s3", endpoint_url=get("s3_endpoint_url"))
    bucket, key = stored["ref"][len("s3://") :].split("/", 1)
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-100] ^= 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(SpilledValueError, match="corrupt: blake3") as err:
        de(stored)
    assert stored["ref"] in str(err.value)
    client.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(SpilledValueError, match="does not exist") as err:
        de(stored)
    assert stored["ref"] in str(err.value)


def test_backend_is_what_airflow_resolves() -> None:
    from airflow.sdk.execution_time.xcom import XCom

    assert XCom is KnativeXComBackend


# --------------------------------------------------------------------------------------
# Real Airflow 3 runs: dag.test() with the backend configured by conftest
# --------------------------------------------------------------------------------------


@pytest.fixture(params=["file_store", "s3_store"])
def any_store(request: pytest.FixtureRequest, airflow_home: Path) -> str:
    return request.getfixturevalue(request.param)


@pytest.mark.slow
def test_dag_moves_every_kind_of_value(any_store: str) -> None:
    dr = run_dag("xcom_values")
    states = task_states(dr)
    assert str(dr.state) == "success", states
    assert len(states) == 17 and set(states.values()) == {"success"}, states
    rows = xcom_rows("xcom_values", dr.run_id)

    # the 1 KB dict is plain JSON in the DB: the UI and REST API show it as it is
    small = sys.modules["xcom_values"].small_dict()
    assert 900 <= len(json.dumps(small)) <= 1200
    assert rows[("make_small", -1, "return_value")] == small

    def ref(task: str, key: str = "return_value", index: int = -1) -> dict:
        value = rows[(task, index, key)]
        assert value[MARKER] == 1 and value["ref"].startswith(any_store + "/xcom_values/"), value
        return value

    assert ref("make_array")["summary"] == "ndarray float64 (6553600,)"
    assert ref("make_array")["size"] > 50 * 1024 * 1024
    assert ref("make_frame")["summary"] == "DataFrame 1000000 rows x 8 cols"
    assert set(rows[("make_tuple", -1, "return_value")]) - DISPLAY == {MARKER, "packed"}
    assert set(rows[("make_moments", -1, "return_value")]) - DISPLAY == {MARKER, "packed"}
    assert ref("make_both", "frame")["summary"] == "DataFrame 50000 rows x 8 cols"
    assert ref("make_both", "array")["summary"] == "ndarray float64 (1000, 1000)"

    def split(task: str) -> list[ObjectRef]:
        """A container over the limit is stored item by item: a small packed value of references."""
        value = rows[(task, -1, "return_value")]
        assert set(value) - DISPLAY == {MARKER, "packed"} and len(value["packed"]) < 4096, value
        with pass_references():
            items = KnativeXComBackend.deserialize_value(Row(value))
        return [v for v in leaves(items) if isinstance(v, ObjectRef)]

    both = split("make_both")
    assert sorted(r.summary for r in both) == [
        "DataFrame 50000 rows x 8 cols",
        "ndarray float64 (1000, 1000)",
    ]
    chunks = split("make_chunks")
    assert [r.summary for r in chunks] == ["ndarray float64 (256, 512)"] * 3
    for i in range(3):
        assert ref("double", index=i)["summary"] == "ndarray float64 (256, 512)"
    total = KnativeXComBackend.deserialize_value(Row(rows[("total", -1, "return_value")]))
    assert total == float(2 * 256 * 512 * (0 + 1 + 2)) and type(total) is float  # SQLite kept it a float

    # every spilled object is referenced exactly once, and nothing else is in the store
    referenced = sorted(v["ref"] for v in rows.values() if isinstance(v, dict) and "ref" in v)
    referenced = sorted(referenced + [r.url for r in both + chunks])
    assert len(referenced) == len(set(referenced)) == 12  # make_both: 2 + 2, make_chunks: 3
    run_objects = [u for u in objects(any_store) if "/xcom_values/" in u]
    assert sorted(run_objects) == referenced


def test_clearing_a_task_purges_its_spilled_objects(file_store: str, airflow_home: Path) -> None:
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session

    dag = load_dag("xcom_spill")
    dr = dag.test()
    assert str(dr.state) == "success", task_states(dr)
    old = xcom_rows("xcom_spill", dr.run_id)[("produce", -1, "return_value")]["ref"]
    assert objects(file_store) == [old]

    # Airflow's own clear path (what "Clear" in the UI and the REST API call) on the producer
    with create_session() as session:
        tis = [ti for ti in dr.get_task_instances(session=session) if ti.task_id == "produce"]
        clear_task_instances(tis, session)
        session.commit()
    # the object stays until the cleared task runs again: that is when Airflow calls purge
    assert objects(file_store) == [old]

    assert rerun_task(dag, dr, "produce") == "success"
    new = xcom_rows("xcom_spill", dr.run_id)[("produce", -1, "return_value")]["ref"]
    assert new != old
    assert objects(file_store) == [new]


def test_store_failure_fails_the_task_and_writes_no_row(airflow_home: Path, unreachable_s3: str) -> None:
    dr = run_dag("xcom_spill")
    states = task_states(dr)
    assert states["produce[-1]"] == "failed", states
    assert states["consume[-1]"] == "upstream_failed", states
    assert xcom_rows("xcom_spill", dr.run_id) == {}
