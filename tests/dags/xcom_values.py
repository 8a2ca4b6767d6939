"""Every kind of value the XCom backend must carry, produced by one task and checked by the next.

Each consumer rebuilds the expected value from the same seed and compares, so a failed
check fails its task and the run; tests/test_xcom.py then inspects the rows in the DB.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from airflow.sdk import dag, task

ARRAY_ELEMENTS = 50 * 1024 * 1024 // 8  # a 50 MB float64 ndarray
FRAME_ROWS = 1_000_000


def small_dict() -> dict:
    rows = [{"id": i, "name": f"row-{i}", "score": i / 7, "ok": i % 3 == 0, "tags": None} for i in range(14)]
    return {"source": "xcom_values", "rows": rows}


def big_array() -> np.ndarray:
    return np.random.default_rng(50).random(ARRAY_ELEMENTS)


def mixed_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    ids = np.arange(rows, dtype="int64")
    return pd.DataFrame(
        {
            "id": ids,
            "value": rng.random(rows),
            "small": rng.integers(-100, 100, rows).astype("int16"),
            "flag": rng.random(rows) > 0.5,
            "name": pd.array(np.array([f"n{i}" for i in range(997)])[ids % 997], dtype="str"),
            "when": pd.date_range("2024-03-30", periods=rows, freq="min", tz="Europe/Paris"),
            "maybe": pd.arrays.IntegerArray(ids.copy(), ids % 11 == 0),  # nullable, every 11th missing
            "kind": pd.Categorical.from_codes(rng.integers(0, 3, rows), ["a", "b", "c"]),
        },
        index=pd.RangeIndex(rows, name="row"),
    )


def moments() -> dict:
    paris = ZoneInfo("Europe/Paris")
    return {
        "utc": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
        "paris_summer": dt.datetime(2024, 7, 1, 9, 0, 0, 123456, tzinfo=paris),
        "paris_dst_repeat": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris),
        "india": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        "naive": dt.datetime(2000, 1, 1, 0, 0),
        "day": dt.date(2024, 2, 29),
        "span": dt.timedelta(days=3, microseconds=7),
    }


def chunk(i: int) -> np.ndarray:
    return np.full((256, 512), float(i))  # 1 MB each: every one spills


@dag(schedule=None, catchup=False, tags=["test"])
def xcom_values():
    @task
    def make_small() -> dict:
        return small_dict()

    @task
    def check_small(value: dict) -> None:
        assert value == small_dict(), value

    @task
    def make_array() -> np.ndarray:
        return big_array()

    @task
    def check_array(value: np.ndarray) -> None:
        assert value.dtype == np.float64 and value.shape == (ARRAY_ELEMENTS,)
        np.testing.assert_array_equal(value, big_array())

    @task
    def make_frame() -> pd.DataFrame:
        return mixed_frame(FRAME_ROWS)

    @task
    def check_frame(value: pd.DataFrame) -> None:
        pd.testing.assert_frame_equal(value, mixed_frame(FRAME_ROWS), check_exact=True)

    @task
    def make_tuple() -> tuple:
        return (1, "two", 3.0, (4, None), [5])

    @task
    def check_tuple(value: tuple) -> None:
        assert value == (1, "two", 3.0, (4, None), [5]) and type(value) is tuple and type(value[3]) is tuple

    @task
    def make_moments() -> dict:
        return moments()

    @task
    def check_moments(value: dict) -> None:
        expected = moments()
        assert value == expected, value
        for name, got in value.items():
            want = expected[name]
            assert type(got) is type(want), name
            if isinstance(want, dt.datetime):
                assert got.utcoffset() == want.utcoffset(), name
                assert str(got.tzinfo) == str(want.tzinfo), (name, got.tzinfo)

    @task(multiple_outputs=True)
    def make_both() -> dict:
        return {
            "frame": mixed_frame(50_000),
            "array": np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000),
        }

    @task
    def check_both(frame: pd.DataFrame, array: np.ndarray, whole: dict) -> None:
        pd.testing.assert_frame_equal(frame, mixed_frame(50_000))
        np.testing.assert_array_equal(array, np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000))
        assert sorted(whole) == ["array", "frame"]
        np.testing.assert_array_equal(whole["array"], array)

    @task
    def make_chunks() -> list:
        return [chunk(i) for i in range(3)]

    @task
    def double(part: np.ndarray) -> np.ndarray:
        assert part.shape == (256, 512)
        return part * 2

    @task
    def total(parts: list) -> float:
        got = sorted(float(p[0, 0]) for p in parts)
        assert got == [0.0, 2.0, 4.0], got
        return float(sum(p.sum() for p in parts))

    check_small(make_small())
    check_array(make_array())
    check_frame(make_frame())
    check_tuple(make_tuple())
    check_moments(make_moments())
    both = make_both()
    check_both(both["frame"], both["array"], both)
    total(double.expand(part=make_chunks()))


the_dag = xcom_values()
