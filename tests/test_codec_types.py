"""Exact round trips: whatever the encoder accepts comes back equal and of the same type.

Same class, dtype, unit, time zone and precision, at every level (``exact_values.assert_same``);
whatever Airflow's own serde carries exactly, the codec carries exactly; whatever is refused
is refused with a TypeError naming where in the value it sits. The README's type table is
checked against the codec's own (``codec.CARRIED`` / ``codec.REFUSED``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import json
import re
import typing
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dateutil.tz
import msgpack
import numpy as np
import pandas as pd
import pendulum
import pyarrow as pa
import pytest
from exact_values import assert_same, example_uuid, frames, nest, values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_knative import codec
from airflow_provider_knative.codec import ObjectRef, layout

REPO = Path(__file__).resolve().parent.parent


def roundtrip(value: Any) -> Any:
    data = codec.dumps(value)
    assert b"".join(bytes(c) for c in codec.encode_chunks(value)) == data
    return codec.loads(data)


def check(value: Any) -> None:
    assert_same(value, roundtrip(value))


# --------------------------------------------------------------------------------------
# The cases from issue 14, one by one
# --------------------------------------------------------------------------------------


def test_pandas_timestamp_keeps_its_type_unit_zone_and_nanoseconds() -> None:
    for value in (
        pd.Timestamp("2024-01-01 12:34:56.123456789"),
        pd.Timestamp("2024-01-01 12:34:56.123456789", tz="Europe/Paris"),
        pd.Timestamp("2024-03-31 02:30", tz="UTC").tz_convert("America/New_York"),
        pd.Timestamp("3000-01-01").as_unit("s"),  # beyond the ns range: only its own unit holds it
        pd.Timestamp("2024-01-01 00:00:00.123").as_unit("ms"),
    ):
        back = roundtrip(value)
        assert type(back) is pd.Timestamp and back.unit == value.unit and str(back) == str(value)
        check(value)


def test_numpy_scalars_that_subclass_builtins_keep_their_type() -> None:
    # np.float64 subclasses float and np.str_ str: an isinstance() dispatch sent them as builtins
    value = {
        "f": np.float64(0.1),
        "i": np.int64(3),
        "s": np.str_("x"),
        "b": np.bytes_(b"y"),
        "t": np.bool_(True),
    }
    back = roundtrip(value)
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in value.items()}
    check(value)


def test_nat_encodes_and_decodes() -> None:
    assert roundtrip(pd.NaT) is pd.NaT
    check({"when": pd.NaT, "times": [pd.Timestamp("2024-01-01"), pd.NaT]})


def test_pendulum_datetime_keeps_its_class_and_time_zone() -> None:
    for value in (
        pendulum.datetime(2024, 7, 1, 9, 30, tz="Europe/Paris"),
        pendulum.datetime(2024, 1, 1, tz="UTC"),
        pendulum.datetime(2024, 1, 1, tz=pendulum.FixedTimezone(-5 * 3600)),
        pendulum.DateTime(2024, 10, 27, 2, 30, tzinfo=pendulum.timezone("Europe/Paris"), fold=1),
    ):
        back = roundtrip(value)
        assert type(back) is pendulum.DateTime and type(back.tzinfo) is type(value.tzinfo)
        check(value)
    check(pendulum.date(2024, 2, 29))
    check(pendulum.time(23, 59, 59, 999999))


def test_pandas_timedelta_keeps_nanoseconds_and_unit() -> None:
    value = pd.Timedelta("1 day 1 ns")
    back = roundtrip(value)
    assert type(back) is pd.Timedelta and back == value and back.value == 86_400_000_000_001
    check(pd.Timedelta(5, unit="s").as_unit("s"))


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**200, -(3**99), [2**70, -(2**80), 5]])
def test_integers_beyond_64_bits(value: Any) -> None:
    check(value)


def test_nan_inf_and_negative_zero_survive_bit_for_bit() -> None:
    signalling = np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf0\x7f", np.float64)[0].item()
    check([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, signalling, 5e-324])
    check({"nan": float("nan"), "c": complex(float("nan"), -0.0)})
    check([np.float32("nan"), np.float16(-0.0), np.float64("-inf")])


def test_dicts_with_non_string_keys_keep_keys_and_order() -> None:
    check({3: "int", 1.5: "float", None: "none", (1, "a"): "tuple", frozenset({2}): "fs", b"k": "bytes"})
    check({True: 1, 2: 2})
    check({dt.date(2024, 1, 1): 1, pd.Timestamp("2024-01-01"): 2, np.int8(3): 3})


def test_period_and_interval() -> None:
    for value in (
        pd.Period("2024-01", freq="M"),
        pd.Period("2024Q1", freq="Q-MAR"),
        pd.Period("2024-01-01 10:00", freq="2h"),
        pd.Interval(0, 5, closed="both"),
        pd.Interval(0.5, 1.5),
        pd.Interval(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02"), closed="left"),
    ):
        check(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 1, 1, 12, 0, 0, 123456),
        dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 10, 27, 2, 30, fold=1),  # naive datetimes have a fold too
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30, microseconds=7))),
        dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")),
        dt.time(1, 2, 3, 4, fold=1),
    ],
    ids=repr,
)
def test_datetimes_keep_wall_time_fold_and_exact_zone(value: Any) -> None:
    check(value)


ALL_SCALAR_DTYPES = [
    *"bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 longdouble".split(),
    *"complex64 complex128 clongdouble S3 U3".split(),
    *[f"datetime64[{u}]" for u in ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")],
    *[f"timedelta64[{u}]" for u in ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")],
    "datetime64[25s]",
]


@pytest.mark.parametrize("dtype", ALL_SCALAR_DTYPES)
def test_numpy_scalars_of_every_allowed_dtype(dtype: str) -> None:
    one = np.ones(1, dtype=dtype) if np.dtype(dtype).kind not in "SU" else np.array(["ab"], dtype=dtype)
    check(one[0])
    check(np.zeros(3, dtype=dtype)[1])
    check(one)
    if np.dtype(dtype).kind in "mM":
        check(np.array(["NaT"], dtype=dtype)[0])


def test_numpy_strings_keep_trailing_nuls() -> None:
    check(np.str_("a\x00"))
    check(np.bytes_(b"b\x00\x00"))


def test_containers_of_the_standard_library_keep_their_class() -> None:
    check(collections.OrderedDict([("b", 1), ("a", [2])]))
    check(collections.Counter("mississippi"))
    for factory in (None, list, int, set, dict):
        value: collections.defaultdict = collections.defaultdict(factory)
        value["x"] = 1
        check(value)
    check(bytearray(b"\x00ab"))
    check(
        [bytearray(b"x"), (bytearray(),), {"k": bytearray(b"y")}, collections.OrderedDict(v=bytearray(b"z"))]
    )
    check(frozenset({(1, 2), frozenset({3})}))
    check(complex(1.5, -2))


# --------------------------------------------------------------------------------------
# The table: what is carried, with an example for every row
# --------------------------------------------------------------------------------------

EXAMPLES: dict[str, list[Any]] = {
    "None, bool, str": [None, True, False, "", "héllo ✓", "lone \ud800 surrogate"],
    "float": [1.5, float("nan"), float("-inf"), -0.0],
    "int": [0, -(2**63), 2**64 - 1, 2**64, -(2**100)],
    "complex": [1j, complex(-0.0, float("inf"))],
    "bytes": [b"", b"\x00\xff"],
    "bytearray": [bytearray(b"ab")],
    "list": [[], [1, [2]]],
    "dict": [{}, {"b": 1, "a": 2}, {1: None}],
    "tuple, set, frozenset": [(), (1, (2,)), {1, "a"}, frozenset({2})],
    "collections.OrderedDict, collections.Counter": [collections.OrderedDict(b=1), collections.Counter(a=2)],
    "collections.defaultdict": [collections.defaultdict(list, a=[1])],
    "datetime.datetime": [dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Asia/Kolkata"))],
    "datetime.date, datetime.timedelta": [dt.date(1, 1, 1), dt.timedelta(days=-1, microseconds=1)],
    "datetime.time": [dt.time(23, 59, 59, 999999)],
    "time zones": [
        dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Paris")),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
        pendulum.datetime(2024, 1, 1, tz="America/New_York"),
        pendulum.datetime(2024, 1, 1, tz=pendulum.FixedTimezone(7200, name="custom")),
    ],
    "decimal.Decimal": [
        decimal.Decimal("1.10"),
        decimal.Decimal("-0"),
        decimal.Decimal("sNaN12"),
        decimal.Decimal("1E+3"),
    ],
    "uuid.UUID": [example_uuid()],
    "pendulum.DateTime, pendulum.Date, pendulum.Time": [
        pendulum.datetime(2024, 1, 1, 1, 2, 3, 4, tz="Europe/Paris"),
        pendulum.date(2024, 1, 1),
        pendulum.time(1, 2, 3),
    ],
    "numpy.ndarray": [
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.asfortranarray(np.ones((3, 4))),
        np.array(["a"]),
    ],
    "numpy scalars": [np.float64(1.5), np.uint64(2**64 - 1), np.datetime64("2024-01-01", "ns"), np.str_("x")],
    "pandas.DataFrame, pandas.Series": [
        pd.DataFrame({"a": [1, 2], "s": pd.array(["x", None], dtype="str")}),
        pd.Series([1.5, 2.5], name="price"),
    ],
    "pandas.Timestamp": [pd.Timestamp("2024-01-01 00:00:00.000000001", tz="UTC")],
    "pandas.Timedelta": [pd.Timedelta(1, unit="ns")],
    "pandas.NaT": [pd.NaT],
    "pandas.Period": [pd.Period("2024-05-06", freq="D")],
    "pandas.Interval": [pd.Interval(1, 2)],
    "pyarrow.Table": [pa.table({"x": [1, None, 3], "y": ["a", "b", None]})],
    "ObjectRef": [ObjectRef("s3://bucket/key", 10, "ab" * 32, "ndarray float64 (1,)")],
}


def test_every_carried_kind_has_examples_and_only_those() -> None:
    assert list(EXAMPLES) == [rule.kind for rule in codec.CARRIED]


@pytest.mark.parametrize(
    "value", [pytest.param(v, id=f"{kind}-{i}") for kind, vs in EXAMPLES.items() for i, v in enumerate(vs)]
)
def test_every_example_round_trips_exactly(value: Any) -> None:
    check(value)
    check([value, {"nested": (value,)}])


def test_readme_section_lists_exactly_the_codec_table() -> None:
    # The README embeds the generated table verbatim, between markers, and names every
    # carried and refused kind once, in the codec's order.
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("<!-- BEGIN generated") : readme.index("<!-- END generated -->")]
    assert codec.type_table_markdown() in section
    rows = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.startswith("| ")]
    rows = [r for r in rows if r not in ("carried", "refused (TypeError naming where)", "---|---|")]
    assert rows == [r.kind for r in codec.CARRIED] + [r.kind for r in codec.REFUSED]
    assert f"at most {codec.MAX_DEPTH} levels" in readme and f"{codec.ARROW_EXPANSION} bytes per" in readme


# --------------------------------------------------------------------------------------
# Property: any value built from every carried type, through the codec and the XCom backend
# --------------------------------------------------------------------------------------


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(values)
def test_any_value_of_carried_types_round_trips_exactly(value: Any) -> None:
    check(value)


def _holds_ref(value: Any) -> bool:
    if isinstance(value, ObjectRef):
        return True
    if isinstance(value, dict):
        return any(_holds_ref(k) or _holds_ref(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_ref(v) for v in value)
    return False


# An ObjectRef is a reference, not a user value: the backend hands a task what it points to.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(values.filter(lambda v: not _holds_ref(v)))
def test_any_value_round_trips_exactly_through_the_xcom_backend(value: Any) -> None:
    from airflow_provider_knative import xcom

    stored = xcom.spill(value, key="k", dag_id="d", run_id="r", task_id="t", inline_max_bytes=1 << 20)
    # what Airflow writes to and reads from the JSON column (NaN must never be in it)
    from_db = json.loads(json.dumps(stored, allow_nan=False))
    assert_same(value, xcom.load(from_db))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_dataframes_round_trip_exactly(frame: pd.DataFrame) -> None:
    check(frame)
    check(frame["t"])
    check({"frame": frame, "series": frame["f"].rename(("a", 1))})


# --------------------------------------------------------------------------------------
# Refused: a TypeError that says where and what to do
# --------------------------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Mode(str, enum.Enum):
    FAST = "fast"


class Perm(enum.Flag):
    R = 4


class Plain(enum.Enum):
    A = 1


Point = collections.namedtuple("Point", "x y")


class Typed(typing.NamedTuple):
    a: int


class MyDict(dict):
    pass


class MyList(list):
    pass


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyOrdered(collections.OrderedDict):
    pass


@dataclasses.dataclass
class Record:
    a: int


REFUSED_VALUES = [
    (Color.RED, r"enum member.*\.value or \.name"),
    (Mode.FAST, "enum member"),
    (Perm.R, "enum member"),
    (Plain.A, "enum member"),
    (Point(1, 2), r"namedtuple.*tuple\(x\) or x\._asdict\(\)"),
    (Typed(1), "namedtuple"),
    (MyDict(a=1), "subclass of dict.*plain dict"),
    (MyList([1]), "subclass of list"),
    (MyStr("x"), "subclass of str"),
    (MyInt(1), "subclass of int"),
    (MyFloat(1.5), "subclass of float"),
    (MyOrdered(a=1), "subclass of dict"),
    (memoryview(b"abc"), r"memoryview.*bytes\(view\)"),
    (dt.datetime(2024, 1, 1, tzinfo=dateutil.tz.gettz("Europe/Paris")), "time zone.*zoneinfo.ZoneInfo"),
    (pd.Timestamp("2024-01-01", tz=dateutil.tz.gettz("Europe/Paris")), "time zone"),
    (dt.time(1, 2, tzinfo=dt.timezone.utc), "time of day with a time zone"),
    (np.array([{"a": 1}], dtype=object), "dtype object"),
    (np.zeros(2, dtype=[("a", "i4")]), "dtype"),
    (np.asmatrix(np.eye(2)), r"np\.asarray"),
    (np.ma.masked_array([1, 2], mask=[0, 1]), r"np\.asarray"),
    (Record(1), r"dataclasses\.asdict"),
    (pendulum.duration(days=1), "date/time class is not carried"),
    (collections.defaultdict(lambda: 0), "default_factory"),
    (msgpack.ExtType(99, b""), "cannot encode"),
    (msgpack.Timestamp(1, 0), "cannot encode"),
    (object(), "cannot encode <class 'object'>"),
    (len, "cannot encode"),
    (pa.table({"r": pa.RunEndEncodedArray.from_arrays([3], [1.0])}), "run-end"),
    (pa.table({"v": pa.array(["a"], pa.string_view())}), "view type"),
    (pa.table({"u": pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])])}), "union"),
    (nest(257), "nested more than 256 levels"),
    (nest(257, "tuple"), "nested more than 256 levels"),
]


@pytest.mark.parametrize(("value", "message"), REFUSED_VALUES, ids=lambda v: type(v).__name__)
def test_refused_values_raise_type_error_saying_why(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        codec.dumps(value)
    with pytest.raises(TypeError, match=r"^value\['x'\]\[1\](\[0\])*: "):
        codec.dumps({"x": [0, value]})


def test_long_null_columns_are_refused_before_anything_is_written() -> None:
    table = pa.table({"n": pa.nulls(20_000_000)})
    with pytest.raises(TypeError, match=r"value\['t'\]: cannot encode Arrow Table 20000000 rows.*MiB"):
        codec.dumps({"t": table})
    codec.dumps(pa.table({"n": pa.nulls(100_000)}))  # small ones travel


def test_refusing_a_value_in_a_streamed_dataframe_names_it() -> None:
    frame = pd.DataFrame({"o": pd.Series([1, "mixed"], dtype=object)})
    with pytest.raises(TypeError, match=r"value\[0\]: cannot encode .*DataFrame.*Could not convert"):
        codec.dumps([frame])


refused_leaves = st.sampled_from([v for v, _ in REFUSED_VALUES if not isinstance(v, (list, tuple, pa.Table))])


@st.composite
def refused_at_a_path(draw: st.DrawFn) -> tuple[Any, str]:
    """A refused value at a random place in nested lists, tuples and dicts, and its path."""
    value = draw(refused_leaves)
    path = ""
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["list", "tuple", "dict", "ordered"]))
        before = draw(st.lists(st.integers(), max_size=2))
        if kind in ("list", "tuple"):
            items = [*before, value, *draw(st.lists(st.integers(), max_size=2))]
            value = items if kind == "list" else tuple(items)
            path = f"[{len(before)}]" + path
        else:
            key = draw(st.text(max_size=4) | st.integers())
            items = {f"k{i}": v for i, v in enumerate(before)}
            items[key] = value  # type: ignore[index]
            value = items if kind == "dict" else collections.OrderedDict(items)
            path = f"[{key!r}]" + path
    return value, "value" + path


@settings(max_examples=200, deadline=None)
@given(refused_at_a_path())
def test_refused_values_are_named_by_their_path(case: tuple[Any, str]) -> None:
    value, path = case
    with pytest.raises(TypeError) as err:
        codec.dumps(value)
    assert str(err.value).startswith(f"{path}: "), (str(err.value), path)


# --------------------------------------------------------------------------------------
# No worse than Airflow: what its own serde carries exactly, the codec carries exactly
# --------------------------------------------------------------------------------------

SERDE_CANDIDATES = [
    np.float64(1.5),
    np.float32(0.25),
    np.float16(1.5),
    np.int8(-3),
    np.int64(2**62),
    np.uint64(2**64 - 1),
    np.bool_(True),
    pd.Timestamp("2024-01-01 12:34:56.123456789"),
    pd.NaT,
    pd.Timedelta("1 day 1 ns"),
    pendulum.datetime(2024, 1, 1, tz="Europe/Paris"),
    pendulum.date(2024, 1, 1),
    dt.datetime(2024, 1, 1, 1, 2, 3, 4),
    dt.datetime(2024, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")),
    dt.date(2024, 1, 1),
    dt.timedelta(days=1, microseconds=1),
    decimal.Decimal("10"),
    decimal.Decimal("1.25"),
    uuid.UUID(int=7),
    (1, (2, 3)),
    {1, 2},
    frozenset({"a"}),
    2**70,
    [2**70, -(2**80)],
    float("nan"),
    float("inf"),
    -0.0,
    {"a": [1, {"b": None}]},
    pd.DataFrame({"a": [1, 2], "b": [0.5, None]}),
]


def _serde_round_trip(value: Any) -> Any:
    from airflow.sdk.serde import deserialize, serialize

    return deserialize(json.loads(json.dumps(serialize(value))))


@pytest.mark.parametrize("value", SERDE_CANDIDATES, ids=repr)
def test_what_airflow_serde_carries_exactly_we_carry_exactly(value: Any) -> None:
    try:
        assert_same(value, _serde_round_trip(value))
    except Exception:
        pytest.skip("Airflow's serde does not carry this value exactly")
    check(value)


def test_the_serde_comparison_covers_most_candidates() -> None:
    # guard against the comparison above silently skipping everything
    exact = 0
    for value in SERDE_CANDIDATES:
        try:
            assert_same(value, _serde_round_trip(value))
            exact += 1
        except Exception:
            pass
    assert exact >= 15


# --------------------------------------------------------------------------------------
# Wire format: frames written before these changes still read
# --------------------------------------------------------------------------------------


def test_frames_in_the_previous_datetime_and_time_layouts_still_decode() -> None:
    def frame(code: int, payload: Any) -> bytes:
        body = msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload)))
        head = layout.HEAD.pack(codec.MAGIC, len(body)) + body
        return head + bytes(-len(head) % 64) + layout.TAIL.pack(0, codec.TRAILER_MAGIC)

    paris = ZoneInfo("Europe/Paris")
    old = frame(layout.EXT_DATETIME, ["2024-10-27T02:30:00", 3600.0, "Europe/Paris"])
    assert_same(codec.loads(old), dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris))
    fixed = frame(layout.EXT_DATETIME, ["2024-01-01T00:00:00", -12600.0, None])
    assert codec.loads(fixed).utcoffset() == dt.timedelta(hours=-3, minutes=-30)
    assert codec.loads(frame(layout.EXT_TIME, "01:02:03.000004")) == dt.time(1, 2, 3, 4)


def test_regexes_in_messages_are_plain() -> None:
    # the path in a message is repr-based: keys with regex characters still read plainly
    with pytest.raises(TypeError, match=re.escape("value['a.b*']: cannot encode")):
        codec.dumps({"a.b*": object()})
