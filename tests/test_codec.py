"""The binary codec: exact round trips (property-based), clear refusals, hostile input."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from exact_values import numeric_dtypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from airflow_provider_knative import codec
from airflow_provider_knative.codec import CodecError, ObjectRef

# --------------------------------------------------------------------------------------
# Exact equality: same types all the way down (1 == 1.0 == True is not good enough)
# --------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            type(b) is np.ndarray
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()  # bit for bit: NaN, NaT and -0.0 included
        )
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        return True
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
        return True
    if isinstance(a, np.generic):
        return type(a) is type(b) and (a == b or (a != a and b != b))
    if type(a) is not type(b) and not (isinstance(a, (bytes, bytearray, memoryview)) and type(b) is bytes):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime):
        return a == b and a.utcoffset() == b.utcoffset() and a.tzname() == b.tzname()
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a) == b
    return bool(a == b)


def roundtrip(value: Any) -> Any:
    data = codec.dumps(value)
    assert b"".join(bytes(c) for c in codec.encode_chunks(value)) == data
    return codec.loads(data)


# --------------------------------------------------------------------------------------
# Property: anything encodable round-trips exactly
# --------------------------------------------------------------------------------------

arrays = numeric_dtypes.flatmap(
    lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
)
fortran = arrays.filter(lambda a: a.ndim >= 2).map(np.asfortranarray)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.datetimes(timezones=st.none() | st.timezones(), allow_imaginary=False),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.builds(
        ObjectRef,
        url=st.text(min_size=1, max_size=30),
        size=st.integers(0, 2**40),
        sha256=st.text(max_size=64),
        summary=st.text(max_size=20),
    ),
)
hashables = st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.text(max_size=8))
values = st.recursive(
    st.one_of(scalars, arrays, fortran),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), inner, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.sets(hashables, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_encodable_value_round_trips(value: Any) -> None:
    assert same(value, roundtrip(value))


frames = st.integers(0, 40).flatmap(
    lambda n: st.fixed_dictionaries(
        {
            "i": hnp.arrays(np.int64, n),
            "f": hnp.arrays(np.float64, n),
            "s": st.lists(st.text(max_size=5) | st.none(), min_size=n, max_size=n),
            "b": hnp.arrays(np.bool_, n),
        }
    )
)


@settings(max_examples=60, deadline=None)
@given(frames)
def test_dataframes_round_trip(columns: dict) -> None:
    frame = pd.DataFrame(columns)
    frame["s"] = frame["s"].astype("str")
    assert same(frame, roundtrip(frame))
    assert same(frame["f"], roundtrip(frame["f"]))


# --------------------------------------------------------------------------------------
# Hostile bytes: only CodecError, never a crash or a big allocation
# --------------------------------------------------------------------------------------


def only_codec_error(data: bytes) -> None:
    try:
        codec.loads(data)
    except CodecError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    only_codec_error(data)
    only_codec_error(codec.MAGIC + data)
    only_codec_error(data + codec.TRAILER_MAGIC)


SAMPLES = [
    {"a": [1, 2.5, "x", None, True], "t": (1, (2,)), "s": {1, 2}},
    np.arange(2000, dtype=np.float64).reshape(40, 50),
    pd.DataFrame({"i": range(50), "s": [f"v{i}" for i in range(50)]}),
    pa.table({"x": [1, 2, 3]}),
    [dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")), decimal.Decimal("1.10"), uuid.uuid4()],
    ObjectRef("s3://b/k", 10, "ab", "x"),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_frames_only_raise_codec_error(value: Any, edits: list) -> None:
    data = bytearray(codec.dumps(value))
    for pos, byte, op in edits:
        pos %= len(data) + 1
        if op == "set" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data[pos:pos] = bytes([byte])
        elif op == "delete" and pos < len(data):
            del data[pos]
    only_codec_error(bytes(data))


def test_length_bombs_are_refused_without_allocating() -> None:
    import struct

    body = b"\x91\x00"  # msgpack [0]
    head = struct.pack("<4sQ", codec.MAGIC, 2**62)
    with pytest.raises(CodecError, match="lengths do not fit"):
        codec.loads(head + body + struct.pack("<I4s", 0, codec.TRAILER_MAGIC))
    frame = bytearray(codec.dumps(np.zeros(1000)))
    # claim the array buffer is 2**60 bytes long
    struct.pack_into("<Q", frame, len(frame) - 8 - 8, 2**60)
    with pytest.raises(CodecError, match="runs past the end"):
        codec.loads(bytes(frame))
    # a msgpack array header claiming 2**32-1 elements in a 20-byte body
    bomb = b"\xdd\xff\xff\xff\xff" + b"\x00" * 15
    frame = struct.pack("<4sQ", codec.MAGIC, len(bomb)) + bomb
    frame += bytes(-len(frame) % 64) + struct.pack("<I4s", 0, codec.TRAILER_MAGIC)
    with pytest.raises(CodecError):
        codec.loads(frame)


# --------------------------------------------------------------------------------------
# Specific behaviour
# --------------------------------------------------------------------------------------


def test_arrays_decode_zero_copy_from_the_input() -> None:
    array = np.arange(100_000, dtype=np.float64)
    data = bytearray(codec.dumps(array))
    back = codec.loads(data)
    assert same(array, back) and back.flags.writeable
    back[0] = 42.0  # a view into ``data``: no copy was made
    assert codec.loads(data)[0] == 42.0


def test_encode_chunks_does_not_copy_large_buffers() -> None:
    array = np.ones(1_000_000)
    chunks = list(codec.encode_chunks(array))
    views = [c for c in chunks if isinstance(c, memoryview) and c.nbytes == array.nbytes]
    assert views and np.shares_memory(np.frombuffer(views[0], dtype=np.float64), array)


def test_dataframe_columns_are_written_without_a_copy() -> None:
    frame = pd.DataFrame({"x": np.arange(1_000_000, dtype=np.float64)})
    chunks = list(codec.encode_chunks(frame))
    big = [c for c in chunks if isinstance(c, memoryview) and c.nbytes >= 8 * codec.DATAFRAME_BATCH_ROWS]
    assert big and all(np.shares_memory(np.frombuffer(c, np.float64), frame["x"].to_numpy()) for c in big)


def test_fortran_and_non_contiguous_arrays_keep_their_values() -> None:
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    for array in (np.asfortranarray(base), base[::2, ::3], base.T):
        back = roundtrip(array)
        assert same(np.ascontiguousarray(array), np.ascontiguousarray(back))
    assert roundtrip(np.asfortranarray(base)).flags.f_contiguous


def test_dataframe_index_names_and_dtypes_survive() -> None:
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2024-03-31", periods=4, freq="h", tz="Europe/Paris"),
            "n": pd.array([1, None, 3, 4], dtype="Int64"),
            "c": pd.Categorical(["a", "b", "a", "c"]),
            "s": pd.array(["x", None, "z", "w"], dtype="str"),
        },
        index=pd.Index([10, 20, 30, 40], name="key"),
    )
    assert same(frame, roundtrip(frame))
    series = pd.Series([1.5, 2.5], name="price", index=pd.Index(["a", "b"], name="sym"))
    assert same(series, roundtrip(series))
    table = pa.table({"a": [1, None], "b": ["x", "y"]})
    assert roundtrip(table).equals(table)


def test_datetimes_keep_zone_and_dst_fold() -> None:
    paris = ZoneInfo("Europe/Paris")
    first = dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris)
    second = first.replace(fold=1)
    for value in (first, second):
        back = roundtrip(value)
        assert back.tzinfo == paris and back.utcoffset() == value.utcoffset()
    assert roundtrip(second).fold == 1
    fixed = dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))
    assert same(fixed, roundtrip(fixed))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"rows": [1, 2, object()]}, r"value\['rows'\]\[2\]: cannot encode <class 'object'>"),
        ([{"k": lambda: 1}], r"value\[0\]\['k'\]: cannot encode <class 'function'>"),
        (np.array([{"a": 1}], dtype=object), "dtype object"),
        (np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]), "structured|dtype"),
        (dt.time(1, 2, tzinfo=dt.timezone.utc), "time of day with a time zone"),
        ([memoryview(b"x")], r"value\[0\]: cannot encode <class 'memoryview'>"),
    ],
)
def test_unencodable_values_raise_type_error_naming_the_path(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        codec.dumps(value)


def test_summaries() -> None:
    assert codec.summarize(np.zeros((1000, 1000))) == "ndarray float64 (1000, 1000)"
    assert codec.summarize(pd.DataFrame({"a": range(4), "b": range(4)})) == "DataFrame 4 rows x 2 cols"
    assert codec.summarize(pa.table({"a": [1]})) == "Arrow Table 1 rows x 1 cols"
    assert codec.summarize([1, 2]) == "list of 2 items"
    assert codec.summarize(b"abc") == "bytes 3 bytes"
    assert codec.summarize(3) == "int"


def test_object_columns_are_converted_slice_by_slice() -> None:
    rows = codec.DATAFRAME_BATCH_ROWS * 2 + 5
    frame = pd.DataFrame({"o": pd.Series([f"s{i}" for i in range(rows)], dtype=object), "i": np.arange(rows)})
    chunks = list(codec.encode_chunks(frame))
    back = codec.loads(b"".join(bytes(c) for c in chunks))
    # Python strings in an object column come back as pandas' string dtype (pandas 3 default)
    assert back["o"].tolist() == frame["o"].tolist()
    assert same(back["i"], frame["i"])
    fast = list(codec.encode_chunks(frame.astype({"o": "str"})))
    assert len(chunks) > len(fast)  # three record batches instead of one
