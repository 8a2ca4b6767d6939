"""Markers are readable where people look: Airflow's own ``stringify`` (what the api-server
renders for the UI's XCom tab and ``?deserialize=true``) shows a bounded preview, never base64;
the value read back is still exactly the value written."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections import namedtuple
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from airflow.serialization.stringify import stringify
from exact_values import assert_same, values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_knative import codec, preview, xcom
from airflow_provider_knative.codec import ObjectRef
from airflow_provider_knative.walk import leaves
from airflow_provider_knative.xcom import MARKER, KnativeXComBackend, pass_references

Row = namedtuple("Row", "value")
CTX = {"key": "return_value", "dag_id": "d", "run_id": "r", "task_id": "t"}
DISPLAY_KEYS = ("__classname__", "__version__", "__data__", "preview")


def stored_for(value: Any) -> Any:
    """What lands in the xcom table, through a JSON round trip as in the database."""
    return json.loads(json.dumps(KnativeXComBackend.serialize_value(value, **CTX), allow_nan=False))


def read(stored: Any) -> Any:
    return KnativeXComBackend.deserialize_value(Row(stored))


def shown(stored: Any) -> Any:
    """What the api-server hands the UI: Airflow's stringify of the stored JSON."""
    return stringify(stored)


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "city": np.array(["Paris", "Berlin", "Lagos", "Lima"])[np.arange(rows) % 4],
            "temp": np.round(rng.normal(15, 5, rows), 2),
            "count": np.arange(rows, dtype=np.int64),
            "when": pd.date_range("2024-01-01", periods=rows, freq="min"),
        }
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ((1, 2, "three"), "(1,2,three)"),  # Airflow's own shape: shown as stock Airflow shows it
        (((1, 2), "x", None), "((1,2),x,None)"),
        ({3, 1, 2}, "(1,2,3)"),
        (frozenset({"a"}), "(a)"),
        (
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
            "datetime.datetime@version=1(2024-01-01T00:00:00+00:00)",
        ),
        (dt.date(2024, 5, 17), "datetime.date@version=1(2024-05-17)"),
        (decimal.Decimal("1.10"), "decimal.Decimal@version=1(1.10)"),
        ({1: "int key"}, "builtins.dict@version=1({1: 'int key'})"),
        (b"\x00bytes", "builtins.bytes@version=1(b'\\x00bytes')"),
        (np.arange(5), "numpy.ndarray@version=1([0, 1, 2, 3, 4])"),
        (np.float64(1.5), "numpy.float64@version=1(np.float64(1.5))"),
        (
            [np.int32(7), pd.Timestamp("2024-01-01")],
            "builtins.list@version=1([np.int32(7), 2024-01-01T00:00:00])",
        ),
        # nested datetimes, dates, times and timedeltas: ISO 8601 as at the top level, not reprs
        (
            {"at": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=ZoneInfo("Asia/Kolkata"))},
            "builtins.dict@version=1({'at': 2024-05-06T07:08:09+05:30})",
        ),
        (
            [dt.date(2024, 5, 6), dt.time(7, 8, 9), dt.timedelta(days=1, seconds=5, microseconds=3)],
            "builtins.list@version=1([2024-05-06, 07:08:09, P1DT5.000003S])",
        ),
        (
            (dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc), dt.timedelta(hours=-1)),
            "builtins.tuple@version=1((2024-05-06T07:08:09+00:00, -PT1H))",
        ),
        (dt.timedelta(minutes=90), "datetime.timedelta@version=1(PT1H30M)"),
        ((np.arange(3), 1), "builtins.tuple@version=1(([0, 1, 2], 1))"),
    ],
    ids=repr,
)
def test_packed_values_show_as_text_and_read_back_exactly(file_store: str, value: Any, expected: str) -> None:
    stored = stored_for(value)
    assert "packed" in stored
    assert shown(stored) == expected
    back = read(stored)
    assert type(back) is type(value)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    elif isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value):
        np.testing.assert_array_equal(back[0], value[0])
    else:
        assert back == value


