"""Valid values whose frames seed the fuzzer: every extension type, small enough to be fast."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pendulum
import pyarrow as pa

from airflow_provider_knative.codec import ObjectRef


def corpus() -> list[Any]:
    rows = 20
    return [
        {"a": [1, 2.5, "x", None, True, b"raw"], "t": (1, (2,)), "s": {1, 2}, "fs": frozenset({3})},
        np.arange(600, dtype=np.float64).reshape(20, 30),  # out of band
        [np.arange(10, dtype=np.int8), np.asfortranarray(np.ones((2, 3), dtype=np.complex64))],
        pd.DataFrame(
            {
                "i": range(rows),
                "s": [f"v{i}" for i in range(rows)],
                "n": [None] * rows,
                "d": [{"a": i} for i in range(rows)],
                "l": [[i] for i in range(rows)],
                "c": pd.Categorical(["x", "y"] * (rows // 2)),
            }
        ),
        pd.Series([1.5, None], name=("a", 1)),
        pa.table({"x": [1, 2, 3], "y": pa.array(["a", None, "c"]).dictionary_encode()}),
        [
            dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
            dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")),
            decimal.Decimal("-1.10E+3"),
            uuid.UUID(int=12345),
            dt.date(2024, 2, 29),
            dt.time(1, 2, 3, 4, fold=1),
            dt.timedelta(days=-3, microseconds=7),
            pendulum.datetime(2024, 1, 1, tz="America/New_York"),
            pendulum.datetime(2024, 1, 1, tz=pendulum.FixedTimezone(3600)),
            pendulum.date(2024, 1, 1),
            pendulum.time(1, 2, 3),
        ],
        ObjectRef("s3://bucket/key.knc", 123, "ab" * 32, "ndarray float64 (10,)"),
        {
            2**70: bytearray(b"xy"),
            "c": 1 + 2j,
            "od": collections.OrderedDict(a=1),
            "ctr": collections.Counter("ab"),
            "dd": collections.defaultdict(list, a=[1]),
        },
        [
            pd.Timestamp("2024-01-01 00:00:00.000000001", tz="Asia/Kolkata"),
            pd.Timedelta("1 day 1 ns"),
            pd.NaT,
            pd.Period("2024-01", freq="M"),
            pd.Interval(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01"), closed="left"),
            np.float64(1.5),
            np.str_("x\x00"),
            np.datetime64("2024-01-01T00:00:00.5", "ms"),
        ],
        [[[[[(1, [2, (3,)])]]]]],
    ]
