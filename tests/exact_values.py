"""Exact sameness for round-trip tests, and hypothesis strategies over every carried type.

``assert_same(a, b)`` is stricter than ``==``: ``1 == 1.0 == True``, ``np.float64(1) == 1.0``,
``{"a": 1} == OrderedDict(a=1)`` and ``Timestamp(ns) == datetime(us)`` are all true and all
hide a changed value. Here types must match at every level, floats and numpy scalars bit for
bit (NaN and -0.0 included), datetimes in wall time, offset, fold, time zone class and key,
pandas values in unit, and containers in order.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import struct
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pendulum
import pyarrow as pa
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from airflow_provider_knative.codec import ObjectRef

MAPPINGS = (dict, collections.OrderedDict, collections.Counter, collections.defaultdict)


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Assert ``b`` is ``a`` rebuilt exactly; the message names where they differ."""
    ta, tb = type(a), type(b)
    assert ta is tb, (
        f"{path}: {ta.__module__}.{ta.__qualname__} came back as {tb.__module__}.{tb.__qualname__}"
    )
    if ta in (list, tuple, set, frozenset, *MAPPINGS):
        _same_container(a, b, path)
    elif ta.__module__.split(".")[0] in ("numpy", "pandas", "pyarrow"):
        _same_library_value(a, b, path)
    elif ta is float:
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} came back as {b!r}"
    elif ta is complex:
        assert_same(a.real, b.real, f"{path}.real")
        assert_same(a.imag, b.imag, f"{path}.imag")
    elif isinstance(a, dt.datetime):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), f"{path}: wall time {a} came back as {b}"
        assert a.fold == b.fold, f"{path}: fold {a.fold} came back as {b.fold}"
        assert a.utcoffset() == b.utcoffset(), f"{path}: offset {a.utcoffset()} came back as {b.utcoffset()}"
        _same_zone(a.tzinfo, b.tzinfo, path)
    elif isinstance(a, dt.time):
        assert (a, a.fold, a.tzinfo) == (b, b.fold, b.tzinfo), f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, decimal.Decimal):
        assert str(a) == str(b), f"{path}: {a!r} came back as {b!r}"
    else:
        assert a == b, f"{path}: {a!r} came back as {b!r}"


def _same_container(a: Any, b: Any, path: str) -> None:
    assert len(a) == len(b), f"{path}: {len(a)} items came back as {len(b)}"
    if type(a) in (list, tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif type(a) in (set, frozenset):
        for x in a:  # NaN-like items hash by identity and equal nothing: match by sameness
            assert any(_same(x, y) for y in b), f"{path}: item {x!r} is missing or changed"
    else:
        if type(a) is collections.defaultdict:
            assert a.default_factory is b.default_factory, f"{path}: default_factory changed"
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb, f"{path} key {ka!r}")
            assert_same(va, vb, f"{path}[{ka!r}]")


def _same_library_value(a: Any, b: Any, path: str) -> None:
    if isinstance(a, np.ndarray):
        assert a.dtype.str == b.dtype.str, f"{path}: dtype {a.dtype} came back as {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} came back as {b.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: array data changed"
    elif isinstance(a, (np.str_, np.bytes_)):
        assert a.dtype.str == b.dtype.str and a[:] == b[:], (
            f"{path}: {a!r} came back as {b!r}"
        )  # [:] keeps NULs
    elif isinstance(a, np.generic):
        assert a.dtype.str == b.dtype.str, f"{path}: dtype {a.dtype} came back as {b.dtype}"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), f"{path}: {a!r} came back as {b!r}"
    elif a is pd.NaT:
        assert b is pd.NaT
    elif isinstance(a, pd.Timestamp):
        assert a.unit == b.unit, f"{path}: unit {a.unit} came back as {b.unit}"
        assert a.to_datetime64() == b.to_datetime64() and str(a) == str(b), f"{path}: {a} came back as {b}"
        _same_zone(a.tzinfo, b.tzinfo, path)
    elif isinstance(a, pd.Timedelta):
        assert a.unit == b.unit and a.to_timedelta64() == b.to_timedelta64(), f"{path}: {a!r} became {b!r}"
    elif isinstance(a, pd.Period):
        assert a.ordinal == b.ordinal and a.freqstr == b.freqstr, f"{path}: {a!r} came back as {b!r}"
    elif isinstance(a, pd.Interval):
        assert a.closed == b.closed, f"{path}: closed {a.closed} came back as {b.closed}"
        assert_same(a.left, b.left, f"{path}.left")
        assert_same(a.right, b.right, f"{path}.right")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert list(a.dtypes) == list(b.dtypes), f"{path}: dtypes changed"
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=True)
        assert_same(a.name, b.name, f"{path}.name")
    elif isinstance(a, pa.Table):
        assert a.equals(b, check_metadata=True), f"{path}: Arrow table changed"
    else:
        assert a == b, f"{path}: {a!r} came back as {b!r}"