@settings(max_examples=500)
@given(value=st.timedeltas())
def test_a_timedelta_is_written_as_airflows_api_writes_it(value: dt.timedelta) -> None:
    """Airflow's REST API models are pydantic's: their ISO 8601 duration is the oracle."""
    from pydantic import TypeAdapter

    assert preview.temporal(value) == json.loads(TypeAdapter(dt.timedelta).dump_json(value))


def test_a_nested_temporal_value_shows_as_it_does_alone() -> None:
    zone = ZoneInfo("Asia/Kolkata")
    for value in (dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=zone), dt.date(2024, 5, 6), dt.time(7, 8, 9)):
        alone = preview.of(value)
        assert alone == value.isoformat()
        assert preview.of([value]) == f"[{alone}]" and preview.of({"k": value}) == f"{{'k': {alone}}}"
    assert "zoneinfo" not in preview.of({"at": dt.datetime(2024, 5, 6, tzinfo=zone)})


def test_small_frame_shows_its_rows(file_store: str) -> None:
    value = frame(3)
    stored = stored_for(value)
    text = shown(stored)
    assert text.startswith("pandas.DataFrame@version=1(")
    for word in ("city", "temp", "Paris", "Berlin", "2024-01-01 00:02:00"):
        assert word in text
    pd.testing.assert_frame_equal(read(stored), value)


def test_spilled_values_show_summary_size_url_and_head(file_store: str) -> None:
    value = frame(30_000)  # about 1 MB encoded: spilled
    stored = stored_for(value)
    assert stored["ref"].startswith(file_store)
    text = shown(stored)
    assert text.startswith("spilled@version=1(DataFrame 30000 rows x 4 cols, ")
    assert f" MiB in {stored['ref']}\n" in text
    for word in ("city", "temp", "count", "Paris", "Berlin", "… 29995 more rows"):
        assert word in text, text
    assert stored["preview"] in text
    pd.testing.assert_frame_equal(read(stored), value)

    array = np.arange(2_000_000, dtype=np.float64)
    stored = stored_for(array)
    assert shown(stored).startswith("spilled@version=1(ndarray float64 (2000000,), 15.3 MiB in file://")
    assert "[0.000000e+00, 1.000000e+00, 2.000000e+00, ..., 1.999997e+06" in stored["preview"]
    np.testing.assert_array_equal(read(stored), array)


def test_a_list_stored_item_by_item_previews_its_items(file_store: str) -> None:
    value = [np.full((300, 300), i, dtype=np.float64) for i in range(3)]  # items spilled one by one
    stored = stored_for(value)
    assert "packed" in stored
    text = shown(stored)
    assert text.startswith("builtins.list@version=1([[[0., 0., 0., ..., 0., 0., 0.]")
    with pass_references():
        refs = read(stored)
    assert all(isinstance(r, ObjectRef) and "[[1., 1., 1.," in r.preview for r in refs[1:2])
    for got, want in zip(read(stored), value, strict=True):
        np.testing.assert_array_equal(got, want)


def test_previews_are_bounded(file_store: str) -> None:
    values = [
        tuple(range(5000)),
        {"k" * 500: ["v" * 500] * 300},  # 150 KB of JSON: spilled
        frame(200).assign(wide="x" * 300),
        np.arange(3_000_000).reshape(1000, 3000),
        ["word"] * 50_000,
        "s" * 2_000_000,
    ]
    for value in values:
        stored = stored_for(value)
        display = {k: stored[k] for k in DISPLAY_KEYS if k in stored}
        assert len(json.dumps(display)) <= 2 * 1024 + 2 * len(stored.get("ref", "")), (type(value), display)
        assert len(stored["preview"]) <= preview.MAX_CHARS
        assert isinstance(shown(stored), str)