def _same(a: Any, b: Any) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


def _same_zone(a: Any, b: Any, path: str) -> None:
    assert type(a) is type(b), f"{path}: time zone {type(a).__name__} came back as {type(b).__name__}"
    if a is None:
        return
    for attr in ("key", "name", "offset"):
        assert getattr(a, attr, None) == getattr(b, attr, None), f"{path}: time zone {a!r} came back as {b!r}"
    assert a.tzname(None) == b.tzname(None) and a.utcoffset(None) == b.utcoffset(None), (
        f"{path}: {a!r} != {b!r}"
    )


# --------------------------------------------------------------------------------------
# Strategies: every carried type
# --------------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]

fixed_zones = st.builds(
    lambda minutes, name: (
        dt.timezone(dt.timedelta(minutes=minutes), name)
        if name
        else dt.timezone(dt.timedelta(minutes=minutes))
    ),
    st.integers(-23 * 60, 23 * 60),
    st.none() | st.sampled_from(["CET", "X", "UTC+weird"]),
)
pendulum_zones = st.sampled_from(ZONES).map(pendulum.timezone) | st.integers(-20 * 3600, 20 * 3600).map(
    pendulum.FixedTimezone
)
zones = st.none() | st.sampled_from(ZONES).map(ZoneInfo) | fixed_zones | pendulum_zones

naive_datetimes = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
datetimes = st.builds(
    lambda d, tz, fold: d.replace(tzinfo=tz, fold=fold), naive_datetimes, zones, st.integers(0, 1)
)
pendulum_datetimes = datetimes.map(
    lambda d: pendulum.DateTime(
        d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, tzinfo=d.tzinfo, fold=d.fold
    )
)
times = st.builds(lambda t, fold: t.replace(fold=fold), st.times(), st.integers(0, 1))

timestamps = st.builds(
    lambda ns, unit, tz: (
        pd.Timestamp(np.datetime64(ns, "ns")).as_unit(unit)
        if tz is None
        else pd.Timestamp(np.datetime64(ns, "ns")).tz_localize("UTC").tz_convert(tz).as_unit(unit)
    ),
    st.integers(-(2**62), 2**62),
    st.sampled_from(["s", "ms", "us", "ns"]),
    st.none() | st.sampled_from(ZONES).map(ZoneInfo) | st.just(dt.timezone.utc),
)
pd_timedeltas = st.builds(
    lambda ns, unit: pd.Timedelta(np.timedelta64(ns, "ns")).as_unit(unit),
    st.integers(-(2**62), 2**62),
    st.sampled_from(["s", "ms", "us", "ns"]),
)
periods = st.builds(
    lambda n, freq: pd.Period(ordinal=n, freq=freq),
    st.integers(-(10**5), 10**5),
    st.sampled_from(["D", "M", "Y", "Q-DEC", "Q-MAR", "W-SUN", "h", "2D", "min", "s"]),
)
interval_ends = st.one_of(
    st.tuples(st.integers(-1000, 1000), st.integers(0, 1000)).map(lambda p: (p[0], p[0] + p[1])),
    st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e6)).map(lambda p: (p[0], p[0] + p[1])),
    st.tuples(st.integers(0, 2**50), st.integers(0, 2**40)).map(
        lambda p: (pd.Timestamp(p[0], unit="ns"), pd.Timestamp(p[0] + p[1], unit="ns"))
    ),
)
intervals = st.builds(
    lambda ends, closed: pd.Interval(ends[0], ends[1], closed=closed),
    interval_ends,
    st.sampled_from(["left", "right", "both", "neither"]),
)

numeric_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="="),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(endianness="="),
    hnp.timedelta64_dtypes(endianness="="),
)
scalar_dtypes = st.one_of(
    numeric_dtypes,
    hnp.byte_string_dtypes(endianness="=", min_len=1, max_len=6),
    hnp.unicode_string_dtypes(endianness="=", min_len=1, max_len=6),
)
numpy_scalars = scalar_dtypes.flatmap(lambda d: hnp.from_dtype(d).map(lambda x: np.asarray(x, dtype=d)[()]))
arrays = scalar_dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))

object_refs = st.builds(
    ObjectRef,
    url=st.text(min_size=1, max_size=20),
    size=st.integers(0, 2**40),
    sha256=st.text(max_size=64),
    summary=st.text(max_size=20),
)

#: hashable scalars: dict keys, set items
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # any size
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from([decimal.Decimal("NaN"), decimal.Decimal("-NaN12")]),
    st.uuids(),
    numpy_scalars,
    timestamps,
    pd_timedeltas,
    st.just(pd.NaT),
    periods,
    intervals,
    pendulum_datetimes,
    st.dates().map(lambda d: pendulum.Date(d.year, d.month, d.day)),
    times.map(lambda t: pendulum.Time(t.hour, t.minute, t.second, t.microsecond, fold=t.fold)),
    object_refs,
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=4,
)
scalars = (
    hashable_scalars | st.binary(max_size=12).map(bytearray) | arrays | st.just(decimal.Decimal("sNaN3"))
)


def _defaultdict(factory: Any, items: dict) -> collections.defaultdict:
    value: collections.defaultdict = collections.defaultdict(factory)
    value.update(items)
    return value


#: nested values built from every carried type (no DataFrames: see ``frames``)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=4).map(collections.OrderedDict),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=4).map(collections.Counter),
        st.builds(
            _defaultdict,
            st.sampled_from([None, list, int, dict]),
            st.dictionaries(hashables, inner, max_size=3),
        ),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=10,
)

frames = (
    st.integers(0, 12)
    .flatmap(
        lambda n: st.fixed_dictionaries(
            {
                "i": hnp.arrays(np.int64, n),
                "f": hnp.arrays(np.float64, n),
                "s": st.lists(st.text(max_size=5) | st.none(), min_size=n, max_size=n),
                "t": st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n),
            }
        )
    )
    .map(
        lambda cols: pd.DataFrame(
            {
                "i": cols["i"],
                "f": cols["f"],
                "s": pd.array(cols["s"], dtype="str"),
                "t": pd.to_datetime(cols["t"], unit="ns", utc=True).tz_convert("Europe/Paris"),
            }
        )
    )
)


def nest(depth: int, kind: str = "list", inner: Any = 1) -> Any:
    """``inner`` inside ``depth`` containers of ``kind`` (list, dict, tuple, mixed, set)."""
    value = inner
    for i in range(depth):
        if kind == "list":
            value = [value]
        elif kind == "dict":
            value = {"k": value}
        elif kind == "tuple":
            value = (value,)
        elif kind == "set":
            value = frozenset([value])
        else:
            value = (value,) if i % 2 else [value]
    return value


def example_uuid() -> uuid.UUID:
    return uuid.UUID("12345678-1234-5678-1234-567812345678")