def test_previews_hold_no_nul_or_lone_surrogate(file_store: str) -> None:
    """PostgreSQL's JSONB refuses NUL in a string and UTF-8 cannot carry a lone surrogate: a
    cell's text, shown as it is, must not bring either into the stored JSON."""
    value = pd.DataFrame({"s": ["a\x00b", "ok"]})
    stored = KnativeXComBackend.serialize_value(value, **CTX)
    text = json.dumps(stored, ensure_ascii=False)
    assert "\\u0000" not in text and "\x00" not in text
    assert "a\\x00b" in stored["preview"]
    text.encode("utf-8")  # no lone surrogate
    assert preview.cut("x\ud800y", 100) == "x\\ud800y"
    for odd in (("a\x00",), ("x\ud800",)):  # not shown in Airflow's tuple shape, but escaped
        stored = KnativeXComBackend.serialize_value(odd, **CTX)
        json.dumps(stored, ensure_ascii=False).encode("utf-8")  # no lone surrogate
        assert "\\u0000" not in json.dumps(stored) and read(stored) == odd
    pd.testing.assert_frame_equal(read(json.loads(text)), value)


def test_a_preview_that_fails_never_fails_the_push(file_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(value: Any) -> str:
        raise RuntimeError("repr exploded")

    monkeypatch.setattr(preview, "_text", broken)
    stored = stored_for((1, 2))
    assert read(stored) == (1, 2)
    assert stored["preview"] == "(no preview: RuntimeError)"


def test_previews_can_be_turned_off(file_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__KNATIVE__XCOM_PREVIEW_MAX_CHARS", "0")
    stored = stored_for(("secret", 1))
    assert "preview" not in stored and shown(stored) == "builtins.tuple@version=1(tuple of 2 items)"
    spilled = stored_for(np.arange(1_000_000, dtype=np.float64))
    assert "preview" not in spilled
    assert shown(spilled) == f"spilled@version=1(ndarray float64 (1000000,), 7.6 MiB in {spilled['ref']})"
    assert read(stored) == ("secret", 1)


def test_a_reference_from_the_runtime_keeps_its_preview(file_store: str) -> None:
    ref = ObjectRef("s3://b/x/y.knc", 52_428_800, "ab" * 32, "ndarray float64 (6553600,)", "[0., 1., ...]")
    stored = stored_for(ref)
    assert stored["preview"] == "[0., 1., ...]"
    assert shown(stored) == (
        "spilled@version=1(ndarray float64 (6553600,), 50.0 MiB in s3://b/x/y.knc\n[0., 1., ...])"
    )
    with pass_references():
        assert read(stored) == ref
    # on the wire, a reference without a preview is what it always was
    assert ObjectRef("u", 1, "h", "s").to_dict() == {"url": "u", "size": 1, "sha256": "h", "summary": "s"}
    assert codec.loads(codec.dumps(ref)) == ref


def test_markers_written_before_previews_still_load(file_store: str) -> None:
    import base64

    old_packed = {MARKER: 1, "packed": base64.b64encode(codec.dumps((1, "a"))).decode()}
    assert read(old_packed) == (1, "a")
    new = stored_for(np.arange(100_000, dtype=np.float64))
    old_ref = {k: new[k] for k in (MARKER, "ref", "size", "sha256", "summary")}
    np.testing.assert_array_equal(read(old_ref), np.arange(100_000, dtype=np.float64))
    with pass_references():
        assert read(old_ref).preview == ""


def test_display_keys_never_decide_the_value(file_store: str) -> None:
    stored = stored_for((1, 2))
    stored["__data__"] = ["tampered"]
    stored["preview"] = "tampered"
    assert read(stored) == (1, 2)
    assert xcom.is_marker(stored)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_every_carried_value_gets_a_real_preview_and_reads_back_exactly(file_store: str, value: Any) -> None:
    """For anything the codec carries: a preview that is not the fallback, text in the UI, and
    the very same value back (the display keys never change what is read)."""
    if any(isinstance(leaf, ObjectRef) for leaf in leaves(value)):
        return  # made-up references point nowhere: nothing to read back
    stored = stored_for(value)
    if not xcom.is_marker(stored):
        return  # plain JSON: the UI shows it as it is
    assert "(no preview:" not in stored["preview"], (value, stored["preview"])
    assert isinstance(shown(stored), str)
    assert_same(read(stored), value)
